"""Rounds: a committed push starts one, a thread scores and selects it, the result is saved.

A round's thread starts the job's scorers if none run (a restored job, or one released
when idle), scores every row with the pushed weights, selects, saves the result and
marks the round DONE; when the job's last round is done it gives the scorers back.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from ..core.job import RoundState
from ..core.models.proxy import PSPError, TensorRecord, records_to_state
from ..core.selection.policy import EpochKind, Plan
from .errors import FailedPrecondition, InvalidArgument, ScorersReleased
from .job_table import JobEntry, JobTable
from .limits import Limits
from .metrics import Metrics
from .scorer_api import ScorerFactory
from .store import RoundResult, StateStore
from .threads import RoundThreads

__all__ = ["RoundRunner", "round_of"]

log = logging.getLogger(__name__)


class RoundRunner:
    """Commits pushes and runs their rounds, one thread per round."""

    def __init__(self, table: JobTable, store: StateStore, metrics: Metrics, limits: Limits,
                 start_scorers: ScorerFactory) -> None:
        self.table = table
        self.store = store
        self.metrics = metrics
        self.limits = limits
        self.start_scorers = start_scorers
        self.threads = RoundThreads()

    def push(self, job_id: str, version: int, epoch: int, records: list[TensorRecord],
             nbytes: int) -> tuple[int, bool]:
        """Commit a whole push for the round starting at ``epoch``; start scoring it.

        Returns (round, already_done). Pushing again for a completed round changes nothing.
        """
        with self.table.lock:
            entry = self.table.get(job_id)
            job = entry.record
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
        round_ = round_of(plan, epoch)
        with self.table.lock:
            current = entry.record.rounds[round_]
            if current.state is RoundState.DONE:
                return round_, True
            if current.state is RoundState.SCORING or entry.deleted:
                return round_, False
            self.table.set_round(entry, current.scoring(version))
        self.metrics.pushed(job_id, nbytes, version)
        snapshot = {name: t.numpy() for name, t in state_dict.items()}
        self.threads.start(f"round-{job_id}-{round_}", self._run, entry, round_, epoch,
                           version, snapshot)
        return round_, False

    def _run(self, entry: JobEntry, round_: int, epoch: int, version: int,
             snapshot: dict[str, np.ndarray]) -> None:
        started = time.perf_counter()
        job_id, spec, plan = entry.job_id, entry.record.spec, entry.record.plan
        try:
            with entry.scorers_lock:  # this job's only: other jobs start and stop meanwhile
                if entry.scorers is None and not entry.deleted:
                    scorers = self.start_scorers(spec, entry.record.manifest,
                                                 ready_timeout=self.limits.placement_timeout)
                    with self.table.lock:
                        if entry.deleted:
                            scorers.shutdown()
                        else:
                            self.table.attach(entry, scorers)
                scorers = entry.scorers
            if scorers is None:
                return
            scored = scorers.score(snapshot, spec.policy.score)
            scored_at = time.perf_counter()
            # The scorers keep the margins: NOTE [ scorers keep their margins ] in scorer.py.
            selection = scorers.select(plan[epoch].size, round_)
            result = RoundResult(round_, epoch, version, selection.indices, selection.margins,
                                 time.perf_counter() - started, selection.weights)
            if entry.deleted:
                return
            self.store.save_round(job_id, result)
        except Exception as exc:  # noqa: BLE001 - reported to waiters and logs
            if isinstance(exc, ScorersReleased):  # the job or the selector ended under it
                log.info("job %s round %d ended with the job or the selector: %s",
                         job_id, round_, exc)
            else:
                log.exception("job %s round %d failed", job_id, round_)
            with self.table.lock:
                if not entry.deleted:
                    self.table.set_round(entry, entry.record.rounds[round_].failed(str(exc)))
            return
        with entry.scorers_lock, self.table.lock:
            if entry.deleted:
                return
            self.table.set_round(entry, entry.record.rounds[round_].done(result))
            released = self.table.detach(entry) if entry.record.finished else None
        if released is not None:
            # Every round is selected: give the scorers' CPUs/GPUs back to the cluster
            # (a re-push for a done round needs none; a restored job starts them lazily).
            released.shutdown()
            log.info("job %s: all %d rounds selected, scorers released", job_id,
                     len(plan.select_epochs))
        self.metrics.round_done(job_id, plan.num_samples, scored.seconds, result.seconds)
        log.info("job %s round %d (epoch %d, weights v%d): selected %d in %d passes, "
                 "scoring %.2fs, selecting and saving %.2fs, round %.2fs", job_id, round_,
                 epoch, version, len(result.indices), selection.passes, scored.seconds,
                 time.perf_counter() - scored_at, result.seconds)


def round_of(plan: Plan, epoch: int) -> int:
    """The selection round an epoch trains on (it must not be a full-data epoch)."""
    round_ = plan[epoch].round
    if round_ is None:
        raise AssertionError(f"epoch {epoch} is a full-data epoch and has no round")
    return round_
