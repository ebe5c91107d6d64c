"""BatchAudit: proof that the batches a rank trains are the ones its sampler gave it.

Training frameworks rebuild the loader around a sampler (Ray Train's
``prepare_data_loader``, Lightning's ``DistributedSamplerWrapper``, Accelerate's
``BatchSamplerShard``). Done wrong, a rank trains another rank's samples, a fraction of
its own, or samples no selector chose, and nothing fails. The audit follows the
positions of each trained batch in the epoch's list and raises ``SamplerMisuseError``
with the fix at the first batch that is out of place.

- ``shard=True`` (the sampler yields this rank's part): the trained indices must be the
  part, in order, each once.
- ``shard=False`` (every rank gets the whole list; the framework splits it): rank r's
  k-th batch of b indices must start at position (k·W + r)·b, as Accelerate deals
  batches, with or without ``split_batches``. Past the end of the list (a framework's
  padding) only membership is checked.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["BatchAudit", "SamplerMisuseError", "batch_indices"]

FIX_SHARD = ("the loader re-shards a sampler that already gives each rank its part. Keep "
             "DynaMSSampler as the loader's sampler: Lightning and Ray Train leave it in "
             "place by default (it is a DistributedSampler); under Accelerate, or another "
             "framework that splits batches across processes, build it with shard=False")
FIX_WHOLE = ("with shard=False every rank gets the whole selection and the framework must "
             "deal batches across processes (Accelerate's prepare does); this loader does "
             "not, so every rank would train the whole selection. Use shard=True")
FIX_REPLACED = ("the loader's sampler was replaced (Ray Train's prepare_data_loader with a "
                "non-DistributedSampler, Lightning's use_distributed_sampler, or a custom "
                "wrapper): pass the DynaMSSampler itself as the loader's sampler")


class SamplerMisuseError(RuntimeError):
    """The batches trained are not the sampler's: the framework replaced or re-sharded it."""


def batch_indices(indices: Any) -> np.ndarray:
    """A batch's dataset indices (tensor, array or list) as a flat int64 array."""
    if isinstance(indices, torch.Tensor):
        indices = indices.detach().cpu().numpy()
    return np.asarray(indices, dtype=np.int64).reshape(-1)


class BatchAudit:
    """Checks the batches of one epoch against the list the sampler iterated.

    Args:
        epoch: the epoch (for messages).
        order: the list the sampler yields from (this rank's part, or the whole list).
        start: positions of ``order`` trained before a resume.
        shard: whether ``order`` is this rank's part (else the whole list).
        rank, world_size: the process's place in the job.
    """

    def __init__(self, epoch: int, order: np.ndarray, start: int, *, shard: bool,
                 rank: int, world_size: int) -> None:
        self.epoch, self.order, self.shard = epoch, np.asarray(order, np.int64), shard
        self.rank, self.world_size = rank, world_size
        self.cursor = start  # shard: the next position this rank must train
        self.start = start
        self.batches = 0  # batches checked so far
        self._width = 0  # shard=False: the first batch's size, b
        sort = np.argsort(self.order, kind="stable")
        self._keys, self._positions = self.order[sort], sort

    def check(self, indices: Any) -> None:
        """Check one trained batch (its dataset indices); raises ``SamplerMisuseError``."""
        idx = batch_indices(indices)
        if len(idx) == 0:
            return
        self._check_members(idx)
        if self.shard:
            self._check_next(idx)
        else:
            self._check_dealt(idx)
        self.batches += 1

    def _check_members(self, idx: np.ndarray) -> None:
        pos = np.minimum(np.searchsorted(self._keys, idx), max(len(self._keys) - 1, 0))
        missing = (self._keys[pos] != idx) if len(self._keys) else np.ones(len(idx), bool)
        if missing.any():
            where = "this rank's part of" if self.shard else "the selection of"
            raise SamplerMisuseError(f"rank {self.rank} trained index {int(idx[missing][0])}, "
                                     f"which is not in {where} epoch {self.epoch}: {FIX_REPLACED}")

    def _check_next(self, idx: np.ndarray) -> None:
        expected = self.order[self.cursor:self.cursor + len(idx)]
        if len(expected) != len(idx) or not np.array_equal(expected, idx):
            trained = self.cursor - self.start
            raise SamplerMisuseError(
                f"rank {self.rank}, epoch {self.epoch}: after {trained} samples the batch is "
                f"not the next {len(idx)} of this rank's part (positions skipped or repeated): "
                f"{FIX_SHARD}")
        self.cursor += len(idx)

    def _check_dealt(self, idx: np.ndarray) -> None:
        if self.batches == 0:
            self._width = len(idx)
        first = (self.batches * self.world_size + self.rank) * self._width + self.start
        if first + len(idx) > len(self.order):
            return  # a framework's padding past the end: membership was checked
        if not np.array_equal(self.order[first:first + len(idx)], idx):
            fix = FIX_WHOLE if self._undealt(idx) else FIX_SHARD
            raise SamplerMisuseError(
                f"rank {self.rank} of {self.world_size}, epoch {self.epoch}: batch "
                f"{self.batches} is not the one the framework deals this rank from the whole "
                f"selection (positions {first}..{first + len(idx) - 1}): {fix}")

    def _undealt(self, idx: np.ndarray) -> bool:
        """Whether the batch sits where it would if nothing dealt batches across ranks."""
        first = self.batches * self._width + self.start
        return np.array_equal(self.order[first:first + len(idx)], idx)
