"""Selection: budget, per-class quotas with redistribution, global, ties, validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dynams_service import select
from dynams_service.core.selection.selection import budget, class_quotas


def reference_select(scores, labels, ratio, per_class):
    """Slow reference: sort (score, index) pairs, fill equal class quotas by water-filling."""
    n = len(scores)
    keep = math.ceil(round(ratio * n, 9))
    pairs = sorted(range(n), key=lambda i: (scores[i], i))
    if not per_class:
        return sorted(pairs[:keep])
    classes = sorted(set(labels))
    sizes = {c: sum(1 for y in labels if y == c) for c in classes}
    quota = dict.fromkeys(classes, 0)
    left = keep
    while left:
        open_ = [c for c in classes if quota[c] < sizes[c]]
        share, extra = divmod(left, len(open_))
        for j, c in enumerate(open_):
            give = min(sizes[c] - quota[c], share + (1 if j < extra else 0))
            quota[c] += give
            left -= give
    chosen = []
    for c in classes:
        chosen += [i for i in pairs if labels[i] == c][: quota[c]]
    return sorted(chosen)


@pytest.mark.parametrize("ratio", [0.1, 0.2, 0.3, 0.5, 0.77, 1.0])
@pytest.mark.parametrize("per_class", [True, False])
@pytest.mark.parametrize("seed", range(4))
def test_select_matches_reference(ratio, per_class, seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 300))
    # Skewed classes (some tiny) and many tied scores.
    labels = rng.choice(5, size=n, p=[0.6, 0.25, 0.1, 0.04, 0.01])
    scores = rng.integers(0, 20, size=n).astype(np.float32)
    got = select(scores, labels, ratio=ratio, per_class=per_class)
    assert got.dtype == np.int64
    assert got.tolist() == reference_select(scores.tolist(), labels.tolist(), ratio, per_class)
    assert len(got) == budget(n, ratio) == math.ceil(round(ratio * n, 9))
    assert np.all(np.diff(got) > 0)


def test_per_class_gives_each_class_an_equal_share():
    labels = np.repeat(np.arange(4), 25)
    scores = np.arange(100, dtype=np.float32)  # class 0 has all the lowest scores
    got = select(scores, labels, ratio=0.2, per_class=True)
    assert np.bincount(labels[got]).tolist() == [5, 5, 5, 5]
    assert select(scores, labels, ratio=0.2, per_class=False).tolist() == list(range(20))


def test_unused_quota_of_a_small_class_is_redistributed():
    labels = np.array([0] * 50 + [1] * 48 + [2] * 2)
    scores = np.linspace(1, 0, 100)
    # budget 30, shares 10/10/10, class 2 has only 2
    got = select(scores, labels, ratio=0.3, per_class=True)
    counts = np.bincount(labels[got], minlength=3).tolist()
    assert counts == [14, 14, 2]


def test_class_quotas_are_exact_and_capped():
    assert class_quotas(np.array([10, 10, 10]), 10).tolist() == [4, 3, 3]
    assert class_quotas(np.array([1, 100, 100]), 51).tolist() == [1, 25, 25]
    assert class_quotas(np.array([3, 0, 2]), 100).tolist() == [3, 0, 2]


def test_ties_are_broken_by_lower_index():
    scores = np.zeros(10)
    assert select(scores, ratio=0.3).tolist() == [0, 1, 2]
    labels = np.array([1, 0] * 5)
    assert select(scores, labels, ratio=0.4, per_class=True).tolist() == [0, 1, 2, 3]


def test_torch_in_torch_out_and_numpy_in_numpy_out():
    scores = torch.tensor([0.3, 0.1, 0.2, float("inf")])
    labels = torch.tensor([0, 0, 1, 1])
    got = select(scores, labels, ratio=0.5, per_class=True)
    assert isinstance(got, torch.Tensor) and got.dtype == torch.int64
    assert got.tolist() == [1, 2]
    assert isinstance(select(scores.numpy(), labels.numpy(), ratio=0.5), np.ndarray)


def test_budget_is_robust_to_float_noise():
    assert budget(10, 0.3) == 3  # 0.3 * 10 = 3.0000000000000004
    assert budget(60000, 0.3) == 18000
    assert budget(7, 0.5) == 4
    assert budget(0, 0.5) == 0


@pytest.mark.parametrize("ratio", [0, -0.1, 1.01, float("nan"), "0.3"])
def test_ratio_outside_range_is_refused(ratio):
    with pytest.raises(ValueError, match=r"ratio must be in \(0, 1\]"):
        select(np.zeros(4), np.zeros(4, dtype=int), ratio=ratio)


def test_bad_shapes_and_values_are_named():
    with pytest.raises(ValueError, match="scores must be 1-D"):
        select(np.zeros((2, 2)), ratio=0.5)
    with pytest.raises(ValueError, match="labels must have shape"):
        select(np.zeros(4), np.zeros(3, dtype=int), ratio=0.5, per_class=True)
    with pytest.raises(ValueError, match="NaN"):
        select(np.array([0.0, np.nan]), ratio=0.5)
    with pytest.raises(ValueError, match="needs labels"):
        select(np.zeros(4), None, ratio=0.5, per_class=True)
    with pytest.raises(ValueError, match="integers"):
        select(np.zeros(4), np.zeros(4), ratio=0.5, per_class=True)
    with pytest.raises(ValueError, match=">= 0"):
        select(np.zeros(2), np.array([-1, 0]), ratio=0.5, per_class=True)


@pytest.mark.parametrize("per_class", [True, False])
@pytest.mark.parametrize("k", [0, 1, 7, 50])
def test_k_keeps_exactly_k(k, per_class):
    rng = np.random.default_rng(k)
    scores = rng.normal(size=50)
    labels = rng.integers(0, 3, size=50)
    got = select(scores, labels, k=k, per_class=per_class)
    assert len(got) == k
    ratio_twin = select(scores, labels, ratio=k / 50, per_class=per_class) if k else got
    assert got.tolist() == ratio_twin.tolist()


def test_default_is_global_like_the_policy():
    from dynams_service import SelectionPolicy

    labels = np.repeat(np.arange(2), 5)
    scores = np.arange(10, dtype=np.float32)  # class 0 holds the five lowest scores
    assert SelectionPolicy().class_balance == "global"
    assert select(scores, labels, k=4).tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("budget_args", [{}, {"k": 3, "ratio": 0.3}])
def test_exactly_one_of_k_and_ratio(budget_args):
    with pytest.raises(ValueError, match="exactly one of k and ratio"):
        select(np.zeros(10), **budget_args)


@pytest.mark.parametrize("k", [-1, 11, 2.0, True, "3"])
def test_k_outside_range_is_refused(k):
    with pytest.raises(ValueError, match=r"k must be"):
        select(np.zeros(10), k=k)


def test_ratio_and_k_are_keyword_only():
    with pytest.raises(TypeError):
        select(np.zeros(10), None, 0.3)


@pytest.mark.parametrize("per_class", [False, True])
@pytest.mark.parametrize("budget_args", [{"k": 0}, {"ratio": 0.3}])
def test_no_scores_select_nothing(per_class, budget_args):
    """N = 0 (a shard group with no rows) selects nothing instead of crashing per class."""
    chosen = select(np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.int64),
                    per_class=per_class, **budget_args)
    assert chosen.dtype == np.int64 and chosen.shape == (0,)
