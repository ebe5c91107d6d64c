"""Per-sample loss weights of a reweighting selection, on the trainer.

A policy with ``reweight`` (InfoBatch-style, ``core.selection.selection_rules``) gives each
selected sample a loss weight. The sampler yields plain dataset indices, so a training step
finds a batch's weights by the indices the batch carries: wrap the dataset in
:class:`WithIndices`, and weigh the per-sample losses with ``sampler.weights_of(idx)``::

    loader = DataLoader(WithIndices(train_set), batch_size=128, sampler=sampler)
    for x, y, idx in loader:
        loss = weighted_loss(F.cross_entropy(model(x), y, reduction="none"),
                             sampler.weights_of(idx))
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ["EpochWeights", "WithIndices", "weighted_loss"]


def weighted_loss(per_sample: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """The batch mean of ``weights · per_sample`` (InfoBatch's rescaled loss); ``weights``
    None: the plain mean."""
    if weights is None:
        return per_sample.mean()
    if weights.shape != per_sample.shape:
        raise ValueError(f"weights of shape {tuple(weights.shape)} for losses of shape "
                         f"{tuple(per_sample.shape)}")
    return (per_sample * weights.to(device=per_sample.device, dtype=per_sample.dtype)).mean()


class EpochWeights:
    """One epoch's loss weights of this rank's indices, looked up by dataset index.

    ``weights`` None (a full-data epoch, or a policy that does not reweight): every
    weight is ``default``.
    """

    def __init__(self, epoch: int, indices: np.ndarray, weights: np.ndarray | None,
                 default: float = 1.0) -> None:
        self.epoch = epoch
        self.default = default
        self._keys: np.ndarray | None = None
        self._values: np.ndarray | None = None
        if weights is not None:
            if len(weights) != len(indices):
                raise ValueError(f"{len(weights)} weights for {len(indices)} indices")
            order = np.argsort(indices, kind="stable")
            self._keys = np.asarray(indices)[order]
            self._values = np.asarray(weights, dtype=np.float32)[order]

    @property
    def weighted(self) -> bool:
        return self._keys is not None

    def of(self, indices: Any) -> torch.Tensor:
        """float32 weights of ``indices`` (a tensor, array or list of dataset indices);
        an index this rank does not train in the epoch raises ``KeyError``."""
        idx = np.asarray(indices.cpu() if isinstance(indices, torch.Tensor) else indices,
                         dtype=np.int64).reshape(-1)
        if self._keys is None:
            return torch.full((len(idx),), self.default, dtype=torch.float32)
        pos = np.minimum(np.searchsorted(self._keys, idx), len(self._keys) - 1)
        missing = self._keys[pos] != idx if len(self._keys) else np.ones(len(idx), bool)
        if bool(missing.any()):
            raise KeyError(f"index {int(idx[missing][0])} is not in this rank's epoch "
                           f"{self.epoch}: was the sampler replaced or re-sharded?")
        return torch.from_numpy(self._values[pos].copy())


class WithIndices(Dataset):
    """``dataset`` whose items end with their own index: ``(*item, index)`` for a tuple
    item, else ``(item, index)``, so a batch carries the indices its weights need."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple:
        item = self.dataset[index]
        return (*item, index) if isinstance(item, tuple) else (item, index)
