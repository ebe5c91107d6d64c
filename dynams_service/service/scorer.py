"""Scorer actors: each streams its shard group's samples and scores PSP snapshots.

``JobScorers`` is the local facade over one job's K named actors
(``dynams:<job>:scorer:<i>``): it creates them, puts a numpy snapshot of the weights in
Ray's object store, fans it out, runs the round's k-selection over the margins the
actors keep, and turns Ray failures into the service's own errors. Nothing Ray-specific
crosses it: callers pass and get numpy.

NOTE [ scorers keep their margins ]
A round's margins never travel to the head. Each actor keeps its shard group's margins,
dataset indices and labels as a ``SelectionPart`` (sorted for the job's class balance at
the end of scoring); ``JobScorers.select`` runs ``core.distributed_selection`` over the
actors (a census, a few histogram passes of O(bins) each, a take), and only the selected
indices and their margins come back. A part is lost with its actor: when one dies (or Ray
restarts it empty) between scoring and the take, that actor's shard group is scored again
with the round's snapshot and the selection starts over, so the result never depends on
failures.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from dataclasses import dataclass

import numpy as np
import ray
import torch
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

from ..core.data.decoders import Normalizer
from ..core.data.shards import DatasetManifest, ShardError, shard_groups
from ..core.data.stream import ShardStream
from ..core.job import JobSpec
from ..core.models.models import build_architecture
from ..core.registry import load_plugin_modules, plugin_modules
from ..core.selection.distributed_selection import (
    Census,
    DistributedSelection,
    RangeQuery,
    SelectionPart,
    Summary,
    Thresholds,
)
from ..core.selection.scoring import score_batches
from ..core.selection.selection_rules import PartView, round_seed, rule_select, view_part
from .errors import Internal, ScorersReleased

__all__ = ["ScorerActor", "JobScorers", "PartHolder", "PartMissing", "scorer_name",
           "ScoredShards"]

log = logging.getLogger(__name__)


def scorer_name(job_id: str, i: int) -> str:
    return f"dynams:{job_id}:scorer:{i}"


class PartMissing(RuntimeError):
    """A scorer was asked for its part but holds none (restarted since it scored)."""


class PartHolder:
    """The part side of the round's k-selection, mixed into every scorer actor class.

    A subclass sets ``self.part`` (a ``SelectionPart``) when it scores; the head's passes
    (``census``, ``summary``, ``take``) are answered from it. See NOTE [ scorers keep their
    margins ].
    """

    part: SelectionPart | None = None
    _view: tuple[str, SelectionPart] | None = None  # the last re-keyed part (rules)

    def keep_part(self, indices: np.ndarray, margins: np.ndarray, labels: np.ndarray | None,
                  per_class: bool) -> int:
        """Hold this round's scores, sorted for ``per_class``; returns the row count."""
        self.part = self._view = None  # the previous round's go before the new one is built
        self.part = SelectionPart(margins, indices, labels)
        self.part.prepare(per_class)
        return len(self.part)

    def _held(self, view: PartView | None = None) -> SelectionPart:
        """The part, or the part re-keyed by a selection rule's ``view`` (built once)."""
        if self.part is None:
            raise PartMissing("this scorer holds no scores (restarted since the round "
                              "scored); score its shard group again")
        if view is None:
            return self.part
        digest = view.digest()
        if self._view is None or self._view[0] != digest:
            self._view = None
            self._view = (digest, view_part(self.part, view))
        return self._view[1]

    def census(self, per_class: bool, view: PartView | None = None) -> Census:
        return self._held(view).census(per_class)

    def summary(self, query: RangeQuery, view: PartView | None = None) -> Summary:
        return self._held(view).summary(query)

    def take(self, thresholds: Thresholds,
             view: PartView | None = None) -> tuple[np.ndarray, np.ndarray]:
        return self._held(view).take(thresholds)

    def peak_rss(self) -> int:
        """This process's peak resident memory in bytes (VmHWM; for memory benchmarks)."""
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        return 0


class ScorerActor(PartHolder):
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

    def score(self, snapshot: dict[str, np.ndarray],
              score: str) -> tuple[np.ndarray, np.ndarray]:
        """(indices, scores) of this scorer's rows under the snapshot's weights; ``score``
        names a registered score (built-in or from the operator's plug-in modules)."""
        state = {name: torch.from_numpy(np.array(a)) for name, a in snapshot.items()}
        self.proxy.load_state_dict(state, strict=True)
        batches = ((self.normalize(b.samples.to(self.device, non_blocking=True)),
                    torch.from_numpy(b.labels)) for b in self.stream)
        margins = score_batches(self.proxy, batches, self.stream.num_rows, score=score)
        return self.stream.indices, margins.numpy()

    def score_part(self, snapshot: dict[str, np.ndarray], score: str, per_class: bool) -> int:
        """Score (as :meth:`score`) and keep the margins for the round's selection."""
        indices, margins = self.score(snapshot, score)
        return self.keep_part(indices, margins, self.stream.labels, per_class)


