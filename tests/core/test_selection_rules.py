"""Selection rules (explore share, coverage strata) over the exact distributed selection,
checked against a plain numpy reference of each rule, across splits into parts."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dynams_service.core.selection.distributed_selection import SelectionPart
from dynams_service.core.selection.policy import SelectionPolicy
from dynams_service.core.selection.selection import class_quotas, select
from dynams_service.core.selection.selection_rules import (
    SelectionRule,
    explore_weight,
    round_seed,
    rule_select,
    uniform_keys,
    view_part,
)


def _parts(scores, labels=None, splits=1, rng=None):
    """``scores`` split into ``splits`` disjoint parts (shuffled rows when ``rng``)."""
    idx = np.arange(len(scores))
    if rng is not None:
        idx = rng.permutation(idx)
    return [SelectionPart(scores[chunk], chunk, None if labels is None else labels[chunk])
            for chunk in np.array_split(idx, splits)]


def _run(parts, **kwargs):
    return rule_select(lambda v: [p if v is None else view_part(p, v) for p in parts],
                       **kwargs)


def _reference_explore(scores, labels, k, explore, seed, per_class):
    """The rule in plain numpy: the hard cut, then the smallest uniform keys of the rest."""
    explored = math.floor(explore * k + 0.5)
    hard = select(scores, labels, k=k - explored, per_class=per_class)
    keys = uniform_keys(np.arange(len(scores)), seed)
    keys[hard] = -np.inf
    return select(keys, labels, k=k, per_class=per_class)


def _reference_coverage(scores, k, strata, prune):
    """CCS in plain numpy: drop the lowest share, equal-width strata, water-filled quotas,
    each stratum's quota drawn by the smallest uniform keys (seed 5)."""
    n = len(scores)
    pruned = min(math.floor(prune * n), n - k)
    order = np.lexsort((np.arange(n), scores))
    alive = np.ones(n, dtype=bool)
    alive[order[:pruned]] = False
    lo = scores[order[pruned - 1]] if pruned else scores.min()
    hi = scores.max()
    edges = lo + (hi - lo) * np.arange(1, strata) / strata
    stratum = np.searchsorted(edges, scores, side="right")
    counts = np.array([(alive & (stratum == s)).sum() for s in range(strata)])
    quotas = class_quotas(counts, k)
    keys = uniform_keys(np.arange(n), 5)
    chosen = []
    for s in range(strata):
        members = np.flatnonzero(alive & (stratum == s))
        chosen.append(members[np.argsort(keys[members], kind="stable")[:quotas[s]]])
    return np.sort(np.concatenate(chosen))


@pytest.mark.parametrize("per_class", [False, True])
@pytest.mark.parametrize("splits", [1, 3, 7])
def test_explore_matches_reference_for_any_split(per_class, splits):
    rng = np.random.default_rng(splits)
    scores = rng.normal(size=500).astype(np.float32)
    scores[::17] = scores[3]  # ties at the cut
    labels = rng.integers(0, 5, size=500)
    parts = _parts(scores, labels, splits, rng)
    got = _run(parts, k=150, rule=SelectionRule(explore=0.3), seed=11, per_class=per_class)
    want = _reference_explore(scores, labels, 150, 0.3, 11, per_class)
    np.testing.assert_array_equal(got.indices, want)
    # The stored margins are the scores, not the re-keyed values.
    np.testing.assert_array_equal(got.margins, scores[want])


def test_explore_keeps_the_hard_cut_and_draws_the_rest_from_outside_it():
    scores = np.linspace(0, 1, 1000)
    got = _run(_parts(scores, splits=4), k=100, rule=SelectionRule(explore=0.4), seed=3)
    assert got.indices.size == 100
    assert set(range(60)) <= set(got.indices.tolist())
    drawn = got.indices[got.indices >= 60]
    assert drawn.size == 40
    assert drawn.max() > 500  # spread over the rest, not the next-hardest 40


def test_explore_draws_depend_on_the_seed_only():
    scores = np.random.default_rng(0).random(400)
    rule = SelectionRule(explore=0.5)
    a = _run(_parts(scores, splits=2), k=80, rule=rule, seed=round_seed(0, 1)).indices
    b = _run(_parts(scores, splits=5), k=80, rule=rule, seed=round_seed(0, 1)).indices
    c = _run(_parts(scores, splits=2), k=80, rule=rule, seed=round_seed(0, 2)).indices
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_zero_explore_is_the_hard_cut():
    scores = np.random.default_rng(1).random(300)
    got = _run(_parts(scores, splits=3), k=90, rule=SelectionRule(), seed=0)
    np.testing.assert_array_equal(got.indices, select(scores, k=90))


@pytest.mark.parametrize("splits", [1, 4])
def test_coverage_matches_reference(splits):
    rng = np.random.default_rng(7)
    scores = np.concatenate([rng.normal(0, 1, 900), rng.normal(6, 0.5, 100)])
    got = _run(_parts(scores, splits=splits, rng=rng), k=200,
               rule=SelectionRule(coverage_strata=10, coverage_prune=0.1), seed=5)
    np.testing.assert_array_equal(got.indices, _reference_coverage(scores, 200, 10, 0.1))


