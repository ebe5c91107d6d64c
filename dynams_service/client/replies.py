"""What the selector answers, as the client's own frozen dataclasses.

The protobuf messages stop here: ``client.py`` converts every reply with these functions,
and a reply that breaks the protocol raises ``ProtocolError`` (which the client turns
into a ``SelectorError`` with ``Reason.MALFORMED_REPLY``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydantic import ValidationError

from ..core.job import JobSpec, JobState, RoundState, SelectionKind
from ..protocol import (
    JOB_STATES,
    ROUND_STATES,
    SELECTION_KINDS,
    ProtocolError,
    from_wire,
    pb,
    spec_from_proto,
)

__all__ = ["RoundInfo", "ScorerInfo", "JobInfo", "PushResult", "Selection"]


@dataclass(frozen=True)
class RoundInfo:
    """One selection round: the epoch that starts it, its state and outcome."""

    round: int
    epoch: int
    state: RoundState
    weights_version: int = -1
    selected: int = 0
    seconds: float = 0.0  # scoring and selection wall time
    error: str = ""       # why it failed (``RoundState.FAILED``)


@dataclass(frozen=True)
class ScorerInfo:
    """One scorer actor: its name, where it runs and what it holds."""

    name: str
    node_id: str
    device: str
    rows: int
    input_bytes: int


@dataclass(frozen=True)
class JobInfo:
    """A job as the selector reports it. ``list_jobs`` fills only ``job_id``, ``spec``,
    ``state``, ``error``, the round counts and ``dashboard_url``; ``spec`` is None for a
    failed job whose saved spec is unreadable."""

    job_id: str
    spec: JobSpec | None
    state: JobState | None  # None: the selector did not say (a freshly created job)
    rounds_total: int = 0
    rounds_done: int = 0
    error: str = ""
    dashboard_url: str = ""
    epoch_sizes: tuple[int, ...] = ()  # the plan: samples per epoch, all ranks together
    fraction_trained: float = 0.0
    rounds: tuple[RoundInfo, ...] = ()
    scorers: tuple[str, ...] = ()  # named actors
    scorer_status: tuple[ScorerInfo, ...] = ()  # empty until the scorers run

    @classmethod
    def from_proto(cls, message: pb.Job) -> JobInfo:
        try:
            spec = spec_from_proto(message.spec) if message.spec.fingerprint.num_samples else None
        except ValidationError as exc:
            raise ProtocolError(f"job spec: {exc.errors()[0]['msg']}") from None
        state = (None if message.state == pb.JOB_STATE_UNSPECIFIED
                 else from_wire(JOB_STATES, message.state, "job.state"))
        return cls(
            job_id=message.spec.job_id, spec=spec, state=state,
            rounds_total=message.rounds_total, rounds_done=message.rounds_done,
            error=message.error, dashboard_url=message.dashboard_url,
            epoch_sizes=tuple(message.epoch_sizes), fraction_trained=message.fraction_trained,
            rounds=tuple(RoundInfo(r.round, r.epoch,
                                   from_wire(ROUND_STATES, r.state, "round.state"),
                                   r.weights_version, r.selected, r.seconds, r.error)
                         for r in message.rounds),
            scorers=tuple(message.scorers),
            scorer_status=tuple(ScorerInfo(s.name, s.node_id, s.device, s.rows, s.input_bytes)
                                for s in message.scorer_status))


@dataclass(frozen=True)
class PushResult:
    """A committed push: the round it is for and whether that round was already done
    (then its answer is unchanged)."""

    job_id: str
    version: int
    round: int
    bytes_received: int
    already_done: bool

    @classmethod
    def from_proto(cls, message: pb.PushAck) -> PushResult:
        return cls(message.job_id, message.version, message.round, message.bytes_received,
                   message.already_done)


@dataclass(frozen=True, eq=False)
class Selection:
    """One rank's part of one epoch: the indices and where they come from. Two are equal
    when every field is, the indices element by element."""

    epoch: int
    round: int            # -1 for full-data epochs
    weights_version: int  # -1 for full-data epochs
    kind: SelectionKind   # FULL or SUBSET (FALLBACK is the sampler's, never an answer)
    global_count: int     # the canonical list's length, before padding
    indices: np.ndarray   # int64, this rank's part
    weights: np.ndarray | None = None  # float32 loss weight per index (weighted jobs only)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Selection):
            return NotImplemented
        same_weights = (self.weights is None and other.weights is None) or (
            self.weights is not None and other.weights is not None
            and np.array_equal(self.weights, other.weights))
        return (self.epoch, self.round, self.weights_version, self.kind, self.global_count) \
            == (other.epoch, other.round, other.weights_version, other.kind,
                other.global_count) and np.array_equal(self.indices, other.indices) \
            and same_weights

    __hash__ = None  # type: ignore[assignment]

    @classmethod
    def from_proto(cls, header: pb.SelectionHeader, indices: np.ndarray,
                   weights: np.ndarray | None = None) -> Selection:
        return cls(header.epoch, header.round, header.weights_version,
                   from_wire(SELECTION_KINDS, header.kind, "selection.kind"),
                   header.global_count, indices, weights)
