"""EpochFetcher: each epoch's indices for one rank, from the selector or a fallback.

Answers are fetched in the background (at ``set_epoch``, or at the push for the epoch
after it). The selector waits for a round's weights and scoring up to the deadline, so a
rank makes one call per epoch. If the selector cannot answer by the deadline, the epoch
trains on a seeded uniform subset of the planned size instead: warned once, counted in
``fallback_epochs``, and the job never hangs. Once the selector was unreachable, later
epochs first wait at most ``REACHABLE_PROBE_SECONDS`` for a connection instead of paying
the client's retries again; every rank probes alike, so all of them see it come back.
A round that failed on the selector is a configuration error: ``RoundFailedError``,
unless ``fallback_on_failed_round``.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch.distributed as dist

from ..core.job import SelectionKind
from ..core.selection.partition import epoch_order, rank_count, rank_part, uniform_subset
from ..core.selection.policy import EpochKind, Plan
from .errors import Reason, RoundFailedError, SelectorError, Status
from .job import SelectorJob
from .push import PushScheduler
from .warn_once import WarnOnce

__all__ = ["EpochFetcher", "EpochIndices", "EpochSource", "REACHABLE_PROBE_SECONDS",
           "distributed_rank"]

log = logging.getLogger(__name__)

# How long a rank waits for a connection to a selector that was unreachable at the last
# epoch: past the client's 1 s maximum reconnect backoff (with its jitter).
REACHABLE_PROBE_SECONDS = 1.5


def distributed_rank(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """(rank, world size): as given, else ``torch.distributed``'s, else (0, 1); checked."""
    distributed = dist.is_available() and dist.is_initialized()
    if world_size is None:
        world_size = dist.get_world_size() if distributed else 1
    if rank is None:
        rank = dist.get_rank() if distributed else 0
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} must be in [0, {world_size - 1}]")
    return rank, world_size


@dataclass(frozen=True)
class EpochSource:
    """Where an epoch's indices came from (for logs and summaries).

    ``fetch_seconds`` is the time from asking the selector (at ``set_epoch`` or at the
    push, whichever came first) to having the answer, scoring included; it is not the
    time training waited, which the sampler's ``blocked_seconds`` holds.
    """

    kind: SelectionKind
    round: int = -1
    weights_version: int = -1
    fetch_seconds: float = 0.0


@dataclass(frozen=True)
class EpochIndices:
    """One rank's indices of an epoch and, for a reweighting policy, their loss weights
    (None: every weight is ``default``: 1, or a fallback subset's uniform weight)."""

    indices: np.ndarray
    weights: np.ndarray | None = None
    default: float = 1.0


