"""Ray Train (``TorchTrainer``) training on DynaMS selections, beside the selector's scorers.

    pip install -e '.[ray-train]'
    ray start --head                                   # or `ray up deploy/cluster.yaml`
    dynams serve --ray-address auto --address 0.0.0.0:50051 &
    ray job submit --working-dir . -- python examples/train_ray.py \\
        --selector HOST:50051 --shards "$PWD/data/fashion-mnist" --workers 2

The scorers and the trainer's workers then share one cluster, side by side in the Ray
dashboard. ``DynaMSSampler`` is a ``DistributedSampler``, so ``prepare_data_loader`` keeps
it (and only moves batches to the worker's device); every batch is checked against it.
Each epoch is reported with ``ray.train.report``; the driver prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import ray
import ray.train
import ray.train.torch
import torch
from ray.train import Checkpoint, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from torch.utils.data import DataLoader

import dynams_service as dms
from dynams_service.client import (
    DynaMSSampler,
    JointPSP,
    SelectorClient,
    SelectorJob,
    WithIndices,
    psp_loss,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--selector", required=True, metavar="HOST:PORT")
    p.add_argument("--shards", type=Path, required=True,
                   help="holds train/ shards, at the same path on every node")
    p.add_argument("--job-id", default="ray-train")
    p.add_argument("--workers", type=int, default=2, help="training processes")
    p.add_argument("--gpu", action="store_true", help="one GPU per worker")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--ratio", type=float, default=0.3)
    p.add_argument("--batch-size", type=int, default=128, help="per worker")
    p.add_argument("--lr", type=float, default=0.05, help="OneCycleLR's peak")
    p.add_argument("--storage", default=None, help="RunConfig storage path")
    p.add_argument("--ray-address", default=None, help="default: the job's cluster")
    return p.parse_args(argv)


def train_loop(config: dict[str, Any]) -> None:
    """One Ray Train worker: its part of every epoch, as the selector chose it."""
    args = config["args"]
    train_set = dms.ShardDataset(str(args.shards / "train"))
    spec = dms.JobSpec(job_id=args.job_id, dataset_uri=str(args.shards / "train"),
                       epochs=args.epochs, fingerprint=train_set.manifest.fingerprint,
                       proxy=dms.ProxySpec(architecture="fmnist-cnn", width=0.25),
                       policy=dms.SelectionPolicy(ratio=args.ratio, staleness="sync"))
    job = SelectorJob.create(SelectorClient(args.selector), spec)
    sampler = DynaMSSampler(train_set, job)  # rank and world size: Ray Train's process group
    loader = ray.train.torch.prepare_data_loader(  # keeps a DistributedSampler in place
        DataLoader(WithIndices(train_set), batch_size=args.batch_size, sampler=sampler))
    torch.manual_seed(0)
    model = dms.SlimCNN(num_classes=10, in_channels=1, widths=(1.0, 0.25))
    joint = ray.train.torch.prepare_model(JointPSP(model, 0.25))
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, args.lr, total_steps=sampler.total_steps(args.batch_size))
    on_batch = config.get("on_batch")
    with sampler:
        for epoch in range(args.epochs):
            sampler.set_epoch(epoch)
            loss_sum = 0.0
            for step, (x, y, idx) in enumerate(loader):
                sampler.check_batch(idx)
                if on_batch:
                    on_batch(epoch, idx)
                loss = psp_loss(*joint(x), y, weights=sampler.weights_of(idx))
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
                loss_sum += loss.item()
                sampler.maybe_push(model, progress=(step + 1) / len(loader))
            metrics = {"epoch": epoch, "samples": len(sampler),
                       "source": str(sampler.sources[epoch].kind),
                       "train_loss": loss_sum / max(len(loader), 1),
                       "scheduler_steps": schedule.last_epoch,
                       "planned_steps": sampler.total_steps(args.batch_size),
                       "fallback_epochs": sampler.fallback_epochs}
            last = epoch == args.epochs - 1 and ray.train.get_context().get_world_rank() == 0
            with tempfile.TemporaryDirectory() as out:  # the run's result: the last model
                if last:
                    torch.save(model.state_dict(), Path(out) / "model.pt")
                ray.train.report(metrics, checkpoint=Checkpoint.from_directory(out) if last
                                 else None)


def fit(args: argparse.Namespace, on_batch=None) -> ray.train.Result:
    """Run the TorchTrainer (``on_batch(epoch, indices)``: called on every worker with the
    indices of every batch as trained)."""
    args.shards = args.shards.resolve()
    trainer = TorchTrainer(
        train_loop, train_loop_config={"args": args, "on_batch": on_batch},
        scaling_config=ScalingConfig(num_workers=args.workers, use_gpu=args.gpu),
        run_config=RunConfig(name=args.job_id, storage_path=args.storage))
    return trainer.fit()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    ray.init(address=args.ray_address)
    result = fit(args)
    print(json.dumps(result.metrics), flush=True)


if __name__ == "__main__":
    main()
