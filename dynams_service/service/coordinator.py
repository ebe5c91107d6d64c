"""The job coordinator: jobs, their scorer pools and rounds, and per-rank answers.

Plain Python over the core and the scorer pool; the gRPC servicer only translates to it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import ray
import torch

from ..core.dataset_access import DatasetAccess, DatasetAccessDenied, MalformedDatasetURI
from ..core.job import JobSpec
from ..core.models import build_architecture
from ..core.partition import epoch_order, rank_part
from ..core.policy import EpochKind, Plan
from ..core.proxy import PSPError, TensorRecord, records_to_state, spec_of
from ..core.registry import UnknownName
from ..core.selection import select
from ..core.shards import (
    DatasetManifest,
    DatasetNotFound,
    FingerprintMismatch,
    InvalidDatasetURI,
    ShardError,
    verified_labels,
)
from . import admission
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
from .scorer import ScorerPool
from .store import RoundResult, StateStore

__all__ = ["JobCoordinator", "Answer", "JobStatus", "JobSummary", "RoundStatus", "JobState"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Answer:
    """One rank's part of one epoch."""

    epoch: int
    round: int  # -1 for full-data epochs
    weights_version: int  # -1 for full-data epochs
    full: bool
    global_count: int
    indices: np.ndarray


@dataclass(frozen=True)
class RoundStatus:
    round: int
    epoch: int
    state: str  # waiting | scoring | done | failed
    weights_version: int = -1
    selected: int = 0
    seconds: float = 0.0
    error: str = ""


class JobState:
    """What a job is doing (``Job.state`` on the wire)."""

    ACTIVE = "active"      # its scorers run
    IDLE = "idle"          # no scorers now: before the first push, or released after job_ttl
    FINISHED = "finished"  # every round selected, scorers released
    FAILED = "failed"      # its persisted state is unreadable: quarantined, delete it


