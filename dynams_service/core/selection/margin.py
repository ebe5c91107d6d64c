"""Margins: each sample's distance to the decision boundary of a linear head.

For proxy features ``z`` and a head ``(W, b)``, the boundary between classes ``j`` and
``k`` is the hyperplane ``(w_j - w_k)·z + b_j - b_k = 0``. DynaMS keeps the samples
closest to the boundary of their class, so small margins mean informative samples.
"""

from __future__ import annotations

from typing import Literal

import torch

__all__ = ["MarginMode", "MARGIN_MODES", "margins"]

MarginMode = Literal["distance", "signed"]
MARGIN_MODES: tuple[str, ...] = ("distance", "signed")


def margins(
    features: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    labels: torch.Tensor | None = None,
    mode: MarginMode = "distance",
) -> torch.Tensor:
    """Distance of each sample's features to the nearest boundary of its anchor class.

    ``distance`` (default): the anchor is the predicted class ``p`` and the result is
    ``min_{k≠p} |(w_p − w_k)·z + b_p − b_k| / ‖w_p − w_k‖₂`` (always ≥ 0).
    ``signed``: the anchor is the true class ``y`` and no absolute value is taken, so a
    misclassified sample gets a negative margin.

    Args:
        features: ``(N, D)`` penultimate features.
        weight: ``(C, D)`` head weight, ``C >= 2``.
        bias: ``(C,)`` head bias, or ``None``.
        labels: ``(N,)`` int64 true classes; required for ``mode="signed"``.
        mode: ``"distance"`` or ``"signed"``.

    Returns:
        ``(N,)`` float32 margins. A class pair whose weight rows are identical has no
        boundary in feature space: it contributes ``0`` when the two logits tie and
        ``+inf`` otherwise.

    Example:
        >>> z = torch.tensor([[1.0, 0.0]]); w = torch.eye(2); b = torch.zeros(2)
        >>> margins(z, w, b)  # |z0 - z1| / sqrt(2)
        tensor([0.7071])
    """
    if mode not in MARGIN_MODES:
        raise ValueError(f"mode must be one of {MARGIN_MODES}, got {mode!r}")
    if features.dim() != 2:
        raise ValueError(f"features must be (N, D), got shape {tuple(features.shape)}")
    if weight.dim() != 2 or weight.shape[1] != features.shape[1]:
        raise ValueError(
            f"weight must be (C, {features.shape[1]}) to match features, "
            f"got shape {tuple(weight.shape)}"
        )
    num_classes = weight.shape[0]
    if num_classes < 2:
        raise ValueError(f"a margin needs at least 2 classes, got weight with {num_classes}")
    if bias is not None and tuple(bias.shape) != (num_classes,):
        raise ValueError(f"bias must be ({num_classes},), got shape {tuple(bias.shape)}")

    z = features.to(torch.float32)
    w = weight.to(device=z.device, dtype=torch.float32)
    logits = z @ w.T
    if bias is not None:
        logits = logits + bias.to(device=z.device, dtype=torch.float32)

    if mode == "signed":
        if labels is None:
            raise ValueError('mode="signed" needs labels (the true class of each sample)')
        anchor = _check_labels(labels, features.shape[0], num_classes).to(z.device)
    else:
        anchor = logits.argmax(dim=1)

    # ‖w_j − w_k‖ for every class pair, computed once: (C, C).
    # Exact pairwise distances: cdist's matmul shortcut (used above 25 rows) is imprecise
    # and gives identical rows a nonzero distance.
    pair_norms = torch.cdist(w.unsqueeze(0), w.unsqueeze(0),
                             compute_mode="donot_use_mm_for_euclid_dist").squeeze(0)
    gaps = logits.gather(1, anchor.unsqueeze(1)) - logits  # (N, C): logit_anchor − logit_k
    if mode == "distance":
        gaps = gaps.abs()
    norms = pair_norms.index_select(0, anchor)  # (N, C)
    safe_norms = torch.where(norms > 0, norms, torch.ones_like(norms))
    dist = torch.where(
        norms > 0,
        gaps / safe_norms,
        torch.where(gaps == 0, torch.zeros_like(gaps), torch.full_like(gaps, float("inf"))),
    )
    dist.scatter_(1, anchor.unsqueeze(1), float("inf"))  # k ≠ anchor
    return dist.min(dim=1).values


def _check_labels(labels: torch.Tensor, num_samples: int, num_classes: int) -> torch.Tensor:
    """Return labels as int64 after checking their shape and range."""
    if tuple(labels.shape) != (num_samples,):
        raise ValueError(f"labels must be ({num_samples},), got shape {tuple(labels.shape)}")
    labels = labels.to(torch.int64)
    if num_samples and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"labels must be in [0, {num_classes - 1}], got values in "
            f"[{int(labels.min())}, {int(labels.max())}]"
        )
    return labels
