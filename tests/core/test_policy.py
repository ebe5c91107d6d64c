"""Policy validation and the plan: kinds and sizes of every epoch, known up front."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from dynams_service import SelectionPolicy
from dynams_service.core.selection.policy import EpochKind


def test_defaults_follow_the_architecture():
    policy = SelectionPolicy()
    assert policy.score == "distance"
    assert policy.class_balance == "global" and not policy.per_class
    assert policy.staleness == "pipelined"  # the quality benchmark: same accuracy, no wait


def test_plan_kinds_and_sizes():
    policy = SelectionPolicy(ratio=0.3, warmup_epochs=1, interval_epochs=2, anneal_epochs=1)
    plan = policy.plan(num_samples=1000, epochs=7)
    assert [e.kind for e in plan.epochs] == [
        EpochKind.FULL, EpochKind.SELECT, EpochKind.REUSE, EpochKind.SELECT, EpochKind.REUSE,
        EpochKind.SELECT, EpochKind.FULL,
    ]
    assert plan.sizes == [1000, 300, 300, 300, 300, 300, 1000]
    assert [e.round for e in plan.epochs] == [None, 0, 0, 1, 1, 2, None]
    assert plan.select_epochs == [1, 3, 5]
    assert plan.sample_iterations == 3500
    assert plan.fraction_trained == pytest.approx(0.5)
    assert plan[3].kind is EpochKind.SELECT
    with pytest.raises(IndexError, match=r"epoch 7 must be in \[0, 6\]"):
        plan[7]


def test_plan_shorter_than_warmup_is_all_full():
    plan = SelectionPolicy(warmup_epochs=3).plan(num_samples=10, epochs=2)
    assert plan.sizes == [10, 10] and plan.select_epochs == []


def test_plan_sizes_use_ceiling():
    assert SelectionPolicy(ratio=0.3, warmup_epochs=0).plan(7, 1).sizes == [3]


@pytest.mark.parametrize("exponent", [0.5, 1.0, 2.0])
def test_power_schedule_decays_with_the_same_budget(exponent):
    constant = SelectionPolicy(ratio=0.3, warmup_epochs=1, interval_epochs=1)
    power = constant.model_copy(update={"ratio_schedule": "power", "power_exponent": exponent})
    n, epochs = 10_000, 11
    c_plan, p_plan = constant.plan(n, epochs), power.plan(n, epochs)
    ratios = power.round_ratios(epochs)
    assert all(a >= b for a, b in zip(ratios, ratios[1:], strict=False))
    assert ratios[0] > 0.3 > ratios[-1]
    # Equal total budget, up to one sample per round of ceiling.
    assert abs(p_plan.sample_iterations - c_plan.sample_iterations) <= len(ratios)


def test_power_schedule_caps_ratios_at_one():
    policy = SelectionPolicy(ratio=0.9, warmup_epochs=0, ratio_schedule="power",
                             power_exponent=4)
    ratios = policy.round_ratios(10)
    assert max(ratios) == 1.0
    assert sum(ratios) == pytest.approx(9.0)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"ratio": 0}, "ratio"),
        ({"ratio": 1.5}, "ratio"),
        ({"interval_epochs": 0}, "interval_epochs"),
        ({"warmup_epochs": -1}, "warmup_epochs"),
        ({"margin_mode": "signed"}, "margin_mode"),
        ({"score": ""}, "score"),
        ({"score": "two words"}, "score"),
        ({"class_balance": "weighted"}, "class_balance"),
        ({"staleness": "eventual"}, "staleness"),
        ({"ratio_typo": 0.3}, "ratio_typo"),
        ({"ratio": 1.0, "ratio_schedule": "power"}, "ratio < 1"),
    ],
)
def test_nonsense_is_refused_with_the_field_named(kwargs, field):
    with pytest.raises(ValidationError, match=field):
        SelectionPolicy(**kwargs)


def test_plan_arguments_are_validated():
    with pytest.raises(ValueError, match="num_samples must be >= 1"):
        SelectionPolicy().plan(0, 3)
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        SelectionPolicy().plan(10, 0)


def test_policy_round_trips_through_json():
    policy = SelectionPolicy(ratio=0.2, interval_epochs=3, score="el2n", seed=7)
    assert SelectionPolicy.model_validate_json(policy.model_dump_json()) == policy


def test_any_well_formed_score_name_is_accepted_here():
    """The selector checks names against its registry; a client may name an operator's."""
    assert SelectionPolicy(score="operators.custom-score_2").score == "operators.custom-score_2"


def test_selection_rule_knobs_validate_and_build_the_rule():
    policy = SelectionPolicy(explore=0.2)
    assert policy.rule.explore == 0.2 and not policy.rule.hard_cut
    assert SelectionPolicy().rule.hard_cut
    assert SelectionPolicy(coverage_strata=50).rule.coverage_prune == 0.1
    for bad, match in (({"explore": 1.0}, "explore"),
                       ({"coverage_strata": 4, "explore": 0.1}, "do not combine"),
                       ({"coverage_strata": 4, "class_balance": "per_class"}, "global"),
                       ({"coverage_prune": -0.1}, "coverage_prune")):
        with pytest.raises(ValidationError, match=match):
            SelectionPolicy(**bad)
