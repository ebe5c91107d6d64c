"""The job coordinator: jobs, their scorers and rounds, and per-rank answers.

Plain Python over the core and the scorer facade (no Ray here: scorers take and return
numpy); the gRPC servicer only translates to it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

from ..core.dataset_access import DatasetAccess, DatasetAccessDenied, MalformedDatasetURI
from ..core.job import JobSpec, JobState, RoundState, SelectionKind, spec_differences
from ..core.models import build_architecture
from ..core.partition import epoch_order, rank_part
from ..core.policy import EpochKind, Plan
from ..core.proxy import PSPError, TensorRecord, records_to_state, spec_of
from ..core.registry import UnknownName
from ..core.scores import get_score
from ..core.shards import (
    DatasetManifest,
    DatasetNotFound,
    FingerprintMismatch,
    InvalidDatasetURI,
    ShardError,
    read_manifest,
    verify_dataset,
)
from ..core.slimming import SlimmingError
from . import admission
from .dataset_identity import DatasetEncoding
from .errors import (
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    RoundFailed,
    WeightsNotPushed,
)
from .limits import Limits
from .metrics import SelectorMetrics
from .rounds import Round
from .scorer import JobScorers
from .store import LoadedJob, RoundResult, StateStore
from .threads import RoundThreads

__all__ = ["JobCoordinator", "Answer", "JobStatus", "JobSummary", "RoundStatus", "JobState",
           "RoundState"]

log = logging.getLogger(__name__)
ORDERS_KEPT = 2  # shuffled epoch lists kept per job (this epoch's and the next one's)


@dataclass(frozen=True)
class Answer:
    """One rank's part of one epoch."""

    epoch: int
    round: int  # -1 for full-data epochs
    weights_version: int  # -1 for full-data epochs
    kind: SelectionKind  # FULL or SUBSET
    global_count: int
    indices: np.ndarray


@dataclass(frozen=True)
class RoundStatus:
    round: int
    epoch: int
    state: RoundState
    weights_version: int = -1
    selected: int = 0
    seconds: float = 0.0
    error: str = ""


@dataclass(frozen=True)
class JobSummary:
    """A job in a few fields (ListJobs): bounded whatever the job's length."""

    job_id: str
    spec: JobSpec | None  # None for a quarantined job whose spec is unreadable
    state: JobState
    rounds_total: int = 0
    rounds_done: int = 0
    error: str = ""


@dataclass(frozen=True)
class JobStatus:
    spec: JobSpec
    plan: Plan
    rounds: list[RoundStatus]
    scorers: list[str]
    scorer_infos: list[dict]  # name, node_id, device, rows, input_bytes
    summary: JobSummary | None = None


@dataclass
class _Job:
    spec: JobSpec
    plan: Plan
    manifest: DatasetManifest
    encoding: DatasetEncoding  # the dataset's when the job was created: part of its identity
    proxy_spec: dict[str, tuple[str, tuple[int, ...]]]
    rounds: list[Round]  # one per selection round, indexed by round number
    scorers: JobScorers | None = None
    orders: OrderedDict = field(default_factory=OrderedDict)  # epoch → shuffled list
    orders_lock: threading.Lock = field(default_factory=threading.Lock)  # builds one order
    deleted: bool = False
    scorers_lock: threading.Lock = field(default_factory=threading.Lock)  # starting/stopping
    last_used: float = field(default_factory=time.monotonic)  # last RPC naming the job

    def rounds_in(self, state: RoundState) -> int:
        return sum(r.state is state for r in self.rounds)

    @property
    def finished(self) -> bool:
        return all(r.state is RoundState.DONE for r in self.rounds)

    @property
    def scoring(self) -> bool:
        return any(r.state is RoundState.SCORING for r in self.rounds)


@dataclass(frozen=True)
class _Quarantined:
    """A persisted job whose state could not be read or restored."""

    job_id: str
    spec: JobSpec | None
    error: str
    retryable: bool = False  # its files are fine, restoring failed (e.g. dataset missing)


