"""Token auth, health and reflection, and the generated code staying in sync."""

from __future__ import annotations

import filecmp
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from dynams_service.client import SelectorClient, SelectorError, Status
from dynams_service.proto import generate


def test_token_is_required_except_for_health(local_server_factory):
    server = local_server_factory(token="s3cret-token")
    with SelectorClient(server.address, retries=0) as anonymous:
        with pytest.raises(SelectorError) as info:
            anonymous.list_jobs()
        assert info.value.status == Status.UNAUTHENTICATED
        assert "s3cret" not in info.value.details
        with pytest.raises(SelectorError) as info:
            anonymous.get_selection("x", 0, 0, 1)
        assert info.value.status == Status.UNAUTHENTICATED
    with SelectorClient(server.address, token="wrong", retries=0) as wrong, \
            pytest.raises(SelectorError) as info:
        wrong.push_weights("x", 1, 1, [])
    assert info.value.status == Status.UNAUTHENTICATED
    with SelectorClient(server.address, token="s3cret-token") as good:
        assert good.list_jobs() == []
    channel = grpc.insecure_channel(server.address)
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_health_and_reflection_name_the_service(local_server_factory):
    server = local_server_factory()
    channel = grpc.insecure_channel(server.address)
    reply = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service="dynams.v1.Selector"), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
    names = {s.name for r in responses for s in r.list_services_response.service}
    assert "dynams.v1.Selector" in names and "grpc.health.v1.Health" in names


def test_regenerating_the_protocol_changes_nothing(tmp_path):
    generate.generate(tmp_path)
    committed = Path(generate.OUT) / "dynams" / "v1"
    fresh = tmp_path / "dynams" / "v1"
    for name in ("selector_pb2.py", "selector_pb2.pyi", "selector_pb2_grpc.py"):
        assert filecmp.cmp(committed / name, fresh / name, shallow=False), name


def test_duplicate_authorization_headers_are_refused(local_server_factory):
    server = local_server_factory(token="s3cret-token")
    stub = SelectorClient(server.address, retries=0)._stub
    from dynams_service.protocol import pb

    good = ("authorization", "Bearer s3cret-token")
    assert stub.ListJobs(pb.ListJobsRequest(), metadata=(good,), timeout=10).jobs == []
    for headers in ((good, good), (("authorization", "Bearer wrong"), good),
                    (good, ("authorization", "Bearer wrong"))):
        with pytest.raises(grpc.RpcError) as info:
            stub.ListJobs(pb.ListJobsRequest(), metadata=headers, timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
