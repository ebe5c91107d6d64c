"""Bad input gets a precise status code and message, and other jobs keep being served."""

from __future__ import annotations

import re

import grpc
import numpy as np
import pytest
import torch

from dynams_service.client import SelectorClient, SelectorError
from dynams_service.core.job import RoundState
from dynams_service.core.models.proxy import TensorRecord, export_psp
from dynams_service.proto.dynams.v1 import selector_pb2_grpc
from dynams_service.protocol import pb, records_to_chunks, spec_to_proto

from .conftest import make_spec


@pytest.fixture()
def live(local_server_factory, small_shards, trained_model):
    """A server with one healthy job whose round 0 is done."""
    server = local_server_factory()
    client = SelectorClient(server.address, retries=0)
    spec = make_spec(small_shards, job_id="healthy")
    client.create_job(spec)
    client.push_weights(spec.job_id, 1, 1, export_psp(trained_model, 0.25))
    reference = client.get_selection(spec.job_id, 1, 0, 2, timeout=120)
    stub = selector_pb2_grpc.SelectorStub(grpc.insecure_channel(server.address))
    yield client, stub, spec, reference
    # Whatever the test sent, the healthy job answers exactly as before.
    header = client.get_selection(spec.job_id, 1, 0, 2)
    part = header.indices
    assert header == reference and np.array_equal(part, reference.indices)


def _code(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises((SelectorError, grpc.RpcError)) as info:
        result = call()
        if hasattr(result, "__iter__") and not isinstance(result, tuple):
            list(result)
    exc = info.value
    if isinstance(exc, SelectorError):
        return grpc.StatusCode[exc.status.value], exc.details
    return exc.code(), exc.details()


def test_unknown_job(live):
    client, _, _, _ = live
    code, message = _code(lambda: client.get_selection("nope", 1, 0, 1))
    assert code == grpc.StatusCode.NOT_FOUND and "no job 'nope'" in message
    code, _ = _code(lambda: client.push_weights("nope", 1, 1, []))
    assert code == grpc.StatusCode.NOT_FOUND


def test_wrong_tensor_shape_and_dtype(live, small_shards, trained_model):
    client, _, spec, _ = live
    good = export_psp(trained_model, 0.25)
    bad_shape = [TensorRecord.from_tensor(r.name, torch.zeros(3, 3)) if r.name == "fc.weight"
                 else r for r in good]
    code, message = _code(lambda: client.push_weights(spec.job_id, 2, 5, bad_shape))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "'fc.weight' has shape [3, 3]" in message
    bad_dtype = [TensorRecord.from_tensor(r.name, r.to_tensor().long()) if r.name == "fc.bias"
                 else r for r in good]
    code, message = _code(lambda: client.push_weights(spec.job_id, 2, 5, bad_dtype))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "dtype int64" in message
    # Nothing was committed: round 1 still waits for weights.
    assert client.get_job(spec.job_id).rounds[1].state == RoundState.WAITING


def test_truncated_push_stream(live, trained_model):
    client, stub, spec, _ = live
    chunks = list(records_to_chunks(spec.job_id, 5, 2, export_psp(trained_model, 0.25),
                                    part_bytes=4096))
    assert len(chunks) > 3
    code, message = _code(lambda: stub.PushWeights(iter(chunks[:2]), timeout=30))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "bytes do not hold" in message

    def broken():
        yield from chunks[:2]
        raise RuntimeError("trainer died mid-push")

    code, _ = _code(lambda: stub.PushWeights(broken(), timeout=30))
    assert code in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN)
    assert client.get_job(spec.job_id).rounds[1].state == RoundState.WAITING


def test_epoch_and_rank_out_of_range(live):
    client, _, spec, _ = live
    code, message = _code(lambda: client.get_selection(spec.job_id, 4, 0, 1))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "epoch 4 must be in [0, 3]" in message
    code, message = _code(lambda: client.get_selection(spec.job_id, 1, 2, 2))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "rank 2 must be in [0, 1]" in message
    code, _ = _code(lambda: client.get_selection(spec.job_id, 1, 0, 0))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    code, message = _code(lambda: client.push_weights(spec.job_id, 0, 1, []))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "needs no weights" in message


def test_bad_specs(live, small_shards):
    client, stub, spec, _ = live
    proto = spec_to_proto(make_spec(small_shards, job_id="ratio-zero"))
    proto.policy.ratio = 0
    code, message = _code(lambda: stub.CreateJob(pb.CreateJobRequest(spec=proto), timeout=30))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "ratio" in message

    proto = spec_to_proto(make_spec(small_shards, job_id="enum"))
    proto.policy.staleness = 42
    code, message = _code(lambda: stub.CreateJob(pb.CreateJobRequest(spec=proto), timeout=30))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "unknown enum value 42" in message

    missing = make_spec(small_shards, job_id="missing").model_copy(
        update={"dataset_uri": "/nonexistent/dataset"})
    code, message = _code(lambda: client.create_job(missing))
    assert code == grpc.StatusCode.NOT_FOUND and "/nonexistent/dataset" in message

    unknown_home = missing.model_copy(update={"job_id": "no-home",
                                              "dataset_uri": "~nosuchuser-dynams/x"})
    code, message = _code(lambda: client.create_job(unknown_home))
    assert code == grpc.StatusCode.NOT_FOUND and "nosuchuser-dynams" in message

    proto = spec_to_proto(make_spec(small_shards, job_id="rules"))
    proto.policy.explore, proto.policy.coverage_strata = 0.2, 10
    code, message = _code(lambda: stub.CreateJob(pb.CreateJobRequest(spec=proto), timeout=30))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "do not combine" in message

    fp = spec.fingerprint.model_copy(update={"labels_sha256": "0" * 64})
    code, message = _code(lambda: client.create_job(
        make_spec(small_shards, job_id="other-data").model_copy(update={"fingerprint": fp})))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "fingerprint" in message

    code, _ = _code(lambda: client.create_job(spec.model_copy(update={"epochs": 5})))
    assert code == grpc.StatusCode.ALREADY_EXISTS
    assert client.create_job(spec).spec.job_id == spec.job_id  # identical: idempotent

    proto = spec_to_proto(make_spec(small_shards, job_id="arch"))
    proto.proxy.architecture = "resnet-9000"
    code, message = _code(lambda: stub.CreateJob(pb.CreateJobRequest(spec=proto), timeout=30))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "unknown architecture" in message
    assert [j.spec.job_id for j in client.list_jobs()] == ["healthy"]


def test_delete(live, small_shards):
    client, _, _, _ = live
    spec = make_spec(small_shards, job_id="short-lived")
    client.create_job(spec)
    assert client.delete_job(spec.job_id)
    code, _ = _code(lambda: client.get_job(spec.job_id))
    assert code == grpc.StatusCode.NOT_FOUND


def test_a_port_in_use_is_refused_at_start(local_server_factory, tmp_path):
    """No silent sharing of a port (gRPC's SO_REUSEPORT is off): a second selector on a
    running one's port fails to start, naming the address."""
    first = local_server_factory()
    with pytest.raises(OSError, match=f"cannot listen on {re.escape(first.address)}"):
        local_server_factory(state_dir=tmp_path / "other", address=first.address)
