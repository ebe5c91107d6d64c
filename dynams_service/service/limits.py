"""The operator's limits on what clients may ask of the selector (``dynams serve`` flags).

One typed record, passed to the coordinator (admission, lifetime) and the server (calls).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["Limits"]


class Limits(BaseModel):
    """Operator limits; ``None`` or ``0`` where noted means unlimited / disabled.

    Example:
        >>> Limits(max_jobs=4, job_ttl=600).max_streams_per_peer
        32
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_jobs: int = Field(16, ge=1, description="jobs held at once (quarantined ones excluded)")
    max_scorers_per_job: int = Field(64, ge=1, description="scorer actors per job")
    max_cpus_per_job: float | None = Field(None, gt=0, description="num_scorers × num_cpus")
    max_gpus_per_job: float | None = Field(None, ge=0, description="num_scorers × num_gpus")
    max_memory_per_job: int | None = Field(
        None, gt=0, description="estimated memory per job, 0.5 GiB per scorer process plus "
                                "its decoded rows (admission.estimated_memory); bytes here, "
                                "GiB on the command line")
    max_streams: int = Field(
        96, ge=1, description="long calls at once (streams and CreateJob), all peers; keep "
                              "it below the server's worker threads so short calls always run")
    max_streams_per_peer: int = Field(
        32, ge=1, description="long calls at once per peer host (a trainer rank holds up to "
                              "three: this epoch's and the next one's answer, and a push)")
    stream_idle_timeout: float = Field(
        60.0, gt=0, description="seconds a stream may go without a message before it is "
                                "cancelled")
    max_selection_wait: float = Field(
        600.0, gt=0, description="seconds a GetSelection may wait for a round that scores")
    placement_timeout: float = Field(
        300.0, gt=0, description="seconds a CreateJob may wait for its scorers' placement "
                                 "(less when the caller's deadline is shorter)")
    job_ttl: float = Field(3600.0, ge=0, description="seconds without an RPC after which a "
                                                     "job's scorers are released; 0: never")
    job_expiry: float = Field(0.0, ge=0, description="seconds without an RPC after which a "
                                                     "job is deleted; 0: never")
    dataset_roots: tuple[str, ...] = Field(
        (), description="datasets must lie under one of these paths or URIs (empty: any local "
                        "path or object store); never client-chosen endpoints or credentials")
