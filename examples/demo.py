"""`make demo`: the selector on a local Ray and a 2-rank gloo DDP job on Fashion-MNIST.

Runs ``examples/train_ddp.py --embedded`` under torchrun, streams its progress, and ends
with a short table. Flags are passed through to the trainer after ``--``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shards", default="data/fashion-mnist")
    parser.add_argument("--ratio", type=float, default=0.3)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--nproc", type=int, default=2, help="DDP ranks")
    parser.add_argument("extra", nargs="*", help="more train_ddp.py flags (after --)")
    args = parser.parse_args()
    summary_path = Path(tempfile.mkdtemp(prefix="dynams-demo-")) / "summary.json"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={args.nproc}", str(HERE / "train_ddp.py"), "--embedded",
               "--shards", args.shards, "--ratio", str(args.ratio), "--epochs",
               str(args.epochs), "--summary", str(summary_path), *args.extra]
    print("running:", " ".join(command[2:]), flush=True)
    started = time.perf_counter()
    result = subprocess.run(command)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        print(f"demo: the training job failed (exit {result.returncode})", file=sys.stderr)
        return result.returncode
    s = json.loads(summary_path.read_text())
    rows = [
        ("test accuracy", f"{s['test_accuracy']:.4f}"),
        ("fraction of data trained", f"{s['fraction_trained']:.3f} "
                                     f"(ratio {s['ratio']}, warm-up included)"),
        ("wall time", f"{wall:.1f} s (training {s['train_seconds']:.1f} s)"),
        ("time waiting for selections", f"{s['wait_seconds']:.3f} s "
                                        f"({100 * s['wait_seconds'] / s['train_seconds']:.2f} %"
                                        " of training)"),
        ("fallback epochs", str(s["fallback_epochs"] or "none")),
        ("Ray dashboard (while it ran)", f"http://{s['dashboard_url']}"
                                         if s["dashboard_url"] else "not running"),
    ]
    width = max(len(k) for k, _ in rows)
    print(f"\nDynaMS on Fashion-MNIST, {s['world_size']} DDP ranks, {s['num_samples']} samples, "
          f"{len(s['epochs'])} epochs")
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
