"""Quality benchmark: DynaMS against full data, uniform, static margin and InfoBatch.

Trains the slimmable ``fmnist-cnn`` on Fashion-MNIST in-process, driving the core directly
(the same ``score``/``select``/``SelectionPolicy``/PSP code the selector service uses), with
one optimizer and the same number of optimizer steps for every subset method at a ratio
(the plan fixes every epoch's size up front, so the cosine LR schedule is sized from it).

Every run reports its cost: ``fraction_trained`` (sample-iterations / full data),
``train_seconds`` (the trainer only), ``scoring_seconds`` (proxy export, scoring, selection),
``total_compute_seconds`` (their sum) and ``wall_seconds`` (also test evaluation).

Examples::

    .venv/bin/python benchmarks/quality.py --quick                       # < 1 min smoke run
    .venv/bin/python benchmarks/quality.py --psp-cost                    # PSP step/scoring cost
    .venv/bin/python benchmarks/quality.py --ratios 0.3 --epochs 8 --seeds 3 --max-samples 20000
    .venv/bin/python benchmarks/quality.py --ratios 0.1,0.2,0.5 --methods uniform,dynams-psp-0.25
    .venv/bin/python benchmarks/quality.py --ablations --epochs 8 --max-samples 20000
    .venv/bin/python benchmarks/quality.py --long-tail 50 --epochs 20 --methods uniform,full

Every run also records selection diagnostics (``selection_diagnostics``: churn between
rounds, the share of each selection the final model still gets wrong, the share of flipped
labels under ``--label-noise``, the class mix), tabulated in ``quality.md``.

Results accumulate in ``--out``/quality.json keyed by (method, ratio, seed, epochs,
max_samples, label_noise, long_tail); a key already there is skipped unless ``--force``, so an
interrupted sweep resumes where it stopped. ``quality.md`` and the PNG plots are rebuilt
after every run. ``--out`` defaults to ``benchmarks/results`` (``--label-noise P``:
``benchmarks/results/label-noise-P``); a ``--quick`` smoke run never writes there and,
without ``--out``, writes to a new ``runs/quality-quick-*`` directory (gitignored).

Method names: ``full``, ``uniform``, ``static-margin``, ``infobatch``, ``dynams-full-proxy``,
``dynams-psp-<α>``, ``uniform-psp-<α>``, ``uniform-compute-matched``; knob suffixes make
ablations: ``-signed``, ``-global``, ``-int<N>`` (interval), ``-warm<N>`` (warm-up),
``-power`` (power ratio schedule), ``-lam<λ>`` (PSP loss weight), ``-bf<f>`` (PSP loss on
the first f of each batch), ``-distill`` (PSP distilled from the full model's outputs),
``-pipe`` (pipelined staleness: margins from weights a quarter epoch old), scores
``-signed``/``-loss``/``-el2n``, selection rules ``-exp<e>`` (explore share) with
``-rw``/``-rwn`` (InfoBatch-style loss weights: inverse / normalized; needs ``-global``),
``-ccs<S>`` and ``-cp<β>`` (coverage strata and pruned share; needs ``-global``), ``-ann<N>`` (N
full-data anneal epochs) and ``-ev<k>`` (the PSP loss on every k-th step), e.g.
``dynams-psp-0.25-signed``, ``dynams-psp-0.25-global-exp0.2`` or ``uniform-warm3``. Each
base kind chooses its epochs' samples in one small function (``CHOOSERS``); names are
parsed in ``quality_methods.py``, and the tables and plots are written by
``quality_report.py``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import fcntl
import hashlib
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# On a shared CPU, OpenMP's default busy-waiting makes every torch op wait on preempted
# spinning threads (measured here: 2-thread steps 3-5x slower under load); passive waits
# keep steps near their unloaded time. Must be set before torch loads its OpenMP runtime
# (only when run as a script, so importing this module changes no one else's environment).
if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks.* as a script too

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import dynams_service as dms  # noqa: E402
from benchmarks.quality_methods import (  # noqa: E402
    ABLATION_METHODS,
    ARCHITECTURE,
    MAIN_METHODS,
    QUICK_METHODS,
    MethodSpec,
    parse_method,
)
from benchmarks.quality_record import RunRecord  # noqa: E402
from benchmarks.quality_report import (  # noqa: E402
    atomic_write,
    psp_cost_lines,
    write_frontier_plots,
    write_markdown,
    write_plots,
)
from dynams_service.client.joint_training import JointPSP, psp_loss  # noqa: E402
from dynams_service.client.loss_weights import weighted_loss  # noqa: E402
from dynams_service.core.data.idx import load_idx_split  # noqa: E402
from dynams_service.core.models.proxy import build_proxy, export_psp  # noqa: E402
from dynams_service.core.selection.policy import EpochKind, EpochPlan, Plan  # noqa: E402
from dynams_service.core.selection.selection_rules import round_seed, rule_select_rows  # noqa: E402

DEFAULT_DATA_DIR = "/usr/share/datasets/fashion-mnist"
DEFAULT_OUT = Path(__file__).resolve().parent / "results"
QUICK_RUNS = Path(__file__).resolve().parents[1] / "runs"  # gitignored
MEAN, STD = 0.2860, 0.3530
PIPE_LEAD = 0.25  # pipelined runs snapshot the weights this fraction of an epoch early


# --- data ------------------------------------------------------------------------------


@dataclass
class Data:
    """Normalised train/test tensors held in memory (N, 1, 28, 28) float32 and int64 labels."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    flipped: torch.Tensor | None = None  # bool (N,): labels changed by --label-noise

    @property
    def num_train(self) -> int:
        return len(self.y_train)


