"""DDP training on Fashion-MNIST shards with DynaMS data selection through the selector.

    dynams serve --address 127.0.0.1:50051 &
    torchrun --standalone --nproc_per_node=2 examples/train_ddp.py --selector 127.0.0.1:50051 \\
        --shards data/fashion-mnist --ratio 0.3 --epochs 6

``--full`` trains on all data with PyTorch's DistributedSampler instead, for comparison.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import BatchSampler, DistributedSampler

import dynams_service as dms
from dynams_service.client import DynaMSSampler, JointPSP, SelectorClient, SelectorJob, psp_loss
from dynams_service.core.shards import decode_samples, read_shards

POLICY = dms.SelectionPolicy.model_fields  # the library's defaults, not copies
FLAGS = [("--shards", str, "data/fashion-mnist", "holds train/ and test/ shards"),
         ("--ratio", float, 0.3, "fraction selected per round"), ("--epochs", int, 6, None),
         ("--warmup-epochs", int, 1, None), ("--interval-epochs", int, 1, None),
         ("--arch", str, "fmnist-cnn", "registered architecture, e.g. cifar-resnet18"),
         ("--width", float, 0.25, "PSP width α"), ("--lam", float, 1.0, "PSP loss weight λ"),
         ("--psp-batch-fraction", float, 0.5, "the PSP trains on this share of each batch"),
         ("--seed", int, 0, None), ("--batch-size", int, 128, "per rank"),
         ("--lr", float, 0.05, None), ("--max-samples", int, None, "the first N samples only"),
         ("--scorers", int, 1, "scorer actors"), ("--deadline", float, 60.0,
                                                 "seconds an epoch waits before falling back"),
         ("--job-id", str, None, "default: a new one per run"), ("--token-file", str, None, None),
         ("--summary", Path, None, "JSON summary (rank 0)"), ("--checkpoint", Path, None, None),
         ("--checkpoint-every", int, 50, "steps between checkpoints"),
         ("--staleness", str, POLICY["staleness"].default, "sync or pipelined"),
         ("--class-balance", str, POLICY["class_balance"].default, "global or per_class"),
         ("--score", str, POLICY["score"].default,
          "lower kept first: distance, signed, loss, el2n or the operator's")]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--selector", metavar="HOST:PORT", help="address of `dynams serve`")
    where.add_argument("--full", action="store_true", help="no selection: all data each epoch")
    for flag, kind, default, text in FLAGS:
        p.add_argument(flag, type=kind, default=default, help=text)
    p.add_argument("--resume", action="store_true", help="continue from --checkpoint")
    args = p.parse_args(argv)
    if args.resume and (args.full or not args.checkpoint):
        p.error("--resume needs --checkpoint and --selector")
    return args


def train_uri(args: argparse.Namespace, rank: int) -> str:
    """The training shards; with --max-samples the first N rows, written once in at least
    --scorers shards (cached under both, so a run with more scorers gets enough shards)."""
    full, n = str(Path(args.shards, "train").resolve()), args.max_samples
    if not n:
        return full
    rows = max(1, min(8192, n // max(1, args.scorers)))
    subset = str(Path(args.shards, f"train-first-{n}-by-{rows}").resolve())
    if rank == 0 and not Path(subset, "dynams-dataset.json").exists():
        data = read_shards(full)
        dms.write_shards(subset, data.samples[:n], data.labels[:n], rows_per_shard=rows,
                         num_classes=dms.read_manifest(full).fingerprint.num_classes)
    if dist.is_initialized():
        dist.barrier()
    return subset


def load_split(uri: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A whole split decoded and normalised in memory (ShardDataset streams larger ones)."""
    manifest = dms.read_manifest(uri)
    rows = read_shards(uri, manifest=manifest)
    return (decode_samples(rows.samples, manifest).to(device),
            torch.from_numpy(rows.labels).to(device))


def open_sampler(args: argparse.Namespace, uri: str) -> DynaMSSampler:
    """Create (or find) the selector job, and the sampler that trains on its selections."""
    job_id = [args.job_id or f"train-ddp-{int(time.time())}-{os.getpid()}"]
    if dist.is_initialized():
        dist.broadcast_object_list(job_id, src=0)  # every rank names the same job
    policy = dms.SelectionPolicy(ratio=args.ratio, warmup_epochs=args.warmup_epochs,
                                 interval_epochs=args.interval_epochs, seed=args.seed,
                                 staleness=args.staleness, class_balance=args.class_balance,
                                 score=args.score)
    spec = dms.JobSpec(job_id=job_id[0], dataset_uri=uri, policy=policy, epochs=args.epochs,
                       fingerprint=dms.read_manifest(uri).fingerprint,
                       proxy=dms.ProxySpec(architecture=args.arch, width=args.width),
                       resources=dms.ScorerResources(num_scorers=args.scorers))
    token = Path(args.token_file).read_text().strip() if args.token_file else None
    job = SelectorJob.create(SelectorClient(args.selector, token=token, retries=2), spec)
    return DynaMSSampler(spec.fingerprint.num_samples, job, deadline=args.deadline)


