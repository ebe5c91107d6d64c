"""Quality benchmark: DynaMS against full data, uniform, static margin and InfoBatch.

Trains the slimmable ``fmnist-cnn`` on Fashion-MNIST in-process, driving the core directly
(the same ``score``/``select``/``SelectionPolicy``/PSP code the selector service uses), with
one optimizer and the same number of optimizer steps for every subset method at a ratio
(the plan fixes every epoch's size up front, so the cosine LR schedule is sized from it).

Every run reports its cost: ``fraction_trained`` (sample-iterations / full data),
``train_seconds`` (the trainer only), ``scoring_seconds`` (proxy export, scoring, selection),
``total_compute_seconds`` (their sum) and ``wall_seconds`` (also test evaluation).

Examples::

    .venv/bin/python benchmarks/quality.py --quick --out /tmp/q          # < 1 min smoke run
    .venv/bin/python benchmarks/quality.py --psp-cost                    # PSP step/scoring cost
    .venv/bin/python benchmarks/quality.py --ratios 0.3 --epochs 8 --seeds 3 --max-samples 20000
    .venv/bin/python benchmarks/quality.py --ratios 0.1,0.2,0.5 --methods uniform,dynams-psp-0.25
    .venv/bin/python benchmarks/quality.py --ablations --epochs 8 --max-samples 20000

Results accumulate in ``--out``/quality.json keyed by (method, ratio, seed, epochs,
max_samples); a key already there is skipped unless ``--force``, so an interrupted sweep
resumes where it stopped. ``quality.md`` and the PNG plots are rebuilt after every run.

Method names: ``full``, ``uniform``, ``static-margin``, ``infobatch``, ``dynams-full-proxy``,
``dynams-psp-<α>``, ``uniform-psp-<α>``, ``uniform-compute-matched``; knob suffixes make
ablations: ``-signed``, ``-global``, ``-int<N>`` (interval), ``-warm<N>`` (warm-up),
``-power`` (power ratio schedule), ``-lam<λ>`` (PSP loss weight), ``-bf<f>`` (PSP loss on
the first f of each batch), ``-distill`` (PSP distilled from the full model's outputs),
``-pipe`` (pipelined staleness: margins from weights a quarter epoch old), e.g.
``dynams-psp-0.25-signed`` or ``uniform-warm3``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# On a shared CPU, OpenMP's default busy-waiting makes every torch op wait on preempted
# spinning threads (measured here: 2-thread steps 3-5x slower under load); passive waits
# keep steps near their unloaded time. Must be set before torch loads its OpenMP runtime
# (only when run as a script, so importing this module changes no one else's environment).
if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import dynams_service as dms  # noqa: E402
from dynams_service.client.joint_training import JointPSP, psp_loss  # noqa: E402
from dynams_service.core.idx import load_idx_split  # noqa: E402
from dynams_service.core.policy import EpochKind  # noqa: E402
from dynams_service.core.proxy import build_proxy, export_psp  # noqa: E402

ARCHITECTURE = "fmnist-cnn"
DEFAULT_DATA_DIR = "/usr/share/datasets/fashion-mnist"
DEFAULT_OUT = Path(__file__).resolve().parent / "results"
MEAN, STD = 0.2860, 0.3530
NUM_CLASSES = 10
DEFAULT_DYNAMS = "dynams-psp-0.25"  # what ablations are compared against
PIPE_LEAD = 0.25  # pipelined runs snapshot the weights this fraction of an epoch early
MAIN_METHODS = (
    "full", "uniform", "static-margin", "infobatch", "dynams-full-proxy", "dynams-psp-0.25",
    "uniform-psp-0.25", "uniform-compute-matched",
)
QUICK_METHODS = ("full,uniform,infobatch,dynams-full-proxy,dynams-psp-0.25,"
                 "uniform-compute-matched")
PLOTTED_METHODS = (*MAIN_METHODS, "dynams-psp-0.5")  # ablations get their own chart
ABLATION_METHODS = (
    "dynams-psp-0.25-signed", "dynams-psp-0.25-global", "dynams-psp-0.25-int2",
    "dynams-psp-0.25-int5", "dynams-psp-0.25-warm0", "dynams-psp-0.25-warm3",
    "dynams-psp-0.25-power", "dynams-psp-0.5", "dynams-psp-0.25-lam0.5",
    "dynams-psp-0.25-lam2", "dynams-psp-0.25-bf0.5", "dynams-psp-0.25-distill",
    "dynams-psp-0.25-pipe", "uniform-psp-0.25-lam0.5", "uniform-psp-0.25-bf0.5",
    "uniform-warm0", "uniform-warm3",
)
BASE_KINDS = ("full", "uniform", "static-margin", "infobatch", "dynams-full-proxy",
              "dynams-psp", "uniform-psp", "uniform-compute-matched")
REQUIRED_KEYS = ("method", "ratio", "seed", "epochs", "final_accuracy", "best_accuracy",
                 "fraction_trained", "wall_seconds", "train_seconds", "scoring_seconds",
                 "total_compute_seconds")


# --- data ------------------------------------------------------------------------------


@dataclass
class Data:
    """Normalised train/test tensors held in memory (N, 1, 28, 28) float32 and int64 labels."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    @property
    def num_train(self) -> int:
        return len(self.y_train)