@dataclass(frozen=True)
class JobSummary:
    """A job in a few fields (ListJobs): bounded whatever the job's length."""

    job_id: str
    spec: JobSpec | None  # None for a quarantined job whose spec is unreadable
    state: str
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
    labels: np.ndarray
    proxy_spec: dict[str, tuple[str, tuple[int, ...]]]
    pool: ScorerPool | None = None
    rounds: dict[int, RoundResult] = field(default_factory=dict)
    scoring: dict[int, int] = field(default_factory=dict)  # round → version being scored
    failed: dict[int, str] = field(default_factory=dict)
    orders: OrderedDict = field(default_factory=OrderedDict)  # epoch → shuffled list
    deleted: bool = False
    pool_lock: threading.Lock = field(default_factory=threading.Lock)  # starting/stopping
    last_used: float = field(default_factory=time.monotonic)  # last RPC naming the job


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
                 limits: Limits | None = None) -> None:
        self.store = store
        self.metrics = metrics or SelectorMetrics()
        self.limits = limits or Limits()
        self.access = DatasetAccess(self.limits.dataset_roots)
        self._jobs: dict[str, _Job] = {}
        self._quarantined: dict[str, _Quarantined] = {}
        self._creating: dict[str, JobSpec] = {}  # job id → spec, while being placed
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._threads: list[threading.Thread] = []

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
                try:
                    job = self._prepare(loaded.spec)
                except Exception as exc:  # noqa: BLE001 - one bad job must not stop the rest
                    error, retryable = f"cannot restore: {exc}", True
            if job is None:
                log.error("job %s quarantined (listed as failed; %s): %s", loaded.job_id,
                          "CreateJob with its spec retries it" if retryable
                          else "delete it to drop it", error)
                with self._lock:
                    self._quarantined[loaded.job_id] = _Quarantined(
                        loaded.job_id, loaded.spec, error[:1000], retryable)
                continue
            job.rounds.update(loaded.rounds)
            with self._lock:
                self._jobs[loaded.job_id] = job
            restored += 1
            log.info("restored job %s with %d completed rounds", loaded.job_id,
                     len(loaded.rounds))
        return restored

    def create_job(self, spec: JobSpec, timeout: float | None = None,
                   gave_up: Callable[[], bool] = lambda: False) -> JobStatus:
        """Create a job (idempotent for an identical spec) and start its scorers.

        Waits at most ``timeout`` s (and ``Limits.placement_timeout``) for the scorers'
        placement; ``gave_up()`` true (the caller left) means nothing is created. See
        NOTE [ no global lock while placing ].
        """
        span = self.limits.placement_timeout if timeout is None else min(
            timeout, self.limits.placement_timeout)
        deadline = time.monotonic() + span
        with self._lock:
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
                        f"job {spec.job_id!r} exists with a different spec; delete it first "
                        "or use another job_id")
                existing.last_used = time.monotonic()
                return self._status(existing)
            quarantined = self._quarantined.get(spec.job_id)
            if quarantined is not None and not (quarantined.retryable
                                                and quarantined.spec == spec):
                raise AlreadyExists(f"job {spec.job_id!r} exists but could not be restored "
                                    "(listed as failed); delete it first")
            admission.check_job_count(len(self._jobs) + len(self._creating), self.limits)
            admission.check_resources(spec, self.limits)
            self._creating[spec.job_id] = spec
            self._quarantined.pop(spec.job_id, None)  # retried: restored below, or back
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

    def _place(self, spec: JobSpec, deadline: float, gave_up: Callable[[], bool],
               resume: bool = False) -> _Job:
        """Validate, start the scorers, save the spec, register; undo all on any failure.

        ``resume``: the job was persisted but could not be restored; its saved rounds
        are taken back.
        """
        job = self._prepare(spec)
        if resume:
            loaded = self.store.load_job(spec.job_id)
            if loaded is not None and not loaded.error:
                job.rounds.update(loaded.rounds)
        admission.check_memory(spec, job.manifest, self.limits)
        remaining = deadline - time.monotonic()
        if remaining <= 0 or gave_up():
            raise DeadlineExceeded(f"the caller's deadline passed before job {spec.job_id!r}'s "
                                   "scorers were started; nothing was created")
        try:
            job.pool = ScorerPool(spec, job.manifest, ready_timeout=remaining)
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
                self.store.save_spec(spec)
            except OSError as exc:
                if not resume:
                    self._forget_files(spec.job_id)
                raise Internal(f"cannot save job {spec.job_id!r} under the state dir "
                               f"({type(exc).__name__}: {exc.strerror or exc}); its scorers "
                               "were released") from None
            with self._lock:
                self._jobs[spec.job_id] = job
        except BaseException:
            job.pool.shutdown()
            job.pool = None
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
        except ValueError as exc:
            raise InvalidArgument(f"proxy width: {exc}") from None
        try:
            manifest, labels = verified_labels(spec.dataset_uri, spec.fingerprint)
        except UnknownName as exc:  # the manifest names a decoder no one registered here
            raise InvalidArgument(f"dataset {spec.dataset_uri}: {exc}") from None
        except DatasetNotFound as exc:
            raise NotFound(str(exc)) from None
        except InvalidDatasetURI as exc:
            raise InvalidArgument(str(exc)) from None
        except FingerprintMismatch as exc:
            raise FailedPrecondition(str(exc)) from None
        except ShardError as exc:
            raise FailedPrecondition(f"malformed dataset: {exc}") from None
        _check_input_shape(proxy, spec.proxy.architecture, manifest.sample_shape)
        if spec.resources.num_scorers > len(manifest.shards):
            raise InvalidArgument(
                f"num_scorers {spec.resources.num_scorers} exceeds the dataset's "
                f"{len(manifest.shards)} shards; use fewer scorers or smaller shards")
        return _Job(spec=spec, plan=spec.plan(), manifest=manifest, labels=labels,
                    proxy_spec=spec_of(proxy))

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
        total = len(job.plan.select_epochs)
        return JobSummary(job_id, job.spec, _state(job), total, len(job.rounds))

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
            with job.pool_lock:
                pool, job.pool = job.pool, None
            if pool is not None:
                pool.shutdown()
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
                    and j.pool is not None and now - j.last_used > ttl and not j.scoring]
        released = []
        for job in idle:
            if not job.pool_lock.acquire(blocking=False):
                continue  # its scorers are being started: not idle
            try:
                with self._lock:
                    if job.scoring or job.deleted or time.monotonic() - job.last_used <= ttl:
                        continue
                    pool, job.pool = job.pool, None
            finally:
                job.pool_lock.release()
            if pool is not None:
                pool.shutdown()
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
            state = records_to_state(records, job.proxy_spec)
        except PSPError as exc:
            raise InvalidArgument(f"weights for job {job_id!r}: {exc}") from None
        round_ = _round_of(plan, epoch)
        with self._lock:
            if round_ in job.rounds:
                return round_, True
            if round_ in job.scoring:
                return round_, False
            job.scoring[round_] = version
            job.failed.pop(round_, None)
        self.metrics.pushed(job_id, nbytes, version)
        snapshot = {name: t.numpy() for name, t in state.items()}
        thread = threading.Thread(target=self._run_round,
                                  args=(job, round_, epoch, version, snapshot),
                                  name=f"round-{job_id}-{round_}", daemon=True)
        self._threads.append(thread)
        thread.start()
        return round_, False

    def _run_round(self, job: _Job, round_: int, epoch: int, version: int,
                   snapshot: dict[str, np.ndarray]) -> None:
        started = time.perf_counter()
        try:
            with job.pool_lock:  # this job's only: other jobs start and stop meanwhile
                if job.pool is None and not job.deleted:
                    job.pool = ScorerPool(job.spec, job.manifest,
                                          ready_timeout=self.limits.placement_timeout)
            if job.pool is None:
                return
            ref = ray.put(snapshot)
            policy = job.spec.policy
            scored = job.pool.score(ref, policy.margin_mode)
            ratio = job.plan[epoch].size / job.plan.num_samples
            chosen = select(scored.margins, job.labels, ratio=min(1.0, ratio),
                            per_class=policy.per_class)
            if len(chosen) != job.plan[epoch].size:
                raise Internal(f"selected {len(chosen)} samples, the plan says "
                               f"{job.plan[epoch].size}")
            result = RoundResult(round_, epoch, version, chosen, scored.margins[chosen],
                                 time.perf_counter() - started)
            if job.deleted:
                return
            self.store.save_round(job.spec.job_id, result)
        except Exception as exc:  # noqa: BLE001 - reported to waiters and logs
            log.exception("job %s round %d failed", job.spec.job_id, round_)
            with self._lock:
                job.scoring.pop(round_, None)
                job.failed[round_] = str(exc)
                self._changed.notify_all()
            return
        with job.pool_lock, self._lock:
            job.rounds[round_] = result
            job.scoring.pop(round_, None)
            finished = len(job.rounds) == len(job.plan.select_epochs)
            pool, job.pool = (job.pool, None) if finished else (None, job.pool)
            self._changed.notify_all()
        if pool is not None:
            # Every round is selected: give the scorers' CPUs/GPUs back to the cluster
            # (a re-push for a done round needs none; a restored job starts them lazily).
            pool.shutdown()
            log.info("job %s: all %d rounds selected, scorers released", job.spec.job_id,
                     len(job.rounds))
        per_class = np.bincount(job.labels[chosen], minlength=job.manifest.fingerprint.num_classes)
        self.metrics.round_done(job.spec.job_id, job.plan.num_samples, scored.seconds,
                                result.seconds)
        log.info("job %s round %d (epoch %d, weights v%d): selected %d, per class %s, "
                 "scoring %.2fs, round %.2fs", job.spec.job_id, round_, epoch, version,
                 len(chosen), per_class.tolist(), scored.seconds, result.seconds)

    # --- answers ----------------------------------------------------------------------

    def get_selection(self, job_id: str, epoch: int, rank: int, world_size: int,
                      drop_last: bool, timeout: float | None) -> Answer:
        """This rank's part of the epoch; waits up to ``timeout`` s for a round in progress."""
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
                while round_ not in job.rounds:
                    if job.deleted:
                        raise NotFound(f"job {job_id!r} was deleted")
                    if round_ in job.failed:
                        raise RoundFailed(f"round {round_} failed: {job.failed[round_]}; push the "
                                       "weights again to retry")
                    if round_ not in job.scoring:
                        select_epoch = job.plan.select_epochs[round_]
                        raise WeightsNotPushed(
                            f"no weights pushed yet for round {round_} (epoch {epoch}); push "
                            f"the PSP weights for epoch {select_epoch} first")
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise DeadlineExceeded(f"round {round_} is still scoring")
                    self._changed.wait(remaining)
                result = job.rounds[round_]
                canonical, version = result.indices, result.weights_version
            order = job.orders.get(epoch)
        if order is None:
            if canonical is None:
                canonical = np.arange(job.plan.num_samples, dtype=np.int64)
            order = epoch_order(canonical, job.spec.policy.seed, epoch)
            with self._lock:
                job.orders[epoch] = order
                while len(job.orders) > 4:
                    job.orders.popitem(last=False)
        part = rank_part(order, rank, world_size, drop_last)
        self.metrics.served(job_id)
        return Answer(epoch, round_, version, entry.kind is EpochKind.FULL, len(order), part)

    def shutdown(self) -> None:
        """Stop every job's scorers (state is already on disk)."""
        with self._lock:
            jobs = list(self._jobs.values())
            self._changed.notify_all()
        for job in jobs:
            if job.pool is not None:
                job.pool.shutdown()


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


