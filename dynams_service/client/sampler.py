"""DynaMSSampler: a drop-in for DistributedSampler whose epochs come from the selector.

Each rank asks the selector for its part of the epoch's canonical list (NOTE [ canonical
list ] in ``core/partition.py``). If the selector is unreachable or late past the
deadline, the rank trains on a seeded uniform subset of the planned size instead, warns
once and counts it: the job never hangs and every epoch has the planned length. Once the
selector was unreachable, later epochs first wait up to 1.5 s for a connection instead of
paying the client's retries (≈ 7 s) again. A round
that failed on the selector is a configuration error and raises ``RoundFailedError``,
unless the sampler was built with ``fallback_on_failed_round=True``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sized
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import grpc
import numpy as np
import torch.distributed as dist
from torch.utils.data import Sampler

from ..core.job import JobSpec
from ..core.models import SlimmableModel
from ..core.partition import epoch_order, rank_count, rank_part, uniform_subset
from ..core.policy import EpochKind, Plan
from ..protocol import ROUND_FAILED, WEIGHTS_NOT_PUSHED, pb
from .client import SelectorClient, SelectorRpcError
from .job import SelectorJob
from .push import PushScheduler

__all__ = ["DynaMSSampler", "EpochSource", "RoundFailedError"]

log = logging.getLogger(__name__)

# How long a rank waits for a connection to a selector that was unreachable at the last
# epoch: past the client's 1 s maximum reconnect backoff (with its jitter).
REACHABLE_PROBE_SECONDS = 1.5


@dataclass(frozen=True)
class EpochSource:
    """Where an epoch's indices came from (for logs and summaries).

    ``fetch_seconds`` is the time from asking the selector (at ``set_epoch`` or at the
    push, whichever came first) to having the answer, scoring included; it is not the
    time training waited, which the sampler's ``blocked_seconds`` holds.
    """

    kind: str  # "full" | "subset" | "fallback"
    round: int = -1
    weights_version: int = -1
    fetch_seconds: float = 0.0


class RoundFailedError(RuntimeError):
    """The selection round for ``epoch`` failed on the selector (a scorer error, a corrupt
    sample, a bad configuration); ``details`` is the selector's message."""

    def __init__(self, epoch: int, details: str) -> None:
        super().__init__(f"epoch {epoch}: the selection round failed on the selector: "
                         f"{details} (fix it, or build the sampler with "
                         "fallback_on_failed_round=True to train on uniform subsets instead)")
        self.epoch = epoch
        self.details = details


