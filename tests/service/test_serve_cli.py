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

import grpc
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
