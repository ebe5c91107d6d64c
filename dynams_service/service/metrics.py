"""Per-job custom metrics (``ray.util.metrics``), shown in the Ray dashboard/Prometheus.

Ray is imported when the first metric is recorded, not with this module: the
coordinator imports no Ray.
"""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ray.util import metrics

__all__ = ["SelectorMetrics", "InMemoryMetrics", "Metrics"]


class Metrics(Protocol):
    """The events the coordinator records."""

    def round_done(self, job: str, samples: int, scoring_seconds: float,
                   latency: float) -> None: ...

    def pushed(self, job: str, nbytes: int, version: int) -> None: ...

    def served(self, job: str) -> None: ...


class SelectorMetrics:
    """The selector's metrics, created lazily (Ray must be initialised), tagged by job."""

    @cached_property
    def samples_scored(self) -> metrics.Counter:
        from ray.util import metrics

        return metrics.Counter("dynams_samples_scored", "samples scored", tag_keys=("job",))

    @cached_property
    def scoring_seconds(self) -> metrics.Counter:
        from ray.util import metrics

        return metrics.Counter("dynams_scoring_seconds", "seconds spent scoring",
                               tag_keys=("job",))

    @cached_property
    def round_latency(self) -> metrics.Histogram:
        from ray.util import metrics

        return metrics.Histogram("dynams_round_latency_seconds",
                                 "push-to-selection latency of a round",
                                 boundaries=[0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300],
                                 tag_keys=("job",))

    @cached_property
    def weight_pushes(self) -> metrics.Counter:
        from ray.util import metrics

        return metrics.Counter("dynams_weight_pushes", "weight pushes committed",
                               tag_keys=("job",))

    @cached_property
    def bytes_pushed(self) -> metrics.Counter:
        from ray.util import metrics

        return metrics.Counter("dynams_bytes_pushed", "PSP bytes pushed", tag_keys=("job",))

    @cached_property
    def weights_version(self) -> metrics.Gauge:
        from ray.util import metrics

        return metrics.Gauge("dynams_weights_version", "latest weights version",
                             tag_keys=("job",))

    @cached_property
    def selections_served(self) -> metrics.Counter:
        from ray.util import metrics

        return metrics.Counter("dynams_selections_served", "GetSelection answers",
                               tag_keys=("job",))

    def round_done(self, job: str, samples: int, scoring_seconds: float, latency: float) -> None:
        tags = {"job": job}
        self.samples_scored.inc(samples, tags)
        self.scoring_seconds.inc(scoring_seconds, tags)
        self.round_latency.observe(latency, tags)

    def pushed(self, job: str, nbytes: int, version: int) -> None:
        tags = {"job": job}
        self.weight_pushes.inc(1, tags)
        self.bytes_pushed.inc(nbytes, tags)
        self.weights_version.set(version, tags)

    def served(self, job: str) -> None:
        self.selections_served.inc(1, {"job": job})


class InMemoryMetrics:
    """The same events counted in dictionaries: for a coordinator run without Ray."""

    def __init__(self) -> None:
        self.rounds: dict[str, int] = {}
        self.samples_scored: dict[str, int] = {}
        self.pushes: dict[str, int] = {}
        self.bytes_pushed: dict[str, int] = {}
        self.weights_version: dict[str, int] = {}
        self.selections_served: dict[str, int] = {}

    def round_done(self, job: str, samples: int, scoring_seconds: float, latency: float) -> None:
        self.rounds[job] = self.rounds.get(job, 0) + 1
        self.samples_scored[job] = self.samples_scored.get(job, 0) + samples

    def pushed(self, job: str, nbytes: int, version: int) -> None:
        self.pushes[job] = self.pushes.get(job, 0) + 1
        self.bytes_pushed[job] = self.bytes_pushed.get(job, 0) + nbytes
        self.weights_version[job] = version

    def served(self, job: str) -> None:
        self.selections_served[job] = self.selections_served.get(job, 0) + 1
