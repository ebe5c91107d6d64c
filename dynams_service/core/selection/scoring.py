"""Scoring: run a (proxy) model over inputs in batches and return each sample's score.

The score is a registered one (``core.scores``: ``distance``, the default margin, or any
other by name); lower means "keep first".
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from ..models.models import SlimmableModel
from .scores import DEFAULT_SCORE, ScoringProxy, get_score

__all__ = ["score", "score_batches"]


def score_batches(model: SlimmableModel,
                  batches: Iterable[tuple[torch.Tensor, torch.Tensor | None]], num_rows: int,
                  *, width: float = 1.0, score: str = DEFAULT_SCORE) -> torch.Tensor:
    """Scores ``(num_rows,)`` float32 (on the CPU) over ``(inputs, labels)`` batches.

    ``score`` names a registered score (``core.scores``; ``UnknownName`` otherwise), by
    default the ``distance`` margin. The batches are consumed in eval mode under
    ``torch.inference_mode()`` (so a generator that moves and normalises inputs runs there
    too); the model's training flag is restored afterwards. Labels are needed by the
    scores that use them (``signed``, ``loss``, ``el2n``), else pass None. The output is
    allocated once up front: small per-batch results kept alive between large transient
    activations would fragment the heap of a long streaming pass.
    """
    fn = get_score(score)
    proxy = ScoringProxy.of(model, width)
    device = proxy.device
    was_training = model.training
    model.eval()
    out = torch.empty(num_rows, dtype=torch.float32)
    done = 0
    try:
        with torch.inference_mode():
            for x, y in batches:
                if y is not None and len(y) != len(x):
                    raise ValueError(f"{len(y)} labels for {len(x)} inputs")
                if done + len(x) > num_rows:
                    raise ValueError(f"more than the {num_rows} rows announced")
                y = None if y is None else y.to(device)
                scored = torch.as_tensor(fn(proxy, x.to(device, non_blocking=True), y))
                if tuple(scored.shape) != (len(x),):
                    raise ValueError(f"score {score!r} returned shape {tuple(scored.shape)} "
                                     f"for {len(x)} inputs, expected ({len(x)},)")
                out[done:done + len(x)] = scored
                done += len(x)
    finally:
        model.train(was_training)
    if done != num_rows:
        raise ValueError(f"{done} rows scored, {num_rows} announced")
    return out


def score(model: SlimmableModel, inputs: torch.Tensor, labels: torch.Tensor | None = None, *,
          width: float = 1.0, score: str = DEFAULT_SCORE,
          batch_size: int = 256) -> torch.Tensor:
    """Scores ``(N,)`` float32 of ``model`` at ``width`` over ``inputs``, in batches.

    ``score`` names a registered score (default ``distance``: the margin; ``signed``,
    ``loss``, ``el2n`` or an operator's). Runs in eval mode under
    ``torch.inference_mode()`` on the model's device and restores the model's training
    flag afterwards. ``labels`` are needed by ``signed``, ``loss`` and ``el2n``.
    The default batch of 256 is faster than 1024 on CPU, where scoring is memory-bound.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if labels is not None and len(labels) != len(inputs):
        raise ValueError(f"{len(labels)} labels for {len(inputs)} inputs")
    batches = ((inputs[s:s + batch_size], None if labels is None else labels[s:s + batch_size])
               for s in range(0, len(inputs), batch_size))
    return score_batches(model, batches, len(inputs), width=width, score=score)
