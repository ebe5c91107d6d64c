"""Property-based fuzzing of every Selector RPC with malformed and adversarial messages.

Every case must get a precise status code (never UNKNOWN, INTERNAL or UNAVAILABLE), and
after all of them the server still answers health checks and its one healthy job answers
byte for byte as before: bad input must neither crash the selector nor change its state.
"""

from __future__ import annotations

import math
import os
import pickle
import struct
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dynams_service.client import SelectorClient
from dynams_service.core.models.proxy import (
    TensorRecord,
    export_psp,
    proxy_schema,
    records_to_state,
)
from dynams_service.core.selection.partition import rank_count
from dynams_service.proto.dynams.v1 import selector_pb2 as pb
from dynams_service.proto.dynams.v1 import selector_pb2_grpc
from dynams_service.protocol import (
    MAX_MESSAGE_BYTES,
    MAX_WORLD_SIZE,
    chunks_to_push,
    records_to_chunks,
    selection_from_chunks,
    spec_from_proto,
    spec_to_proto,
)
from dynams_service.service.limits import Limits
from dynams_service.service.server import SelectorServer
from tests.conftest import SMALL_N, local_server

from .conftest import make_spec

C = grpc.StatusCode
NEVER = {C.UNKNOWN, C.INTERNAL, C.UNAVAILABLE}
# Every refusal must be one of these; each case narrows it to what its input deserves.
# DEADLINE_EXCEEDED is legitimate only while a round scores, which never happens here.
ALLOWED = {C.INVALID_ARGUMENT, C.NOT_FOUND, C.FAILED_PRECONDITION, C.ALREADY_EXISTS,
           C.RESOURCE_EXHAUSTED, C.OUT_OF_RANGE, C.DEADLINE_EXCEEDED, C.PERMISSION_DENIED}
HEALTHY = "healthy"
EPOCHS = 4            # make_spec: epoch 0 full, epochs 1-3 each start a round
SELECTED = 1200       # round 0 keeps ratio 0.3 of SMALL_N
CALL_TIMEOUT = 60.0


class _Big(str):
    """A huge string that reprs short, so falsifying examples stay readable."""

    def __repr__(self) -> str:
        return f"<{len(self)} x {self[:1]!r}>"


