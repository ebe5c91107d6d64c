"""Ray Train's own TorchTrainer (2 CPU workers over gloo) on the Ray cluster the selector's
scorers run on: ``prepare_data_loader`` keeps the sampler, and each worker trains exactly
its part of every epoch; OneCycleLR ends exactly at the planned steps."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from dynams_service.client import SelectorClient

pytest.importorskip("ray.train")

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "train_ray.py"
EPOCHS = 3


def example_module():
    """examples/train_ray.py, shipped to the workers by value (it is not installed)."""
    import ray.cloudpickle

    spec = importlib.util.spec_from_file_location("train_ray", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    ray.cloudpickle.register_pickle_by_value(module)
    return module


def test_torch_trainer_workers_train_their_parts(server_factory, shard_root, tmp_path):
    selector = server_factory().address
    example, records = example_module(), tmp_path / "records"
    records.mkdir()

    def record(epoch, idx) -> None:  # runs on the workers (same machine)
        import ray.train

        rank = ray.train.get_context().get_world_rank()
        with open(records / f"rank{rank}-epoch{epoch}.txt", "a") as f:
            f.write("".join(f"{i}\n" for i in idx.tolist()))

    args = example.parse_args(["--selector", selector, "--shards", str(shard_root),
                               "--epochs", str(EPOCHS), "--job-id", "ray-train",
                               "--workers", "2", "--storage", str(tmp_path / "runs")])
    result = example.fit(args, on_batch=record)
    assert result.error is None
    metrics = result.metrics
    assert metrics["epoch"] == EPOCHS - 1 and metrics["fallback_epochs"] == []
    assert metrics["scheduler_steps"] == metrics["planned_steps"] == 9 + 3 + 3
    assert (Path(result.checkpoint.path) / "model.pt").exists()
    client = SelectorClient(selector)
    for epoch in range(EPOCHS):
        for rank in (0, 1):
            seen = np.loadtxt(records / f"rank{rank}-epoch{epoch}.txt", dtype=np.int64)
            part = client.get_selection("ray-train", epoch, rank, 2).indices
            assert np.array_equal(seen, part)