class JobCoordinator:
    """Owns every job; thread-safe; persists specs and rounds through ``StateStore``.

    NOTE [ no global lock while placing ]
    Creating a job waits for Ray to place its scorers, which may take minutes or never
    happen. That wait holds no lock any other call needs: the job id alone is reserved
    (``_creating``), so a CreateJob for another job, and every other call, proceeds. The
    wait ends at the caller's deadline (or ``Limits.placement_timeout``); a caller that
    gave up gets nothing created, and whatever was reserved is released on every failure.
    """

    def __init__(self, store: StateStore, metrics: SelectorMetrics | None = None,
                 limits: Limits | None = None,
                 scorer_factory: Callable[..., JobScorers] = JobScorers) -> None:
        """``scorer_factory(spec, manifest, ready_timeout=s)`` starts a job's scorers:
        ``JobScorers`` itself, or (benchmarks) a ``functools.partial`` of it naming another
        actor class; an operator's choice, never a client's."""
        self.store = store
        self.scorer_factory = scorer_factory
        self.metrics = metrics or SelectorMetrics()
        self.limits = limits or Limits()
        self.access = DatasetAccess(self.limits.dataset_roots)
        self._jobs: dict[str, _Job] = {}
        self._quarantined: dict[str, _Quarantined] = {}
        self._stopping = False  # shutdown() began: rounds in flight end without an alarm
        self._creating: dict[str, JobSpec] = {}  # job id → spec, while being placed
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self.round_threads = RoundThreads()

    # --- jobs -------------------------------------------------------------------------

    def restore(self) -> int:
        """Reload persisted jobs and their completed rounds; scorers start on first push.

        A job whose files are unreadable, or that no longer validates, is quarantined:
        logged, listed as failed, kept on disk until deleted; the others are restored.
        """
        restored = 0
        for loaded in self.store.load():
            error, retryable = loaded.error, False
            job = None
            if not error and loaded.spec is not None:
                error = self._dataset_change(loaded)
            if not error and loaded.spec is not None:
                try:
                    job = self._prepare(loaded.spec)
                except Exception as exc:  # noqa: BLE001 - one bad job must not stop the rest
                    error, retryable = f"cannot restore: {exc}", True
            if job is not None:
                error = _restore_rounds(job, loaded)
                job = None if error else job
            if job is None:
                log.error("job %s quarantined (listed as failed; %s): %s", loaded.job_id,
                          "CreateJob with its spec retries it" if retryable
                          else "delete it to drop it", error)
                with self._lock:
                    self._quarantined[loaded.job_id] = _Quarantined(
                        loaded.job_id, loaded.spec, error[:1000], retryable)
                continue
            with self._lock:
                self._jobs[loaded.job_id] = job
            restored += 1
            log.info("restored job %s with %d completed rounds", loaded.job_id,
                     len(loaded.rounds))
        return restored

    def _dataset_change(self, loaded: LoadedJob) -> str:
        """Why a persisted job's dataset is no longer the one it was created for (its
        samples' encoding changed), or "" (unchanged, unknown, or unreadable: restoring
        it then says what is wrong)."""
        if loaded.encoding is None or loaded.spec is None:
            return ""
        uri = loaded.spec.dataset_uri
        try:
            self.access.check(uri)
            now = DatasetEncoding.of(read_manifest(uri))
        except (MalformedDatasetURI, DatasetAccessDenied, ShardError, ValueError):
            return ""
        changed = loaded.encoding.differences(now)
        return f"its dataset changed since the job was created ({'; '.join(changed)})" \
            if changed else ""

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
        with self._lock:
            existing = self._existing(spec, deadline)
            if existing is None:
                quarantined = self._reserve(spec)
        if existing is not None:
            self._check_same_dataset(existing)
            with self._lock:
                return self._status(existing)
        job = None
        try:
            job = self._place(spec, deadline, gave_up, resume=quarantined is not None)
        finally:
            with self._lock:
                self._creating.pop(spec.job_id, None)
                if job is None and quarantined is not None:
                    self._quarantined[spec.job_id] = quarantined
                self._changed.notify_all()
        log.info("created job %s: %d samples, %d scorers, %d epochs", spec.job_id,
                 spec.fingerprint.num_samples, spec.resources.num_scorers, len(job.plan.sizes))
        with self._lock:
            return self._status(job)

    def _existing(self, spec: JobSpec, deadline: float) -> _Job | None:
        """The job already created under ``spec.job_id``, after any creation of it in
        progress ends; AlreadyExists if its spec differs. Call with the lock held."""
        while spec.job_id in self._creating:  # the same id, being placed by another call
            if self._creating[spec.job_id] != spec:
                raise AlreadyExists(f"job {spec.job_id!r} is being created with a "
                                    "different spec; use another job_id")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DeadlineExceeded(f"job {spec.job_id!r} is still being created")
            self._changed.wait(remaining)
        existing = self._jobs.get(spec.job_id)
        if existing is not None:
            if existing.spec != spec:
                raise AlreadyExists(
                    f"job {spec.job_id!r} exists with a different spec (it differs in "
                    f"{', '.join(spec_differences(existing.spec, spec))}); delete it first "
                    f"(`dynams job delete {spec.job_id}`) or use another job_id")
            existing.last_used = time.monotonic()
        return existing

    def _reserve(self, spec: JobSpec) -> _Quarantined | None:
        """Admit a new job and reserve its id; returns the quarantined job it retries, if
        any (put back if the creation fails). Call with the lock held."""
        quarantined = self._quarantined.get(spec.job_id)
        if quarantined is not None and not (quarantined.retryable and quarantined.spec == spec):
            raise AlreadyExists(f"job {spec.job_id!r} exists but could not be restored "
                                f"({quarantined.error}); delete it first")
        admission.check_job_count(len(self._jobs) + len(self._creating), self.limits)
        admission.check_resources(spec, self.limits)
        self._creating[spec.job_id] = spec
        self._quarantined.pop(spec.job_id, None)  # retried: restored below, or back
        return quarantined

    def _check_same_dataset(self, job: _Job) -> None:
        """AlreadyExists if the job's dataset now encodes its samples differently (same
        URI and labels, another shape or decoder): that is another job, not this one."""
        with _dataset_errors():
            manifest = read_manifest(job.spec.dataset_uri)
        changed = job.encoding.differences(DatasetEncoding.of(manifest))
        if changed:
            raise AlreadyExists(
                f"job {job.spec.job_id!r} exists for this dataset as it was when the job was "
                f"created; the dataset has changed since ({'; '.join(changed)}). Delete the "
                "job first or use another job_id")

    def _place(self, spec: JobSpec, deadline: float, gave_up: Callable[[], bool],
               resume: bool = False) -> _Job:
        """Validate, start the scorers, save the spec, register; undo all on any failure.

        ``resume``: the job was persisted but could not be restored; its saved rounds
        are taken back, if its dataset still encodes samples as when it was created.
        """
        job = self._prepare(spec)
        if resume:
            loaded = self.store.load_job(spec.job_id)
            if loaded is not None and not loaded.error:
                error = _restore_rounds(job, loaded)
                if error:
                    raise AlreadyExists(f"job {spec.job_id!r} exists, but {error}; delete it "
                                        "first or use another job_id")
        admission.check_memory(spec, job.manifest, self.limits)
        remaining = deadline - time.monotonic()
        if remaining <= 0 or gave_up():
            raise DeadlineExceeded(f"the caller's deadline passed before job {spec.job_id!r}'s "
                                   "scorers were started; nothing was created")
        try:
            job.scorers = self.scorer_factory(spec, job.manifest, ready_timeout=remaining)
        except Internal:
            if time.monotonic() < deadline:
                raise
            raise DeadlineExceeded(
                f"the cluster could not place job {spec.job_id!r}'s {spec.resources.num_scorers} "
                f"scorers (cpus {spec.resources.num_cpus:g}, gpus {spec.resources.num_gpus:g} "
                f"each) within {max(0.0, remaining):.0f}s; nothing was created") from None
        try:
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
            with self._lock:
                self._jobs[spec.job_id] = job
        except BaseException:
            job.scorers.shutdown()
            job.scorers = None
            raise
        return job

    def _forget_files(self, job_id: str) -> None:
        """Best effort: remove what a failed creation may have written."""
        try:
            self.store.delete_job(job_id)
        except OSError as exc:
            log.warning("job %s: leftovers of a failed creation stay on disk: %s", job_id, exc)

    def _prepare(self, spec: JobSpec) -> _Job:
        """Validate a spec against the registry and the dataset (no actors yet)."""
        try:
            self.access.check(spec.dataset_uri)
        except MalformedDatasetURI as exc:
            raise InvalidArgument(str(exc)) from None
        except DatasetAccessDenied as exc:
            raise PermissionDenied(str(exc)) from None
        try:
            model = build_architecture(spec.proxy.architecture)
            proxy = model.make_proxy(spec.proxy.width)
        except KeyError as exc:
            raise InvalidArgument(str(exc.args[0])) from None
        except SlimmingError as exc:  # the operator registered a network that cannot slim
            raise FailedPrecondition(f"architecture {spec.proxy.architecture!r} is registered "
                                     f"on this selector but cannot be built: {exc}") from None
        except ValueError as exc:
            raise InvalidArgument(f"proxy width: {exc}") from None
        try:
            get_score(spec.policy.score)
        except UnknownName as exc:
            raise InvalidArgument(f"policy.score: {exc}") from None
        try:
            # The labels are hashed shard by shard against the fingerprint and not kept: the
            # scorers hold them for the selection (the head keeps nothing of size N).
            with _dataset_errors():
                manifest = verify_dataset(spec.dataset_uri, spec.fingerprint)
        except UnknownName as exc:  # the manifest names a decoder no one registered here
            raise InvalidArgument(f"dataset {spec.dataset_uri}: {exc}") from None
        _check_input_shape(proxy, spec.proxy.architecture, manifest.sample_shape)
        if spec.resources.num_scorers > len(manifest.shards):
            raise InvalidArgument(
                f"num_scorers {spec.resources.num_scorers} exceeds the dataset's "
                f"{len(manifest.shards)} shards; use fewer scorers or smaller shards")
        plan = spec.plan()
        rounds = [Round(index=i, epoch=epoch) for i, epoch in enumerate(plan.select_epochs)]
        return _Job(spec=spec, plan=plan, manifest=manifest,
                    encoding=DatasetEncoding.of(manifest),
                    proxy_spec=spec_of(proxy), rounds=rounds)

    def _job(self, job_id: str, touch: bool = True) -> _Job:
        job = self._jobs.get(job_id)
        if job is None:
            if job_id in self._quarantined:
                raise FailedPrecondition(_quarantine_message(self._quarantined[job_id]))
            # The message names no other job: ids may be private to their owners.
            raise NotFound(f"no job {job_id!r}; create it first")
        if touch:
            job.last_used = time.monotonic()
        return job

    def get_job(self, job_id: str) -> JobStatus:
        with self._lock:
            job = self._job(job_id)
            snapshot = _Snapshot.of(job)
        return snapshot.status()

    def list_jobs(self, after: str = "", limit: int = 100) -> tuple[list[JobSummary], str]:
        """Up to ``limit`` job summaries with ids after ``after``, and the next page's token
        (the last id returned; empty when this was the last page)."""
        with self._lock:
            ids = sorted(i for i in (*self._jobs, *self._quarantined) if i > after)
            page = ids[:limit]
            summaries = [self._summary(i) for i in page]
        return summaries, (page[-1] if len(ids) > limit else "")

    def _summary(self, job_id: str) -> JobSummary:
        quarantined = self._quarantined.get(job_id)
        if quarantined is not None:
            return JobSummary(job_id, quarantined.spec, JobState.FAILED,
                              error=quarantined.error)
        job = self._jobs[job_id]
        return JobSummary(job_id, job.spec, _state(job), len(job.rounds),
                          job.rounds_in(RoundState.DONE))

    def _status(self, job: _Job) -> JobStatus:
        return _Snapshot.of(job).status()

    def delete_job(self, job_id: str) -> bool:
        """Delete a job and its state; raises Internal (and keeps the job) if the state
        cannot be removed, e.g. on a read-only state dir."""
        with self._lock:
            if job_id not in self._quarantined:
                self._job(job_id)
        try:
            self.store.delete_job(job_id)
        except OSError as exc:
            raise Internal(f"cannot delete job {job_id!r}'s state ({type(exc).__name__}: "
                           f"{exc.strerror or exc}); the job is kept") from None
        with self._lock:
            self._quarantined.pop(job_id, None)
            job = self._jobs.pop(job_id, None)
            if job is not None:
                job.deleted = True
            self._changed.notify_all()
        if job is not None:
            with job.scorers_lock:
                scorers, job.scorers = job.scorers, None
            if scorers is not None:
                scorers.shutdown()
        log.info("deleted job %s", job_id)
        return True

    # --- lifetime ---------------------------------------------------------------------

    def reap(self, ttl: float, expiry: float) -> tuple[list[str], list[str]]:
        """Release the scorers of jobs idle for ``ttl`` s, delete jobs idle for ``expiry``
        s (0 disables either). Returns (released, deleted) job ids."""
        now = time.monotonic()
        with self._lock:
            expired = [i for i, j in self._jobs.items()
                       if expiry > 0 and now - j.last_used > expiry and not j.scoring]
            idle = [j for i, j in self._jobs.items() if i not in expired and ttl > 0
                    and j.scorers is not None and now - j.last_used > ttl and not j.scoring]
        released = []
        for job in idle:
            if not job.scorers_lock.acquire(blocking=False):
                continue  # its scorers are being started: not idle
            try:
                with self._lock:
                    if job.scoring or job.deleted or time.monotonic() - job.last_used <= ttl:
                        continue
                    scorers, job.scorers = job.scorers, None
            finally:
                job.scorers_lock.release()
            if scorers is not None:
                scorers.shutdown()
                released.append(job.spec.job_id)
                log.info("job %s: no RPC for %.0fs, scorers released (the next push starts "
                         "them again)", job.spec.job_id, ttl)
        deleted = []
        for job_id in expired:
            try:
                self.delete_job(job_id)
            except (NotFound, Internal) as exc:
                log.warning("job %s expired but was not deleted: %s", job_id, exc)
                continue
            deleted.append(job_id)
            log.info("job %s: no RPC for %.0fs, expired and deleted", job_id, expiry)
        return released, deleted

    # --- weights ----------------------------------------------------------------------

    def push_weights(self, job_id: str, version: int, epoch: int,
                     records: list[TensorRecord], nbytes: int) -> tuple[int, bool]:
        """Commit a whole push for the round starting at ``epoch``; start scoring it.

        Returns (round, already_done). Pushing again for a completed round changes nothing.
        """
        with self._lock:
            job = self._job(job_id)
            plan = job.plan
        if not 0 <= epoch < len(plan.epochs):
            raise InvalidArgument(f"epoch {epoch} must be in [0, {len(plan.epochs) - 1}]")
        if plan[epoch].kind is not EpochKind.SELECT:
            raise FailedPrecondition(
                f"epoch {epoch} is a {plan[epoch].kind.value} epoch and needs no weights; "
                f"push for a selection epoch: {plan.select_epochs}")
        if version < 0:
            raise InvalidArgument(f"version must be >= 0, got {version}")
        try:
            state_dict = records_to_state(records, job.proxy_spec)
        except PSPError as exc:
            raise InvalidArgument(f"weights for job {job_id!r}: {exc}") from None
        round_ = _round_of(plan, epoch)
        with self._lock:
            state = job.rounds[round_].state
            if state is RoundState.DONE:
                return round_, True
            if state is RoundState.SCORING:
                return round_, False
            job.rounds[round_] = job.rounds[round_].scoring(version)
        self.metrics.pushed(job_id, nbytes, version)
        snapshot = {name: t.numpy() for name, t in state_dict.items()}
        self.round_threads.start(f"round-{job_id}-{round_}", self._run_round, job, round_,
                                 epoch, version, snapshot)
        return round_, False

    def _run_round(self, job: _Job, round_: int, epoch: int, version: int,
                   snapshot: dict[str, np.ndarray]) -> None:
        started = time.perf_counter()
        try:
            with job.scorers_lock:  # this job's only: other jobs start and stop meanwhile
                if job.scorers is None and not job.deleted:
                    job.scorers = self.scorer_factory(job.spec, job.manifest,
                                             ready_timeout=self.limits.placement_timeout)
                scorers = job.scorers
            if scorers is None:
                return
            policy = job.spec.policy
            scored = scorers.score(snapshot, policy.score)
            scored_at = time.perf_counter()
            # The scorers keep the margins: NOTE [ scorers keep their margins ] in scorer.py.
            selection = scorers.select(job.plan[epoch].size, round_)
            chosen = selection.indices
            result = RoundResult(round_, epoch, version, chosen, selection.margins,
                                 time.perf_counter() - started)
            if job.deleted:
                return
            self.store.save_round(job.spec.job_id, result)
        except Exception as exc:  # noqa: BLE001 - reported to waiters and logs
            if isinstance(exc, Internal) and (job.deleted or self._stopping):
                # its scorers were released under it
                log.info("job %s round %d ended with the job or the selector: %s",
                         job.spec.job_id, round_, exc)
            else:
                log.exception("job %s round %d failed", job.spec.job_id, round_)
            with self._lock:
                job.rounds[round_] = job.rounds[round_].failed(str(exc))
                self._changed.notify_all()
            return
        with job.scorers_lock, self._lock:
            job.rounds[round_] = job.rounds[round_].done(result)
            released, job.scorers = ((job.scorers, None) if job.finished
                                     else (None, job.scorers))
            self._changed.notify_all()
        if released is not None:
            # Every round is selected: give the scorers' CPUs/GPUs back to the cluster
            # (a re-push for a done round needs none; a restored job starts them lazily).
            released.shutdown()
            log.info("job %s: all %d rounds selected, scorers released", job.spec.job_id,
                     len(job.rounds))
        self.metrics.round_done(job.spec.job_id, job.plan.num_samples, scored.seconds,
                                result.seconds)
        log.info("job %s round %d (epoch %d, weights v%d): selected %d in %d passes, "
                 "scoring %.2fs, selecting and saving %.2fs, round %.2fs", job.spec.job_id,
                 round_, epoch, version, len(chosen), selection.passes, scored.seconds,
                 time.perf_counter() - scored_at, result.seconds)

    # --- answers ----------------------------------------------------------------------

    def get_selection(self, job_id: str, epoch: int, rank: int, world_size: int,
                      drop_last: bool, timeout: float | None) -> Answer:
        """This rank's part of the epoch; waits up to ``timeout`` s for the round's weights
        and scoring."""
        if world_size < 1:
            raise InvalidArgument(f"world_size must be >= 1, got {world_size}")
        if not 0 <= rank < world_size:
            raise InvalidArgument(f"rank {rank} must be in [0, {world_size - 1}]")
        cap = self.limits.max_selection_wait
        timeout = cap if timeout is None else min(timeout, cap)
        deadline = time.monotonic() + timeout
        with self._lock:
            job = self._job(job_id)
            if not 0 <= epoch < len(job.plan.epochs):
                raise InvalidArgument(f"epoch {epoch} must be in [0, {len(job.plan.epochs) - 1}]")
            entry = job.plan[epoch]
            if entry.kind is EpochKind.FULL:
                canonical, round_, version = None, -1, -1
            else:
                round_ = _round_of(job.plan, epoch)
                # Waits for the round's weights as for its scoring (one call per rank per
                # epoch); at the deadline the state says which of the two did not come.
                while (current := job.rounds[round_]).state is not RoundState.DONE:
                    if job.deleted:
                        raise NotFound(f"job {job_id!r} was deleted")
                    if current.state is RoundState.FAILED:
                        raise RoundFailed(f"round {round_} failed: {current.error}; push the "
                                       "weights again to retry")
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 and current.state is RoundState.WAITING:
                        raise WeightsNotPushed(
                            f"no weights pushed for round {round_} (epoch {epoch}) within "
                            f"{timeout:.1f}s; push the PSP weights for epoch {current.epoch}")
                    if remaining <= 0:
                        raise DeadlineExceeded(f"round {round_} is still scoring")
                    self._changed.wait(remaining)
                result = current.result
                canonical, version = result.indices, result.weights_version
        order = self._epoch_order(job, epoch, canonical)
        part = rank_part(order, rank, world_size, drop_last)  # a view: NOTE [ serving ranks ]
        self.metrics.served(job_id)
        kind = SelectionKind.FULL if entry.kind is EpochKind.FULL else SelectionKind.SUBSET
        return Answer(epoch, round_, version, kind, len(order), part)

    def _epoch_order(self, job: _Job, epoch: int, canonical: np.ndarray | None) -> np.ndarray:
        """The epoch's shuffled list, built once however many ranks ask at once.

        NOTE [ serving ranks ]
        All ranks of an epoch share one shuffled list: the first request builds it under
        the job's ``orders_lock`` (the others wait for it instead of each building its own
        copy), and each rank's part is a strided view of it (``rank_part``), streamed in
        chunks made contiguous one at a time (``protocol.selection_chunks``). The lists
        of the last ``ORDERS_KEPT`` epochs asked for are kept: a trainer asks for this
        epoch and the next.
        """
        with job.orders_lock:
            with self._lock:
                order = job.orders.get(epoch)
                if order is not None:
                    job.orders.move_to_end(epoch)
                    return order
            if canonical is None:
                canonical = np.arange(job.plan.num_samples, dtype=np.int64)
            order = epoch_order(canonical, job.spec.policy.seed, epoch)
            with self._lock:
                job.orders[epoch] = order
                while len(job.orders) > ORDERS_KEPT:
                    job.orders.popitem(last=False)
            return order

    def shutdown(self) -> None:
        """Stop every job's scorers (state is already on disk)."""
        with self._lock:
            self._stopping = True
            jobs = list(self._jobs.values())
            self._changed.notify_all()
        for job in jobs:
            if job.scorers is not None:
                job.scorers.shutdown()


