"""Scorer actors: each holds its shard group's decoded samples and scores PSP snapshots.

``ScorerPool`` is the local facade over a job's K named actors
(``dynams:<job>:scorer:<i>``): it creates them, fans a snapshot out, merges the results
and turns Ray failures into the service's own errors.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass

import numpy as np
import ray
import torch
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

from ..core.job import JobSpec
from ..core.models import build_architecture
from ..core.scoring import score
from ..core.shards import DatasetManifest, decode_samples, read_shards, shard_groups
from .errors import Internal

__all__ = ["ScorerActor", "ScorerPool", "scorer_name", "ScoredShards"]

log = logging.getLogger(__name__)


def scorer_name(job_id: str, i: int) -> str:
    return f"dynams:{job_id}:scorer:{i}"


class ScorerActor:
    """Scores its rows with pushed PSP weights (a Ray actor; one per shard group)."""

    def __init__(self, dataset_uri: str, manifest_json: str, shard_ids: list[int],
                 architecture: str, width: float, batch_size: int, threads: int) -> None:
        torch.set_num_threads(max(1, threads))
        manifest = DatasetManifest.model_validate_json(manifest_json)
        rows = read_shards(dataset_uri, shard_ids, manifest=manifest)
        gpus = ray.get_gpu_ids()
        self.device = torch.device("cuda" if gpus and torch.cuda.is_available() else "cpu")
        self.indices = rows.indices
        self.labels = torch.from_numpy(rows.labels).to(self.device)
        self.inputs = decode_samples(rows.samples, manifest).to(self.device)
        self.proxy = build_architecture(architecture).make_proxy(width).to(self.device)
        self.batch_size = batch_size

    def info(self) -> dict:
        """Where this scorer runs and what it holds."""
        return {"node_id": ray.get_runtime_context().get_node_id(), "device": str(self.device),
                "rows": int(len(self.indices)),
                "input_bytes": int(self.inputs.numel() * self.inputs.element_size())}

    def score(self, snapshot: dict[str, np.ndarray], mode: str) -> tuple[np.ndarray, np.ndarray]:
        """(indices, margins) of this scorer's rows under the snapshot's weights."""
        state = {name: torch.from_numpy(np.array(a)) for name, a in snapshot.items()}
        self.proxy.load_state_dict(state, strict=True)
        labels = self.labels if mode == "signed" else None
        margins = score(self.proxy, self.inputs, labels, mode=mode, batch_size=self.batch_size)
        return self.indices, margins.numpy()


@dataclass(frozen=True)
class ScoredShards:
    """All scorers' margins, ordered by dataset index."""

    margins: np.ndarray
    seconds: float


class ScorerPool:
    """The K named scorer actors of one job, behind a local facade."""

    def __init__(self, spec: JobSpec, manifest: DatasetManifest,
                 ready_timeout: float = 300) -> None:
        self.job_id = spec.job_id
        self.num_samples = manifest.num_samples
        res = spec.resources
        groups = shard_groups(manifest, res.num_scorers)
        remote = ray.remote(ScorerActor).options  # type: ignore[attr-defined]
        self.names = [scorer_name(spec.job_id, i) for i in range(res.num_scorers)]
        self.actors = []
        for name, group in zip(self.names, groups, strict=True):
            actor = _create_named(lambda n=name, g=group: remote(
                name=n, num_cpus=res.num_cpus, num_gpus=res.num_gpus,
                max_restarts=-1, max_task_retries=-1,
            ).remote(spec.dataset_uri, manifest.model_dump_json(), g, spec.proxy.architecture,
                     spec.proxy.width, res.batch_size, int(max(1, res.num_cpus))), name)
            self.actors.append(actor)
        try:
            self.infos = ray.get([a.info.remote() for a in self.actors], timeout=ready_timeout)
        except (GetTimeoutError, RayActorError, RayTaskError) as exc:
            self.shutdown()
            raise Internal(f"scorers of job {spec.job_id!r} did not start: {exc}") from None

    def score(self, snapshot_ref: ray.ObjectRef, mode: str, timeout: float = 3600) -> ScoredShards:
        """Fan the snapshot out to every scorer and merge margins by index.

        A scorer that dies is restarted by Ray and its task retried, so the result is the
        same as without the failure.
        """
        started = time.perf_counter()
        futures = [a.score.remote(snapshot_ref, mode) for a in self.actors]
        try:
            results = ray.get(futures, timeout=timeout)
        except (GetTimeoutError, RayActorError, RayTaskError) as exc:
            raise Internal(f"scoring failed for job {self.job_id!r}: {exc}") from None
        margins = np.full(self.num_samples, np.nan, dtype=np.float32)
        for indices, part in results:
            margins[indices] = part
        if np.isnan(margins).any():
            raise Internal(f"job {self.job_id!r}: scorers returned NaN or missing margins")
        return ScoredShards(margins, time.perf_counter() - started)

    def shutdown(self) -> None:
        for actor in self.actors:
            with contextlib.suppress(Exception):  # already gone is fine
                ray.kill(actor, no_restart=True)
        self.actors = []


def _create_named(create, name: str, timeout: float = 30.0):
    """Create a named actor, waiting while a killed predecessor still holds the name."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return create()
        except ValueError as exc:
            if "already" not in str(exc) or time.monotonic() > deadline:
                raise Internal(f"cannot create actor {name}: {exc}") from None
            time.sleep(0.2)
