"""Two real gloo ranks (torchrun) train through a real selector on Fashion-MNIST shards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from benchmarks.ddp_example import read_output
from dynams_service.client import SelectorClient
from dynams_service.core.job import RoundState

ROOT = Path(__file__).resolve().parents[2]
EPOCHS = 4


def torchrun_command(args: list[str], record_dir: Path | None = None) -> list[str]:
    """Two ranks of examples/train_ddp.py; with ``record_dir`` through the recording runner."""
    script = ([str(Path(__file__).with_name("recorded_train.py")), "--record-dir",
               str(record_dir)] if record_dir else [str(ROOT / "examples" / "train_ddp.py")])
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            "--nproc_per_node=2", *script, *args]


def torchrun(args: list[str], cwd: Path, record_dir: Path | None = None) -> subprocess.Popen:
    return subprocess.Popen(torchrun_command(args, record_dir), cwd=cwd,
                            env=dict(os.environ, OMP_NUM_THREADS="1"), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen, timeout: float = 400) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out
    return out


def common_args(shard_root: Path, job_id: str, **extra: str) -> list[str]:
    args = ["--shards", str(shard_root), "--epochs", str(EPOCHS), "--ratio", "0.3",
            "--job-id", job_id, "--scorers", "2"]
    for key, value in extra.items():
        args += [f"--{key.replace('_', '-')}", value]
    return args


def test_two_ranks_train_on_the_selectors_canonical_list(server_factory, shard_root,
                                                         tmp_path):
    """Under a reweighting rule (InfoBatch-style): each rank also weighs every batch's
    loss by the selection's weights, which sum to the data's size across ranks."""
    server = server_factory()
    proc = torchrun(common_args(shard_root, "ddp-job", selector=server.address,
                                staleness="sync", class_balance="global", explore="0.5",
                                reweight="inverse"), tmp_path, tmp_path / "records")
    out = finish(proc)
    summary = read_output(out)
    assert summary["fallback_epochs"] == [] and "no selection from" not in out  # no warning
    assert summary["fraction_trained"] == pytest.approx((2200 + 3 * 660) / (4 * 2200))
    rec = tmp_path / "records"
    info = [json.loads((rec / f"rank{r}.json").read_text()) for r in range(2)]
    assert info[0]["param_sha256"] == info[1]["param_sha256"]  # DDP replicas identical

    client = SelectorClient(server.address)
    job = client.get_job("ddp-job")
    pushed = {int(e): v for e, v in info[0]["pushed"].items()}
    assert sorted(pushed) == [1, 2, 3]
    assert list(job.scorers) == []  # every round selected: the scorers were released
    for r in job.rounds:
        assert r.state == RoundState.DONE
        assert r.weights_version == pushed[r.epoch]  # scored with what rank 0 pushed
    for epoch in range(EPOCHS):
        parts = [np.load(rec / f"rank{r}-epoch{epoch}.npy") for r in range(2)]
        assert len(parts[0]) == len(parts[1])
        assert not set(parts[0].tolist()) & set(parts[1].tolist())
        whole = client.get_selection("ddp-job", epoch, 0, 1)
        assert sorted(np.concatenate(parts).tolist()) == sorted(whole.indices.tolist())
        weights = [np.load(rec / f"rank{r}-epoch{epoch}-weights.npy") for r in range(2)]
        table = dict(zip(whole.indices.tolist(), (whole.weights if epoch else
                                                  np.ones(2200)).tolist(), strict=True))
        for part, w in zip(parts, weights, strict=True):  # what each step weighed by
            np.testing.assert_array_equal(w, [table[i] for i in part.tolist()])
        assert sum(table.values()) == pytest.approx(2200, rel=1e-5)
        for r in range(2):
            source = info[r]["sources"][str(epoch)]
            assert source["kind"] == ("full" if epoch == 0 else "subset")
            if epoch:
                assert source["weights_version"] == pushed[epoch]


def test_selector_killed_mid_run_falls_back_and_finishes(server_factory, shard_root, tmp_path):
    server = server_factory()
    proc = torchrun(common_args(shard_root, "doomed", selector=server.address,
                                staleness="sync", deadline="5"), tmp_path, tmp_path / "records")
    client = SelectorClient(server.address, retries=0)

    def stop_after_first_round() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                rounds = client.get_job("doomed", timeout=5).rounds
                if rounds and rounds[0].state == RoundState.DONE:
                    break
            except Exception:  # noqa: BLE001 - job not created yet
                pass
            time.sleep(0.2)
        server.stop(grace=0)

    killer = threading.Thread(target=stop_after_first_round)
    killer.start()
    out = finish(proc)
    killer.join()
    summary = read_output(out)
    assert summary["fallback_epochs"], out
    assert 0 not in summary["fallback_epochs"]
    assert "no selection from" in out  # the sampler's warning
    sizes = [e["samples"] for e in summary["epochs"]]
    assert sizes == [2200, 660, 660, 660]  # the planned sizes, fallback or not
