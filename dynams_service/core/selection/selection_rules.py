"""Selection rules beyond the hard cut: an explore share, and coverage strata (CCS-style).

Both run on the exact distributed k-selection (``core.distributed_selection``), so the
head still sees only summaries, never the scores:

- ``explore = e``: the ``k - round(e·k)`` lowest scores (the hard cut, per class if the
  policy says so), plus ``round(e·k)`` samples drawn uniformly from the rest. With
  ``reweight="inverse"`` (InfoBatch-style), each drawn sample carries the loss weight
  ``1/p``, ``p`` its chance of being drawn, and the hard cut weight 1: the weights sum to
  ``N`` and the selection's weighted loss sum estimates the whole dataset's without bias.
  ``"normalized"`` scales them by ``k/N`` (mean weight 1).
- ``coverage_strata = S``: coverage-centric selection (Zheng et al., ICLR 2023). The
  ``coverage_prune`` share of lowest scores (the hardest, often mislabeled) is dropped,
  the rest is cut into ``S`` equal-width score strata, the budget is split over the strata
  by water-filling (a stratum smaller than its equal share gives all it has), and each
  stratum's quota is drawn uniformly.

NOTE [ rules as re-keyed parts ]:
A rule runs in stages. A stage is either a plain selection over the parts' scores (whose
thresholds the next stage re-applies) or a selection over a *view*: each part re-keys its
own rows from a small :class:`PartView` the head sends (the previous stage's thresholds, a
seed, the strata edges). The uniform draws are the smallest of a keyed hash of
``(seed, dataset index)``, so every part draws its share without coordination, the result
does not depend on how rows are split into parts, and a round repeated with the same seed
selects the same samples. A re-keyed part reports the original scores, so a round's stored
margins stay scores. The view's rows stay in the part, so a part rescored after a restart
answers the same views the same way.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

from .distributed_selection import (
    DEFAULT_BINS,
    DistributedSelection,
    PartHandle,
    SelectionPart,
    Thresholds,
    distributed_select,
    key_value,
)
from .selection import class_quotas

__all__ = ["REWEIGHTS", "PartView", "Reweight", "SelectionRule", "explore_weight",
           "rule_select", "rule_select_rows", "round_seed", "uniform_keys", "view_part"]

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
Reweight = Literal["none", "inverse", "normalized"]  # SelectionPolicy.reweight's type
REWEIGHTS: tuple[str, ...] = get_args(Reweight)


@dataclass(frozen=True)
class SelectionRule:
    """What a round keeps beyond the hard cut (``SelectionPolicy`` carries these knobs)."""

    explore: float = 0.0
    coverage_strata: int = 0
    coverage_prune: float = 0.0
    reweight: str = "none"  # "none", "inverse" or "normalized" (see the module docstring)

    def __post_init__(self) -> None:
        if not 0 <= self.explore < 1:
            raise ValueError(f"explore must be in [0, 1), got {self.explore}")
        if not 0 <= self.coverage_strata <= 1000:
            raise ValueError(f"coverage_strata must be in [0, 1000], got {self.coverage_strata}")
        if not 0 <= self.coverage_prune < 1:
            raise ValueError(f"coverage_prune must be in [0, 1), got {self.coverage_prune}")
        if self.explore and self.coverage_strata:
            raise ValueError("explore and coverage_strata do not combine (coverage draws "
                             "every sample at random already)")
        if self.reweight not in REWEIGHTS:
            raise ValueError(f"reweight must be one of {REWEIGHTS}, got {self.reweight!r}")
        if self.reweight != "none" and not self.explore:
            raise ValueError("reweight needs explore > 0 (it weights the explored samples)")

    @property
    def hard_cut(self) -> bool:
        """True when the rule is the plain lowest-k selection."""
        return not self.explore and not self.coverage_strata


@dataclass(frozen=True)
class PartView:
    """How a part re-keys its rows for one stage of a rule (see the module NOTE).

    ``cut``: the thresholds of the previous stage; rows at or below them are the hard
    cut (explore: kept first, coverage: pruned). ``edges``: coverage's inner strata edges
    over the scores, ascending (``S - 1`` values). ``seed``: the uniform keys' seed.
    """

    kind: str  # "explore" or "coverage"
    seed: int
    cut: Thresholds | None
    edges: tuple[float, ...] = ()

    def digest(self) -> str:
        """A short key for caching the re-keyed part (a view's arrays are not hashable)."""
        h = hashlib.sha256(f"{self.kind}|{self.seed}|{self.edges}".encode())
        if self.cut is not None:
            h.update(b"1" if self.cut.per_class else b"0")
            for a in (self.cut.group, self.cut.value, self.cut.index):
                h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()[:32]


def round_seed(seed: int, round_: int) -> int:
    """The uniform keys' seed of round ``round_`` of a job seeded ``seed`` (64-bit)."""
    z = _splitmix64(np.array([(seed * 1_000_003 + round_) % (1 << 64)], dtype=np.uint64))
    return int(z[0])


def uniform_keys(indices, seed: int) -> np.ndarray:
    """``[0, 1)`` float64 per dataset index: a keyed hash, uniform and independent across
    indices, the same on every part. Example: ``uniform_keys([3], 7)`` is fixed."""
    idx = np.asarray(indices, dtype=np.int64).view(np.uint64)
    mixed = _splitmix64(idx ^ _splitmix64(np.array([seed], dtype=np.uint64))[0])
    return (mixed >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def view_part(part: SelectionPart, view: PartView) -> SelectionPart:
    """``part`` re-keyed by ``view``; it reports the original scores from ``take``."""
    cut = (np.zeros(len(part), dtype=bool) if view.cut is None
           else part.mask(view.cut))
    keys = uniform_keys(part.indices, view.seed)
    if view.kind == "explore":
        return SelectionPart(np.where(cut, -np.inf, keys), part.indices, part.labels,
                             reported=part.margins)
    if view.kind == "coverage":
        strata = np.searchsorted(np.asarray(view.edges, dtype=np.float64),
                                 part.margins.astype(np.float64), side="right")
        strata = np.where(cut, len(view.edges) + 1, strata)  # the pruned: their own group
        return SelectionPart(keys, part.indices, strata, reported=part.margins)
    raise ValueError(f"unknown view kind {view.kind!r}")


def rule_select(
    parts_for: Callable[[PartView | None], Sequence[PartHandle]],
    *,
    k: int,
    rule: SelectionRule,
    seed: int,
    per_class: bool = False,
    resolve: Callable[[list], Iterable] = list,
    bins: int = DEFAULT_BINS,
) -> DistributedSelection:
    """Select ``k`` samples under ``rule``; ``parts_for(None)`` gives the plain parts and
    ``parts_for(view)`` the same parts re-keyed by ``view`` (:func:`view_part` in one
    process; a scorer actor applies it on its side).

    With the plain hard cut this is :func:`distributed_select`. Coverage is global:
    ``per_class`` must be false with ``coverage_strata``.

    Example:
        >>> parts = [SelectionPart(np.arange(10.0), np.arange(10))]
        >>> rule = SelectionRule(explore=0.5)
        >>> chosen = rule_select(lambda v: [p if v is None else view_part(p, v) for p in parts],
        ...                      k=4, rule=rule, seed=1).indices
        >>> chosen[:2].tolist(), len(chosen)
        ([0, 1], 4)
    """
    plain = parts_for(None)
    common = {"resolve": resolve, "bins": bins}
    if rule.hard_cut:
        return distributed_select(plain, k=k, per_class=per_class, **common)
    if rule.explore:
        explored = math.floor(rule.explore * k + 0.5)
        hard = distributed_select(plain, k=k - explored, per_class=per_class, take=False,
                                  **common)
        view = PartView("explore", seed, hard.thresholds)
        chosen = distributed_select(parts_for(view), k=k, per_class=per_class, **common)
        chosen = _with_passes(chosen, hard.passes)
        if rule.reweight != "none":
            if per_class:
                raise ValueError("reweight is global; use class_balance='global'")
            total = sum(int(c.counts.sum())
                        for c in common["resolve"]([p.census(False) for p in plain]))
            chosen = _with_weights(chosen, hard.thresholds, total, k - explored, explored,
                                   normalized=rule.reweight == "normalized")
        return chosen
    if per_class:
        raise ValueError("coverage selection is global; use class_balance='global'")
    return _coverage_select(parts_for, plain, k, rule, seed, common)


def rule_select_rows(scores, labels=None, *, k: int, rule: SelectionRule, seed: int,
                     per_class: bool = False) -> DistributedSelection:
    """:func:`rule_select` in one process over one part holding every row, its dataset
    index its row number (what a trainer, a benchmark or a test without scorers needs).

    Example:
        >>> rule_select_rows(np.arange(10.0), k=4, rule=SelectionRule(explore=0.5),
        ...                  seed=1).indices[:2].tolist()
        [0, 1]
    """
    scores = np.asarray(scores)
    part = SelectionPart(scores, np.arange(len(scores)), labels)
    return rule_select(lambda view: [part if view is None else view_part(part, view)],
                       k=k, rule=rule, seed=seed, per_class=per_class)


def _coverage_select(parts_for, plain, k: int, rule: SelectionRule, seed: int,
                     common: dict) -> DistributedSelection:
    """Prune the hardest share, cut the rest into equal-width strata, water-fill ``k``."""
    census = list(common["resolve"]([p.census(False) for p in plain]))
    total = sum(int(c.counts.sum()) for c in census)
    if not 0 <= k <= total:
        raise ValueError(f"k must be in [0, {total}] (the parts' size), got {k}")
    passes = 1
    pruned = min(math.floor(rule.coverage_prune * total), total - k)
    highs = [int(c.key_max[0]) for c in census if c.counts.size]
    lows = [int(c.key_min[0]) for c in census if c.counts.size]
    cut = None
    lo = key_value(min(lows)) if lows else 0.0
    if pruned:
        prune = distributed_select(plain, k=pruned, take=False, **common)
        passes += prune.passes
        cut = prune.thresholds
        lo = key_value(int(cut.value[0]))
    hi = key_value(max(highs)) if highs else 0.0
    strata = rule.coverage_strata
    if math.isfinite(lo) and math.isfinite(hi) and hi > lo:
        edges = tuple(float(e) for e in lo + (hi - lo) * np.arange(1, strata) / strata)
    else:  # one value, or infinite scores: a single stratum
        edges = ()
    view = PartView("coverage", seed, cut, edges)
    pruned_group = len(edges) + 1

    def quotas(groups: np.ndarray, counts: np.ndarray, keep: int) -> np.ndarray:
        out = np.zeros_like(counts)
        live = groups != pruned_group
        out[live] = class_quotas(counts[live], keep)
        return out

    chosen = distributed_select(parts_for(view), k=k, per_class=True, quotas=quotas,
                                **common)
    return _with_passes(chosen, passes)


def _with_passes(selection: DistributedSelection, earlier: int) -> DistributedSelection:
    return DistributedSelection(selection.indices, selection.margins,
                                selection.passes + earlier, selection.thresholds,
                                selection.weights)


def explore_weight(total: int, hard: int, explored: int) -> float:
    """The loss weight of an explored sample: ``1/p`` for ``explored`` draws out of the
    ``total - hard`` samples outside the hard cut. Example: ``explore_weight(10, 2, 4)``
    is 2.0."""
    if explored <= 0:
        return 1.0
    return (total - hard) / explored


def _with_weights(selection: DistributedSelection, cut: Thresholds | None, total: int,
                  hard: int, explored: int, normalized: bool) -> DistributedSelection:
    """``selection`` with float32 loss weights: 1 in the hard cut, ``explore_weight``
    for the explored samples (the selection's reported scores are the original ones, so
    the cut's thresholds re-apply to them); scaled to mean 1 if ``normalized``."""
    weight_sum = hard + (total - hard if explored > 0 else 0)  # N, or k with no draws
    scale = (hard + explored) / weight_sum if normalized and weight_sum else 1.0
    weights = np.full(len(selection.indices), explore_weight(total, hard, explored) * scale,
                      dtype=np.float32)
    if cut is not None and len(selection.indices):
        in_cut = SelectionPart(selection.margins, selection.indices).mask(cut)
        weights[in_cut] = scale
    return DistributedSelection(selection.indices, selection.margins, selection.passes,
                                selection.thresholds, weights)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser, elementwise on uint64 (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = x + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))
