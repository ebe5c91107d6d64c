"""A round that failed on the selector is a configuration error the trainer sees; a
selector that cannot be reached is not: the sampler falls back, as it always did."""

from __future__ import annotations

import shutil

import pytest
import torch

from dynams_service import JobSpec, ProxySpec, ScorerResources, SelectionPolicy, build_architecture
from dynams_service.client import DynaMSSampler, RoundFailedError, SelectorClient, SelectorJob

from ..core.test_stream import corrupt_row


def test_failed_round_raises_unless_opted_into_fallback_and_unavailable_falls_back(
        server_factory, jpeg_shards, tmp_path):
    uri = str(tmp_path / "corrupt")
    shutil.copytree(jpeg_shards[0], uri)
    corrupt_row(uri, "shard-00002.parquet", 11)  # labels intact: CreateJob accepts it
    spec = JobSpec(job_id="corrupt", dataset_uri=uri, fingerprint=jpeg_shards[1].fingerprint,
                   proxy=ProxySpec(architecture="cifar-resnet18", width=0.25),
                   policy=SelectionPolicy(ratio=0.3, warmup_epochs=1, seed=3,
                                          staleness="sync"), epochs=3,
                   resources=ScorerResources(num_scorers=1, num_cpus=1, cache_bytes=0))
    server = server_factory()
    job = SelectorJob.create(SelectorClient(server.address), spec)
    torch.manual_seed(0)
    model = build_architecture("cifar-resnet18").eval()

    with DynaMSSampler(600, job, rank=0, world_size=1, deadline=300) as strict:
        strict.set_epoch(0)
        assert len(list(strict)) == 600 and strict.sources[0].kind == "full"
        strict.push(model, version=1)
        strict.set_epoch(1)
        with pytest.raises(RoundFailedError) as info:
            list(strict)
        assert info.value.epoch == 1
        assert "shard-00002.parquet row 11" in info.value.details  # the selector's message
        assert strict.fallback_epochs == []

    with DynaMSSampler(600, job, rank=0, world_size=1, deadline=300,
                       fallback_on_failed_round=True) as lenient:
        lenient.load_state_dict({**strict.state_dict(consumed=0), "epoch": 1})
        lenient.set_epoch(1)
        assert len(list(lenient)) == 180
        assert lenient.fallback_epochs == [1] and lenient.sources[1].kind == "fallback"

    server.stop(grace=0)  # unavailable: a fallback even without the opt-in
    offline = SelectorJob(SelectorClient(server.address, timeout=2, retries=0), spec,
                          can_create=False)
    with DynaMSSampler(600, offline, rank=0, world_size=1, deadline=5) as sampler:
        sampler.load_state_dict({**strict.state_dict(consumed=0), "epoch": 1})
        sampler.set_epoch(1)
        assert len(list(sampler)) == 180 and sampler.fallback_epochs == [1]
