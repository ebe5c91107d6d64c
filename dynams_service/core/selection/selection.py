"""Selection: keep the ⌈r·N⌉ samples with the smallest scores, globally or per class.

Pure numpy; works on torch tensors and numpy arrays alike and returns the same kind.
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["budget", "class_quotas", "select"]


def budget(num_samples: int, ratio: float) -> int:
    """Number of samples kept at ``ratio``: ⌈ratio·N⌉, robust to float noise (0.3·10 → 3)."""
    _check_ratio(ratio)
    if num_samples < 0:
        raise ValueError(f"num_samples must be >= 0, got {num_samples}")
    return min(num_samples, math.ceil(round(ratio * num_samples, 9)))


def class_quotas(class_sizes: np.ndarray, total: int) -> np.ndarray:
    """Split ``total`` over classes in equal shares, capped by each class's size.

    A class smaller than its share gives all its samples and the unused quota is shared
    again among the others (water-filling). Remainders go to classes in ascending
    class order, so the result is deterministic and sums to ``min(total, sum(sizes))``.
    """
    sizes = np.asarray(class_sizes, dtype=np.int64)
    quotas = np.zeros_like(sizes)
    remaining = min(int(total), int(sizes.sum()))
    open_classes = np.flatnonzero(sizes > 0)
    while remaining > 0 and open_classes.size:
        share, extra = divmod(remaining, open_classes.size)
        room = sizes[open_classes] - quotas[open_classes]
        give = np.minimum(room, share)
        give[: extra] += (room[:extra] > give[:extra]).astype(np.int64)
        quotas[open_classes] += give
        remaining -= int(give.sum())
        open_classes = open_classes[quotas[open_classes] < sizes[open_classes]]
    return quotas


def select(scores, labels=None, *, k: int | None = None, ratio: float | None = None,
           per_class: bool = False):
    """Indices of the lowest scores, sorted ascending: ``k`` of them, or ⌈ratio·N⌉.

    Global by default, like ``SelectionPolicy(class_balance="global")``.

    Args:
        scores: ``(N,)`` scores (margins); lower means more likely kept. ``+inf`` is
            allowed, NaN is not.
        labels: ``(N,)`` integer classes; required when ``per_class`` is true.
        k: number of samples kept, in [0, N]. Exactly one of ``k`` and ``ratio``.
        ratio: fraction kept, in (0, 1]; keeps ⌈ratio·N⌉ (see :func:`budget`).
        per_class: give each class an equal share of the budget (unused share of small
            classes is redistributed); otherwise (default) take the lowest scores globally.

    Returns:
        int64 indices into ``scores``, ascending, of the same type as ``scores`` (torch
        tensor or numpy array). Ties are broken by the lower index.

    Example:
        >>> select(np.array([0.5, 0.1, 0.9, 0.2]), ratio=0.5)
        array([1, 3])
        >>> select(np.array([0.5, 0.1, 0.9, 0.2]), np.array([0, 0, 1, 1]), k=2, per_class=True)
        array([1, 3])
    """
    as_torch = isinstance(scores, torch.Tensor)
    s = _to_numpy(scores, "scores")
    if s.ndim != 1:
        raise ValueError(f"scores must be 1-D (N,), got shape {s.shape}")
    if np.isnan(s).any():
        raise ValueError(f"scores contain {int(np.isnan(s).sum())} NaN values")
    keep = _kept_count(s.shape[0], k, ratio)

    if per_class:
        if labels is None:
            raise ValueError("per_class selection needs labels; pass per_class=False for global")
        y = _to_numpy(labels, "labels")
        if y.shape != s.shape:
            raise ValueError(f"labels must have shape {s.shape} like scores, got {y.shape}")
        if not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"labels must be integers, got dtype {y.dtype}")
        chosen = _select_per_class(s, y.astype(np.int64), keep)
    else:
        chosen = np.argsort(s, kind="stable")[:keep]
    chosen = np.sort(chosen).astype(np.int64)
    return torch.from_numpy(chosen) if as_torch else chosen


def _kept_count(num_samples: int, k: int | None, ratio: float | None) -> int:
    """How many samples ``select`` keeps: ``k`` itself or ``budget(N, ratio)``."""
    if (k is None) == (ratio is None):
        raise ValueError(f"pass exactly one of k and ratio, got k={k!r} and ratio={ratio!r}")
    if ratio is not None:
        return budget(num_samples, ratio)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ValueError(f"k must be an integer, got {k!r}")
    if not 0 <= k <= num_samples:
        raise ValueError(f"k must be in [0, {num_samples}] (the number of scores), got {k}")
    return int(k)


def _select_per_class(scores: np.ndarray, labels: np.ndarray, keep: int) -> np.ndarray:
    """Lowest scores within each class, with water-filled equal quotas."""
    if labels.size and labels.min() < 0:
        raise ValueError(f"labels must be >= 0, got minimum {int(labels.min())}")
    classes, inverse, sizes = np.unique(labels, return_inverse=True, return_counts=True)
    quotas = class_quotas(sizes, keep)
    # Sort by (class, score, index): stable argsort of score, then stable by class.
    by_score = np.argsort(scores, kind="stable")
    order = by_score[np.argsort(inverse[by_score], kind="stable")]
    starts = np.cumsum(sizes) - sizes  # each class's first position; empty with no classes
    rank_in_class = np.arange(order.size) - np.repeat(starts, sizes)
    kept = rank_in_class < np.repeat(quotas, sizes)
    return order[kept]


def _to_numpy(values, name: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy()
    try:
        return np.asarray(values)
    except Exception as exc:  # pragma: no cover - numpy rarely fails here
        raise ValueError(f"{name} must be array-like: {exc}") from exc


def _check_ratio(ratio: float) -> None:
    if not (isinstance(ratio, (int, float)) and 0 < ratio <= 1):
        raise ValueError(f"ratio must be in (0, 1], got {ratio!r}")
