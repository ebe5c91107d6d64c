"""DynaMSSampler: a drop-in for DistributedSampler whose epochs come from the selector.

Each rank iterates its part of the epoch's canonical list (``core/selection/partition.py``)
fetched by an ``EpochFetcher`` (``epochs.py``: the selector's answer, or a seeded uniform
fallback), resumable mid-epoch; rank 0 pushes the PSP weights (``PushScheduler``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sized

import torch
from torch.utils.data import Sampler

from ..core.job import JobSpec
from ..core.models.models import SlimmableModel
from ..core.selection.partition import rank_count
from ..core.selection.policy import EpochKind, Plan
from .checkpoint import SamplerCheckpoint
from .epochs import EpochFetcher, EpochSource, distributed_rank
from .errors import RoundFailedError
from .job import SelectorJob
from .loss_weights import EpochWeights
from .push import PushScheduler

__all__ = ["DynaMSSampler"]


class DynaMSSampler(Sampler[int]):
    """This rank's indices of each epoch, as selected by the DynaMS selector.

    Args:
        dataset_or_len: the training Dataset (its ``len``) or the number of samples.
        job: the ``SelectorJob`` (``SelectorJob.create(client, spec)``).
        rank, world_size: default to ``torch.distributed``'s, or 0 and 1 without it.
        seed: seed of the fallback subsets (defaults to the policy's seed).
        drop_last: DistributedSampler's semantics: drop the tail instead of padding.
        deadline: seconds an epoch may wait for the selector before falling back.
        pipeline_fraction: ``pipelined``: push this fraction of an epoch before its end;
            ``None`` (default) adapts it to the measured round latency (``PushScheduler``).
        fallback_on_failed_round: a round that failed on the selector (a configuration
            error) raises ``RoundFailedError``, unless True: then it falls back.

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
        self.num_samples = dataset_or_len if isinstance(dataset_or_len, int) \
            else len(dataset_or_len)
        rank, world_size = distributed_rank(rank, world_size)
        if deadline <= 0:
            raise ValueError(f"deadline must be > 0 seconds, got {deadline}")
        if job.spec.fingerprint.num_samples != self.num_samples:
            raise ValueError(f"the dataset has {self.num_samples} samples, the job's "
                             f"fingerprint {job.spec.fingerprint.num_samples}")
        self.job, self.deadline = job, deadline
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        self.seed = job.spec.policy.seed if seed is None else seed
        self.pusher = PushScheduler(job, sender=rank == 0, send_timeout=max(deadline, 120.0),
                                    lead=pipeline_fraction)
        self._plan = job.spec.plan()
        self.epochs = EpochFetcher(job, self._plan, rank=rank, world_size=world_size,
                                   drop_last=drop_last, seed=self.seed, deadline=deadline,
                                   pusher=self.pusher,
                                   fallback_on_failed_round=fallback_on_failed_round)
        self.epoch = 0
        self.blocked_seconds: dict[int, float] = {}  # epoch → time __iter__ waited for it
        self._yielded = 0  # indices of the current epoch handed out so far
        self._resume_at: tuple[int, int] | None = None  # (epoch, samples already trained)
        self._weights: EpochWeights | None = None  # the iterated epoch's loss weights

    @property
    def spec(self) -> JobSpec:
        return self.job.spec

    @property
    def pushed(self) -> dict[int, int]:
        """Select epoch → weights version pushed for its round."""
        return self.pusher.pushed

    @property
    def sources(self) -> dict[int, EpochSource]:
        """Epoch → where its indices came from (``EpochSource``)."""
        return self.epochs.sources

    @property
    def fallback_epochs(self) -> list[int]:
        """Epochs that trained on a uniform fallback subset (check it after a run)."""
        return self.epochs.fallback_epochs

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
        self.epochs.fetch(epoch)

    def __len__(self) -> int:
        """This rank's samples left in the epoch (less those trained before a resume)."""
        return rank_count(self._plan[self.epoch].size, self.world_size,
                          self.drop_last) - self._skip(self.epoch)

    def __iter__(self) -> Iterator[int]:
        started = time.perf_counter()
        future = self.epochs.fetch(self.epoch)
        try:
            answer = future.result()
        except RoundFailedError:
            self.epochs.forget(self.epoch, future)  # a later push may retry the round
            raise
        self.blocked_seconds[self.epoch] = time.perf_counter() - started
        nxt = self.epoch + 1
        if nxt < len(self._plan.epochs) and (self._plan[nxt].kind is not EpochKind.SELECT
                                             or nxt in self.pushed):
            self.epochs.fetch(nxt)
        self._weights = EpochWeights(self.epoch, answer.indices, answer.weights, answer.default)
        self._yielded = skip = self._skip(self.epoch)
        self._resume_at = None
        return self._counted(answer.indices[skip:].tolist())

    def weights_of(self, indices) -> torch.Tensor:
        """float32 loss weights of a batch's dataset indices in the iterated epoch (all 1
        unless the policy reweights; the training step: ``loss_weights.py``)."""
        if self._weights is None or self._weights.epoch != self.epoch:
            raise RuntimeError(f"weights_of() before iterating epoch {self.epoch}")
        return self._weights.of(indices)

    def _counted(self, indices: list[int]) -> Iterator[int]:
        for i in indices:
            self._yielded += 1
            yield i

    def _skip(self, epoch: int) -> int:
        return self._resume_at[1] if self._resume_at and self._resume_at[0] == epoch else 0

    # --- checkpoints --------------------------------------------------------------------

    def state_dict(self, consumed: int | None = None) -> dict:
        """What a checkpoint needs to resume this sampler exactly, mid-epoch included.

        ``consumed``: this rank's samples of the current epoch already trained on; by
        default the number of indices the iterator has handed out (pass it when a
        DataLoader prefetches ahead of training: ``(step + 1) * batch_size``).
        """
        consumed = self._yielded if consumed is None else consumed
        total = rank_count(self._plan[self.epoch].size, self.world_size, self.drop_last)
        if not 0 <= consumed <= total:
            raise ValueError(f"consumed must be in [0, this epoch's {total}], got {consumed}")
        return SamplerCheckpoint(self.spec.job_id, self.world_size, self.epoch, consumed,
                                 dict(self.pushed)).state()

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state_dict()``: the next ``set_epoch(state["epoch"])`` then
        iterates the rest of that epoch, exactly the indices an uninterrupted run would
        have yielded. Rounds already pushed are not pushed again."""
        point = SamplerCheckpoint.load(state, job_id=self.spec.job_id,
                                       world_size=self.world_size, epochs=len(self._plan.epochs))
        self.pusher.pushed = dict(point.pushed)
        self.epoch = point.epoch
        self._resume_at = (point.epoch, point.consumed)

    # --- weights (scheduled and sent by ``self.pusher``) ----------------------------------

    def push_due(self, progress: float) -> bool:
        """Whether the PSP weights for the next round are due, ``progress`` (the fraction
        of the current epoch done) into it: ``sync`` at 1.0, ``pipelined`` earlier."""
        return self.pusher.due(self._plan.next_select_epoch(self.epoch), progress)

    def push(self, model: SlimmableModel, version: int | None = None) -> int | None:
        """Push the PSP slice for the next round from rank 0 (in the background); other
        ranks only take note. Returns the version (None when nothing is due)."""
        target = self._plan.next_select_epoch(self.epoch)
        if target is None or target in self.pushed:
            return None
        version = self.pusher.push(target, model, version)
        self.epochs.fetch(target)
        return version

    def maybe_push(self, model: SlimmableModel, progress: float,
                   version: int | None = None) -> int | None:
        """``push(model, version)`` when ``push_due(progress)``; call it after every step."""
        return self.push(model, version) if self.push_due(progress) else None

    # --- lifetime -----------------------------------------------------------------------

    def close(self) -> None:
        """Stop background work within ``deadline`` s (idempotent): queued pushes are
        dropped, the one on the wire is cancelled; the job's client stays open."""
        self.pusher.close(timeout=self.deadline)
        self.epochs.close()

    def __enter__(self) -> DynaMSSampler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
