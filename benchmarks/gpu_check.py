"""One-shot GPU check (≤ 5 min on one GPU): prints one JSON line of ratios.

- ``cuda_scorer_vs_cpu_scorer``: the streaming scorer path (``ShardStream`` + proxy) on
  CUDA against the same on the CPU, samples/s, on generated 3x64x64 JPEGs;
- ``cuda_scorer_vs_cuda_loop``: the same against a plain CUDA loop (decode on CPU, copy,
  forward) — the scorer should be at least as fast;
- ``gpu_decode_vs_cpu``: batched ``torchvision.io.decode_jpeg(device="cuda")`` against the
  CPU image decoder, images/s (absent when torchvision is not installed);
- ``joint_step_vs_plain``: a 1-rank NCCL DDP training step with ``JointPSP`` (α = 0.25)
  against a plain step of the same model (cifar-resnet18, batch 256), forward, backward
  and optimizer step.
- ``tv_resnet50``: torchvision's ResNet-50 made slimmable (``make_slimmable``, α = 0.25,
  3x224x224): the PSP's scoring rate on CUDA against the CPU, and a joint step (PSP on
  half the batch) against a plain step on CUDA.

Needs Fashion-MNIST IDX files (``DYNAMS_FASHION_MNIST_DIR``) to generate its images.
Run: ``python benchmarks/gpu_check.py [--rows 20000] [--device cuda]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.jpeg_data import jpeg_dataset  # noqa: E402
from dynams_service.client import JointPSP, psp_loss  # noqa: E402
from dynams_service.core.data.decoders import ImageDecoder, Normalizer  # noqa: E402
from dynams_service.core.data.shards import read_manifest  # noqa: E402
from dynams_service.core.data.stream import ShardStream  # noqa: E402
from dynams_service.core.models.models import build_architecture  # noqa: E402
from dynams_service.core.selection.scoring import score_batches  # noqa: E402

ARCH, WIDTH, BATCH = "cifar-resnet18", 0.25, 512


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeats: int = 3) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        sync(device)
        started = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def scorer_rate(uri: str, device: torch.device, proxy) -> float:
    manifest = read_manifest(uri)
    stream = ShardStream(uri, manifest, batch_size=BATCH, cache_bytes=0, decode_threads=4,
                         device=device)
    normalize = Normalizer(manifest.mean, manifest.std)
    model = proxy.to(device)
    seconds = timed(lambda: score_batches(model, ((normalize(b.samples), None)
                                                  for b in stream), stream.num_rows), device)
    return manifest.num_samples / seconds


def loop_rate(uri: str, device: torch.device, proxy) -> float:
    manifest = read_manifest(uri)
    decoder, normalize = ImageDecoder(manifest.sample_shape), Normalizer(manifest.mean,
                                                                          manifest.std)
    model = proxy.to(device)

    def run() -> None:
        with torch.inference_mode():
            for shard in manifest.shards:
                for batch in pq.ParquetFile(str(Path(uri, shard.path))).iter_batches(
                        batch_size=BATCH, columns=["sample"]):
                    model(normalize(decoder.decode(batch.column(0)).to(device)))

    return manifest.num_samples / timed(run, device)


def decode_rates(uri: str, device: torch.device) -> dict:
    manifest = read_manifest(uri)
    column = pq.read_table(str(Path(uri, manifest.shards[0].path)),
                           columns=["sample"]).column(0).combine_chunks()
    decoder = ImageDecoder(manifest.sample_shape)
    cpu = len(column) / timed(lambda: decoder.decode(column), torch.device("cpu"))
    out = {"cpu_decode_images_per_s": cpu}
    try:
        import torchvision  # noqa: F401
    except (ImportError, RuntimeError, OSError) as exc:
        out["gpu_decode"] = f"torchvision unavailable: {type(exc).__name__}"
        return out
    gpu = len(column) / timed(lambda: decoder.decode_on(column, device), device)
    out.update(gpu_decode_images_per_s=gpu, gpu_decode_vs_cpu=gpu / cpu)
    return out


def joint_step(device: torch.device, batch: int) -> dict:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29533")
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=0, world_size=1)
    try:
        base = build_architecture(ARCH)
        model = type(base)(**base.config, widths=(1.0, WIDTH)).to(device)
        x = torch.randn(batch, 3, 32, 32, device=device)
        y = torch.randint(0, 10, (batch,), device=device)
        plain = DistributedDataParallel(model, find_unused_parameters=True)
        joint = DistributedDataParallel(JointPSP(model, WIDTH))
        opt = torch.optim.SGD(model.parameters(), lr=0.01)

        def plain_step() -> None:
            loss = torch.nn.functional.cross_entropy(plain(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()

        def joint_step_() -> None:
            logits, psp_logits = joint(x)
            loss = psp_loss(logits, psp_logits, y)
            opt.zero_grad()
            loss.backward()
            opt.step()

        p = timed(plain_step, device, repeats=20)
        j = timed(joint_step_, device, repeats=20)
        return {"plain_step_ms": p * 1e3, "joint_step_ms": j * 1e3, "joint_step_vs_plain": j / p}
    finally:
        dist.destroy_process_group()


def tv_resnet50(device: torch.device, batch: int) -> dict:
    """torchvision's ResNet-50 through ``make_slimmable``: PSP scoring rate on ``device``
    against the CPU, and the joint step's overhead on ``device``."""
    from torchvision.models import resnet50

    from dynams_service.core.models.slimming import make_slimmable

    torch.manual_seed(0)
    net = make_slimmable(resnet50(), (1.0, WIDTH))
    proxy = net.make_proxy(WIDTH)
    x = torch.randn(batch, 3, 224, 224)
    rates = {}
    for where in (torch.device("cpu"), device):
        model, xs = proxy.to(where), x.to(where)
        rows = batch if where.type == "cuda" else min(batch, 64)
        seconds = timed(lambda m=model, v=xs[:rows], n=rows: score_batches(
            m, [(v, None)], n), where, repeats=3)
        rates[where.type] = rows / seconds
    net = net.to(device).train()
    joint = JointPSP(net, WIDTH)
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    step = min(64, batch)
    xd, yd = x[:step].to(device), torch.randint(0, 1000, (step,), device=device)

    def plain() -> None:
        loss = torch.nn.functional.cross_entropy(net(xd), yd)
        opt.zero_grad()
        loss.backward()
        opt.step()

    def joint_step_() -> None:
        logits, psp_logits = joint(xd)
        loss = psp_loss(logits, psp_logits, yd)
        opt.zero_grad()
        loss.backward()
        opt.step()

    p, j = timed(plain, device, repeats=10), timed(joint_step_, device, repeats=10)
    return {"tv_resnet50_psp_cpu_samples_per_s": rates["cpu"],
            "tv_resnet50_psp_cuda_samples_per_s": rates.get(device.type, rates["cpu"]),
            "tv_resnet50_psp_cuda_vs_cpu": rates.get(device.type, rates["cpu"]) / rates["cpu"],
            "tv_resnet50_plain_step_ms": p * 1e3, "tv_resnet50_joint_step_ms": j * 1e3,
            "tv_resnet50_joint_step_vs_plain": j / p}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--step-batch", type=int, default=256, help="training-step batch")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device; pass --device cpu for a dry run")
    started = time.perf_counter()
    uri = jpeg_dataset(args.rows, size=64, channels=3, rows_per_shard=4096)
    torch.manual_seed(0)
    proxy = build_architecture(ARCH).make_proxy(WIDTH).eval()
    result = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "rows": args.rows, "torch": torch.__version__}
    result["cpu_scorer_samples_per_s"] = scorer_rate(uri, torch.device("cpu"), proxy)
    result["cuda_scorer_samples_per_s"] = scorer_rate(uri, device, proxy)
    result["cuda_loop_samples_per_s"] = loop_rate(uri, device, proxy)
    result["cuda_scorer_vs_cpu_scorer"] = (result["cuda_scorer_samples_per_s"]
                                           / result["cpu_scorer_samples_per_s"])
    result["cuda_scorer_vs_cuda_loop"] = (result["cuda_scorer_samples_per_s"]
                                          / result["cuda_loop_samples_per_s"])
    result.update(decode_rates(uri, device))
    result.update(joint_step(device, args.step_batch))
    result.update(tv_resnet50(device, args.step_batch))
    result["seconds"] = time.perf_counter() - started
    print(json.dumps(result))


if __name__ == "__main__":
    main()
