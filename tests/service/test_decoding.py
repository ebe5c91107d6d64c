"""Undecodable requests: INVALID_ARGUMENT on every method, no memory kept, one log line
per peer per minute (NOTE [ decoding requests ourselves ] in service/decoding.py)."""

from __future__ import annotations

import grpc
import pytest

from dynams_service.client import SelectorClient
from dynams_service.service.decoding import PeerLogLimiter

from .conftest import Selector
from .rawprobe import METHODS, fuzz

RSS_BOUND_PER_5K = 4 * 2**20  # the leak this guards was ~80 MB per 5,000 messages


@pytest.fixture()
def selector(ray_cluster, tmp_path):
    server = Selector(tmp_path / "state")
    yield server
    server.stop()


def test_undecodable_requests_are_invalid_argument_and_cost_no_memory(selector):
    channel = grpc.insecure_channel(selector.address)
    warmup = fuzz(channel, 1000, seed=1)
    before = selector.rss()
    counts = fuzz(channel, 5000, seed=2)
    growth = selector.rss() - before
    assert warmup == {grpc.StatusCode.INVALID_ARGUMENT: 1000}
    assert counts == {grpc.StatusCode.INVALID_ARGUMENT: 5000}
    print(f"\n6000 malformed requests over {len(METHODS)} methods: all INVALID_ARGUMENT; "
          f"server RSS {growth / 2**20:+.2f} MiB over the last 5000")
    assert growth < RSS_BOUND_PER_5K
    # The server still works, and logged one bounded line for this peer, no traceback.
    with SelectorClient(selector.address, retries=0) as client:
        assert client.list_jobs() == []
    selector.stop()
    text = "".join(selector.lines)
    assert text.count("undecodable request") == 1, text[-3000:]
    assert "Traceback" not in text and "deserializing" not in text


def test_one_line_per_peer_per_interval_and_bounded_peers(caplog):
    limiter = PeerLogLimiter(interval=3600, max_peers=3)
    assert limiter.warn("ipv4:10.0.0.1", "bad")
    assert not limiter.warn("ipv4:10.0.0.1", "bad")
    assert limiter.warn("ipv4:10.0.0.2", "bad")
    for i in range(10):
        limiter.warn(f"ipv4:10.0.1.{i}", "x" * 10_000)
    assert len(limiter._seen) == 3
    assert all(len(r.getMessage()) < 400 for r in caplog.records)