def _quarantine_message(q: _Quarantined) -> str:
    retry = ("fix what it needs and CreateJob it again with the same spec, or delete it"
             if q.retryable else "delete it and create it again")
    return f"job {q.job_id!r} could not be restored ({q.error}); {retry}"


def _state(job: _Job) -> str:
    if job.pool is not None:
        return JobState.ACTIVE
    if len(job.rounds) == len(job.plan.select_epochs):
        return JobState.FINISHED
    return JobState.IDLE


@dataclass(frozen=True)
class _Snapshot:
    """What a job's status needs, copied under the lock so the (long) rest runs outside."""

    job: _Job
    rounds: dict[int, RoundResult]
    scoring: dict[int, int]
    failed: dict[int, str]
    state: str
    names: list[str]
    infos: list[dict]

    @classmethod
    def of(cls, job: _Job) -> _Snapshot:
        pool = job.pool
        return cls(job, dict(job.rounds), dict(job.scoring), dict(job.failed), _state(job),
                   list(pool.names) if pool else [], list(pool.infos) if pool else [])

    def status(self) -> JobStatus:
        job = self.job
        rounds = []
        for epoch in job.plan.select_epochs:
            r = _round_of(job.plan, epoch)
            if r in self.rounds:
                res = self.rounds[r]
                rounds.append(RoundStatus(r, epoch, "done", res.weights_version,
                                          len(res.indices), res.seconds))
            elif r in self.scoring:
                rounds.append(RoundStatus(r, epoch, "scoring", self.scoring[r]))
            elif r in self.failed:
                rounds.append(RoundStatus(r, epoch, "failed", error=self.failed[r]))
            else:
                rounds.append(RoundStatus(r, epoch, "waiting"))
        infos = [{"name": n, **i} for n, i in zip(self.names, self.infos, strict=False)]
        summary = JobSummary(job.spec.job_id, job.spec, self.state, len(rounds),
                             len(self.rounds))
        return JobStatus(job.spec, job.plan, rounds, self.names, infos, summary)


def _round_of(plan: Plan, epoch: int) -> int:
    """The selection round an epoch trains on (it must not be a full-data epoch)."""
    round_ = plan[epoch].round
    if round_ is None:
        raise AssertionError(f"epoch {epoch} is a full-data epoch and has no round")
    return round_
