"""Run DynaMS jobs on a real multi-node Ray cluster built on this machine; print JSON.

One Ray session per process, so tests run this as a script (``sys.executable``) next to
their own session. It starts a head raylet (0 CPUs, with the dashboard, so Ray's state API
answers) and ``--nodes`` worker raylets, each with its own custom resource
``dynams-node-<i>``, serves a real ``SelectorServer`` on 127.0.0.1, and for every scorer
count in ``--scorers`` creates a job (all at once), pushes the same PSP weights for
``--rounds`` rounds (alternating between the jobs, so all see the same background load)
and records where Ray put the scorers (state API), what they hold (rows, input bytes, RSS),
each round's latency and scorer CPU time, and the selected indices. ``--gpu-check`` also
asks for GPU scorers on nodes that advertise logical GPUs but have no CUDA device, and
records how that fails.

    python tests/service/multinode_check.py --dataset DIR --out OUTDIR [--rounds 5]

Writes ``OUTDIR/result.json`` (also printed), ``OUTDIR/weights.npz`` (the pushed PSP
tensors) and ``OUTDIR/indices-k<K>.npy`` (round 0's selected indices, sorted).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

NODE_RESOURCE = "dynams-node-{}"
PSP_WIDTH = 0.25
ARCHITECTURE = "fmnist-cnn"


def _free_port() -> int:
    """A TCP port free right now on 127.0.0.1 (so this cluster never collides with others)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options of the check."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, help="shard dataset directory or URI")
    parser.add_argument("--out", required=True, help="directory for result.json and arrays")
    parser.add_argument("--nodes", type=int, default=2, help="worker raylets (default 2)")
    parser.add_argument("--cpus-per-node", type=int, default=2,
                        help="logical CPUs per worker raylet (default 2: room for two "
                             "scorers, so only SPREAD keeps them apart)")
    parser.add_argument("--scorers", default="1,2",
                        help="comma-separated scorer counts, one job each (default 1,2)")
    parser.add_argument("--rounds", type=int, default=1, help="selection rounds per job")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0, help="seed of the proxy's weights")
    parser.add_argument("--gpu-check", action="store_true",
                        help="give each worker one logical GPU and check that a job asking "
                             "for GPUs gets them and fails loudly without CUDA")
    return parser.parse_args(argv)


def _rss(pid: int) -> int:
    """Resident set size of a process on this machine, bytes."""
    import psutil

    return int(psutil.Process(pid).memory_info().rss)


def _start_cluster(args: argparse.Namespace, temp: Path):
    """Head raylet (no CPUs: only the driver runs there) plus ``--nodes`` worker raylets."""
    from ray.cluster_utils import Cluster

    temp = temp / "ray"  # Ray's own temp root under RAY_TMPDIR: ray_current_cluster goes here
    temp.mkdir(exist_ok=True)
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": True, "dashboard_host": "127.0.0.1",
        "dashboard_port": _free_port(), "dashboard_agent_listen_port": _free_port(),
        "gcs_server_port": _free_port(), "temp_dir": str(temp)})
    for i in range(args.nodes):
        cluster.add_node(num_cpus=args.cpus_per_node, num_gpus=1 if args.gpu_check else 0,
                         resources={NODE_RESOURCE.format(i): 1.0}, temp_dir=str(temp))
    cluster.wait_for_nodes()
    return cluster


def _nodes(address: str) -> dict[str, dict[str, Any]]:
    """Every alive node from Ray's state API: its custom node resource and whether it is head."""
    from ray.util.state import list_nodes

    nodes = {}
    for node in list_nodes(address=address, filters=[("state", "=", "ALIVE")],
                           detail=True):
        custom = sorted(k for k in node.resources_total if k.startswith("dynams-node-"))
        nodes[node.node_id] = {"is_head": bool(node.is_head_node),
                               "resource": custom[0] if custom else "",
                               "gpus": float(node.resources_total.get("GPU", 0))}
    return nodes


