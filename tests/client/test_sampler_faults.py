"""The sampler against an unreliable selector: down at start, down mid-run, too slow.

Every epoch still has its planned length; each fallback is counted; when the selector is
back, the next epoch uses it again."""

from __future__ import annotations

import socket

import numpy as np
import pytest

from dynams_service import JobSpec, ProxySpec, ScorerResources, SelectionPolicy
from dynams_service.client import DynaMSSampler, SelectorClient, SelectorJob
from dynams_service.core.models.proxy import export_psp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_at_a_fixed_port(local_server_factory, **kwargs):
    """A local selector on a port chosen here (to restart it there later); a port another
    process took meanwhile is refused at start, so another is tried."""
    for _ in range(20):
        address = f"127.0.0.1:{free_port()}"
        try:
            return address, local_server_factory(address=address, **kwargs)
        except OSError:
            continue
    raise AssertionError("no free port in 20 tries")


def test_fallbacks_keep_the_plan_and_recover(local_server_factory, small_shards, trained_model,
                                             tmp_path, caplog):
    uri, manifest = small_shards
    spec = JobSpec(job_id="flaky", dataset_uri=uri, fingerprint=manifest.fingerprint,
                   proxy=ProxySpec(architecture="fmnist-cnn", width=0.25),
                   policy=SelectionPolicy(ratio=0.3, warmup_epochs=1, seed=5), epochs=6,
                   resources=ScorerResources(num_scorers=2, num_cpus=1))
    port = free_port()
    address = f"127.0.0.1:{port}"
    client = SelectorClient(address, timeout=10, retries=4)
    sampler = DynaMSSampler(4000, SelectorJob.create(client, spec), rank=0, world_size=1,
                            deadline=120)
    lengths = sampler.epoch_lengths()
    assert lengths == [4000, 1200, 1200, 1200, 1200, 1200]

    def run_epoch(epoch: int) -> np.ndarray:
        sampler.set_epoch(epoch)
        assert len(sampler) == lengths[epoch]
        indices = np.array(list(sampler))
        assert len(indices) == lengths[epoch]
        return indices

    # Down at start: the warm-up epoch trains on all data as planned (not a fallback).
    assert sorted(run_epoch(0).tolist()) == list(range(4000))
    assert sampler.fallback_epochs == [] and sampler.sources[0].kind == "full"
    assert "unreachable" in caplog.text and "full-data epoch, trained as planned" in caplog.text

    server = local_server_factory(state_dir=tmp_path / "state", address=address)
    sampler.push(trained_model, version=1)  # creates the job late, then pushes
    run_epoch(1)
    assert sampler.sources[1].kind == "subset" and sampler.sources[1].weights_version == 1

    # Down mid-run: the push for epoch 2 fails, epoch 2 trains on a uniform subset.
    server.stop(grace=0)
    sampler.push(trained_model, version=2)
    fallback = run_epoch(2)
    assert sampler.fallback_epochs == [2] and len(set(fallback.tolist())) == 1200

    # Back (same state dir and port): the next epoch uses it again.
    local_server_factory(state_dir=tmp_path / "state", address=address)
    sampler.push(trained_model, version=3)
    run_epoch(3)
    assert sampler.sources[3].kind == "subset" and sampler.sources[3].weights_version == 3

    # Slow past the deadline: the round for epoch 4 cannot finish in 2 ms.
    client.push_weights("flaky", 4, 4, export_psp(trained_model, 0.25))
    sampler.pushed[4] = 4
    sampler.epochs.deadline = 0.002  # the fetcher holds the deadline each epoch waits
    run_epoch(4)
    assert sampler.fallback_epochs == [2, 4]
    sampler.epochs.deadline = 120
    sampler.push(trained_model, version=5)
    run_epoch(5)
    assert sampler.sources[5].kind == "subset"
    assert sampler.fallback_epochs == [2, 4]
    sampler.close()
    sampler.close()  # idempotent


def test_bad_arguments_are_named(small_shards):
    uri, manifest = small_shards
    spec = JobSpec(job_id="args", dataset_uri=uri, fingerprint=manifest.fingerprint,
                   proxy=ProxySpec(architecture="fmnist-cnn"), epochs=2)
    client = SelectorClient(f"127.0.0.1:{free_port()}", timeout=1, retries=0)
    job = SelectorJob.create(client, spec)  # unreachable: not an error, falls back
    with pytest.raises(ValueError, match=r"rank 2 must be in \[0, 1\]"):
        DynaMSSampler(4000, job, rank=2, world_size=2)
    with pytest.raises(ValueError, match="3999 samples, the job's fingerprint 4000"):
        DynaMSSampler(3999, job)
    with pytest.raises(ValueError, match="deadline must be > 0"):
        DynaMSSampler(4000, job, deadline=0)
    with pytest.raises(ValueError, match=r"pipeline_fraction must be in \[0, 1\)"):
        DynaMSSampler(4000, job, pipeline_fraction=1.0)