@dataclass(frozen=True)
class ScoredShards:
    """A finished scoring pass: rows scored (the margins stay in the actors) and seconds."""

    rows: int
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
                 ready_timeout: float = 300, max_recreations: int = 3, *,
                 actor_class: type[PartHolder] = ScorerActor) -> None:
        self.job_id = spec.job_id
        self.spec = spec
        self.manifest = manifest
        self.num_samples = manifest.num_samples
        self.max_recreations = max_recreations
        self.actor_class = actor_class  # ScorerActor; benchmarks plug in synthetic ones
        self._round: tuple | None = None  # (snapshot ref, score) of the parts held now
        # shutdown() may run while a round re-creates an actor: the flag, set under the
        # lock before any actor is killed, keeps the round from starting an orphan.
        self._lock = threading.Lock()
        self._released = False
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
        remote = ray.remote(self.actor_class)  # type: ignore[attr-defined]
        return _create_named(lambda: remote.options(**options).remote(
            self.spec.dataset_uri, self.manifest.model_dump_json(), self.groups[i],
            self.spec.proxy.architecture, self.spec.proxy.width, res.batch_size,
            int(max(1, res.num_cpus)), res.cache_bytes, tuple(plugin_modules())),
            self.names[i])

    def score(self, snapshot: dict[str, np.ndarray], score: str,
              timeout: float = 3600) -> ScoredShards:
        """Score every row with the snapshot's weights (name → numpy array); each actor
        keeps its margins for :meth:`select`. Raises ``Internal`` on a timeout or a failed
        scorer."""
        if self._released:
            raise self._released_error()
        started = time.perf_counter()
        deadline = time.monotonic() + timeout
        per_class = self.spec.policy.per_class
        self._round = None
        snapshot_ref = ray.put(snapshot)  # stored once, read by every scorer
        pending = {a.score_part.remote(snapshot_ref, score, per_class): i
                   for i, a in enumerate(self.actors)}
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
                if self._released:  # shut down while the round ran: nothing to re-create
                    raise self._released_error() from None
                recreated[i] += 1
                if recreated[i] > self.max_recreations:
                    raise Internal(f"scorer {self.names[i]} died {recreated[i]} times: "
                                   f"{exc}") from None
                log.warning("scorer %s is gone (%s); re-creating it and rescoring its "
                            "shards", self.names[i], type(exc).__name__)
                actor = self._restart_actor(i, timeout)
                pending[actor.score_part.remote(snapshot_ref, score, per_class)] = i
            except RayTaskError as exc:
                if isinstance(exc.cause, ShardError):  # a corrupt sample: name shard and row
                    raise Internal(f"scorer {self.names[i]}: {exc.cause}") from None
                raise Internal(f"scorer {self.names[i]} failed: {exc}") from None
        with contextlib.suppress(GetTimeoutError, RayActorError, RayTaskError):
            # What each scorer holds now (its cache fills during its first round).
            self.infos = ray.get([a.info.remote() for a in self.actors], timeout=30)
        if self._released:  # released while the round started: its actors are gone
            raise self._released_error()
        rows = sum(results.values())
        if rows != self.num_samples:
            raise Internal(f"job {self.job_id!r}: scorers hold {rows} margins, the dataset "
                           f"has {self.num_samples} rows")
        self._round = (snapshot_ref, score)
        return ScoredShards(rows, time.perf_counter() - started)

    def select(self, k: int, round_: int = 0, timeout: float = 3600) -> DistributedSelection:
        """Round ``round_``'s ``k`` samples from the last :meth:`score` under the job's
        policy: the lowest margins (per class if it says so), exactly as ``core.select``
        on all of them, or its selection rule (``core.selection_rules``, seeded by the
        policy seed and the round). Indices ascending and their margins. Only the
        selection itself travels; see NOTE [ scorers keep their margins ]. Raises
        ``Internal`` on a timeout or a scorer lost too often."""
        if self._round is None:
            raise Internal(f"job {self.job_id!r}: select() before a completed score()")
        deadline = time.monotonic() + timeout
        rescored = [0] * len(self.actors)
        while True:
            policy = self.spec.policy
            try:
                return rule_select(
                    lambda view: [_RemotePart(a, view) for a in self.actors],
                    k=k, rule=policy.rule, seed=round_seed(policy.seed, round_),
                    per_class=policy.per_class,
                    resolve=lambda futures: self._resolve(futures, deadline))
            except _PartLost as lost:
                rescored[lost.i] += 1
                if rescored[lost.i] > self.max_recreations:
                    raise Internal(f"scorer {self.names[lost.i]} lost its scores "
                                   f"{rescored[lost.i]} times during the selection") from None
                self._rescore(lost, deadline)

    def _resolve(self, futures: list, deadline: float):
        """One pass's replies in part order; a lost part raises ``_PartLost``."""
        for i, future in enumerate(futures):
            try:
                yield ray.get(future, timeout=max(0.0, deadline - time.monotonic()))
            except GetTimeoutError:
                raise Internal(f"selection for job {self.job_id!r} timed out") from None
            except RayActorError:
                if self._released:
                    raise self._released_error() from None
                raise _PartLost(i, dead=True) from None
            except RayTaskError as exc:
                if isinstance(exc.cause, PartMissing):
                    raise _PartLost(i, dead=False) from None
                raise Internal(f"scorer {self.names[i]} failed in the selection: "
                               f"{exc}") from None

    def _rescore(self, lost: _PartLost, deadline: float) -> None:
        """Score a lost part again (re-creating its actor if it is gone for good)."""
        i = lost.i
        snapshot_ref, score = self._round
        log.warning("scorer %s lost its scores before the selection (%s); rescoring its "
                    "shards", self.names[i], "gone" if lost.dead else "restarted")
        remaining = max(0.0, deadline - time.monotonic())
        try:
            with self._lock:
                if self._released:
                    raise self._released_error()
                actor = self.actors[i]
            if lost.dead:
                actor = self._restart_actor(i, remaining)
            ray.get(actor.score_part.remote(snapshot_ref, score, self.spec.policy.per_class),
                    timeout=max(0.0, deadline - time.monotonic()))
        except GetTimeoutError:
            raise Internal(f"rescoring scorer {self.names[i]} timed out") from None
        except RayActorError:
            pass  # gone again: the next selection attempt finds out and counts it
        except RayTaskError as exc:
            raise Internal(f"scorer {self.names[i]} failed rescoring: {exc}") from None

    def _released_error(self) -> ScorersReleased:
        return ScorersReleased(f"the scorers of job {self.job_id!r} were released during the "
                        "round (selector stopping or job deleted)")

    def _restart_actor(self, i: int, timeout: float) -> ray.actor.ActorHandle:
        """Scorer ``i`` started again in place of a dead one; ``Internal`` if the scorers
        are being released (then the new actor is killed, not left orphaned)."""
        if self._released:
            raise self._released_error()
        actor = self._start_actor(i)
        with self._lock:
            released = self._released
            if not released:
                self.actors[i] = actor
        if released:  # while it started
            with contextlib.suppress(Exception):
                ray.kill(actor, no_restart=True)
            raise self._released_error()
        try:
            self.infos[i] = ray.get(actor.info.remote(), timeout=timeout)
        except (GetTimeoutError, RayActorError):
            if self._released:  # killed by the release while it started
                raise self._released_error() from None
            raise
        return actor

    def shutdown(self) -> None:
        """Kill the actors and free their placement group; a round in flight then fails
        with ``Internal`` (released) and starts no actor after this."""
        with self._lock:
            self._released = True
            actors, self.actors = self.actors, []
        self._round = None
        for actor in actors:
            with contextlib.suppress(Exception):  # already gone is fine
                ray.kill(actor, no_restart=True)
        if self.placement_group is not None:
            from ray.util.placement_group import remove_placement_group

            with contextlib.suppress(Exception):
                remove_placement_group(self.placement_group)
            self.placement_group = None


class _PartLost(Exception):
    """Part ``i`` of the selection is gone: its actor died (``dead``) or restarted empty."""

    def __init__(self, i: int, dead: bool) -> None:
        super().__init__(i, dead)
        self.i, self.dead = i, dead


class _RemotePart:
    """A scorer actor as a ``PartHandle`` (re-keyed by ``view`` on the actor's side when
    given): each call returns a Ray future."""

    def __init__(self, actor, view: PartView | None = None) -> None:
        self.actor = actor
        self.extra = () if view is None else (view,)

    def census(self, per_class: bool):
        return self.actor.census.remote(per_class, *self.extra)

    def summary(self, query: RangeQuery):
        return self.actor.summary.remote(query, *self.extra)

    def take(self, thresholds: Thresholds):
        return self.actor.take.remote(thresholds, *self.extra)


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
