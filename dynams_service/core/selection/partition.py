"""Epoch order and rank partition, with DistributedSampler's semantics.

NOTE [ canonical list ]: every epoch has one canonical list of dataset indices (all of
them, or the round's selection, ascending). It is shuffled by a generator seeded with
``seed + epoch`` and split so rank r takes positions r, r + W, r + 2W, …; without
``drop_last`` the order is padded by repeating its head so all ranks get equal lengths,
with ``drop_last`` the tail is dropped. The selector serves these parts and the sampler's
fallback builds its own the same way, so both give the same shape for (seed, epoch, W).
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["epoch_order", "rank_count", "rank_part", "uniform_subset"]


def epoch_order(canonical: np.ndarray, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """The canonical list permuted by ``torch.randperm`` seeded with ``seed + epoch``."""
    canonical = np.asarray(canonical, dtype=np.int64)
    if not shuffle:
        return canonical
    g = torch.Generator()
    g.manual_seed(seed + epoch)
    return canonical[torch.randperm(len(canonical), generator=g).numpy()]


def rank_count(total: int, world_size: int, drop_last: bool) -> int:
    """Indices each rank receives for a canonical list of ``total`` indices."""
    _check_rank(0, world_size)
    if drop_last:
        return total // world_size
    return math.ceil(total / world_size)


def rank_part(order: np.ndarray, rank: int, world_size: int, drop_last: bool) -> np.ndarray:
    """Rank ``rank``'s share of ``order``: equal lengths across ranks, disjoint unless padded.

    A strided *view* of ``order`` (no copy) for every rank that needs no padding; a rank
    whose share wraps around (at most the last ``world_size - 1`` positions of the padded
    list) gets a copy of its own share only. So serving all ranks of an epoch holds one
    list, not one per rank.

    Example:
        >>> part = rank_part(np.arange(10), 1, 4, drop_last=False)
        >>> part.tolist(), rank_part(np.arange(10), 3, 4, drop_last=False).tolist()
        ([1, 5, 9], [3, 7, 1])
    """
    _check_rank(rank, world_size)
    order = np.asarray(order, dtype=np.int64)
    n = len(order)
    per_rank = rank_count(n, world_size, drop_last)
    if per_rank and n == 0:
        raise ValueError("cannot pad an empty epoch to the ranks")
    # Position p of the padded list is order[p % n]; positions below n are a strided view.
    head = order[rank:n:world_size][:per_rank]
    if len(head) == per_rank:
        return head
    wrapped = rank + world_size * np.arange(len(head), per_rank, dtype=np.int64)
    return np.concatenate([head, order[wrapped % n]])


def uniform_subset(num_samples: int, size: int, seed: int, epoch: int) -> np.ndarray:
    """A seeded uniform subset of ``size`` indices (ascending), for fallbacks and baselines."""
    if not 0 <= size <= num_samples:
        raise ValueError(f"size {size} must be in [0, {num_samples}]")
    g = torch.Generator()
    g.manual_seed((seed * 1_000_003 + epoch) % 2**63)
    return np.sort(torch.randperm(num_samples, generator=g)[:size].numpy())


def _check_rank(rank: int, world_size: int) -> None:
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} must be in [0, {world_size - 1}]")
