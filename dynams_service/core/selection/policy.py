"""The selection policy (what DynaMS keeps, and when) and the plan it implies.

The plan gives every epoch's kind and size before training starts, so a trainer can size
its LR schedule and progress bars up front (unlike loaders whose length lags the pruning).
"""

from __future__ import annotations

from enum import Enum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .selection import budget
from .selection_rules import Reweight, SelectionRule, explore_weight

__all__ = ["EpochKind", "EpochPlan", "Plan", "SelectionPolicy"]


class EpochKind(str, Enum):
    """What an epoch trains on: all data, a new selection, or the previous selection."""

    FULL = "full"
    SELECT = "select"
    REUSE = "reuse"


class EpochPlan(BaseModel):
    """One epoch of the plan."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    epoch: int
    kind: EpochKind
    size: int = Field(description="samples trained in this epoch, all ranks together")
    ratio: float = Field(description="size / num_samples")
    round: int | None = Field(
        description="selection round this epoch trains on (None for full-data epochs)"
    )


class Plan(BaseModel):
    """Every epoch's kind and size, known before training starts."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    num_samples: int
    epochs: list[EpochPlan]

    @property
    def sizes(self) -> list[int]:
        """Samples per epoch, all ranks together."""
        return [e.size for e in self.epochs]

    @property
    def sample_iterations(self) -> int:
        """Total samples trained over the run (warm-up and anneal included)."""
        return sum(self.sizes)

    @property
    def fraction_trained(self) -> float:
        """The budget actually spent: sample-iterations over those of full-data training."""
        return self.sample_iterations / (self.num_samples * len(self.epochs))

    @property
    def select_epochs(self) -> list[int]:
        """Epochs that start a new selection round (each needs fresh proxy weights)."""
        return [e.epoch for e in self.epochs if e.kind is EpochKind.SELECT]

    def next_select_epoch(self, epoch: int) -> int | None:
        """The epoch right after ``epoch`` if it starts a round (needs fresh weights)."""
        nxt = epoch + 1
        return nxt if nxt < len(self.epochs) and self.epochs[nxt].kind is EpochKind.SELECT \
            else None

    def __getitem__(self, epoch: int) -> EpochPlan:
        if not 0 <= epoch < len(self.epochs):
            raise IndexError(f"epoch {epoch} must be in [0, {len(self.epochs) - 1}]")
        return self.epochs[epoch]