NOISE_SEED = 20231  # one fixed noisy training set for every method and seed (paired runs)


def load_data(data_dir: str, max_samples: int | None, max_test: int | None,
              label_noise: float = 0.0, long_tail: float = 0.0) -> Data:
    """Fashion-MNIST from IDX files, the first ``max_samples``/``max_test`` rows, normalised.
    ``label_noise``: that share of training labels (the test set stays clean) flipped to
    another class drawn uniformly (symmetric noise), the same flips for every run.
    ``long_tail``: class sizes decay geometrically to 1/``long_tail`` of the largest
    (:func:`long_tail_rows`); the test set stays balanced."""

    def prep(split: str, limit: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = load_idx_split(data_dir, split)
        if limit is not None:
            images, labels = images[:limit], labels[:limit]
        x = torch.from_numpy(images.astype(np.float32)).unsqueeze(1).div_(255)
        return x.sub_(MEAN).div_(STD).contiguous(), torch.from_numpy(labels.copy())

    x_train, y_train = prep("train", max_samples)
    x_test, y_test = prep("test", max_test)
    if long_tail:
        rows = long_tail_rows(y_train, long_tail, num_classes=10)
        x_train, y_train = x_train[rows].contiguous(), y_train[rows].contiguous()
    flipped = None
    if label_noise:
        noisy = flip_labels(y_train, label_noise, num_classes=10)
        flipped = noisy != y_train
        y_train = noisy
    return Data(x_train, y_train, x_test, y_test, flipped)


def long_tail_rows(labels: torch.Tensor, imbalance: float, num_classes: int) -> torch.Tensor:
    """Rows of a long-tailed subset: class ``c`` keeps its first ``⌊n·imbalance^(-c/(C-1))⌋``
    rows (``n``: the smallest class's size), so sizes decay geometrically from ``n`` to
    ``n/imbalance`` (the CIFAR-LT construction). Ascending row order."""
    if imbalance < 1:
        raise ValueError(f"--long-tail must be >= 1 (largest/smallest class), got {imbalance}")
    n = min(int((labels == c).sum()) for c in range(num_classes))
    keep = []
    for c in range(num_classes):
        size = math.floor(n * imbalance ** (-c / (num_classes - 1)))
        keep.append(torch.nonzero(labels == c).squeeze(1)[:max(size, 1)])
    return torch.cat(keep).sort().values


def flip_labels(labels: torch.Tensor, share: float, num_classes: int) -> torch.Tensor:
    """Symmetric label noise: exactly ⌊share·N⌋ labels, chosen uniformly, each moved to one
    of the other classes uniformly (seeded by ``NOISE_SEED``)."""
    gen = torch.Generator().manual_seed(NOISE_SEED)
    n = len(labels)
    flipped = torch.randperm(n, generator=gen)[:math.floor(share * n)]
    shift = torch.randint(1, num_classes, (flipped.numel(),), generator=gen)
    noisy = labels.clone()
    noisy[flipped] = (labels[flipped] + shift) % num_classes
    return noisy


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
    label_noise: float = 0.0  # share of training labels flipped (the data's variant)
    long_tail: float = 0.0  # largest/smallest class size (0: the balanced data)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def plan_ratio(self) -> float | None:
        """The ratio the plan is sized from: ``subset_ratio`` if set, else ``ratio``."""
        return self.subset_ratio if self.subset_ratio is not None else self.ratio


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
    return int((~misclassified(model, x, y, batch_size)).sum()) / max(len(x), 1)


@torch.inference_mode()
def misclassified(model: dms.SlimmableModel, x: torch.Tensor, y: torch.Tensor,
                  batch_size: int = 256) -> torch.Tensor:
    """Bool per sample: the full-width model in eval mode predicts another class than
    ``y`` (training flag restored)."""
    if not len(x):
        return torch.zeros(0, dtype=torch.bool)
    was_training = model.training
    model.eval()
    wrong = torch.cat([model(x[i:i + batch_size]).argmax(1) != y[i:i + batch_size]
                       for i in range(0, len(x), batch_size)])
    model.train(was_training)
    return wrong


def _scorer(model: dms.SlimmableModel, spec: MethodSpec,
            snapshot: bool = False) -> dms.SlimmableModel:
    """What scores margins: for ``dynams-psp`` the PSP proxy rebuilt from exported raw
    tensors (as the selector would), else the full model (a frozen copy if ``snapshot``)."""
    if spec.kind == "dynams-psp":
        assert spec.psp_width is not None
        return build_proxy(ARCHITECTURE, spec.psp_width, export_psp(model, spec.psp_width))
    return copy.deepcopy(model) if snapshot else model


def _margin_scores(scorer: dms.SlimmableModel, spec: MethodSpec, x: torch.Tensor,
                   y: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
    """Margins of every training sample under ``scorer`` at its full width.
    ``batch_size`` None keeps ``score``'s own default (what the service would run)."""
    kwargs = {} if batch_size is None else {"batch_size": batch_size}
    return dms.score(scorer, x, y, width=1.0, score=spec.knobs["score"], **kwargs)


# --- choosing each epoch's samples: one function per method ----------------------------


@dataclass
class Run:
    """One training run in progress: its model and plan, what the sample choosers carry
    from epoch to epoch, and what the run has spent and measured so far."""

    cfg: RunConfig
    data: Data
    model: dms.SlimmableModel
    plan: Plan
    round_ratios: list[float]  # each selection round's ratio (none without a policy)
    anneal_from: int  # InfoBatch: first epoch of its full-data anneal
    prev_loss: torch.Tensor  # InfoBatch: each sample's last training loss (NaN: not seen)
    keep: torch.Tensor | None = None  # this epoch's samples (REUSE epochs train on them again)
    keep_weights: torch.Tensor | None = None  # their loss weights (None: all 1)
    rounds: list[torch.Tensor] = field(default_factory=list)  # each round's selection
    round_weights: list[float] = field(default_factory=list)  # each round's largest weight
    static_keep: torch.Tensor | None = None  # static-margin: its one selection
    snapshot: dms.SlimmableModel | None = None  # pipelined: the weights the next round scores
    step: int = 0  # optimizer steps taken
    train_seconds: float = 0.0
    train_cpu: float = 0.0
    scoring_seconds: float = 0.0
    scoring_cpu: float = 0.0
    sizes: list[int] = field(default_factory=list)
    accs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    step_times: list[float] = field(default_factory=list)
    eval_epochs: list[int] = field(default_factory=list)
    select_times: list[float] = field(default_factory=list)
    digests: list[str] = field(default_factory=list)  # of each round's indices (compare runs)

    @property
    def spec(self) -> MethodSpec:
        return self.cfg.method

    @property
    def planned_steps(self) -> int:
        return sum(_steps(s, self.cfg.batch_size) for s in self.plan.sizes)


# (run, epoch, its plan) -> (indices trained this epoch, their loss weights or None)
Chooser = Callable[[Run, int, EpochPlan], tuple[torch.Tensor, torch.Tensor | None]]


def _all_samples(run: Run) -> tuple[torch.Tensor, None]:
    return torch.arange(run.data.num_train), None


def _choose_full(run: Run, epoch: int, ep: EpochPlan) -> tuple[torch.Tensor, None]:
    """Full data: every sample, every epoch."""
    return _all_samples(run)


def _choose_uniform(run: Run, epoch: int, ep: EpochPlan) -> tuple[torch.Tensor, None]:
    """A fresh uniform draw of the plan's size every subset epoch, seeded by (seed, epoch)."""
    if ep.kind is EpochKind.FULL:
        return _all_samples(run)
    draw = torch.randperm(run.data.num_train, generator=_generator(run.cfg.seed, epoch, 1))
    return draw[:ep.size].sort().values, None


def _choose_static_margin(run: Run, epoch: int, ep: EpochPlan) -> tuple[torch.Tensor, None]:
    """The lowest margins after the warm-up, selected once and kept for the whole run."""
    if ep.kind is EpochKind.FULL:
        return _all_samples(run)
    if run.static_keep is None:
        run.static_keep, _ = _select_by_margin(run, _scorer(run.model, run.spec), ep)
    return run.static_keep, None


def _choose_dynams(run: Run, epoch: int,
                   ep: EpochPlan) -> tuple[torch.Tensor, torch.Tensor | None]:
    """DynaMS: the lowest margins, rescored every round (from the pipelined snapshot when
    there is one); REUSE epochs train on the round's selection (and weights) again."""
    if ep.kind is EpochKind.FULL:
        return _all_samples(run)
    if ep.kind is EpochKind.REUSE:
        assert run.keep is not None
        return run.keep, run.keep_weights
    scorer = run.snapshot if run.snapshot is not None else _scorer(run.model, run.spec)
    run.snapshot = None
    return _select_by_margin(run, scorer, ep)


def _choose_infobatch(run: Run, epoch: int, ep: EpochPlan) -> tuple[torch.Tensor, torch.Tensor]:
    """InfoBatch-style soft pruning from each sample's last loss (see _infobatch_subset)."""
    return _infobatch_subset(run.prev_loss, run.cfg, epoch, run.anneal_from)


def _select_by_margin(run: Run, scorer: dms.SlimmableModel,
                      ep: EpochPlan) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The round's selection at the round's ratio: the lowest scores under ``scorer``, or
    the policy's selection rule (explore, coverage) run by the same core code as the
    selector's, seeded by (seed, round) as the selector seeds it; with the rule's loss
    weights when it reweights."""
    m = _margin_scores(scorer, run.spec, run.data.x_train, run.data.y_train,
                       run.cfg.score_batch_size)
    per_class = run.spec.knobs["class_balance"] == "per_class"
    rule = run.spec.policy(run.round_ratios[ep.round], run.cfg.seed).rule
    if rule.hard_cut:
        return dms.select(m, run.data.y_train, ratio=run.round_ratios[ep.round],
                          per_class=per_class), None
    chosen = rule_select_rows(m.numpy(), run.data.y_train.numpy(), k=ep.size, rule=rule,
                              seed=round_seed(run.cfg.seed, ep.round), per_class=per_class)
    weights = None if chosen.weights is None else torch.from_numpy(chosen.weights)
    return torch.from_numpy(chosen.indices), weights


CHOOSERS: dict[str, Chooser] = {
    "full": _choose_full,
    "uniform": _choose_uniform,
    "uniform-psp": _choose_uniform,
    "uniform-compute-matched": _choose_uniform,
    "static-margin": _choose_static_margin,
    "dynams-full-proxy": _choose_dynams,
    "dynams-psp": _choose_dynams,
    "infobatch": _choose_infobatch,
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


# --- training --------------------------------------------------------------------------


def train_run(cfg: RunConfig, data: Data, log: bool = True) -> RunRecord:
    """Train one run and return its record (accuracies per epoch and the cost accounting)."""
    wall_start = time.perf_counter()
    spec = cfg.method
    torch.manual_seed(cfg.seed)  # model init only; all data randomness uses local generators
    model = dms.build_architecture(ARCHITECTURE)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=True,
                          weight_decay=cfg.weight_decay)
    plan, policy = _plan(cfg, data.num_train)
    run = Run(cfg, data, model, plan,
              round_ratios=policy.round_ratios(cfg.epochs) if policy is not None else [],
              anneal_from=cfg.epochs - max(1, math.ceil(cfg.infobatch_anneal * cfg.epochs)),
              prev_loss=torch.full((data.num_train,), float("nan")))
    joint = (None if spec.psp_width is None
             else JointPSP(model, spec.psp_width, batch_fraction=spec.psp_batch_fraction,
                           every=spec.psp_every))
    choose = CHOOSERS[spec.kind]
    for epoch, ep in enumerate(plan.epochs):
        keep, weights = _choose_epoch(run, choose, epoch, ep)
        _train_epoch(run, opt, joint, keep, weights, epoch)
        if (epoch + 1) % cfg.eval_every == 0 or epoch == cfg.epochs - 1:
            run.accs.append(evaluate(model, data.x_test, data.y_test))
            run.eval_epochs.append(epoch + 1)
        if log:
            acc = f" acc={run.accs[-1]:.4f}" if run.eval_epochs[-1:] == [epoch + 1] else ""
            print(f"  [{spec.name} r={cfg.ratio} seed={cfg.seed}] epoch {epoch + 1}/{cfg.epochs}"
                  f" n={run.sizes[-1]} loss={run.losses[-1]:.4f}{acc}"
                  f" train={run.train_seconds:.1f}s score={run.scoring_seconds:.1f}s",
                  flush=True)
    return _record(run, wall_start, selection_diagnostics(run))


def selection_diagnostics(run: Run) -> dict[str, Any]:
    """Why a rule wins or loses, per selection round (see ``RunRecord``): how much each
    round keeps of the previous one, the share of its samples the final model still gets
    wrong, the share with flipped labels, and how far its class mix is from the data's."""
    data = run.data
    n, classes = data.num_train, int(data.y_train.max()) + 1
    wrong = misclassified(run.model, data.x_train, data.y_train, batch_size=512)
    data_mix = torch.bincount(data.y_train, minlength=classes).double() / n
    out: dict[str, Any] = {"unlearned_share": float(wrong.double().mean()),
                           "selection_max_weight": run.round_weights}
    overlap, unlearned, mislabeled, tv = [], [], [], []
    ever = torch.zeros(n, dtype=torch.bool)
    prev = None
    for keep in run.rounds:
        mask = torch.zeros(n, dtype=torch.bool)
        mask[keep] = True
        if prev is not None:
            overlap.append(float((mask & prev).sum()) / max(int(mask.sum()), 1))
        unlearned.append(float(wrong[mask].double().mean()))
        if data.flipped is not None:
            mislabeled.append(float(data.flipped[mask].double().mean()))
        mix = torch.bincount(data.y_train[mask], minlength=classes).double() / len(keep)
        tv.append(0.5 * float((mix - data_mix).abs().sum()))
        ever |= mask
        prev = mask
    out.update(selection_overlap=overlap, selection_unlearned=unlearned,
               selection_mislabeled=mislabeled, selection_class_tv=tv,
               ever_selected_share=float(ever.double().mean()) if run.rounds else 0.0,
               ever_selected_unlearned=float(wrong[ever].double().mean())
               if bool(ever.any()) else 0.0)
    if data.flipped is not None:
        out["mislabeled_share"] = float(data.flipped.double().mean())
    if run.rounds:
        last = data.y_train[run.rounds[-1]]
        out["last_selection_class_shares"] = (
            torch.bincount(last, minlength=classes).double() / len(last)).tolist()
    return out


def _plan(cfg: RunConfig, n: int) -> tuple[Plan, dms.SelectionPolicy | None]:
    """The run's plan and policy. Full data and InfoBatch plan full-data epochs only
    (InfoBatch prunes as it goes); the rest follow their policy at ``cfg.plan_ratio``."""
    if cfg.method.kind in ("full", "infobatch"):
        return dms.SelectionPolicy(ratio=1.0, warmup_epochs=cfg.epochs).plan(n, cfg.epochs), None
    assert cfg.plan_ratio is not None
    policy = cfg.method.policy(cfg.plan_ratio, cfg.seed)
    return policy.plan(n, cfg.epochs), policy


def _choose_epoch(run: Run, choose: Chooser, epoch: int,
                  ep: EpochPlan) -> tuple[torch.Tensor, torch.Tensor | None]:
    """This epoch's samples and loss weights, timed as scoring/selection and checked
    against the plan (except InfoBatch's, whose sizes are not planned)."""
    t0, c0 = time.perf_counter(), time.process_time()
    keep, weights = choose(run, epoch, ep)
    run.keep, run.keep_weights = keep, weights
    if run.spec.follows_plan:
        if len(keep) != ep.size:
            raise RuntimeError(f"{run.spec.name} epoch {epoch}: {len(keep)} samples, "
                               f"plan {ep.size}")
        if ep.kind is not EpochKind.FULL:
            run.select_times.append(time.perf_counter() - t0)
        if ep.kind is EpochKind.SELECT:
            run.digests.append(
                hashlib.sha256(keep.numpy().astype("<i8").tobytes()).hexdigest()[:16])
            run.rounds.append(keep)
            run.round_weights.append(1.0 if weights is None else float(weights.max()))
    run.scoring_seconds += time.perf_counter() - t0
    run.scoring_cpu += time.process_time() - c0
    return keep, weights


def _train_epoch(run: Run, opt: torch.optim.Optimizer, joint: JointPSP | None,
                 keep: torch.Tensor, weights: torch.Tensor | None, epoch: int) -> None:
    """One epoch of SGD over ``keep`` in a seeded order; a pipelined run snapshots its
    scorer ``PIPE_LEAD`` of an epoch before a selection round (counted as scoring)."""
    cfg = run.cfg
    t0, c0 = time.perf_counter(), time.process_time()
    perm = torch.randperm(len(keep), generator=_generator(cfg.seed, epoch, 2))
    order = keep[perm]
    w_order = None if weights is None else weights[perm]
    epoch_steps = _steps(len(order), cfg.batch_size)
    snapshot_at = None
    if (run.spec.knobs["staleness"] == "pipelined" and epoch + 1 < len(run.plan.epochs)
            and run.plan.epochs[epoch + 1].kind is EpochKind.SELECT):
        snapshot_at = math.floor((1 - PIPE_LEAD) * epoch_steps)
    snapshot_seconds = snapshot_cpu = 0.0
    loss_sum = 0.0
    for b in range(epoch_steps):
        if b == snapshot_at:
            ts, cs = time.perf_counter(), time.process_time()
            run.snapshot = _scorer(run.model, run.spec, snapshot=True)
            snapshot_seconds += time.perf_counter() - ts
            snapshot_cpu += time.process_time() - cs
        t_step = time.perf_counter()
        batch = slice(b * cfg.batch_size, (b + 1) * cfg.batch_size)
        idx = order[batch]
        for group in opt.param_groups:
            group["lr"] = _step_lr(run, epoch, b, epoch_steps)
        loss = _loss(run, joint, idx, None if w_order is None else w_order[batch])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_sum += float(loss.detach()) * len(idx)
        run.step += 1
        run.step_times.append(time.perf_counter() - t_step)
    run.train_seconds += time.perf_counter() - t0 - snapshot_seconds
    run.train_cpu += time.process_time() - c0 - snapshot_cpu
    run.scoring_seconds += snapshot_seconds
    run.scoring_cpu += snapshot_cpu
    run.sizes.append(len(order))
    run.losses.append(loss_sum / max(len(order), 1))


def _step_lr(run: Run, epoch: int, batch: int, epoch_steps: int) -> float:
    """Cosine LR over the planned optimizer steps; InfoBatch's steps are only known as it
    goes, so its LR follows epoch progress instead."""
    cfg = run.cfg
    if not run.spec.follows_plan:
        return _cosine_lr(cfg.lr, epoch * 10_000 + (batch * 10_000) // epoch_steps,
                          cfg.epochs * 10_000)
    return _cosine_lr(cfg.lr, run.step, run.planned_steps)


def _loss(run: Run, joint: JointPSP | None, idx: torch.Tensor,
          weights: torch.Tensor | None) -> torch.Tensor:
    """The batch's loss: the joint PSP loss for PSP methods (the trainer-side helper users
    train with; weighted when the selection rule gives weights), else cross-entropy,
    weighted (and remembered per sample) for InfoBatch."""
    x, y = run.data.x_train[idx], run.data.y_train[idx]
    if joint is not None:
        logits, psp_logits = joint(x)
        return psp_loss(logits, psp_logits, y, lam=run.spec.lam, distill=run.spec.distill,
                        weights=weights)
    per_sample = F.cross_entropy(run.model(x), y, reduction="none")
    if weights is not None:
        run.prev_loss[idx] = per_sample.detach()
    return weighted_loss(per_sample, weights)


def _record(run: Run, wall_start: float, diagnostics: dict[str, Any]) -> RunRecord:
    """The run's stored record: accuracies, sizes and the cost accounting."""
    cfg, spec, n = run.cfg, run.spec, run.data.num_train
    sample_iterations = sum(run.sizes)
    # The CPU is shared: median step time × steps is a load-robust estimate of train cost.
    step_median = statistics.median(run.step_times)
    robust_train = step_median * run.step
    return RunRecord(
        method=spec.name,
        ratio=cfg.ratio,
        seed=cfg.seed,
        epochs=cfg.epochs,
        max_samples=cfg.max_samples,
        label_noise=cfg.label_noise,
        long_tail=cfg.long_tail,
        num_train=n,
        num_test=len(run.data.y_test),
        final_accuracy=run.accs[-1],
        best_accuracy=max(run.accs),
        accuracy_per_epoch=run.accs,
        accuracy_epochs=run.eval_epochs,
        train_loss_per_epoch=run.losses,
        fraction_trained=sample_iterations / (n * cfg.epochs),
        planned_fraction=run.plan.fraction_trained,
        sample_iterations=sample_iterations,
        epoch_sizes=run.sizes,
        optimizer_steps=run.step,
        planned_steps=run.planned_steps,
        subset_ratio=cfg.plan_ratio,
        wall_seconds=time.perf_counter() - wall_start,
        train_seconds=run.train_seconds,
        scoring_seconds=run.scoring_seconds,
        total_compute_seconds=run.train_seconds + run.scoring_seconds,
        step_seconds_median=step_median,
        train_seconds_robust=robust_train,
        total_compute_seconds_robust=robust_train + run.scoring_seconds,
        train_cpu_seconds=run.train_cpu,
        scoring_cpu_seconds=run.scoring_cpu,
        total_compute_cpu_seconds=run.train_cpu + run.scoring_cpu,
        selection_seconds_each=run.select_times,
        selection_digests=run.digests,
        diagnostics=diagnostics,
        config={
            "kind": spec.kind, "psp_width": spec.psp_width, "lam": spec.lam,
            "psp_batch_fraction": spec.psp_batch_fraction, "distill": spec.distill,
            "psp_every": spec.psp_every, **spec.knobs,
            **({"pipeline_lead_epochs": PIPE_LEAD}
               if spec.knobs["staleness"] == "pipelined" else {}),
            "batch_size": cfg.batch_size, "lr": cfg.lr,
            "momentum": cfg.momentum, "weight_decay": cfg.weight_decay, "nesterov": True,
            "schedule": "cosine over optimizer steps" if spec.follows_plan
            else "cosine over epoch progress",
            **({"infobatch_prune": cfg.infobatch_prune, "infobatch_anneal_from": run.anneal_from}
               if spec.kind == "infobatch" else {}),
            "score_batch_size": cfg.score_batch_size or "score() default",
            **cfg.extra,
        },
        torch_threads=torch.get_num_threads(),
        host=platform.node(),
        finished_at=time.strftime("%Y-%m-%dT%H:%M:%S"),
    )


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
    """A stored record's identity (``RunRecord.key``); older records lack label_noise."""
    return RunRecord.from_json(r).key


def load_results(out: Path) -> list[dict[str, Any]]:
    path = out / "quality.json"
    return json.loads(path.read_text()) if path.exists() else []


def save_result(out: Path, record: RunRecord) -> list[dict[str, Any]]:
    """Merge one record into ``quality.json`` (re-read first; atomic replace) and return all.
    One directory holds one data variant: its tables do not tell variants apart."""
    with open(out / "quality.json.lock", "w") as lock:  # sweeps may share a directory
        fcntl.flock(lock, fcntl.LOCK_EX)
        records = [r for r in load_results(out) if record_key(r) != record.key]
        others = {RunRecord.from_json(r).variant for r in records} - {record.variant}
        if others:
            raise ValueError(f"{out} holds runs of data variants (label noise, long tail) "
                             f"{sorted(others)}; write runs of {record.variant} to another "
                             "--out")
        records.append(record.to_json())
        atomic_write(out / "quality.json", json.dumps(records, indent=1))
    return records


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
                "joint-0.25-bf0.5-ev2", "joint-0.25-bf0.5-ev4", "proxy-only-0.25",
                "proxy-only-0.5"]
    times: dict[str, list[float]] = {v: [] for v in variants}
    cpu: dict[str, list[float]] = {v: [] for v in variants}
    for i in range(warmup + steps):
        rot = i % len(variants)
        for v in variants[rot:] + variants[:rot]:
            t0, c0 = time.perf_counter(), time.process_time()
            if "-ev" in v:  # k steps, the first joint: one sample is their mean step time
                k = int(v.rsplit("-ev", 1)[1])
                for j in range(k):
                    _timed_step(model, opt, data, batch_size, gen,
                                psp=(0.25, 0.5) if j == 0 else None)
                if i >= warmup:
                    times[v].append((time.perf_counter() - t0) / k)
                    cpu[v].append((time.process_time() - c0) / k)
                continue
            idx = torch.randint(n, (batch_size,), generator=gen)
            x, y = data.x_train[idx], data.y_train[idx]
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
                               for w in ("0.25", "0.5", "0.25-bf0.5", "0.25-bf0.25",
                                         "0.25-bf0.5-ev2", "0.25-bf0.5-ev4")},
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


