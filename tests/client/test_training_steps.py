"""Optimizer steps known up front (``optimizer_steps``, ``DynaMSSampler.total_steps``): a
OneCycleLR sized by them ends exactly at its total, never past it."""

from __future__ import annotations

import math

import pytest
import torch

from dynams_service.client.steps import optimizer_steps
from dynams_service.core.selection.partition import rank_count
from tests.service.conftest import make_spec


def lightning_steps(batches: int, accumulate: int) -> list[bool]:
    """Lightning's and Accelerate's rule: step every ``accumulate`` batches and at the
    epoch's last batch."""
    return [(i + 1) % accumulate == 0 or i == batches - 1 for i in range(batches)]


@pytest.mark.parametrize("accumulate", [1, 3])
@pytest.mark.parametrize("dealt_over", [1, 2])
def test_one_cycle_sized_by_the_plan_ends_exactly_at_its_total(small_shards, accumulate,
                                                               dealt_over):
    plan = make_spec(small_shards, ratio=0.27).plan()  # 4000, then 1080 per epoch
    lengths = [rank_count(size, 2 if dealt_over == 1 else 1, False) for size in plan.sizes]
    total = optimizer_steps(lengths, 64, accumulate=accumulate, dealt_over=dealt_over)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 0.1, total_steps=total)
    for length in lengths:  # each rank's batches, as the framework forms them
        batches = math.ceil(math.ceil(length / 64) / dealt_over)
        for step in lightning_steps(batches, accumulate):
            if step:
                optimizer.step()
                schedule.step()
    assert schedule.last_epoch == total
    with pytest.raises(ValueError, match="Tried to step"):  # one more would overshoot
        schedule.step()


def test_drop_last_and_bad_arguments():
    assert optimizer_steps([1000, 300], 128, drop_last=True) == 7 + 2
    assert optimizer_steps([1000, 300], 128) == 8 + 3
    assert optimizer_steps([1000], 128, dealt_over=2) == 4  # 8 batches dealt over 2
    assert optimizer_steps([1000], 128, dealt_over=3, drop_last=True) == 2  # 7 → 2 each
    with pytest.raises(ValueError, match=">= 1"):
        optimizer_steps([1000], 0)
