"""DDP training on Fashion-MNIST shards with DynaMS data selection through the selector.

Launch (2 CPU ranks, gloo; on GPUs the same command uses NCCL):

    torchrun --standalone --nproc_per_node=2 examples/train_ddp.py --embedded \\
        --shards data/fashion-mnist --ratio 0.3 --epochs 6 --summary summary.json

``--selector HOST:PORT`` uses a running ``dynams serve`` instead of ``--embedded`` (which
starts Ray and the selector inside rank 0); ``--full`` trains on all data with PyTorch's
DistributedSampler, for comparison.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import BatchSampler, DistributedSampler

from dynams_service import (
    JobSpec,
    ProxySpec,
    ScorerResources,
    SelectionPolicy,
    SlimmableModel,
    build_architecture,
    read_manifest,
    write_shards,
)
from dynams_service.client import DynaMSSampler, JointPSP, SelectorClient, psp_loss
from dynams_service.core.shards import decode_samples, read_shards


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    where = p.add_mutually_exclusive_group()
    where.add_argument("--selector", metavar="HOST:PORT", help="address of `dynams serve`")
    where.add_argument("--embedded", action="store_true",
                       help="start Ray and the selector inside rank 0 (127.0.0.1)")
    where.add_argument("--full", action="store_true",
                       help="no selection: all data every epoch (DistributedSampler)")
    p.add_argument("--shards", default="data/fashion-mnist",
                   help="output of `dynams dataset convert` (holds train/ and test/)")
    p.add_argument("--ratio", type=float, default=0.3, help="fraction selected per round")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--warmup-epochs", type=int, default=1)
    p.add_argument("--interval-epochs", type=int, default=1)
    policy_default = SelectionPolicy.model_fields  # the library's defaults, not copies
    p.add_argument("--staleness", choices=["sync", "pipelined"],
                   default=policy_default["staleness"].default)
    p.add_argument("--arch", default="fmnist-cnn",
                   help="registered architecture (fmnist-cnn for 1x28x28, cifar-resnet18 for "
                        "3x32x32 images, cnn64-grey for 1x64x64)")
    p.add_argument("--width", type=float, default=0.25, help="PSP width α")
    p.add_argument("--lam", type=float, default=1.0, help="weight λ of the PSP loss")
    p.add_argument("--class-balance", choices=["global", "per_class"],
                   default=policy_default["class_balance"].default,
                   help="select the lowest margins overall or per class")
    p.add_argument("--psp-batch-fraction", type=float, default=0.5,
                   help="train the PSP on this leading fraction of each batch (1 = all; "
                        "0.5 halves its cost at no accuracy cost in the quality benchmark)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=128, help="per rank")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--max-samples", type=int, help="train on the first N samples only")
    p.add_argument("--scorers", type=int, default=1, help="scorer actors of the job")
    p.add_argument("--deadline", type=float, default=60.0,
                   help="seconds an epoch waits for the selector before falling back")
    p.add_argument("--job-id", help="selector job id (default: a new one per run)")
    p.add_argument("--token-file", help="bearer token for the selector")
    p.add_argument("--state-dir", default=".dynams-state",
                   help="--embedded: where the selector persists jobs and rounds")
    p.add_argument("--summary", type=Path, help="write a JSON summary here (rank 0)")
    p.add_argument("--checkpoint", type=Path,
                   help="save model, optimizer, schedule and sampler here (rank 0)")
    p.add_argument("--checkpoint-every", type=int, default=50, help="steps between saves")
    p.add_argument("--resume", action="store_true",
                   help="continue from --checkpoint if it exists (mid-epoch included)")
    p.add_argument("--record-dir", type=Path,
                   help="write each rank's indices, sources and a parameter hash here")
    return p.parse_args()


def load_split(uri: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A whole split decoded into memory (raw or encoded shards; see ShardDataset for
    datasets that do not fit)."""
    manifest = read_manifest(uri)
    rows = read_shards(uri, manifest=manifest)
    return decode_samples(rows.samples, manifest), torch.from_numpy(rows.labels)


