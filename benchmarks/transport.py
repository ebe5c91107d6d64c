"""Transport and scorer figures against their targets, each a ratio or time in one run.

- ``indices_1m_ms``: GetSelection of 1 M indices to one rank over loopback (target ≤ 25 ms)
- ``push_resnet18_w025_ms``: PushWeights of a width-0.25 CIFAR ResNet-18 slice (≤ 50 ms)
- ``scorer_vs_loop_ratio``: a scorer actor's samples/s over the same proxy forward in a
  plain loop in this process, same data, same threads (target ≥ 0.9)

Run: ``.venv/bin/python benchmarks/transport.py [--repeats 15] [--json]`` (medians).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from dynams_service import (
    JobSpec,
    ProxySpec,
    ScorerResources,
    SelectionPolicy,
    build_architecture,
    score,
    write_shards,
)
from dynams_service.core.data.idx import load_idx_split
from dynams_service.core.data.shards import decode_samples, read_shards
from dynams_service.core.models.proxy import export_psp


def _median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def _spec(job_id: str, uri: str, manifest, arch: str, **resources) -> JobSpec:
    return JobSpec(job_id=job_id, dataset_uri=uri, fingerprint=manifest.fingerprint,
                   proxy=ProxySpec(architecture=arch, width=0.25),
                   policy=SelectionPolicy(ratio=0.3, warmup_epochs=1), epochs=3,
                   resources=ScorerResources(**resources))


def indices_and_push(work: Path, repeats: int) -> dict[str, float]:
    from dynams_service.client import SelectorClient
    from dynams_service.service.server import SelectorServer

    rng = np.random.default_rng(0)
    n = 1_000_000
    # 28x28 samples: CreateJob checks that the proxy can read them (zeros compress away)
    big = write_shards(str(work / "big"), np.zeros((n, 1, 28, 28), np.uint8),
                       rng.integers(0, 10, n), num_classes=10, rows_per_shard=n)
    cifar = write_shards(str(work / "cifar"), rng.integers(0, 255, (64, 3, 32, 32), np.uint8),
                         rng.integers(0, 10, 64), num_classes=10, rows_per_shard=64)
    server = SelectorServer("127.0.0.1:0", state_dir=work / "state").start()
    try:
        with SelectorClient(server.address) as client:
            client.create_job(_spec("big", str(work / "big"), big, "fmnist-cnn"))
            client.get_selection("big", 0, 0, 1)  # warm: shuffles and caches the order
            received = client.get_selection("big", 0, 0, 1)[1]
            assert len(received) == n
            indices_ms = _median_ms(lambda: client.get_selection("big", 0, 0, 1), repeats)
            client.create_job(_spec("cifar", str(work / "cifar"), cifar, "cifar-resnet18"))
            records = export_psp(build_architecture("cifar-resnet18"), 0.25)
            client.push_weights("cifar", 1, 0, records)
            push_ms = _median_ms(lambda: client.push_weights("cifar", 1, 0, records), repeats)
        return {"indices_1m_ms": indices_ms, "push_resnet18_w025_ms": push_ms,
                "push_resnet18_w025_bytes": sum(r.nbytes for r in records)}
    finally:
        server.stop(grace=0)


def scorer_vs_loop(work: Path, data_dir: str, samples: int, repeats: int,
                   threads: int) -> dict[str, float]:
    from dynams_service.service.scorer import JobScorers

    images, labels = load_idx_split(data_dir, "train")
    uri = str(work / "fmnist")
    manifest = write_shards(uri, images[:samples, None], labels[:samples], num_classes=10,
                            rows_per_shard=samples)
    model = build_architecture("fmnist-cnn").eval()
    records = export_psp(model, 0.25)
    snapshot = {r.name: r.to_tensor().numpy() for r in records}
    spec = _spec("throughput", uri, manifest, "fmnist-cnn", num_scorers=1, num_cpus=threads,
                 batch_size=1024)
    scorers = JobScorers(spec, manifest)
    try:
        scorers.score(snapshot, "distance")  # warm-up
        actor_ms = _median_ms(lambda: scorers.score(snapshot, "distance"), repeats)
    finally:
        scorers.shutdown()
    torch.set_num_threads(threads)
    proxy = model.make_proxy(0.25)
    proxy.load_state_dict({k: torch.from_numpy(v) for k, v in snapshot.items()})
    rows = read_shards(uri, manifest=manifest)
    x = decode_samples(rows.samples, manifest)
    score(proxy, x, batch_size=1024)
    loop_ms = _median_ms(lambda: score(proxy, x, batch_size=1024), repeats)
    return {"scorer_vs_loop_ratio": loop_ms / actor_ms, "scorer_ms": actor_ms,
            "loop_ms": loop_ms, "scored_samples": samples}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--samples", type=int, default=60000,
                        help="Fashion-MNIST samples for the scorer comparison")
    parser.add_argument("--threads", type=int, default=2, help="torch threads, both sides")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()

    import ray

    work = Path(tempfile.mkdtemp(prefix="dyntr-", dir="/tmp"))
    (work / "tok").write_text(secrets.token_hex(32))
    os.environ.setdefault("RAY_AUTH_TOKEN_PATH", str(work / "tok"))
    ray.init(address="local", num_cpus=max(4, args.threads), include_dashboard=False,
             _temp_dir=str(work / "ray"), logging_level="ERROR")
    try:
        result = {**indices_and_push(work, args.repeats),
                  **scorer_vs_loop(work, args.data_dir, args.samples, max(3, args.repeats // 3),
                                   args.threads)}
    finally:
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(result))
        return
    print(f"1M indices to one rank:        {result['indices_1m_ms']:.1f} ms (target <= 25)")
    print(f"push ResNet-18 w0.25 slice:    {result['push_resnet18_w025_ms']:.1f} ms "
          f"({result['push_resnet18_w025_bytes'] / 1e6:.2f} MB; target <= 50)")
    print(f"scorer vs plain loop:          {result['scorer_vs_loop_ratio']:.2f}x "
          f"({result['scorer_ms']:.0f} vs {result['loop_ms']:.0f} ms for "
          f"{result['scored_samples']} samples; target >= 0.9)")


if __name__ == "__main__":
    main()
