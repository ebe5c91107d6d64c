"""DDP training on Fashion-MNIST shards with DynaMS data selection through the selector.

    dynams serve --address 127.0.0.1:50051 &
    torchrun --standalone --nproc_per_node=2 examples/train_ddp.py --selector 127.0.0.1:50051 \\
        --shards data/fashion-mnist --ratio 0.3 --epochs 6

``--full`` trains on all data with PyTorch's DistributedSampler instead, for comparison;
``--checkpoint PATH --job-id ID`` saves as it trains, and ``--resume`` continues from there,
mid-epoch included. Rank 0 prints a JSON line per epoch, then one for the whole run.
"""

import argparse
import contextlib
import json
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import BatchSampler, DistributedSampler

import dynams_service as dms
from dynams_service.client import DynaMSSampler, JointPSP, SelectorClient, SelectorJob, psp_loss
from dynams_service.core.data.shards import decode_samples, read_shards

POLICY = dms.SelectionPolicy.model_fields  # each a flag, e.g. --ratio; the library's defaults
FLAGS = [("--shards", str, "data/fashion-mnist", "holds train/ and test/ shards"),
         ("--epochs", int, 6, None), ("--batch-size", int, 128, "per rank"),
         ("--lr", float, 0.05, None), ("--arch", str, "fmnist-cnn", "e.g. cifar-resnet18"),
         ("--width", float, 0.25, "PSP width α"), ("--lam", float, 1.0, "PSP loss weight λ"),
         ("--psp-batch-fraction", float, 0.5, "the PSP trains on this share of each batch"),
         ("--psp-every", int, 1, "the PSP loss on every k-th step only"),
         ("--scorers", int, 1, "scorer actors"), ("--token-file", str, None, None),
         ("--deadline", float, 60.0, "seconds an epoch waits before falling back"),
         ("--job-id", str, None, "default: a new one per run"), ("--checkpoint", Path, None, None),
         ("--checkpoint-every", int, 50, "steps between checkpoints")] + [
    (f"--{name.replace('_', '-')}", type(field.default), field.default, field.description)
    for name, field in POLICY.items()]


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
    if args.full and args.checkpoint or args.resume and not args.checkpoint:
        p.error("--checkpoint needs --selector, --resume needs --checkpoint")
    return args