def _timed_step(model: dms.SlimmableModel, opt: torch.optim.Optimizer, data: Data,
                batch_size: int, gen: torch.Generator,
                psp: tuple[float, float] | None) -> None:
    """One SGD step on a random batch; ``psp=(width, batch fraction)`` adds the PSP loss."""
    idx = torch.randint(data.num_train, (batch_size,), generator=gen)
    x, y = data.x_train[idx], data.y_train[idx]
    loss = F.cross_entropy(model(x), y)
    if psp is not None:
        width, fraction = psp
        k = round(batch_size * fraction)
        loss = loss + F.cross_entropy(model(x[:k], width=width), y[:k])
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


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


# --- driver ----------------------------------------------------------------------------


def _parse_seeds(text: str) -> list[int]:
    """``"3"`` → seeds 0, 1, 2 (a count); ``"0,4,7"`` → those seeds."""
    if "," in text:
        return [int(s) for s in text.split(",") if s.strip()]
    if int(text) < 1:
        raise argparse.ArgumentTypeError(f"--seeds {text} runs nothing: give a count >= 1, "
                                         f"or a list such as '{text},' for that seed alone")
    return list(range(int(text)))


def _parse_list(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=os.environ.get("DYNAMS_FASHION_MNIST_DIR",
                                                        DEFAULT_DATA_DIR))
    p.add_argument("--out", type=Path, default=None,
                   help=f"results directory (default: {DEFAULT_OUT}; with --quick a new "
                        f"directory under {QUICK_RUNS})")
    p.add_argument("--ratios", default="0.3", help="comma list of subset ratios")
    p.add_argument("--methods", default=None,
                   help=f"comma list (default: {','.join(MAIN_METHODS)})")
    p.add_argument("--ablations", action="store_true",
                   help=f"add the knob ablations: {','.join(ABLATION_METHODS)}")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seeds", default="3", help="a count (0..N-1) or a comma list of seeds")
    p.add_argument("--max-samples", type=int, default=None, help="train on the first N samples")
    p.add_argument("--max-test", type=int, default=None, help="evaluate on the first N samples")
    p.add_argument("--label-noise", type=float, default=0.0,
                   help="flip this share of training labels (symmetric noise; the test set "
                        "stays clean); without --out, results go to "
                        "benchmarks/results/label-noise-<share>/")
    p.add_argument("--long-tail", type=float, default=0.0,
                   help="long-tailed training set: class sizes decay geometrically to "
                        "1/<this> of the largest (the test set stays balanced); without "
                        "--out, results go to benchmarks/results/long-tail-<this>/")
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
                key = (spec.name, run_ratio, seed, args.epochs, args.max_samples,
                       args.label_noise, args.long_tail)
                if key in done and not args.force:
                    continue
                cfg = RunConfig(method=spec, ratio=run_ratio, seed=seed, epochs=args.epochs,
                                max_samples=args.max_samples, batch_size=args.batch_size,
                                lr=args.lr, infobatch_prune=args.infobatch_prune,
                                score_batch_size=args.score_batch_size,
                                eval_every=args.eval_every, label_noise=args.label_noise,
                                long_tail=args.long_tail)
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
                      f"{record.final_accuracy:.4f} best {record.best_accuracy:.4f} "
                      f"fraction {record.fraction_trained:.3f} train "
                      f"{record.train_seconds:.1f}s scoring {record.scoring_seconds:.1f}s",
                      flush=True)
                if not args.quick:  # long sweeps: keep the table and plots current
                    write_report(args.out, records, args.max_samples, args.epochs)
    return records


