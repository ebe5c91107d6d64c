"""SelectorJob: a job on one selector, created explicitly and re-created if it was lost.

Keeps job lifecycle (CreateJob, GetJob) out of the sampler: the trainer opens the job
once, and the sampler and the weight pusher share it.
"""

from __future__ import annotations

import logging
import os

from ..core.data.manifest import is_relative_local_path
from ..core.job import JobSpec
from .client import SelectorClient
from .errors import SelectorError

__all__ = ["SelectorJob"]

log = logging.getLogger(__name__)

def with_absolute_dataset_path(spec: JobSpec) -> JobSpec:
    """The spec with a relative local dataset path made absolute, when it names a dataset
    here: the selector resolves paths in its own working directory, not the trainer's."""
    uri = spec.dataset_uri
    if not is_relative_local_path(uri) or not os.path.isdir(uri):
        return spec
    return spec.model_copy(update={"dataset_uri": os.path.abspath(uri)})


class SelectorJob:
    """One job on one selector: its client and its spec.

    Build it with ``create`` (from a ``JobSpec``; idempotent) or ``attach`` (to a job id
    the selector already has). A job opened with ``create`` is created again, with the
    same spec, when the selector answers that it does not know it (it was unreachable at
    start, or restarted without its state).

    Example:
        >>> job = SelectorJob.create(SelectorClient("127.0.0.1:50051"), spec)  # doctest: +SKIP
        >>> with DynaMSSampler(train_set, job) as sampler: ...  # doctest: +SKIP
    """

    def __init__(self, client: SelectorClient, spec: JobSpec, *, can_create: bool) -> None:
        self.client = client
        self.spec = spec
        self.can_create = can_create

    @property
    def job_id(self) -> str:
        return self.spec.job_id

    @classmethod
    def create(cls, client: SelectorClient | str, spec: JobSpec,
               timeout: float | None = None) -> SelectorJob:
        """Create the job (or find the identical one). A selector that cannot be reached
        is not an error: the sampler trains on fallback subsets and creates the job when
        the selector answers. Other errors (a different spec under this id, a dataset the
        proxy cannot read) raise ``SelectorError``."""
        client = SelectorClient(client) if isinstance(client, str) else client
        spec = with_absolute_dataset_path(spec)
        job = cls(client, spec, can_create=True)
        try:
            created = client.create_job(spec, timeout=timeout)
        except SelectorError as exc:
            if not exc.unreachable:
                raise
            log.warning("selector at %s unreachable at start (%s); training on uniform "
                        "fallback subsets until it answers", client.address, exc.status.value)
            return job
        if created.rounds_done:
            log.warning("job %r already exists on %s with %d of %d rounds saved: its saved "
                        "selections are replayed (`dynams job delete %s` for a fresh run)",
                        spec.job_id, client.address, created.rounds_done,
                        created.rounds_total, spec.job_id)
        return job

    @classmethod
    def attach(cls, client: SelectorClient | str, job_id: str,
               timeout: float | None = None) -> SelectorJob:
        """The selector's existing job ``job_id`` (its spec read back with GetJob); it is
        not created again if the selector loses it."""
        client = SelectorClient(client) if isinstance(client, str) else client
        spec = client.get_job(job_id, timeout=timeout).spec
        if spec is None:
            raise ValueError(f"job {job_id!r} has no readable spec on the selector (it "
                             "failed); delete it and create it again")
        return cls(client, spec, can_create=False)

    def recreate(self, timeout: float) -> bool:
        """Create the job again on a selector that answered NOT_FOUND; True if it now has
        it. Idempotent, so every rank may try."""
        if not self.can_create:
            return False
        try:
            self.client.create_job(self.spec, timeout=max(0.001, timeout))
            return True
        except SelectorError:
            return False