OVERSIZE = _Big("x" * (MAX_MESSAGE_BYTES + 1024 * 1024))  # over the server's 8 MiB limit
FUZZ: dict[str, Any] = {
    "deadline": None,
    "database": None,  # no .hypothesis directory in the repository
    "suppress_health_check": [HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
}

CASES: Counter[str] = Counter()  # cases actually run, per RPC


@dataclass
class Live:
    """The module's server, its raw stub, and what the healthy job answered before fuzzing."""

    server: SelectorServer
    state_dir: Path
    stub: selector_pb2_grpc.SelectorStub
    spec_proto: pb.JobSpec
    dataset_uri: str
    good: list[TensorRecord]
    proxy: dict[str, tuple[str, tuple[int, ...]]]
    selected: frozenset[int]
    before: dict[str, bytes]

    def __repr__(self) -> str:
        return f"Live({self.server.address})"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        """Hypothesis prints this instead of every field of a failing case's fixture."""
        printer.text(repr(self))


def _snapshot(stub: selector_pb2_grpc.SelectorStub, state_dir: Path) -> dict[str, bytes]:
    """Serialized GetJob, ListJobs, epoch-1 selections of every rank, and the state files."""
    out = {
        "GetJob": stub.GetJob(pb.GetJobRequest(job_id=HEALTHY), timeout=CALL_TIMEOUT)
        .SerializeToString(deterministic=True),
        "ListJobs": stub.ListJobs(pb.ListJobsRequest(), timeout=CALL_TIMEOUT)
        .SerializeToString(deterministic=True),
    }
    for world, drop_last in ((1, False), (2, False), (3, True), (7, False)):
        for rank in range(world):
            request = pb.GetSelectionRequest(job_id=HEALTHY, epoch=1, rank=rank,
                                             world_size=world, drop_last=drop_last)
            chunks = stub.GetSelection(request, timeout=CALL_TIMEOUT)
            out[f"GetSelection epoch 1 rank {rank}/{world} drop_last={drop_last}"] = b"".join(
                c.SerializeToString(deterministic=True) for c in chunks)
    for path in sorted(state_dir.rglob("*")):
        out[f"file {path.relative_to(state_dir)}"] = path.read_bytes() if path.is_file() else b""
    return out


@pytest.fixture(scope="module")
def live(small_shards, trained_model, tmp_path_factory) -> Iterator[Live]:
    """A live selector (in-process scorers) with one healthy job whose round 0 (epoch 1)
    is done."""
    state_dir = tmp_path_factory.mktemp("fuzz-state")
    server = local_server(state_dir)
    channel = grpc.insecure_channel(server.address)
    try:
        spec = make_spec(small_shards, job_id=HEALTHY)
        good = export_psp(trained_model, 0.25)
        with SelectorClient(server.address, retries=0) as client:
            client.create_job(spec)
            client.push_weights(HEALTHY, epoch=1, version=1, records=good)
            first = client.get_selection(HEALTHY, 1, 0, 1, timeout=120).indices
        stub = selector_pb2_grpc.SelectorStub(channel)
        yield Live(server, state_dir, stub, spec_to_proto(spec), spec.dataset_uri, good,
                   proxy_schema("fmnist-cnn", 0.25), frozenset(first.tolist()),
                   _snapshot(stub, state_dir))
    finally:
        channel.close()
        server.stop(grace=0)


def _call(rpc: str, call: Callable[[], Any], allowed: set[grpc.StatusCode]
          ) -> tuple[grpc.StatusCode, Any]:
    """Run one case; assert its status is allowed and never UNKNOWN/INTERNAL/UNAVAILABLE."""
    assert allowed <= ALLOWED | {C.OK}
    CASES[rpc] += 1
    try:
        result = call()
    except grpc.RpcError as exc:
        code, details = exc.code(), exc.details()  # type: ignore[attr-defined]
        assert code not in NEVER, f"{rpc} answered {code.name}: {details!r}"
        assert code in ALLOWED and code in allowed, (
            f"{rpc} answered {code.name} ({details[:300]!r}), expected "
            f"{sorted(c.name for c in allowed)}")
        return code, None
    assert C.OK in allowed, f"{rpc} answered OK, expected {sorted(c.name for c in allowed)}"
    return C.OK, result


def _varint(value: int) -> bytes:
    """Protobuf base-128 varint of a non-negative integer."""
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _with_unknown_fields(message: Any, fields: list[tuple[int, int | bytes]]) -> Any:
    """The message re-parsed with extra wire fields its schema does not know."""
    extra = b""
    for number, value in fields:
        if isinstance(value, int):
            extra += _varint(number << 3) + _varint(value)
        else:
            extra += _varint(number << 3 | 2) + _varint(len(value)) + value
    return type(message).FromString(message.SerializeToString() + extra)


NAN, INF = math.nan, math.inf
INT32 = st.one_of(st.sampled_from([0, 1, 2, 3, 4, -1, 2**31 - 1, -(2**31)]),
                  st.integers(-(2**31), 2**31 - 1))
INT64 = st.one_of(st.sampled_from([0, 1, -1, 2**31, 2**40, 2**63 - 1, -(2**63)]),
                  st.integers(-(2**63), 2**63 - 1))
UINT64 = st.one_of(st.sampled_from([0, 2**63 - 1, 2**63, 2**64 - 1]), st.integers(0, 2**64 - 1))
FLOATS = st.one_of(st.sampled_from([NAN, INF, -INF, 0.0, -0.0, 5e-324, 1e-300, 0.25, 0.5, 1.0,
                                    1.0000001, 2.0, -1.0, 1e308]), st.floats())
ODD_IDS = st.one_of(
    st.sampled_from(["", "ghost", "HEALTHY", "healthy ", " healthy", "healthy\x00", "healthy/",
                     "../../x", "../healthy", "/etc/passwd", "a/b", "x" * 64, "é" * 300,
                     "x" * 20_000, "\x00", "%s%n%x", OVERSIZE]),
    st.text(max_size=80)).filter(lambda s: s != HEALTHY)
UNKNOWN_FIELDS = st.lists(st.tuples(st.integers(16, 2**29 - 1),
                                    st.one_of(st.integers(0, 2**64 - 1),
                                              st.binary(max_size=64))), max_size=3)
TENSOR_NAMES = st.one_of(
    st.sampled_from(["../../x", "../../../../tmp/pwned", "/etc/passwd", "..", ".", "a/../b",
                     "fc.weight/../../x", "fc..weight", "fc.weight.", "", " fc.weight",
                     "fc.weight\x00", "__reduce__", "os.system", "x" * 5000]),
    st.text(max_size=40))
DTYPES = st.one_of(st.sampled_from(["float64", "int8", "uint8", "int32", "float16", "bfloat16",
                                    "int64", "float32", "FLOAT32", "<f4", "object", "pickle",
                                    "", "float32\x00"]), st.text(max_size=20))
SHAPES = st.one_of(
    st.lists(st.sampled_from([-1, 0, 1, 3, 8, 2**40, 2**62, -(2**63), 2**63 - 1]), max_size=10),
    st.lists(st.integers(-(2**63), 2**63 - 1), max_size=12),
    st.just([1] * 100), st.just([2**40] * 3))


MARKER = Path(tempfile.gettempdir()) / f"dynams-fuzz-unpickled-{os.getpid()}"


class _TouchOnUnpickle:
    """Whoever unpickles this creates MARKER: the payload a selector must never load."""

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (str(MARKER), "w"))


