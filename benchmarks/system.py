"""System benchmark: what the distributed selector adds or saves, end to end.

- End to end: the torchrun DDP example (2 ranks) with the selector (``dynams serve``) at
  r = 0.3, ``sync`` and ``pipelined``, against the full-data run on the same machine:
  ``wall_ratio_pipelined`` (training-loop time, DynaMS / full; target ≤ 0.45) and
  ``wait_share_pipelined`` (time waiting for selections / training time; target ≤ 2 %).
- Scoring: a scorer actor against the same proxy forward in a plain loop
  (``scorer_vs_loop_ratio``, target ≥ 0.9) and 1 vs 2 scorers of one CPU each
  (``two_scorer_speedup``, target ≥ 1.6 on 2 cores).
- Agreement (``--agreement``): the quality benchmark's default DynaMS configuration through
  the service (torchrun, 2 ranks) against in-process ``benchmarks/quality.py``, 3 seeds each.
- A scaling model for 1.28 M ImageNet samples on 8 GPU scorers from the measured costs.

Run: ``.venv/bin/python benchmarks/system.py [--quick] [--agreement] [--json] [--out DIR]``;
results go to ``DIR/system.json`` and ``system.md`` (default: a new ``runs/system-*``
directory, so a run never overwrites the committed ``benchmarks/results/``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from ddp_example import first_n_shards, read_output  # noqa: E402 - after the path insert


def _ray_env(work: Path) -> dict[str, str]:
    token = work / "ray-token"
    if not token.exists():
        token.write_text(secrets.token_hex(32))
    return dict(os.environ, RAY_TMPDIR=str(work), RAY_AUTH_TOKEN_PATH=str(token))


class Selector:
    """A `dynams serve` process with an embedded Ray, for the end-to-end runs."""

    def __init__(self, work: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dynams_service.cli", "serve", "--address", "127.0.0.1:0",
             "--ray-address", "local", "--state-dir", str(work / "state")],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_ray_env(work))
        for line in self.proc.stdout:
            match = re.search(r"dynams selector listening on (\S+)", line)
            if match:
                self.address = match.group(1)
                return
        raise RuntimeError("dynams serve exited before listening")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=120)


def run_training(work: Path, name: str, shards: str, args: list[str]) -> dict:
    """One torchrun job of examples/train_ddp.py; returns its summary plus process wall."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node=2", str(ROOT / "examples" / "train_ddp.py"),
               "--shards", shards, *args]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=_ray_env(work))
    if result.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    out = read_output(result.stdout)
    out["process_wall_seconds"] = time.perf_counter() - started
    print(f"  {name}: accuracy {out['test_accuracy']:.4f}, train {out['train_seconds']:.1f}s, "
          f"blocked {out['blocked_seconds']:.2f}s, process {out['process_wall_seconds']:.1f}s",
          flush=True)
    return out


def end_to_end(work: Path, shards: str, epochs: int, max_samples: int | None,
               seed: int = 0) -> dict:
    common = ["--epochs", str(epochs), "--seed", str(seed)]
    if max_samples:
        shards = str(first_n_shards(shards, max_samples, work / f"first-{max_samples}"))
    runs = {"full": run_training(work, "full", shards, [*common, "--full"])}
    selector = Selector(work)
    try:
        for staleness in ("sync", "pipelined"):
            runs[staleness] = run_training(
                work, staleness, shards,
                [*common, "--selector", selector.address, "--ratio", "0.3", "--staleness",
                 staleness, "--job-id", f"system-{staleness}-{seed}-{int(time.time())}"])
    finally:
        selector.stop()

    def loop(r: dict) -> float:
        return r["train_seconds"] + r["blocked_seconds"]

    return {
        "runs": runs,
        "wall_ratio_pipelined": loop(runs["pipelined"]) / loop(runs["full"]),
        "wall_ratio_sync": loop(runs["sync"]) / loop(runs["full"]),
        "process_wall_ratio_pipelined": (runs["pipelined"]["process_wall_seconds"]
                                         / runs["full"]["process_wall_seconds"]),
        "wait_share_pipelined": runs["pipelined"]["blocked_seconds"]
        / runs["pipelined"]["train_seconds"],
        "wait_share_sync": runs["sync"]["blocked_seconds"] / runs["sync"]["train_seconds"],
    }


