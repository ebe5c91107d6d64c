"""The job coordinator: the one object the servicer talks to, composed of parts with one
job each.

- ``job_table``: every job under one lock; ``job_record``: a job's immutable record and
  its state transitions; ``job_preparation``: a spec checked, saved rounds taken back;
- ``round_runner``: pushes and the rounds they start; ``epoch_server``: each rank's part
  of an epoch; ``reaper``: idle jobs released and expired; ``status``: what is reported.

This module creates, restores and deletes jobs. Plain Python over the core: no Ray is
loaded by importing it (scorers come from a ``ScorerFactory``, Ray's by default).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from ..core.data.shards import read_manifest
from ..core.job import JobSpec, spec_differences
from ..core.models.proxy import TensorRecord
from . import admission
from .dataset_access import DatasetAccess
from .dataset_identity import DatasetEncoding
from .epoch_server import Answer, EpochServer
from .errors import AlreadyExists, DeadlineExceeded, Internal
from .job_preparation import dataset_change, dataset_errors, prepare_job, restore_rounds
from .job_record import Quarantined
from .job_table import JobEntry, JobTable
from .limits import Limits
from .metrics import Metrics, SelectorMetrics
from .reaper import reap
from .round_runner import RoundRunner
from .scorer_api import ScorerFactory, start_ray_scorers
from .status import JobStatus, JobSummary, Snapshot, summary_of
from .store import StateStore

__all__ = ["JobCoordinator", "Answer", "JobStatus", "JobSummary"]

log = logging.getLogger(__name__)


class JobCoordinator:
    """Owns every job; thread-safe; persists specs and rounds through ``StateStore``.

    NOTE [ no global lock while placing ]
    Creating a job waits for the cluster to place its scorers, which may take minutes or
    never happen. That wait holds no lock any other call needs: the job id alone is
    reserved (``JobTable.creating``), so a CreateJob for another job, and every other
    call, proceeds. The wait ends at the caller's deadline (or ``Limits.placement_timeout``);
    a caller that gave up gets nothing created, and whatever was reserved is released on
    every failure.
    """

    def __init__(self, store: StateStore, metrics: Metrics | None = None,
                 limits: Limits | None = None,
                 scorer_factory: ScorerFactory = start_ray_scorers) -> None:
        """``scorer_factory(spec, manifest, ready_timeout=s)`` starts a job's scorers:
        Ray actors by default; in-process ones in tests, synthetic ones in benchmarks.
        An operator's choice, never a client's."""
        self.store = store
        self.scorer_factory = scorer_factory
        self.metrics = metrics or SelectorMetrics()
        self.limits = limits or Limits()
        self.access = DatasetAccess(self.limits.dataset_roots)
        self.table = JobTable()
        self.rounds = RoundRunner(self.table, store, self.metrics, self.limits, scorer_factory)
        self.epochs = EpochServer(self.table, self.metrics, self.limits)

    # --- restore ----------------------------------------------------------------------

    def restore(self) -> int:
        """Reload persisted jobs and their completed rounds; scorers start on first push.

        A job whose files are unreadable, or that no longer validates, is quarantined:
        logged, listed as failed, kept on disk until deleted; the others are restored.
        """
        restored = 0
        for loaded in self.store.load():
            error, retryable, job = loaded.error, False, None
            if not error and loaded.spec is not None:
                error = dataset_change(loaded, self.access)
            if not error and loaded.spec is not None:
                try:
                    job = prepare_job(loaded.spec, self.access)
                except Exception as exc:  # noqa: BLE001 - one bad job must not stop the rest
                    error, retryable = f"cannot restore: {exc}", True
            if job is not None:
                job, error = restore_rounds(job, loaded)
            if error or job is None:
                log.error("job %s quarantined (listed as failed; %s): %s", loaded.job_id,
                          "CreateJob with its spec retries it" if retryable
                          else "delete it to drop it", error)
                self.table.quarantine(Quarantined(loaded.job_id, loaded.spec, error[:1000],
                                                  retryable))
                continue
            self.table.add(JobEntry(job))
            restored += 1
            log.info("restored job %s with %d completed rounds", loaded.job_id,
                     len(loaded.rounds))
        return restored

    # --- create -----------------------------------------------------------------------

    def create_job(self, spec: JobSpec, timeout: float | None = None,
                   gave_up: Callable[[], bool] = lambda: False) -> JobStatus:
        """Create a job (idempotent for an identical spec over an unchanged dataset
        encoding) and start its scorers.

        Waits at most ``timeout`` s (and ``Limits.placement_timeout``) for the scorers'
        placement; ``gave_up()`` true (the caller left) means nothing is created. See
        NOTE [ no global lock while placing ].
        """
        span = self.limits.placement_timeout if timeout is None else min(
            timeout, self.limits.placement_timeout)
        deadline = time.monotonic() + span
        table = self.table
        with table.lock:
            existing = self._existing(spec, deadline)
            if existing is None:
                quarantined = self._reserve(spec)
        if existing is not None:
            self._check_same_dataset(existing)
            return self._status(existing)
        entry = None
        try:
            entry = self._place(spec, deadline, gave_up, resume=quarantined is not None)
        finally:
            with table.lock:
                table.creating.pop(spec.job_id, None)
                if entry is None and quarantined is not None:
                    table.quarantined[spec.job_id] = quarantined
                table.changed.notify_all()
        log.info("created job %s: %d samples, %d scorers, %d epochs", spec.job_id,
                 spec.fingerprint.num_samples, spec.resources.num_scorers,
                 len(entry.record.plan.sizes))
        return self._status(entry)

    def _existing(self, spec: JobSpec, deadline: float) -> JobEntry | None:
        """The job already created under ``spec.job_id``, after any creation of it in
        progress ends; AlreadyExists if its spec differs. Call with the lock held."""
        table = self.table
        while spec.job_id in table.creating:  # the same id, being placed by another call
            if table.creating[spec.job_id] != spec:
                raise AlreadyExists(f"job {spec.job_id!r} is being created with a "
                                    "different spec; use another job_id")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DeadlineExceeded(f"job {spec.job_id!r} is still being created")
            table.changed.wait(remaining)
        existing = table.entries.get(spec.job_id)
        if existing is not None:
            if existing.record.spec != spec:
                raise AlreadyExists(
                    f"job {spec.job_id!r} exists with a different spec (it differs in "
                    f"{', '.join(spec_differences(existing.record.spec, spec))}); delete it "
                    f"first (`dynams job delete {spec.job_id}`) or use another job_id")
            existing.last_used = time.monotonic()
        return existing

    def _reserve(self, spec: JobSpec) -> Quarantined | None:
        """Admit a new job and reserve its id; returns the quarantined job it retries, if
        any (put back if the creation fails). Call with the lock held."""
        table = self.table
        quarantined = table.quarantined.get(spec.job_id)
        if quarantined is not None and not (quarantined.retryable and quarantined.spec == spec):
            raise AlreadyExists(f"job {spec.job_id!r} exists but could not be restored "
                                f"({quarantined.error}); delete it first")
        admission.check_job_count(table.count(), self.limits)
        admission.check_resources(spec, self.limits)
        table.creating[spec.job_id] = spec
        table.quarantined.pop(spec.job_id, None)  # retried: restored below, or back
        return quarantined

    def _check_same_dataset(self, entry: JobEntry) -> None:
        """AlreadyExists if the job's dataset now encodes its samples differently (same
        URI and labels, another shape or decoder): that is another job, not this one."""
        job = entry.record
        with dataset_errors():
            manifest = read_manifest(job.spec.dataset_uri)
        changed = job.encoding.differences(DatasetEncoding.of(manifest))
        if changed:
            raise AlreadyExists(
                f"job {job.job_id!r} exists for this dataset as it was when the job was "
                f"created; the dataset has changed since ({'; '.join(changed)}). Delete the "
                "job first or use another job_id")

    def _place(self, spec: JobSpec, deadline: float, gave_up: Callable[[], bool],
               resume: bool = False) -> JobEntry:
        """Validate, start the scorers, save the spec, register; undo all on any failure.

        ``resume``: the job was persisted but could not be restored; its saved rounds
        are taken back, if its dataset still encodes samples as when it was created.
        """
        job = prepare_job(spec, self.access)
        if resume:
            loaded = self.store.load_job(spec.job_id)
            if loaded is not None and not loaded.error:
                job, error = restore_rounds(job, loaded)
                if error:
                    raise AlreadyExists(f"job {spec.job_id!r} exists, but {error}; delete it "
                                        "first or use another job_id")
        admission.check_memory(spec, job.manifest, self.limits)
        remaining = deadline - time.monotonic()
        if remaining <= 0 or gave_up():
            raise DeadlineExceeded(f"the caller's deadline passed before job {spec.job_id!r}'s "
                                   "scorers were started; nothing was created")
        try:
            scorers = self.scorer_factory(spec, job.manifest, ready_timeout=remaining)
        except Internal:
            if time.monotonic() < deadline:
                raise
            raise DeadlineExceeded(
                f"the cluster could not place job {spec.job_id!r}'s {spec.resources.num_scorers} "
                f"scorers (cpus {spec.resources.num_cpus:g}, gpus {spec.resources.num_gpus:g} "
                f"each) within {max(0.0, remaining):.0f}s; nothing was created") from None
        entry = JobEntry(job)
        try:
            if job.finished:  # a retried job whose every round was saved needs no scorers
                scorers.shutdown()
            else:
                with self.table.lock:
                    self.table.attach(entry, scorers)
            if gave_up():
                raise DeadlineExceeded(f"the caller gave up while job {spec.job_id!r} was being "
                                       "created; nothing was kept")
            try:
                self.store.save_spec(spec, job.encoding)
            except OSError as exc:
                if not resume:
                    self._forget_files(spec.job_id)
                raise Internal(f"cannot save job {spec.job_id!r} under the state dir "
                               f"({type(exc).__name__}: {exc.strerror or exc}); its scorers "
                               "were released") from None
            self.table.add(entry)
        except BaseException:
            if entry.scorers is not None:
                entry.scorers.shutdown()
            raise
        return entry

    def _forget_files(self, job_id: str) -> None:
        """Best effort: remove what a failed creation may have written."""
        try:
            self.store.delete_job(job_id)
        except OSError as exc:
            log.warning("job %s: leftovers of a failed creation stay on disk: %s", job_id, exc)

    # --- read -------------------------------------------------------------------------

    def get_job(self, job_id: str) -> JobStatus:
        with self.table.lock:
            snapshot = Snapshot.of(self.table.get(job_id))
        return snapshot.status()

    def list_jobs(self, after: str = "", limit: int = 100) -> tuple[list[JobSummary], str]:
        """Up to ``limit`` job summaries with ids after ``after``, and the next page's token
        (the last id returned; empty when this was the last page)."""
        table = self.table
        with table.lock:
            ids = table.ids_after(after)
            page = ids[:limit]
            summaries = [summary_of(table.quarantined.get(i) or table.entries[i].record)
                         for i in page]
        return summaries, (page[-1] if len(ids) > limit else "")

    def _status(self, entry: JobEntry) -> JobStatus:
        with self.table.lock:
            snapshot = Snapshot.of(entry)
        return snapshot.status()

    # --- delete -----------------------------------------------------------------------

    def delete_job(self, job_id: str) -> bool:
        """Delete a job and its state; raises Internal (and keeps the job) if the state
        cannot be removed, e.g. on a read-only state dir."""
        with self.table.lock:
            if job_id not in self.table.quarantined:
                self.table.get(job_id)
        try:
            self.store.delete_job(job_id)
        except OSError as exc:
            raise Internal(f"cannot delete job {job_id!r}'s state ({type(exc).__name__}: "
                           f"{exc.strerror or exc}); the job is kept") from None
        entry = self.table.remove(job_id)
        if entry is not None:
            with entry.scorers_lock, self.table.lock:
                scorers = self.table.detach(entry)
            if scorers is not None:
                scorers.shutdown()
        log.info("deleted job %s", job_id)
        return True

    def reap(self, ttl: float, expiry: float) -> tuple[list[str], list[str]]:
        """Release idle jobs' scorers and delete expired jobs (``reaper.reap``)."""
        return reap(self.table, self.delete_job, ttl, expiry)

    # --- rounds and answers -------------------------------------------------------------

    def push_weights(self, job_id: str, version: int, epoch: int,
                     records: list[TensorRecord], nbytes: int) -> tuple[int, bool]:
        """Commit a push and start its round (``RoundRunner.push``)."""
        return self.rounds.push(job_id, version, epoch, records, nbytes)

    def get_selection(self, job_id: str, epoch: int, rank: int, world_size: int,
                      drop_last: bool, timeout: float | None) -> Answer:
        """This rank's part of the epoch (``EpochServer.get_selection``)."""
        return self.epochs.get_selection(job_id, epoch, rank, world_size, drop_last, timeout)

    def shutdown(self) -> None:
        """Stop every job's scorers (state is already on disk)."""
        with self.table.lock:
            entries = list(self.table.entries.values())
            self.table.changed.notify_all()
        for entry in entries:
            scorers = entry.scorers
            if scorers is not None:
                scorers.shutdown()
