"""Wire conversions shared by the selector and the client: specs, pushes and selections.

Depends only on the core and the generated protocol code, so the service and the client
can both use it without depending on each other.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from .core.job import JobSpec, ProxySpec, ScorerResources
from .core.policy import SelectionPolicy
from .core.proxy import TensorRecord
from .core.shards import DatasetFingerprint
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
    "indices_from_chunks",
    "ROUND_STATES",
    "JOB_STATES",
    "round_state_name",
    "job_state_name",
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

# Policy.score on the wire, and margin_mode beside it for peers that predate it (see the
# comment on MarginMode in selector.proto): any score but these two is MARGIN_MODE_NAMED.
_MARGIN = {"distance": pb.MARGIN_MODE_DISTANCE, "signed": pb.MARGIN_MODE_SIGNED}
_BALANCE = {"per_class": pb.CLASS_BALANCE_PER_CLASS, "global": pb.CLASS_BALANCE_GLOBAL}
_SCHEDULE = {"constant": pb.RATIO_SCHEDULE_CONSTANT, "power": pb.RATIO_SCHEDULE_POWER}
_STALENESS = {"sync": pb.STALENESS_SYNC, "pipelined": pb.STALENESS_PIPELINED}

# The one table each from the service's round and job state names to the wire's enums;
# the servicer encodes with them, the CLI decodes with them.
ROUND_STATES = {"waiting": pb.ROUND_STATE_WAITING_FOR_WEIGHTS, "scoring": pb.ROUND_STATE_SCORING,
                "done": pb.ROUND_STATE_DONE, "failed": pb.ROUND_STATE_FAILED}
JOB_STATES = {"active": pb.JOB_STATE_ACTIVE, "idle": pb.JOB_STATE_IDLE,
              "finished": pb.JOB_STATE_FINISHED, "failed": pb.JOB_STATE_FAILED}


def round_state_name(value: int) -> str:
    """A ``RoundState`` enum value's name (``"?"`` for one this release does not know)."""
    return _name_of(ROUND_STATES, value)


def job_state_name(value: int) -> str:
    """A ``JobState`` enum value's name (``"?"`` for one this release does not know)."""
    return _name_of(JOB_STATES, value)


def _name_of(table: dict[str, int], value: int) -> str:
    return next((name for name, number in table.items() if number == value), "?")


class ProtocolError(ValueError):
    """A message is malformed (inconsistent chunks, unknown enum, …); the text says how."""


def _enum_from_proto(table: dict[str, int], value: int, field: str) -> str | None:
    if value == 0:
        return None  # unspecified: take the policy default
    for name, number in table.items():
        if number == value:
            return name
    raise ProtocolError(f"{field}: unknown enum value {value}")


def spec_to_proto(spec: JobSpec) -> pb.JobSpec:
    """JobSpec (pydantic) → protobuf."""
    p = spec.policy
    return pb.JobSpec(
        job_id=spec.job_id, dataset_uri=spec.dataset_uri, epochs=spec.epochs,
        fingerprint=pb.Fingerprint(**spec.fingerprint.model_dump()),
        proxy=pb.ProxySpec(architecture=spec.proxy.architecture, width=spec.proxy.width),
        policy=pb.Policy(
            ratio=p.ratio, warmup_epochs=p.warmup_epochs, interval_epochs=p.interval_epochs,
            anneal_epochs=p.anneal_epochs, score=p.score,
            margin_mode=_margin_mode_of(p.score),
            class_balance=_BALANCE[p.class_balance],
            ratio_schedule=_SCHEDULE[p.ratio_schedule], power_exponent=p.power_exponent,
            seed=p.seed, staleness=_STALENESS[p.staleness], explore=p.explore,
            coverage_strata=p.coverage_strata, coverage_prune=p.coverage_prune,
        ),
        resources=pb.ScorerResources(**spec.resources.model_dump()),
    )


