"""Undecodable requests: INVALID_ARGUMENT on every method, no memory kept, one log line
per peer per minute (NOTE [ decoding requests ourselves ] in service/decoding.py)."""

from __future__ import annotations

import statistics

import grpc
import pytest

from dynams_service.client import SelectorClient
from dynams_service.service.decoding import PeerLogLimiter

from .conftest import Selector
from .rawprobe import METHODS, fuzz

RSS_BOUND_PER_10K = 2 * 2**20  # the leak this guards was ~170 MB per 10,000 messages
BURSTS, BURST = 20, 500


@pytest.fixture()
def selector(ray_cluster, tmp_path):
    server = Selector(tmp_path / "state")
    yield server
    server.stop()


def test_undecodable_requests_are_invalid_argument_and_cost_no_memory(selector):
    channel = grpc.insecure_channel(selector.address)
    # Measured burst by burst: a leak grows every burst, while the one-time steps of the
    # process's own background threads (≈2 MiB, once, whether or not requests come) land
    # in one burst at most, so the median burst is what the requests cost.
    fuzz(channel, 1000, seed=1)
    growth, counts = [], {}
    for burst in range(BURSTS):
        before = selector.rss()
        for code, n in fuzz(channel, BURST, seed=2 + burst).items():
            counts[code] = counts.get(code, 0) + n
        growth.append(selector.rss() - before)
    per_10k = statistics.median(growth) * 10_000 / BURST
    assert counts == {grpc.StatusCode.INVALID_ARGUMENT: BURSTS * BURST}
    print(f"\n{1000 + BURSTS * BURST} malformed requests over {len(METHODS)} methods: all "
          f"INVALID_ARGUMENT; server RSS {per_10k / 2**20:+.2f} MiB per 10k (median burst), "
          f"{sum(growth) / 2**20:+.2f} MiB over all {BURSTS * BURST}")
    assert per_10k < RSS_BOUND_PER_10K
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
