"""A 2-rank torchrun job killed mid-epoch and restarted from its checkpoint yields exactly
the indices an uninterrupted run yields from that point on (same model, same rounds)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from .test_ddp import EPOCHS, finish, torchrun, torchrun_command

BATCH = 128
EVERY = 11  # epoch 0 (all 2200 samples) is 9 steps per rank: the first save is mid-epoch 1


def run_args(shard_root: Path, tmp: Path, job_id: str, selector: str) -> list[str]:
    return ["--selector", selector, "--shards", str(shard_root), "--epochs", str(EPOCHS),
            "--ratio", "0.3", "--staleness", "sync", "--job-id", job_id, "--scorers", "1",
            "--batch-size", str(BATCH), "--checkpoint", str(tmp / "ckpt.pt"),
            "--checkpoint-every", str(EVERY)]


def records(path: Path, rank: int, epoch: int) -> np.ndarray:
    return np.load(path / "records" / f"rank{rank}-epoch{epoch}.npy")


def test_killed_mid_epoch_resumes_the_exact_sequence(server_factory, shard_root, tmp_path):
    selector = server_factory().address
    reference = tmp_path / "reference"
    reference.mkdir()
    finish(torchrun(run_args(shard_root, reference, "resume-ref", selector), cwd=tmp_path,
                    record_dir=reference / "records"))

    resumed = tmp_path / "resumed"
    resumed.mkdir()
    proc = subprocess.Popen(  # its own session: the kill takes every rank along
        torchrun_command(run_args(shard_root, resumed, "resume-run", selector),
                         resumed / "records"),
        cwd=tmp_path, env=dict(os.environ, OMP_NUM_THREADS="1"), stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    while not (resumed / "ckpt.pt").exists():
        assert proc.poll() is None, "the run ended before its first checkpoint"
        assert time.monotonic() < deadline, "no checkpoint written"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    checkpoint = torch.load(resumed / "ckpt.pt", map_location="cpu", weights_only=True)
    epoch, consumed = checkpoint["sampler"]["epoch"], checkpoint["sampler"]["consumed"]
    assert 0 < consumed < len(records(reference, 0, epoch)), (epoch, consumed)  # mid-epoch

    out = finish(torchrun([*run_args(shard_root, resumed, "resume-run", selector), "--resume"],
                          cwd=tmp_path, record_dir=resumed / "records"))
    assert f"resumed at epoch {epoch}, {consumed} samples in" in out
    for rank in (0, 1):
        assert np.array_equal(records(resumed, rank, epoch),
                              records(reference, rank, epoch)[consumed:])
        for later in range(epoch + 1, EPOCHS):
            assert np.array_equal(records(resumed, rank, later), records(reference, rank, later))
    for run in (reference, resumed):  # every epoch came from the selector, none fell back
        for rank in (0, 1):
            assert json.loads((run / "records" / f"rank{rank}.json").read_text())[
                "fallback_epochs"] == []


def test_state_dict_resumes_mid_epoch_in_process(server_factory, small_shards, trained_model,
                                                 caplog, monkeypatch):
    """The sampler alone: a second sampler loaded from the first one's state yields the
    rest of the epoch and then the same next epochs; wrong jobs and worlds are refused."""
    from dynams_service import JobSpec, ProxySpec, ScorerResources, SelectionPolicy
    from dynams_service.client import DynaMSSampler, SelectorClient, SelectorJob

    uri, manifest = small_shards
    spec = JobSpec(job_id="resume-unit", dataset_uri=uri, fingerprint=manifest.fingerprint,
                   proxy=ProxySpec(architecture="fmnist-cnn", width=0.25),
                   policy=SelectionPolicy(ratio=0.3, warmup_epochs=1, seed=5,
                                          staleness="sync"), epochs=3,
                   resources=ScorerResources(num_scorers=1, num_cpus=1))
    client = SelectorClient(server_factory().address)
    job = SelectorJob.create(client, spec)

    def sampler() -> DynaMSSampler:  # rank 0: the rank that pushes
        return DynaMSSampler(4000, job, rank=0, world_size=2)

    first, fresh = sampler(), sampler()
    fresh.set_epoch(0)
    whole = list(fresh)  # an uninterrupted epoch 0 on this rank
    first.set_epoch(0)
    it = iter(first)
    head = [next(it) for _ in range(700)]
    state = first.state_dict()
    assert state == {"job_id": "resume-unit", "world_size": 2, "epoch": 0, "consumed": 700,
                     "pushed": {}}
    assert head + list(it) == whole
    first.push(trained_model)  # weights for the round of epoch 1
    first.set_epoch(1)
    epoch1 = list(first)
    assert first.sources[1].kind == "subset" and first.fallback_epochs == []

    second = sampler()
    second.load_state_dict(state)
    second.set_epoch(0)
    assert len(second) == 2000  # DistributedSampler's count: the epoch's, as Lightning expects
    assert list(second) == whole[700:]
    second.set_epoch(0)
    assert len(list(second)) == 2000  # the skip applies once, to the resumed epoch

    third = sampler()
    third.load_state_dict(first.state_dict(consumed=100))
    assert third.pushed == first.pushed and 1 in third.pushed  # not pushed twice
    third.set_epoch(1)
    assert list(third) == epoch1[100:] and third.sources[1].kind == "subset"
    assert third.push_due(1.0) and third.plan().next_select_epoch(third.epoch) == 2

    with pytest.raises(ValueError, match="world_size 2"):
        DynaMSSampler(4000, job, rank=0, world_size=1, deadline=5).load_state_dict(
            state)
    with pytest.raises(ValueError, match="job 'other'"):
        second.load_state_dict({**state, "job_id": "other"})
    with pytest.raises(ValueError, match="consumed must be in"):
        first.state_dict(consumed=10_000)
    for s in (first, fresh, second, third):
        s.close()

    # Creating it again replays the saved rounds, and says so; a relative dataset path is
    # made absolute on the trainer's side, so it names the same dataset (the same spec).
    monkeypatch.chdir(Path(uri).parent)
    relative = spec.model_copy(update={"dataset_uri": Path(uri).name})
    with caplog.at_level("WARNING", logger="dynams_service.client.job"):
        again = SelectorJob.create(client, relative)
    assert again.spec.dataset_uri == str(Path(uri).resolve())
    assert "1 of 2 rounds saved: its saved selections are replayed" in caplog.text
