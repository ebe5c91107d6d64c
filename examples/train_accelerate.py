"""Hugging Face Accelerate training on DynaMS selections.

    pip install -e '.[accelerate]'
    dynams serve --address 127.0.0.1:50051 &
    accelerate launch --cpu --num_processes 2 examples/train_accelerate.py \\
        --selector 127.0.0.1:50051 --shards data/fashion-mnist --epochs 6 --ratio 0.3

``accelerator.prepare`` deals a loader's batches across processes itself, so the sampler
is built with ``shard=False``: every process iterates the whole selection, in the same
order, and trains the batches Accelerate deals it. Every batch is checked against the
sampler (``check_batch``). The LR schedule is sized by ``sampler.total_steps`` and stepped
by hand: a prepared scheduler would step once per process on every optimizer step.
Process 0 prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from accelerate import Accelerator
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
    p.add_argument("--shards", type=Path, required=True, help="holds train/ shards")
    p.add_argument("--job-id", default="accelerate")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--ratio", type=float, default=0.3)
    p.add_argument("--batch-size", type=int, default=128, help="per process")
    p.add_argument("--lr", type=float, default=0.05, help="OneCycleLR's peak")
    p.add_argument("--precision", default="no", choices=["no", "bf16", "fp16"],
                   help="Accelerate's mixed precision (bf16 runs on CPU)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None, on_batch=None) -> None:
    """``on_batch(epoch, indices)``: called with every batch's indices as trained."""
    args = parse_args(argv)
    accelerator = Accelerator(cpu=not torch.cuda.is_available(),
                              mixed_precision=args.precision)
    torch.manual_seed(0)
    train_set = dms.ShardDataset(str(args.shards / "train"))
    spec = dms.JobSpec(job_id=args.job_id, dataset_uri=str((args.shards / "train").resolve()),
                       epochs=args.epochs, fingerprint=train_set.manifest.fingerprint,
                       proxy=dms.ProxySpec(architecture="fmnist-cnn", width=0.25),
                       policy=dms.SelectionPolicy(ratio=args.ratio, staleness="sync"))
    job = SelectorJob.create(SelectorClient(args.selector), spec)
    # shard=False: the whole selection on every process; Accelerate deals the batches.
    sampler = DynaMSSampler(train_set, job, shard=False)
    loader = DataLoader(WithIndices(train_set), batch_size=args.batch_size, sampler=sampler)

    model = dms.SlimCNN(num_classes=10, in_channels=1, widths=(1.0, 0.25))
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    joint, optimizer, loader = accelerator.prepare(JointPSP(model, 0.25), optimizer, loader)
    schedule = torch.optim.lr_scheduler.OneCycleLR(  # not prepared: see the docstring
        optimizer.optimizer, args.lr, total_steps=sampler.total_steps(args.batch_size))

    with sampler:
        for epoch in range(args.epochs):
            loader.set_epoch(epoch)  # sets the sampler's epoch
            for step, (x, y, idx) in enumerate(loader):
                sampler.check_batch(idx)  # the batch Accelerate deals this process
                if on_batch:
                    on_batch(epoch, idx)
                loss = psp_loss(*joint(x), y, weights=sampler.weights_of(idx))
                optimizer.zero_grad()
                accelerator.backward(loss)
                optimizer.step()
                schedule.step()
                sampler.maybe_push(accelerator.unwrap_model(joint).model,
                                   progress=(step + 1) / len(loader))
    if accelerator.is_main_process:
        print(json.dumps({"fraction_trained": sampler.plan().fraction_trained,
                          "fallback_epochs": sampler.fallback_epochs,
                          "scheduler_steps": schedule.last_epoch,
                          "planned_steps": sampler.total_steps(args.batch_size)}), flush=True)
    accelerator.end_training()


if __name__ == "__main__":
    main()
