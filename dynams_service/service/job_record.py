"""A job's state as one immutable record, with its transitions in one table.

The job table holds one ``Job`` per job and replaces it under its lock at each
transition, as a job holds one ``Round`` per selection round (``rounds.py``): a record
read under the lock is a consistent snapshot. What is not state (the running scorers,
the shuffled epoch lists, the time of the last call) lives beside it in the table's
``JobEntry``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..core.data.shards import DatasetManifest
from ..core.job import JobSpec, JobState, RoundState
from ..core.selection.policy import Plan
from .dataset_identity import DatasetEncoding
from .rounds import Round

__all__ = ["Job", "Quarantined", "JobState"]

# Which states each state may be entered from. A job is created IDLE; it is ACTIVE while
# its scorers run; released, it is IDLE again (rounds remain) or FINISHED (none remain).
# DELETED ends it: rounds in flight see it and stop. FAILED belongs to ``Quarantined``.
_ENTERED_FROM = {
    JobState.ACTIVE: {JobState.IDLE},
    JobState.IDLE: {JobState.ACTIVE},
    JobState.FINISHED: {JobState.ACTIVE, JobState.IDLE},  # IDLE: restored with every round
    JobState.DELETED: {JobState.IDLE, JobState.ACTIVE, JobState.FINISHED},
}


@dataclass(frozen=True)
class Job:
    """One job: what it was created with, its plan, its rounds and its state."""

    spec: JobSpec
    plan: Plan
    manifest: DatasetManifest
    encoding: DatasetEncoding  # the dataset's when the job was created: part of its identity
    proxy_spec: dict[str, tuple[str, tuple[int, ...]]]  # the PSP's tensors: name → (dtype, shape)
    rounds: tuple[Round, ...]  # one per selection round, indexed by round number
    state: JobState = JobState.IDLE

    @property
    def job_id(self) -> str:
        return self.spec.job_id

    @property
    def finished(self) -> bool:
        return all(r.state is RoundState.DONE for r in self.rounds)

    @property
    def scoring(self) -> bool:
        return any(r.state is RoundState.SCORING for r in self.rounds)

    def rounds_in(self, state: RoundState) -> int:
        return sum(r.state is state for r in self.rounds)

    def with_round(self, round_: Round) -> Job:
        """The job with one round replaced by its next record."""
        if self.state is JobState.DELETED:
            raise AssertionError(f"job {self.job_id} is deleted; its rounds do not change")
        rounds = list(self.rounds)
        rounds[round_.index] = round_
        return replace(self, rounds=tuple(rounds))

    def started(self) -> Job:
        """Its scorers run."""
        return self._enter(JobState.ACTIVE)

    def released(self) -> Job:
        """Its scorers were stopped: FINISHED when every round is selected, else IDLE."""
        return self._enter(JobState.FINISHED if self.finished else JobState.IDLE)

    def restored(self) -> Job:
        """Taken back from disk (IDLE): FINISHED if every round was saved."""
        return self._enter(JobState.FINISHED) if self.finished else self

    def deleted(self) -> Job:
        return self._enter(JobState.DELETED)

    def _enter(self, state: JobState) -> Job:
        if self.state not in _ENTERED_FROM[state]:
            raise AssertionError(f"job {self.job_id} cannot go from {self.state.value} to "
                                 f"{state.value}")
        return replace(self, state=state)


@dataclass(frozen=True)
class Quarantined:
    """A persisted job whose state could not be read or restored: listed as FAILED, kept
    on disk until deleted."""

    job_id: str
    spec: JobSpec | None  # None when its spec is unreadable
    error: str
    retryable: bool = False  # its files are fine, restoring failed (e.g. dataset missing)

    state = JobState.FAILED

    def message(self) -> str:
        """What a call naming the job is told."""
        retry = ("fix what it needs and CreateJob it again with the same spec, or delete it"
                 if self.retryable else "delete it and create it again")
        return f"job {self.job_id!r} could not be restored ({self.error}); {retry}"
