"""Smoke test of benchmarks/scale_head.py: a --smoke run (N = 20k, K = 2 synthetic
scorers, 4 and 8 ranks) drives the real server and writes consistent results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "scale_head.py"


def test_smoke_run_selects_serves_and_writes_results(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", "--out", str(out),
         "--data-dir", str(tmp_path / "data")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"scale_head.py --smoke failed:\n{proc.stdout}\n{proc.stderr}"
    results = json.loads((out / "scale_head.json").read_text())
    assert (out / "scale_head.png").read_bytes()[:4] == b"\x89PNG"
    rounds = results["rounds"]
    assert [(r["n"], r["scorers"], r["per_class"]) for r in rounds] == [
        (20000, 2, False), (20000, 2, True)]
    for r in rounds:
        assert r["selected"] == 6000  # ⌈0.3 · 20000⌉ through the synthetic scorers
        assert r["passes"] >= 3 and r["select_seconds"] >= r["merge_seconds"] > 0
        assert r["head_peak_bytes"] >= 0
    served = results["serving"]
    assert [s["ranks"] for s in served] == [4, 8]
    for s in served:
        assert s["bytes"] == s["ranks"] * s["indices_per_rank"] * 8
        assert s["wait_max_s"] >= s["wait_median_s"] > 0
