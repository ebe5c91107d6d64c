"""The job spec on the wire: every policy and resource knob by name, unset fields taking
the defaults (NOTE [ knobs on the wire ] in protocol.py)."""

from __future__ import annotations

from typing import Literal

import numpy as np
import pytest
from pydantic import BaseModel

from dynams_service.core.data.shards import DatasetFingerprint
from dynams_service.core.job import JobSpec, ProxySpec, ScorerResources
from dynams_service.core.selection.policy import SelectionPolicy
from dynams_service.protocol import (
    POLICY_KNOBS,
    ProtocolError,
    _knobs,
    pb,
    selection_chunks,
    selection_from_chunks,
    spec_from_proto,
    spec_to_proto,
)


def spec(**policy) -> JobSpec:
    return JobSpec(job_id="wire", dataset_uri="/data/train", epochs=3,
                   fingerprint=DatasetFingerprint(num_samples=10, num_classes=2,
                                                  labels_sha256="0" * 64),
                   proxy=ProxySpec(architecture="fmnist-cnn"),
                   policy=SelectionPolicy(**policy))


@pytest.mark.parametrize("score", ["distance", "signed", "loss", "operator.custom-score"])
def test_score_round_trips_by_name(score):
    message = spec_to_proto(spec(score=score))
    assert message.policy.score == score
    assert spec_from_proto(message) == spec(score=score)


def test_every_knob_round_trips_and_unset_knobs_take_the_defaults():
    changed = spec(ratio=0.2, warmup_epochs=0, interval_epochs=3, anneal_epochs=2,
                   score="el2n", class_balance="per_class", ratio_schedule="power",
                   power_exponent=2.0, seed=11, staleness="sync", explore=0.1).model_copy(
        update={"resources": ScorerResources(num_scorers=3, num_cpus=0.5, num_gpus=0.25,
                                             batch_size=64, cache_bytes=0)})
    wire = pb.JobSpec.FromString(spec_to_proto(changed).SerializeToString())
    assert spec_from_proto(wire) == changed
    assert all(getattr(changed.policy, k) != getattr(SelectionPolicy(), k)
               for k in POLICY_KNOBS if k not in ("coverage_strata", "coverage_prune", "reweight"))
    wire.ClearField("policy")
    wire.ClearField("resources")
    bare = spec_from_proto(wire)
    assert bare.policy == SelectionPolicy() and bare.resources == ScorerResources()


def test_unknown_enum_value_is_refused():
    message = spec_to_proto(spec())
    message.policy.class_balance = 42
    with pytest.raises(ProtocolError, match="policy.class_balance: unknown enum value 42"):
        spec_from_proto(message)


def test_a_knob_missing_on_either_side_fails_at_import():
    class Extra(SelectionPolicy):
        frobnicate: float = 0.0

    with pytest.raises(AssertionError, match="Policy has no field 'frobnicate'"):
        _knobs(Extra, pb.Policy)

    class Fewer(BaseModel):
        ratio: float = 0.3

    with pytest.raises(AssertionError, match="are not Fewer's"):
        _knobs(Fewer, pb.Policy)

    class NewOption(BaseModel):
        num_scorers: int = 1
        num_cpus: float = 1
        num_gpus: float = 0
        batch_size: int = 1
        cache_bytes: int = 0

    _knobs(NewOption, pb.ScorerResources)  # the real resources' shape: fine

    class Staleness(BaseModel):
        staleness: Literal["sync", "eventual"] = "sync"

    with pytest.raises(AssertionError, match="no value STALENESS_EVENTUAL"):
        _knobs(Staleness, pb.Policy)


def test_malformed_score_name_is_refused():
    message = spec_to_proto(spec())
    message.policy.score = "no such/score"
    with pytest.raises(ValueError, match="score"):
        spec_from_proto(message)


@pytest.mark.parametrize("rule", [
    {},
    {"explore": 0.25},
    {"coverage_strata": 50, "coverage_prune": 0.0},
    {"coverage_strata": 20, "coverage_prune": 0.3},
    {"explore": 0.5, "reweight": "inverse"},
    {"explore": 0.5, "reweight": "normalized"},
])
def test_selection_rules_round_trip(rule):
    sent = spec(**rule)
    got = spec_from_proto(pb.JobSpec.FromString(spec_to_proto(sent).SerializeToString()))
    assert got.policy == sent.policy


def test_an_unset_coverage_prune_takes_the_default_and_a_bad_rule_is_refused():
    message = spec_to_proto(spec(coverage_strata=10))
    message.policy.ClearField("coverage_prune")
    assert spec_from_proto(message).policy.coverage_prune == 0.1
    message.policy.explore = 0.5  # with coverage: refused by the policy
    with pytest.raises(ValueError, match="do not combine"):
        spec_from_proto(message)


def test_a_weighted_selection_streams_its_weights_beside_the_indices():
    indices = np.array([9, 3, 5, 3, 7], dtype=np.int64)
    table = {3: 1.0, 5: 2.5, 7: 2.5, 9: 1.0}
    header = pb.SelectionHeader(rank_count=5, weighted=True)
    chunks = list(selection_chunks(
        header, indices, lambda part: np.array([table[int(i)] for i in part]), chunk=2))
    assert len(chunks) == 3 and all(len(c.weights) == 4 * len(c.indices) // 8 for c in chunks)
    _, got, weights = selection_from_chunks(chunks)
    np.testing.assert_array_equal(got, indices)
    np.testing.assert_array_equal(weights, np.array([1.0, 1.0, 2.5, 1.0, 2.5], np.float32))


@pytest.mark.parametrize("damage, match", [
    (lambda c: setattr(c[1], "weights", c[1].weights[:-4]), "weights chunk of"),
    (lambda c: setattr(c[0], "weights", np.float32([np.nan]).tobytes()
                       + c[0].weights[4:]), "finite"),
    (lambda c: setattr(c[0].header, "weighted", False), "not weighted"),
])
def test_malformed_weights_are_a_protocol_error(damage, match):
    header = pb.SelectionHeader(rank_count=4, weighted=True)
    chunks = list(selection_chunks(header, np.arange(4), lambda p: np.ones(len(p)), chunk=2))
    damage(chunks)
    with pytest.raises(ProtocolError, match=match):
        selection_from_chunks(chunks)
