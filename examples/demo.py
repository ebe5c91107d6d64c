"""`make demo`: the selector on a local Ray and a 2-rank gloo DDP job on Fashion-MNIST.

Starts ``dynams serve`` (an embedded local Ray), runs ``examples/train_ddp.py`` against it
under torchrun, streams its progress (a JSON line per epoch), and ends with a short table
built from those lines. Flags are passed through to the trainer after ``--``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def start_selector(state_dir: Path) -> tuple[subprocess.Popen, str, str]:
    """``dynams serve`` on a free loopback port; returns it, its address and dashboard."""
    proc = subprocess.Popen([sys.executable, "-m", "dynams_service.cli", "serve", "--address",
                             "127.0.0.1:0", "--ray-address", "local", "--state-dir",
                             str(state_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    address = ""
    for line in proc.stdout:
        if line.startswith("dynams selector listening on "):
            address = line.split()[-1]
        elif line.startswith("Ray dashboard: "):  # its later output is drained, not shown
            threading.Thread(target=proc.stdout.read, daemon=True).start()
            return proc, address, line.split(": ", 1)[1].strip()
    raise RuntimeError("dynams serve exited before listening")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shards", default="data/fashion-mnist")
    parser.add_argument("--ratio", type=float, default=0.3)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--nproc", type=int, default=2, help="DDP ranks")
    parser.add_argument("extra", nargs="*", help="more train_ddp.py flags (after --)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="dynams-demo-"))
    selector, address, dashboard = start_selector(work / "state")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={args.nproc}", str(HERE / "train_ddp.py"), "--selector",
               address, "--shards", args.shards, "--ratio", str(args.ratio), "--epochs",
               str(args.epochs), *args.extra]
    print("running:", " ".join(command[2:]), flush=True)
    started, lines = time.perf_counter(), []
    try:
        with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as trainer:
            for line in trainer.stdout:  # shown as it comes; rank 0's JSON lines kept
                print(line, end="", flush=True)
                if line.startswith("{"):
                    lines.append(json.loads(line))
    finally:
        selector.terminate()
        selector.wait(timeout=120)
    wall = time.perf_counter() - started
    if trainer.returncode != 0 or not lines or "epoch" in lines[-1]:
        print(f"demo: the training job failed (exit {trainer.returncode})", file=sys.stderr)
        return trainer.returncode or 1
    epochs, s = lines[:-1], lines[-1]  # every epoch, then the run's outcome
    s["train_seconds"] = sum(e["train_seconds"] for e in epochs)
    s["blocked_seconds"] = sum(e["blocked_seconds"] for e in epochs)
    rows = [
        ("test accuracy", f"{s['test_accuracy']:.4f}"),
        ("fraction of data trained", f"{s['fraction_trained']:.3f} "
                                     f"(ratio {args.ratio}, warm-up included)"),
        ("wall time", f"{wall:.1f} s (training {s['train_seconds']:.1f} s)"),
        ("time blocked on selections", f"{s['blocked_seconds']:.3f} s "
                                       f"({100 * s['blocked_seconds'] / s['train_seconds']:.2f} %"
                                       " of training)"),
        ("fallback epochs", str(s["fallback_epochs"] or "none")),
        ("Ray dashboard (while it ran)", dashboard),
    ]
    width = max(len(k) for k, _ in rows)
    print(f"\nDynaMS on Fashion-MNIST, {args.nproc} DDP ranks, {epochs[0]['samples']} samples "
          f"in epoch 0, {len(epochs)} epochs")
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
