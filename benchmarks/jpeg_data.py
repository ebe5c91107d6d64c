"""Encoded-image datasets generated from real Fashion-MNIST, cached for tests and benchmarks.

Each row is a Fashion-MNIST image (cycled when more rows are asked for than exist),
up-scaled to ``size``×``size``, shifted by a seeded random offset of up to 1/8 of the side,
optionally tinted to RGB, and JPEG-encoded: real decoding work at a chosen scale.
Datasets are written once into a cache directory (``$DYNAMS_DATA_CACHE``, default
``~/.cache/dynams-service``) under a name that encodes every parameter.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from dynams_service.core.data.idx import load_idx_split
from dynams_service.core.data.shards import MANIFEST_NAME, ShardError, write_encoded_shards

__all__ = ["cache_dir", "jpeg_items", "jpeg_dataset", "jpeg_folder", "FASHION_MNIST_CLASSES"]

FASHION_MNIST_CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
                         "sneaker", "bag", "ankle-boot")


def cache_dir() -> Path:
    return Path(os.environ.get("DYNAMS_DATA_CACHE",
                               Path.home() / ".cache" / "dynams-service")).expanduser()


def _idx_dir() -> str:
    return os.environ.get("DYNAMS_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist")


def jpeg_items(n: int, *, size: int = 64, channels: int = 1, seed: int = 0,
               split: str = "train", quality: int = 90) -> Iterator[tuple[bytes, int]]:
    """``n`` (JPEG bytes, label) rows made from Fashion-MNIST ``split``, deterministic."""
    from PIL import Image

    images, labels = load_idx_split(_idx_dir(), split)
    rng = np.random.default_rng(seed)
    shift = max(1, size // 8)
    for i in range(n):
        j = i % len(images)
        img = Image.fromarray(images[j]).resize((size, size), Image.BICUBIC)
        pixels = np.zeros((size, size), dtype=np.uint8)
        dy, dx = rng.integers(-shift, shift + 1, size=2)
        src = np.asarray(img)
        ys, xs = slice(max(0, dy), size + min(0, dy)), slice(max(0, dx), size + min(0, dx))
        pixels[ys, xs] = src[max(0, -dy):size - max(0, dy), max(0, -dx):size - max(0, dx)]
        if channels == 3:
            tint = rng.uniform(0.6, 1.0, size=3)
            out = Image.fromarray((pixels[..., None] * tint).astype(np.uint8), "RGB")
        else:
            out = Image.fromarray(pixels, "L")
        buf = io.BytesIO()
        out.save(buf, format="JPEG", quality=quality)
        yield buf.getvalue(), int(labels[j])


def jpeg_dataset(n: int, *, size: int = 64, channels: int = 1, seed: int = 0,
                 split: str = "train", rows_per_shard: int = 4096,
                 root: Path | None = None) -> str:
    """The URI of a cached encoded-image dataset of ``n`` rows (written on first use)."""
    root = root or cache_dir()
    uri = str(root / f"fmnist-jpeg-{split}-{n}-{channels}x{size}-r{rows_per_shard}-s{seed}")
    if not Path(uri, MANIFEST_NAME).exists():
        try:
            write_encoded_shards(uri, jpeg_items(n, size=size, channels=channels, seed=seed,
                                                 split=split),
                                 size=(channels, size, size), num_classes=10,
                                 rows_per_shard=rows_per_shard,
                                 class_names=FASHION_MNIST_CLASSES, total=n)
        except ShardError:
            if not Path(uri, MANIFEST_NAME).exists():  # not just another writer finishing first
                raise
    return uri


def jpeg_folder(n: int, *, size: int = 32, channels: int = 3, seed: int = 0,
                root: Path | None = None) -> Path:
    """A cached ``ImageFolder`` tree (one sub-folder per class) of ``n`` JPEG files."""
    root = root or cache_dir()
    folder = root / f"fmnist-folder-{n}-{channels}x{size}-s{seed}"
    done = folder / ".complete"
    if not done.exists():
        for i, (data, label) in enumerate(jpeg_items(n, size=size, channels=channels,
                                                     seed=seed)):
            path = folder / FASHION_MNIST_CLASSES[label] / f"{i:07d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        done.write_text("")
    return folder
