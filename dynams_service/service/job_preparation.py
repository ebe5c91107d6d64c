"""A job spec checked against this selector before anything runs, and saved rounds taken back.

Pure functions over the registry, the dataset and the state store's records: a spec
becomes a ``Job`` record (IDLE, no scorers) or a typed error a client can act on.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from ..core.data.shards import (
    DatasetNotFound,
    FingerprintMismatch,
    InvalidDatasetURI,
    ShardError,
    read_manifest,
    verify_dataset,
)
from ..core.job import JobSpec
from ..core.models.models import build_architecture
from ..core.models.proxy import spec_of
from ..core.models.slimming import SlimmingError
from ..core.registry import UnknownName
from ..core.selection.scores import get_score
from .dataset_access import DatasetAccess, DatasetAccessDenied, MalformedDatasetURI
from .dataset_identity import DatasetEncoding
from .errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from .job_record import Job
from .rounds import Round
from .store import LoadedJob

__all__ = ["prepare_job", "restore_rounds", "dataset_change", "dataset_errors"]


def prepare_job(spec: JobSpec, access: DatasetAccess) -> Job:
    """Validate a spec against the registry and the dataset: its IDLE record (no actors)."""
    try:
        access.check(spec.dataset_uri)
    except MalformedDatasetURI as exc:
        raise InvalidArgument(str(exc)) from None
    except DatasetAccessDenied as exc:
        raise PermissionDenied(str(exc)) from None
    try:
        model = build_architecture(spec.proxy.architecture)
        proxy = model.make_proxy(spec.proxy.width)
    except KeyError as exc:
        raise InvalidArgument(str(exc.args[0])) from None
    except SlimmingError as exc:  # the operator registered a network that cannot slim
        raise FailedPrecondition(f"architecture {spec.proxy.architecture!r} is registered "
                                 f"on this selector but cannot be built: {exc}") from None
    except ValueError as exc:
        raise InvalidArgument(f"proxy width: {exc}") from None
    try:
        get_score(spec.policy.score)
    except UnknownName as exc:
        raise InvalidArgument(f"policy.score: {exc}") from None
    try:
        # The labels are hashed shard by shard against the fingerprint and not kept: the
        # scorers hold them for the selection (the head keeps nothing of size N).
        with dataset_errors():
            manifest = verify_dataset(spec.dataset_uri, spec.fingerprint)
    except UnknownName as exc:  # the manifest names a decoder no one registered here
        raise InvalidArgument(f"dataset {spec.dataset_uri}: {exc}") from None
    _check_input_shape(proxy, spec.proxy.architecture, manifest.sample_shape)
    if spec.resources.num_scorers > len(manifest.shards):
        raise InvalidArgument(
            f"num_scorers {spec.resources.num_scorers} exceeds the dataset's "
            f"{len(manifest.shards)} shards; use fewer scorers or smaller shards")
    plan = spec.plan()
    rounds = tuple(Round(index=i, epoch=epoch) for i, epoch in enumerate(plan.select_epochs))
    return Job(spec=spec, plan=plan, manifest=manifest, encoding=DatasetEncoding.of(manifest),
               proxy_spec=spec_of(proxy), rounds=rounds)


def restore_rounds(job: Job, loaded: LoadedJob) -> tuple[Job, str]:
    """``job`` (freshly prepared from its spec) with a persisted job's rounds taken back,
    and "" — or ``job`` unchanged and why they cannot be."""
    if loaded.encoding is not None:
        changed = loaded.encoding.differences(job.encoding)
        if changed:  # the dataset was rewritten under the job: not the same job any more
            return job, f"its dataset changed since the job was created ({'; '.join(changed)})"
    restored = job
    for index, result in loaded.rounds.items():
        if not 0 <= index < len(job.rounds):
            return job, f"saved round {index} is not in its plan of {len(job.rounds)} rounds"
        restored = restored.with_round(restored.rounds[index].done(result))
    return restored.restored(), ""


def dataset_change(loaded: LoadedJob, access: DatasetAccess) -> str:
    """Why a persisted job's dataset is no longer the one it was created for (its samples'
    encoding changed), or "" (unchanged, unknown, or unreadable: restoring it then says
    what is wrong)."""
    if loaded.encoding is None or loaded.spec is None:
        return ""
    uri = loaded.spec.dataset_uri
    try:
        access.check(uri)
        now = DatasetEncoding.of(read_manifest(uri))
    except (MalformedDatasetURI, DatasetAccessDenied, ShardError, ValueError):
        return ""
    changed = loaded.encoding.differences(now)
    return f"its dataset changed since the job was created ({'; '.join(changed)})" \
        if changed else ""


@contextmanager
def dataset_errors() -> Iterator[None]:
    """Turn a dataset's read errors into the status a client can act on."""
    try:
        yield
    except DatasetNotFound as exc:
        raise NotFound(str(exc)) from None
    except InvalidDatasetURI as exc:
        raise InvalidArgument(str(exc)) from None
    except FingerprintMismatch as exc:
        raise FailedPrecondition(str(exc)) from None
    except ShardError as exc:
        raise FailedPrecondition(f"malformed dataset: {exc}") from None


def _check_input_shape(proxy: torch.nn.Module, architecture: str,
                       shape: tuple[int, ...]) -> None:
    """Refuse a dataset whose decoded samples the architecture cannot read (one dry
    forward of a zero sample), instead of failing every round in the scorers."""
    try:
        with torch.inference_mode():
            proxy(torch.zeros((1, *shape)))
    except (RuntimeError, ValueError) as exc:
        reason = str(exc).splitlines()[0][:200]
        raise InvalidArgument(f"architecture {architecture!r} cannot read this dataset's "
                              f"samples of shape {list(shape)}: {reason}") from None
