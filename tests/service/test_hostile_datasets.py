"""Hostile or broken dataset URIs and manifests at CreateJob, against a real `dynams serve`:
each gets a precise status without hanging, growing or echoing, and blocks no one else."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from pathlib import Path

import grpc
import pytest

from dynams_service.client import SelectorClient, SelectorError
from dynams_service.core.data.shards import MANIFEST_NAME

from ..cli_runner import dynams as run_cli
from .conftest import Selector, make_spec, with_resources

C = grpc.StatusCode


def code_of(call) -> tuple[grpc.StatusCode, str]:
    try:
        call()
    except SelectorError as exc:
        return C[exc.status.value], exc.details
    return C.OK, ""


@pytest.fixture(scope="module")
def selector(tmp_path_factory, ray_cluster):
    allowed = tmp_path_factory.mktemp("allowed")
    server = Selector(tmp_path_factory.mktemp("state"), "--dataset-root", str(allowed),
                      "--dataset-root", "s3://team-bucket/datasets")
    yield server, allowed
    server.stop()


def dataset(allowed: Path, small_shards, name: str) -> Path:
    root = allowed / name
    shutil.copytree(small_shards[0], root)
    return root


def spec_for(small_shards, uri: str, job_id: str):
    return make_spec(small_shards, job_id).model_copy(update={"dataset_uri": uri})


def test_fifo_manifest_neither_hangs_nor_blocks_other_jobs(selector, small_shards):
    server, allowed = selector
    root = dataset(allowed, small_shards, "fifo")
    (root / MANIFEST_NAME).unlink()
    os.mkfifo(root / MANIFEST_NAME)
    client = SelectorClient(server.address, retries=0)
    result = {}
    worker = threading.Thread(target=lambda: result.update(fifo=code_of(
        lambda: client.create_job(spec_for(small_shards, str(root), "fifo"), timeout=60))))
    worker.start()
    good = dataset(allowed, small_shards, "good")
    ok = with_resources(spec_for(small_shards, str(good), "beside-fifo"), num_cpus=0)
    assert client.create_job(ok, timeout=60).spec.job_id == "beside-fifo"
    worker.join(60)
    code, message = result["fifo"]
    assert code == C.FAILED_PRECONDITION and "not a regular file" in message


def test_device_manifest_costs_no_memory(selector, small_shards):
    server, allowed = selector
    root = dataset(allowed, small_shards, "zero")
    (root / MANIFEST_NAME).unlink()
    (root / MANIFEST_NAME).symlink_to("/dev/zero")
    before = server.rss()
    client = SelectorClient(server.address, retries=0)
    code, message = code_of(lambda: client.create_job(spec_for(small_shards, str(root), "zero")))
    assert code == C.FAILED_PRECONDITION and "not a regular file" in message
    assert server.rss() - before < 64 << 20


def test_manifest_symlinked_to_a_secret_echoes_nothing(selector, small_shards, tmp_path):
    server, allowed = selector
    secret = tmp_path / "credentials"
    secret.write_text("AKIA-TOPSECRET-0123456789-abcdefghijklmnop-TAILSECRET\n")
    root = dataset(allowed, small_shards, "secret")
    (root / MANIFEST_NAME).unlink()
    (root / MANIFEST_NAME).symlink_to(secret)
    client = SelectorClient(server.address, retries=0)
    code, message = code_of(lambda: client.create_job(spec_for(small_shards, str(root), "sec")))
    assert code == C.FAILED_PRECONDITION and "SECRET" not in message


@pytest.mark.parametrize(("change", "expected"), [
    ({"sample_shape": [2 ** 62, 2 ** 62]}, "sample_shape"),
    ({"shards": [{"path": "/etc/passwd", "start": 0, "stop": 4000}]}, "shards"),
    ({"shards": [{"path": "../../x.parquet", "start": 0, "stop": 4000}]}, "shards"),
])
def test_crafted_manifests_are_failed_precondition(selector, small_shards, change, expected):
    server, allowed = selector
    root = dataset(allowed, small_shards, f"crafted-{len(os.listdir(allowed))}")
    manifest = json.loads((root / MANIFEST_NAME).read_text())
    manifest.update(change)
    (root / MANIFEST_NAME).write_text(json.dumps(manifest))
    client = SelectorClient(server.address, retries=0)
    code, message = code_of(lambda: client.create_job(
        spec_for(small_shards, str(root), f"crafted-{len(os.listdir(allowed))}")))
    assert code == C.FAILED_PRECONDITION and expected in message


@pytest.mark.parametrize("uri", [
    "s3://team-bucket/datasets/fm?endpoint_override=127.0.0.1:9&scheme=http",
    "s3://key:secret@team-bucket/datasets/fm", "hdfs://127.0.0.1:8020/fm",
    "s3://other-bucket/fm", "/etc", "s3://team-bucket/datasets/../private",
])
def test_uris_outside_the_operators_roots_are_permission_denied(selector, small_shards, uri):
    server, _ = selector
    client = SelectorClient(server.address, retries=0)
    code, message = code_of(lambda: client.create_job(spec_for(small_shards, uri, "denied")))
    assert code == C.PERMISSION_DENIED, message


def test_a_symlink_out_of_a_root_is_permission_denied(selector, small_shards, tmp_path):
    server, allowed = selector
    outside = dataset(tmp_path, small_shards, "outside")
    (allowed / "sneaky").symlink_to(outside)
    client = SelectorClient(server.address, retries=0)
    code, _ = code_of(lambda: client.create_job(
        spec_for(small_shards, str(allowed / "sneaky"), "sneaky")))
    assert code == C.PERMISSION_DENIED


def test_a_fifo_in_a_saved_job_does_not_stop_a_restart(tmp_path, small_shards, ray_cluster):
    root = dataset(tmp_path, small_shards, "restart")
    state = tmp_path / "state"
    server = Selector(state)
    try:
        client = SelectorClient(server.address, retries=0)
        client.create_job(with_resources(spec_for(small_shards, str(root), "will-break"),
                                         num_cpus=0))
    finally:
        server.stop()
    (root / MANIFEST_NAME).unlink()
    os.mkfifo(root / MANIFEST_NAME)
    server = Selector(state)  # returns once it listens: restore did not block on the FIFO
    try:
        client = SelectorClient(server.address, retries=0)
        code, message = code_of(lambda: client.get_selection("will-break", 0, 0, 1, timeout=10))
        assert code == C.FAILED_PRECONDITION and "could not be restored" in message
    finally:
        server.stop()


def test_job_list_and_delete_from_the_command_line(selector, small_shards):
    server, allowed = selector
    root = dataset(allowed, small_shards, "cli-jobs")
    client = SelectorClient(server.address, retries=0)
    client.create_job(with_resources(spec_for(small_shards, str(root), "cli-job"), num_cpus=0))

    def dynams(*args: str) -> subprocess.CompletedProcess:
        return run_cli(*args, "--address", server.address)

    listed = dynams("job", "list")
    assert listed.returncode == 0, listed.stderr
    assert any(line.startswith("cli-job ") and "rounds 0/3" in line
               for line in listed.stdout.splitlines()), listed.stdout
    deleted = dynams("job", "delete", "cli-job")
    assert deleted.returncode == 0 and "deleted job cli-job" in deleted.stdout
    assert "cli-job " not in dynams("job", "list").stdout
    again = dynams("job", "delete", "cli-job")
    assert again.returncode == 1 and "NOT_FOUND" in again.stderr
