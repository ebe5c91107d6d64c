"""Lightning's own Trainer (2 CPU processes, DDP over gloo, its default settings) trains
through a real selector with DynaMSCallback: each rank trains exactly its part of every
epoch, OneCycleLR ends exactly at the planned steps, and a run killed mid-epoch resumes
from its checkpoint with exactly the samples of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from dynams_service.client import SelectorClient

pytest.importorskip("lightning")

SCRIPT = Path(__file__).with_name("recorded_lightning.py")
EPOCHS, EVERY = 4, 11  # steps per rank: 9 (all 2200), then 3 per epoch; saves at 11


def command(shards: Path, selector: str, job_id: str, records: Path, *extra: str) -> list[str]:
    return [sys.executable, str(SCRIPT), "--record-dir", str(records), "--selector", selector,
            "--shards", str(shards), "--epochs", str(EPOCHS), "--job-id", job_id, *extra]


def run(cmd: list[str], cwd: Path) -> str:
    out = subprocess.run(cmd, cwd=cwd, env=dict(os.environ, OMP_NUM_THREADS="1"), text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=400)
    assert out.returncode == 0, out.stdout
    return out.stdout


def trained(records: Path, rank: int, epoch: int) -> np.ndarray:
    return np.load(records / f"rank{rank}-epoch{epoch}.npy")


def wait_for_checkpoint(path: Path, proc: subprocess.Popen) -> None:
    """Until ``path`` is a whole checkpoint (Lightning writes it in place)."""
    deadline = time.monotonic() + 300
    while True:
        assert proc.poll() is None, "the run ended before the checkpoint"
        assert time.monotonic() < deadline, "no checkpoint written"
        try:
            torch.load(path, map_location="cpu", weights_only=False)
            return
        except Exception:  # noqa: BLE001 - not there yet, or half written
            time.sleep(0.1)


def test_lightning_trains_each_ranks_part_and_resumes_mid_epoch(server_factory, shard_root,
                                                                tmp_path):
    selector = server_factory().address
    reference = tmp_path / "reference"
    out = run(command(shard_root, selector, "pl-ref", reference), tmp_path)
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["fallback_epochs"] == []
    client = SelectorClient(selector)
    for epoch in range(EPOCHS):  # with Lightning's defaults, the sampler stays in place
        for rank in (0, 1):
            part = client.get_selection("pl-ref", epoch, rank, 2).indices
            assert np.array_equal(trained(reference, rank, epoch), part)
    for rank in (0, 1):  # OneCycleLR sized by sampler.total_steps: exactly its total
        info = json.loads((reference / f"rank{rank}.json").read_text())
        assert info["scheduler_steps"] == info["scheduler_total"] == info["global_step"]
        assert info["global_step"] == 9 + 3 * 3 == summary["planned_steps"]

    resumed, ckpts = tmp_path / "resumed", tmp_path / "ckpts"
    proc = subprocess.Popen(  # its own session: the kill takes every rank along
        command(shard_root, selector, "pl-run", resumed, "--ckpt-dir", str(ckpts),
                "--ckpt-every", str(EVERY)),
        cwd=tmp_path, env=dict(os.environ, OMP_NUM_THREADS="1"), stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True)
    checkpoint = ckpts / "step=11.ckpt"  # 2 of epoch 1's 3 steps done
    try:
        wait_for_checkpoint(checkpoint, proc)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["callbacks"][
        "DynaMSCallback"]
    assert (state["epoch"], state["consumed"]) == (1, 2 * 128)

    out = run(command(shard_root, selector, "pl-run", resumed, "--resume", str(checkpoint)),
              tmp_path)
    assert json.loads(out.strip().splitlines()[-1])["fallback_epochs"] == []
    for rank in (0, 1):
        assert np.array_equal(trained(resumed, rank, 1), trained(reference, rank, 1)[256:])
        for later in range(2, EPOCHS):
            assert np.array_equal(trained(resumed, rank, later), trained(reference, rank, later))
        info = json.loads((resumed / f"rank{rank}.json").read_text())
        assert info["scheduler_steps"] == info["scheduler_total"] == 18  # restored, then on