def write_report(out: Path, records: list[dict[str, Any]], max_samples: int | None,
                 epochs: int) -> None:
    """``quality.md``, the plots of one setting and every setting's frontier plot. Runs in
    a directory without its own PSP cost measurement are priced by the committed one."""
    cost = report_cost(out)
    write_markdown(out, records, cost)
    write_plots(out, records, max_samples, epochs)
    write_frontier_plots(out, records, cost)


def report_cost(out: Path) -> dict[str, Any] | None:
    """The PSP cost measurement ``out``'s tables are priced by: its own, else the
    committed one."""
    return _load_psp_cost(out) or _load_psp_cost(DEFAULT_OUT)


def _load_psp_cost(out: Path) -> dict[str, Any] | None:
    """Stored PSP cost measurements, keyed ``threads=N``."""
    path = out / "psp_cost.json"
    return json.loads(path.read_text()) if path.exists() else None


def output_dir(out: Path | None, quick: bool, label_noise: float = 0.0,
               long_tail: float = 0.0) -> Path:
    """Where a run writes. A ``--quick`` smoke run never writes into the committed results
    (``DEFAULT_OUT``): without ``--out`` it gets a new directory under ``QUICK_RUNS``.
    Label-noise and long-tailed runs default to their own directory under ``DEFAULT_OUT``."""
    if not quick:
        if out is not None:
            return out
        variant = "-".join([f"label-noise-{label_noise:g}"] * bool(label_noise)
                           + [f"long-tail-{long_tail:g}"] * bool(long_tail))
        return DEFAULT_OUT / variant if variant else DEFAULT_OUT
    if out is None:
        return QUICK_RUNS / f"quality-quick-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    if out.resolve().is_relative_to(DEFAULT_OUT):
        raise ValueError(f"--quick must not write into {DEFAULT_OUT} (got --out {out}); "
                         "omit --out or pick another directory")
    return out


