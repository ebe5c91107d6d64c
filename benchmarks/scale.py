"""Real-data benchmark: streaming scorers on encoded images, each figure a ratio in one run.

- ``scorer_rss_growth``: peak RSS of a real scorer actor (``cache_bytes=0``) scoring the
  large row count over the small one (default 200k / 50k generated 1x64x64 JPEGs;
  target ≤ 1.15): memory does not grow with the rows it streams.
- ``stream_vs_loop``: the streaming scorer actor's samples/s against a plain
  single-process loop that reads Parquet, decodes, normalises and runs the same proxy
  forward, both pinned to the same core (median of ``--repeats``; target ≥ 0.9).
- ``cached_vs_today``: a round served from the decoded-row cache against the previous
  scorer (all rows decoded to float32 up front, then ``score``) on Fashion-MNIST raw
  shards, in one process on one thread (median per-round time, today / new; target ≥ 1.0).
- ``decode_share``: the share of a streaming round's wall time spent decoding
  (informative).

Datasets come from ``benchmarks/jpeg_data.py`` (cached). Results print as one JSON line
with ``--json`` and are written to ``--out DIR`` only when given.

Run: ``.venv/bin/python benchmarks/scale.py --json [--quick] [--out DIR]``
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from benchmarks.jpeg_data import jpeg_dataset  # noqa: E402
from benchmarks.results_io import store_json  # noqa: E402
from dynams_service.core.data.decoders import ImageDecoder, Normalizer  # noqa: E402
from dynams_service.core.data.idx import load_idx_split  # noqa: E402
from dynams_service.core.data.shards import (  # noqa: E402
    decode_samples,
    read_manifest,
    read_shards,
    write_shards,
)
from dynams_service.core.data.stream import ShardStream  # noqa: E402
from dynams_service.core.models.models import build_architecture  # noqa: E402
from dynams_service.core.selection.margin import margins  # noqa: E402
from dynams_service.core.selection.scoring import score, score_batches  # noqa: E402

ARCH = "cnn64-grey"
WIDTH = 0.25
BATCH = 256


def snapshot(arch: str = ARCH) -> dict[str, np.ndarray]:
    """A PSP snapshot as the coordinator hands it to scorers: numpy arrays by name."""
    torch.manual_seed(0)
    model = build_architecture(arch)
    return {name: t.detach().numpy().copy() for name, t in model.slice_state(WIDTH).items()}


def start_ray(work: Path) -> None:
    import ray

    token = work / "ray-token"
    token.write_text(secrets.token_hex(32))
    os.environ.update(RAY_TMPDIR=str(work), RAY_AUTH_TOKEN_PATH=str(token))
    ray.init(address="local", num_cpus=2, include_dashboard=False, _temp_dir=str(work),
             logging_level="WARNING")


def scorer(uri: str, shard_ids: list[int], cache_bytes: int, threads: int = 1):
    """A real scorer actor (the class the selector runs) over the given shards."""
    import ray

    from dynams_service.service.scorer import ScorerActor

    manifest = read_manifest(uri)
    return ray.remote(ScorerActor).options(num_cpus=1).remote(
        uri, manifest.model_dump_json(), shard_ids, ARCH, WIDTH, BATCH, threads, cache_bytes)


def rss_growth(uri: str, small_rows: int) -> dict:
    """Peak scorer RSS streaming all rows over streaming the first ``small_rows``."""
    import ray

    manifest = read_manifest(uri)
    stops = np.array([s.stop for s in manifest.shards])
    small_ids = list(range(int(np.searchsorted(stops, small_rows)) + 1))
    out = {}
    snap = snapshot()
    for label, ids in (("small", small_ids), ("large", list(range(len(manifest.shards))))):
        actor = scorer(uri, ids, cache_bytes=0)
        started = time.perf_counter()
        indices, _ = ray.get(actor.score.remote(snap, "distance"))
        seconds = time.perf_counter() - started
        out[label] = {"rows": len(indices), "peak_rss_mb": ray.get(actor.peak_rss.remote()) / 2**20,
                      "round_seconds": seconds}
        ray.kill(actor)
    out["scorer_rss_growth"] = out["large"]["peak_rss_mb"] / out["small"]["peak_rss_mb"]
    return out


def plain_loop(uri: str, proxy, normalize: Normalizer, decoder: ImageDecoder) -> int:
    """Read → decode → normalise → forward → margins, one batch at a time, one thread."""
    manifest = read_manifest(uri)
    head = proxy.head.slice_state(1.0)
    rows = 0
    with torch.inference_mode():
        for shard in manifest.shards:
            parquet = pq.ParquetFile(str(Path(uri, shard.path)))
            for batch in parquet.iter_batches(batch_size=BATCH, columns=["sample"]):
                x = normalize(decoder.decode(batch.column(0)))
                margins(proxy.forward_features(x, 1.0), head["weight"], head.get("bias"))
                rows += len(x)
    return rows


def pin_process(pid: int, core: int) -> None:
    """Pin every thread of a process to one core (threads it starts later inherit it)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        os.sched_setaffinity(int(tid), {core})


