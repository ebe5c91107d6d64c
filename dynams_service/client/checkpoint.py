"""SamplerCheckpoint: where a rank stands in a job, as a checkpoint stores it.

``DynaMSSampler.state_dict()`` writes one and ``load_state_dict()`` reads it back, checked
against the sampler it is loaded into: another job or another world size would give other
parts of every epoch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

__all__ = ["SamplerCheckpoint"]


@dataclass(frozen=True)
class SamplerCheckpoint:
    """A rank's position: the epoch, the samples of it already trained on, and the
    rounds whose weights were pushed (select epoch → version), so none is pushed twice."""

    job_id: str
    world_size: int
    epoch: int
    consumed: int
    pushed: dict[int, int] = field(default_factory=dict)

    @classmethod
    def at(cls, job_id: str, world_size: int, epoch: int, consumed: int, total: int,
           pushed: dict[int, int]) -> SamplerCheckpoint:
        """The position ``consumed`` samples into an epoch of ``total`` for this rank."""
        if not 0 <= consumed <= total:
            raise ValueError(f"consumed must be in [0, this epoch's {total}], got {consumed}")
        return cls(job_id, world_size, epoch, consumed, dict(pushed))

    def state(self) -> dict:
        """As a plain dict (what ``torch.save`` and Lightning checkpoints hold)."""
        return asdict(self)

    @classmethod
    def load(cls, state: dict, *, job_id: str, world_size: int, epochs: int) -> SamplerCheckpoint:
        """Read ``state`` for a sampler of ``job_id`` with ``world_size`` ranks and
        ``epochs`` epochs; a ValueError says what does not match."""
        if state.get("job_id") != job_id:
            raise ValueError(f"the checkpoint is of job {state.get('job_id')!r}, this "
                             f"sampler's is {job_id!r}")
        if state.get("world_size") != world_size:
            raise ValueError(f"the checkpoint was taken with world_size "
                             f"{state.get('world_size')}, this job runs {world_size} "
                             "ranks: the epoch's parts would differ")
        epoch, consumed = int(state["epoch"]), int(state["consumed"])
        if not 0 <= epoch < epochs:
            raise ValueError(f"epoch {epoch} must be in [0, {epochs - 1}]")
        if consumed < 0:
            raise ValueError(f"consumed must be >= 0, got {consumed}")
        pushed = {int(e): int(v) for e, v in state.get("pushed", {}).items()}
        return cls(job_id, world_size, epoch, consumed, pushed)
