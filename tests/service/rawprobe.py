"""Raw gRPC probes: bytes that are not a valid request, sent to every method of the server.

Used by the decoding tests and the soak test; needs no client library, only a channel.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import grpc
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

from dynams_service.protocol import pb

# method path → (call kind, request message type)
METHODS = {
    "/dynams.v1.Selector/CreateJob": ("unary_unary", pb.CreateJobRequest),
    "/dynams.v1.Selector/GetJob": ("unary_unary", pb.GetJobRequest),
    "/dynams.v1.Selector/ListJobs": ("unary_unary", pb.ListJobsRequest),
    "/dynams.v1.Selector/DeleteJob": ("unary_unary", pb.DeleteJobRequest),
    "/dynams.v1.Selector/PushWeights": ("stream_unary", pb.WeightsChunk),
    "/dynams.v1.Selector/GetSelection": ("unary_stream", pb.GetSelectionRequest),
    "/grpc.health.v1.Health/Check": ("unary_unary", health_pb2.HealthCheckRequest),
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo":
        ("stream_stream", reflection_pb2.ServerReflectionRequest),
}


def _candidate(rng: random.Random) -> bytes:
    how = rng.randrange(4)
    if how == 0:  # random bytes
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
    if how == 1:  # a string field holding invalid UTF-8
        body = bytes([0xFF, 0xFE]) + bytes(rng.randrange(256) for _ in range(rng.randrange(8)))
        return bytes([(rng.randrange(1, 8) << 3) | 2, len(body)]) + body
    if how == 2:  # a length prefix longer than the message
        return bytes([(rng.randrange(1, 8) << 3) | 2, rng.randrange(10, 120)]) + b"ab"
    return bytes([rng.choice([0x00, 0x07, 0x0F, 0x0E])])  # field 0, or wire types 6/7


def malformed(rng: random.Random, message_type) -> bytes:
    """Bytes that ``message_type`` cannot decode (checked here with protobuf itself)."""
    while True:
        data = _candidate(rng)
        try:
            message_type.FromString(data)
        except Exception:  # noqa: BLE001 - DecodeError, whatever the runtime raises
            return data


def send_raw(channel: grpc.Channel, path: str, payload: bytes,
             timeout: float = 10.0) -> grpc.StatusCode:
    """Send ``payload`` as the request of ``path``; the call's status code."""
    kind = METHODS[path][0]
    stub = getattr(channel, kind)(path)  # no serializers: bytes go out as they are

    def one() -> Iterator[bytes]:
        yield payload

    try:
        if kind == "unary_unary":
            stub(payload, timeout=timeout)
        elif kind == "stream_unary":
            stub(one(), timeout=timeout)
        elif kind == "unary_stream":
            list(stub(payload, timeout=timeout))
        else:
            list(stub(one(), timeout=timeout))
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def fuzz(channel: grpc.Channel, n: int, seed: int = 0) -> dict[grpc.StatusCode, int]:
    """``n`` malformed requests spread over every method; how many got each status."""
    rng = random.Random(seed)
    paths = sorted(METHODS)
    counts: dict[grpc.StatusCode, int] = {}
    for i in range(n):
        path = paths[i % len(paths)]
        code = send_raw(channel, path, malformed(rng, METHODS[path][1]))
        counts[code] = counts.get(code, 0) + 1
    return counts
