"""Scoring: run a (proxy) model over inputs in batches and return each sample's margin."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from .margin import MarginMode, margins
from .models import SlimmableModel

__all__ = ["score", "score_batches"]


def score_batches(model: SlimmableModel,
                  batches: Iterable[tuple[torch.Tensor, torch.Tensor | None]], num_rows: int,
                  *, width: float = 1.0, mode: MarginMode = "distance") -> torch.Tensor:
    """Margins ``(num_rows,)`` float32 (on the CPU) over ``(inputs, labels)`` batches.

    The batches are consumed in eval mode under ``torch.inference_mode()`` (so a generator
    that moves and normalises inputs runs there too); the model's training flag is
    restored afterwards. Labels are needed for ``mode="signed"``, else pass None. The
    output is allocated once up front: small per-batch results kept alive between large
    transient activations would fragment the heap of a long streaming pass.
    """
    head = model.head.slice_state(width)
    device = head["weight"].device
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
                z = model.forward_features(x.to(device, non_blocking=True), width)
                y = None if y is None else y.to(device)
                out[done:done + len(x)] = margins(z, head["weight"], head.get("bias"), y, mode)
                done += len(x)
    finally:
        model.train(was_training)
    if done != num_rows:
        raise ValueError(f"{done} rows scored, {num_rows} announced")
    return out


def score(model: SlimmableModel, inputs: torch.Tensor, labels: torch.Tensor | None = None, *,
          width: float = 1.0, mode: MarginMode = "distance",
          batch_size: int = 256) -> torch.Tensor:
    """Margins ``(N,)`` float32 of ``model`` at ``width`` over ``inputs``, in batches.

    Runs in eval mode under ``torch.inference_mode()`` on the model's device and restores
    the model's training flag afterwards. ``labels`` are needed for ``mode="signed"``.
    The default batch of 256 is faster than 1024 on CPU, where scoring is memory-bound.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if labels is not None and len(labels) != len(inputs):
        raise ValueError(f"{len(labels)} labels for {len(inputs)} inputs")
    batches = ((inputs[s:s + batch_size], None if labels is None else labels[s:s + batch_size])
               for s in range(0, len(inputs), batch_size))
    return score_batches(model, batches, len(inputs), width=width, mode=mode)