def stream_vs_loop(uri: str, repeats: int, core: int) -> dict:
    """The streaming scorer actor against the plain loop, both pinned to ``core``."""
    import ray

    manifest = read_manifest(uri)
    torch.set_num_threads(1)
    os.sched_setaffinity(0, {core})
    torch.manual_seed(0)
    proxy = build_architecture(ARCH).make_proxy(WIDTH).eval()
    proxy.load_state_dict({k: torch.from_numpy(v) for k, v in snapshot().items()})
    decoder, normalize = ImageDecoder(manifest.sample_shape), Normalizer(manifest.mean,
                                                                          manifest.std)
    actor = scorer(uri, list(range(len(manifest.shards))), cache_bytes=0)
    pin_process(ray.get(actor.pid.remote()), core)
    snap = snapshot()
    started = time.perf_counter()
    ray.get(actor.score.remote(snap, "distance"))  # warm-up (file cache, allocator)
    warmup = time.perf_counter() - started
    loop_s, actor_s = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        rows = plain_loop(uri, proxy, normalize, decoder)
        loop_s.append(time.perf_counter() - started)
        started = time.perf_counter()
        ray.get(actor.score.remote(snap, "distance"))
        actor_s.append(time.perf_counter() - started)
    decode = ray.get(actor.__ray_call__.remote(lambda self: self.stream.decode_seconds))
    ray.kill(actor)
    os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
    loop, stream = statistics.median(loop_s), statistics.median(actor_s)
    return {"rows": rows, "loop_samples_per_s": rows / loop, "stream_samples_per_s": rows / stream,
            "stream_vs_loop": loop / stream,
            "decode_share": decode / (warmup + sum(actor_s)),
            "loop_seconds": loop_s, "stream_seconds": actor_s}


def cached_vs_today(work: Path, repeats: int) -> dict:
    """Per-round time: the previous in-memory float32 path against the cached stream."""
    images, labels = load_idx_split(os.environ.get("DYNAMS_FASHION_MNIST_DIR",
                                                   "/usr/share/datasets/fashion-mnist"), "train")
    uri = str(work / "fmnist")
    write_shards(uri, images[:, None], labels, rows_per_shard=8192)
    manifest = read_manifest(uri)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    proxy = build_architecture("fmnist-cnn").make_proxy(WIDTH).eval()
    rows = read_shards(uri, manifest=manifest)  # today: decode everything once, up front
    inputs = decode_samples(rows.samples, manifest)
    stream = ShardStream(uri, manifest, batch_size=BATCH, cache_bytes=1 << 30)
    normalize = Normalizer(manifest.mean, manifest.std)

    def new_round() -> torch.Tensor:
        return score_batches(proxy, ((normalize(b.samples), None) for b in stream),
                             stream.num_rows)

    first = new_round()  # fills the cache
    if not torch.equal(first, score(proxy, inputs, batch_size=BATCH)):
        raise AssertionError("cached margins differ from the in-memory path")
    today_s, new_s = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        score(proxy, inputs, batch_size=BATCH)
        today_s.append(time.perf_counter() - started)
        started = time.perf_counter()
        new_round()
        new_s.append(time.perf_counter() - started)
    today, new = statistics.median(today_s), statistics.median(new_s)
    return {"rows": len(inputs), "today_round_s": today, "cached_round_s": new,
            "cached_vs_today": today / new, "identical_margins": True}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="small datasets (8k/2k rows, 2k for the loop) to check it runs")
    parser.add_argument("--large-rows", type=int, default=200_000)
    parser.add_argument("--small-rows", type=int, default=50_000)
    parser.add_argument("--loop-rows", type=int, default=20_000,
                        help="rows of the stream-vs-loop comparison")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--core", type=int, default=(os.cpu_count() or 1) - 1,
                        help="the core both sides of stream-vs-loop are pinned to "
                             "(default: the last)")
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    parser.add_argument("--out", type=Path, help="also write scale.json here")
    args = parser.parse_args()
    if args.quick:
        args.large_rows, args.small_rows, args.loop_rows, args.repeats = 8192, 2048, 2048, 1
    work = Path(tempfile.mkdtemp(prefix="dynscale-", dir="/tmp"))
    try:
        started = time.perf_counter()
        big = jpeg_dataset(args.large_rows, size=64, channels=1, rows_per_shard=1024)
        loop_uri = jpeg_dataset(args.loop_rows, size=64, channels=1, rows_per_shard=1024)
        generated = time.perf_counter() - started
        start_ray(work)
        result = {"generate_seconds": generated, "rss": rss_growth(big, args.small_rows),
                  "loop": stream_vs_loop(loop_uri, args.repeats, args.core),
                  "cached": cached_vs_today(work, max(3, args.repeats))}
        figures = {"scorer_rss_growth": result["rss"]["scorer_rss_growth"],
                   "stream_vs_loop": result["loop"]["stream_vs_loop"],
                   "cached_vs_today": result["cached"]["cached_vs_today"],
                   "decode_share": result["loop"]["decode_share"]}
        result = {"figures": figures, "arch": ARCH, "width": WIDTH, "batch_size": BATCH,
                  "quick": args.quick, **result}
    finally:
        import ray

        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    store_json(args.out, "scale.json", result)
    if args.json:
        print(json.dumps(result))
    else:
        print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