def load_split(uri: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A whole split decoded and normalised in memory (ShardDataset streams larger ones)."""
    manifest, rows = dms.read_manifest(uri), read_shards(uri)
    return (decode_samples(rows.samples, manifest).to(device),
            torch.from_numpy(rows.labels).to(device))


def open_sampler(args: argparse.Namespace, uri: str) -> DynaMSSampler:
    """Create (or find) the selector job, and the sampler that trains on its selections."""
    job_id = [args.job_id or f"train-ddp-{int(time.time())}-{os.getpid()}"]
    dist.broadcast_object_list(job_id, src=0)  # every rank names the same job
    policy = dms.SelectionPolicy(**{name: getattr(args, name) for name in POLICY})
    spec = dms.JobSpec(job_id=job_id[0], dataset_uri=uri, policy=policy, epochs=args.epochs,
                       fingerprint=dms.read_manifest(uri).fingerprint,
                       proxy=dms.ProxySpec(architecture=args.arch, width=args.width),
                       resources=dms.ScorerResources(num_scorers=args.scorers))
    token = Path(args.token_file).read_text().strip() if args.token_file else None
    job = SelectorJob.create(SelectorClient(args.selector, token=token, retries=2), spec)
    return DynaMSSampler(spec.fingerprint.num_samples, job, deadline=args.deadline)


@torch.inference_mode()
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    correct = sum(int((model(a).argmax(1) == b).sum())
                  for a, b in zip(x.split(2048), y.split(2048), strict=True))
    model.train()
    return correct / len(x)


def train_epoch(args, ddp, parts: dict, x, y, rank: int, skip: int = 0) -> dict:
    """This rank's part of the epoch (the rest of it, past ``skip`` samples, after a
    resume), as a JSON-able record."""
    model, optimizer, schedule, sampler = parts.values()
    began, loss_sum, seen, steps = time.perf_counter(), 0.0, 0, -(-len(sampler) // args.batch_size)
    done = skip // args.batch_size  # batches trained before the resume
    weighted = not args.full and sampler.spec.policy.reweight != "none"
    for step, batch in enumerate(BatchSampler(sampler, args.batch_size, drop_last=False)):
        weights = sampler.weights_of(batch).to(x.device) if weighted else None  # --reweight
        loss = psp_loss(*ddp(x[batch]), y[batch], lam=args.lam, weights=weights)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        loss_sum, seen = loss_sum + loss.item() * len(batch), seen + len(batch)
        if not args.full:
            sampler.maybe_push(model, (done + step + 1) / steps, schedule.last_epoch)
        if rank == 0 and args.checkpoint and schedule.last_epoch % args.checkpoint_every == 0:
            state = {name: part.state_dict() for name, part in parts.items()}  # sampler: position
            torch.save(state, args.checkpoint.with_suffix(".tmp"))
            args.checkpoint.with_suffix(".tmp").replace(args.checkpoint)  # atomic
    blocked = 0.0 if args.full else sampler.blocked_seconds[sampler.epoch]
    kind = "full" if args.full else sampler.sources[sampler.epoch].kind
    return {"epoch": sampler.epoch, "kind": kind, "train_loss": loss_sum / max(seen, 1),
            "blocked_seconds": blocked, "train_seconds": time.perf_counter() - began - blocked}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")  # from torchrun
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device(f"cuda:{os.getenv('LOCAL_RANK')}" if torch.cuda.is_available() else "cpu")
    uri = str(Path(args.shards, "train").resolve())
    (x, y), test = load_split(uri, device), load_split(str(Path(args.shards, "test")), device)
    torch.manual_seed(args.seed)
    base = dms.build_architecture(args.arch)  # widths (1, α) only: DDP uses every parameter
    model = type(base)(**base.config, widths=(1.0, args.width)).to(device)
    ddp = torch.nn.parallel.DistributedDataParallel(
        JointPSP(model, args.width, batch_fraction=args.psp_batch_fraction,
                 every=args.psp_every))
    sampler = (DistributedSampler(range(len(y)), world, rank, seed=args.seed) if args.full
               else open_sampler(args, uri))
    lengths = [len(sampler)] * args.epochs if args.full else sampler.epoch_lengths()
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True,
                                weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(  # to 0 over every planned step
        optimizer, T_max=sum(-(-n // args.batch_size) for n in lengths))
    parts = {"model": model, "optimizer": optimizer, "schedule": schedule, "sampler": sampler}
    resumed = {}  # epoch → samples trained before the resume
    if args.resume and args.checkpoint.exists():  # the sampler then starts mid-epoch
        state = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
        for name, part in parts.items():
            part.load_state_dict(state[name])
        resumed = {state["sampler"]["epoch"]: state["sampler"]["consumed"]}
        print("resumed at epoch {epoch}, {consumed} samples in".format(**state["sampler"]))
    with contextlib.nullcontext() if args.full else sampler:
        for epoch in range(sampler.epoch, args.epochs):  # 0 unless resumed
            sampler.set_epoch(epoch)
            record = train_epoch(args, ddp, parts, x, y, rank, resumed.get(epoch, 0))
            if rank == 0:
                print(json.dumps({**record, "samples": lengths[epoch] * world,
                                  "test_accuracy": accuracy(model, *test)}), flush=True)
    if rank == 0:  # the run; every rank's sampler warns of its first fallback on stderr
        fraction, fallback = (1.0, []) if args.full else (sampler.plan().fraction_trained,
                                                          sampler.fallback_epochs)
        print(json.dumps({"test_accuracy": accuracy(model, *test), "fraction_trained": fraction,
                          "fallback_epochs": fallback}), flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