def spec_from_proto(message: pb.JobSpec) -> JobSpec:
    """protobuf → JobSpec; raises ProtocolError or pydantic's ValidationError."""
    p = message.policy
    policy: dict = {"ratio": p.ratio, "warmup_epochs": p.warmup_epochs,
                    "interval_epochs": p.interval_epochs, "anneal_epochs": p.anneal_epochs,
                    "seed": p.seed, "explore": p.explore,
                    "coverage_strata": p.coverage_strata}
    if p.HasField("coverage_prune"):
        policy["coverage_prune"] = p.coverage_prune
    if p.power_exponent:
        policy["power_exponent"] = p.power_exponent
    score = _score_from_proto(p)
    if score is not None:
        policy["score"] = score
    for key, table, value in (("class_balance", _BALANCE, p.class_balance),
                              ("ratio_schedule", _SCHEDULE, p.ratio_schedule),
                              ("staleness", _STALENESS, p.staleness)):
        name = _enum_from_proto(table, value, f"policy.{key}")
        if name is not None:
            policy[key] = name
    r = message.resources
    resources = {k: v for k, v in (("num_scorers", r.num_scorers), ("num_cpus", r.num_cpus),
                                   ("num_gpus", r.num_gpus), ("batch_size", r.batch_size))
                 if message.HasField("resources")}
    if r.HasField("cache_bytes"):
        resources["cache_bytes"] = r.cache_bytes
    return JobSpec(
        job_id=message.job_id, dataset_uri=message.dataset_uri, epochs=message.epochs,
        fingerprint=DatasetFingerprint(num_samples=message.fingerprint.num_samples,
                                       num_classes=message.fingerprint.num_classes,
                                       labels_sha256=message.fingerprint.labels_sha256),
        proxy=ProxySpec(architecture=message.proxy.architecture, width=message.proxy.width),
        policy=SelectionPolicy(**policy),
        resources=ScorerResources(**resources),
    )


def _margin_mode_of(score: str) -> int:
    """What ``margin_mode`` says of a score, for peers that predate ``Policy.score``."""
    return _MARGIN.get(score, pb.MARGIN_MODE_NAMED)


def _score_from_proto(p: pb.Policy) -> str | None:
    """``policy.score``, or the score ``margin_mode`` names (older clients); None: default."""
    if p.margin_mode not in (pb.MARGIN_MODE_UNSPECIFIED, *_MARGIN.values(),
                             pb.MARGIN_MODE_NAMED):
        raise ProtocolError(f"policy.margin_mode: unknown enum value {p.margin_mode}")
    if p.score:
        if p.margin_mode not in (pb.MARGIN_MODE_UNSPECIFIED, _margin_mode_of(p.score)):
            raise ProtocolError(f"policy.margin_mode {pb.MarginMode.Name(p.margin_mode)} "
                                f"contradicts policy.score {p.score[:128]!r}; set only score")
        return p.score
    if p.margin_mode == pb.MARGIN_MODE_NAMED:
        raise ProtocolError("policy.margin_mode is MARGIN_MODE_NAMED but policy.score is "
                            "empty; name the score")
    return _enum_from_proto(_MARGIN, p.margin_mode, "policy.margin_mode")


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
                     chunk: int = INDEX_CHUNK) -> Iterator[pb.SelectionChunk]:
    """Stream ``indices`` as little-endian int64 bytes, the header on the first chunk.

    ``indices`` may be a strided view (a rank's share of the epoch's list): each chunk is
    made contiguous on its own, so a stream holds one chunk at a time, never a copy of
    its whole share.
    """
    def piece(start: int) -> bytes:
        return np.ascontiguousarray(indices[start:start + chunk], dtype="<i8").tobytes()

    yield pb.SelectionChunk(header=header, indices=piece(0))
    for start in range(chunk, len(indices), chunk):
        yield pb.SelectionChunk(indices=piece(start))


def indices_from_chunks(chunks: Iterable[pb.SelectionChunk]
                        ) -> tuple[pb.SelectionHeader, np.ndarray]:
    """Reassemble a selection stream; checks the count against the header."""
    header = None
    parts = []
    for chunk in chunks:
        if header is None:
            if not chunk.HasField("header"):
                raise ProtocolError("the first SelectionChunk must carry the header")
            header = chunk.header
        if len(chunk.indices) % 8:
            raise ProtocolError(f"indices chunk of {len(chunk.indices)} bytes is not int64s")
        parts.append(np.frombuffer(chunk.indices, dtype="<i8"))
    if header is None:
        raise ProtocolError("empty selection stream")
    indices = np.concatenate(parts).astype(np.int64, copy=False) if parts else np.zeros(0, np.int64)
    if len(indices) != header.rank_count:
        raise ProtocolError(f"received {len(indices)} indices, header says {header.rank_count}")
    return header, indices
