"""Monitoring: per-job metrics read back from Ray's metrics agent, and ``dynams status``."""

from __future__ import annotations

import time
import urllib.request

import pytest
import ray
from prometheus_client.parser import text_string_to_metric_families

from dynams_service.cli import main as dynams_main
from dynams_service.client import SelectorClient
from dynams_service.core.models.proxy import export_psp

from .conftest import make_spec

VERSION = 5
DASHBOARD = "http://127.0.0.1:8265"
# Every series the round test below reads back from Ray's metrics agents. The docs' PromQL
# and deploy/grafana/dynams-dashboard.json may query only these (tests/deploy checks it).
SERIES = frozenset({
    "ray_dynams_samples_scored_total", "ray_dynams_scoring_seconds_total",
    "ray_dynams_round_latency_seconds_bucket", "ray_dynams_round_latency_seconds_count",
    "ray_dynams_round_latency_seconds_sum", "ray_dynams_weight_pushes_total",
    "ray_dynams_bytes_pushed_total", "ray_dynams_weights_version",
    "ray_dynams_selections_served_total"})


def scrape(job: str) -> dict[str, float]:
    """Every ``ray_dynams_*`` sample with ``job=<job>`` from each node's Prometheus endpoint."""
    found: dict[str, float] = {}
    for node in ray.nodes():
        if not node["Alive"]:
            continue
        url = f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name.startswith("ray_dynams_") and sample.labels.get("job") == job:
                    key = sample.name + (f"{{le={sample.labels['le']}}}"
                                         if "le" in sample.labels else "")
                    found[key] = found.get(key, 0.0) + sample.value
    return found


@pytest.fixture()
def finished_round(request, server_factory, small_shards, trained_model):
    """A job (its id from the test's name) whose first round was scored and served once."""
    job_id = request.node.name.removeprefix("test_").replace("_", "-")[:40]
    server = server_factory(dashboard_url=DASHBOARD)
    client = SelectorClient(server.address)
    client.create_job(make_spec(small_shards, job_id=job_id))
    ack = client.push_weights(job_id, epoch=1, version=VERSION,
                              records=export_psp(trained_model, 0.25))
    header = client.get_selection(job_id, 1, 0, 1, timeout=120)
    _ = header.indices
    assert header.weights_version == VERSION
    yield server, client, job_id, ack
    client.close()


def test_round_metrics_reach_prometheus_with_the_job_label(finished_round):
    _, _, job, ack = finished_round
    def names(found: dict[str, float]) -> set[str]:
        return {key.split("{")[0] for key in found}

    deadline = time.monotonic() + 120  # Ray exports metrics every few seconds
    found = scrape(job)
    while not names(found) >= SERIES and time.monotonic() < deadline:
        time.sleep(2)
        found = scrape(job)
    assert names(found) >= SERIES, sorted(found)
    assert found["ray_dynams_samples_scored_total"] == 4000
    assert found["ray_dynams_scoring_seconds_total"] > 0
    assert found["ray_dynams_round_latency_seconds_count"] == 1
    assert found["ray_dynams_round_latency_seconds_sum"] > 0
    assert found["ray_dynams_round_latency_seconds_bucket{le=+Inf}"] == 1
    assert found["ray_dynams_weight_pushes_total"] == 1
    assert found["ray_dynams_bytes_pushed_total"] == ack.bytes_received > 0
    assert found["ray_dynams_weights_version"] == VERSION
    assert found["ray_dynams_selections_served_total"] >= 1
    assert not scrape("no-such-job")


def test_status_prints_jobs_rounds_placement_and_dashboard(finished_round, capsys):
    server, client, job_id, _ = finished_round
    job = client.get_job(job_id)
    assert dynams_main(["status", "--address", server.address]) == 0
    text = capsys.readouterr().out
    assert f"selector:       {server.address}" in text
    assert f"Ray dashboard:  {DASHBOARD}" in text
    assert f"job {job_id}" in text
    assert "round 0  epoch 1  done" in text and f"weights v{VERSION}" in text
    assert "selected 1200" in text
    for scorer in job.scorer_status:
        assert scorer.name in text and scorer.node_id in text

    assert dynams_main(["status", "--address", server.address, "--job", job_id]) == 0
    assert f"job {job_id}" in capsys.readouterr().out
    assert dynams_main(["status", "--address", server.address, "--job", "nope"]) == 1
    assert "NOT_FOUND" in capsys.readouterr().err
