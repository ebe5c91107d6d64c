"""Scorer actors: each streams its shard group's samples and scores PSP snapshots.

``JobScorers`` is the local facade over one job's K named actors
(``dynams:<job>:scorer:<i>``): it creates them, puts a numpy snapshot of the weights in
Ray's object store, fans it out, merges the results and turns Ray failures into the
service's own errors. Nothing Ray-specific crosses it: callers pass and get numpy.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass

import numpy as np
import ray
import torch
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

from ..core.decoders import Normalizer
from ..core.job import JobSpec
from ..core.models import build_architecture
from ..core.registry import load_plugin_modules, plugin_modules
from ..core.scoring import score_batches
from ..core.shards import DatasetManifest, ShardError, shard_groups
from ..core.stream import ShardStream
from .errors import Internal

__all__ = ["ScorerActor", "JobScorers", "scorer_name", "ScoredShards"]

log = logging.getLogger(__name__)


def scorer_name(job_id: str, i: int) -> str:
    return f"dynams:{job_id}:scorer:{i}"


class ScorerActor:
    """Scores its rows with pushed PSP weights (a Ray actor; one per shard group).

    Rows stream from the shards each round through a ``ShardStream``; decoded rows are kept
    up to ``cache_bytes`` (see NOTE [ streaming and caching ] in ``core.stream``).
    """

    def __init__(self, dataset_uri: str, manifest_json: str, shard_ids: list[int],
                 architecture: str, width: float, batch_size: int, threads: int,
                 cache_bytes: int = 0, plugins: tuple[str, ...] = ()) -> None:
        torch.set_num_threads(max(1, threads))
        load_plugin_modules(plugins)  # the operator's architectures, decoders and scores
        manifest = DatasetManifest.model_validate_json(manifest_json)
        gpus = ray.get_gpu_ids()
        if gpus and not torch.cuda.is_available():  # CPU only when the job asks for 0 GPUs
            raise RuntimeError(f"Ray gave this scorer GPU {gpus} but torch sees no CUDA device; "
                               "install a CUDA build of torch on the GPU workers, or create "
                               "the job with num_gpus=0 to score on CPU")
        self.device = torch.device("cuda" if gpus else "cpu")
        self.stream = ShardStream(dataset_uri, manifest, shard_ids, batch_size=batch_size,
                                  cache_bytes=cache_bytes, decode_threads=max(1, threads),
                                  device=self.device)
        self.normalize = Normalizer(manifest.mean, manifest.std)
        self.proxy = build_architecture(architecture).make_proxy(width).to(self.device)

    def info(self) -> dict:
        """Where this scorer runs and what it holds."""
        return {"node_id": ray.get_runtime_context().get_node_id(), "device": str(self.device),
                "rows": self.stream.num_rows, "input_bytes": self.stream.cached_bytes}

    def pid(self) -> int:
        """The actor's process id (for operators and fault-injection tests)."""
        return os.getpid()

    def peak_rss(self) -> int:
        """This process's peak resident memory in bytes (VmHWM; for memory benchmarks)."""
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        return 0

    def score(self, snapshot: dict[str, np.ndarray], mode: str) -> tuple[np.ndarray, np.ndarray]:
        """(indices, scores) of this scorer's rows under the snapshot's weights; ``mode``
        names a registered score (built-in or from the operator's plug-in modules)."""
        state = {name: torch.from_numpy(np.array(a)) for name, a in snapshot.items()}
        self.proxy.load_state_dict(state, strict=True)
        batches = ((self.normalize(b.samples.to(self.device, non_blocking=True)),
                    torch.from_numpy(b.labels)) for b in self.stream)
        margins = score_batches(self.proxy, batches, self.stream.num_rows, mode=mode)
        return self.stream.indices, margins.numpy()


@dataclass(frozen=True)
class ScoredShards:
    """All scorers' margins, ordered by dataset index."""

    margins: np.ndarray
    seconds: float


