"""Wire conversions shared by the selector and the client: specs, pushes and selections.

Depends only on the core and the generated protocol code, so the service and the client
can both use it without depending on each other.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, get_args, get_origin

import numpy as np
from pydantic import BaseModel

from .core.data.shards import DatasetFingerprint
from .core.job import JobSpec, JobState, ProxySpec, RoundState, ScorerResources, SelectionKind
from .core.models.proxy import TensorRecord
from .core.selection.policy import SelectionPolicy
from .proto.dynams.v1 import selector_pb2 as pb

__all__ = [
    "pb",
    "ProtocolError",
    "MAX_MESSAGE_BYTES",
    "PUSH_PART_BYTES",
    "MAX_PUSH_BYTES",
    "INDEX_CHUNK",
    "MAX_WORLD_SIZE",
    "MAX_PUSH_TENSORS",
    "REASON_KEY",
    "WEIGHTS_NOT_PUSHED",
    "ROUND_FAILED",
    "spec_to_proto",
    "spec_from_proto",
    "records_to_chunks",
    "PushedWeights",
    "chunks_to_push",
    "selection_chunks",
    "selection_from_chunks",
    "ROUND_STATES",
    "JOB_STATES",
    "SELECTION_KINDS",
    "from_wire",
]

MAX_MESSAGE_BYTES = 8 * 1024 * 1024    # the server refuses larger messages
PUSH_PART_BYTES = 1024 * 1024          # tensor bytes per TensorPart
MAX_PUSH_BYTES = 1024 * 1024 * 1024    # one push, all tensors together
INDEX_CHUNK = 131072                   # indices per SelectionChunk (1 MiB)
MAX_WORLD_SIZE = 1 << 20               # GetSelection world_size
MAX_PUSH_TENSORS = 100_000             # distinct tensors in one push
# NOTE [ error reasons ]: a status code says what kind of failure it is; where clients must
# tell two failures of one code apart, the server adds a machine-readable reason in this
# trailing metadata key (like google.rpc.ErrorInfo.reason), never only in the message.
REASON_KEY = "dynams-reason"
WEIGHTS_NOT_PUSHED = "WEIGHTS_NOT_PUSHED"  # FAILED_PRECONDITION: push the round's weights
ROUND_FAILED = "ROUND_FAILED"  # INTERNAL: the round failed on the server (scorer error,
# corrupt sample, bad config), as opposed to a selector that cannot be reached

# The one table each from the job's states and an epoch's kind to the wire's enums; the
# servicer encodes with them, the client decodes with them. FALLBACK is the trainer's own
# label and never on the wire.
ROUND_STATES = {RoundState.WAITING: pb.ROUND_STATE_WAITING_FOR_WEIGHTS,
                RoundState.SCORING: pb.ROUND_STATE_SCORING, RoundState.DONE: pb.ROUND_STATE_DONE,
                RoundState.FAILED: pb.ROUND_STATE_FAILED}
JOB_STATES = {JobState.ACTIVE: pb.JOB_STATE_ACTIVE, JobState.IDLE: pb.JOB_STATE_IDLE,
              JobState.FINISHED: pb.JOB_STATE_FINISHED, JobState.FAILED: pb.JOB_STATE_FAILED}
SELECTION_KINDS = {SelectionKind.FULL: pb.SELECTION_KIND_FULL,
                   SelectionKind.SUBSET: pb.SELECTION_KIND_SUBSET}


def from_wire(table: dict[Any, int], value: int, field: str) -> Any:
    """The member a wire enum value stands for; ``ProtocolError`` for an unknown one."""
    for member, number in table.items():
        if number == value:
            return member
    raise ProtocolError(f"{field}: unknown enum value {value}")


class ProtocolError(ValueError):
    """A message is malformed (inconsistent chunks, unknown enum, …); the text says how."""


# NOTE [ knobs on the wire ]
# A policy or resource knob is defined once, as a field of SelectionPolicy or
# ScorerResources; the proto message has a field of the same name (with explicit
# presence: unset takes the default), and a Literal field's options map to the enum
# values named FIELD_OPTION (class_balance "per_class" = CLASS_BALANCE_PER_CLASS). The
# tables below are derived from both at import, so a knob missing on either side fails
# loudly here instead of silently taking its default on the other end.


def _enum_table(message_type: type, field: str, options: tuple[str, ...]) -> dict[str, int]:
    enum = message_type.DESCRIPTOR.fields_by_name[field].enum_type
    prefix = field.upper()
    table = {}
    for option in options:
        value = enum.values_by_name.get(f"{prefix}_{option.upper()}")
        if value is None:
            raise AssertionError(f"{enum.name} has no value {prefix}_{option.upper()}")
        table[option] = value.number
    return table


def _knobs(model_type: type[BaseModel], message_type: type) -> dict[str, dict[str, int] | None]:
    """Field name → its enum table (None for a plain value), checked against the proto."""
    wire = set(message_type.DESCRIPTOR.fields_by_name)
    knobs: dict[str, dict[str, int] | None] = {}
    for name, info in model_type.model_fields.items():
        if name not in wire:
            raise AssertionError(f"{message_type.DESCRIPTOR.name} has no field {name!r}")
        options = get_args(info.annotation) if get_origin(info.annotation) is Literal else ()
        knobs[name] = _enum_table(message_type, name, options) if options else None
    extra = wire - set(knobs)
    if extra:
        raise AssertionError(f"{message_type.DESCRIPTOR.name} fields {sorted(extra)} are "
                             f"not {model_type.__name__}'s")
    return knobs


POLICY_KNOBS = _knobs(SelectionPolicy, pb.Policy)
RESOURCE_KNOBS = _knobs(ScorerResources, pb.ScorerResources)


def _knobs_to_proto(model: BaseModel, message_type: type, knobs: dict) -> Any:
    values = {name: (table[getattr(model, name)] if table else getattr(model, name))
              for name, table in knobs.items()}
    return message_type(**values)


def _knobs_from_proto(message: Any, knobs: dict, where: str) -> dict[str, Any]:
    """The fields the message sets (an enum's UNSPECIFIED counts as unset)."""
    values: dict[str, Any] = {}
    for name, table in knobs.items():
        if table is None:
            if message.HasField(name):
                values[name] = getattr(message, name)
            continue
        number = getattr(message, name)
        if number == 0:
            continue
        option = next((o for o, n in table.items() if n == number), None)
        if option is None:
            raise ProtocolError(f"{where}.{name}: unknown enum value {number}")
        values[name] = option
    return values


def spec_to_proto(spec: JobSpec) -> pb.JobSpec:
    """JobSpec (pydantic) → protobuf."""
    return pb.JobSpec(
        job_id=spec.job_id, dataset_uri=spec.dataset_uri, epochs=spec.epochs,
        fingerprint=pb.Fingerprint(**spec.fingerprint.model_dump()),
        proxy=pb.ProxySpec(architecture=spec.proxy.architecture, width=spec.proxy.width),
        policy=_knobs_to_proto(spec.policy, pb.Policy, POLICY_KNOBS),
        resources=_knobs_to_proto(spec.resources, pb.ScorerResources, RESOURCE_KNOBS),
    )


def spec_from_proto(message: pb.JobSpec) -> JobSpec:
    """protobuf → JobSpec; raises ProtocolError or pydantic's ValidationError."""
    return JobSpec(
        job_id=message.job_id, dataset_uri=message.dataset_uri, epochs=message.epochs,
        fingerprint=DatasetFingerprint(num_samples=message.fingerprint.num_samples,
                                       num_classes=message.fingerprint.num_classes,
                                       labels_sha256=message.fingerprint.labels_sha256),
        proxy=ProxySpec(architecture=message.proxy.architecture, width=message.proxy.width),
        policy=SelectionPolicy(**_knobs_from_proto(message.policy, POLICY_KNOBS, "policy")),
        resources=ScorerResources(**_knobs_from_proto(message.resources, RESOURCE_KNOBS,
                                                      "resources")),
    )


def records_to_chunks(job_id: str, version: int, epoch: int, records: Iterable[TensorRecord],
                      part_bytes: int = PUSH_PART_BYTES) -> Iterator[pb.WeightsChunk]:
    """Split records into WeightsChunks of about ``part_bytes`` tensor bytes each."""
    parts: list[pb.TensorPart] = []
    size = 0
    for record in records:
        offsets = range(0, max(len(record.data), 1), part_bytes)
        for offset in offsets:
            data = record.data[offset:offset + part_bytes]
            parts.append(pb.TensorPart(name=record.name, dtype=record.dtype,
                                       shape=list(record.shape), offset=offset, data=data))
            size += len(data)
            if size >= part_bytes:
                yield pb.WeightsChunk(job_id=job_id, version=version, epoch=epoch, parts=parts)
                parts, size = [], 0
    yield pb.WeightsChunk(job_id=job_id, version=version, epoch=epoch, parts=parts)


@dataclass(frozen=True)
class PushedWeights:
    """A whole push, reassembled: which job and round it is for and its tensors."""

    job_id: str
    version: int
    epoch: int
    records: list[TensorRecord]
    nbytes: int


def chunks_to_push(chunks: Iterable[pb.WeightsChunk],
                   max_bytes: int = MAX_PUSH_BYTES) -> PushedWeights:
    """Reassemble a push; every part of a tensor must arrive in order with the same header."""
    header: tuple[str, int, int] | None = None
    buffers: dict[str, bytearray] = {}
    meta: dict[str, tuple[str, tuple[int, ...]]] = {}
    total = data_bytes = 0
    for chunk in chunks:
        this = (chunk.job_id, chunk.version, chunk.epoch)
        if header is None:
            if not chunk.job_id:
                raise ProtocolError("the first WeightsChunk must carry job_id")
            header = this
        elif chunk.job_id and this != header:
            raise ProtocolError(f"chunk header {this} differs from the first chunk's {header}")
        for part in chunk.parts:
            shape = tuple(part.shape)
            if part.name not in buffers:
                if part.offset != 0:
                    raise ProtocolError(f"tensor {part.name[:80]!r}: first part at offset "
                                        f"{part.offset}, expected 0")
                buffers[part.name] = bytearray()
                meta[part.name] = (part.dtype, shape)
            elif meta[part.name] != (part.dtype, shape):
                raise ProtocolError(f"tensor {part.name[:80]!r}: parts disagree on dtype/shape")
            elif part.offset != len(buffers[part.name]):
                raise ProtocolError(f"tensor {part.name[:80]!r}: part at offset {part.offset}, "
                                    f"expected {len(buffers[part.name])} (parts out of order "
                                    "or the tensor was sent twice)")
            # Names and shapes count too, so empty parts cannot grow memory unbounded.
            data_bytes += len(part.data)
            total += len(part.data) + len(part.name) + 8 * len(part.shape)
            if total > max_bytes:
                raise ProtocolError(f"push exceeds {max_bytes} bytes")
            if len(buffers) > MAX_PUSH_TENSORS:
                raise ProtocolError(f"push has more than {MAX_PUSH_TENSORS} tensors")
            buffers[part.name] += part.data
    if header is None:
        raise ProtocolError("empty push: no WeightsChunk received")
    records = [TensorRecord(name, meta[name][0], meta[name][1], bytes(buf))
               for name, buf in buffers.items()]
    return PushedWeights(header[0], header[1], header[2], records, data_bytes)


def selection_chunks(header: pb.SelectionHeader, indices: np.ndarray,
                     weights_of: Callable[[np.ndarray], np.ndarray] | None = None,
                     chunk: int = INDEX_CHUNK) -> Iterator[pb.SelectionChunk]:
    """Stream ``indices`` as little-endian int64 bytes, the header on the first chunk; with
    ``weights_of`` (indices → their loss weights) each chunk carries its float32 weights.

    ``indices`` may be a strided view (a rank's share of the epoch's list): each chunk is
    made contiguous on its own (and its weights looked up on their own), so a stream holds
    one chunk at a time, never a copy of its whole share.
    """
    def piece(start: int) -> dict[str, bytes]:
        part = np.ascontiguousarray(indices[start:start + chunk], dtype="<i8")
        out = {"indices": part.tobytes()}
        if weights_of is not None:
            out["weights"] = np.ascontiguousarray(weights_of(part), dtype="<f4").tobytes()
        return out

    yield pb.SelectionChunk(header=header, **piece(0))
    for start in range(chunk, len(indices), chunk):
        yield pb.SelectionChunk(**piece(start))


def selection_from_chunks(chunks: Iterable[pb.SelectionChunk]
                          ) -> tuple[pb.SelectionHeader, np.ndarray, np.ndarray | None]:
    """Reassemble a selection stream: its header, the indices and (for a weighted
    selection) their float32 loss weights. Checks the counts against the header and each
    weight to be finite and >= 0."""
    header = None
    parts: list[np.ndarray] = []
    weight_parts: list[np.ndarray] = []
    for chunk in chunks:
        if header is None:
            if not chunk.HasField("header"):
                raise ProtocolError("the first SelectionChunk must carry the header")
            header = chunk.header
        if len(chunk.indices) % 8:
            raise ProtocolError(f"indices chunk of {len(chunk.indices)} bytes is not int64s")
        parts.append(np.frombuffer(chunk.indices, dtype="<i8"))
        if header.weighted:
            if len(chunk.weights) != 4 * len(parts[-1]):
                raise ProtocolError(f"weights chunk of {len(chunk.weights)} bytes for "
                                    f"{len(parts[-1])} indices")
            weight_parts.append(np.frombuffer(chunk.weights, dtype="<f4"))
        elif chunk.weights:
            raise ProtocolError("weights in a selection whose header is not weighted")
    if header is None:
        raise ProtocolError("empty selection stream")
    indices = np.concatenate(parts).astype(np.int64, copy=False) if parts else np.zeros(0, np.int64)
    if len(indices) != header.rank_count:
        raise ProtocolError(f"received {len(indices)} indices, header says {header.rank_count}")
    weights = None
    if header.weighted:
        weights = (np.concatenate(weight_parts).astype(np.float32, copy=False)
                   if weight_parts else np.zeros(0, np.float32))
        if not bool(np.all(np.isfinite(weights) & (weights >= 0))):
            raise ProtocolError("selection weights must be finite and >= 0")
    return header, indices, weights
