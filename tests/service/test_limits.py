"""Admission and lifetime: operator limits, placement without a global lock within the
caller's deadline, failed creations releasing what they reserved, long-call caps, idle
streams, and idle jobs giving their scorers back (--job-ttl) or expiring (--job-expiry).
What is about the server's streams and the job table runs on in-process scorers; what is
about Ray's resources and actors runs on a local Ray cluster."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest
import ray
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dynams_service import ScorerResources
from dynams_service.client import SelectorClient, SelectorError
from dynams_service.core.data.shards import write_shards
from dynams_service.core.job import JobState
from dynams_service.core.models.proxy import export_psp
from dynams_service.proto.dynams.v1 import selector_pb2_grpc
from dynams_service.protocol import pb, records_to_chunks
from dynams_service.service.errors import DeadlineExceeded
from dynams_service.service.limits import Limits

from .conftest import make_spec, with_resources

C = grpc.StatusCode


def scorers_of(job_id: str) -> list[str]:
    return [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
            if a["name"].startswith(f"dynams:{job_id}:")]


def eventually(check: Callable[[], bool], what: str, limit: float = 120.0) -> None:
    """Poll ``check`` (a failure guard, not a speed bound)."""
    end = time.monotonic() + limit
    while not check():
        if time.monotonic() > end:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.2)


def code_of(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(SelectorError) as info:
        call()
    return C[info.value.status.value], info.value.details


def test_operator_limits_refuse_before_anything_is_reserved(server_factory, small_shards,
                                                            tmp_path):
    limits = Limits(max_jobs=1, max_scorers_per_job=2, max_cpus_per_job=2, max_gpus_per_job=0,
                    max_memory_per_job=2**30)
    server = server_factory(limits=limits)
    client = SelectorClient(server.address, retries=0)
    small = with_resources(make_spec(small_shards, "lim-ok"), num_scorers=1, num_cpus=0)
    refusals = {
        "scorers": with_resources(make_spec(small_shards, "lim-a"), num_scorers=3, num_cpus=0),
        "cpus": with_resources(make_spec(small_shards, "lim-b"), num_scorers=2, num_cpus=1.5),
        "gpus": with_resources(make_spec(small_shards, "lim-c"), num_scorers=1, num_gpus=0.5),
        "memory": with_resources(make_spec(small_shards, "lim-d"), num_scorers=2, num_cpus=0),
    }
    for what, spec in refusals.items():
        code, message = code_of(lambda s=spec: client.create_job(s))
        assert code == C.RESOURCE_EXHAUSTED, (what, message)
        assert not scorers_of(spec.job_id) and not (tmp_path / "state/jobs" / spec.job_id).exists()
    client.create_job(small)
    code, message = code_of(lambda: client.create_job(
        with_resources(make_spec(small_shards, "lim-two"), num_scorers=1, num_cpus=0)))
    assert code == C.RESOURCE_EXHAUSTED and "--max-jobs" in message
    assert client.create_job(small).spec.job_id == "lim-ok"  # idempotent, not a new job


def test_an_unplaceable_job_blocks_no_one_and_ends_at_the_callers_deadline(server_factory,
                                                                           small_shards):
    server = server_factory()
    client = SelectorClient(server.address, retries=0)
    huge = with_resources(make_spec(small_shards, "unplaceable"), num_scorers=2, num_cpus=64)
    result: dict = {}

    def create_huge() -> None:
        result["code"] = code_of(lambda: client.create_job(huge, timeout=20))[0]

    thread = threading.Thread(target=create_huge)
    thread.start()
    eventually(lambda: "unplaceable" in server.coordinator.table.creating, "placement started")
    ok = with_resources(make_spec(small_shards, "placeable"), num_scorers=1, num_cpus=0)
    assert client.create_job(ok).spec.job_id == "placeable"
    assert client.get_job("placeable").spec.job_id == "placeable"
    assert thread.is_alive(), "the unplaceable job's placement should still be waiting"
    thread.join()
    assert result["code"] == C.DEADLINE_EXCEEDED
    eventually(lambda: not server.coordinator.table.creating, "the creation ended on the server")
    assert not scorers_of("unplaceable")
    assert [j.spec.job_id for j in client.list_jobs()] == ["placeable"]
    groups = ray.util.placement_group_table().values()
    assert not [g for g in groups if g.get("name") == "dynams:unplaceable:scorers"
                and g.get("state") != "REMOVED"]


def test_a_creation_whose_caller_left_keeps_nothing(server_factory, small_shards, tmp_path):
    server = server_factory()
    spec = with_resources(make_spec(small_shards, "gave-up"), num_scorers=1, num_cpus=0)
    with pytest.raises(DeadlineExceeded):
        server.coordinator.create_job(spec, gave_up=lambda: True)
    # A client whose deadline passes during placement gets nothing created either.
    client = SelectorClient(server.address, retries=0)
    code, _ = code_of(lambda: client.create_job(spec, timeout=0.3))
    assert code == C.DEADLINE_EXCEEDED
    eventually(lambda: not server.coordinator.table.creating, "the creation ended on the server")
    assert client.list_jobs() == [] and not scorers_of("gave-up")
    assert not (tmp_path / "state/jobs/gave-up").exists()


@pytest.fixture()
def immutable(tmp_path):
    """Make a directory immutable (chattr +i): even root cannot write or rename in it."""
    made: list[Path] = []

    def make(path: Path) -> None:
        done = subprocess.run(["chattr", "+i", str(path)], capture_output=True)
        if done.returncode:
            pytest.skip(f"chattr +i not supported here: {done.stderr.decode().strip()}")
        made.append(path)

    yield make
    for path in made:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def test_a_failed_spec_save_releases_the_scorers(server_factory, small_shards, tmp_path,
                                                  immutable):
    server = server_factory()
    client = SelectorClient(server.address, retries=0)
    spec = with_resources(make_spec(small_shards, "unsaved"), num_scorers=2, num_cpus=1)
    free = ray.available_resources().get("CPU", 0)
    immutable(tmp_path / "state" / "jobs")
    code, message = code_of(lambda: client.create_job(spec))
    assert code == C.INTERNAL and "cannot save job 'unsaved'" in message
    assert not scorers_of("unsaved") and client.list_jobs() == []
    eventually(lambda: ray.available_resources().get("CPU", 0) >= free,
               "the scorers' CPUs came back")


def stalled_push(address: str, job_id: str, model, release: threading.Event,
                 result: dict) -> threading.Thread:
    """A push that sends one chunk, then stays silent until ``release``."""
    chunks = list(records_to_chunks(job_id, 1, 1, export_psp(model, 0.25), part_bytes=4096))

    def requests():
        yield chunks[0]
        release.wait(120)
        yield from chunks[1:]

    def run():
        stub = selector_pb2_grpc.SelectorStub(grpc.insecure_channel(address))
        try:
            stub.PushWeights(requests(), timeout=120)
            result["code"] = C.OK
        except grpc.RpcError as exc:
            result["code"] = exc.code()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_long_calls_are_capped_per_peer_and_short_calls_still_run(local_server_factory,
                                                                  small_shards,
                                                                  trained_model):
    server = local_server_factory(limits=Limits(max_streams=4, max_streams_per_peer=2))
    client = SelectorClient(server.address, retries=0)
    spec = with_resources(make_spec(small_shards, "capped"), num_scorers=1, num_cpus=0)
    client.create_job(spec)
    release = threading.Event()
    results = [{}, {}]
    threads = [stalled_push(server.address, "capped", trained_model, release, r)
               for r in results]
    eventually(lambda: server.calls.active() == 2, "two streams open")
    code, message = code_of(lambda: client.push_weights("capped", 1, 1,
                                                        export_psp(trained_model, 0.25)))
    assert code == C.RESOURCE_EXHAUSTED and "limit 2" in message
    health = health_pb2_grpc.HealthStub(grpc.insecure_channel(server.address))
    assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == \
        health_pb2.HealthCheckResponse.SERVING
    assert client.get_job("capped").spec.job_id == "capped"
    release.set()
    for thread in threads:
        thread.join()
    assert [r["code"] for r in results] == [C.OK, C.OK]
    assert server.calls.active() == 0
    assert len(client.get_selection("capped", 1, 0, 1, timeout=300).indices) == 1200


def test_forty_slow_pushes_starve_no_one(local_server_factory, small_shards, trained_model):
    """The probe's case with the default limits: 40 slow PushWeights streams from one host
    once made health, GetJob and GetSelection time out. Now that host holds at most its
    cap of threads, its further streams are refused at once (a sampler falls back instead
    of waiting), and short calls and other hosts are served."""
    server = local_server_factory()
    client = SelectorClient(server.address, retries=0)
    spec = with_resources(make_spec(small_shards, "starved"), num_scorers=1, num_cpus=0)
    client.create_job(spec)
    release = threading.Event()
    results = [{} for _ in range(40)]
    threads = [stalled_push(server.address, "starved", trained_model, release, r)
               for r in results]
    cap = server.limits.max_streams_per_peer
    eventually(lambda: server.calls.active() == cap and sum(map(len, results)) == 40 - cap,
               "the per-host cap is reached and the rest refused")
    assert {r["code"] for r in results if r} == {C.RESOURCE_EXHAUSTED}
    health = health_pb2_grpc.HealthStub(grpc.insecure_channel(server.address))
    assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == \
        health_pb2.HealthCheckResponse.SERVING
    assert client.get_job("starved").spec.job_id == "starved"
    code, _ = code_of(lambda: client.get_selection("starved", 0, 0, 1, timeout=10))
    assert code == C.RESOURCE_EXHAUSTED  # this host's cap, answered at once
    assert server.calls.active() < server.limits.max_streams  # room for other hosts
    release.set()
    for thread in threads:
        thread.join()
    assert sum(r["code"] == C.OK for r in results) == cap
    header = client.get_selection("starved", 0, 0, 1, timeout=10)  # a full epoch
    part = header.indices
    assert len(part) == 4000
    assert len(client.get_selection("starved", 1, 0, 1, timeout=300).indices) == 1200  # pushed


def test_an_idle_push_is_cancelled_and_frees_its_slot(local_server_factory, small_shards,
                                                      trained_model):
    server = local_server_factory(limits=Limits(stream_idle_timeout=1.0,
                                                max_streams_per_peer=1))
    client = SelectorClient(server.address, retries=0)
    client.create_job(with_resources(make_spec(small_shards, "idle-push"), num_scorers=1,
                                     num_cpus=0))
    release, result = threading.Event(), {}
    thread = stalled_push(server.address, "idle-push", trained_model, release, result)
    thread.join(timeout=60)
    release.set()
    thread.join()
    assert result["code"] == C.CANCELLED and server.calls.cancelled_idle == 1
    eventually(lambda: server.calls.active() == 0, "the slot is free")
    ack = client.push_weights("idle-push", 1, 1, export_psp(trained_model, 0.25))
    assert ack.round == 0
    assert len(client.get_selection("idle-push", 1, 0, 1, timeout=300).indices) == 1200


def test_a_selection_stream_whose_client_stops_reading_is_cancelled(server_factory,
                                                                     tmp_path):
    """A full epoch of 300k indices (3 chunks) to a client that reads one chunk, then
    nothing: the server's send blocks on flow control until the idle timeout."""
    labels = np.arange(300_000, dtype=np.int64) % 10
    uri = str(tmp_path / "tiny")
    images = np.zeros((300_000, 1, 28, 28), np.uint8)  # what fmnist-cnn reads
    manifest = write_shards(uri, images, labels, rows_per_shard=100_000)
    server = server_factory(limits=Limits(stream_idle_timeout=1.0))
    spec = make_spec((uri, manifest), "slow-reader").model_copy(update={
        "resources": ScorerResources(num_scorers=1, num_cpus=0)})
    SelectorClient(server.address, retries=0).create_job(spec)
    channel = grpc.insecure_channel(server.address, options=[("grpc.http2.bdp_probe", 0)])
    stub = selector_pb2_grpc.SelectorStub(channel)
    stream = stub.GetSelection(pb.GetSelectionRequest(job_id="slow-reader", epoch=0, rank=0,
                                                      world_size=1), timeout=120)
    assert next(stream).header.global_count == 300_000
    eventually(lambda: server.calls.cancelled_idle == 1, "the stalled stream was cancelled")
    eventually(lambda: server.calls.active() == 0, "its slot is free")
    with pytest.raises(grpc.RpcError) as info:
        list(stream)
    assert info.value.code() == C.CANCELLED


