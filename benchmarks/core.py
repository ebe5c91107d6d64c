"""Core figures: PSP size/compute ratios and margin throughput on 60k Fashion-MNIST features.

Run: ``.venv/bin/python benchmarks/core.py [--data-dir DIR] [--repeats 7] [--json]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from dynams_service import build_architecture, margins
from dynams_service.core.data.idx import load_idx_split
from dynams_service.core.models.models import count_macs, count_parameters

INPUTS = {"fmnist-cnn": (1, 28, 28), "cifar-resnet18": (3, 32, 32)}


def psp_ratios() -> dict[str, dict[str, float]]:
    """Parameter and MAC ratio of the width-α proxy to the full model."""
    out = {}
    for name, shape in INPUTS.items():
        model = build_architecture(name)
        params, macs = count_parameters(model), count_macs(model, shape)
        for width in (0.25, 0.5):
            out[f"{name}@{width}"] = {
                "param_ratio": count_parameters(model.make_proxy(width)) / params,
                "mac_ratio": count_macs(model, shape, width) / macs,
            }
    return out


def margin_throughput(data_dir: str, repeats: int) -> dict[str, float]:
    """Samples/s of ``margins`` on the CNN's penultimate features of all 60k images."""
    images, _ = load_idx_split(data_dir, "train")
    model = build_architecture("fmnist-cnn").eval()
    x = torch.from_numpy(images[:, None]).float() / 255
    with torch.inference_mode():
        z = torch.cat([model.forward_features(x[i:i + 4096]) for i in range(0, len(x), 4096)])
        w, b = model.head.weight, model.head.bias
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            margins(z, w, b)
            times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {"samples": len(z), "median_seconds": median, "samples_per_second": len(z) / median}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = {"psp": psp_ratios(), "margins": margin_throughput(args.data_dir, args.repeats)}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    for key, r in result["psp"].items():
        print(f"{key:22s} params {r['param_ratio']:.3f}  MACs {r['mac_ratio']:.3f}")
    m = result["margins"]
    print(f"margins: {m['samples']} samples in {m['median_seconds'] * 1e3:.1f} ms "
          f"(median) = {m['samples_per_second']:,.0f} samples/s")


if __name__ == "__main__":
    main()
