"""Each rank's part of an epoch: the whole dataset or the round's selection, shuffled once
per epoch and split by rank.

A rank that asks before its round is selected waits, for the weights as for the
scoring, up to its deadline: every rank makes one call per epoch.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..core.job import RoundState, SelectionKind
from ..core.selection.partition import epoch_order, rank_part
from ..core.selection.policy import EpochKind
from .errors import DeadlineExceeded, InvalidArgument, NotFound, RoundFailed, WeightsNotPushed
from .job_table import JobEntry, JobTable
from .limits import Limits
from .metrics import Metrics
from .round_runner import round_of

__all__ = ["Answer", "EpochServer", "ORDERS_KEPT"]

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
    # a weighted round's loss weights, looked up per streamed chunk (None: unweighted)
    weights_of: Callable[[np.ndarray], np.ndarray] | None = None


class EpochServer:
    """Answers GetSelection from the job table."""

    def __init__(self, table: JobTable, metrics: Metrics, limits: Limits) -> None:
        self.table = table
        self.metrics = metrics
        self.limits = limits

    def get_selection(self, job_id: str, epoch: int, rank: int, world_size: int,
                      drop_last: bool, timeout: float | None) -> Answer:
        """This rank's part of the epoch; waits up to ``timeout`` s (at most
        ``Limits.max_selection_wait``) for the round's weights and scoring."""
        if world_size < 1:
            raise InvalidArgument(f"world_size must be >= 1, got {world_size}")
        if not 0 <= rank < world_size:
            raise InvalidArgument(f"rank {rank} must be in [0, {world_size - 1}]")
        cap = self.limits.max_selection_wait
        timeout = cap if timeout is None else min(timeout, cap)
        deadline = time.monotonic() + timeout
        with self.table.lock:
            entry = self.table.get(job_id)
            plan = entry.record.plan
            if not 0 <= epoch < len(plan.epochs):
                raise InvalidArgument(f"epoch {epoch} must be in [0, {len(plan.epochs) - 1}]")
            weights_of = None
            if plan[epoch].kind is EpochKind.FULL:
                canonical, round_, version = None, -1, -1
            else:
                round_ = round_of(plan, epoch)
                result = self._wait_for_round(entry, round_, epoch, deadline, timeout)
                canonical, version = result.indices, result.weights_version
                if result.weights is not None:
                    weights_of = result.weights_of
        order = self._epoch_order(entry, epoch, canonical)
        part = rank_part(order, rank, world_size, drop_last)  # a view: NOTE [ serving ranks ]
        self.metrics.served(job_id)
        kind = SelectionKind.FULL if canonical is None else SelectionKind.SUBSET
        return Answer(epoch, round_, version, kind, len(order), part, weights_of)

    def _wait_for_round(self, entry: JobEntry, round_: int, epoch: int, deadline: float,
                        timeout: float):
        """The round's result once DONE (lock held; the wait releases it). At the deadline
        the round's state says which of the weights or the scoring did not come."""
        while (current := entry.record.rounds[round_]).state is not RoundState.DONE:
            if entry.deleted:
                raise NotFound(f"job {entry.job_id!r} was deleted")
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
            self.table.changed.wait(remaining)
        return current.result

    def _epoch_order(self, entry: JobEntry, epoch: int,
                     canonical: np.ndarray | None) -> np.ndarray:
        """The epoch's shuffled list, built once however many ranks ask at once.

        NOTE [ serving ranks ]
        All ranks of an epoch share one shuffled list: the first request builds it under
        the job's ``orders_lock`` (the others wait for it instead of each building its own
        copy), and each rank's part is a strided view of it (``rank_part``), streamed in
        chunks made contiguous one at a time (``protocol.selection_chunks``). The lists
        of the last ``ORDERS_KEPT`` epochs asked for are kept: a trainer asks for this
        epoch and the next.
        """
        with entry.orders_lock:
            with self.table.lock:
                order = entry.orders.get(epoch)
                if order is not None:
                    entry.orders.move_to_end(epoch)
                    return order
            if canonical is None:
                canonical = np.arange(entry.record.plan.num_samples, dtype=np.int64)
            order = epoch_order(canonical, entry.record.spec.policy.seed, epoch)
            with self.table.lock:
                entry.orders[epoch] = order
                while len(entry.orders) > ORDERS_KEPT:
                    entry.orders.popitem(last=False)
            return order