PICKLE = pickle.dumps(_TouchOnUnpickle())


def test_the_healthy_job_is_ready(live: Live) -> None:
    """The fixture's job answers; its setup is timed apart from the first fuzz case."""
    assert live.stub.GetJob(pb.GetJobRequest(job_id=HEALTHY), timeout=CALL_TIMEOUT
                            ).SerializeToString(deterministic=True) == live.before["GetJob"]


@settings(max_examples=40, **FUZZ)
@given(job_id=st.one_of(st.just(HEALTHY), ODD_IDS), unknown=UNKNOWN_FIELDS)
def test_fuzz_get_job(live: Live, job_id: str, unknown: list) -> None:
    """GetJob: NOT_FOUND for every id but the healthy job's, which answers as before."""
    request = _with_unknown_fields(pb.GetJobRequest(job_id=job_id), unknown)
    if request.ByteSize() > MAX_MESSAGE_BYTES:
        allowed = {C.RESOURCE_EXHAUSTED}
    else:
        allowed = {C.OK} if job_id == HEALTHY else {C.NOT_FOUND}
    _, job = _call("GetJob", lambda: live.stub.GetJob(request, timeout=CALL_TIMEOUT), allowed)
    if job is not None:
        assert job.SerializeToString(deterministic=True) == live.before["GetJob"]


@settings(max_examples=15, **FUZZ)
@given(unknown=UNKNOWN_FIELDS, oversize=st.sampled_from([False] * 5 + [True]))
def test_fuzz_list_jobs(live: Live, unknown: list, oversize: bool) -> None:
    """ListJobs: unknown fields are ignored, an oversized request is RESOURCE_EXHAUSTED."""
    if oversize:
        unknown = [*unknown, (99, OVERSIZE.encode())]
    request = _with_unknown_fields(pb.ListJobsRequest(), unknown)
    allowed = {C.RESOURCE_EXHAUSTED} if oversize else {C.OK}
    _, reply = _call("ListJobs", lambda: live.stub.ListJobs(request, timeout=CALL_TIMEOUT),
                     allowed)
    if reply is not None:
        assert reply.SerializeToString(deterministic=True) == live.before["ListJobs"]


@settings(max_examples=30, **FUZZ)
@given(job_id=ODD_IDS, unknown=UNKNOWN_FIELDS)
def test_fuzz_delete_job(live: Live, job_id: str, unknown: list) -> None:
    """DeleteJob of any other id: NOT_FOUND (the healthy job is never a target)."""
    request = _with_unknown_fields(pb.DeleteJobRequest(job_id=job_id), unknown)
    allowed = ({C.RESOURCE_EXHAUSTED} if request.ByteSize() > MAX_MESSAGE_BYTES
               else {C.NOT_FOUND})
    _call("DeleteJob", lambda: live.stub.DeleteJob(request, timeout=CALL_TIMEOUT), allowed)