def main(argv: Iterable[str] | None = None) -> int:
    args = build_parser().parse_args(None if argv is None else list(argv))
    if args.quick:
        args.max_samples = args.max_samples or 1000
        args.max_test = args.max_test or 1000
        args.epochs = 3 if args.epochs == 10 else args.epochs
        args.seeds = "1" if args.seeds == "3" else args.seeds
        args.psp_steps = min(args.psp_steps, 4)
        args.methods = args.methods or QUICK_METHODS
    try:
        _parse_seeds(args.seeds)
        args.out = output_dir(args.out, args.quick, args.label_noise, args.long_tail)
    except (ValueError, argparse.ArgumentTypeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.quick:
        print(f"quick run: writing to {args.out}", flush=True)
    torch.set_num_threads(max(1, min(args.threads, 2)))
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if args.report:
        write_report(args.out, load_results(args.out), args.max_samples, args.epochs)
        return 0
    if args.psp_cost or args.quick:
        data = load_data(args.data_dir, args.max_samples, 1)
        cost = measure_psp_cost(data, args.psp_steps, args.batch_size, seed=0,
                                score_repeats=1 if args.quick else 3,
                                epoch_measure=not args.quick, profile=not args.quick,
                                warmup=1 if args.quick else 5)
        costs = _load_psp_cost(args.out) or {}
        costs[f"threads={torch.get_num_threads()}"] = cost
        atomic_write(args.out / "psp_cost.json", json.dumps(costs, indent=1))
        print("\n".join(psp_cost_lines(cost)))
        if "profile_joint_0.5_top_ops" in cost:
            print("\n".join(cost["profile_joint_0.5_top_ops"]))
        write_markdown(args.out, load_results(args.out), costs)
        if args.psp_cost:
            return 0
    data = load_data(args.data_dir, args.max_samples, args.max_test, args.label_noise,
                     args.long_tail)
    records = run_quality(args, data)
    write_report(args.out, records, args.max_samples, args.epochs)
    print(f"wrote {args.out}/quality.json, quality.md and plots "
          f"({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