class JobScorers:
    """The K named scorer actors of one job, behind a local facade.

    With several scorers, a placement group with the SPREAD strategy puts them on
    different nodes where the cluster has them (each bundle asks for the job's num_cpus /
    num_gpus). A scorer whose process dies is restarted by Ray and its task retried; one
    killed for good is re-created here and its shard group scored again, so a round's
    result never depends on failures.
    """

    def __init__(self, spec: JobSpec, manifest: DatasetManifest,
                 ready_timeout: float = 300, max_recreations: int = 3) -> None:
        self.job_id = spec.job_id
        self.spec = spec
        self.manifest = manifest
        self.num_samples = manifest.num_samples
        self.max_recreations = max_recreations
        res = spec.resources
        self.groups = shard_groups(manifest, res.num_scorers)
        self.names = [scorer_name(spec.job_id, i) for i in range(res.num_scorers)]
        self.placement_group = self._reserve(ready_timeout)
        self.actors = []
        self.infos: list[dict] = []
        try:
            self.actors = [self._start_actor(i) for i in range(res.num_scorers)]
            self.infos = ray.get([a.info.remote() for a in self.actors], timeout=ready_timeout)
        except (GetTimeoutError, RayActorError, RayTaskError, Internal) as exc:
            self.shutdown()
            raise Internal(f"scorers of job {spec.job_id!r} did not start: {exc}") from None

    def _bundle(self) -> dict[str, float]:
        res = self.spec.resources
        return {k: v for k, v in (("CPU", res.num_cpus), ("GPU", res.num_gpus)) if v > 0}

    def _reserve(self, timeout: float):
        """A SPREAD placement group for K > 1 scorers that ask for resources, else None."""
        if len(self.names) < 2 or not self._bundle():
            return None
        from ray.util.placement_group import placement_group

        group = placement_group([self._bundle()] * len(self.names), strategy="SPREAD",
                                name=f"dynams:{self.job_id}:scorers")
        try:
            ray.get(group.ready(), timeout=timeout)
        except GetTimeoutError:
            from ray.util.placement_group import remove_placement_group

            remove_placement_group(group)
            raise Internal(f"the cluster cannot place {len(self.names)} scorers of "
                           f"{self._bundle()} each within {timeout:.0f}s") from None
        return group

    def _start_actor(self, i: int):
        res = self.spec.resources
        options = {"name": self.names[i], "num_cpus": res.num_cpus, "num_gpus": res.num_gpus,
                   "max_restarts": -1, "max_task_retries": -1}
        if self.placement_group is not None:
            from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

            options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                placement_group=self.placement_group, placement_group_bundle_index=i)
        remote = ray.remote(ScorerActor)  # type: ignore[attr-defined]
        return _create_named(lambda: remote.options(**options).remote(
            self.spec.dataset_uri, self.manifest.model_dump_json(), self.groups[i],
            self.spec.proxy.architecture, self.spec.proxy.width, res.batch_size,
            int(max(1, res.num_cpus)), res.cache_bytes, tuple(plugin_modules())),
            self.names[i])

    def score(self, snapshot: dict[str, np.ndarray], mode: str,
              timeout: float = 3600) -> ScoredShards:
        """Score every row with the snapshot's weights (name → numpy array); margins are
        merged by dataset index. Raises ``Internal`` on a timeout or a failed scorer."""
        started = time.perf_counter()
        deadline = time.monotonic() + timeout
        snapshot_ref = ray.put(snapshot)  # stored once, read by every scorer
        pending = {a.score.remote(snapshot_ref, mode): i for i, a in enumerate(self.actors)}
        recreated = [0] * len(self.actors)
        results = {}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1,
                                timeout=max(0.0, deadline - time.monotonic()))
            if not ready:
                raise Internal(f"scoring for job {self.job_id!r} timed out after {timeout}s")
            i = pending.pop(ready[0])
            try:
                results[i] = ray.get(ready[0])
            except RayActorError as exc:
                if not self.actors:  # shut down while the round ran: nothing to re-create
                    raise Internal(f"the scorers of job {self.job_id!r} were released during "
                                   "the round (selector stopping or job deleted)") from None
                recreated[i] += 1
                if recreated[i] > self.max_recreations:
                    raise Internal(f"scorer {self.names[i]} died {recreated[i]} times: "
                                   f"{exc}") from None
                log.warning("scorer %s is gone (%s); re-creating it and rescoring its "
                            "shards", self.names[i], type(exc).__name__)
                self.actors[i] = self._start_actor(i)
                self.infos[i] = ray.get(self.actors[i].info.remote(), timeout=timeout)
                pending[self.actors[i].score.remote(snapshot_ref, mode)] = i
            except RayTaskError as exc:
                if isinstance(exc.cause, ShardError):  # a corrupt sample: name shard and row
                    raise Internal(f"scorer {self.names[i]}: {exc.cause}") from None
                raise Internal(f"scorer {self.names[i]} failed: {exc}") from None
        with contextlib.suppress(GetTimeoutError, RayActorError, RayTaskError):
            # What each scorer holds now (its cache fills during its first round).
            self.infos = ray.get([a.info.remote() for a in self.actors], timeout=30)
        margins = np.full(self.num_samples, np.nan, dtype=np.float32)
        for indices, part in results.values():
            margins[indices] = part
        if np.isnan(margins).any():
            raise Internal(f"job {self.job_id!r}: scorers returned NaN or missing margins")
        return ScoredShards(margins, time.perf_counter() - started)

    def shutdown(self) -> None:
        for actor in self.actors:
            with contextlib.suppress(Exception):  # already gone is fine
                ray.kill(actor, no_restart=True)
        self.actors = []
        if self.placement_group is not None:
            from ray.util.placement_group import remove_placement_group

            with contextlib.suppress(Exception):
                remove_placement_group(self.placement_group)
            self.placement_group = None


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
