"""What GetJob and ListJobs report: a job's status built from a snapshot of its record.

A snapshot is taken under the table's lock (the record is immutable, the scorers' names
and infos are copied); the status is built from it outside the lock.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..core.job import JobSpec, JobState, RoundState
from ..core.selection.policy import Plan
from .job_record import Job, Quarantined
from .job_table import JobEntry
from .rounds import Round

__all__ = ["RoundStatus", "JobSummary", "JobStatus", "Snapshot", "summary_of"]


@dataclass(frozen=True)
class RoundStatus:
    round: int
    epoch: int
    state: RoundState
    weights_version: int = -1
    selected: int = 0
    seconds: float = 0.0
    error: str = ""

    @classmethod
    def of(cls, r: Round) -> RoundStatus:
        if r.state is RoundState.DONE:
            return cls(r.index, r.epoch, r.state, r.weights_version, len(r.result.indices),
                       r.result.seconds)
        if r.state is RoundState.FAILED:
            return cls(r.index, r.epoch, r.state, error=r.error)
        return cls(r.index, r.epoch, r.state, r.weights_version)


@dataclass(frozen=True)
class JobSummary:
    """A job in a few fields (ListJobs): bounded whatever the job's length."""

    job_id: str
    spec: JobSpec | None  # None for a quarantined job whose spec is unreadable
    state: JobState
    rounds_total: int = 0
    rounds_done: int = 0
    error: str = ""


@dataclass(frozen=True)
class JobStatus:
    spec: JobSpec
    plan: Plan
    rounds: list[RoundStatus]
    scorers: list[str]
    scorer_infos: list[dict]  # name, node_id, device, rows, input_bytes
    summary: JobSummary


def summary_of(job: Job | Quarantined) -> JobSummary:
    if isinstance(job, Quarantined):
        return JobSummary(job.job_id, job.spec, job.state, error=job.error)
    return JobSummary(job.job_id, job.spec, job.state, len(job.rounds),
                      job.rounds_in(RoundState.DONE))


@dataclass(frozen=True)
class Snapshot:
    """A job's record and its scorers' names and infos, copied under the lock."""

    job: Job
    names: list[str]
    infos: list[dict]

    @classmethod
    def of(cls, entry: JobEntry) -> Snapshot:
        scorers = entry.scorers
        return cls(entry.record, list(scorers.names) if scorers else [],
                   list(scorers.infos) if scorers else [])

    def status(self) -> JobStatus:
        job = self.job
        infos = [{"name": n, **i} for n, i in zip(self.names, self.infos, strict=False)]
        return JobStatus(job.spec, job.plan, [RoundStatus.of(r) for r in job.rounds],
                         self.names, infos, summary_of(job))