SMALL = st.integers(-1, 4)
WORLD_EDGES = st.sampled_from([MAX_WORLD_SIZE, MAX_WORLD_SIZE + 1, SMALL_N, SMALL_N + 1,
                               2**31 - 1, -(2**31)])


@settings(max_examples=80, **FUZZ)
@given(job_id=st.one_of(st.just(HEALTHY), ODD_IDS), epoch=st.one_of(SMALL, INT32),
       rank=st.one_of(SMALL, INT32), world_size=st.one_of(SMALL, WORLD_EDGES, INT32),
       drop_last=st.booleans())
def test_fuzz_get_selection(live: Live, job_id: str, epoch: int, rank: int, world_size: int,
                            drop_last: bool) -> None:
    """GetSelection: bad ranks, world sizes, epochs and ids are refused; valid ones answer."""
    request = pb.GetSelectionRequest(job_id=job_id, epoch=epoch, rank=rank,
                                     world_size=world_size, drop_last=drop_last)
    errors: set[grpc.StatusCode] = set()
    if request.ByteSize() > MAX_MESSAGE_BYTES:
        errors.add(C.RESOURCE_EXHAUSTED)
    else:
        if not 1 <= world_size <= MAX_WORLD_SIZE or not 0 <= rank < world_size:
            errors.add(C.INVALID_ARGUMENT)
        if job_id != HEALTHY:
            errors.add(C.NOT_FOUND)
        elif not 0 <= epoch < EPOCHS:
            errors.add(C.INVALID_ARGUMENT)
        elif epoch >= 2:
            errors.add(C.FAILED_PRECONDITION)  # rounds 1 and 2 never get weights here
    # The selector waits for a round's weights up to the deadline: keep the doomed short.
    timeout = 1.0 if C.FAILED_PRECONDITION in errors else CALL_TIMEOUT
    _, answer = _call("GetSelection", lambda: selection_from_chunks(
        live.stub.GetSelection(request, timeout=timeout)), errors or {C.OK})
    if answer is not None:
        header, indices, weights = answer
        assert weights is None
        canonical = SMALL_N if epoch == 0 else SELECTED
        assert header.epoch == epoch and header.global_count == canonical
        assert header.kind == (pb.SELECTION_KIND_FULL if epoch == 0 else pb.SELECTION_KIND_SUBSET)
        assert len(indices) == rank_count(canonical, world_size, drop_last)
        if len(indices):
            assert indices.min() >= 0 and indices.max() < SMALL_N
        if epoch == 1:
            assert set(indices.tolist()) <= live.selected


def _push_codes(chunks: list[pb.WeightsChunk], spec: dict) -> set[grpc.StatusCode]:
    """The codes the selector may answer for a push, from the protocol's own checks."""
    if any(chunk.ByteSize() > MAX_MESSAGE_BYTES for chunk in chunks):
        return {C.RESOURCE_EXHAUSTED, C.INVALID_ARGUMENT}  # or refused before that chunk
    try:
        push = chunks_to_push(iter(chunks))
    except ValueError:
        return {C.INVALID_ARGUMENT}
    if push.job_id != HEALTHY:
        return {C.NOT_FOUND}
    errors = set()
    if not 0 <= push.epoch < EPOCHS:
        errors.add(C.INVALID_ARGUMENT)
    elif push.epoch == 0:
        errors.add(C.FAILED_PRECONDITION)  # a full-data epoch needs no weights
    if push.version < 0:
        errors.add(C.INVALID_ARGUMENT)
    try:
        records_to_state(push.records, spec)
    except ValueError:
        errors.add(C.INVALID_ARGUMENT)
    return errors or {C.OK}


PUSH_MUTATIONS = ("nan", "inf", "drop", "duplicate", "path_name", "pickle", "random_data",
                  "dtype", "shape", "offset", "truncate", "extra", "oversize", "empty",
                  "no_chunks", "first_without_job", "later_header")


