"""Synthetic scorers for the head's scale benchmark: Ray actors that hold a shard group's
margins, generated from the dataset index without a model or data.

``SyntheticScorer`` has the constructor and methods ``JobScorers`` calls on a real
``ScorerActor`` (``info``, ``pid``, ``peak_rss``, ``score_part``, ``census``,
``summary``, ``take``), so everything past scoring (the k-selection over the actors,
persistence, GetSelection) runs the service's real code. It is plugged in by the operator
side only: ``SelectorServer(scorer_factory=synthetic_factory())``.

The class and ``core.distributed_selection`` are shipped to the actors by value, so an
actor process imports numpy and Ray only (~30 MB), not torch (~180 MB each): 64 of them
fit beside a 10^8-sample round on one machine.
"""

from __future__ import annotations

import functools
import json
import os
import sys

import numpy as np
import ray
import ray.cloudpickle

from dynams_service.core.selection import distributed_selection
from dynams_service.core.selection.distributed_selection import SelectionPart

__all__ = ["SyntheticScorer", "synthetic_factory", "synthetic_margins"]

CHUNK = 1 << 20  # rows generated per vectorised step


def synthetic_margins(indices: np.ndarray, salt: int = 0) -> np.ndarray:
    """float32 margins in [0, 1) from a splitmix64 hash of each index: deterministic, with
    ties (24-bit values), the same in every process."""
    z = indices.astype(np.uint64) + np.uint64((0x9E3779B97F4A7C15 * (salt + 1)) % (1 << 64))
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(40)).astype(np.float32) / np.float32(1 << 24)


class SyntheticScorer:
    """A scorer actor whose rows are its shard group's index range; labels ``i % C``."""

    def __init__(self, dataset_uri: str, manifest_json: str, shard_ids: list[int],
                 architecture: str, width: float, batch_size: int, threads: int,
                 cache_bytes: int = 0, plugins: tuple[str, ...] = ()) -> None:
        manifest = json.loads(manifest_json)
        shards = manifest["shards"]
        self.start = int(shards[shard_ids[0]]["start"])
        self.stop = int(shards[shard_ids[-1]]["stop"])
        self.num_classes = int(manifest["fingerprint"]["num_classes"])
        self.part = None

    def info(self) -> dict:
        return {"node_id": ray.get_runtime_context().get_node_id(), "device": "synthetic",
                "rows": self.stop - self.start, "input_bytes": 0}

    def pid(self) -> int:
        return os.getpid()

    def peak_rss(self) -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        return 0

    def score_part(self, snapshot: dict, score: str, per_class: bool) -> int:
        self.part = None
        indices = np.arange(self.start, self.stop, dtype=np.int64)
        margins = np.empty(indices.size, dtype=np.float32)
        for a in range(0, indices.size, CHUNK):
            margins[a:a + CHUNK] = synthetic_margins(indices[a:a + CHUNK])
        labels = indices % self.num_classes if per_class else None
        self.part = SelectionPart(margins, indices, labels)
        self.part.prepare(per_class)
        return len(self.part)

    def census(self, per_class):
        return self.part.census(per_class)

    def summary(self, query):
        return self.part.summary(query)

    def take(self, thresholds):
        return self.part.take(thresholds)


def synthetic_factory(facade=None):
    """A ``scorer_factory`` for ``SelectorServer``: ``facade`` (default ``JobScorers``, or
    a subclass of it) with synthetic actors."""
    if facade is None:
        from dynams_service.service.scorer import JobScorers as facade

    for module in (sys.modules[__name__], distributed_selection):
        ray.cloudpickle.register_pickle_by_value(module)
    return functools.partial(facade, actor_class=SyntheticScorer)
