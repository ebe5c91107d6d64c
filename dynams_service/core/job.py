"""The job spec (everything a selector needs to score and select for one training run)
and the states a job, its rounds and its epochs are reported in, shared by the selector
and its clients."""

from __future__ import annotations

from enum import Enum

from pydantic import BaseModel, ConfigDict, Field

from .data.shards import DatasetFingerprint
from .selection.policy import Plan, SelectionPolicy

__all__ = ["JobSpec", "ProxySpec", "ScorerResources", "JOB_ID_PATTERN", "spec_differences",
           "JobState", "RoundState", "SelectionKind"]

JOB_ID_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,62}$"


class _Word(str, Enum):
    """A str enum that prints as its value, like the plain string it replaces."""

    def __str__(self) -> str:
        return self.value


class JobState(_Word):
    """What a job is doing."""

    ACTIVE = "active"      # its scorers run
    IDLE = "idle"          # no scorers now: before the first push, or released when idle
    FINISHED = "finished"  # every round selected, scorers released
    FAILED = "failed"      # its persisted state is unreadable: quarantined, delete it
    DELETED = "deleted"    # gone: the selector's own end state, never reported


class RoundState(_Word):
    """Where a selection round stands."""

    WAITING = "waiting"  # no weights pushed for it yet
    SCORING = "scoring"  # weights committed, its scorers are at work
    DONE = "done"        # selected and saved
    FAILED = "failed"    # its last scoring failed; a new push retries


class SelectionKind(_Word):
    """What an epoch trains on: all the data, the selector's subset, or (decided by the
    trainer alone, never sent by the selector) a seeded uniform fallback subset."""

    FULL = "full"
    SUBSET = "subset"
    FALLBACK = "fallback"


class ProxySpec(BaseModel):
    """The proxy: a registered architecture name and the PSP width α."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    architecture: str = Field(min_length=1, max_length=128)
    width: float = Field(0.25, gt=0, le=1)


class ScorerResources(BaseModel):
    """How many scorer actors a job gets and what each one asks Ray for."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    num_scorers: int = Field(1, ge=1, le=1024)
    num_cpus: float = Field(1.0, ge=0, le=256)
    num_gpus: float = Field(0.0, ge=0, le=16)
    batch_size: int = Field(256, ge=1, le=65536,
                            description="scoring batch (256 is fastest on CPU; raise on GPUs)")
    cache_bytes: int = Field(
        1 << 30, ge=0, le=1 << 40,
        description="decoded rows each scorer keeps in memory across rounds (default 1 GiB); "
                    "the rest are re-read and re-decoded every round, 0 streams everything")


class JobSpec(BaseModel):
    """A selection job: dataset, its fingerprint, proxy, policy, length and resources.

    Example:
        >>> spec = JobSpec(job_id="fmnist-r03", dataset_uri="data/fashion-mnist/train",
        ...                fingerprint=fp, proxy=ProxySpec(architecture="fmnist-cnn"),
        ...                epochs=10)  # doctest: +SKIP
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    job_id: str = Field(pattern=JOB_ID_PATTERN,
                        description="lowercase letters, digits, '-', '_', '.'; ≤ 63 chars")
    dataset_uri: str = Field(min_length=1, max_length=4096)
    fingerprint: DatasetFingerprint
    proxy: ProxySpec
    policy: SelectionPolicy = SelectionPolicy()
    epochs: int = Field(ge=1, le=100_000)
    resources: ScorerResources = ScorerResources()

    def plan(self) -> Plan:
        """The job's plan: every epoch's kind and size."""
        return self.policy.plan(self.fingerprint.num_samples, self.epochs)


def spec_differences(a: BaseModel, b: BaseModel, prefix: str = "") -> list[str]:
    """Dotted names of the fields in which two specs differ (names only, never values:
    the other spec may be another client's)."""
    names = []
    for name in type(a).model_fields:
        x, y = getattr(a, name), getattr(b, name)
        if x == y:
            continue
        if isinstance(x, BaseModel) and type(x) is type(y):
            names += spec_differences(x, y, f"{prefix}{name}.")
        else:
            names.append(f"{prefix}{name}")
    return names
