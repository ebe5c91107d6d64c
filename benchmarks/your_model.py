"""Your own model: torchvision networks made slimmable with ``make_slimmable`` at α = 0.25,
on CPU, each model in one run:

- ``joint_overhead``: a joint PSP step (``JointPSP``, the PSP on half the batch) against a
  plain step of the same model (forward, backward, SGD), interleaved, median of
  ``--steps-timed`` each, ``--threads`` threads (target ≤ 10 %), on the 32x32 training
  inputs and on each larger side in ``--step-sizes`` (random inputs, batch 32);
- ``spearman`` and ``overlap_30``: after ``--train-steps`` joint AdamW steps on real
  Fashion-MNIST (up-scaled to 3x32x32; 938 steps of 64 are one epoch; AdamW at 1e-3,
  1e-4 for VGG) and a BatchNorm
  recalibration at each width, the rank correlation between the PSP's margins and the
  full model's on 2,000 held-out test images, and the overlap of the two lowest-30 % sets
  (target ≥ 0.6; a random pair overlaps 0.3);
- ``pushed_vs_full``: the bytes a push carries against the full model's state.

Run: ``.venv/bin/python benchmarks/your_model.py [--models resnet18,...] [--out DIR]``
(prints a table; ``DIR/your_model.json`` and ``DIR/your_model.md``). About an hour
for all eight models on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision.models as tvm
from results_io import store_json

from dynams_service.client.joint_training import JointPSP, psp_loss
from dynams_service.core.data.idx import load_idx_split
from dynams_service.core.models.proxy import export_psp
from dynams_service.core.models.slimming import make_slimmable
from dynams_service.core.selection.scoring import score

MODELS = ["resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0",
          "regnet_y_400mf", "vgg11_bn", "convnext_tiny"]
WIDTH, SIZE, HELD_OUT = 0.25, 32, 2000
# AdamW learning rate of the fidelity run: VGG (no residuals, 128M parameters) diverges
# at 1e-3 within one epoch, as plain deep stacks do; 1e-4 trains it.
LEARNING_RATE, LEARNING_RATES = 1e-3, {"vgg11_bn": 1e-4}


def fashion_mnist(split: str, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Real Fashion-MNIST as normalised 3x32x32 tensors (grey replicated, bilinear)."""
    images, labels = load_idx_split(
        os.environ.get("DYNAMS_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"), split)
    x = torch.from_numpy(images[:n]).float().div_(255)[:, None]
    x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    x = ((x - 0.286) / 0.353).expand(-1, 3, -1, -1).contiguous()
    return x, torch.from_numpy(labels[:n]).long()


