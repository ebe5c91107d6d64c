"""What benchmarks and tests need around ``examples/train_ddp.py``, kept out of the example:
a smaller training set to pass as ``--shards``, and the run read back from its output."""

from __future__ import annotations

import json
from pathlib import Path

from dynams_service import read_manifest, write_shards
from dynams_service.core.data.shards import read_shards


def first_n_shards(shards: str | Path, n: int, out: str | Path, *, min_shards: int = 1) -> Path:
    """``out`` holding ``train/``: the first ``n`` training samples of ``shards`` in at least
    ``min_shards`` shards (one per scorer spreads the scoring), normalised as the whole split
    is, and ``test/``: a link to the full test split. Written once; returns ``out``.

    Example:
        >>> root = first_n_shards("data/fashion-mnist", 10000, "/tmp/fm-10k")  # doctest: +SKIP
        >>> # torchrun ... examples/train_ddp.py --shards /tmp/fm-10k ...
    """
    if n < 1 or min_shards < 1:
        raise ValueError(f"n and min_shards must be >= 1, got {n} and {min_shards}")
    full, out = Path(shards, "train").resolve(), Path(out)
    if not (out / "train" / "dynams-dataset.json").exists():
        manifest, data = read_manifest(str(full)), read_shards(str(full))
        write_shards(str(out / "train"), data.samples[:n], data.labels[:n],
                     num_classes=manifest.fingerprint.num_classes, stats_from=manifest,
                     rows_per_shard=max(1, min(8192, n // min_shards)))
    if not (out / "test").exists():
        (out / "test").symlink_to(Path(shards, "test").resolve(), target_is_directory=True)
    return out


def read_output(stdout: str) -> dict:
    """The run from the example's stdout: its last JSON line (test accuracy, fraction
    trained, fallback epochs), ``epochs`` (every epoch's line) and the seconds they sum to."""
    lines = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    if not lines or "epoch" in lines[-1]:
        raise ValueError(f"no summary line in the example's output:\n{stdout[-3000:]}")
    epochs = [line for line in lines if "epoch" in line]
    return {**lines[-1], "epochs": epochs,
            "train_seconds": sum(e["train_seconds"] for e in epochs),
            "blocked_seconds": sum(e["blocked_seconds"] for e in epochs)}
