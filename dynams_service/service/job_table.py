"""Every job the selector knows, under one lock: live entries, quarantined jobs and the
ids being created.

The table's ``lock`` guards all of it and ``changed`` is notified at every transition
(rounds waited for, creations ended, deletions). Callers do compound reads under the
lock themselves; methods marked "lock held" expect it.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from ..core.job import JobSpec, JobState
from .errors import FailedPrecondition, NotFound
from .job_record import Job, Quarantined
from .rounds import Round
from .scorer_api import Scorers

__all__ = ["JobEntry", "JobTable"]


@dataclass(eq=False)
class JobEntry:
    """One live job: its current record and the runtime handles beside it."""

    record: Job
    scorers: Scorers | None = None  # set exactly while record.state is ACTIVE
    scorers_lock: threading.Lock = field(default_factory=threading.Lock)  # starting/stopping
    orders: OrderedDict[int, np.ndarray] = field(default_factory=OrderedDict)  # epoch → list
    orders_lock: threading.Lock = field(default_factory=threading.Lock)  # builds one order
    last_used: float = field(default_factory=time.monotonic)  # last RPC naming the job

    @property
    def job_id(self) -> str:
        return self.record.job_id

    @property
    def deleted(self) -> bool:
        return self.record.state is JobState.DELETED


class JobTable:
    """Jobs by id; thread-safe through ``lock``."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.entries: dict[str, JobEntry] = {}
        self.quarantined: dict[str, Quarantined] = {}
        self.creating: dict[str, JobSpec] = {}  # job id → spec, while being placed

    def get(self, job_id: str, touch: bool = True) -> JobEntry:
        """The live job ``job_id`` (lock held); NotFound, or FailedPrecondition for a
        quarantined one. ``touch`` restarts its idle clock."""
        entry = self.entries.get(job_id)
        if entry is None:
            if job_id in self.quarantined:
                raise FailedPrecondition(self.quarantined[job_id].message())
            # The message names no other job: ids may be private to their owners.
            raise NotFound(f"no job {job_id!r}; create it first")
        if touch:
            entry.last_used = time.monotonic()
        return entry

    def count(self) -> int:
        """Live jobs and those being created, for admission (lock held)."""
        return len(self.entries) + len(self.creating)

    def ids_after(self, after: str) -> list[str]:
        """Every id, live or quarantined, sorted, after ``after`` (lock held)."""
        return sorted(i for i in (*self.entries, *self.quarantined) if i > after)

    def add(self, entry: JobEntry) -> None:
        with self.lock:
            self.entries[entry.job_id] = entry
            self.changed.notify_all()

    def quarantine(self, quarantined: Quarantined) -> None:
        with self.lock:
            self.quarantined[quarantined.job_id] = quarantined

    def set_round(self, entry: JobEntry, round_: Round) -> None:
        """Commit a round's next record (lock held) and wake its waiters."""
        entry.record = entry.record.with_round(round_)
        self.changed.notify_all()

    def attach(self, entry: JobEntry, scorers: Scorers) -> None:
        """The job's scorers run (lock held)."""
        entry.record = entry.record.started()
        entry.scorers = scorers

    def detach(self, entry: JobEntry) -> Scorers | None:
        """Take the job's scorers to stop them (lock held); None if none run."""
        scorers, entry.scorers = entry.scorers, None
        if scorers is not None and not entry.deleted:
            entry.record = entry.record.released()
        return scorers

    def remove(self, job_id: str) -> JobEntry | None:
        """Forget a job, live or quarantined; a live one's record becomes DELETED, which
        rounds in flight see. Returns the live entry, if any."""
        with self.lock:
            self.quarantined.pop(job_id, None)
            entry = self.entries.pop(job_id, None)
            if entry is not None:
                entry.record = entry.record.deleted()
            self.changed.notify_all()
        return entry
