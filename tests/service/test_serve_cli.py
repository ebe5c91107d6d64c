"""`dynams serve` as a user runs it: embedded Ray, prints its address, stops on SIGTERM."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc


def test_serve_starts_embedded_ray_and_stops_on_sigterm(tmp_path):
    ray_tmp = tempfile.mkdtemp(prefix="dynserve-", dir="/tmp")  # AF_UNIX paths are short
    env = dict(os.environ, RAY_TMPDIR=ray_tmp, RAY_AUTH_TOKEN_PATH=str(tmp_path / "tok"))
    (tmp_path / "tok").write_text(secrets.token_hex(32))
    (tmp_path / "token").write_text("client-token\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "dynams_service.cli", "serve", "--address", "127.0.0.1:0",
         "--ray-address", "local", "--state-dir", str(tmp_path / "state"),
         "--token-file", str(tmp_path / "token")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines = []
    try:
        deadline = time.monotonic() + 180
        address = None
        while address is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            match = re.search(r"dynams selector listening on (127\.0\.0\.1:\d+)", line)
            address = match.group(1) if match else None
        assert address, "".join(lines)
        channel = grpc.insecure_channel(address)
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                          timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        proc.send_signal(signal.SIGTERM)
        # Read through the same buffered pipe (communicate() would skip its buffer).
        lines.append(proc.stdout.read())
        proc.wait(timeout=120)
        assert proc.returncode == 0, "".join(lines)
        text = "".join(lines)
        assert "Ray dashboard:" in text and "shutting down" in text
        assert "client-token" not in text
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(ray_tmp, ignore_errors=True)


def _descendants(pid: int) -> set[int]:
    rows = subprocess.run(["ps", "-eo", "pid=,ppid="], capture_output=True, text=True,
                          check=True).stdout.split("\n")
    children: dict[int, list[int]] = {}
    for row in rows:
        if row.strip():
            child, parent = map(int, row.split())
            children.setdefault(parent, []).append(child)
    found, stack = set(), [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.add(child)
            stack.append(child)
    return found


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_sigkilled_serve_takes_embedded_ray_along_and_ray_is_contained(tmp_path):
    ray_tmp = tempfile.mkdtemp(prefix="dynserve-", dir="/tmp")
    env = dict(os.environ, RAY_TMPDIR=ray_tmp, RAY_AUTH_TOKEN_PATH=str(tmp_path / "tok"))
    (tmp_path / "tok").write_text(secrets.token_hex(32))
    proc = subprocess.Popen(
        [sys.executable, "-m", "dynams_service.cli", "serve", "--address", "127.0.0.1:0",
         "--ray-address", "local", "--state-dir", str(tmp_path / "state")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    helpers: set[int] = set()
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if "Ray dashboard:" in line:
                break
        text = "".join(lines)
        assert "Ray dashboard: http://127.0.0.1:" in text, text  # loopback only
        # Ray's GCS listens on every interface (Ray 2.60), but refuses calls without
        # the cluster's token: contained, see docs/service.md's threat model.
        helpers = _descendants(proc.pid)
        gcs = next(pid for pid in helpers if _cmdline(pid)[0].endswith("/gcs_server"))
        listening = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True).stdout
        gcs_port = next(line.split()[3].rsplit(":", 1)[1] for line in listening.splitlines()
                        if f"pid={gcs}," in line)
        call = grpc.insecure_channel(f"127.0.0.1:{gcs_port}").unary_unary(
            "/ray.rpc.NodeInfoGcsService/GetAllNodeInfo")
        with pytest.raises(grpc.RpcError) as info:
            call(b"", timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        helpers = _descendants(proc.pid)
        assert len(helpers) >= 4  # gcs, raylet, dashboard, agents, …
        proc.kill()
        proc.wait()
        end = time.monotonic() + 60  # a failure guard, not a speed bound
        while [p for p in helpers if _alive(p)] and time.monotonic() < end:
            time.sleep(0.5)
        left = [p for p in helpers if _alive(p)]
        assert not left, subprocess.run(["ps", "-o", "pid,comm", "-p", ",".join(map(str, left))],
                                        capture_output=True, text=True).stdout
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in helpers:  # only what this test's server started
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(ray_tmp, ignore_errors=True)
