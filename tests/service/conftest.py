"""Helpers for the selector tests (the fixtures live in tests/conftest.py)."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import ray

from dynams_service import JobSpec, ProxySpec, ScorerResources, SelectionPolicy


def make_spec(small_shards, job_id: str = "fmnist-small", **policy) -> JobSpec:
    uri, manifest = small_shards
    policy = {"ratio": 0.3, "warmup_epochs": 1, "interval_epochs": 1, "seed": 7,
              "class_balance": "per_class", **policy}  # the checks compare per-class picks
    return JobSpec(job_id=job_id, dataset_uri=uri, fingerprint=manifest.fingerprint,
                   proxy=ProxySpec(architecture="fmnist-cnn", width=0.25),
                   policy=SelectionPolicy(**policy), epochs=4,
                   resources=ScorerResources(num_scorers=2, num_cpus=1, batch_size=256))


def with_resources(spec: JobSpec, **resources) -> JobSpec:
    """``spec`` with some of its scorer resources changed (validated like any spec's)."""
    return spec.model_copy(update={"resources": ScorerResources(**{
        **spec.resources.model_dump(), **resources})})


def gather(client, job_id: str, epoch: int, world_size: int, drop_last: bool = False):
    """Every rank's answer for one epoch, as (selection, its indices) pairs."""
    answers = [client.get_selection(job_id, epoch, rank, world_size, drop_last=drop_last,
                                    timeout=120) for rank in range(world_size)]
    return [(a, a.indices) for a in answers]


def canonical_from_parts(parts: list[np.ndarray], global_count: int) -> np.ndarray:
    """Undo the rank split: interleave parts, drop the padding."""
    world = len(parts)
    order = np.empty(len(parts[0]) * world, dtype=np.int64)
    for rank, part in enumerate(parts):
        order[rank::world] = part
    return order[:global_count]


class Selector:
    """A `dynams serve` process on this session's Ray cluster."""

    def __init__(self, state_dir: Path, *args: str) -> None:
        address = ray.get_runtime_context().gcs_address
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dynams_service.cli", "serve", "--address", "127.0.0.1:0",
             "--ray-address", address, "--state-dir", str(state_dir), *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError("selector exited:\n" + "".join(self.lines))
            self.lines.append(line)
            match = re.search(r"dynams selector listening on (\S+)", line)
            if match:
                self.address = match.group(1)
                break
        threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True).start()

    def rss(self) -> int:
        """The server process's resident memory, bytes."""
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) * 1024

    def sigkill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=60)