def test_coverage_prunes_the_hardest_and_covers_every_stratum():
    scores = np.arange(1000, dtype=np.float64)  # uniform over the range
    got = _run(_parts(scores, splits=3), k=90,
               rule=SelectionRule(coverage_strata=9, coverage_prune=0.1), seed=2)
    assert got.indices.min() >= 100  # the lowest 10 % pruned
    counts = np.bincount((got.indices - 100) // 100, minlength=9)
    assert counts.tolist() == [10] * 9


def test_coverage_gives_small_strata_everything_and_never_prunes_into_the_budget():
    scores = np.concatenate([np.zeros(95), np.full(5, 10.0)])
    got = _run(_parts(scores, splits=2), k=96,
               rule=SelectionRule(coverage_strata=2, coverage_prune=0.5), seed=0)
    assert got.indices.size == 96  # prune capped at n - k = 4
    assert set(range(95, 100)) <= set(got.indices.tolist())


def test_coverage_with_one_value_and_infinite_scores():
    same = _run(_parts(np.ones(50), splits=2), k=10,
                rule=SelectionRule(coverage_strata=5), seed=0)
    assert same.indices.size == 10
    inf = np.concatenate([np.arange(40.0), [np.inf] * 10])
    got = _run(_parts(inf, splits=2), k=10, rule=SelectionRule(coverage_strata=5), seed=0)
    assert got.indices.size == 10


def test_rules_refuse_what_they_cannot_do():
    with pytest.raises(ValueError, match="explore"):
        SelectionRule(explore=1.0)
    with pytest.raises(ValueError, match="do not combine"):
        SelectionRule(explore=0.2, coverage_strata=4)
    parts = _parts(np.arange(10.0), np.zeros(10, dtype=int))
    with pytest.raises(ValueError, match="global"):
        _run(parts, k=3, rule=SelectionRule(coverage_strata=3), seed=0, per_class=True)


@pytest.mark.parametrize("splits", [1, 4])
def test_reweighting_weighs_the_hard_cut_one_and_each_draw_by_its_inverse_chance(splits):
    rng = np.random.default_rng(3)
    scores = rng.normal(size=1000)
    parts = _parts(scores, splits=splits, rng=rng)
    k, explore = 300, 0.4
    got = _run(parts, k=k, rule=SelectionRule(explore=explore, reweight="inverse"), seed=7)
    plain = _run(parts, k=k, rule=SelectionRule(explore=explore), seed=7)
    np.testing.assert_array_equal(got.indices, plain.indices)  # weights change no choice
    assert plain.weights is None and got.weights.dtype == np.float32
    explored = math.floor(explore * k + 0.5)
    hard = set(select(scores, None, k=k - explored).tolist())
    in_cut = np.isin(got.indices, list(hard))
    assert in_cut.sum() == k - explored
    np.testing.assert_array_equal(got.weights[in_cut], 1.0)
    w = (1000 - (k - explored)) / explored
    np.testing.assert_allclose(got.weights[~in_cut], w, rtol=1e-6)
    assert got.weights.sum() == pytest.approx(1000, rel=1e-5)  # an unbiased estimate of N
    normalized = _run(parts, k=k, rule=SelectionRule(explore=explore, reweight="normalized"),
                      seed=7)
    np.testing.assert_allclose(normalized.weights, got.weights * k / 1000, rtol=1e-6)
    assert normalized.weights.mean() == pytest.approx(1.0, rel=1e-5)
    tiny = _run(parts, k=1, rule=SelectionRule(explore=0.4, reweight="normalized"), seed=7)
    assert tiny.weights.tolist() == [1.0]  # no draw at k = 1: the hard cut, weight 1


def test_reweighting_estimates_the_whole_datasets_loss_without_bias():
    """Averaged over rounds (seeds), the weighted sum of a per-sample loss over the
    selection equals its sum over all samples."""
    rng = np.random.default_rng(0)
    scores = rng.normal(size=500)
    loss = np.exp(-scores)  # hard samples (low scores) have high loss
    parts = _parts(scores)
    rule = SelectionRule(explore=0.5, reweight="inverse")
    estimates = [float((loss[c.indices] * c.weights).sum())
                 for c in (_run(parts, k=100, rule=rule, seed=s) for s in range(400))]
    assert np.mean(estimates) == pytest.approx(loss.sum(), rel=0.02)


def test_reweighting_needs_explore_and_global_selection():
    assert explore_weight(10, 2, 4) == 2.0
    with pytest.raises(ValueError, match="explore"):
        SelectionRule(reweight="inverse")
    with pytest.raises(ValueError, match="reweight must be"):
        SelectionRule(explore=0.2, reweight="yes")
    parts = _parts(np.arange(10.0), np.zeros(10, dtype=int))
    with pytest.raises(ValueError, match="global"):
        _run(parts, k=4, rule=SelectionRule(explore=0.5, reweight="inverse"), seed=0,
             per_class=True)
    with pytest.raises(ValueError, match="explore > 0"):
        SelectionPolicy(reweight="inverse")
    with pytest.raises(ValueError, match="global"):
        SelectionPolicy(explore=0.3, reweight="inverse", class_balance="per_class")
    policy = SelectionPolicy(explore=0.3, reweight="inverse")
    assert policy.rule.reweight == "inverse"
    assert policy.uniform_weight(100, 25) == 4.0
    assert SelectionPolicy(explore=0.3, reweight="normalized").uniform_weight(100, 25) == 1.0
    assert SelectionPolicy().uniform_weight(100, 25) is None


def test_uniform_keys_are_uniform_and_index_keyed():
    keys = uniform_keys(np.arange(100_000), 9)
    assert keys.min() >= 0 and keys.max() < 1
    assert abs(keys.mean() - 0.5) < 0.01
    np.testing.assert_array_equal(uniform_keys([5, 6], 9), keys[5:7])
