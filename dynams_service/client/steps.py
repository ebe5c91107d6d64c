"""Optimizer steps of a run, known before it starts, for schedules sized by steps.

Epoch lengths follow the selection (warm-up, subsets, anneal), so ``len(loader) * epochs``
is wrong for OneCycleLR or warm-up/cosine schedules; the plan gives every epoch's length.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["optimizer_steps"]


def optimizer_steps(epoch_lengths: Sequence[int], batch_size: int, *, accumulate: int = 1,
                    drop_last: bool = False, dealt_over: int = 1) -> int:
    """Optimizer steps of one rank over epochs of ``epoch_lengths`` indices.

    ``accumulate``: batches per step (a step also closes each epoch, as Lightning and
    Accelerate do); ``drop_last``: the loader drops a short last batch; ``dealt_over``:
    the framework deals each epoch's batches over this many processes (Accelerate with
    a ``shard=False`` sampler), rounding up unless ``drop_last``.
    """
    if batch_size < 1 or accumulate < 1 or dealt_over < 1:
        raise ValueError(f"batch_size, accumulate and dealt_over must be >= 1, got "
                         f"{batch_size}, {accumulate}, {dealt_over}")
    steps = 0
    for length in epoch_lengths:
        batches = length // batch_size if drop_last else math.ceil(length / batch_size)
        batches = batches // dealt_over if drop_last else math.ceil(batches / dealt_over)
        steps += math.ceil(batches / accumulate)
    return steps
