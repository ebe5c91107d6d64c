"""IteratedEpoch: the epoch a sampler is handing out, and what its batches are checked by.

It holds the rank's list for the epoch, where iteration started (after a resume) and how
far it got, the loss weights of its indices (``EpochWeights``) and the audit of the
batches trained (``BatchAudit``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from .batch_audit import BatchAudit
from .epochs import EpochIndices
from .loss_weights import EpochWeights

__all__ = ["IteratedEpoch"]


class IteratedEpoch:
    """One epoch's indices from position ``start`` on, counted as they are handed out."""

    def __init__(self, epoch: int, answer: EpochIndices, start: int, *, shard: bool,
                 rank: int, world_size: int) -> None:
        self.epoch, self.start, self.yielded = epoch, start, start
        self._indices = answer.indices
        self.weights = EpochWeights(epoch, answer.indices, answer.weights, answer.default)
        self.audit = BatchAudit(epoch, answer.indices, start, shard=shard, rank=rank,
                                world_size=world_size)

    def __iter__(self) -> Iterator[int]:
        for i in self._indices[self.start:].tolist():
            self.yielded += 1
            yield i

    def weights_of(self, indices: Any) -> torch.Tensor:
        return self.weights.of(indices)