def _actors(address: str, names: Sequence[str]) -> list[dict[str, Any]]:
    """The named actors as Ray's state API sees them (node, pid, state, death cause)."""
    from ray.util.state import list_actors

    found = []
    for name in names:
        rows = list_actors(address=address, filters=[("name", "=", name)], detail=True)
        for row in rows:
            cause = {kind: {k: v for k, v in ctx.items() if k != "serialized_exception"}
                     for kind, ctx in (row.death_cause or {}).items()}
            found.append({"name": name, "node_id": row.node_id, "pid": row.pid,
                          "state": row.state, "death_cause": json.dumps(cause)[:2000]})
    return found


def _spec(manifest, uri: str, job_id: str, scorers: int, rounds: int, batch_size: int,
          gpus: float = 0.0):
    """A job whose epochs 1..rounds+1 each start a round (r = 0.3, per class); one is spare."""
    from dynams_service import JobSpec, ProxySpec, ScorerResources, SelectionPolicy

    return JobSpec(job_id=job_id, dataset_uri=uri, fingerprint=manifest.fingerprint,
                   proxy=ProxySpec(architecture=ARCHITECTURE, width=PSP_WIDTH),
                   policy=SelectionPolicy(ratio=0.3, warmup_epochs=1, interval_epochs=1,
                                          seed=7, class_balance="per_class"),
                   epochs=rounds + 2,  # a spare round keeps scorers up for the readings
                   resources=ScorerResources(num_scorers=scorers, num_cpus=1, num_gpus=gpus,
                                             batch_size=batch_size))


def _start_job(address: str, client, spec) -> dict[str, Any]:
    """Create the job; record where Ray put its scorers and what each one holds."""
    job = client.create_job(spec, timeout=600)
    scorers = [{"name": s.name, "node_id": s.node_id, "device": s.device, "rows": s.rows,
                "input_bytes": s.input_bytes} for s in job.scorer_status]
    state = {a["name"]: a for a in _actors(address, list(job.scorers))}
    for scorer in scorers:
        seen = state.get(scorer["name"], {})
        scorer["state_api_node_id"] = seen.get("node_id", "")
        scorer["pid"] = seen.get("pid")
        scorer["rss_bytes"] = _rss(seen["pid"]) if seen.get("pid") else None
    return {"job_id": spec.job_id, "num_scorers": spec.resources.num_scorers,
            "scorers": scorers, "push_to_answer_seconds": [], "scorer_cpu_seconds": []}


def _cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU time of the scorer processes so far (load-independent cost)."""
    import psutil

    return sum(sum(psutil.Process(pid).cpu_times()[:2]) for pid in pids)


def _run_round(client, job: dict[str, Any], epoch: int, records, out: Path) -> None:
    """Push the weights for ``epoch``, wait for the selection, record time and CPU used."""
    import numpy as np

    pids = [s["pid"] for s in job["scorers"] if s["pid"]]
    cpu = _cpu_seconds(pids)
    started = time.perf_counter()
    client.push_weights(job["job_id"], epoch=epoch, version=epoch, records=records)
    header = client.get_selection(job["job_id"], epoch, 0, 1, timeout=600)
    part = header.indices
    job["push_to_answer_seconds"].append(time.perf_counter() - started)
    job["scorer_cpu_seconds"].append(_cpu_seconds(pids) - cpu)
    if epoch == 1:
        np.save(out / f"indices-k{job['num_scorers']}.npy", np.sort(part))
        job["selected"] = int(header.global_count)


def _finish_job(client, job: dict[str, Any]) -> None:
    """Record the rounds' latencies (the selector's own) and memory after scoring; delete."""
    for scorer in job["scorers"]:
        scorer["rss_after_bytes"] = _rss(scorer["pid"]) if scorer["pid"] else None
    status = client.get_job(job["job_id"])
    job["round_seconds"] = [r.seconds for r in status.rounds]
    job["round_seconds_median"] = statistics.median(job["round_seconds"])
    job["dashboard_url"] = status.dashboard_url
    client.delete_job(job["job_id"])


def _summary(jobs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Latency of each scorer count against the first one, and scorer memory per 10k rows."""
    import numpy as np

    first = next(iter(jobs.values()))
    summary: dict[str, Any] = {"latency_ratio_vs_first": {
        k: first["round_seconds_median"] / job["round_seconds_median"]
        for k, job in jobs.items()}}
    summary["scorer_cpu_seconds_median"] = {
        k: statistics.median(job["scorer_cpu_seconds"]) for k, job in jobs.items()}
    scorers = [s for job in jobs.values() for s in job["scorers"] if s["rss_bytes"]]
    rows = np.array([s["rows"] for s in scorers], dtype=float)
    summary["input_bytes_per_10k"] = float(
        sum(s["input_bytes"] for s in scorers) / rows.sum() * 10_000)
    if len(set(rows)) > 1:  # RSS = fixed + per-row * rows, fitted over every scorer
        for key in ("rss_bytes", "rss_after_bytes"):
            slope, fixed = np.polyfit(rows, [s[key] for s in scorers], 1)
            summary[f"{key}_per_10k"] = float(slope * 10_000)
            summary[f"{key}_fixed"] = float(fixed)
    return summary


