"""Merge quality-benchmark runs from parallel sweeps into one results directory.

Sweeps can run side by side, each with its own ``--out``; this folds their
``quality.json`` records into ``--into`` (a record with the same key is replaced by the
merged one) and rebuilds its tables and frontier plots (``quality.py --report --epochs N``
redraws one setting's other plots)::

    .venv/bin/python benchmarks/quality_merge.py runs/a runs/b --into benchmarks/results

One directory holds one data variant (label noise, long tail): a record of another
variant is refused, as ``quality.py`` refuses it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks.* as a script

from benchmarks.quality import load_results, report_cost, save_result  # noqa: E402
from benchmarks.quality_record import RunRecord  # noqa: E402
from benchmarks.quality_report import write_frontier_plots, write_markdown  # noqa: E402


def merge(sources: list[Path], into: Path) -> int:
    """Fold every record of ``sources`` into ``into``; returns how many were merged."""
    into.mkdir(parents=True, exist_ok=True)
    merged = 0
    for source in sources:
        for data in load_results(source):
            save_result(into, RunRecord.from_json(data))
            merged += 1
    records = load_results(into)
    cost = report_cost(into)
    write_markdown(into, records, cost)
    write_frontier_plots(into, records, cost)
    return merged


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("sources", nargs="+", type=Path, help="directories holding quality.json")
    p.add_argument("--into", type=Path, required=True, help="the results directory to update")
    args = p.parse_args(argv)
    try:
        merged = merge(args.sources, args.into)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"merged {merged} runs into {args.into}/quality.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
