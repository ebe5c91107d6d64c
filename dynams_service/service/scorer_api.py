"""What the coordinator needs of a job's scorers, and how it starts them by default.

The coordinator and its parts are typed against ``Scorers``; the Ray implementation
(``scorer.JobScorers``) is imported only when the first job starts its scorers, so the
coordinator loads no Ray, and tests run its logic with in-process scorers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    from ..core.data.shards import DatasetManifest
    from ..core.job import JobSpec

__all__ = ["Scorers", "ScorerFactory", "start_ray_scorers"]


class Scored(Protocol):
    seconds: float


class Selected(Protocol):
    indices: np.ndarray
    margins: np.ndarray
    passes: int
    weights: np.ndarray | None  # loss weights, for a reweighting policy


class Scorers(Protocol):
    """A job's running scorers: they hold the dataset, score it and select from it."""

    names: Sequence[str]
    infos: Sequence[dict]

    def score(self, snapshot: dict[str, np.ndarray], score: str) -> Scored: ...

    def select(self, k: int, round_: int = 0) -> Selected: ...

    def shutdown(self) -> None: ...


class ScorerFactory(Protocol):
    """Starts a job's scorers; raises ``errors.Internal`` if they cannot be placed within
    ``ready_timeout`` seconds."""

    def __call__(self, spec: JobSpec, manifest: DatasetManifest, *,
                 ready_timeout: float) -> Scorers: ...


def start_ray_scorers(spec: JobSpec, manifest: DatasetManifest, *, ready_timeout: float,
                      **options: Any) -> Scorers:
    """The default factory: one Ray actor per shard group (``scorer.JobScorers``)."""
    from .scorer import JobScorers

    return JobScorers(spec, manifest, ready_timeout=ready_timeout, **options)
