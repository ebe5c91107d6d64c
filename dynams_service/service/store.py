"""Persistence: job specs (JSON) and rounds (Arrow IPC files) under the state dir.

Every file is written to a temporary name, fsynced and renamed, so a crash never leaves
a partial file under a name that is read back; leftovers are removed at load. A job whose
files cannot be read (a truncated round, a malformed spec) is reported as failed by
``load`` and the others load: one corrupt job must not keep the selector from starting.
Writes and deletions raise ``OSError`` when they fail, never silently.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

from ..core.job import JobSpec
from .dataset_identity import DatasetEncoding

__all__ = ["RoundResult", "StateStore", "LoadedJob"]

log = logging.getLogger(__name__)
_TOMBSTONE = ".deleted-"
_ENCODING = "dataset.json"


@dataclass(frozen=True)
class RoundResult:
    """One completed selection round: the selected indices (ascending), their margins and,
    for a reweighting policy, their float32 loss weights."""

    round: int
    epoch: int
    weights_version: int
    indices: np.ndarray
    margins: np.ndarray
    seconds: float
    weights: np.ndarray | None = None

    def weights_of(self, indices: np.ndarray) -> np.ndarray:
        """The loss weights of ``indices`` (each one of this round's), in their order."""
        assert self.weights is not None, "weights_of() on an unweighted round"
        return self.weights[np.searchsorted(self.indices, indices)]


@dataclass(frozen=True)
class LoadedJob:
    """One job directory read back: its spec and rounds, or why it could not be read."""

    job_id: str
    spec: JobSpec | None
    rounds: dict[int, RoundResult]
    error: str = ""  # set when the job's files are unreadable (the job is quarantined)
    encoding: DatasetEncoding | None = None  # None only for a job that failed to load


class StateStore:
    """Reads and writes ``<state_dir>/jobs/<job_id>/{spec.json, dataset.json,
    round-NNNNN.arrow}``.

    ``dataset.json`` is the dataset's encoding when the job was created (part of the
    job's identity).
    """

    def __init__(self, state_dir: str | Path) -> None:
        self.root = Path(state_dir).expanduser().resolve()
        (self.root / "jobs").mkdir(parents=True, exist_ok=True)

    def _job_dir(self, job_id: str) -> Path:
        return self.root / "jobs" / job_id

    def save_spec(self, spec: JobSpec, encoding: DatasetEncoding) -> None:
        """Save a job's spec and its dataset's encoding (written first: a job is only
        loaded once its spec exists)."""
        job_dir = self._job_dir(spec.job_id)
        job_dir.mkdir(parents=True, exist_ok=True)
        _atomic_write(job_dir / _ENCODING, encoding.model_dump_json(indent=2).encode())
        _atomic_write(job_dir / "spec.json", spec.model_dump_json(indent=2).encode())

    def save_round(self, job_id: str, result: RoundResult) -> None:
        columns = {"index": pa.array(result.indices, pa.int64()),
                   "margin": pa.array(result.margins, pa.float32())}
        if result.weights is not None:
            columns["weight"] = pa.array(result.weights, pa.float32())
        table = pa.table(columns)
        table = table.replace_schema_metadata({
            "round": str(result.round), "epoch": str(result.epoch),
            "weights_version": str(result.weights_version), "seconds": repr(result.seconds),
        })

        def write(f) -> None:  # straight to the file: no in-memory copy of the selection
            with ipc.new_file(f, table.schema) as writer:
                writer.write_table(table)

        _atomic_write(self._job_dir(job_id) / f"round-{result.round:05d}.arrow", write)

    def delete_job(self, job_id: str) -> None:
        """Remove a job's state; raises ``OSError`` if it cannot (read-only dir, …).

        The directory is first renamed to a tombstone in one atomic step, so a failure or
        a crash never leaves half a job that would come back at the next start.
        """
        job_dir = self._job_dir(job_id)
        if not job_dir.exists():
            return
        tombstone = job_dir.with_name(f"{_TOMBSTONE}{job_id}-{secrets.token_hex(4)}")
        os.rename(job_dir, tombstone)
        _fsync_dir(job_dir.parent)
        try:
            shutil.rmtree(tombstone)
        except OSError as exc:  # renamed away already: it never loads again
            log.warning("job %s deleted, but its files stay in %s: %s", job_id, tombstone, exc)

    def load(self) -> list[LoadedJob]:
        """Every persisted job with its completed rounds; temporary leftovers are removed.

        A job whose spec or any round cannot be read comes back with ``error`` set.
        """
        jobs = []
        for job_dir in sorted((self.root / "jobs").iterdir()):
            if job_dir.name.startswith(_TOMBSTONE):
                shutil.rmtree(job_dir, ignore_errors=True)  # a deletion that was cut short
                continue
            loaded = self._load_dir(job_dir)
            if loaded is not None:
                jobs.append(loaded)
        return jobs

    def load_job(self, job_id: str) -> LoadedJob | None:
        """One persisted job, as ``load`` reads it; None if it has no saved spec."""
        return self._load_dir(self._job_dir(job_id))

    def _load_dir(self, job_dir: Path) -> LoadedJob | None:
        if not job_dir.is_dir():
            return None
        for leftover in job_dir.glob(".tmp-*"):
            leftover.unlink(missing_ok=True)
        spec_path = job_dir / "spec.json"
        if not spec_path.exists():
            return None
        try:
            spec = JobSpec.model_validate_json(spec_path.read_bytes())
        except (OSError, ValueError) as exc:
            return LoadedJob(job_dir.name, None, {}, f"unreadable spec.json: {_first_line(exc)}")
        if spec.job_id != job_dir.name:
            return LoadedJob(job_dir.name, None, {}, f"spec.json names job {spec.job_id!r}, "
                                                     f"its directory {job_dir.name!r}")
        try:
            encoding = DatasetEncoding.model_validate_json((job_dir / _ENCODING).read_bytes())
        except (OSError, ValueError) as exc:
            return LoadedJob(job_dir.name, spec, {},
                             f"unreadable {_ENCODING}: {_first_line(exc)}")
        rounds = {}
        for path in sorted(job_dir.glob("round-*.arrow")):
            try:
                result = _read_round(path)
            except (OSError, ValueError, KeyError, pa.ArrowException) as exc:
                return LoadedJob(job_dir.name, spec, {},
                                 f"unreadable {path.name}: {_first_line(exc)}")
            rounds[result.round] = result
        return LoadedJob(job_dir.name, spec, rounds, encoding=encoding)


def _first_line(exc: BaseException, limit: int = 300) -> str:
    text = f"{type(exc).__name__}: {exc}".splitlines()[0] if str(exc) else type(exc).__name__
    return text[:limit]


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
        weights=(table.column("weight").to_numpy().astype(np.float32)
                 if "weight" in table.column_names else None),
    )


def _atomic_write(path: Path, data: bytes | Callable[[BinaryIO], None]) -> None:
    """Write ``data`` (bytes, or a function writing to the open file) to ``path``
    atomically: a temporary name, fsync, rename, fsync of the directory."""
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    dir_fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