class SelectionPolicy(BaseModel):
    """How DynaMS selects: budget, schedule, score, class balance, staleness.

    ``score`` names a registered score (``core.scores``; lower = keep first). It is only
    checked for its form here: a client may name a score that only the selector's
    operator registered, and the selector refuses unknown names at CreateJob.

    Defaults follow the quality benchmark (benchmarks/quality.py, docs/benchmarks.md):
    distance margins, global selection, one warm-up epoch, a new selection every epoch, a
    constant ratio and pipelined staleness.

    Example:
        >>> policy = SelectionPolicy(ratio=0.3, warmup_epochs=1, interval_epochs=2)
        >>> policy.plan(num_samples=100, epochs=4).sizes
        [100, 30, 30, 30]
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    ratio: float = Field(0.3, gt=0, le=1, description="fraction kept per selection (0, 1]")
    warmup_epochs: int = Field(1, ge=0, description="full-data epochs before the first round")
    interval_epochs: int = Field(1, ge=1, description="epochs each selection is trained on")
    anneal_epochs: int = Field(0, ge=0, description="full-data epochs at the end")
    score: str = Field(
        "distance", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$",
        description="registered score to rank by, lower kept first: 'distance' (the "
        "margin, default), 'signed', 'loss' (negated PSP cross-entropy), 'el2n', or one "
        "the operator registered",
    )
    class_balance: Literal["per_class", "global"] = Field(
        "global",
        description="'global': the ⌈r·N⌉ lowest margins overall (the quality benchmark's "
        "choice over per-class quotas); 'per_class': each class its share",
    )
    ratio_schedule: Literal["constant", "power"] = Field(
        "constant",
        description="'power': ratios decay over rounds as (1 - i/M)^power_exponent, "
        "rescaled so the selected sample-iterations equal the constant schedule's",
    )
    power_exponent: float = Field(1.0, gt=0, le=10)
    seed: int = Field(0, ge=0, lt=2**63)
    explore: float = Field(
        0.0, ge=0, lt=1,
        description="share of each selection drawn uniformly from the samples outside the "
        "hard cut (0: the hard cut alone)",
    )
    reweight: Reweight = Field(
        "none",
        description="loss weights for the explored samples (InfoBatch-style; needs explore "
        "> 0 and class_balance='global'): 'inverse' weighs each 1/p (p: its chance of being "
        "drawn) and the hard cut 1, so a selection's weights sum to N and an epoch makes "
        "full data's expected update; 'normalized' scales those to mean 1 over the "
        "selection (the learning rate keeps its scale); 'none': no weights",
    )
    coverage_strata: int = Field(
        0, ge=0, le=1000,
        description="coverage selection (CCS): draw the budget uniformly from this many "
        "equal-width score strata, water-filled (0: off; needs class_balance='global')",
    )
    coverage_prune: float = Field(
        0.1, ge=0, lt=1,
        description="with coverage_strata: share of the lowest scores (the hardest, often "
        "mislabeled) dropped before stratifying",
    )
    staleness: Literal["sync", "pipelined"] = Field(
        "pipelined",
        description="'pipelined' (default): the trainer pushes early so scoring overlaps the "
        "epoch's end; it selects as well as 'sync' (quality benchmark) and nobody waits",
    )

    @model_validator(mode="after")
    def _power_needs_room(self) -> SelectionPolicy:
        if self.ratio_schedule == "power" and self.ratio == 1:
            raise ValueError("ratio_schedule='power' needs ratio < 1 (nothing can decay)")
        return self

    @model_validator(mode="after")
    def _rule_is_coherent(self) -> SelectionPolicy:
        if self.coverage_strata and self.explore:
            raise ValueError("explore and coverage_strata do not combine: coverage draws "
                             "every sample at random already")
        if self.reweight != "none" and not self.explore:
            raise ValueError("reweight needs explore > 0: it weights the explored samples")
        if self.reweight != "none" and self.per_class:
            raise ValueError("reweight needs class_balance='global'")
        if self.coverage_strata and self.per_class:
            raise ValueError("coverage_strata needs class_balance='global' (the strata "
                             "split the budget instead of the classes)")
        return self

    @property
    def rule(self) -> SelectionRule:
        """What each round keeps beyond the hard cut (``core.selection_rules``)."""
        return SelectionRule(explore=self.explore, coverage_strata=self.coverage_strata,
                             coverage_prune=self.coverage_prune, reweight=self.reweight)

    def uniform_weight(self, num_samples: int, size: int) -> float | None:
        """The loss weight a uniform subset of ``size`` carries under this policy (a
        trainer's fallback epoch): ``N/size`` for ``inverse`` (its weights sum to N, as a
        selection's do), 1 for ``normalized``, None when the policy does not reweight."""
        if self.reweight == "none":
            return None
        return explore_weight(num_samples, 0, size) if self.reweight == "inverse" else 1.0

    def _round_lengths(self, epochs: int) -> list[int]:
        return _round_lengths(self.warmup_epochs, self.interval_epochs, self.anneal_epochs,
                              epochs)

    @property
    def per_class(self) -> bool:
        return self.class_balance == "per_class"

    def round_ratios(self, epochs: int) -> list[float]:
        """Ratio of each selection round, in round order."""
        rounds = self._round_lengths(epochs)
        if self.ratio_schedule == "constant" or len(rounds) <= 1:
            return [self.ratio] * len(rounds)
        m = len(rounds)
        shape = [(1 - i / m) ** self.power_exponent for i in range(m)]
        return _rescale_capped(shape, rounds, self.ratio)

    def plan(self, num_samples: int, epochs: int) -> Plan:
        """Every epoch's kind and size for a run of ``epochs`` over ``num_samples``."""
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {epochs}")
        rounds = self._round_lengths(epochs)
        ratios = self.round_ratios(epochs)
        plan: list[EpochPlan] = []
        warmup = min(self.warmup_epochs, epochs)
        for e in range(warmup):
            plan.append(EpochPlan(epoch=e, kind=EpochKind.FULL, size=num_samples, ratio=1.0,
                                  round=None))
        for r, (length, ratio) in enumerate(zip(rounds, ratios, strict=True)):
            size = budget(num_samples, ratio)
            for i in range(length):
                kind = EpochKind.SELECT if i == 0 else EpochKind.REUSE
                plan.append(EpochPlan(epoch=len(plan), kind=kind, size=size,
                                      ratio=size / num_samples, round=r))
        while len(plan) < epochs:
            plan.append(EpochPlan(epoch=len(plan), kind=EpochKind.FULL, size=num_samples,
                                  ratio=1.0, round=None))
        return Plan(num_samples=num_samples, epochs=plan)


def _round_lengths(warmup: int, interval: int, anneal: int, epochs: int) -> list[int]:
    """Epochs per selection round between warm-up and anneal (last round may be short)."""
    selecting = max(0, epochs - min(warmup, epochs) - anneal)
    full, rest = divmod(selecting, interval)
    return [interval] * full + ([rest] if rest else [])


def _rescale_capped(shape: list[float], lengths: list[int], mean_ratio: float) -> list[float]:
    """Scale ``shape`` so the epoch-weighted mean is ``mean_ratio``, capping at 1."""
    target = mean_ratio * sum(lengths)
    ratios = [0.0] * len(shape)
    free = list(range(len(shape)))
    while free:
        spent = sum(ratios[i] * lengths[i] for i in range(len(shape)) if i not in free)
        weight = sum(shape[i] * lengths[i] for i in free)
        scale = (target - spent) / weight
        capped = [i for i in free if shape[i] * scale >= 1]
        if not capped:
            for i in free:
                ratios[i] = max(shape[i] * scale, 1e-6)
            break
        for i in capped:
            ratios[i] = 1.0
        free = [i for i in free if i not in capped]
    return [min(1.0, r) for r in ratios]
