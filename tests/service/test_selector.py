"""The selector end to end: real Ray scorers, real gRPC, real Fashion-MNIST shards."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from dynams_service import score, select
from dynams_service.client import Reason, SelectorClient, SelectorError, Status
from dynams_service.core.data.shards import decode_samples, read_shards
from dynams_service.core.job import RoundState, SelectionKind
from dynams_service.core.models.proxy import build_proxy, export_psp
from dynams_service.core.selection.partition import epoch_order

from .conftest import canonical_from_parts, gather, make_spec


def expected_selection(small_shards, model, ratio=0.3, batch_size=256) -> np.ndarray:
    """What the core computes in-process for the same data, weights and batch size."""
    uri, manifest = small_shards
    rows = read_shards(uri, manifest=manifest)
    proxy = build_proxy("fmnist-cnn", 0.25, export_psp(model, 0.25))
    margins = score(proxy, decode_samples(rows.samples, manifest), batch_size=batch_size)
    return select(margins, rows.labels, ratio=ratio, per_class=True)


def start_job(server, small_shards, trained_model, job_id: str = "fmnist-small"):
    """A job on ``server`` with round 0's weights pushed (version 11)."""
    client = SelectorClient(server.address)
    spec = make_spec(small_shards, job_id)
    job = client.create_job(spec)
    ack = client.push_weights(spec.job_id, epoch=1, version=11,
                              records=export_psp(trained_model, 0.25))
    return server, client, spec, job, ack


@pytest.fixture()
def job_with_round(server_factory, small_shards, trained_model):
    """A job of its own, for the tests that push more or restart the server."""
    return start_job(server_factory(), small_shards, trained_model)


@pytest.fixture(scope="module")
def shared_round(ray_cluster, tmp_path_factory, small_shards, trained_model):
    """One server and job shared by the tests that only read round 0 (or push it again,
    which changes nothing): each job costs two scorer processes."""
    from dynams_service.service.server import SelectorServer

    server = SelectorServer("127.0.0.1:0", state_dir=tmp_path_factory.mktemp("state")).start()
    try:
        yield start_job(server, small_shards, trained_model, "fmnist-shared")
    finally:
        server.stop(grace=0)


def test_round_equals_the_in_process_core(shared_round, small_shards, trained_model):
    server, client, spec, job, ack = shared_round
    assert list(job.epoch_sizes) == [4000, 1200, 1200, 1200]
    assert list(job.scorers) == ["dynams:fmnist-shared:scorer:0",
                                 "dynams:fmnist-shared:scorer:1"]
    assert ack.round == 0 and not ack.already_done and ack.bytes_received > 0
    expected = expected_selection(small_shards, trained_model)

    answers = gather(client, spec.job_id, epoch=1, world_size=2)
    headers, parts = zip(*answers, strict=True)
    assert all(h.kind == SelectionKind.SUBSET and h.weights_version == 11 for h in headers)
    assert all(h.global_count == 1200 for h in headers)
    assert [len(p) for p in parts] == [600, 600]
    assert not set(parts[0]) & set(parts[1])
    canonical = canonical_from_parts(list(parts), 1200)
    assert np.array_equal(np.sort(canonical), expected)
    assert np.array_equal(canonical, epoch_order(expected, seed=7, epoch=1))

    status = client.get_job(spec.job_id)
    assert status.rounds[0].state == RoundState.DONE and status.rounds[0].selected == 1200


@pytest.mark.parametrize(("world_size", "drop_last"), [(7, False), (7, True), (1, False)])
def test_rank_parts_follow_distributed_sampler(shared_round, world_size, drop_last):
    _, client, spec, _, _ = shared_round
    answers = gather(client, spec.job_id, 1, world_size, drop_last)
    lengths = {len(part) for _, part in answers}
    assert len(lengths) == 1
    per_rank = lengths.pop()
    assert per_rank == (1200 // world_size if drop_last else -(-1200 // world_size))
    flat = np.concatenate([part for _, part in answers])
    unique = len(np.unique(flat))
    assert unique == min(len(flat), 1200)


def test_full_epochs_need_no_weights_and_unpushed_rounds_say_so(shared_round):
    _, client, spec, _, _ = shared_round
    header = client.get_selection(spec.job_id, 0, 0, 1)
    part = header.indices
    assert header.kind == SelectionKind.FULL and header.round == -1
    assert np.array_equal(np.sort(part), np.arange(4000))
    with pytest.raises(SelectorError) as info:
        client.get_selection(spec.job_id, 2, 0, 1, timeout=2.0)  # waits for weights
    assert info.value.status == Status.FAILED_PRECONDITION
    assert "no weights pushed for round 1 (epoch 2) within 1.8s" in info.value.details
    assert info.value.reason == Reason.WEIGHTS_NOT_PUSHED  # what clients switch on


def test_a_rank_waits_for_the_weights_in_one_call(job_with_round, trained_model):
    """GetSelection before the push waits on the selector for the weights and the
    scoring: the answer arrives once rank 0 pushes, without polling."""
    _, client, spec, _, _ = job_with_round
    answer: list = []
    waiting = threading.Thread(target=lambda: answer.append(
        client.get_selection(spec.job_id, 2, 1, 2, timeout=120)))
    waiting.start()
    time.sleep(1.0)
    assert waiting.is_alive() and not answer  # nothing pushed yet: still waiting
    client.push_weights(spec.job_id, epoch=2, version=5, records=export_psp(trained_model,
                                                                            0.25))
    waiting.join(timeout=120)
    assert answer and answer[0].kind == SelectionKind.SUBSET and answer[0].round == 1
    assert answer[0].weights_version == 5


def test_pushing_again_changes_nothing(shared_round, trained_model):
    _, client, spec, _, _ = shared_round
    before = client.get_selection(spec.job_id, 1, 0, 1, timeout=120).indices
    model = trained_model
    ack = client.push_weights(spec.job_id, epoch=1, version=12, records=export_psp(model, 0.25))
    assert ack.already_done
    header = client.get_selection(spec.job_id, 1, 0, 1)
    after = header.indices
    assert header.weights_version == 11 and np.array_equal(before, after)


def test_restart_serves_the_same_answers(server_factory, job_with_round, tmp_path):
    server, client, spec, _, _ = job_with_round
    before = gather(client, spec.job_id, 1, world_size=3)
    server.stop(grace=0)
    restarted = server_factory(state_dir=tmp_path / "state")
    with SelectorClient(restarted.address) as again:
        after = gather(again, spec.job_id, 1, world_size=3)
        for (h1, p1), (h2, p2) in zip(before, after, strict=True):
            assert h1 == h2 and np.array_equal(p1, p2)
        assert again.get_job(spec.job_id).rounds[0].state == RoundState.DONE
        # The identical spec is still accepted; a changed one is not.
        again.create_job(spec)
        with pytest.raises(SelectorError) as info:
            again.create_job(spec.model_copy(update={"epochs": 9}))
        assert info.value.status == Status.ALREADY_EXISTS
        assert "(it differs in epochs)" in info.value.details
        assert f"`dynams job delete {spec.job_id}`" in info.value.details