@contextmanager
def _dataset_errors() -> Iterator[None]:
    """Turn a dataset's read errors into the status a client can act on."""
    try:
        yield
    except DatasetNotFound as exc:
        raise NotFound(str(exc)) from None
    except InvalidDatasetURI as exc:
        raise InvalidArgument(str(exc)) from None
    except FingerprintMismatch as exc:
        raise FailedPrecondition(str(exc)) from None
    except ShardError as exc:
        raise FailedPrecondition(f"malformed dataset: {exc}") from None


def _check_input_shape(proxy: torch.nn.Module, architecture: str,
                       shape: tuple[int, ...]) -> None:
    """Refuse a dataset whose decoded samples the architecture cannot read (one dry
    forward of a zero sample), instead of failing every round in the scorers."""
    try:
        with torch.inference_mode():
            proxy(torch.zeros((1, *shape)))
    except (RuntimeError, ValueError) as exc:
        reason = str(exc).splitlines()[0][:200]
        raise InvalidArgument(f"architecture {architecture!r} cannot read this dataset's "
                              f"samples of shape {list(shape)}: {reason}") from None


def _restore_rounds(job: _Job, loaded: LoadedJob) -> str:
    """Take back a persisted job's rounds into ``job`` (freshly prepared from its spec);
    returns why they cannot be, or "" when they were."""
    if loaded.encoding is not None:  # None: saved before encodings were kept
        changed = loaded.encoding.differences(job.encoding)
        if changed:  # the dataset was rewritten under the job: not the same job any more
            return f"its dataset changed since the job was created ({'; '.join(changed)})"
    for index, result in loaded.rounds.items():
        if not 0 <= index < len(job.rounds):
            return f"saved round {index} is not in its plan of {len(job.rounds)} rounds"
        job.rounds[index] = job.rounds[index].done(result)
    return ""


