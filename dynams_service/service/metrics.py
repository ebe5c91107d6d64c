"""Per-job custom metrics (``ray.util.metrics``), shown in the Ray dashboard/Prometheus."""

from __future__ import annotations

from functools import cached_property

from ray.util import metrics

__all__ = ["SelectorMetrics"]


class SelectorMetrics:
    """The selector's metrics, created lazily (Ray must be initialised), tagged by job."""

    @cached_property
    def samples_scored(self) -> metrics.Counter:
        return metrics.Counter("dynams_samples_scored", "samples scored", tag_keys=("job",))

    @cached_property
    def scoring_seconds(self) -> metrics.Counter:
        return metrics.Counter("dynams_scoring_seconds", "seconds spent scoring",
                               tag_keys=("job",))

    @cached_property
    def round_latency(self) -> metrics.Histogram:
        return metrics.Histogram("dynams_round_latency_seconds",
                                 "push-to-selection latency of a round",
                                 boundaries=[0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300],
                                 tag_keys=("job",))

    @cached_property
    def weight_pushes(self) -> metrics.Counter:
        return metrics.Counter("dynams_weight_pushes", "weight pushes committed",
                               tag_keys=("job",))

    @cached_property
    def bytes_pushed(self) -> metrics.Counter:
        return metrics.Counter("dynams_bytes_pushed", "PSP bytes pushed", tag_keys=("job",))

    @cached_property
    def weights_version(self) -> metrics.Gauge:
        return metrics.Gauge("dynams_weights_version", "latest weights version",
                             tag_keys=("job",))

    @cached_property
    def selections_served(self) -> metrics.Counter:
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
