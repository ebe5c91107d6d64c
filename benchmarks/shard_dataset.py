"""Trainer-side reads: ``ShardDataset`` under a shuffled sampler, default cache against the
old one (8 row groups of 4096 Fashion-MNIST rows, 25.7 MB), in one run.

A shuffled epoch touches every row group in random order; a cache smaller than the dataset
evicts and re-reads row groups on almost every batch.

Run: ``.venv/bin/python benchmarks/shard_dataset.py [--shards data/fashion-mnist/train]
[--samples 12800] [--out DIR]`` (prints one JSON object; ``DIR/shard_dataset.json``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from results_io import store_json

from dynams_service import ShardDataset

OLD_CACHE_BYTES = 8 * 4096 * 784  # the former default: 8 row groups of 28x28 uint8 rows


def samples_per_second(uri: str, order: list[int], cache_bytes: int, batch: int) -> float:
    """Batches of a shuffled order through ``__getitems__``, as a DataLoader calls it."""
    dataset = ShardDataset(uri, cache_bytes=cache_bytes)
    started = time.perf_counter()
    for i in range(0, len(order), batch):
        dataset.__getitems__(order[i:i + batch])
    return len(order) / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", default="data/fashion-mnist/train")
    parser.add_argument("--samples", type=int, default=12800, help="shuffled reads timed")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    probe = ShardDataset(args.shards)  # built with the default cache
    n, default = len(probe), probe.cache_bytes
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0))[:args.samples]
    order = order.tolist()
    new = samples_per_second(args.shards, order, default, args.batch_size)
    old = samples_per_second(args.shards, order, OLD_CACHE_BYTES, args.batch_size)
    result = {"dataset": args.shards, "num_samples": n, "timed_samples": len(order),
              "default_cache_bytes": default, "default_samples_per_s": round(new),
              "old_cache_bytes": OLD_CACHE_BYTES, "old_samples_per_s": round(old),
              "speedup": round(new / old, 1)}
    print(json.dumps(result))
    store_json(args.out, "shard_dataset.json", result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
