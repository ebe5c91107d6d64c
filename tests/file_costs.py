"""Run the costliest test files first, so both pytest-xdist workers end together.

With ``--dist loadfile`` (and ``--no-loadscope-reorder``) xdist hands whole files to the
worker that is free, in collection order: a long file collected last runs alone on one
worker while the other has nothing left. ``file_costs.json`` holds each file's seconds in a
full ``make test`` run; a file not in it counts as the costliest. Refresh the table with
``make test PYTEST_ARGS="--file-costs-out tests/file_costs.json"``.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

COSTS = Path(__file__).with_name("file_costs.json")


def file_of(nodeid: str) -> str:
    """The test file of a node id, as the table names it (``tests/x/test_y.py``)."""
    return nodeid.split("::", 1)[0]


def order_costliest_files_first(items: list[pytest.Item], costs: dict[str, float]) -> None:
    """Reorder ``items`` in place: files by descending cost (equal costs in collection
    order), each file's tests contiguous and in their own order (the sort is stable)."""
    unknown = max(costs.values(), default=0.0) + 1.0
    first: dict[str, int] = {}
    for index, item in enumerate(items):
        first.setdefault(file_of(item.nodeid), index)

    def key(item: pytest.Item) -> tuple[float, int]:
        name = file_of(item.nodeid)
        return -costs.get(name, unknown), first[name]

    items.sort(key=key)


def load_costs(path: Path = COSTS) -> dict[str, float]:
    return json.loads(path.read_text()) if path.exists() else {}


class CostRecorder:
    """Sums each file's setup, call and teardown seconds and writes them as the table."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.seconds: Counter[str] = Counter()

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.seconds[file_of(report.nodeid)] += report.duration

    def pytest_sessionfinish(self) -> None:
        table = {name: round(s, 1) for name, s in sorted(self.seconds.items())}
        self.out.write_text(json.dumps(table, indent=1) + "\n")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--file-costs-out", type=Path, default=None, metavar="PATH",
                     help="write each test file's seconds in this run to PATH (the table "
                          "that orders files costliest first)")


def pytest_configure(config: pytest.Config) -> None:
    out = config.getoption("--file-costs-out")
    if out is not None and not hasattr(config, "workerinput"):  # the controller, not a worker
        config.pluginmanager.register(CostRecorder(out), "file-costs-recorder")


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    order_costliest_files_first(items, load_costs())