def train_uri(args: argparse.Namespace, rank: int) -> str:
    """The training dataset; with --max-samples its first N rows, written once."""
    full = str(Path(args.shards, "train").resolve())
    if not args.max_samples:
        return full
    subset = str(Path(args.shards, f"train-first-{args.max_samples}").resolve())
    if rank == 0 and not Path(subset, "dynams-dataset.json").exists():
        manifest = read_manifest(full)
        rows = read_shards(full, manifest=manifest)
        n = args.max_samples
        write_shards(subset, rows.samples[:n], rows.labels[:n],
                     num_classes=manifest.fingerprint.num_classes,
                     rows_per_shard=max(1, min(8192, n // max(1, args.scorers))))
    if dist.is_initialized():
        dist.barrier()
    return subset


def start_embedded(args: argparse.Namespace):
    """Ray + selector in this process (rank 0); returns (server, dashboard URL)."""
    import ray

    from dynams_service.service.server import SelectorServer

    context = ray.init(address="local", logging_level="WARNING",
                       num_cpus=max(2, args.scorers))
    server = SelectorServer("127.0.0.1:0", state_dir=args.state_dir).start()
    return server, context.dashboard_url


def save_checkpoint(path: Path, model, optimizer, schedule, sampler_state: dict | None) -> None:
    """Everything a resumed run needs, written atomically (a kill never leaves half)."""
    tmp = path.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "schedule": schedule.state_dict(), "sampler": sampler_state}, tmp)
    tmp.replace(path)


def build_model(arch: str, width: float) -> SlimmableModel:
    """The registered architecture, built for widths (1, α) only: DDP wants every
    parameter used each step, and unused widths' BatchNorms would not be."""
    base = build_architecture(arch)
    return type(base)(**base.config, widths=(1.0, width))


def evaluate(model: SlimmableModel, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.inference_mode():
        correct = sum(int((model(x[i:i + 2048]).argmax(1) == y[i:i + 2048]).sum())
                      for i in range(0, len(x), 2048))
    model.train()
    return correct / len(x)


def param_hash(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for t in model.parameters():  # BN running stats are per rank between broadcasts
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def main() -> None:
    args = parse_args()
    if args.resume and (args.full or not args.checkpoint):
        raise SystemExit("--resume needs --checkpoint and the DynaMS sampler (not --full)")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    distributed = "RANK" in os.environ
    if distributed:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank = dist.get_rank() if distributed else 0
    world = dist.get_world_size() if distributed else 1
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
                          if torch.cuda.is_available() else "cpu")
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    wall_start = time.perf_counter()

    uri = train_uri(args, rank)
    x_train, y_train = load_split(uri)
    x_test, y_test = load_split(str(Path(args.shards, "test")))
    manifest = read_manifest(uri)

    server, dashboard = None, None
    if args.embedded and rank == 0:
        server, dashboard = start_embedded(args)
    address = [server.address if server else args.selector, dashboard,
               args.job_id or f"train-ddp-{int(time.time())}-{os.getpid()}"]
    if distributed:
        dist.broadcast_object_list(address, src=0)
    selector_address, dashboard, job_id = address

    torch.manual_seed(args.seed)
    model = build_model(args.arch, args.width).to(device)
    joint = JointPSP(model, args.width, batch_fraction=args.psp_batch_fraction)
    ddp = DistributedDataParallel(joint) if distributed else joint

    if args.full:
        sampler = DistributedSampler(range(len(y_train)), num_replicas=world, rank=rank,
                                     seed=args.seed)
        epoch_lengths = [len(sampler)] * args.epochs
        fraction = 1.0
    else:
        token = Path(args.token_file).read_text().strip() if args.token_file else None
        spec = JobSpec(
            job_id=job_id, dataset_uri=uri, fingerprint=manifest.fingerprint,
            proxy=ProxySpec(architecture=args.arch, width=args.width),
            policy=SelectionPolicy(ratio=args.ratio, warmup_epochs=args.warmup_epochs,
                                   interval_epochs=args.interval_epochs,
                                   staleness=args.staleness, seed=args.seed,
                                   class_balance=args.class_balance),
            epochs=args.epochs, resources=ScorerResources(num_scorers=args.scorers))
        client = SelectorClient(selector_address, token=token, retries=2)
        sampler = DynaMSSampler(len(y_train), client, spec, rank=rank, world_size=world,
                                deadline=args.deadline)
        epoch_lengths = sampler.epoch_lengths()
        fraction = sampler.plan().fraction_trained

    steps_per_epoch = [-(-n // args.batch_size) for n in epoch_lengths]
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True,
                                weight_decay=5e-4)
    total_steps = sum(steps_per_epoch)  # known up front: the plan fixes every epoch's size
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total_steps)
                                                    / total_steps)))
    if rank == 0:
        print(f"{'full data' if args.full else 'DynaMS'}: {len(y_train)} samples, {world} "
              f"ranks, plan (per rank) {epoch_lengths}, fraction trained {fraction:.3f}",
              flush=True)
        if dashboard:
            print(f"Ray dashboard: http://{dashboard}", flush=True)

    log, train_seconds, wait_seconds, records = [], 0.0, 0.0, {}
    accuracy, start_epoch = 0.0, 0
    if args.resume and args.checkpoint and args.checkpoint.exists():
        state = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        sampler.load_state_dict(state["sampler"])
        start_epoch = state["sampler"]["epoch"]
        if rank == 0:
            print(f"resumed at epoch {start_epoch}, {state['sampler']['consumed']} samples "
                  "in", flush=True)
    for epoch in range(start_epoch, args.epochs):
        sampler.set_epoch(epoch)
        started = time.perf_counter()
        already = epoch_lengths[epoch] - len(sampler)  # trained before a resume
        batches = list(BatchSampler(sampler, args.batch_size, drop_last=False))
        waited = sampler.wait_seconds.get(epoch, 0.0) if not args.full else 0.0
        indices = [i for b in batches for i in b]
        records[epoch] = indices
        total_loss = 0.0
        for step, batch in enumerate(batches):
            idx = torch.tensor(batch)
            xb, yb = x_train[idx].to(device), y_train[idx].to(device)
            logits, psp_logits = ddp(xb)
            loss = psp_loss(logits, psp_logits, yb, lam=args.lam)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total_loss += float(loss.detach()) * len(batch)
            if not args.full:
                sampler.maybe_push(model, progress=(step + 1) / len(batches),
                                   version=schedule.last_epoch)
            if args.checkpoint and rank == 0 and schedule.last_epoch % args.checkpoint_every == 0:
                consumed = already + sum(len(b) for b in batches[:step + 1])
                save_checkpoint(args.checkpoint, model, optimizer, schedule,
                                None if args.full else sampler.state_dict(consumed=consumed))
        seconds = time.perf_counter() - started - waited
        train_seconds += seconds
        wait_seconds += waited
        if rank == 0:
            accuracy = evaluate(model, x_test.to(device), y_test.to(device))
            source = "full" if args.full else sampler.sources[epoch]
            kind = source if isinstance(source, str) else source.kind
            entry = {"epoch": epoch, "kind": kind, "samples": len(indices) * world,
                     "train_loss": total_loss / max(1, len(indices)),
                     "test_accuracy": accuracy, "train_seconds": seconds,
                     "wait_seconds": waited}
            log.append(entry)
            print(f"epoch {epoch:2d} [{kind:8s}] samples {entry['samples']:6d}  loss "
                  f"{entry['train_loss']:.4f}  test acc {accuracy:.4f}  train {seconds:6.1f}s  "
                  f"wait {waited:6.3f}s", flush=True)

    if args.record_dir:
        args.record_dir.mkdir(parents=True, exist_ok=True)
        for epoch, indices in records.items():
            np.save(args.record_dir / f"rank{rank}-epoch{epoch}.npy", np.asarray(indices))
        info = {"param_sha256": param_hash(model)}
        if not args.full:
            info["sources"] = {e: vars(s) for e, s in sampler.sources.items()}
            info["pushed"] = sampler.pushed
            info["fallback_epochs"] = sampler.fallback_epochs
        (args.record_dir / f"rank{rank}.json").write_text(json.dumps(info, indent=2))

    fallback = sorted(sampler.fallback_epochs) if not args.full else []
    if distributed:
        gathered: list = [None] * world
        dist.all_gather_object(gathered, fallback)
        fallback = sorted({e for part in gathered for e in part})
    if rank == 0:
        summary = {"test_accuracy": accuracy, "fraction_trained": fraction,
                   "train_seconds": train_seconds, "wait_seconds": wait_seconds,
                   "wall_seconds": time.perf_counter() - wall_start,
                   "fallback_epochs": fallback, "epochs": log, "world_size": world,
                   "num_samples": len(y_train), "ratio": 1.0 if args.full else args.ratio,
                   "staleness": None if args.full else args.staleness,
                   "job_id": None if args.full else job_id, "dashboard_url": dashboard}
        if fallback:
            print(f"WARNING: epochs {fallback} trained on fallback subsets (selector "
                  "unreachable or late)", flush=True)
        if args.summary:
            args.summary.write_text(json.dumps(summary, indent=2))
    if distributed:
        dist.barrier()
        dist.destroy_process_group()
    if server is not None:
        import ray

        server.stop(grace=0)
        ray.shutdown()


if __name__ == "__main__":
    main()
