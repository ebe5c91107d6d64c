"""Accelerate's own launcher and ``prepare`` (2 CPU processes over gloo) train through a
real selector with a ``shard=False`` sampler: every process iterates the whole selection
and trains the batches Accelerate deals it: together every selected sample, once, but
for Accelerate's padding of a short last batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dynams_service.client import SelectorClient

pytest.importorskip("accelerate")

SCRIPT = Path(__file__).with_name("recorded_accelerate.py")
EPOCHS, BATCH = 3, 128


def test_accelerate_deals_the_whole_selection_across_processes(server_factory, shard_root,
                                                               tmp_path):
    selector = server_factory().address
    records = tmp_path / "records"
    # On a machine without GPUs, --multi_gpu is what starts several processes (through
    # torchrun); the script's Accelerator then runs them on CPU over gloo.
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
           "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "--main_process_port", "0", str(SCRIPT),
           "--record-dir", str(records), "--selector", selector, "--shards", str(shard_root),
           "--epochs", str(EPOCHS), "--job-id", "acc", "--batch-size", str(BATCH)]
    out = subprocess.run(cmd, cwd=tmp_path, env=dict(os.environ, OMP_NUM_THREADS="1"),
                         text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         timeout=400)
    assert out.returncode == 0, out.stdout
    summary = json.loads(next(line for line in out.stdout.splitlines()
                              if line.startswith('{"fraction_trained"')))
    assert summary["fallback_epochs"] == []
    # 2200 samples: 18 batches, 9 per process; then 660: 6 batches, 3 each.
    assert summary["scheduler_steps"] == summary["planned_steps"] == 9 + 3 + 3
    client = SelectorClient(selector)
    for rank in (0, 1):
        assert json.loads((records / f"rank{rank}.json").read_text())["world"] == 2
    for epoch in range(EPOCHS):
        whole = client.get_selection("acc", epoch, 0, 1).indices
        seen = [np.load(records / f"rank{r}-epoch{epoch}.npy") for r in (0, 1)]
        assert set(np.concatenate(seen).tolist()) == set(whole.tolist())
        for rank in (0, 1):  # Accelerate's deal: batches rank, rank + 2, ...
            dealt = np.concatenate([whole[b:b + BATCH]
                                    for b in range(rank * BATCH, len(whole), 2 * BATCH)])
            assert np.array_equal(seen[rank][:len(dealt)], dealt)
            # even_batches: a short last batch is filled from the list's head
            padding = seen[rank][len(dealt):]
            assert np.array_equal(padding, whole[:len(padding)])
            assert len(seen[rank]) == -(-len(whole) // (2 * BATCH)) * BATCH