class DynaMSSampler(Sampler[int]):
    """This rank's indices of each epoch, as selected by the DynaMS selector.

    Args:
        dataset_or_len: the training Dataset (its ``len``) or the number of samples.
        job: the ``SelectorJob`` (``SelectorJob.create(client, spec)``).
        rank, world_size: default to ``torch.distributed``'s, or 0 and 1 without it.
        seed: seed of the fallback subsets (defaults to the policy's seed).
        drop_last: DistributedSampler's semantics: drop the tail instead of padding.
        deadline: seconds an epoch may wait for the selector before falling back.
        pipeline_fraction: with ``staleness="pipelined"``, push this fraction of an epoch
            before its end so scoring overlaps training; ``None`` (default) adapts it
            (see ``PushScheduler``).
        fallback_on_failed_round: a round that failed on the selector raises
            ``RoundFailedError`` by default (it is a configuration error: every round
            would fail alike); True trains on the seeded uniform fallback instead, warned
            and counted like an unreachable selector.

    Example:
        >>> job = SelectorJob.create(SelectorClient("127.0.0.1:50051"), spec)
        >>> with DynaMSSampler(train_set, job) as sampler:
        ...     loader = DataLoader(train_set, batch_size=128, sampler=sampler)
        ...     for epoch in range(spec.epochs):
        ...         sampler.set_epoch(epoch)
        ...         for i, (x, y) in enumerate(loader):
        ...             ...  # train
        ...             sampler.maybe_push(model, progress=(i + 1) / len(loader))
    """

    def __init__(self, dataset_or_len: Sized | int, job: SelectorJob, *,
                 rank: int | None = None, world_size: int | None = None,
                 seed: int | None = None, drop_last: bool = False, deadline: float = 60.0,
                 pipeline_fraction: float | None = None,
                 fallback_on_failed_round: bool = False) -> None:
        self.num_samples = (dataset_or_len if isinstance(dataset_or_len, int)
                            else len(dataset_or_len))
        distributed = dist.is_available() and dist.is_initialized()
        if world_size is None:
            world_size = dist.get_world_size() if distributed else 1
        if rank is None:
            rank = dist.get_rank() if distributed else 0
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} must be in [0, {world_size - 1}]")
        if deadline <= 0:
            raise ValueError(f"deadline must be > 0 seconds, got {deadline}")
        if job.spec.fingerprint.num_samples != self.num_samples:
            raise ValueError(f"the dataset has {self.num_samples} samples, the job's "
                             f"fingerprint {job.spec.fingerprint.num_samples}")
        self.job = job
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        self.deadline = deadline
        self.fallback_on_failed_round = fallback_on_failed_round
        self.seed = job.spec.policy.seed if seed is None else seed
        self.pusher = PushScheduler(job, sender=rank == 0, send_timeout=max(deadline, 120.0),
                                    lead=pipeline_fraction)
        self._plan = job.spec.plan()
        self.epoch = 0
        self.fallback_epochs: list[int] = []
        self.sources: dict[int, EpochSource] = {}
        self.blocked_seconds: dict[int, float] = {}  # epoch → time __iter__ waited for it
        self._warned = False
        # The last answer was a fallback on an unreachable selector. Two fetch threads may
        # write it; either order is fine (it only chooses whether to probe first).
        self._unreachable = False
        self._closed = False
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="dynams-fetch")
        self._futures: dict[int, Future] = {}
        self._lock = threading.Lock()
        self._yielded = 0  # indices of the current epoch handed out so far
        self._resume_at: tuple[int, int] | None = None  # (epoch, samples already trained)

    @property
    def spec(self) -> JobSpec:
        return self.job.spec

    @property
    def client(self) -> SelectorClient:
        return self.job.client

    @property
    def pushed(self) -> dict[int, int]:
        """Select epoch → weights version pushed for its round."""
        return self.pusher.pushed

    # --- DistributedSampler's surface ---------------------------------------------------

    def plan(self) -> Plan:
        """Every epoch's kind and global size, known before training starts."""
        return self._plan

    def epoch_lengths(self) -> list[int]:
        """This rank's number of samples in every epoch (for LR schedules, progress bars)."""
        return [rank_count(size, self.world_size, self.drop_last) for size in self._plan.sizes]

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch (and start fetching it in the background)."""
        if not 0 <= epoch < len(self._plan.epochs):
            raise ValueError(f"epoch {epoch} must be in [0, {len(self._plan.epochs) - 1}]")
        self.epoch = epoch
        self.pusher.epoch_started(epoch)
        self._fetch(epoch)

    def __len__(self) -> int:
        """This rank's samples left in the epoch: all of them, less those already trained
        when the sampler was resumed mid-epoch."""
        return rank_count(self._plan[self.epoch].size, self.world_size,
                          self.drop_last) - self._skip(self.epoch)

    def __iter__(self) -> Iterator[int]:
        started = time.perf_counter()
        future = self._fetch(self.epoch)
        try:
            indices = future.result()
        except RoundFailedError:
            with self._lock:  # a later push may retry the round: ask again then
                if self._futures.get(self.epoch) is future:
                    del self._futures[self.epoch]
            raise
        self.blocked_seconds[self.epoch] = time.perf_counter() - started
        nxt = self.epoch + 1
        if nxt < len(self._plan.epochs) and (self._plan[nxt].kind is not EpochKind.SELECT
                                             or nxt in self.pushed):
            self._fetch(nxt)
        skip = self._skip(self.epoch)
        self._resume_at = None
        self._yielded = skip
        return self._counted(indices[skip:].tolist())

    def _counted(self, indices: list[int]) -> Iterator[int]:
        for i in indices:
            self._yielded += 1
            yield i

    def _skip(self, epoch: int) -> int:
        return self._resume_at[1] if self._resume_at and self._resume_at[0] == epoch else 0

    # --- checkpoints --------------------------------------------------------------------

    def state_dict(self, consumed: int | None = None) -> dict:
        """What a checkpoint needs to resume this sampler exactly, mid-epoch included.

        Args:
            consumed: this rank's samples of the current epoch already trained on; by
                default the number of indices the iterator has handed out (pass it when
                a DataLoader prefetches ahead of training).

        Example:
            >>> torch.save({"model": model.state_dict(), "sampler": sampler.state_dict(
            ...     consumed=(step + 1) * batch_size)}, "ckpt.pt")  # doctest: +SKIP
        """
        consumed = self._yielded if consumed is None else consumed
        if not 0 <= consumed <= rank_count(self._plan[self.epoch].size, self.world_size,
                                           self.drop_last):
            raise ValueError(f"consumed must be in [0, this epoch's {len(self)}], got "
                             f"{consumed}")
        return {"job_id": self.spec.job_id, "world_size": self.world_size,
                "epoch": self.epoch, "consumed": consumed, "pushed": dict(self.pushed)}

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state_dict()``: the next ``set_epoch(state["epoch"])`` then
        iterates the rest of that epoch, exactly the indices an uninterrupted run would
        have yielded. Rounds already pushed are not pushed again."""
        if state.get("job_id") != self.spec.job_id:
            raise ValueError(f"the checkpoint is of job {state.get('job_id')!r}, this "
                             f"sampler's is {self.spec.job_id!r}")
        if state.get("world_size") != self.world_size:
            raise ValueError(f"the checkpoint was taken with world_size "
                             f"{state.get('world_size')}, this job runs {self.world_size} "
                             "ranks: the epoch's parts would differ")
        epoch, consumed = int(state["epoch"]), int(state["consumed"])
        if not 0 <= epoch < len(self._plan.epochs):
            raise ValueError(f"epoch {epoch} must be in [0, {len(self._plan.epochs) - 1}]")
        self.pusher.pushed = {int(e): int(v) for e, v in state["pushed"].items()}
        self.epoch = epoch
        self._resume_at = (epoch, consumed)

    # --- weights (scheduled and sent by ``self.pusher``) ----------------------------------

    def next_select_epoch(self) -> int | None:
        """The next epoch after the current one that starts a round, if any."""
        nxt = self.epoch + 1
        if nxt < len(self._plan.epochs) and self._plan[nxt].kind is EpochKind.SELECT:
            return nxt
        return None

    def push_due(self, progress: float) -> bool:
        """Whether the PSP weights for the next round should be pushed at this point.

        ``progress`` is the fraction of the current epoch done; ``sync`` pushes at 1.0,
        ``pipelined`` at ``1 - pusher.lead_fraction()``.
        """
        return self.pusher.due(self.next_select_epoch(), progress)

    def push(self, model: SlimmableModel, version: int | None = None) -> int | None:
        """Push the PSP slice for the next round from rank 0 (in the background); other
        ranks only take note. Returns the version (None when nothing is due)."""
        target = self.next_select_epoch()
        if target is None or target in self.pushed:
            return None
        version = self.pusher.push(target, model, version)
        self._fetch(target)
        return version

    def maybe_push(self, model: SlimmableModel, progress: float,
                   version: int | None = None) -> int | None:
        """``push(model, version)`` when ``push_due(progress)``; call it after every step."""
        return self.push(model, version) if self.push_due(progress) else None

    # --- fetching -----------------------------------------------------------------------

    def _fetch(self, epoch: int) -> Future:
        with self._lock:
            future = self._futures.get(epoch)
            if future is None:
                future = self._pool.submit(self._answer, epoch)
                self._futures[epoch] = future
                for old in [e for e in self._futures if e < epoch - 1]:
                    del self._futures[old]
            return future

    def _answer(self, epoch: int) -> np.ndarray:
        started = time.monotonic()
        expected = rank_count(self._plan[epoch].size, self.world_size, self.drop_last)
        deadline = started + self.deadline
        recreated = False
        if self._unreachable and not self.client.reachable(
                min(REACHABLE_PROBE_SECONDS, self.deadline)):
            # Down at the last epoch and still no connection: fall back now rather than
            # pay the client's retries every epoch. Every rank probes alike, so all of
            # them see a selector that came back (the channel reconnects within 1 s).
            return self._fallback(epoch, "still unreachable", time.monotonic() - started)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                reason = "deadline passed"
                break
            try:
                header, indices = self.client.get_selection(
                    self.spec.job_id, epoch, self.rank, self.world_size,
                    drop_last=self.drop_last, timeout=remaining)
            except SelectorRpcError as exc:
                if exc.reason == WEIGHTS_NOT_PUSHED:
                    if self.pusher.failed(epoch):
                        reason = "the weights push failed"
                        break
                    time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
                    continue  # rank 0's push is on its way
                if exc.reason == ROUND_FAILED and not self.fallback_on_failed_round:
                    raise RoundFailedError(epoch, exc.details) from exc
                if (exc.code == grpc.StatusCode.NOT_FOUND and not recreated
                        and self.job.recreate(deadline - time.monotonic())):
                    recreated = True
                    continue
                reason = f"{exc.code.name}: {exc.details}"
                self._unreachable = exc.code == grpc.StatusCode.UNAVAILABLE
                break
            if len(indices) != expected:
                reason = f"selector sent {len(indices)} indices, the plan says {expected}"
                break
            source = EpochSource("full" if header.kind == pb.SELECTION_KIND_FULL else "subset",
                                 header.round, header.weights_version,
                                 time.monotonic() - started)
            if source.kind == "subset" and epoch in self.pushed:
                self.pusher.round_answered(source.fetch_seconds)
            self.sources[epoch] = source
            self._unreachable = False
            return indices
        return self._fallback(epoch, reason, time.monotonic() - started)

    def _fallback(self, epoch: int, reason: str, waited: float) -> np.ndarray:
        size = self._plan[epoch].size
        full = size == self.num_samples  # a planned full-data epoch: the same data, no loss
        subset = (np.arange(self.num_samples) if full
                  else uniform_subset(self.num_samples, size, self.seed, epoch))
        order = epoch_order(subset, self.seed, epoch)
        if full:
            self.sources[epoch] = EpochSource("full", fetch_seconds=waited)
            self._warn(f"epoch {epoch}: no answer from {self.client.address} ({reason}); "
                       f"it is a full-data epoch, trained as planned")
        else:
            with self._lock:
                self.fallback_epochs.append(epoch)
            self.sources[epoch] = EpochSource("fallback", fetch_seconds=waited)
            self._warn(f"epoch {epoch}: no selection from {self.client.address} ({reason}); "
                       f"training on a seeded uniform subset of {size}")
        return rank_part(order, self.rank, self.world_size, self.drop_last)

    def _warn(self, message: str) -> None:
        if not self._warned:
            self._warned = True
            log.warning("%s (further fallbacks are counted in sampler.fallback_epochs)", message)
        else:
            log.info(message)

    # --- lifetime -----------------------------------------------------------------------

    def close(self) -> None:
        """Stop background work, returning within ``deadline`` seconds; idempotent.

        Queued pushes are dropped; the push on the wire gets until the deadline to finish
        and is then cancelled, so a frozen selector cannot hold the trainer's exit. The
        job's client stays open (it is the caller's).
        """
        if self._closed:
            return
        self._closed = True
        self.pusher.close(timeout=self.deadline)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> DynaMSSampler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
