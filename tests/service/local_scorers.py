"""A job's scorers in the test process, for the coordinator's logic without Ray.

``LocalScorers`` is a real implementation of ``scorer_api.Scorers``: the pushed weights
load into the real proxy, which scores the job's real shards; the core selects. Tests
steer it through its ``LocalCluster``: hold scoring at a gate, make the next scorings
fail, refuse placement, and see which scorers started and which were stopped.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from dynams_service import score
from dynams_service.core.data.shards import DatasetManifest, decode_samples, read_shards
from dynams_service.core.job import JobSpec
from dynams_service.core.models.models import build_architecture
from dynams_service.core.models.proxy import load_proxy
from dynams_service.core.selection.selection_rules import round_seed, rule_select_rows
from dynams_service.service.errors import Internal, ScorersReleased


@dataclass
class LocalCluster:
    """The factory the coordinator is given, and the tests' handle on what it started."""

    gate: threading.Event = field(default_factory=threading.Event)  # scoring waits on it
    failures: int = 0  # the next this many scorings raise Internal, as a dead actor does
    refuse: bool = False  # placement fails, as on a full cluster
    started: list[LocalScorers] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.gate.set()

    def __call__(self, spec: JobSpec, manifest: DatasetManifest, *,
                 ready_timeout: float) -> LocalScorers:
        if self.refuse:
            raise Internal(f"the cluster cannot place job {spec.job_id!r}'s scorers")
        scorers = LocalScorers(self, spec, manifest)
        self.started.append(scorers)
        return scorers

    def running(self, job_id: str) -> list[LocalScorers]:
        return [s for s in self.started if s.spec.job_id == job_id and not s.stopped]


@dataclass
class Scored:
    rows: int
    seconds: float


@dataclass
class Selected:
    indices: np.ndarray
    margins: np.ndarray
    passes: int = 1
    weights: np.ndarray | None = None


class LocalScorers:
    """One job's scorers: the dataset decoded in memory, scored with the pushed weights."""

    def __init__(self, cluster: LocalCluster, spec: JobSpec, manifest: DatasetManifest) -> None:
        self.cluster = cluster
        self.spec = spec
        rows = read_shards(spec.dataset_uri, manifest=manifest)
        self.inputs = decode_samples(rows.samples, manifest)
        self.labels = rows.labels
        self.names = [f"local:{spec.job_id}:scorer:{i}"
                      for i in range(spec.resources.num_scorers)]
        self.infos = [{"node_id": "local", "device": "cpu", "rows": len(self.labels),
                       "input_bytes": int(self.inputs.nbytes)} for _ in self.names]
        self.margins: np.ndarray | None = None
        self.stopped = False

    def score(self, snapshot: dict[str, np.ndarray], score_name: str) -> Scored:
        started = time.perf_counter()
        self.cluster.gate.wait()
        if self.stopped:
            raise ScorersReleased(f"scorers of job {self.spec.job_id!r} were released")
        if self.cluster.failures > 0:
            self.cluster.failures -= 1
            raise Internal(f"scorer of job {self.spec.job_id!r} died")
        proxy = build_architecture(self.spec.proxy.architecture).make_proxy(self.spec.proxy.width)
        load_proxy(proxy, {name: torch.from_numpy(a) for name, a in snapshot.items()})
        self.margins = score(proxy, self.inputs, torch.from_numpy(self.labels), score=score_name,
                             batch_size=self.spec.resources.batch_size).numpy()
        return Scored(len(self.labels), time.perf_counter() - started)

    def select(self, k: int, round_: int = 0) -> Selected:
        """The policy's rule on one part holding every row, seeded as the Ray scorers are."""
        policy = self.spec.policy
        chosen = rule_select_rows(self.margins, self.labels, k=k, rule=policy.rule,
                                  seed=round_seed(policy.seed, round_),
                                  per_class=policy.per_class)
        return Selected(chosen.indices, chosen.margins, chosen.passes, chosen.weights)

    def shutdown(self) -> None:
        self.stopped = True
