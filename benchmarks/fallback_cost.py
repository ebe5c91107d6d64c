"""Time a trainer waits per epoch while its selector is down: the first unreachable epoch
(the client's retries with backoff) against the later ones (a wait of at most 1.5 s for a
connection, no call), in one run.

The selector is a closed port on 127.0.0.1; the sampler is one rank with the default
client (5 retries from 0.2 s) and the default deadline.

Run: ``.venv/bin/python benchmarks/fallback_cost.py [--shards data/fashion-mnist/train]
[--epochs 6] [--out DIR]`` (prints one JSON object; ``DIR/fallback_cost.json``).
"""

from __future__ import annotations

import argparse
import json
import logging
import socket
import statistics
from pathlib import Path

from results_io import store_json

from dynams_service import JobSpec, ProxySpec, SelectionPolicy
from dynams_service.client import DynaMSSampler, SelectorClient, SelectorJob
from dynams_service.core.data.manifest import read_manifest


def closed_port() -> int:
    """A loopback port nothing listens on (connections are refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", default="data/fashion-mnist/train")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # the sampler's fallback warning is expected
    manifest = read_manifest(args.shards)
    spec = JobSpec(job_id="fallback-cost", dataset_uri=args.shards,
                   fingerprint=manifest.fingerprint, proxy=ProxySpec(architecture="fmnist-cnn"),
                   policy=SelectionPolicy(ratio=0.3, warmup_epochs=1), epochs=args.epochs)
    client = SelectorClient(f"127.0.0.1:{closed_port()}")
    with DynaMSSampler(manifest.fingerprint.num_samples,
                       SelectorJob(client, spec, can_create=True), rank=0,
                       world_size=1) as sampler:
        for epoch in range(args.epochs):
            sampler.set_epoch(epoch)
            for _ in sampler:
                pass
    blocked = [sampler.blocked_seconds[e] for e in range(args.epochs)]
    later = statistics.median(blocked[1:])
    result = {"epochs": args.epochs, "blocked_seconds": [round(b, 4) for b in blocked],
              "first_unreachable_epoch_s": round(blocked[0], 3),
              "later_epochs_median_s": round(later, 4),
              "fallback_epochs": sampler.fallback_epochs,
              "saved_per_epoch_s": round(blocked[0] - later, 3)}
    print(json.dumps(result))
    store_json(args.out, "fallback_cost.json", result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