def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.inference_mode():
        correct = sum(int((model(x[i:i + 2048]).argmax(1) == y[i:i + 2048]).sum())
                      for i in range(0, len(x), 2048))
    model.train()
    return correct / len(x)


def write_summary(args, log: list[dict], fallback: list[int], sampler, world: int,
                  wall: float, num_samples: int) -> None:
    """The run in one JSON file: per-epoch log, accuracy, time trained and blocked."""
    args.summary.write_text(json.dumps({
        "test_accuracy": log[-1]["test_accuracy"] if log else None, "epochs": log,
        "fraction_trained": 1.0 if args.full else sampler.plan().fraction_trained,
        "train_seconds": sum(e["train_seconds"] for e in log), "fallback_epochs": fallback,
        "blocked_seconds": sum(e["blocked_seconds"] for e in log), "world_size": world,
        "wall_seconds": wall, "num_samples": num_samples}, indent=2))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if "RANK" in os.environ:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    device = torch.device(f"cuda:{os.environ.get('LOCAL_RANK', 0)}"
                          if torch.cuda.is_available() else "cpu")
    uri, wall = train_uri(args, rank), time.perf_counter()
    (x, y), test = load_split(uri, device), load_split(str(Path(args.shards, "test")), device)
    torch.manual_seed(args.seed)
    base = dms.build_architecture(args.arch)  # widths (1, α) only: DDP uses every parameter
    model = type(base)(**base.config, widths=(1.0, args.width)).to(device)
    joint = JointPSP(model, args.width, batch_fraction=args.psp_batch_fraction)
    ddp = DistributedDataParallel(joint) if dist.is_initialized() else joint
    sampler = (DistributedSampler(range(len(y)), world, rank, seed=args.seed) if args.full
               else open_sampler(args, uri))
    lengths = [len(sampler)] * args.epochs if args.full else sampler.epoch_lengths()
    total = sum(-(-n // args.batch_size) for n in lengths)  # the plan fixes every epoch
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True,
                                weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total) / total)))
    parts = {"model": model, "optimizer": optimizer, "schedule": schedule, "sampler": sampler}
    start, log = 0, []
    if args.resume and args.checkpoint.exists():
        state = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
        for name, part in parts.items():
            part.load_state_dict(state[name])
        start = state["sampler"]["epoch"]
        print(f"resumed at epoch {start}, {state['sampler']['consumed']} samples in", flush=True)
    with contextlib.nullcontext() if args.full else sampler:
        for epoch in range(start, args.epochs):
            sampler.set_epoch(epoch)
            began, done, loss_sum = time.perf_counter(), lengths[epoch] - len(sampler), 0.0
            batches = list(BatchSampler(sampler, args.batch_size, drop_last=False))
            for step, batch in enumerate(batches):
                loss = psp_loss(*ddp(x[batch]), y[batch], lam=args.lam)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                loss_sum, done = loss_sum + float(loss) * len(batch), done + len(batch)
                if not args.full:
                    sampler.maybe_push(model, (step + 1) / len(batches), schedule.last_epoch)
                due = args.checkpoint and schedule.last_epoch % args.checkpoint_every == 0
                if rank == 0 and due:
                    state = {n: p.state_dict() for n, p in parts.items() if n != "sampler"}
                    torch.save({**state, "sampler": sampler.state_dict(consumed=done)
                                if not args.full else None}, args.checkpoint.with_suffix(".tmp"))
                    args.checkpoint.with_suffix(".tmp").replace(args.checkpoint)  # atomic
            blocked = 0.0 if args.full else sampler.blocked_seconds[epoch]
            log.append({"epoch": epoch, "samples": len(sampler) * world,
                        "kind": "full" if args.full else sampler.sources[epoch].kind,
                        "train_loss": loss_sum / len(sampler), "blocked_seconds": blocked,
                        "train_seconds": time.perf_counter() - began - blocked,
                        "test_accuracy": accuracy(model, *test) if rank == 0 else None})
            if rank == 0:
                print(json.dumps(log[-1]), flush=True)
    fallback = [[] if args.full else sampler.fallback_epochs] * world
    if dist.is_initialized():
        dist.all_gather_object(fallback, fallback[rank])
    fallback = sorted({e for part in fallback for e in part})
    if rank == 0 and fallback:
        print(f"WARNING: epochs {fallback} trained on fallback subsets", flush=True)
    if rank == 0 and args.summary:
        write_summary(args, log, fallback, sampler, world, time.perf_counter() - wall, len(y))
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