def step_times(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
               steps: int) -> tuple[float, float]:
    """Median seconds of a plain and of a joint training step, interleaved."""
    joint = JointPSP(net, WIDTH)
    opt = torch.optim.SGD(net.parameters(), lr=1e-3)
    net.train()

    def plain() -> None:
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    def joint_step() -> None:
        logits, psp_logits = joint(x)
        loss = psp_loss(logits, psp_logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    times: dict[str, list[float]] = {"plain": [], "joint": []}
    for i in range(steps + 2):
        for name, fn in (("plain", plain), ("joint", joint_step)):
            started = time.perf_counter()
            fn()
            if i >= 2:  # two warm-up rounds
                times[name].append(time.perf_counter() - started)
    return statistics.median(times["plain"]), statistics.median(times["joint"])


def fidelity(net: torch.nn.Module, train: tuple, test: tuple, steps: int,
             batch: int, lr: float) -> dict:
    """Joint training, then PSP margins against full-model margins on held-out images."""
    x, y = train
    joint = JointPSP(net, WIDTH)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.05)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    net.train()
    for step in range(steps):
        idx = order[(step * batch) % len(x):][:batch]
        logits, psp_logits = joint(x[idx])
        loss = psp_loss(logits, psp_logits, y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    recalibrate_norms(net, x, batch)
    net.eval()
    tx, ty = test
    full = score(net, tx, width=1.0, batch_size=250)
    psp = score(net, tx, width=WIDTH, batch_size=250)
    k = int(0.3 * len(tx))
    low_full, low_psp = set(full.argsort()[:k].tolist()), set(psp.argsort()[:k].tolist())
    with torch.no_grad():
        acc = {w: (torch.cat([net(tx[s:s + 250], w).argmax(1) for s in range(0, len(tx), 250)])
                   == ty).float().mean().item() for w in (1.0, WIDTH)}
    return {"spearman": spearman(full, psp), "overlap_30": len(low_full & low_psp) / k,
            "full_accuracy": acc[1.0], "psp_accuracy": acc[WIDTH]}


def recalibrate_norms(net: torch.nn.Module, x: torch.Tensor, batch: int,
                     batches: int = 20) -> None:
    """Recompute every BatchNorm's running statistics at each width (as slimmable networks
    do after training): torchvision's MobileNetV3 uses momentum 0.01, whose statistics are
    still near their initial values after a short run."""
    norms = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches below
    net.train()
    with torch.no_grad():
        for i in range(batches):
            for width in (1.0, WIDTH):
                net(x[i * batch:(i + 1) * batch], width)
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra, rb = a.argsort().argsort().double(), b.argsort().argsort().double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps-timed", type=int, default=15)
    parser.add_argument("--train-steps", type=int, default=938)
    parser.add_argument("--threads", type=int, default=1, help="for the step timing")
    parser.add_argument("--step-sizes", default="128",
                        help="larger input sides to time the joint step at, comma-separated "
                             "('' for none)")
    parser.add_argument("--lr", type=float, default=None,
                        help=f"AdamW learning rate of the fidelity run (default {LEARNING_RATE}, "
                             f"per model: {LEARNING_RATES})")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    train = fashion_mnist("train")
    test = tuple(t[:HELD_OUT] for t in fashion_mnist("test"))
    xb = train[0][:args.batch_size]
    yb = train[1][:args.batch_size]
    rows = []
    for name in args.models.split(","):
        torch.manual_seed(0)
        started = time.perf_counter()
        net = make_slimmable(getattr(tvm, name)(num_classes=10), (1.0, WIDTH),
                             input_shape=(3, SIZE, SIZE))
        convert_s = time.perf_counter() - started
        torch.set_num_threads(args.threads)
        plain, joint = step_times(net, xb, yb, args.steps_timed)
        larger = {}
        for side in [int(v) for v in args.step_sizes.split(",") if v]:
            x = torch.randn(32, 3, side, side, generator=torch.Generator().manual_seed(side))
            p, j = step_times(net, x, yb[:32], args.steps_timed)
            larger[f"joint_overhead_{side}px"] = round(j / p - 1, 4)
            larger[f"plain_step_ms_{side}px"] = round(p * 1e3, 1)
        torch.set_num_threads(os.cpu_count() or 1)
        pushed = sum(r.nbytes for r in export_psp(net.eval(), WIDTH))
        full = sum(t.numel() * t.element_size() for t in net.state_dict().values())
        row = {"model": name, "convert_s": round(convert_s, 2),
               "plain_step_ms": round(plain * 1e3, 1), "joint_step_ms": round(joint * 1e3, 1),
               "joint_overhead": round(joint / plain - 1, 4), **larger,
               "pushed_bytes": pushed, "full_bytes": full,
               "pushed_vs_full": round(pushed / full, 4)}
        lr = args.lr or LEARNING_RATES.get(name, LEARNING_RATE)
        row["lr"] = lr
        row.update({k: round(v, 4) for k, v in fidelity(
            net, train, test, args.train_steps, args.batch_size, lr).items()})
        row["seconds"] = round(time.perf_counter() - started, 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
    result = {"width": WIDTH, "input": [3, SIZE, SIZE], "batch_size": args.batch_size,
              "steps_timed": args.steps_timed, "train_steps": args.train_steps,
              "threads": args.threads, "torch": torch.__version__, "models": rows}
    store_json(args.out, "your_model.json", result)
    if args.out is not None:
        (args.out / "your_model.md").write_text(table(result))
    print(table(result))
    return 0


def table(result: dict) -> str:
    lines = [f"α = {result['width']}, input {result['input']}, batch {result['batch_size']}, "
             f"{result['threads']} thread(s) for the step timing, {result['train_steps']} "
             "joint AdamW steps and a BatchNorm recalibration before the fidelity figures.",
             "",
             "| model | joint step vs plain, 32 px / larger | Spearman | overlap of lowest 30 % "
             "| full / PSP accuracy | pushed / full bytes |", "|---|---|---|---|---|---|"]
    for r in result["models"]:
        larger = ", ".join(f"{v:+.1%} at {k.split('_')[-1]}" for k, v in r.items()
                           if k.startswith("joint_overhead_"))
        lines.append(f"| {r['model']} | {r['joint_overhead']:+.1%}"
                     f"{' / ' + larger if larger else ''} | {r['spearman']:.2f} | "
                     f"{r['overlap_30']:.2f} | {r['full_accuracy']:.1%} / "
                     f"{r['psp_accuracy']:.1%} | {r['pushed_vs_full']:.3f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