@st.composite
def push_streams(draw: st.DrawFn, good: list[TensorRecord]) -> list[pb.WeightsChunk]:
    """A push stream built from the good PSP tensors with 0-3 adversarial mutations."""
    job_id = draw(st.one_of(st.sampled_from([HEALTHY] * 6 + ["ghost"]), ODD_IDS))
    epoch = draw(st.one_of(SMALL, INT32))
    version = draw(st.one_of(st.integers(-1, 3), INT64))
    part_bytes = draw(st.sampled_from([1000, 4096, 32768, 1024 * 1024]))
    parts = [part for chunk in records_to_chunks("", 0, 0, good, part_bytes)
             for part in chunk.parts]
    floats = [r.name for r in good if r.dtype == "float32" and len(r.data) >= 4]
    first_job, later_header, no_chunks = job_id, False, False
    for mutation in draw(st.lists(st.sampled_from(PUSH_MUTATIONS), max_size=3)):
        names = sorted({p.name for p in parts})
        if mutation in ("nan", "inf") and floats:
            name = draw(st.sampled_from(floats))
            mine = [p for p in parts if p.name == name and len(p.data) >= 4]
            if mine:
                part = draw(st.sampled_from(mine))
                at = draw(st.integers(0, len(part.data) // 4 - 1)) * 4
                data = bytearray(part.data)
                data[at:at + 4] = struct.pack("<f", NAN if mutation == "nan" else -INF)
                part.data = bytes(data)
        elif mutation == "drop" and names:
            name = draw(st.sampled_from(names))
            parts = [p for p in parts if p.name != name]
        elif mutation == "duplicate" and names:
            name = draw(st.sampled_from(names))
            parts += [pb.TensorPart(name=p.name, dtype=p.dtype, shape=p.shape, offset=p.offset,
                                    data=p.data) for p in parts if p.name == name]
        elif mutation == "path_name" and names:
            name = draw(st.sampled_from(names))
            new = draw(TENSOR_NAMES.filter(lambda s, old=name: s != old))
            for p in parts:
                if p.name == name:
                    p.name = new
        elif mutation in ("pickle", "random_data") and names:
            name = draw(st.sampled_from(names))
            size = sum(len(p.data) for p in parts if p.name == name)
            payload = PICKLE if mutation == "pickle" else draw(
                st.binary(max_size=min(2 * size + 8, 4096)).filter(lambda b, n=size: len(b) != n))
            if len(payload) == size:
                payload += b"\0"
            template = next(p for p in parts if p.name == name)
            parts = [p for p in parts if p.name != name] + [pb.TensorPart(
                name=name, dtype=template.dtype, shape=template.shape, data=payload)]
        elif mutation in ("dtype", "shape", "offset", "truncate") and parts:
            part = draw(st.sampled_from(parts))
            if mutation == "dtype":
                part.dtype = draw(DTYPES.filter(lambda s, old=part.dtype: s != old))
            elif mutation == "shape":
                shape = draw(SHAPES.filter(lambda s, old=list(part.shape): s != old))
                for p in (parts if draw(st.booleans()) else [part]):
                    if p.name == part.name:
                        del p.shape[:]
                        p.shape.extend(shape)
            elif mutation == "offset":
                part.offset = draw(INT64.filter(lambda o, old=part.offset: o != old))
            elif part.data:
                part.data = part.data[:-draw(st.integers(1, len(part.data)))]
        elif mutation == "extra":
            parts.append(pb.TensorPart(
                name=draw(st.sampled_from(["extra.weight", "fc.weight2", "layer9.bias"])),
                dtype="float32", shape=[2], data=struct.pack("<2f", 1.0, 2.0)))
        elif mutation == "oversize":
            parts.append(pb.TensorPart(name="fc.weight", dtype="float32", shape=[1],
                                       offset=draw(st.sampled_from([0, 4])),
                                       data=OVERSIZE.encode()))
        elif mutation == "empty":
            parts = []
        elif mutation == "no_chunks":
            no_chunks = True
        elif mutation == "first_without_job":
            first_job = ""
        elif mutation == "later_header":
            later_header = True
    if no_chunks:
        return []
    per_chunk = draw(st.integers(1, 8))
    groups = [parts[i:i + per_chunk] for i in range(0, len(parts), per_chunk)] or [[]]
    repeat = draw(st.sampled_from(["never", "always", "alternate"]))  # later chunks' header
    chunks = [pb.WeightsChunk(job_id=first_job, version=version, epoch=epoch, parts=groups[0])]
    for i, group in enumerate(groups[1:]):
        if repeat == "always" or (repeat == "alternate" and i % 2):
            chunks.append(pb.WeightsChunk(job_id=job_id, version=version, epoch=epoch,
                                          parts=group))
        else:
            chunks.append(pb.WeightsChunk(parts=group))
    if later_header:
        chunks.append(pb.WeightsChunk(job_id=draw(st.sampled_from([job_id + "x", "ghost"])),
                                      version=version, epoch=epoch))
    return chunks


@settings(max_examples=150, **FUZZ)
@given(data=st.data())
def test_fuzz_push_weights(live: Live, data: st.DataObject) -> None:
    """PushWeights: every malformed stream is refused and nothing is committed."""
    chunks = data.draw(push_streams(live.good))
    allowed = _push_codes(chunks, live.proxy)
    if allowed == {C.OK} and chunks[0].epoch != 1:
        # Well-formed for a round still waiting: that would legitimately start scoring, so
        # send it for epoch 1 instead, whose round is done (acknowledged, changes nothing).
        for chunk in chunks:
            if chunk.job_id:
                chunk.epoch = 1
    _, ack = _call("PushWeights", lambda: live.stub.PushWeights(iter(chunks),
                                                                timeout=CALL_TIMEOUT), allowed)
    if ack is not None:
        assert ack.already_done and ack.round == 0 and ack.job_id == HEALTHY
    job = live.stub.GetJob(pb.GetJobRequest(job_id=HEALTHY), timeout=CALL_TIMEOUT)
    assert job.SerializeToString(deterministic=True) == live.before["GetJob"]


@st.composite
def create_requests(draw: st.DrawFn, base: pb.JobSpec, real_uri: str) -> pb.CreateJobRequest:
    """A CreateJob request: the healthy spec under another id, mutated, never a valid dataset."""
    spec = pb.JobSpec()
    spec.CopyFrom(base)
    spec.job_id = draw(st.one_of(st.sampled_from(["fuzz-job", "fuzz.job_2", HEALTHY]), ODD_IDS))
    spec.dataset_uri = draw(st.one_of(
        st.sampled_from([real_uri, real_uri + "/", "file://" + real_uri, real_uri + "/../train",
                         "/nonexistent/dataset", "mock:///x", "foo://bar", "file://",
                         "file:///%zz", "a\x00b", "~nosuchuser/x", "../../etc", "/dev/null",
                         "/proc/self/environ", "", "x" * 5000, "é" * 4096, OVERSIZE]),
        # Remote schemes (s3://, gs://, hdfs://) would reach for the network: not here.
        st.text(max_size=100).filter(lambda s: "://" not in s)))
    policy, resources, fp = spec.policy, spec.resources, spec.fingerprint
    for mutation in draw(st.lists(st.sampled_from(
            ["ratio", "width", "architecture", "epochs", "rounds", "enum", "seed", "power",
             "rule", "resources", "fingerprint", "clear", "unknown"]), max_size=4)):
        if mutation == "ratio":
            policy.ratio = draw(FLOATS)
        elif mutation == "width":
            spec.proxy.width = draw(FLOATS)
        elif mutation == "architecture":
            spec.proxy.architecture = draw(st.one_of(st.sampled_from(
                ["", "resnet-9000", "../../x", "fmnist-cnn ", "FMNIST-CNN", "x" * 200,
                 "os.system", "__import__"]), st.text(max_size=40)))
        elif mutation == "epochs":
            spec.epochs = draw(INT32)
        elif mutation == "rounds":
            field = draw(st.sampled_from(["warmup_epochs", "interval_epochs", "anneal_epochs"]))
            setattr(policy, field, draw(INT32))
        elif mutation == "enum":
            field = draw(st.sampled_from(["class_balance", "ratio_schedule",
                                          "staleness"]))
            setattr(policy, field, draw(INT32))
        elif mutation == "seed":
            policy.seed = draw(UINT64)
        elif mutation == "power":
            policy.ratio_schedule = pb.RATIO_SCHEDULE_POWER
            policy.power_exponent = draw(FLOATS)
        elif mutation == "rule":
            policy.explore, policy.coverage_prune = draw(FLOATS), draw(FLOATS)
            policy.coverage_strata = draw(INT32)
        elif mutation == "resources":
            resources.num_scorers, resources.batch_size = draw(INT32), draw(INT32)
            resources.num_cpus, resources.num_gpus = draw(FLOATS), draw(FLOATS)
        elif mutation == "fingerprint":
            fp.num_samples, fp.num_classes = draw(INT64), draw(INT32)
            fp.labels_sha256 = draw(st.one_of(st.sampled_from(
                ["", "0" * 63, "g" * 64, "F" * 64, fp.labels_sha256.upper()]),
                st.text(alphabet="0123456789abcdef", min_size=64, max_size=64),
                st.text(max_size=70)))
        elif mutation == "clear":
            spec.ClearField(draw(st.sampled_from(["fingerprint", "proxy", "policy",
                                                  "resources"])))
        elif mutation == "unknown":
            spec = _with_unknown_fields(spec, draw(UNKNOWN_FIELDS))
            policy, resources, fp = spec.policy, spec.resources, spec.fingerprint
    if spec.fingerprint == base.fingerprint:
        # The right fingerprint on the real dataset would start scorers: always differ.
        spec.fingerprint.labels_sha256 = draw(st.text(
            alphabet="0123456789abcdef", min_size=64, max_size=64).filter(
            lambda s: s != base.fingerprint.labels_sha256))
    if draw(st.sampled_from([False] * 15 + [True])):
        return pb.CreateJobRequest()  # no spec at all
    return pb.CreateJobRequest(spec=spec)


@settings(max_examples=80, **FUZZ)
@given(data=st.data())
def test_fuzz_create_job(live: Live, data: st.DataObject) -> None:
    """CreateJob: malformed specs, bad URIs and wrong fingerprints never create a job."""
    request = data.draw(create_requests(live.spec_proto, live.dataset_uri))
    if request.ByteSize() > MAX_MESSAGE_BYTES:
        allowed = {C.RESOURCE_EXHAUSTED}
    else:
        try:
            spec = spec_from_proto(request.spec)
        except Exception:  # noqa: BLE001 - the server must call any of these a bad argument
            allowed = {C.INVALID_ARGUMENT}
        else:
            # PERMISSION_DENIED: a URI scheme or form the selector's access rules refuse.
            allowed = ({C.ALREADY_EXISTS} if spec.job_id == HEALTHY
                       else {C.INVALID_ARGUMENT, C.NOT_FOUND, C.FAILED_PRECONDITION,
                             C.PERMISSION_DENIED})
            if spec.resources.num_scorers > Limits().max_scorers_per_job:
                allowed.add(C.RESOURCE_EXHAUSTED)  # admission may refuse before the dataset
    _call("CreateJob", lambda: live.stub.CreateJob(request, timeout=CALL_TIMEOUT), allowed)
    job = live.stub.GetJob(pb.GetJobRequest(job_id=HEALTHY), timeout=CALL_TIMEOUT)
    assert job.SerializeToString(deterministic=True) == live.before["GetJob"]


def test_after_fuzzing_the_server_is_healthy_and_the_job_unchanged(live: Live) -> None:
    """Health checks answer SERVING; GetJob, ListJobs, selections and state files are as before."""
    channel = grpc.insecure_channel(live.server.address)
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "dynams.v1.Selector"):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    channel.close()
    after = _snapshot(live.stub, live.state_dir)
    assert sorted(after) == sorted(live.before)
    for key, value in live.before.items():
        assert after[key] == value, f"{key} changed"
    assert not MARKER.exists(), "the selector unpickled a payload"
    total = sum(CASES.values())
    print(f"\nfuzz cases per RPC: {dict(sorted(CASES.items()))}; total {total}")
