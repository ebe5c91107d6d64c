"""Helpers for the selector tests (the fixtures live in tests/conftest.py)."""

from __future__ import annotations

import numpy as np

from dynams_service import JobSpec, ProxySpec, ScorerResources, SelectionPolicy


def make_spec(small_shards, job_id: str = "fmnist-small", **policy) -> JobSpec:
    uri, manifest = small_shards
    policy = {"ratio": 0.3, "warmup_epochs": 1, "interval_epochs": 1, "seed": 7,
              "class_balance": "per_class", **policy}  # the checks compare per-class picks
    return JobSpec(job_id=job_id, dataset_uri=uri, fingerprint=manifest.fingerprint,
                   proxy=ProxySpec(architecture="fmnist-cnn", width=0.25),
                   policy=SelectionPolicy(**policy), epochs=4,
                   resources=ScorerResources(num_scorers=2, num_cpus=1, batch_size=256))


def gather(client, job_id: str, epoch: int, world_size: int, drop_last: bool = False):
    """Every rank's answer for one epoch."""
    return [client.get_selection(job_id, epoch, rank, world_size, drop_last=drop_last,
                                 timeout=120) for rank in range(world_size)]


def canonical_from_parts(parts: list[np.ndarray], global_count: int) -> np.ndarray:
    """Undo the rank split: interleave parts, drop the padding."""
    world = len(parts)
    order = np.empty(len(parts[0]) * world, dtype=np.int64)
    for rank, part in enumerate(parts):
        order[rank::world] = part
    return order[:global_count]