def load_data(data_dir: str, max_samples: int | None, max_test: int | None) -> Data:
    """Fashion-MNIST from IDX files, the first ``max_samples``/``max_test`` rows, normalised."""

    def prep(split: str, limit: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = load_idx_split(data_dir, split)
        if limit is not None:
            images, labels = images[:limit], labels[:limit]
        x = torch.from_numpy(images.astype(np.float32)).unsqueeze(1).div_(255)
        return x.sub_(MEAN).div_(STD).contiguous(), torch.from_numpy(labels.copy())

    x_train, y_train = prep("train", max_samples)
    x_test, y_test = prep("test", max_test)
    return Data(x_train, y_train, x_test, y_test)


# --- methods ---------------------------------------------------------------------------


@dataclass(frozen=True)
class MethodSpec:
    """What a method name means: its base kind, PSP width and the policy knobs it changes."""

    name: str
    kind: str
    psp_width: float | None = None  # width of the joint-loss sub-network (None: plain CE)
    lam: float = 1.0
    margin_mode: str = "distance"
    class_balance: str = "per_class"
    interval_epochs: int = 1
    warmup_epochs: int = 1
    ratio_schedule: str = "constant"
    psp_batch_fraction: float = 1.0  # share of each batch the PSP loss sees
    distill: bool = False  # PSP learns the full model's softened outputs instead of labels
    staleness: str = "sync"  # "pipelined": score weights snapshotted PIPE_LEAD epochs early

    @property
    def selects_by_margin(self) -> bool:
        return self.kind in ("dynams-full-proxy", "dynams-psp", "static-margin")

    def policy(self, ratio: float, seed: int) -> dms.SelectionPolicy:
        """The selection policy (and so the plan) this method trains under at ``ratio``."""
        return dms.SelectionPolicy(
            ratio=ratio, warmup_epochs=self.warmup_epochs, interval_epochs=self.interval_epochs,
            margin_mode=self.margin_mode, class_balance=self.class_balance,
            ratio_schedule=self.ratio_schedule, seed=seed, staleness=self.staleness,
        )


def parse_method(name: str, default_lam: float = 1.0) -> MethodSpec:
    """Parse ``base[-α][-knob...]`` into a :class:`MethodSpec`; raise ValueError if unknown."""
    base = next((b for b in sorted(BASE_KINDS, key=len, reverse=True)
                 if name == b or name.startswith(b + "-")), None)
    if base is None:
        raise ValueError(f"unknown method {name!r}; bases: {', '.join(BASE_KINDS)}")
    tokens = [t for t in name[len(base):].split("-") if t]
    fields: dict[str, Any] = {"lam": default_lam}
    if base in ("dynams-psp", "uniform-psp"):
        if not tokens:
            raise ValueError(f"{name!r}: PSP methods need a width, e.g. {base}-0.25")
        width = float(tokens.pop(0))
        if width not in dms.build_architecture(ARCHITECTURE).widths or width == 1.0:
            raise ValueError(f"{name!r}: PSP width must be one of 0.5, 0.25")
        fields["psp_width"] = width
    for token in tokens:
        if token in ("signed", "distance"):
            fields["margin_mode"] = token
        elif token in ("global", "perclass"):
            fields["class_balance"] = "global" if token == "global" else "per_class"
        elif token == "power":
            fields["ratio_schedule"] = "power"
        elif token.startswith("int") and token[3:].isdigit():
            fields["interval_epochs"] = int(token[3:])
        elif token.startswith("warm") and token[4:].isdigit():
            fields["warmup_epochs"] = int(token[4:])
        elif token.startswith("lam"):
            fields["lam"] = float(token[3:])
        elif token.startswith("bf"):
            fields["psp_batch_fraction"] = float(token[2:])
        elif token == "distill":
            fields["distill"] = True
        elif token == "pipe":
            fields["staleness"] = "pipelined"
        else:
            raise ValueError(f"{name!r}: unknown knob suffix {token!r}")
    if ("psp_batch_fraction" in fields or "distill" in fields) and "psp_width" not in fields:
        raise ValueError(f"{name!r}: -bf and -distill only apply to PSP methods")
    if fields.get("staleness") == "pipelined" and base not in ("dynams-full-proxy",
                                                               "dynams-psp"):
        raise ValueError(f"{name!r}: -pipe only applies to dynamic margin methods")
    if fields.get("margin_mode") == "signed" and base not in ("dynams-full-proxy", "dynams-psp",
                                                              "static-margin"):
        raise ValueError(f"{name!r}: -signed only applies to margin-based methods")
    return MethodSpec(name=name, kind=base, **fields)


# --- training --------------------------------------------------------------------------


@dataclass
class RunConfig:
    """One training run: method, budget ratio, seed and the shared optimisation settings."""

    method: MethodSpec
    ratio: float | None
    seed: int
    epochs: int
    max_samples: int | None
    batch_size: int = 128
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    infobatch_prune: float = 0.5
    infobatch_anneal: float = 0.125
    subset_ratio: float | None = None  # overrides ratio for the plan (compute-matched)
    score_batch_size: int | None = None  # None: dms.score's default
    eval_every: int = 1  # test accuracy every N epochs (and always after the last)
    extra: dict[str, Any] = field(default_factory=dict)


def _generator(*keys: int) -> torch.Generator:
    """A local generator seeded from integer keys (never the global RNG)."""
    seed = 0
    for k in keys:
        seed = (seed * 1_000_003 + int(k)) % (2**62)
    return torch.Generator().manual_seed(seed)


def _cosine_lr(base: float, step: int, total: int) -> float:
    """Cosine decay from ``base`` to 0 over ``total`` optimizer steps."""
    return 0.5 * base * (1 + math.cos(math.pi * min(step, total) / max(total, 1)))


def _steps(size: int, batch_size: int) -> int:
    return math.ceil(size / batch_size)


@torch.inference_mode()
def evaluate(model: dms.SlimmableModel, x: torch.Tensor, y: torch.Tensor,
             batch_size: int = 256) -> float:
    """Top-1 accuracy of the full-width model in eval mode (training flag restored)."""
    was_training = model.training
    model.eval()
    correct = 0
    for start in range(0, len(x), batch_size):
        logits = model(x[start:start + batch_size])
        correct += int((logits.argmax(1) == y[start:start + batch_size]).sum())
    model.train(was_training)
    return correct / max(len(x), 1)


def _scorer(model: dms.SlimmableModel, spec: MethodSpec,
            snapshot: bool = False) -> dms.SlimmableModel:
    """What scores margins: for ``dynams-psp`` the PSP proxy rebuilt from exported raw
    tensors (as the selector would), else the full model (a frozen copy if ``snapshot``)."""
    if spec.kind == "dynams-psp":
        assert spec.psp_width is not None
        return build_proxy(ARCHITECTURE, spec.psp_width,
                               export_psp(model, spec.psp_width))
    return copy.deepcopy(model) if snapshot else model


def _margin_scores(scorer: dms.SlimmableModel, spec: MethodSpec, x: torch.Tensor,
                   y: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
    """Margins of every training sample under ``scorer`` at its full width.
    ``batch_size`` None keeps ``score``'s own default (what the service would run)."""
    kwargs = {} if batch_size is None else {"batch_size": batch_size}
    return dms.score(scorer, x, y, width=1.0, mode=spec.margin_mode, **kwargs)


def train_run(cfg: RunConfig, data: Data, log: bool = True) -> dict[str, Any]:
    """Train one run and return its record (accuracies per epoch and the cost accounting)."""
    wall_start = time.perf_counter()
    spec = cfg.method
    n = data.num_train
    torch.manual_seed(cfg.seed)  # model init only; all data randomness uses local generators
    model = dms.build_architecture(ARCHITECTURE)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=True,
                          weight_decay=cfg.weight_decay)

    plan_ratio = cfg.subset_ratio if cfg.subset_ratio is not None else cfg.ratio
    if spec.kind in ("full", "infobatch"):
        plan = dms.SelectionPolicy(ratio=1.0, warmup_epochs=cfg.epochs).plan(n, cfg.epochs)
        policy = None
    else:
        assert plan_ratio is not None
        policy = spec.policy(plan_ratio, cfg.seed)
        plan = policy.plan(n, cfg.epochs)
    round_ratios = policy.round_ratios(cfg.epochs) if policy is not None else []

    # InfoBatch's steps are only known as it goes: its LR follows epoch progress instead.
    total_steps = sum(_steps(s, cfg.batch_size) for s in plan.sizes)
    anneal_from = cfg.epochs - max(1, math.ceil(cfg.infobatch_anneal * cfg.epochs))
    prev_loss = torch.full((n,), float("nan"))

    train_seconds = scoring_seconds = train_cpu = scoring_cpu = 0.0
    step = 0
    sizes: list[int] = []
    accs: list[float] = []
    losses: list[float] = []
    step_times: list[float] = []
    eval_epochs: list[int] = []
    select_times: list[float] = []
    digests: list[str] = []  # of each selection round's indices (compare runs' choices)
    static_keep: torch.Tensor | None = None
    keep: torch.Tensor | None = None
    snapshot: dms.SlimmableModel | None = None  # pipelined: the weights the next round scores
    joint = (None if spec.psp_width is None
             else JointPSP(model, spec.psp_width, batch_fraction=spec.psp_batch_fraction))
    for epoch, ep in enumerate(plan.epochs):
        # --- choose this epoch's samples (counted as scoring/selection time) ---
        t0, c0 = time.perf_counter(), time.process_time()
        weights: torch.Tensor | None = None
        if spec.kind == "infobatch":
            keep, weights = _infobatch_subset(prev_loss, cfg, epoch, anneal_from)
        elif ep.kind is EpochKind.FULL:
            keep = torch.arange(n)
        elif spec.kind in ("uniform", "uniform-psp", "uniform-compute-matched"):
            keep = torch.randperm(n, generator=_generator(cfg.seed, epoch, 1))[:ep.size]
            keep = keep.sort().values
        elif spec.kind == "static-margin":
            if static_keep is None:
                m = _margin_scores(_scorer(model, spec), spec, data.x_train, data.y_train,
                                   cfg.score_batch_size)
                static_keep = dms.select(m, data.y_train, ratio=round_ratios[ep.round],
                                         per_class=spec.class_balance == "per_class")
            keep = static_keep
        elif ep.kind is EpochKind.SELECT:
            scorer = snapshot if snapshot is not None else _scorer(model, spec)
            snapshot = None
            m = _margin_scores(scorer, spec, data.x_train, data.y_train, cfg.score_batch_size)
            keep = dms.select(m, data.y_train, ratio=round_ratios[ep.round],
                              per_class=spec.class_balance == "per_class")
        # REUSE: keep the previous round's selection
        assert keep is not None
        if spec.kind != "infobatch" and len(keep) != ep.size:
            raise RuntimeError(f"{spec.name} epoch {epoch}: {len(keep)} samples, plan {ep.size}")
        if spec.kind != "infobatch" and ep.kind is not EpochKind.FULL:
            select_times.append(time.perf_counter() - t0)
        if ep.kind is EpochKind.SELECT and spec.kind != "infobatch":
            digests.append(hashlib.sha256(keep.numpy().astype("<i8").tobytes()).hexdigest()[:16])
        scoring_seconds += time.perf_counter() - t0
        scoring_cpu += time.process_time() - c0

        # --- train on them ---
        t0, c0 = time.perf_counter(), time.process_time()
        perm = torch.randperm(len(keep), generator=_generator(cfg.seed, epoch, 2))
        order = keep[perm]
        w_order = None if weights is None else weights[perm]
        epoch_steps = _steps(len(order), cfg.batch_size)
        # pipelined: snapshot the weights PIPE_LEAD of an epoch before a selection round
        snapshot_at = None
        if (spec.staleness == "pipelined" and epoch + 1 < len(plan.epochs)
                and plan.epochs[epoch + 1].kind is EpochKind.SELECT):
            snapshot_at = math.floor((1 - PIPE_LEAD) * epoch_steps)
        snapshot_seconds = snapshot_cpu = 0.0
        loss_sum = 0.0
        for b in range(epoch_steps):
            if b == snapshot_at:
                ts, cs = time.perf_counter(), time.process_time()
                snapshot = _scorer(model, spec, snapshot=True)
                snapshot_seconds += time.perf_counter() - ts
                snapshot_cpu += time.process_time() - cs
            t_step = time.perf_counter()
            idx = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            if spec.kind == "infobatch":
                lr = _cosine_lr(cfg.lr, epoch * 10_000 + (b * 10_000) // epoch_steps,
                                cfg.epochs * 10_000)
            else:
                lr = _cosine_lr(cfg.lr, step, total_steps)
            for group in opt.param_groups:
                group["lr"] = lr
            x, y = data.x_train[idx], data.y_train[idx]
            if joint is not None:  # the trainer-side helper users train with
                logits, psp_logits = joint(x)
                loss = psp_loss(logits, psp_logits, y, lam=spec.lam, distill=spec.distill)
            else:
                per_sample = F.cross_entropy(model(x), y, reduction="none")
                if w_order is not None:
                    prev_loss[idx] = per_sample.detach()
                    loss = (per_sample
                            * w_order[b * cfg.batch_size:(b + 1) * cfg.batch_size]).mean()
                else:
                    loss = per_sample.mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += float(loss.detach()) * len(idx)
            step += 1
            step_times.append(time.perf_counter() - t_step)
        train_seconds += time.perf_counter() - t0 - snapshot_seconds
        train_cpu += time.process_time() - c0 - snapshot_cpu
        scoring_seconds += snapshot_seconds
        scoring_cpu += snapshot_cpu
        sizes.append(len(order))
        losses.append(loss_sum / max(len(order), 1))
        if (epoch + 1) % cfg.eval_every == 0 or epoch == cfg.epochs - 1:
            accs.append(evaluate(model, data.x_test, data.y_test))
            eval_epochs.append(epoch + 1)
        if log:
            acc = f" acc={accs[-1]:.4f}" if eval_epochs[-1:] == [epoch + 1] else ""
            print(f"  [{spec.name} r={cfg.ratio} seed={cfg.seed}] epoch {epoch + 1}/{cfg.epochs}"
                  f" n={len(order)} loss={losses[-1]:.4f}{acc}"
                  f" train={train_seconds:.1f}s score={scoring_seconds:.1f}s", flush=True)

    sample_iterations = sum(sizes)
    # The CPU is shared: median step time × steps is a load-robust estimate of train cost.
    step_median = statistics.median(step_times)
    robust_train = step_median * step
    return {
        "method": spec.name,
        "ratio": cfg.ratio,
        "seed": cfg.seed,
        "epochs": cfg.epochs,
        "max_samples": cfg.max_samples,
        "num_train": n,
        "num_test": len(data.y_test),
        "final_accuracy": accs[-1],
        "best_accuracy": max(accs),
        "accuracy_per_epoch": accs,
        "accuracy_epochs": eval_epochs,
        "train_loss_per_epoch": losses,
        "fraction_trained": sample_iterations / (n * cfg.epochs),
        "planned_fraction": plan.fraction_trained,
        "sample_iterations": sample_iterations,
        "epoch_sizes": sizes,
        "optimizer_steps": step,
        "planned_steps": total_steps,
        "subset_ratio": plan_ratio,
        "wall_seconds": time.perf_counter() - wall_start,
        "train_seconds": train_seconds,
        "scoring_seconds": scoring_seconds,
        "total_compute_seconds": train_seconds + scoring_seconds,
        "step_seconds_median": step_median,
        "train_seconds_robust": robust_train,
        "total_compute_seconds_robust": robust_train + scoring_seconds,
        "train_cpu_seconds": train_cpu,
        "scoring_cpu_seconds": scoring_cpu,
        "total_compute_cpu_seconds": train_cpu + scoring_cpu,
        "selection_seconds_each": select_times,
        "selection_digests": digests,
        "config": {
            "kind": spec.kind, "psp_width": spec.psp_width, "lam": spec.lam,
            "margin_mode": spec.margin_mode, "class_balance": spec.class_balance,
            "interval_epochs": spec.interval_epochs, "warmup_epochs": spec.warmup_epochs,
            "ratio_schedule": spec.ratio_schedule, "staleness": spec.staleness,
            "psp_batch_fraction": spec.psp_batch_fraction, "distill": spec.distill,
            **({"pipeline_lead_epochs": PIPE_LEAD} if spec.staleness == "pipelined" else {}),
            "batch_size": cfg.batch_size, "lr": cfg.lr,
            "momentum": cfg.momentum, "weight_decay": cfg.weight_decay, "nesterov": True,
            "schedule": "cosine over optimizer steps" if spec.kind != "infobatch"
            else "cosine over epoch progress",
            **({"infobatch_prune": cfg.infobatch_prune, "infobatch_anneal_from": anneal_from}
               if spec.kind == "infobatch" else {}),
            "score_batch_size": cfg.score_batch_size or "score() default",
            **cfg.extra,
        },
        "torch_threads": torch.get_num_threads(),
        "host": platform.node(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def _infobatch_subset(prev_loss: torch.Tensor, cfg: RunConfig, epoch: int,
                      anneal_from: int) -> tuple[torch.Tensor, torch.Tensor]:
    """InfoBatch-style soft pruning: drop ``r`` of the below-mean-loss samples at random and
    up-weight the kept ones by 1/(1-r); full data on the first epoch and in the anneal."""
    n = len(prev_loss)
    weights = torch.ones(n)
    known = ~torch.isnan(prev_loss)
    if epoch == 0 or epoch >= anneal_from or not bool(known.any()):
        return torch.arange(n), weights
    mean = prev_loss[known].mean()
    well_learned = known & (prev_loss < mean)
    draw = torch.rand(n, generator=_generator(cfg.seed, epoch, 3))
    pruned = well_learned & (draw < cfg.infobatch_prune)
    weights[well_learned & ~pruned] = 1.0 / (1.0 - cfg.infobatch_prune)
    keep = torch.nonzero(~pruned).squeeze(1)
    return keep, weights[keep]


# --- compute matching ------------------------------------------------------------------


def compute_matched_ratio(records: Sequence[dict[str, Any]], ratio: float, epochs: int,
                          max_samples: int | None, num_train: int,
                          warmup: int = 1) -> tuple[float, dict[str, Any]] | None:
    """Uniform subset ratio whose train seconds ≈ dynams-psp-0.25's total compute.

    Uses process CPU seconds (train + scoring), which another process's load on a shared
    CPU barely moves, unlike wall seconds; CPU seconds per sample-iteration come from the
    plain ``uniform`` runs at the same setting, pooled over seeds. None if either
    reference is missing.
    """
    same = [r for r in records if r["ratio"] == ratio and r["epochs"] == epochs
            and r.get("max_samples") == max_samples]
    psp = [r for r in same if r["method"] == "dynams-psp-0.25"]
    uni = [r for r in same if r["method"] == "uniform"]
    if not psp or not uni:
        return None
    sec_per_iter = (sum(r["train_cpu_seconds"] for r in uni)
                    / sum(r["sample_iterations"] for r in uni))
    target_compute = statistics.mean(r["total_compute_cpu_seconds"] for r in psp)
    target_iters = target_compute / sec_per_iter
    subset = (target_iters / num_train - warmup) / max(epochs - warmup, 1)
    subset = float(min(1.0, max(subset, 1.0 / num_train)))
    return subset, {"matched_to": "dynams-psp-0.25",
                    "target_compute_cpu_seconds": target_compute,
                    "uniform_cpu_seconds_per_sample_iteration": sec_per_iter,
                    "matched_ratio": subset}


# --- results store, table and plots ----------------------------------------------------


def record_key(r: dict[str, Any]) -> tuple:
    return (r["method"], r["ratio"], r["seed"], r["epochs"], r.get("max_samples"))


def load_results(out: Path) -> list[dict[str, Any]]:
    path = out / "quality.json"
    return json.loads(path.read_text()) if path.exists() else []


def save_result(out: Path, record: dict[str, Any]) -> list[dict[str, Any]]:
    """Merge one record into ``quality.json`` (re-read first; atomic replace) and return all."""
    records = [r for r in load_results(out) if record_key(r) != record_key(record)]
    records.append(record)
    _atomic_write(out / "quality.json", json.dumps(records, indent=1))
    return records


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _method_rank(name: str) -> tuple[int, str]:
    bases = (*MAIN_METHODS, "dynams-psp-0.5", "uniform-psp-0.5")
    return (bases.index(name) if name in bases else len(bases), name)


def summarise(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Group runs by (max_samples, epochs, ratio, method) with mean ± std over seeds."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r.get("max_samples"), r["epochs"], r["ratio"], r["method"]),
                          []).append(r)

    def order(k: tuple) -> tuple:
        ms, ep, ratio, method = k
        return (ms or 10**9, ep, 0.99 if ratio is None else ratio, _method_rank(method))

    rows = []
    for key in sorted(groups, key=order):
        runs = groups[key]
        fin = _mean_std([r["final_accuracy"] for r in runs])
        best = _mean_std([r["best_accuracy"] for r in runs])
        rows.append({
            "max_samples": key[0], "epochs": key[1], "ratio": key[2], "method": key[3],
            "seeds": sorted(r["seed"] for r in runs), "final_mean": fin[0], "final_std": fin[1],
            "best_mean": best[0], "best_std": best[1],
            "fraction_trained": statistics.mean(r["fraction_trained"] for r in runs),
            "subset_ratio": statistics.mean(r["subset_ratio"] for r in runs)
            if all(r.get("subset_ratio") is not None for r in runs) else None,
            "train_seconds": statistics.mean(r["train_seconds"] for r in runs),
            "scoring_seconds": statistics.mean(r["scoring_seconds"] for r in runs),
            "total_compute_seconds": statistics.mean(r["total_compute_seconds"] for r in runs),
            "total_compute_cpu_seconds": statistics.mean(
                r.get("total_compute_cpu_seconds", math.nan) for r in runs),
        })
    return rows


def write_markdown(out: Path, records: Sequence[dict[str, Any]],
                   psp_cost: dict[str, dict[str, Any]] | None = None) -> None:
    """``quality.md``: one table per (train samples, epochs) setting, plus the PSP cost."""
    rows = summarise(records)
    lines = ["# Quality benchmark (Fashion-MNIST, fmnist-cnn)", "",
             "Final test accuracy is the headline (mean ± std over seeds, %); best-epoch "
             "accuracy is secondary. Fraction = sample-iterations trained / full data "
             "(warm-up included). Train s = trainer only; total = train + scoring "
             "(proxy export, scoring, selection), wall seconds; CPU s = the same in process "
             "CPU seconds, which load from other processes on a shared CPU barely moves "
             "(compute matching uses it). Generated by `benchmarks/quality.py`.", ""]
    settings = sorted({(r["max_samples"], r["epochs"]) for r in rows},
                      key=lambda s: (s[0] or 10**9, s[1]))
    for ms, ep in settings:
        lines += [f"## {ms or 'all'} training samples, {ep} epochs", "",
                  "| method | ratio | seeds | final acc % | best acc % | fraction | "
                  "train s | scoring s | total compute s | total CPU s |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            if (r["max_samples"], r["epochs"]) != (ms, ep):
                continue
            ratio = "—" if r["ratio"] is None else f"{r['ratio']:g}"
            if r["subset_ratio"] is not None and r["ratio"] is not None \
                    and abs(r["subset_ratio"] - r["ratio"]) > 1e-9:
                ratio += f" (ran {r['subset_ratio']:.3f})"
            lines.append(
                f"| {r['method']} | {ratio} | {len(r['seeds'])} | "
                f"{100 * r['final_mean']:.2f} ± {100 * r['final_std']:.2f} | "
                f"{100 * r['best_mean']:.2f} ± {100 * r['best_std']:.2f} | "
                f"{r['fraction_trained']:.3f} | {r['train_seconds']:.1f} | "
                f"{r['scoring_seconds']:.1f} | {r['total_compute_seconds']:.1f} | "
                f"{r['total_compute_cpu_seconds']:.1f} |")
        lines += ["", *_paired_lines([r for r in records if r.get("max_samples") == ms
                                      and r["epochs"] == ep]), ""]
    lines += _sweep_lines(records) + _length_lines(records)
    effects = [(ms, ep, knob_effects(records, ms, ep)) for ms, ep in settings]
    for ms, ep, eff in effects:
        if eff:
            lines += [f"## Knob effects ({ms or 'all'} samples, {ep} epochs, r = 0.3)", "",
                      f"Final accuracy minus {DEFAULT_DYNAMS}'s, paired by seed, largest first "
                      "(warm-up knobs also change the data budget):", "",
                      "| ablation | effect (points) | seeds |", "|---|---|---|",
                      *[f"| {m} | {mean:+.2f} ± {std:.2f} | {n} |" for m, mean, std, n in eff],
                      ""]
    if psp_cost:
        lines += ["## PSP cost", ""]
        for measurement in psp_cost.values():
            lines += [*psp_cost_lines(measurement), ""]
    _atomic_write(out / "quality.md", "\n".join(lines))


def _paired(records: Sequence[dict[str, Any]], method: str, ratio: float | None, ref: str,
            ref_ratio: float | None) -> tuple[float, float, int] | None:
    """Mean ± std (points) of per-seed final-accuracy differences ``method − ref``."""
    ref_acc = {r["seed"]: r["final_accuracy"] for r in records
               if r["method"] == ref and r["ratio"] == ref_ratio}
    diffs = [100 * (r["final_accuracy"] - ref_acc[r["seed"]]) for r in records
             if r["method"] == method and r["ratio"] == ratio and r["seed"] in ref_acc]
    return (*_mean_std(diffs), len(diffs)) if diffs else None


def _acc_cell(records: Sequence[dict[str, Any]], method: str, ratio: float | None) -> str:
    accs = [100 * r["final_accuracy"] for r in records
            if r["method"] == method and r["ratio"] == ratio]
    if not accs:
        return "—"
    mean, std = _mean_std(accs)
    return f"{mean:.2f} ± {std:.2f}"


def _diff_cell(d: tuple[float, float, int] | None) -> str:
    return "—" if d is None else f"{d[0]:+.2f} ± {d[1]:.2f} (n={d[2]})"


def _sweep_lines(records: Sequence[dict[str, Any]]) -> list[str]:
    """Per setting, DynaMS against uniform at each ratio: at equal data and equal compute."""
    lines: list[str] = []
    settings = sorted({(r.get("max_samples"), r["epochs"]) for r in records},
                      key=lambda s: (s[0] or 10**9, s[1]))
    for ms, ep in settings:
        runs = [r for r in records if r.get("max_samples") == ms and r["epochs"] == ep]
        ratios = sorted({r["ratio"] for r in runs if r["method"] == DEFAULT_DYNAMS})
        if len(ratios) < 2:
            continue
        lines += [f"## Ratio sweep ({ms or 'all'} samples, {ep} epochs)", "",
                  f"| r | fraction | uniform | {DEFAULT_DYNAMS} | vs uniform (equal data) | "
                  "uniform at equal compute (ran r) | vs it (equal compute) |",
                  "|---|---|---|---|---|---|---|"]
        for ratio in ratios:
            vs_matched = _paired(runs, DEFAULT_DYNAMS, ratio, "uniform-compute-matched", ratio)
            frac = statistics.mean(r["fraction_trained"] for r in runs
                                   if r["method"] == DEFAULT_DYNAMS and r["ratio"] == ratio)
            matched = [r["subset_ratio"] for r in runs
                       if r["method"] == "uniform-compute-matched" and r["ratio"] == ratio]
            ran = f" ({statistics.mean(matched):.3f})" if matched else ""
            lines.append(
                f"| {ratio:g} | {frac:.3f} | {_acc_cell(runs, 'uniform', ratio)} | "
                f"{_acc_cell(runs, DEFAULT_DYNAMS, ratio)} | "
                f"{_diff_cell(_paired(runs, DEFAULT_DYNAMS, ratio, 'uniform', ratio))} | "
                f"{_acc_cell(runs, 'uniform-compute-matched', ratio)}{ran} | "
                f"{_diff_cell(vs_matched)} |")
        lines.append("")
    return lines


def _length_lines(records: Sequence[dict[str, Any]], ratio: float = 0.3) -> list[str]:
    """The gap to full data as training gets longer, at ``ratio``."""
    by_setting: dict[tuple, list[dict[str, Any]]] = {}
    for r in records:
        by_setting.setdefault((r.get("max_samples"), r["epochs"]), []).append(r)
    rows = []
    for (ms, ep), runs in sorted(by_setting.items(), key=lambda kv: (kv[0][0] or 10**9,
                                                                      kv[0][1])):
        if not any(r["method"] == "full" for r in runs) or not any(
                r["method"] == DEFAULT_DYNAMS and r["ratio"] == ratio for r in runs):
            continue
        rows.append(
            f"| {ms or 'all'} | {ep} | {_acc_cell(runs, 'full', 1.0)} | "
            f"{_acc_cell(runs, 'uniform', ratio)} | {_acc_cell(runs, DEFAULT_DYNAMS, ratio)} | "
            f"{_diff_cell(_paired(runs, DEFAULT_DYNAMS, ratio, 'full', 1.0))} | "
            f"{_diff_cell(_paired(runs, 'uniform', ratio, 'full', 1.0))} |")
    if len(rows) < 2:
        return []
    return [f"## Training length (r = {ratio:g})", "",
            f"| samples | epochs | full | uniform | {DEFAULT_DYNAMS} | {DEFAULT_DYNAMS} − full | "
            "uniform − full |", "|---|---|---|---|---|---|---|", *rows, ""]


def _paired_lines(records: Sequence[dict[str, Any]]) -> list[str]:
    """Per-seed differences in final accuracy against ``uniform`` at the same ratio, against
    ``full`` and against the default DynaMS (``DEFAULT_DYNAMS``, so an ablation reads as its
    knob's effect): same seed means same init and warm-up, so pairs cancel seed noise."""
    lines = ["Paired by seed (final accuracy, points; mean ± std of per-seed differences):", "",
             f"| method | ratio | vs uniform | vs full | vs {DEFAULT_DYNAMS} | seeds |",
             "|---|---|---|---|---|---|"]
    methods = sorted({(r["method"], r["ratio"]) for r in records
                      if r["method"] not in ("full", "uniform")},
                     key=lambda m: (m[1] if m[1] is not None else 0.99, _method_rank(m[0])))
    for method, ratio in methods:
        runs = [r for r in records if r["method"] == method and r["ratio"] == ratio]
        cells = [_diff_cell(None if ref == method
                            else _paired(records, method, ratio, ref, ref_ratio))
                 for ref, ref_ratio in (("uniform", ratio), ("full", 1.0),
                                        (DEFAULT_DYNAMS, ratio))]
        ratio_text = "—" if ratio is None else f"{ratio:g}"
        lines.append(f"| {method} | {ratio_text} | {' | '.join(cells)} | {len(runs)} |")
    return lines


def write_plots(out: Path, records: Sequence[dict[str, Any]], max_samples: int | None,
                epochs: int) -> list[Path]:
    """Accuracy vs fraction of data and vs total compute seconds for one setting (PNG, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in summarise(records)
            if r["max_samples"] == max_samples and r["epochs"] == epochs
            and r["method"] in PLOTTED_METHODS]
    if not rows:
        return []
    paths = [p for p in [_ablation_plot(out, records, max_samples, epochs)] if p]
    for x_key, label, fname in (
        ("fraction_trained", "fraction of data trained (sample-iterations / full)",
         "quality_accuracy_vs_fraction.png"),
        ("total_compute_seconds", "total compute, wall seconds (train + scoring)",
         "quality_accuracy_vs_compute.png"),
        ("total_compute_cpu_seconds", "total compute, process CPU seconds (train + scoring)",
         "quality_accuracy_vs_compute_cpu.png"),
    ):
        fig, ax = plt.subplots(figsize=(8, 5.5))
        by_method: dict[str, list[dict[str, Any]]] = {}
        for r in rows:
            by_method.setdefault(r["method"], []).append(r)
        for method in sorted(by_method, key=_method_rank):
            pts = sorted(by_method[method], key=lambda r: r[x_key])
            ax.errorbar([p[x_key] for p in pts], [100 * p["final_mean"] for p in pts],
                        yerr=[100 * p["final_std"] for p in pts], marker="o", capsize=3,
                        label=method, linestyle="-" if len(pts) > 1 else "none")
        ax.set_xlabel(label)
        ax.set_ylabel("final test accuracy (%)")
        ax.set_title(f"Fashion-MNIST fmnist-cnn, {max_samples or 'all'} train samples, "
                     f"{epochs} epochs (mean ± std over seeds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
        fig.tight_layout()
        path = out / fname
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def knob_effects(records: Sequence[dict[str, Any]], max_samples: int | None, epochs: int,
                 ratio: float = 0.3) -> list[tuple[str, float, float, int]]:
    """(method, mean, std, n) of per-seed final-accuracy differences (points) between each
    ``DEFAULT_DYNAMS-…`` ablation and the default, largest effect first."""
    runs = [r for r in records if r.get("max_samples") == max_samples
            and r["epochs"] == epochs and r["ratio"] == ratio]
    effects = []
    for method in sorted({r["method"] for r in runs}):
        if method == DEFAULT_DYNAMS or not method.startswith("dynams-psp-"):
            continue
        diff = _paired(runs, method, ratio, DEFAULT_DYNAMS, ratio)
        if diff is not None:
            effects.append((method, *diff))
    return sorted(effects, key=lambda e: -abs(e[1]))


def _ablation_plot(out: Path, records: Sequence[dict[str, Any]], max_samples: int | None,
                   epochs: int) -> Path | None:
    """Bar chart of each knob's paired effect on final accuracy against the default."""
    import matplotlib.pyplot as plt

    effects = knob_effects(records, max_samples, epochs)
    if not effects:
        return None
    effects = effects[::-1]  # largest at the top
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(effects) + 1.5))
    ax.barh([e[0].removeprefix(DEFAULT_DYNAMS) or e[0] for e in effects],
            [e[1] for e in effects], xerr=[e[2] for e in effects], capsize=3,
            color=["tab:green" if e[1] > 0 else "tab:red" for e in effects])
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel(f"final accuracy vs {DEFAULT_DYNAMS} (points, paired by seed, mean ± std)")
    ax.set_title(f"Knob ablations at r = 0.3, {max_samples or 'all'} samples, {epochs} epochs")
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    path = out / "quality_ablations.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --- PSP cost --------------------------------------------------------------------------


def measure_psp_cost(data: Data, steps: int, batch_size: int, seed: int,
                     score_repeats: int = 3, epoch_measure: bool = True,
                     profile: bool = True, warmup: int = 5) -> dict[str, Any]:
    """Median step time of plain vs joint (α = 0.25, 0.5) training, interleaved step by step
    so that load from other processes hits every variant alike; the standalone α-proxy's
    own step (the ideal joint overhead); and scoring all training samples with the α=0.25
    proxy (and the full model) against one full-data training epoch."""
    torch.manual_seed(seed)
    model = dms.build_architecture(ARCHITECTURE).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True,
                          weight_decay=5e-4)
    proxies = {w: model.make_proxy(w).train() for w in (0.25, 0.5)}
    proxy_opts = {w: torch.optim.SGD(p.parameters(), lr=0.01, momentum=0.9)
                  for w, p in proxies.items()}
    gen = _generator(seed, 99)
    n = data.num_train
    variants = ["plain", "joint-0.25", "joint-0.5", "joint-0.25-bf0.5", "joint-0.25-bf0.25",
                "proxy-only-0.25", "proxy-only-0.5"]
    times: dict[str, list[float]] = {v: [] for v in variants}
    cpu: dict[str, list[float]] = {v: [] for v in variants}
    for i in range(warmup + steps):
        rot = i % len(variants)
        for v in variants[rot:] + variants[:rot]:
            idx = torch.randint(n, (batch_size,), generator=gen)
            x, y = data.x_train[idx], data.y_train[idx]
            t0, c0 = time.perf_counter(), time.process_time()
            if v.startswith("proxy-only"):
                w = float(v.rsplit("-", 1)[1])
                loss = F.cross_entropy(proxies[w](x), y)
                proxy_opts[w].zero_grad(set_to_none=True)
                loss.backward()
                proxy_opts[w].step()
            else:
                loss = F.cross_entropy(model(x), y)
                if v.startswith("joint"):  # -bf<f>: the PSP loss on that share of the batch
                    k = (round(batch_size * float(v.split("-bf")[1])) if "-bf" in v
                         else batch_size)
                    loss = loss + F.cross_entropy(
                        model(x[:k], width=float(v.split("-")[1])), y[:k])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            if i >= warmup:
                times[v].append(time.perf_counter() - t0)
                cpu[v].append(time.process_time() - c0)
    med = {v: statistics.median(t) for v, t in times.items()}
    result: dict[str, Any] = {
        "num_train": n, "batch_size": batch_size, "steps_per_variant": steps,
        "torch_threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "step_ms_median": {v: 1e3 * m for v, m in med.items()},
        "step_cpu_ms_median": {v: 1e3 * statistics.median(t) for v, t in cpu.items()},
        "step_ms_p25_p75": {v: [1e3 * float(np.percentile(t, 25)),
                                1e3 * float(np.percentile(t, 75))] for v, t in times.items()},
        "joint_overhead_pct": {w: 100 * (med[f"joint-{w}"] / med["plain"] - 1)
                               for w in ("0.25", "0.5", "0.25-bf0.5", "0.25-bf0.25")},
        "ideal_overhead_pct": {w: 100 * med[f"proxy-only-{w}"] / med["plain"]
                               for w in ("0.25", "0.5")},
    }
    epoch_steps = _steps(n, batch_size)
    result["epoch_seconds_from_median_step"] = med["plain"] * epoch_steps
    if epoch_measure:
        t0 = time.perf_counter()
        order = torch.randperm(n, generator=_generator(seed, 98))
        for b in range(epoch_steps):
            idx = order[b * batch_size:(b + 1) * batch_size]
            loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        result["epoch_seconds_measured"] = time.perf_counter() - t0
    epoch_s = result.get("epoch_seconds_measured", result["epoch_seconds_from_median_step"])
    score_times = []
    for _ in range(score_repeats):
        t0 = time.perf_counter()
        proxy = build_proxy(ARCHITECTURE, 0.25, export_psp(model, 0.25))
        dms.score(proxy, data.x_train, data.y_train)
        score_times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    dms.score(model, data.x_train, data.y_train, width=1.0)
    full_score = time.perf_counter() - t0
    result.update({
        "score_proxy_0.25_seconds": statistics.median(score_times),
        "score_full_model_seconds": full_score,
        "score_proxy_0.25_pct_of_epoch": 100 * statistics.median(score_times) / epoch_s,
        "score_full_model_pct_of_epoch": 100 * full_score / epoch_s,
        "epoch_seconds_used": epoch_s,
    })
    if profile:
        result["profile_joint_0.5_top_ops"] = _profile_joint(model, opt, data, batch_size, gen)
    return result


def _profile_joint(model: dms.SlimmableModel, opt: torch.optim.Optimizer, data: Data,
                   batch_size: int, gen: torch.Generator, steps: int = 5) -> list[str]:
    """Top ops by self CPU time over a few joint α=0.5 steps (where slimmable cost shows)."""
    from torch.profiler import ProfilerActivity, profile

    idx = torch.randint(data.num_train, (batch_size,), generator=gen)
    x, y = data.x_train[idx], data.y_train[idx]
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            loss = F.cross_entropy(model(x), y) + F.cross_entropy(model(x, width=0.5), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12)
    return table.splitlines()


def psp_cost_lines(c: dict[str, Any]) -> list[str]:
    """Human-readable PSP cost summary against its targets (joint step and scoring ≤ 10 %)."""
    s = c["step_ms_median"]
    cs = c["step_cpu_ms_median"]
    o = c["joint_overhead_pct"]
    ideal = c["ideal_overhead_pct"]
    return [
        f"- step (batch {c['batch_size']}, median of {c['steps_per_variant']} interleaved "
        f"steps, {c['torch_threads']} threads): plain {s['plain']:.1f} ms, joint α=0.25 "
        f"{s['joint-0.25']:.1f} ms (+{o['0.25']:.1f} %, target ≤ 10 %; a standalone "
        f"α-proxy step is {ideal['0.25']:.1f} % of plain), joint α=0.5 {s['joint-0.5']:.1f} ms "
        f"(+{o['0.5']:.1f} %; standalone {ideal['0.5']:.1f} %)"
        + "".join(f", joint α=0.25 with the PSP loss on {f} of each batch "
                  f"{s[f'joint-0.25-bf{f}']:.1f} ms (+{o[f'0.25-bf{f}']:.1f} %)"
                  for f in ("0.5", "0.25") if f"joint-0.25-bf{f}" in s)
        + f"; in CPU ms: plain "
        f"{cs['plain']:.1f}, joint α=0.25 {cs['joint-0.25']:.1f} "
        f"(+{100 * (cs['joint-0.25'] / cs['plain'] - 1):.1f} %), joint α=0.5 "
        f"{cs['joint-0.5']:.1f} (+{100 * (cs['joint-0.5'] / cs['plain'] - 1):.1f} %)",
        f"- scoring {c['num_train']} samples with the α=0.25 proxy (export + rebuild + score): "
        f"{c['score_proxy_0.25_seconds']:.2f} s = {c['score_proxy_0.25_pct_of_epoch']:.1f} % "
        f"of a full-data epoch ({c['epoch_seconds_used']:.1f} s; target ≤ 10 %); with the "
        f"full model: {c['score_full_model_seconds']:.2f} s = "
        f"{c['score_full_model_pct_of_epoch']:.1f} %",
    ]


# --- driver ----------------------------------------------------------------------------


def _parse_seeds(text: str) -> list[int]:
    """``"3"`` → seeds 0, 1, 2 (a count); ``"0,4,7"`` → those seeds."""
    if "," in text:
        return [int(s) for s in text.split(",") if s.strip()]
    return list(range(int(text)))


def _parse_list(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=os.environ.get("DYNAMS_FASHION_MNIST_DIR",
                                                        DEFAULT_DATA_DIR))
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--ratios", default="0.3", help="comma list of subset ratios")
    p.add_argument("--methods", default=None,
                   help=f"comma list (default: {','.join(MAIN_METHODS)})")
    p.add_argument("--ablations", action="store_true",
                   help=f"add the knob ablations: {','.join(ABLATION_METHODS)}")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seeds", default="3", help="a count (0..N-1) or a comma list of seeds")
    p.add_argument("--max-samples", type=int, default=None, help="train on the first N samples")
    p.add_argument("--max-test", type=int, default=None, help="evaluate on the first N samples")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--lam", type=float, default=1.0, help="PSP loss weight λ (default 1)")
    p.add_argument("--infobatch-prune", type=float, default=0.5,
                   help="fraction of below-mean-loss samples InfoBatch drops each epoch")
    p.add_argument("--threads", type=int, default=2, help="torch threads (at most 2 here)")
    p.add_argument("--eval-every", type=int, default=1,
                   help="test accuracy every N epochs (always after the last)")
    p.add_argument("--score-batch-size", type=int, default=None,
                   help="batch size for margin scoring (default: dms.score's default)")
    p.add_argument("--force", action="store_true", help="rerun keys already in quality.json")
    p.add_argument("--psp-cost", action="store_true",
                   help="measure the PSP step and scoring cost (psp_cost.json) and exit")
    p.add_argument("--psp-steps", type=int, default=60)
    p.add_argument("--report", action="store_true",
                   help="only rebuild quality.md and the plots from the stored results")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 1k train, 1k test, 3 epochs, 1 seed, "
                        f"{QUICK_METHODS}, plus a tiny PSP cost measurement")
    return p


