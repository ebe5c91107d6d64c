"""Faults survived: scorers killed mid-round, the selector SIGKILLed mid-push and mid-round,
and one job's trouble leaving another job's answers untouched."""

from __future__ import annotations

import os
import signal
import statistics
import threading
import time

import grpc
import numpy as np
import pytest
import ray
import torch

from dynams_service import JobSpec, ProxySpec, ScorerResources, SelectionPolicy, score, select
from dynams_service.client import SelectorClient, SelectorError, Status
from dynams_service.core.data.shards import decode_samples, read_shards, write_shards
from dynams_service.core.job import RoundState
from dynams_service.core.models.proxy import TensorRecord, build_proxy, export_psp
from dynams_service.proto.dynams.v1 import selector_pb2_grpc
from dynams_service.protocol import records_to_chunks

from .conftest import Selector, make_spec, with_resources


def full_spec(shards, job_id: str) -> JobSpec:
    uri, manifest = shards
    return JobSpec(job_id=job_id, dataset_uri=uri, fingerprint=manifest.fingerprint,
                   proxy=ProxySpec(architecture="fmnist-cnn", width=0.25),
                   policy=SelectionPolicy(ratio=0.3, warmup_epochs=1, seed=3,
                                          class_balance="per_class"), epochs=4,
                   resources=ScorerResources(num_scorers=2, num_cpus=1, batch_size=512))


def expected(shards, model, batch_size=512) -> np.ndarray:
    uri, manifest = shards
    rows = read_shards(uri, manifest=manifest)
    proxy = build_proxy("fmnist-cnn", 0.25, export_psp(model, 0.25))
    return select(score(proxy, decode_samples(rows.samples, manifest), batch_size=batch_size),
                  rows.labels, ratio=0.3, per_class=True)


@pytest.fixture(scope="module")
def round_shards(tmp_path_factory, fashion_mnist_train):
    """The first 20000 training images in 5 shards: a round scores for seconds, long enough
    to kill a scorer or the selector in the middle of it."""
    images, labels = fashion_mnist_train
    uri = str(tmp_path_factory.mktemp("round") / "train")
    return uri, write_shards(uri, images[:20000, None], labels[:20000], num_classes=10,
                             rows_per_shard=4000)


@pytest.fixture(scope="module")
def second_model(trained_model):
    """Different weights for a later round (the trained model, perturbed)."""
    torch.manual_seed(1)
    model = type(trained_model)(widths=trained_model.widths)
    model.load_state_dict(trained_model.state_dict())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return model.eval()


@pytest.mark.parametrize("how", ["ray.kill", "SIGKILL"])
def test_scorer_killed_mid_round_gives_the_identical_round(server_factory, round_shards,
                                                           trained_model, how):
    server = server_factory()
    client = SelectorClient(server.address)
    spec = full_spec(round_shards, f"kill-{how.lower().replace('.', '-')}")
    client.create_job(spec)
    victim = ray.get_actor(f"dynams:{spec.job_id}:scorer:1")
    pid = ray.get(victim.pid.remote())
    started = time.perf_counter()
    client.push_weights(spec.job_id, 1, 1, export_psp(trained_model, 0.25))
    time.sleep(0.3)  # the round is scoring 20k samples: kill one scorer in the middle
    if how == "ray.kill":
        ray.kill(victim, no_restart=True)
    else:
        os.kill(pid, signal.SIGKILL)
    header = client.get_selection(spec.job_id, 1, 0, 1, timeout=600)
    got = header.indices
    elapsed = time.perf_counter() - started
    assert header.weights_version == 1
    assert np.array_equal(np.sort(got), expected(round_shards, trained_model))
    status = client.get_job(spec.job_id)
    assert status.rounds[0].state == RoundState.DONE
    print(f"\n{how}: round with a killed scorer took {elapsed:.1f}s")