def test_idle_jobs_release_their_scorers_and_a_push_brings_them_back(server_factory,
                                                                     small_shards,
                                                                     trained_model):
    server = server_factory(limits=Limits(job_ttl=2.0))
    client = SelectorClient(server.address, retries=0)
    spec = make_spec(small_shards, "ttl")
    client.create_job(spec)
    assert len(scorers_of("ttl")) == 2
    eventually(lambda: not scorers_of("ttl"), "the idle job's scorers were released")
    assert client.get_job("ttl").state == JobState.IDLE
    client.push_weights("ttl", 1, 1, export_psp(trained_model, 0.25))
    header = client.get_selection("ttl", 1, 0, 1, timeout=300)
    part = header.indices
    assert header.weights_version == 1 and len(part) == 1200 and len(np.unique(part)) == 1200


def test_expired_jobs_are_deleted_with_their_state(local_server_factory, small_shards,
                                                   tmp_path):
    server = local_server_factory(limits=Limits(job_ttl=0, job_expiry=1.0))
    client = SelectorClient(server.address, retries=0)
    client.create_job(with_resources(make_spec(small_shards, "expiring"), num_scorers=1,
                                     num_cpus=0))
    eventually(lambda: client.list_jobs() == [], "the job expired")
    assert not (tmp_path / "state/jobs/expiring").exists()
    assert not server.cluster.running("expiring")  # its scorers were released