def run_quality(args: argparse.Namespace, data: Data) -> list[dict[str, Any]]:
    """Run every (ratio, seed, method) not already stored, saving after each run."""
    names = _parse_list(args.methods) if args.methods else list(MAIN_METHODS)
    if args.ablations:
        names += [m for m in ABLATION_METHODS if m not in names]
    specs = [parse_method(n, args.lam) for n in names]
    # compute-matched needs its references first
    specs.sort(key=lambda s: s.kind == "uniform-compute-matched")
    if any(s.kind == "uniform-compute-matched" for s in specs):
        for ref in ("uniform", "dynams-psp-0.25"):
            if ref not in names:
                specs.insert(0, parse_method(ref, args.lam))
    ratios = [float(r) for r in _parse_list(args.ratios)]
    seeds = _parse_seeds(args.seeds)
    records = load_results(args.out)
    done = {record_key(r) for r in records}
    for ratio in ratios:
        for seed in seeds:
            for spec in specs:
                run_ratio = None if spec.kind == "infobatch" else (
                    1.0 if spec.kind == "full" else ratio)
                if spec.kind == "infobatch" and spec.name == "infobatch" \
                        and args.infobatch_prune != 0.5:
                    spec = dataclasses.replace(spec, name=f"infobatch-p{args.infobatch_prune:g}")
                key = (spec.name, run_ratio, seed, args.epochs, args.max_samples)
                if key in done and not args.force:
                    continue
                cfg = RunConfig(method=spec, ratio=run_ratio, seed=seed, epochs=args.epochs,
                                max_samples=args.max_samples, batch_size=args.batch_size,
                                lr=args.lr, infobatch_prune=args.infobatch_prune,
                                score_batch_size=args.score_batch_size,
                                eval_every=args.eval_every)
                if spec.kind == "uniform-compute-matched":
                    matched = compute_matched_ratio(records, ratio, args.epochs,
                                                    args.max_samples, data.num_train)
                    if matched is None:
                        print(f"skip {spec.name} r={ratio} seed={seed}: no reference runs")
                        continue
                    cfg.subset_ratio, cfg.extra = matched
                print(f"run {spec.name} ratio={run_ratio} seed={seed} epochs={args.epochs} "
                      f"n={data.num_train}", flush=True)
                record = train_run(cfg, data)
                records = save_result(args.out, record)
                done.add(key)
                print(f"done {spec.name} ratio={run_ratio} seed={seed}: final "
                      f"{record['final_accuracy']:.4f} best {record['best_accuracy']:.4f} "
                      f"fraction {record['fraction_trained']:.3f} train "
                      f"{record['train_seconds']:.1f}s scoring {record['scoring_seconds']:.1f}s",
                      flush=True)
                if not args.quick:  # long sweeps: keep the table and plots current
                    write_markdown(args.out, records, _load_psp_cost(args.out))
                    write_plots(args.out, records, args.max_samples, args.epochs)
    return records


