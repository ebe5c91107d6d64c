"""The head at scale: k-selection without a full gather and GetSelection to many ranks.

Drives the real ``SelectorServer`` (coordinator, persistence, gRPC) in this process with
synthetic scorers (``benchmarks/synthetic_scorers.py``: Ray actors whose margins are a
hash of the dataset index), plugged in through the operator-side ``scorer_factory``. For
each dataset size N and scorer count K it runs one selection round (30 % by default,
global) and reports

- ``head_peak_bytes``: this process's peak RSS during the round over its RSS before it
  (freed memory returned to the system first, then VmHWM reset through
  ``/proc/self/clear_refs``), and ``head_overhead_bytes``: the same minus the selection
  it keeps (indices int64 + margins float32, persisted); ``head_rss_peak_bytes`` is the
  absolute peak (the process, its gRPC server and Ray driver, and jobs kept so far);
- ``select_seconds``: from the last scorer done to the selection ready (the round DONE:
  selected through the actors, saved, servable), with ``merge_seconds`` (the
  distributed selection alone);

then, on the largest round, GetSelection for ``--ranks`` concurrent ranks on loopback
(client threads in ``--client-processes`` processes, default 4, one channel each): every
rank's wait from a common start to its last byte, the max/median wait and the aggregate
throughput.

Datasets (1-byte samples, labels ``i % 10``) are written once under ``--data-dir``.
Results go to ``--out DIR`` (``scale_head.json`` + ``scale_head.png``); pass
``--out benchmarks/results`` to replace the committed figures.

Run: ``.venv/bin/python benchmarks/scale_head.py --out /tmp/scale-head``
Smoke (tiny N, K = 2, a few ranks): ``... --smoke --out /tmp/scale-head-smoke``
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from dynams_service.core.job import RoundState

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

ARCHITECTURE = "synthetic-tiny"
RATIO = 0.3
NUM_CLASSES = 10


# --- the operator's plug-ins: a tiny architecture (the head validates pushes against it)


def register_tiny_architecture() -> None:
    """A one-layer proxy reading 1-byte samples (the head only checks shapes with it)."""
    import torch

    from dynams_service import SlimmableModel, register_architecture
    from dynams_service.core.models.slimmable import SlimmableLinear, check_widths
    from dynams_service.core.registry import UnknownName

    class TinyModel(SlimmableModel):
        def __init__(self, num_classes: int = NUM_CLASSES, features: int = 4,
                     widths=(1.0, 0.25)) -> None:
            super().__init__()
            self.config = {"num_classes": num_classes, "features": features}
            self.widths = check_widths(widths)
            self.head = SlimmableLinear(features, num_classes, slim_out=False)

        def forward_features(self, x: torch.Tensor, width: float = 1.0) -> torch.Tensor:
            return x.flatten(1)[:, :1].float().expand(-1, self.head.features(width)[0])

        def proxy_config(self, width: float) -> dict:
            return {**self.config, "features": self.head.features(width)[0]}

    try:
        from dynams_service import build_architecture
        build_architecture(ARCHITECTURE)
    except UnknownName:
        register_architecture(ARCHITECTURE, TinyModel)


def ensure_dataset(data_dir: Path, n: int, shards: int = 256):
    """A dataset of ``n`` 1-byte samples, labels ``i % 10``, written once and reused."""
    from dynams_service import write_shards
    from dynams_service.core.data.shards import read_manifest

    uri = data_dir / f"n{n}"
    if (uri / "dynams-dataset.json").exists():
        return str(uri), read_manifest(str(uri))
    partial = data_dir / f"n{n}.partial-{secrets.token_hex(4)}"
    started = time.perf_counter()
    labels = np.arange(n, dtype=np.int64) % NUM_CLASSES
    write_shards(str(partial), np.zeros((n, 1, 1, 1), dtype=np.uint8), labels,
                 num_classes=NUM_CLASSES, rows_per_shard=math.ceil(n / shards))
    del labels
    partial.rename(uri)
    print(f"wrote dataset N={n:.0e} in {time.perf_counter() - started:.0f}s", flush=True)
    return str(uri), read_manifest(str(uri))


# --- measurement helpers ---------------------------------------------------------------


def rss() -> tuple[int, int]:
    """(VmRSS, VmHWM) of this process in bytes."""
    found = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                found[line.split(":")[0]] = int(line.split()[1]) * 1024
    return found["VmRSS"], found["VmHWM"]


def reset_peak() -> None:
    """Return freed memory to the system (Python, glibc, Arrow's pool), then VmHWM :=
    VmRSS, so the peak that follows counts what the next step allocates."""
    import ctypes
    import gc

    import pyarrow as pa

    gc.collect()
    pa.default_memory_pool().release_unused()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


STAMPS: dict[str, dict] = {}


def timed_facade():
    """``JobScorers`` recording when scoring ended and the selection was merged."""
    from dynams_service.service.scorer import JobScorers

    class TimedScorers(JobScorers):
        def score(self, *args, **kwargs):
            result = super().score(*args, **kwargs)
            STAMPS[self.job_id] = {"scored": time.perf_counter(), "score_s": result.seconds}
            return result

        def select(self, *args, **kwargs):
            result = super().select(*args, **kwargs)
            STAMPS[self.job_id].update(selected=time.perf_counter(), passes=result.passes)
            return result

    return TimedScorers


def job_spec(job_id: str, uri: str, manifest, scorers: int, per_class: bool):
    from dynams_service import JobSpec, ProxySpec, ScorerResources, SelectionPolicy

    return JobSpec(job_id=job_id, dataset_uri=uri, fingerprint=manifest.fingerprint,
                   proxy=ProxySpec(architecture=ARCHITECTURE, width=0.25),
                   policy=SelectionPolicy(ratio=RATIO, warmup_epochs=1, interval_epochs=1,
                                          seed=5, class_balance="per_class" if per_class
                                          else "global"),
                   epochs=2,
                   resources=ScorerResources(num_scorers=scorers, num_cpus=0.01,
                                             batch_size=1024))


def run_round(client, uri, manifest, scorers: int, per_class: bool, keep: bool) -> dict:
    from dynams_service import build_architecture
    from dynams_service.core.models.proxy import export_psp

    n = manifest.num_samples
    job_id = f"n{n}-k{scorers}{'-pc' if per_class else ''}"
    started = time.perf_counter()
    client.create_job(job_spec(job_id, uri, manifest, scorers, per_class), timeout=1800)
    created = time.perf_counter() - started
    records = export_psp(build_architecture(ARCHITECTURE), 0.25)
    reset_peak()
    before, _ = rss()
    client.push_weights(job_id, 1, 1, records)
    while True:  # GetJob every 10 ms: when the round is DONE (selected, saved, servable)
        state = client.get_job(job_id).rounds[0]
        if state.state == RoundState.DONE:
            done = time.perf_counter()
            break
        if state.state == RoundState.FAILED:
            raise RuntimeError(f"round failed: {state.error}")
        time.sleep(0.01)
    _, peak = rss()
    stamps = STAMPS[job_id]
    k = state.selected
    row = {"n": n, "scorers": scorers, "per_class": per_class, "selected": k,
           "create_seconds": round(created, 2), "score_seconds": round(stamps["score_s"], 2),
           "merge_seconds": round(stamps["selected"] - stamps["scored"], 3),
           "select_seconds": round(done - stamps["scored"], 3), "passes": stamps["passes"],
           "head_rss_before_bytes": before, "head_rss_peak_bytes": peak,
           "head_peak_bytes": peak - before,
           "selection_bytes": k * 12,
           "head_overhead_bytes": max(0, peak - before - k * 12)}
    print(json.dumps(row), flush=True)
    if not keep:
        client.delete_job(job_id)
    return row | {"job_id": job_id}


def _rank_client(address: str, job_id: str, ranks: list[int], world: int, go, ready, out):
    """One client process: a thread and a channel per rank; reports (rank, done, bytes)."""
    from dynams_service.client import SelectorClient

    results = []
    lock = threading.Lock()

    def one(rank: int) -> None:
        client = SelectorClient(address, retries=0)
        ready.release()
        go.wait()
        selection = client.get_selection(job_id, 1, rank, world, timeout=600)
        finished = time.monotonic()
        with lock:
            results.append((rank, finished, int(selection.indices.nbytes),
                            len(selection.indices)))

    threads = [threading.Thread(target=one, args=(r,)) for r in ranks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.put(results)


def serve(address: str, job_id: str, world: int, processes: int = 4) -> dict:
    ctx = mp.get_context("spawn")
    go, ready, out = ctx.Event(), ctx.Semaphore(0), ctx.Queue()
    procs = [ctx.Process(target=_rank_client, args=(address, job_id,
                                                    list(range(p, world, processes)), world,
                                                    go, ready, out))
             for p in range(processes)]
    for p in procs:
        p.start()
    for _ in range(world):
        ready.acquire()
    reset_peak()
    before, _ = rss()
    start = time.monotonic()
    go.set()
    results = [r for _ in procs for r in out.get()]
    for p in procs:
        p.join()
    _, peak = rss()
    waits = sorted(done - start for _, done, _, _ in results)
    total = sum(b for _, _, b, _ in results)
    median = statistics.median(waits)
    row = {"ranks": world, "indices_per_rank": results[0][3], "bytes": total,
           "seconds": round(waits[-1], 3), "throughput_MBps": round(total / waits[-1] / 1e6, 1),
           "wait_median_s": round(median, 3), "wait_max_s": round(waits[-1], 3),
           "wait_min_s": round(waits[0], 3), "max_over_median": round(waits[-1] / median, 2),
           "head_peak_bytes": peak - before}
    print(json.dumps(row), flush=True)
    return row


def fit_exponent(xs, ys) -> float | None:
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys, strict=True) if y > 0]
    if len(pts) < 2:
        return None
    return round(float(np.polyfit([p[0] for p in pts], [p[1] for p in pts], 1)[0]), 3)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (lat, mem) = plt.subplots(1, 2, figsize=(10, 4))
    rounds = [r for r in results["rounds"] if not r["per_class"]]
    for k in sorted({r["scorers"] for r in rounds}):
        rs = sorted((r for r in rounds if r["scorers"] == k), key=lambda r: r["n"])
        ns = [r["n"] for r in rs]
        lat.plot(ns, [r["select_seconds"] for r in rs], "o-", label=f"K={k}")
        mem.plot(ns, [r["head_peak_bytes"] / 2**20 for r in rs], "o-", label=f"K={k} peak")
        mem.plot(ns, [r["head_overhead_bytes"] / 2**20 for r in rs], "x--",
                 label=f"K={k} minus selection")
    lat.set(xscale="log", xlabel="N (samples)", ylabel="s, last scorer done → selection ready",
            title=f"round latency (select {RATIO:.0%})")
    mem.set(xscale="log", yscale="log", xlabel="N (samples)", ylabel="MiB",
            title="head peak RSS per round")
    for ax in (lat, mem):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True,
                        help="directory for scale_head.json/.png (benchmarks/results to "
                             "replace the committed figures)")
    parser.add_argument("--smoke", action="store_true",
                        help="N=20k, K=2, 4 and 8 ranks served from one client process")
    parser.add_argument("--sizes", type=float, nargs="+", default=[1e6, 1e7, 1e8])
    parser.add_argument("--scorers", type=int, nargs="+", default=[8, 32, 64])
    parser.add_argument("--ranks", type=int, nargs="+", default=[64, 256, 512])
    parser.add_argument("--per-class-at", type=float, default=1e7,
                        help="also run a per-class round at this N with the most scorers")
    parser.add_argument("--data-dir", type=Path,
                        default=Path(tempfile.gettempdir()) / "dynams-scale-head-data")
    parser.add_argument("--object-store-gb", type=float, default=3.0)
    parser.add_argument("--client-processes", type=int, default=4,
                        help="processes the serving ranks' threads are spread over")
    args = parser.parse_args(argv)
    if args.smoke:
        args.sizes, args.scorers, args.ranks, args.per_class_at = [2e4], [2], [4, 8], 2e4
        args.client_processes = 1

    import ray

    from benchmarks.synthetic_scorers import synthetic_factory
    from dynams_service.client import SelectorClient
    from dynams_service.service.limits import Limits
    from dynams_service.service.server import SelectorServer

    register_tiny_architecture()
    args.data_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="dynams-scale-head-"))
    os.environ.setdefault("RAY_TMPDIR", str(work / "ray"))
    os.environ.setdefault("RAY_AUTH_TOKEN_PATH", str(work / "auth_token"))
    (work / "auth_token").write_text(secrets.token_hex(32))
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False,
             object_store_memory=int(args.object_store_gb * 2**30),
             _temp_dir=str(work / "ray"), logging_level="WARNING")
    most = max(args.ranks)
    limits = Limits(max_streams=most + 16, max_streams_per_peer=most + 16, max_jobs=4,
                    max_scorers_per_job=max(args.scorers))
    server = SelectorServer("127.0.0.1:0", state_dir=work / "state", limits=limits,
                            max_workers=most + 32,
                            scorer_factory=synthetic_factory(timed_facade())).start()
    client = SelectorClient(server.address, retries=0)
    results: dict = {"ratio": RATIO, "machine": {"cpus": os.cpu_count()}, "rounds": [],
                     "serving": [], "stopped": []}
    sizes = [int(n) for n in args.sizes]
    args.out.mkdir(parents=True, exist_ok=True)
    partial = args.out / "scale_head.partial.json"  # rows so far, if the run stops early
    served_job = None
    try:
        for n in sizes:
            try:
                uri, manifest = ensure_dataset(args.data_dir, n)
            except MemoryError as exc:
                results["stopped"].append(f"N={n:.0e}: dataset not written ({exc})")
                break
            for k in args.scorers:
                last = n == sizes[-1] and k == args.scorers[-1]
                try:
                    row = run_round(client, uri, manifest, k, per_class=False, keep=last)
                except Exception as exc:  # noqa: BLE001 - recorded: where the machine stopped
                    results["stopped"].append(f"N={n:.0e} K={k}: {type(exc).__name__}: "
                                              f"{str(exc)[:300]}")
                    print(results["stopped"][-1], flush=True)
                    continue
                results["rounds"].append(row)
                partial.write_text(json.dumps(results, indent=2) + "\n")
                if last:
                    served_job = row["job_id"]
            if n == int(args.per_class_at):
                results["rounds"].append(run_round(client, uri, manifest, args.scorers[-1],
                                                   per_class=True, keep=False))
        if served_job is not None:
            started = time.perf_counter()
            client.get_selection(served_job, 1, 0, most, timeout=600)  # builds the order
            results["order_build_seconds"] = round(time.perf_counter() - started, 3)
            for world in args.ranks:
                results["serving"].append(serve(server.address, served_job, world,
                                                args.client_processes))
    finally:
        server.stop(grace=0)
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)

    rounds = [r for r in results["rounds"] if not r["per_class"]]
    for k in args.scorers:
        rs = [r for r in rounds if r["scorers"] == k]
        results.setdefault("fits", {})[f"K={k}"] = {
            "peak_exponent": fit_exponent([r["n"] for r in rs],
                                          [r["head_peak_bytes"] for r in rs]),
            "overhead_exponent": fit_exponent([r["n"] for r in rs],
                                              [r["head_overhead_bytes"] for r in rs])}
    partial.unlink(missing_ok=True)
    (args.out / "scale_head.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(results, args.out / "scale_head.png")
    print(json.dumps({"fits": results["fits"], "out": str(args.out)}), flush=True)
    return results


if __name__ == "__main__":
    main()
