"""The job coordinator: jobs, their scorer pools and rounds, and per-rank answers.

Plain Python over the core and the scorer pool; the gRPC servicer only translates to it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import ray
import torch

from ..core.job import JobSpec
from ..core.models import build_architecture
from ..core.partition import epoch_order, rank_part
from ..core.policy import EpochKind, Plan
from ..core.psp import PSPError, TensorRecord, records_to_state, spec_of
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
from .errors import (
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
)
from .metrics import SelectorMetrics
from .scorer import ScorerPool
from .store import RoundResult, StateStore

__all__ = ["JobCoordinator", "Answer", "JobStatus", "RoundStatus"]

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


@dataclass(frozen=True)
class JobStatus:
    spec: JobSpec
    plan: Plan
    rounds: list[RoundStatus]
    scorers: list[str]
    scorer_infos: list[dict]  # name, node_id, device, rows, input_bytes


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


class JobCoordinator:
    """Owns every job; thread-safe; persists specs and rounds through ``StateStore``."""

    def __init__(self, store: StateStore, metrics: SelectorMetrics | None = None) -> None:
        self.store = store
        self.metrics = metrics or SelectorMetrics()
        self._jobs: dict[str, _Job] = {}
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._create_lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    # --- jobs -------------------------------------------------------------------------

    def restore(self) -> int:
        """Reload persisted jobs and their completed rounds; scorers start on first push."""
        restored = 0
        for spec, rounds in self.store.load():
            try:
                job = self._prepare(spec)
            except Exception as exc:  # noqa: BLE001 - one bad job must not stop the rest
                log.error("job %s not restored: %s", spec.job_id, exc)
                continue
            job.rounds.update(rounds)
            with self._lock:
                self._jobs[spec.job_id] = job
            restored += 1
            log.info("restored job %s with %d completed rounds", spec.job_id, len(rounds))
        return restored

    def create_job(self, spec: JobSpec) -> JobStatus:
        """Create a job (idempotent for an identical spec) and start its scorers."""
        with self._create_lock:
            with self._lock:
                existing = self._jobs.get(spec.job_id)
            if existing is not None:
                if existing.spec != spec:
                    raise AlreadyExists(
                        f"job {spec.job_id!r} exists with a different spec; delete it first "
                        "or use another job_id")
                return self.get_job(spec.job_id)
            job = self._prepare(spec)
            job.pool = ScorerPool(spec, job.manifest)
            self.store.save_spec(spec)
            with self._lock:
                self._jobs[spec.job_id] = job
        log.info("created job %s: %d samples, %d scorers, plan %s", spec.job_id,
                 spec.fingerprint.num_samples, spec.resources.num_scorers, job.plan.sizes)
        return self.get_job(spec.job_id)

    def _prepare(self, spec: JobSpec) -> _Job:
        """Validate a spec against the registry and the dataset (no actors yet)."""
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

    def _job(self, job_id: str) -> _Job:
        job = self._jobs.get(job_id)
        if job is None:
            raise NotFound(f"no job {job_id!r}; create it first (known: {sorted(self._jobs)})")
        return job

    def get_job(self, job_id: str) -> JobStatus:
        with self._lock:
            job = self._job(job_id)
            return self._status(job)

    def list_jobs(self) -> list[JobStatus]:
        with self._lock:
            return [self._status(j) for _, j in sorted(self._jobs.items())]

    def _status(self, job: _Job) -> JobStatus:
        rounds = []
        for epoch in job.plan.select_epochs:
            r = _round_of(job.plan, epoch)
            if r in job.rounds:
                res = job.rounds[r]
                rounds.append(RoundStatus(r, epoch, "done", res.weights_version,
                                          len(res.indices), res.seconds))
            elif r in job.scoring:
                rounds.append(RoundStatus(r, epoch, "scoring", job.scoring[r]))
            elif r in job.failed:
                rounds.append(RoundStatus(r, epoch, "failed", error=job.failed[r]))
            else:
                rounds.append(RoundStatus(r, epoch, "waiting"))
        pool = job.pool
        infos = [{"name": n, **i} for n, i in zip(pool.names, pool.infos, strict=False)
                 ] if pool else []
        return JobStatus(job.spec, job.plan, rounds, pool.names if pool else [], infos)

    def delete_job(self, job_id: str) -> bool:
        with self._lock:
            job = self._job(job_id)
            job.deleted = True
            del self._jobs[job_id]
            self._changed.notify_all()
        if job.pool is not None:
            job.pool.shutdown()
        self.store.delete_job(job_id)
        log.info("deleted job %s", job_id)
        return True

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
            with self._create_lock:
                if job.pool is None and not job.deleted:
                    job.pool = ScorerPool(job.spec, job.manifest)
            if job.pool is None:
                return
            ref = ray.put(snapshot)
            policy = job.spec.policy
            scored = job.pool.score(ref, policy.margin_mode)
            ratio = job.plan[epoch].size / job.plan.num_samples
            chosen = select(scored.margins, job.labels, min(1.0, ratio),
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
        with self._lock:
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
        deadline = None if timeout is None else time.monotonic() + timeout
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
                        raise Internal(f"round {round_} failed: {job.failed[round_]}; push the "
                                       "weights again to retry")
                    if round_ not in job.scoring:
                        select_epoch = job.plan.select_epochs[round_]
                        raise FailedPrecondition(
                            f"no weights pushed yet for round {round_} (epoch {epoch}); push "
                            f"the PSP weights for epoch {select_epoch} first")
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
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


def _round_of(plan: Plan, epoch: int) -> int:
    """The selection round an epoch trains on (it must not be a full-data epoch)."""
    round_ = plan[epoch].round
    if round_ is None:
        raise AssertionError(f"epoch {epoch} is a full-data epoch and has no round")
    return round_