def _load_psp_cost(out: Path) -> dict[str, Any] | None:
    """Stored PSP cost measurements, keyed ``threads=N``."""
    path = out / "psp_cost.json"
    return json.loads(path.read_text()) if path.exists() else None


def main(argv: Iterable[str] | None = None) -> int:
    args = build_parser().parse_args(None if argv is None else list(argv))
    if args.quick:
        args.max_samples = args.max_samples or 1000
        args.max_test = args.max_test or 1000
        args.epochs = 3 if args.epochs == 10 else args.epochs
        args.seeds = "1" if args.seeds == "3" else args.seeds
        args.psp_steps = min(args.psp_steps, 4)
        args.methods = args.methods or QUICK_METHODS
    torch.set_num_threads(max(1, min(args.threads, 2)))
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if args.report:
        records = load_results(args.out)
        write_markdown(args.out, records, _load_psp_cost(args.out))
        write_plots(args.out, records, args.max_samples, args.epochs)
        return 0
    if args.psp_cost or args.quick:
        data = load_data(args.data_dir, args.max_samples, 1)
        cost = measure_psp_cost(data, args.psp_steps, args.batch_size, seed=0,
                                score_repeats=1 if args.quick else 3,
                                epoch_measure=not args.quick, profile=not args.quick,
                                warmup=1 if args.quick else 5)
        costs = _load_psp_cost(args.out) or {}
        costs[f"threads={torch.get_num_threads()}"] = cost
        _atomic_write(args.out / "psp_cost.json", json.dumps(costs, indent=1))
        print("\n".join(psp_cost_lines(cost)))
        if "profile_joint_0.5_top_ops" in cost:
            print("\n".join(cost["profile_joint_0.5_top_ops"]))
        write_markdown(args.out, load_results(args.out), costs)
        if args.psp_cost:
            return 0
    data = load_data(args.data_dir, args.max_samples, args.max_test)
    records = run_quality(args, data)
    write_markdown(args.out, records, _load_psp_cost(args.out))
    write_plots(args.out, records, args.max_samples, args.epochs)
    print(f"wrote {args.out}/quality.json, quality.md and plots "
          f"({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
