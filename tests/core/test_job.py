"""JobSpec identity: what a refused re-creation names (fields only, never values)."""

from __future__ import annotations

from dynams_service import JobSpec, ProxySpec, SelectionPolicy
from dynams_service.core.data.shards import DatasetFingerprint
from dynams_service.core.job import spec_differences


def spec(**changes) -> JobSpec:
    base = dict(job_id="run", dataset_uri="/data/train", epochs=3,
                fingerprint=DatasetFingerprint(num_samples=100, num_classes=10,
                                               labels_sha256="0" * 64),
                proxy=ProxySpec(architecture="fmnist-cnn", width=0.25),
                policy=SelectionPolicy(ratio=0.3))
    return JobSpec(**{**base, **changes})


def test_spec_differences_name_nested_fields_and_no_values():
    assert spec_differences(spec(), spec()) == []
    changed = spec(epochs=4, policy=SelectionPolicy(ratio=0.5),
                   dataset_uri="/secret/other/path")
    names = spec_differences(spec(), changed)
    assert sorted(names) == ["dataset_uri", "epochs", "policy.ratio"]
    assert not any("secret" in n or "0.5" in n for n in names)
