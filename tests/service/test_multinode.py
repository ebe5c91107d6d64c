"""Scorers on a real multi-node Ray cluster (several raylets on this machine).

The pytest session already holds a Ray session, so the cluster runs in a subprocess
(``multinode_check.py``) that prints JSON; this file asserts on it and recomputes the
single-node answer with the core, in this process, from the weights the subprocess pushed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dynams_service import score, select
from dynams_service.core.data.shards import decode_samples, read_shards
from dynams_service.core.models.proxy import TensorRecord, build_proxy

CHECK = Path(__file__).with_name("multinode_check.py")
ROWS_PER_NODE = 2000  # the 4 small shards of 1000 rows, two per scorer


@pytest.fixture(scope="module")
def multinode(small_shards, tmp_path_factory) -> tuple[dict, Path]:
    """Run the check once: jobs with 1 and 2 scorers on 2 worker raylets, plus the GPU check."""
    uri, _ = small_shards
    out = tmp_path_factory.mktemp("multinode")
    proc = subprocess.run(
        [sys.executable, str(CHECK), "--dataset", uri, "--out", str(out), "--nodes", "2",
         "--scorers", "1,2", "--rounds", "1", "--gpu-check"],
        capture_output=True, text=True, timeout=900, check=False,
        env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"})
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-8000:]
    return json.loads((out / "result.json").read_text()), out


def _in_process_selection(small_shards, weights: Path) -> np.ndarray:
    """The single-process answer: the core scores every row with the pushed weights."""
    uri, manifest = small_shards
    with np.load(weights) as arrays:
        records = [TensorRecord.from_tensor(name, torch.from_numpy(arrays[name]))
                   for name in arrays.files]
    proxy = build_proxy("fmnist-cnn", 0.25, records)
    rows = read_shards(uri, manifest=manifest)
    margins = score(proxy, decode_samples(rows.samples, manifest), batch_size=256)
    return select(margins, rows.labels, ratio=0.3, per_class=True)


@pytest.mark.slow
def test_scorers_spread_over_nodes_and_read_only_their_shards(multinode):
    result, _ = multinode
    nodes = result["nodes"]
    workers = {nid for nid, n in nodes.items() if not n["is_head"]}
    assert len(nodes) == 3 and len(workers) == 2
    assert {nodes[n]["resource"] for n in workers} == {"dynams-node-0", "dynams-node-1"}

    spread = result["jobs"]["2"]["scorers"]
    placed = [s["state_api_node_id"] for s in spread]
    # Ray's state API and the job's own status agree, and SPREAD used both nodes even
    # though each node has room (2 CPUs) for both scorers.
    assert placed == [s["node_id"] for s in spread]
    assert set(placed) == workers
    for scorer in spread:
        assert scorer["device"] == "cpu"
        assert scorer["rows"] == ROWS_PER_NODE
        assert scorer["input_bytes"] == 0  # rows stream; the cache fills in the first round
        assert scorer["rss_bytes"] > scorer["input_bytes"]
    single = result["jobs"]["1"]["scorers"]
    assert len(single) == 1 and single[0]["rows"] == 2 * ROWS_PER_NODE
    assert single[0]["state_api_node_id"] in workers  # never the 0-CPU head
    assert result["jobs"]["2"]["dashboard_url"].startswith("http://127.0.0.1:")


@pytest.mark.slow
def test_spread_round_equals_the_single_node_result(multinode, small_shards):
    result, out = multinode
    one = np.load(out / "indices-k1.npy")
    two = np.load(out / "indices-k2.npy")
    assert result["jobs"]["1"]["selected"] == result["jobs"]["2"]["selected"] == 1200
    assert np.array_equal(two, one)
    assert np.array_equal(two, _in_process_selection(small_shards, out / "weights.npz"))


@pytest.mark.slow
def test_gpu_scorers_get_gpus_and_never_fall_back_to_cpu_silently(multinode):
    gpu = multinode[0]["gpu_check"]
    gpu_nodes = {nid for nid, n in multinode[0]["nodes"].items() if n["gpus"] >= 1}
    assert not gpu["created"] and gpu["code"] == "INTERNAL"
    assert "torch sees no CUDA device" in gpu["details"]
    assert "num_gpus=0" in gpu["details"]  # the message says how to ask for CPU
    started = [a for a in gpu["actors"] if a["node_id"]]
    assert started and all(a["node_id"] in gpu_nodes for a in started)
    assert all(a["state"] == "DEAD" for a in gpu["actors"])