def _quarantine_message(q: _Quarantined) -> str:
    retry = ("fix what it needs and CreateJob it again with the same spec, or delete it"
             if q.retryable else "delete it and create it again")
    return f"job {q.job_id!r} could not be restored ({q.error}); {retry}"


def _state(job: _Job) -> str:
    if job.scorers is not None:
        return JobState.ACTIVE
    if job.finished:
        return JobState.FINISHED
    return JobState.IDLE


@dataclass(frozen=True)
class _Snapshot:
    """What a job's status needs, copied under the lock so the (long) rest runs outside."""

    job: _Job
    rounds: list[Round]  # immutable records: a copy of the list is a consistent view
    state: str
    names: list[str]
    infos: list[dict]

    @classmethod
    def of(cls, job: _Job) -> _Snapshot:
        scorers = job.scorers
        return cls(job, list(job.rounds), _state(job),
                   list(scorers.names) if scorers else [], list(scorers.infos) if scorers else [])

    def status(self) -> JobStatus:
        job = self.job
        rounds = [_round_status(r) for r in self.rounds]
        infos = [{"name": n, **i} for n, i in zip(self.names, self.infos, strict=False)]
        done = sum(r.state is RoundState.DONE for r in self.rounds)
        summary = JobSummary(job.spec.job_id, job.spec, self.state, len(rounds), done)
        return JobStatus(job.spec, job.plan, rounds, self.names, infos, summary)


def _round_status(r: Round) -> RoundStatus:
    if r.state is RoundState.DONE:
        return RoundStatus(r.index, r.epoch, r.state, r.weights_version, len(r.result.indices),
                           r.result.seconds)
    if r.state is RoundState.FAILED:
        return RoundStatus(r.index, r.epoch, r.state, error=r.error)
    return RoundStatus(r.index, r.epoch, r.state, r.weights_version)


def _round_of(plan: Plan, epoch: int) -> int:
    """The selection round an epoch trains on (it must not be a full-data epoch)."""
    round_ = plan[epoch].round
    if round_ is None:
        raise AssertionError(f"epoch {epoch} is a full-data epoch and has no round")
    return round_