def test_one_jobs_faults_leave_another_job_alone(server_factory, small_shards,
                                                 trained_model):
    server = server_factory()
    client = SelectorClient(server.address, retries=0)
    for job_id in ("healthy", "troubled"):  # one scorer each: the jobs' isolation is the point
        client.create_job(with_resources(make_spec(small_shards, job_id), num_scorers=1))
    client.push_weights("healthy", 1, 1, export_psp(trained_model, 0.25))
    reference = [client.get_selection("healthy", 1, r, 2, timeout=120) for r in range(2)]

    def healthy_latency(n=20) -> float:
        times = []
        for i in range(n):
            start = time.perf_counter()
            header = client.get_selection("healthy", 1, i % 2, 2)
            part = header.indices
            times.append(time.perf_counter() - start)
            assert header == reference[i % 2] and np.array_equal(part, reference[i % 2].indices)
        return statistics.median(times) * 1e3

    quiet = healthy_latency()
    stop = threading.Event()
    trouble_done = []

    def make_trouble() -> None:
        bad = [TensorRecord("fc.weight", "float32", (3,), b"\x00" * 12)]
        while not stop.is_set():
            with pytest.raises(SelectorError):
                client.push_weights("troubled", 1, 5, bad)
            with pytest.raises(SelectorError):
                client.get_selection("troubled", 9, 0, 1)
        trouble_done.append(True)

    thread = threading.Thread(target=make_trouble)
    thread.start()
    client.push_weights("troubled", 1, 2, export_psp(trained_model, 0.25))
    ray.kill(ray.get_actor("dynams:troubled:scorer:0"), no_restart=True)
    noisy = healthy_latency()
    client.get_selection("troubled", 1, 0, 1, timeout=300)  # its round still completes
    stop.set()
    thread.join()
    assert trouble_done
    healthy_latency()
    print(f"\nhealthy job GetSelection median: {quiet:.1f} ms quiet, {noisy:.1f} ms while the "
          "other job was pushing garbage and losing a scorer")


# --- the selector process SIGKILLed -----------------------------------------------------

def assert_round0_kept_and_round1_waiting(client: SelectorClient, job_id: str,
                                          round0: list) -> None:
    """After a restart: round 0 answers exactly as before, round 1 still needs weights."""
    status = client.get_job(job_id)
    assert [r.state for r in status.rounds[:2]] == [RoundState.DONE,
                                                   RoundState.WAITING]
    for rank in range(2):
        header = client.get_selection(job_id, 1, rank, 2)
        part = header.indices
        assert header == round0[rank] and np.array_equal(part, round0[rank].indices)


def test_selector_sigkilled_during_push_and_round(ray_cluster, round_shards,
                                                  trained_model, second_model, tmp_path):
    state = tmp_path / "state"
    spec = full_spec(round_shards, "crashy")
    first = Selector(state)
    try:
        client = SelectorClient(first.address)
        client.create_job(spec)
        client.push_weights(spec.job_id, 1, 1, export_psp(trained_model, 0.25))
        round0 = [client.get_selection(spec.job_id, 1, r, 2, timeout=600) for r in range(2)]

        # 1. Killed during a push: half the stream sent, then SIGKILL.
        chunks = list(records_to_chunks(spec.job_id, 2, 2, export_psp(second_model, 0.25),
                                        part_bytes=8192))
        release = threading.Event()

        def stalled():
            yield from chunks[: len(chunks) // 2]
            release.wait(60)

        stub = selector_pb2_grpc.SelectorStub(grpc.insecure_channel(first.address))
        pushing = stub.PushWeights.future(stalled(), timeout=60)
        time.sleep(1.0)
        first.sigkill()
        release.set()
        with pytest.raises(grpc.RpcError):
            pushing.result()
    finally:
        if first.proc.poll() is None:
            first.sigkill()

    second = Selector(state)
    try:
        client = SelectorClient(second.address)
        assert_round0_kept_and_round1_waiting(client, spec.job_id, round0)
        # 2. Killed during a round: the push is committed, scoring 20k samples is running.
        client.push_weights(spec.job_id, 2, 2, export_psp(second_model, 0.25))
        second.sigkill()
    finally:
        if second.proc.poll() is None:
            second.sigkill()

    third = Selector(state)
    try:
        client = SelectorClient(third.address)
        assert not list(state.rglob(".tmp-*"))
        assert_round0_kept_and_round1_waiting(client, spec.job_id, round0)  # 1 not done
        with pytest.raises(SelectorError) as info:
            client.get_selection(spec.job_id, 2, 0, 1)
        assert info.value.status == Status.FAILED_PRECONDITION
        ack = client.push_weights(spec.job_id, 2, 2, export_psp(second_model, 0.25))
        assert not ack.already_done
        header = client.get_selection(spec.job_id, 2, 0, 1, timeout=600)
        got = header.indices
        assert header.weights_version == 2
        assert np.array_equal(np.sort(got), expected(round_shards, second_model))
    finally:
        third.stop()
