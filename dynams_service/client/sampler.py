"""DynaMSSampler: a DistributedSampler whose epochs come from the selector.

Each rank iterates its part of the epoch's canonical list (``core/selection/partition.py``)
fetched by an ``EpochFetcher`` (``epochs.py``: the selector's answer, or a seeded uniform
fallback), resumable mid-epoch; rank 0 pushes the PSP weights (``PushScheduler``). Being a
``DistributedSampler``, Lightning and Ray Train leave it in their loaders; ``shard=False``
gives every rank the whole list, for frameworks that deal batches themselves (Accelerate).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sized

import torch
from torch.utils.data import DistributedSampler

from ..core.job import JobSpec
from ..core.models.models import SlimmableModel
from ..core.selection.partition import rank_count
from ..core.selection.policy import Plan
from .checkpoint import SamplerCheckpoint
from .epochs import EpochFetcher, EpochSource, distributed_rank
from .iterated_epoch import IteratedEpoch
from .job import SelectorJob
from .push import PushScheduler
from .steps import optimizer_steps

__all__ = ["DynaMSSampler"]


class DynaMSSampler(DistributedSampler):
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
        shard: True: each rank iterates its own part; False: every rank iterates the whole
            list, for a framework that deals batches across processes (Accelerate).

    Example (the training loop, and each framework's: docs/training.md):
        >>> sampler = DynaMSSampler(train_set, SelectorJob.create(client, spec))
        >>> loader = DataLoader(train_set, batch_size=128, sampler=sampler)
    """

    def __init__(self, dataset_or_len: Sized | int, job: SelectorJob, *,
                 rank: int | None = None, world_size: int | None = None,
                 seed: int | None = None, drop_last: bool = False, deadline: float = 60.0,
                 pipeline_fraction: float | None = None,
                 fallback_on_failed_round: bool = False, shard: bool = True) -> None:
        # DistributedSampler's attributes; its __init__ would need a process group.
        self.dataset = dataset_or_len
        self.dataset_size = dataset_or_len if isinstance(dataset_or_len, int) \
            else len(dataset_or_len)
        rank, world_size = distributed_rank(rank, world_size)
        if job.spec.fingerprint.num_samples != self.dataset_size:
            raise ValueError(f"the dataset has {self.dataset_size} samples, the job's "
                             f"fingerprint {job.spec.fingerprint.num_samples}")
        self.job, self.deadline, self.shard, self.shuffle = job, deadline, shard, False
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        self.num_replicas = world_size
        self._parts = world_size if shard else 1  # the list a rank iterates: part or whole
        self.seed = job.spec.policy.seed if seed is None else seed
        self.pusher = PushScheduler(job, sender=rank == 0, send_timeout=max(deadline, 120.0),
                                    lead=pipeline_fraction)
        self._plan = job.spec.plan()
        self.epochs = EpochFetcher(job, self._plan, rank=rank if shard else 0,
                                   world_size=self._parts, drop_last=drop_last,
                                   seed=self.seed, deadline=deadline, pusher=self.pusher,
                                   fallback_on_failed_round=fallback_on_failed_round)
        self.epoch = 0
        self.blocked_seconds: dict[int, float] = {}  # epoch → time __iter__ waited for it
        self._resume: dict[int, int] = {}  # epoch → samples trained before a resume
        self._iterated: IteratedEpoch | None = None  # the epoch last handed out

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


    def plan(self) -> Plan:
        """Every epoch's kind and global size, known before training starts."""
        return self._plan

    def epoch_lengths(self) -> list[int]:
        """The samples this rank iterates in every epoch (for schedules, progress bars)."""
        return [rank_count(size, self._parts, self.drop_last) for size in self._plan.sizes]

    def total_steps(self, batch_size: int, accumulate: int = 1, drop_last: bool = False) -> int:
        """This rank's optimizer steps over the run, to size OneCycleLR or a warm-up/cosine
        schedule (``steps.py``; with ``shard=False`` batches are dealt over the ranks)."""
        return optimizer_steps(self.epoch_lengths(), batch_size, accumulate=accumulate,
                               drop_last=drop_last,
                               dealt_over=1 if self.shard else self.world_size)

    @property
    def num_samples(self) -> int:
        """The current epoch's samples for this rank (DistributedSampler's ``len``); a
        resumed epoch yields those trained before fewer, as Lightning's loop expects."""
        return rank_count(self._plan[self.epoch].size, self._parts, self.drop_last)

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch (and start fetching it in the background)."""
        if not 0 <= epoch < len(self._plan.epochs):
            raise ValueError(f"epoch {epoch} must be in [0, {len(self._plan.epochs) - 1}]")
        self.epoch = epoch
        self.pusher.epoch_started(epoch)
        self.epochs.fetch(epoch)

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        started = time.perf_counter()
        answer = self.epochs.wait(self.epoch)
        self.blocked_seconds[self.epoch] = time.perf_counter() - started
        self._iterated = IteratedEpoch(self.epoch, answer, self._resume.pop(self.epoch, 0),
                                       shard=self.shard, rank=self.rank,
                                       world_size=self.world_size)
        return iter(self._iterated)

    def weights_of(self, indices) -> torch.Tensor:
        """float32 loss weights of a batch's dataset indices in the iterated epoch (all 1
        unless the policy reweights; the training step: ``loss_weights.py``)."""
        return self._current("weights_of").weights_of(indices)

    def check_batch(self, indices) -> None:
        """Raise ``SamplerMisuseError`` unless the batch (its dataset indices: ``WithIndices``)
        is the one this rank should train next: a replaced or re-sharded sampler fails."""
        self._current("check_batch").audit.check(indices)

    def _current(self, caller: str | None = None) -> IteratedEpoch | None:
        """The current epoch's iteration (None before it starts; ``caller`` then raises)."""
        if self._iterated is not None and self._iterated.epoch == self.epoch:
            return self._iterated
        if caller:
            raise RuntimeError(f"{caller}() before iterating epoch {self.epoch}")
        return None


    def state_dict(self, consumed: int | None = None) -> dict:
        """What a checkpoint needs to resume this sampler exactly, mid-epoch included.

        ``consumed``: this rank's samples of the current epoch already trained on; by
        default the number of indices the iterator has handed out (pass it when a
        DataLoader prefetches ahead of training: ``(step + 1) * batch_size``).
        """
        if consumed is None:
            current = self._current()
            consumed = current.yielded if current else self._resume.get(self.epoch, 0)
        return SamplerCheckpoint.at(self.spec.job_id, self.world_size, self.epoch, consumed,
                                    self.num_samples, self.pushed).state()

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state_dict()``: the next ``set_epoch(state["epoch"])`` then
        iterates the rest of that epoch, exactly the indices an uninterrupted run would
        have yielded. Rounds already pushed are not pushed again."""
        point = SamplerCheckpoint.load(state, job_id=self.spec.job_id,
                                       world_size=self.world_size, epochs=len(self._plan.epochs))
        self.pusher.pushed = dict(point.pushed)
        self.epoch = point.epoch
        self._resume = {point.epoch: point.consumed}


    def push_due(self, progress: float) -> bool:
        """Whether the next round's weights are due ``progress`` (fraction) into the epoch."""
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
        """``push(model, version)`` when due ``progress`` (the fraction of the epoch done)
        into it: ``sync`` at 1.0, ``pipelined`` earlier; call it after every step."""
        return self.push(model, version) if self.push_due(progress) else None


    def close(self) -> None:
        """Stop background work within ``deadline`` s (idempotent): queued pushes are
        dropped, the one on the wire is cancelled; the job's client stays open."""
        self.pusher.close(timeout=self.deadline)
        self.epochs.close()

    def __enter__(self) -> DynaMSSampler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
