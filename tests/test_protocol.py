"""The policy's score on the wire: by name, and margin_mode beside it for peers of either
age (see the comment on MarginMode in selector.proto)."""

from __future__ import annotations

import pytest

from dynams_service.core.job import JobSpec, ProxySpec
from dynams_service.core.policy import SelectionPolicy
from dynams_service.core.shards import DatasetFingerprint
from dynams_service.protocol import ProtocolError, pb, spec_from_proto, spec_to_proto


def spec(**policy) -> JobSpec:
    return JobSpec(job_id="wire", dataset_uri="/data/train", epochs=3,
                   fingerprint=DatasetFingerprint(num_samples=10, num_classes=2,
                                                  labels_sha256="0" * 64),
                   proxy=ProxySpec(architecture="fmnist-cnn"),
                   policy=SelectionPolicy(**policy))


@pytest.mark.parametrize(("score", "margin_mode"), [
    ("distance", pb.MARGIN_MODE_DISTANCE),
    ("signed", pb.MARGIN_MODE_SIGNED),
    ("loss", pb.MARGIN_MODE_NAMED),
    ("operator.custom-score", pb.MARGIN_MODE_NAMED),
])
def test_score_round_trips_with_margin_mode_beside_it(score, margin_mode):
    message = spec_to_proto(spec(score=score))
    assert message.policy.score == score
    assert message.policy.margin_mode == margin_mode  # older servers read this (or refuse)
    assert spec_from_proto(message) == spec(score=score)


@pytest.mark.parametrize(("margin_mode", "score"), [
    (pb.MARGIN_MODE_UNSPECIFIED, "distance"),
    (pb.MARGIN_MODE_DISTANCE, "distance"),
    (pb.MARGIN_MODE_SIGNED, "signed"),
])
def test_older_clients_name_the_score_by_margin_mode(margin_mode, score):
    message = spec_to_proto(spec())
    message.policy.ClearField("score")
    message.policy.margin_mode = margin_mode
    assert spec_from_proto(message).policy.score == score


@pytest.mark.parametrize(("margin_mode", "score", "error"), [
    (pb.MARGIN_MODE_SIGNED, "distance", "MARGIN_MODE_SIGNED contradicts policy.score"),
    (pb.MARGIN_MODE_DISTANCE, "loss", "MARGIN_MODE_DISTANCE contradicts policy.score 'loss'"),
    (pb.MARGIN_MODE_NAMED, "signed", "MARGIN_MODE_NAMED contradicts policy.score 'signed'"),
    (pb.MARGIN_MODE_NAMED, "", "policy.score is empty"),
    (42, "", "policy.margin_mode: unknown enum value 42"),
    (42, "loss", "policy.margin_mode: unknown enum value 42"),
])
def test_inconsistent_score_fields_are_refused(margin_mode, score, error):
    message = spec_to_proto(spec())
    message.policy.margin_mode = margin_mode
    message.policy.score = score
    with pytest.raises(ProtocolError, match=error):
        spec_from_proto(message)


def test_malformed_score_name_is_refused():
    message = spec_to_proto(spec())
    message.policy.margin_mode = pb.MARGIN_MODE_UNSPECIFIED
    message.policy.score = "no such/score"
    with pytest.raises(ValueError, match="score"):
        spec_from_proto(message)


@pytest.mark.parametrize("rule", [
    {},
    {"explore": 0.25},
    {"coverage_strata": 50, "coverage_prune": 0.0},
    {"coverage_strata": 20, "coverage_prune": 0.3},
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
