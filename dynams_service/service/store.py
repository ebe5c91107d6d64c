"""Persistence: job specs (JSON) and rounds (Arrow IPC files) under the state dir.

Every file is written to a temporary name, fsynced and renamed, so a crash never leaves
a partial file under a name that is read back; leftovers are removed at load.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

from ..core.job import JobSpec

__all__ = ["RoundResult", "StateStore"]


@dataclass(frozen=True)
class RoundResult:
    """One completed selection round: the selected indices (ascending) and their margins."""

    round: int
    epoch: int
    weights_version: int
    indices: np.ndarray
    margins: np.ndarray
    seconds: float


class StateStore:
    """Reads and writes ``<state_dir>/jobs/<job_id>/{spec.json, round-NNNNN.arrow}``."""

    def __init__(self, state_dir: str | Path) -> None:
        self.root = Path(state_dir).expanduser().resolve()
        (self.root / "jobs").mkdir(parents=True, exist_ok=True)

    def _job_dir(self, job_id: str) -> Path:
        return self.root / "jobs" / job_id

    def save_spec(self, spec: JobSpec) -> None:
        self._job_dir(spec.job_id).mkdir(parents=True, exist_ok=True)
        _atomic_write(self._job_dir(spec.job_id) / "spec.json",
                      spec.model_dump_json(indent=2).encode())

    def save_round(self, job_id: str, result: RoundResult) -> None:
        table = pa.table({"index": pa.array(result.indices, pa.int64()),
                          "margin": pa.array(result.margins, pa.float32())})
        table = table.replace_schema_metadata({
            "round": str(result.round), "epoch": str(result.epoch),
            "weights_version": str(result.weights_version), "seconds": repr(result.seconds),
        })
        sink = pa.BufferOutputStream()
        with ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
        _atomic_write(self._job_dir(job_id) / f"round-{result.round:05d}.arrow",
                      sink.getvalue().to_pybytes())

    def delete_job(self, job_id: str) -> None:
        shutil.rmtree(self._job_dir(job_id), ignore_errors=True)

    def load(self) -> list[tuple[JobSpec, dict[int, RoundResult]]]:
        """Every persisted job with its completed rounds; temporary leftovers are removed."""
        jobs = []
        for job_dir in sorted((self.root / "jobs").iterdir()):
            for leftover in job_dir.glob(".tmp-*"):
                leftover.unlink(missing_ok=True)
            spec_path = job_dir / "spec.json"
            if not spec_path.exists():
                continue
            spec = JobSpec.model_validate_json(spec_path.read_bytes())
            rounds = {}
            for path in sorted(job_dir.glob("round-*.arrow")):
                result = _read_round(path)
                rounds[result.round] = result
            jobs.append((spec, rounds))
        return jobs


def _read_round(path: Path) -> RoundResult:
    with ipc.open_file(pa.memory_map(str(path))) as reader:
        table = reader.read_all()
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    return RoundResult(
        round=int(meta["round"]), epoch=int(meta["epoch"]),
        weights_version=int(meta["weights_version"]),
        indices=table.column("index").to_numpy().astype(np.int64),
        margins=table.column("margin").to_numpy().astype(np.float32),
        seconds=float(meta["seconds"]),
    )


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
