"""The ``dynams`` console script on real Fashion-MNIST, and its error messages."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

DYNAMS = [sys.executable, "-m", "dynams_service.cli"]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*DYNAMS, *args], capture_output=True, text=True, timeout=300)


def test_convert_and_info(fashion_mnist_dir, tmp_path):
    result = run("dataset", "convert", "--data-dir", str(fashion_mnist_dir),
                 "--out", str(tmp_path / "fm"), "--rows-per-shard", "20000")
    assert result.returncode == 0, result.stderr
    assert "60000 samples, 3 shards" in result.stdout
    assert "10000 samples, 1 shards" in result.stdout
    info = run("dataset", "info", str(tmp_path / "fm" / "train"), "--verify")
    assert info.returncode == 0, info.stderr
    assert "samples:        60000" in info.stdout and "(verified)" in info.stdout
    assert "rows [40000, 60000)" in info.stdout


def test_console_script_is_installed():
    exe = shutil.which("dynams", path=str(Path(sys.executable).parent))
    assert exe is not None
    result = subprocess.run([exe, "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "dataset" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("dataset", "convert", "--data-dir", "/nonexistent", "--out", "x"), "not a directory"),
        (("dataset", "info", "/nonexistent"), "no dataset here"),
    ],
)
def test_errors_are_one_clear_line(args, message):
    result = run(*args)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_bad_flag_value():
    result = run("dataset", "convert", "--out", "x", "--rows-per-shard", "0")
    assert result.returncode == 2 and "must be >= 1" in result.stderr


def test_serve_refuses_limits_that_would_starve_short_calls():
    result = run("serve", "--max-streams", "500", "--ray-address", "127.0.0.1:1")
    assert result.returncode == 2
    assert "--max-streams (500) must be below the server's 128 worker threads" in result.stderr
    result = run("serve", "--job-ttl", "-1")
    assert result.returncode == 2 and "must be >= 0" in result.stderr
