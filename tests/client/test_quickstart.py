"""examples/quickstart.py runs as written against a real selector and trains on its
selections (never on the fallback)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "examples" / "quickstart.py"


def test_quickstart_is_short_and_trains_on_dynams_selections(local_server_factory, shard_root):
    assert len(QUICKSTART.read_text().splitlines()) <= 60
    uri = str(shard_root / "train")  # 2200 samples
    server = local_server_factory()
    result = subprocess.run([sys.executable, str(QUICKSTART), server.address, uri, "--epochs",
                             "3"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert [line.split(":")[0] for line in lines[:3]] == ["epoch 0", "epoch 1", "epoch 2"]
    assert "2200 samples (full)" in lines[0]
    assert all("660 samples (subset)" in line for line in lines[1:3]), result.stdout
    assert lines[-1] == "fallback epochs: []"
    assert "fallback" not in result.stderr.lower()