class EpochFetcher:
    """One rank's answers, fetched in the background, one per epoch.

    Args:
        job: the selector job.
        plan: the job's plan (every epoch's size).
        rank, world_size, drop_last: the rank's part, as ``DistributedSampler`` splits.
        seed: seed of the fallback subsets.
        deadline: seconds an epoch may wait for the selector before falling back.
        pusher: the job's ``PushScheduler`` (rank 0 waits for its own push to go out).
        fallback_on_failed_round: fall back instead of raising ``RoundFailedError``.
    """

    def __init__(self, job: SelectorJob, plan: Plan, *, rank: int, world_size: int,
                 drop_last: bool, seed: int, deadline: float, pusher: PushScheduler,
                 fallback_on_failed_round: bool = False) -> None:
        if deadline <= 0:
            raise ValueError(f"deadline must be > 0 seconds, got {deadline}")
        self.job, self.plan = job, plan
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        self.seed, self.deadline, self.pusher = seed, deadline, pusher
        self.fallback_on_failed_round = fallback_on_failed_round
        self.sources: dict[int, EpochSource] = {}
        self.fallback_epochs: list[int] = []
        self._warn = WarnOnce(log, " (further fallbacks are counted in "
                                   "sampler.fallback_epochs)")
        # The last answer was a fallback on an unreachable selector. Two fetch threads may
        # write it; either order is fine (it only chooses whether to probe first).
        self._unreachable = False
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="dynams-fetch")
        self._futures: dict[int, Future] = {}
        self._lock = threading.Lock()

    def fetch(self, epoch: int) -> Future:
        """The future of ``epoch``'s indices (started once; older epochs are forgotten)."""
        with self._lock:
            future = self._futures.get(epoch)
            if future is None:
                future = self._pool.submit(self._answer, epoch)
                self._futures[epoch] = future
                for old in [e for e in self._futures if e < epoch - 1]:
                    del self._futures[old]
            return future

    def wait(self, epoch: int) -> EpochIndices:
        """``epoch``'s answer, once it is there; then the next epoch's fetch starts unless
        its round still waits for a push. A failed round (``RoundFailedError``) is
        forgotten, so a later push retries it."""
        future = self.fetch(epoch)
        try:
            answer = future.result()
        except RoundFailedError:
            with self._lock:
                if self._futures.get(epoch) is future:
                    del self._futures[epoch]
            raise
        nxt = epoch + 1
        if nxt < len(self.plan.epochs) and (self.plan[nxt].kind is not EpochKind.SELECT
                                            or nxt in self.pusher.pushed):
            self.fetch(nxt)
        return answer

    def _answer(self, epoch: int) -> EpochIndices:
        started = time.monotonic()
        deadline = started + self.deadline
        client = self.job.client
        if self._unreachable and not client.reachable(min(REACHABLE_PROBE_SECONDS,
                                                          self.deadline)):
            # Down at the last epoch and still no connection: fall back now rather than
            # pay the client's retries every epoch.
            return self._fallback(epoch, "still unreachable", time.monotonic() - started)
        if not self.pusher.sent(epoch, timeout=self.deadline):
            return self._fallback(epoch, "the weights push failed", time.monotonic() - started)
        try:
            selection = self._ask(epoch, deadline)
        except SelectorError as exc:
            if exc.reason is Reason.ROUND_FAILED and not self.fallback_on_failed_round:
                raise RoundFailedError(epoch, exc.details) from exc
            self._unreachable = exc.unreachable
            return self._fallback(epoch, f"{exc.status.value}: {exc.details}",
                                  time.monotonic() - started)
        expected = rank_count(self.plan[epoch].size, self.world_size, self.drop_last)
        if len(selection.indices) != expected:
            return self._fallback(epoch, f"selector sent {len(selection.indices)} indices, "
                                  f"the plan says {expected}", time.monotonic() - started)
        weighted = self.job.spec.policy.reweight != "none" \
            and selection.kind is SelectionKind.SUBSET
        if weighted != (selection.weights is not None):
            return self._fallback(epoch, f"selector sent {'no ' * weighted}loss weights for "
                                  f"a policy with reweight={self.job.spec.policy.reweight!r}",
                                  time.monotonic() - started)
        source = EpochSource(selection.kind, selection.round, selection.weights_version,
                             time.monotonic() - started)
        if source.kind is SelectionKind.SUBSET and epoch in self.pusher.pushed:
            self.pusher.round_answered(source.fetch_seconds)
        self.sources[epoch] = source
        self._unreachable = False
        return EpochIndices(selection.indices, selection.weights)

    def _ask(self, epoch: int, deadline: float):
        """One GetSelection (the selector waits for the round); a selector that lost the
        job gets it created again, once."""
        job = self.job
        try:
            return job.client.get_selection(job.job_id, epoch, self.rank, self.world_size,
                                            drop_last=self.drop_last,
                                            timeout=max(0.001, deadline - time.monotonic()))
        except SelectorError as exc:
            if exc.status is not Status.NOT_FOUND or not job.recreate(
                    deadline - time.monotonic()):
                raise
        return job.client.get_selection(job.job_id, epoch, self.rank, self.world_size,
                                        drop_last=self.drop_last,
                                        timeout=max(0.001, deadline - time.monotonic()))

    def _fallback(self, epoch: int, reason: str, waited: float) -> EpochIndices:
        num_samples = self.plan.num_samples
        size = self.plan[epoch].size
        full = size == num_samples  # a planned full-data epoch: the same data, no loss
        subset = (np.arange(num_samples) if full
                  else uniform_subset(num_samples, size, self.seed, epoch))
        order = epoch_order(subset, self.seed, epoch)
        address = self.job.client.address
        if full:
            self.sources[epoch] = EpochSource(SelectionKind.FULL, fetch_seconds=waited)
            self._warn(f"epoch {epoch}: no answer from {address} ({reason}); it is a "
                       "full-data epoch, trained as planned")
        else:
            with self._lock:
                self.fallback_epochs.append(epoch)
            self.sources[epoch] = EpochSource(SelectionKind.FALLBACK, fetch_seconds=waited)
            self._warn(f"epoch {epoch}: no selection from {address} ({reason}); training "
                       f"on a seeded uniform subset of {size}")
        part = rank_part(order, self.rank, self.world_size, self.drop_last)
        weight = None if full else self.job.spec.policy.uniform_weight(num_samples, size)
        return EpochIndices(part, default=1.0 if weight is None else weight)

    def close(self) -> None:
        """Stop fetching (an answer on the wire is left to finish in the background)."""
        self._pool.shutdown(wait=False, cancel_futures=True)