def test_close_returns_within_the_deadline_behind_a_frozen_selector(ray_cluster, small_shards,
                                                                    trained_model, tmp_path):
    """Three pushes queued behind a frozen (SIGSTOPped) selector once held close() 330 s."""
    import os
    import signal
    import time

    from tests.service.conftest import Selector

    uri, manifest = small_shards
    spec = JobSpec(job_id="frozen", dataset_uri=uri, fingerprint=manifest.fingerprint,
                   proxy=ProxySpec(architecture="fmnist-cnn", width=0.25),
                   policy=SelectionPolicy(ratio=0.3, warmup_epochs=1, seed=5), epochs=5,
                   resources=ScorerResources(num_scorers=1, num_cpus=0))
    selector = Selector(tmp_path / "state")
    try:
        client = SelectorClient(selector.address, timeout=10, retries=0)
        sampler = DynaMSSampler(4000, SelectorJob.create(client, spec), rank=0,
                                world_size=1, deadline=2.0)
        os.kill(selector.proc.pid, signal.SIGSTOP)
        for epoch in range(3):  # queue three pushes; the first one hangs on the wire
            sampler.epoch = epoch
            sampler.push(trained_model, version=epoch + 1)
        started = time.monotonic()
        sampler.close()
        closed_in = time.monotonic() - started
        assert closed_in < 60, f"close() took {closed_in:.1f}s"  # was 330 s (3 x 120 s)
        sent = [f for f in sampler.pusher._sends.values() if not f.cancelled()]
        assert [f.result(timeout=30) for f in sent] == [False] * len(sent)  # cancelled
    finally:
        os.kill(selector.proc.pid, signal.SIGCONT)
        selector.sigkill()


def test_ranks_skip_retries_while_the_selector_stays_down_and_all_see_it_back(
        local_server_factory, small_shards, trained_model, tmp_path):
    """While the selector stays down, an epoch waits for a connection (≤ 1.5 s) instead of
    the client's retries (they once doubled the length of every fallback epoch); when it
    is back, every rank uses it again at the next epoch, not only rank 0, which pushes."""
    uri, manifest = small_shards
    spec = JobSpec(job_id="down", dataset_uri=uri, fingerprint=manifest.fingerprint,
                   proxy=ProxySpec(architecture="fmnist-cnn", width=0.25),
                   policy=SelectionPolicy(ratio=0.3, warmup_epochs=1, seed=5), epochs=4,
                   resources=ScorerResources(num_scorers=1, num_cpus=0))
    address, server = server_at_a_fixed_port(local_server_factory, state_dir=tmp_path / "state")
    attempts: list[dict[int, int]] = [{}, {}]  # rank → epoch → GetSelection calls sent
    samplers = []
    for rank in range(2):
        client = SelectorClient(address, timeout=30, retries=3, backoff=0.3)
        real = client._stub.GetSelection

        def counted(request, *args, real=real, seen=attempts[rank], **kwargs):
            seen[request.epoch] = seen.get(request.epoch, 0) + 1
            return real(request, *args, **kwargs)

        client._stub.GetSelection = counted  # the real call, counted
        samplers.append(DynaMSSampler(4000, SelectorJob.create(client, spec), rank=rank,
                                      world_size=2, deadline=30))

    def run_epoch(epoch: int, version: int | None = None) -> None:
        for sampler in samplers:
            sampler.set_epoch(epoch)
        if version is not None:
            for sampler in samplers:
                sampler.epoch = epoch - 1  # the push is for `epoch`, made during the one before
                sampler.push(trained_model, version=version)
                sampler.epoch = epoch
        for sampler in samplers:
            assert len(list(sampler)) == sampler.epoch_lengths()[epoch]

    try:
        run_epoch(0)
        server.stop(grace=0)
        run_epoch(1, version=1)  # the first epoch without a selector: the client retries
        run_epoch(2, version=2)  # still down: no call at all
        local_server_factory(state_dir=tmp_path / "state", address=address)
        run_epoch(3, version=3)  # back: every rank uses it
    finally:
        for sampler in samplers:
            sampler.close()
    for rank, sampler in enumerate(samplers):
        assert attempts[rank][1] == 4 and 2 not in attempts[rank], (rank, attempts[rank])
        assert sampler.fallback_epochs == [1, 2], (rank, sampler.fallback_epochs)
        assert sampler.sources[3].kind == "subset" and sampler.sources[3].weights_version == 3