def scoring(work: Path, data_dir: str, samples: int, repeats: int) -> dict:
    """Scorer vs plain loop, and 1 vs 2 scorers of one CPU each, on real Fashion-MNIST."""
    import ray
    import transport

    from dynams_service import (
        JobSpec,
        ProxySpec,
        ScorerResources,
        SelectionPolicy,
        build_architecture,
        write_shards,
    )
    from dynams_service.core.data.idx import load_idx_split
    from dynams_service.core.models.proxy import export_psp
    from dynams_service.service.scorer import JobScorers

    env = _ray_env(work)
    os.environ["RAY_AUTH_TOKEN_PATH"] = env["RAY_AUTH_TOKEN_PATH"]
    ray.init(address="local", num_cpus=4, include_dashboard=False,
             _temp_dir=str(work / "ray"), logging_level="ERROR")
    try:
        result = transport.scorer_vs_loop(work, data_dir, samples, repeats, threads=1)
        images, labels = load_idx_split(data_dir, "train")
        uri = str(work / "scaling")
        manifest = write_shards(uri, images[:samples, None], labels[:samples],
                                num_classes=10, rows_per_shard=-(-samples // 2))
        snapshot = {r.name: r.to_tensor().numpy()
                    for r in export_psp(build_architecture("fmnist-cnn").eval(), 0.25)}
        times = {}
        for k in (1, 2):
            spec = JobSpec(job_id=f"scale-{k}", dataset_uri=uri,
                           fingerprint=manifest.fingerprint,
                           proxy=ProxySpec(architecture="fmnist-cnn", width=0.25),
                           policy=SelectionPolicy(), epochs=2,
                           resources=ScorerResources(num_scorers=k, num_cpus=1,
                                                     batch_size=1024))
            scorers = JobScorers(spec, manifest)
            try:
                scorers.score(snapshot, "distance")
                samples_s = []
                for _ in range(repeats):
                    samples_s.append(scorers.score(snapshot, "distance").seconds)
                times[k] = statistics.median(samples_s)
            finally:
                scorers.shutdown()
    finally:
        ray.shutdown()
    per_sample = times[1] / samples
    return {**result, "one_scorer_seconds": times[1], "two_scorer_seconds": times[2],
            "two_scorer_speedup": times[1] / times[2],
            "scoring_seconds_per_sample_one_cpu": per_sample}


def agreement(work: Path, shards: str, data_dir: str, epochs: int, max_samples: int,
              seeds: list[int]) -> dict:
    """The default DynaMS config via the service (2 ranks) vs in-process quality.py."""
    service, shards = [], str(first_n_shards(shards, max_samples, work / f"first-{max_samples}"))
    selector = Selector(work)
    try:
        for seed in seeds:
            r = run_training(work, f"agree-service-{seed}", shards,
                             ["--selector", selector.address, "--ratio", "0.3", "--epochs",
                              str(epochs), "--seed", str(seed), "--staleness", "sync",
                              "--job-id", f"agree-{seed}-{int(time.time())}"])
            service.append(r["test_accuracy"])
    finally:
        selector.stop()
    out = work / "quality"
    subprocess.run([sys.executable, str(HERE / "quality.py"), "--methods", "dynams-psp-0.25",
                    "--ratios", "0.3", "--epochs", str(epochs), "--seeds",
                    ",".join(map(str, seeds)), "--max-samples", str(max_samples),
                    "--batch-size", "256", "--data-dir", data_dir, "--out", str(out)],
                   check=True, capture_output=True)
    records = json.loads((out / "quality.json").read_text())
    in_process = [r["final_accuracy"] for r in records if r["method"] == "dynams-psp-0.25"]

    def ms(v: list[float]) -> tuple[float, float]:
        return statistics.mean(v), statistics.stdev(v) if len(v) > 1 else 0.0

    return {"service_accuracy": ms(service), "in_process_accuracy": ms(in_process),
            "service_runs": service, "in_process_runs": in_process}


def scaling_model(per_sample_cpu: float, push_bytes: int, index_ms_per_million: float,
                  gpu_speedup: float = 50.0, samples: int = 1_281_167, scorers: int = 8,
                  world: int = 64) -> dict:
    """Round latency for ImageNet-1k on 8 GPU scorers, from the measured CPU costs.

    Assumes a GPU scores ``gpu_speedup``× faster than one CPU core on the same proxy
    (a stated assumption, not a measurement here) and that transport scales linearly.
    """
    scoring_s = samples * per_sample_cpu / gpu_speedup / scorers
    push_s = push_bytes / (1e9 / 8)  # 1 Gbit/s link, worst case
    merge_s = samples * 2e-8 * 10  # argsort-based selection, ~0.2 µs per sample
    indices_s = index_ms_per_million / 1e3 * samples * 0.3 / 1e6 * world / 8  # 8 streams
    return {"scoring_s": scoring_s, "push_s": push_s, "merge_select_s": merge_s,
            "serve_indices_s": indices_s,
            "round_latency_s": scoring_s + push_s + merge_s + indices_s}


def write_results(result: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "system.json").write_text(json.dumps(result, indent=2))
    e2e, sc = result["end_to_end"], result["scoring"]
    lines = ["# System benchmark", "", f"Command: `{result['command']}`", "",
             "| figure | measured | target |", "|---|---|---|",
             f"| training-loop time, DynaMS pipelined / full | {e2e['wall_ratio_pipelined']:.3f}"
             " | ≤ 0.45 |",
             f"| training-loop time, DynaMS sync / full | {e2e['wall_ratio_sync']:.3f} | — |",
             f"| process wall time, pipelined / full | {e2e['process_wall_ratio_pipelined']:.3f}"
             " | — |",
             f"| waiting for selections, pipelined | {100 * e2e['wait_share_pipelined']:.2f} % |"
             " ≤ 2 % |",
             f"| waiting for selections, sync | {100 * e2e['wait_share_sync']:.2f} % | — |",
             f"| scorer actor / plain loop | {sc['scorer_vs_loop_ratio']:.2f}× | ≥ 0.9× |",
             f"| 2 scorers / 1 scorer | {sc['two_scorer_speedup']:.2f}× | ≥ 1.6× |"]
    if "agreement" in result:
        a = result["agreement"]
        lines.append(f"| accuracy via the service / in-process | "
                     f"{a['service_accuracy'][0]:.4f} ± {a['service_accuracy'][1]:.4f} / "
                     f"{a['in_process_accuracy'][0]:.4f} ± {a['in_process_accuracy'][1]:.4f}"
                     " | within seed noise |")
    m = result["scaling_model"]
    lines += ["", "Runs:", ""]
    for name, r in e2e["runs"].items():
        lines.append(f"- {name}: accuracy {r['test_accuracy']:.4f}, fraction "
                     f"{r['fraction_trained']:.3f}, train {r['train_seconds']:.1f} s, blocked "
                     f"{r['blocked_seconds']:.2f} s, process {r['process_wall_seconds']:.1f} s")
    lines += ["", "Scaling model, ImageNet-1k (1.28 M samples), 8 GPU scorers, 64 ranks:",
              f"scoring {m['scoring_s']:.1f} s + push {m['push_s']:.2f} s + merge/select "
              f"{m['merge_select_s']:.2f} s + serving indices {m['serve_indices_s']:.2f} s = "
              f"{m['round_latency_s']:.1f} s per round", ""]
    (out / "system.md").write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", default=str(ROOT / "data" / "fashion-mnist"),
                        help="output of `dynams dataset convert`")
    parser.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--max-samples", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true",
                        help="reduced: 10k samples, 4 epochs, 3 repeats (a few minutes)")
    parser.add_argument("--agreement", action="store_true",
                        help="also run the service vs in-process agreement (3 seeds each)")
    parser.add_argument("--agreement-samples", type=int, default=20000)
    parser.add_argument("--out", type=Path, default=None,
                        help="results directory (default: a new runs/system-* directory; "
                             "the committed results are only written when named here)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    if args.quick:
        args.epochs, args.max_samples, args.repeats = 4, args.max_samples or 10000, 3
    if not Path(args.shards, "train", "dynams-dataset.json").exists():
        subprocess.run([sys.executable, "-m", "dynams_service.cli", "dataset", "convert",
                        "--data-dir", args.data_dir, "--out", args.shards], check=True)
    work = Path(tempfile.mkdtemp(prefix="dynsys-", dir="/tmp"))
    try:
        print("end to end (full, sync, pipelined):", flush=True)
        e2e = end_to_end(work, args.shards, args.epochs, args.max_samples)
        print("scoring throughput:", flush=True)
        sc = scoring(work, args.data_dir, args.max_samples or 60000, args.repeats)
        import ray
        from transport import indices_and_push
        os.environ["RAY_AUTH_TOKEN_PATH"] = _ray_env(work)["RAY_AUTH_TOKEN_PATH"]
        ray.init(address="local", num_cpus=4, include_dashboard=False,
                 _temp_dir=str(work / "ray2"), logging_level="ERROR")
        try:
            tr = indices_and_push(work / "transport", args.repeats)
        finally:
            ray.shutdown()
        result = {"command": " ".join(["benchmarks/system.py", *sys.argv[1:]]),
                  "end_to_end": e2e, "scoring": sc, "transport": tr,
                  "scaling_model": scaling_model(sc["scoring_seconds_per_sample_one_cpu"],
                                                 tr["push_resnet18_w025_bytes"],
                                                 tr["indices_1m_ms"])}
        if args.agreement:
            print("agreement (service vs in-process, 3 seeds):", flush=True)
            result["agreement"] = agreement(work, args.shards, args.data_dir,
                                            args.epochs, args.agreement_samples, [0, 1, 2])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result.update({"wall_ratio_pipelined": e2e["wall_ratio_pipelined"],
                   "wait_share_pipelined": e2e["wait_share_pipelined"],
                   "scorer_vs_loop_ratio": sc["scorer_vs_loop_ratio"],
                   "two_scorer_speedup": sc["two_scorer_speedup"]})
    out = args.out or ROOT / "runs" / f"system-{time.strftime('%Y%m%d-%H%M%S')}"
    out = out / "quick" if args.quick else out
    out.mkdir(parents=True, exist_ok=True)
    write_results(result, out)
    if args.json:
        print(json.dumps({k: result[k] for k in ("wall_ratio_pipelined", "wait_share_pipelined",
                                                 "scorer_vs_loop_ratio", "two_scorer_speedup")}))
    else:
        print((out / "system.md").read_text())


if __name__ == "__main__":
    main()
