"""EpochFetcher on its own: one rank's answers from a real gRPC selector (in-process
scorers, no Ray), its fallbacks and its typed failures."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from dynams_service.client import SelectorClient, SelectorJob
from dynams_service.client.epochs import EpochFetcher
from dynams_service.client.errors import RoundFailedError
from dynams_service.client.push import PushScheduler
from dynams_service.core.job import SelectionKind
from dynams_service.core.selection.partition import epoch_order, rank_part, uniform_subset
from tests.conftest import local_server
from tests.service.conftest import make_spec


@pytest.fixture()
def served(tmp_path, small_shards):
    """A selector on 127.0.0.1 with in-process scorers, and one job's fetcher for rank 1
    of 2 (its pusher is rank 0's, so it sends what the test pushes)."""
    server = local_server(tmp_path / "state")
    cluster = server.cluster
    client = SelectorClient(server.address, timeout=10, retries=1)
    spec = make_spec(small_shards)
    job = SelectorJob.create(client, spec)
    pusher = PushScheduler(job, sender=True, send_timeout=30)
    fetcher = EpochFetcher(job, spec.plan(), rank=1, world_size=2, drop_last=False, seed=3,
                           deadline=30, pusher=pusher)
    yield server, cluster, fetcher, pusher
    fetcher.close()
    pusher.close(timeout=5)
    client.close()
    server.stop(grace=0)


def test_answers_are_this_ranks_part_of_the_selectors_epoch(served, trained_model):
    server, cluster, fetcher, pusher = served
    assert np.array_equal(fetcher.fetch(0).result(60).indices,
                          rank_part(epoch_order(np.arange(4000), 7, 0), 1, 2, False))
    assert fetcher.sources[0].kind is SelectionKind.FULL
    pending = fetcher.fetch(1)  # asked before the push: the selector waits for it
    pusher.push(1, trained_model, version=5)
    indices = pending.result(60).indices
    answer = server.coordinator.get_selection("fmnist-small", 1, 1, 2, False, 5)
    assert np.array_equal(indices, answer.indices) and len(indices) == 600
    source = fetcher.sources[1]
    assert (source.kind, source.round, source.weights_version) == (SelectionKind.SUBSET, 0, 5)
    assert fetcher.fallback_epochs == []


def test_an_unreachable_selector_gives_the_seeded_uniform_subset(served, caplog):
    server, cluster, fetcher, pusher = served
    server.stop(grace=0)
    with caplog.at_level(logging.WARNING):
        first = fetcher.fetch(2).result(120).indices
        again = fetcher.fetch(3).result(120).indices  # probed, not retried
    expected = rank_part(epoch_order(uniform_subset(4000, 1200, 3, 2), 3, 2), 1, 2, False)
    assert np.array_equal(first, expected) and len(again) == 600
    assert fetcher.fallback_epochs == [2, 3]
    assert fetcher.sources[3].kind is SelectionKind.FALLBACK
    assert sum("no selection from" in r.message for r in caplog.records) == 1  # warned once
    # A full-data epoch loses nothing: it trains on everything, as planned.
    assert np.array_equal(fetcher.fetch(0).result(120).indices,
                          rank_part(epoch_order(np.arange(4000), 3, 0), 1, 2, False))
    assert fetcher.sources[0].kind is SelectionKind.FULL and 0 not in fetcher.fallback_epochs


def test_a_failed_round_raises_unless_told_to_fall_back(served, trained_model):
    server, cluster, fetcher, pusher = served
    cluster.failures = 1
    pusher.push(1, trained_model)
    with pytest.raises(RoundFailedError, match="epoch 1"):
        fetcher.wait(1)  # and forgets the failed answer, so the next push retries it
    fetcher.fallback_on_failed_round = True
    cluster.failures = 1
    pusher.push(1, trained_model)  # the retry fails too
    assert len(fetcher.fetch(1).result(60).indices) == 600
    assert fetcher.fallback_epochs == [1]
    assert fetcher.sources[1].kind is SelectionKind.FALLBACK


def test_a_selector_that_lost_the_job_gets_it_again(served, trained_model, tmp_path):
    server, cluster, fetcher, pusher = served
    assert server.coordinator.delete_job("fmnist-small")
    indices = fetcher.fetch(0).result(60).indices  # NOT_FOUND: created again, asked again
    assert len(indices) == 2000 and fetcher.fallback_epochs == []
    assert server.coordinator.get_job("fmnist-small").summary.rounds_done == 0