def _gpu_check(address: str, client, manifest, uri: str, records,
               batch_size: int) -> dict[str, Any]:
    """Ask for GPU scorers on logical-GPU nodes without CUDA: they must not fall back to CPU."""
    from dynams_service.client import SelectorError

    spec = _spec(manifest, uri, "mn-gpu", scorers=2, rounds=1, batch_size=batch_size,
                 gpus=1.0)
    result: dict[str, Any] = {"created": False, "code": "", "details": ""}
    try:
        job = client.create_job(spec, timeout=600)
        result.update(created=True, devices=[s.device for s in job.scorer_status])
        client.delete_job(spec.job_id)
    except SelectorError as exc:
        result.update(code=exc.status.value, details=exc.details[:2000])
    result["actors"] = _actors(address, [f"dynams:{spec.job_id}:scorer:{i}" for i in range(2)])
    return result


def run(args: argparse.Namespace, temp: Path, out: Path) -> dict[str, Any]:
    """Start the cluster and the selector, run every job, stop everything."""
    import numpy as np
    import ray
    import torch

    from dynams_service import build_architecture, read_manifest
    from dynams_service.client import SelectorClient
    from dynams_service.core.models.proxy import export_psp
    from dynams_service.service.server import SelectorServer

    manifest = read_manifest(args.dataset)
    torch.manual_seed(args.seed)
    records = export_psp(build_architecture(ARCHITECTURE).eval(), PSP_WIDTH)
    np.savez(out / "weights.npz", **{r.name: r.to_tensor().numpy() for r in records})
    started = time.perf_counter()
    cluster = _start_cluster(args, temp)
    server = None
    try:
        context = ray.init(address=cluster.address, logging_level="WARNING")
        result: dict[str, Any] = {"cluster_start_seconds": time.perf_counter() - started,
                                  "nodes": _nodes(cluster.address), "jobs": {}}
        dashboard = context.dashboard_url
        server = SelectorServer("127.0.0.1:0", state_dir=temp / "state",
                                dashboard_url=f"http://{dashboard}" if dashboard else "")
        server.start()
        with SelectorClient(server.address, timeout=600) as client:
            jobs = result["jobs"]
            for k in (int(x) for x in args.scorers.split(",")):
                spec = _spec(manifest, args.dataset, f"mn-k{k}", k, args.rounds,
                             args.batch_size)
                jobs[str(k)] = _start_job(cluster.address, client, spec)
            # Rounds alternate between the jobs, so both see the same background load.
            for epoch in range(1, args.rounds + 1):
                for job in jobs.values():
                    _run_round(client, job, epoch, records, out)
            for job in jobs.values():
                _finish_job(client, job)
            result["summary"] = _summary(jobs)
            if args.gpu_check:
                result["gpu_check"] = _gpu_check(cluster.address, client, manifest,
                                                 args.dataset, records, args.batch_size)
        return result
    finally:
        if server is not None:
            server.stop(grace=0)
        ray.shutdown()
        cluster.shutdown()


def main(argv: Sequence[str] | None = None) -> int:
    """Set up a private temp dir and Ray auth token, run the check, print the JSON result."""
    args = _parse(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(prefix="dynmn-", dir="/tmp"))
    (temp / "auth_token").write_text(secrets.token_hex(32))
    # Before Ray is imported: its temp files, cluster address and token stay in here.
    os.environ["RAY_TMPDIR"] = str(temp)
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(temp / "auth_token")
    try:
        result = run(args, temp, out)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    text = json.dumps(result, indent=1, sort_keys=True)
    (out / "result.json").write_text(text)
    print(text, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
