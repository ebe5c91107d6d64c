"""Writing shard datasets: fixed-size arrays, encoded images, image folders, Datasets.

Encoded conversions stream: ``rows_per_shard`` items at a time are read, decoded once
(to check them and to accumulate the normalisation) in a thread pool, and written, so
memory does not grow with the number of items. They write into a temporary directory
beside the target and move it into place only when everything succeeded.
"""

from __future__ import annotations

import io
import os
import posixpath
import secrets
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import torch

from .decoders import DecodeError, ImageDecoder
from .manifest import (
    MANIFEST_NAME,
    DatasetManifest,
    ShardError,
    ShardInfo,
    dataset_filesystem,
    fingerprint,
)

__all__ = [
    "write_shards",
    "write_encoded_shards",
    "write_image_folder",
    "write_shards_from_dataset",
    "image_folder_files",
    "IMAGE_EXTENSIONS",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


class _ChannelStats:
    """Running per-channel mean and std of samples scaled to [0, 1] (channel = dim 1)."""

    def __init__(self) -> None:
        self.sum: torch.Tensor | None = None
        self.sumsq: torch.Tensor | None = None
        self.count = 0

    def add(self, batch: torch.Tensor) -> None:
        x = batch.to(torch.float64)
        if batch.dtype == torch.uint8:
            x = x / 255.0
        x = x.transpose(0, 1).reshape(x.shape[1], -1)
        s, sq = x.sum(dim=1), (x * x).sum(dim=1)
        self.sum = s if self.sum is None else self.sum + s
        self.sumsq = sq if self.sumsq is None else self.sumsq + sq
        self.count += x.shape[1]

    def result(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        if self.sum is None or self.sumsq is None:
            raise AssertionError("expected samples before computing statistics")
        mean = self.sum / self.count
        std = (self.sumsq / self.count - mean * mean).clamp(min=0).sqrt()
        return (tuple(float(m) for m in mean),
                tuple(float(s) or 1.0 for s in std))


def _write_shard(fs: pafs.FileSystem, root: str, i: int, start: int, labels: np.ndarray,
                 samples: pa.Array) -> ShardInfo:
    """Write rows ``[start, start + len(labels))`` as ``shard-{i:05d}.parquet``."""
    name = f"shard-{i:05d}.parquet"
    stop = start + len(labels)
    table = pa.table({"index": pa.array(np.arange(start, stop, dtype=np.int64)),
                      "label": pa.array(np.asarray(labels, dtype=np.int64)),
                      "sample": samples})
    with fs.open_output_stream(posixpath.join(root, name)) as out:
        pq.write_table(table, out, row_group_size=4096)
    return ShardInfo(path=name, start=start, stop=stop)


def _write_manifest(fs: pafs.FileSystem, root: str, manifest: DatasetManifest) -> None:
    with fs.open_output_stream(posixpath.join(root, MANIFEST_NAME)) as out:
        out.write(manifest.model_dump_json(indent=2).encode())


def _checked_labels(labels: np.ndarray, num_classes: int | None) -> int:
    """``num_classes`` (default ``max + 1``) after checking every label is in range."""
    if len(labels) == 0:
        raise ValueError("a dataset needs at least one sample")
    num_classes = int(labels.max()) + 1 if num_classes is None else num_classes
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must be in [0, {num_classes - 1}], got "
                         f"[{labels.min()}, {labels.max()}]")
    return num_classes


def write_shards(uri: str, samples: np.ndarray, labels: np.ndarray, *,
                 num_classes: int | None = None, rows_per_shard: int = 8192,
                 stats_from: DatasetManifest | None = None) -> DatasetManifest:
    """Write ``samples`` (N, C, H, W) uint8/float32 and ``labels`` as a sharded dataset.

    Any other shape is refused: an (N, 28, 28) array would otherwise read as 28 channels.

    The samples are stored as fixed-size tensors (the ``raw`` decoder); for encoded images
    see ``write_encoded_shards`` and ``write_image_folder``.

    Args:
        uri: target directory (created); any pyarrow filesystem URI.
        num_classes: defaults to ``labels.max() + 1``.
        rows_per_shard: rows per Parquet file.
        stats_from: reuse this manifest's normalisation (e.g. the train split's for test).
    """
    samples = np.ascontiguousarray(samples)
    labels = np.asarray(labels, dtype=np.int64)
    if samples.dtype.name not in ("uint8", "float32"):
        raise ValueError(f"samples must be uint8 or float32, got {samples.dtype}")
    if samples.ndim != 4:
        hint = (f"; grey images of shape (N, H, W) need a channel axis: samples[:, None] "
                f"gives (N, 1, {samples.shape[1]}, {samples.shape[2]})"
                if samples.ndim == 3 else "")
        raise ValueError(f"samples must be (N, C, H, W), got shape {samples.shape}{hint}")
    if len(samples) != len(labels) or len(labels) == 0:
        raise ValueError(f"need as many labels as samples (at least one), got "
                         f"{len(samples)} samples and labels of shape {labels.shape}")
    if rows_per_shard < 1:
        raise ValueError(f"rows_per_shard must be >= 1, got {rows_per_shard}")
    num_classes = _checked_labels(labels, num_classes)
    if stats_from:
        mean, std = stats_from.mean, stats_from.std
    else:
        stats = _ChannelStats()
        for start in range(0, len(samples), 8192):  # bounded float64 working memory
            stats.add(torch.as_tensor(np.array(samples[start:start + 8192])))  # read-only ok
        mean, std = stats.result()
    fs, root = dataset_filesystem(uri)
    fs.create_dir(root, recursive=True)
    width = samples[0].nbytes
    shards = []
    for i, start in enumerate(range(0, len(labels), rows_per_shard)):
        stop = min(len(labels), start + rows_per_shard)
        column = pa.FixedSizeBinaryArray.from_buffers(
            pa.binary(width), stop - start, [None, pa.py_buffer(samples[start:stop].tobytes())])
        shards.append(_write_shard(fs, root, i, start, labels[start:stop], column))
    manifest = DatasetManifest(
        fingerprint=fingerprint(labels, num_classes),
        decoder={"name": "raw", "dtype": samples.dtype.name, "shape": list(samples.shape[1:])},
        sample_shape=tuple(samples.shape[1:]), mean=mean, std=std, shards=tuple(shards))
    _write_manifest(fs, root, manifest)
    return manifest


@contextmanager
def _new_dataset_dir(uri: str) -> Iterator[tuple[pafs.FileSystem, str]]:
    """A fresh temporary directory beside ``uri``, moved to ``uri`` when the block
    succeeds and deleted when it fails, so a failed conversion leaves nothing behind."""
    fs, root = dataset_filesystem(uri)
    if fs.get_file_info(root).type != pafs.FileType.NotFound:
        raise ShardError(f"{uri} already exists; remove it or choose another output")
    parent = posixpath.dirname(root.rstrip("/"))
    if parent:
        fs.create_dir(parent, recursive=True)
    partial = f"{root.rstrip('/')}.partial-{secrets.token_hex(4)}"
    fs.create_dir(partial, recursive=True)
    try:
        yield fs, partial
        fs.move(partial, root)
    except BaseException:
        fs.delete_dir(partial)
        raise


def write_encoded_shards(
    uri: str, items: Iterable[tuple[bytes, int]], *, size: Sequence[int],
    num_classes: int | None = None, rows_per_shard: int = 4096,
    stats_from: DatasetManifest | None = None, class_names: Sequence[str] | None = None,
    name_of: Callable[[int], str] | None = None, total: int | None = None,
    threads: int | None = None, progress: bool = False, skip_broken: bool = False,
) -> DatasetManifest:
    """Stream encoded images ``(bytes, label)`` into a dataset with the ``image`` decoder.

    Every image is decoded once on the way (to check it and to compute the normalisation),
    ``rows_per_shard`` at a time in a thread pool, so memory does not grow with the
    number of items. A sample that does not decode stops the conversion with an error
    naming it (``name_of(i)``, default ``item i``) and leaves no dataset behind; with
    ``skip_broken`` it is left out instead and its name recorded in the manifest's
    ``skipped`` (the dataset's indices count the images kept).

    Args:
        uri: target directory; must not exist yet.
        size: decoded (C, H, W); C is 1 (grey) or 3 (RGB).
        num_classes: defaults to the largest label + 1.
        stats_from: reuse this manifest's normalisation (e.g. the train split's for test).
        class_names: recorded in the manifest (label i's name).
        total: the number of items, for the progress bar only.
        progress: show a progress bar on stderr (tqdm).
    """
    if rows_per_shard < 1:
        raise ValueError(f"rows_per_shard must be >= 1, got {rows_per_shard}")
    decoder = ImageDecoder(size)
    name_of = name_of or (lambda i: f"item {i}")
    stats, labels, shards = _ChannelStats(), [], []
    bar = _progress(total, progress)

    skipped: list[str] = []

    def check(args: tuple[int, bytes]) -> torch.Tensor | None:
        i, data = args
        try:
            return decoder.decode_one(data)
        except DecodeError as exc:
            if skip_broken:
                return None
            raise ShardError(f"{name_of(i)}: {exc.reason}") from None

    with _new_dataset_dir(uri) as (fs, root), ThreadPoolExecutor(
            threads or min(4, os.cpu_count() or 1)) as pool:
        for block in _blocks(enumerate(items), rows_per_shard):
            values = [bytes(data) for _, (data, _) in block]
            decoded = list(pool.map(check, [(i, v) for (i, _), v in zip(block, values,
                                                                        strict=True)]))
            bar.update(len(block))
            skipped.extend(name_of(i) for (i, _), x in zip(block, decoded, strict=True)
                           if x is None)
            kept = [k for k, x in enumerate(decoded) if x is not None]
            if not kept:
                continue
            block, values = [block[k] for k in kept], [values[k] for k in kept]
            start = len(labels)
            stats.add(torch.stack([decoded[k] for k in kept]))
            block_labels = np.asarray([int(y) for _, (_, y) in block], dtype=np.int64)
            labels.extend(block_labels.tolist())
            shards.append(_write_shard(fs, root, len(shards), start, block_labels,
                                       pa.array(values, type=pa.binary())))
        bar.close()
        if not labels:
            raise ShardError(f"none of the {len(skipped)} images decoded")
        all_labels = np.asarray(labels, dtype=np.int64)
        num_classes = _checked_labels(all_labels, num_classes)
        mean, std = (stats_from.mean, stats_from.std) if stats_from else stats.result()
        manifest = DatasetManifest(
            fingerprint=fingerprint(all_labels, num_classes),
            decoder={"name": "image", "size": list(decoder.shape)},
            sample_shape=decoder.shape, mean=mean, std=std, shards=tuple(shards),
            class_names=tuple(class_names) if class_names is not None else None,
            skipped=tuple(skipped))
        _write_manifest(fs, root, manifest)
    return manifest


def _blocks(items: Iterable, n: int) -> Iterator[list]:
    """Consecutive lists of ``n`` items (the last may be shorter)."""
    block = []
    for item in items:
        block.append(item)
        if len(block) == n:
            yield block
            block = []
    if block:
        yield block


def _progress(total: int | None, enabled: bool):
    """A tqdm bar on stderr (a no-op object when disabled)."""
    from tqdm import tqdm

    return tqdm(total=total, unit="img", disable=not enabled, dynamic_ncols=True)


def image_folder_files(root: str | Path) -> tuple[list[str], list[tuple[Path, int]]]:
    """Classes (sorted sub-folder names) and ``(file, label)`` in torchvision's
    ``ImageFolder`` order: classes sorted, then each class's tree walked in sorted order."""
    root = Path(root)
    if not root.is_dir():
        raise ShardError(f"{root}: not a directory of class folders")
    classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
    if len(classes) < 2:
        raise ShardError(f"{root}: found {len(classes)} class folders, need at least 2 "
                         "(one sub-folder of images per class)")
    files = []
    empty = []
    for label, name in enumerate(classes):
        before = len(files)
        for folder, _, names in sorted(os.walk(root / name, followlinks=True)):
            files.extend((Path(folder, f), label) for f in sorted(names)
                         if f.lower().endswith(IMAGE_EXTENSIONS))
        if len(files) == before:
            empty.append(name)
    if not files:
        raise ShardError(f"{root}: no images ({', '.join(IMAGE_EXTENSIONS)}) in its class "
                         "folders")
    if empty:  # a class no sample has would still count in every label and fingerprint
        raise ShardError(f"{root}: class folders without images ({', '.join(IMAGE_EXTENSIONS)})"
                         f": {', '.join(empty[:10])}{' …' if len(empty) > 10 else ''}; add "
                         "images or remove them (torchvision's ImageFolder refuses them too)")
    return classes, files


def write_image_folder(folder: str | Path, uri: str, *, size: Sequence[int] | None = None,
                       rows_per_shard: int = 4096, progress: bool = False,
                       limit: int | None = None, skip_broken: bool = False) -> DatasetManifest:
    """Convert an ``ImageFolder`` tree (one sub-folder per class) into encoded shards.

    Labels follow the sorted folder names (recorded as ``class_names``); images keep their
    encoded bytes. ``size`` (C, H, W) defaults to the first image's channels (grey → 1,
    else 3) and size. A class folder without images is refused. A corrupt image stops the
    conversion naming its file, unless ``skip_broken``: then every corrupt image is left
    out and its path (relative to ``folder``) listed in the manifest's ``skipped``.
    ``limit`` keeps that many images spread evenly over the sorted files (every class
    keeps its share).
    """
    folder = Path(folder)
    classes, files = image_folder_files(folder)
    if limit is not None and limit < len(files):
        files = [files[i] for i in np.linspace(0, len(files) - 1, limit).round().astype(int)]
    if size is None:
        size = _first_image_size([path for path, _ in files], skip_broken)

    def name_of(i: int) -> str:  # the manifest lists skipped files relative to the folder
        path = files[i][0]
        return str(path.relative_to(folder)) if skip_broken else str(path)

    return write_encoded_shards(
        uri, ((path.read_bytes(), label) for path, label in files), size=size,
        num_classes=len(classes), rows_per_shard=rows_per_shard, class_names=classes,
        name_of=name_of, total=len(files), progress=progress, skip_broken=skip_broken)


def _first_image_size(paths: Sequence[Path], skip_broken: bool) -> tuple[int, int, int]:
    """(C, H, W) of the first image (of the first that opens, with ``skip_broken``)."""
    for path in paths:
        try:
            return _image_size(path.read_bytes(), str(path))
        except ShardError:
            if not skip_broken:
                raise
    raise ShardError(f"none of the {len(paths)} images opens")


def _image_size(data: bytes, name: str) -> tuple[int, int, int]:
    """(C, H, W) of one encoded image: grey images give C = 1, all others C = 3."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            channels = 1 if img.mode in ("1", "L", "I;16", "I", "F") else 3
            return channels, img.height, img.width
    except (OSError, ValueError, SyntaxError) as exc:
        raise ShardError(f"{name}: not a decodable image ({type(exc).__name__})") from None


def write_shards_from_dataset(uri: str, dataset: torch.utils.data.Dataset, *,
                              num_classes: int | None = None, rows_per_shard: int = 8192,
                              size: Sequence[int] | None = None,
                              progress: bool = False) -> DatasetManifest:
    """Shard any map-style Dataset whose items are ``(sample, label)`` in index order.

    Samples that are encoded bytes (``bytes``, ``bytearray``, ``memoryview``) are kept
    encoded with the ``image`` decoder of ``size`` (default: the first image's); arrays or
    tensors are stored as fixed-size tensors.
    """
    n = len(dataset)  # type: ignore[arg-type]
    if n == 0:
        raise ValueError("the dataset is empty")
    first = dataset[0][0]
    if isinstance(first, bytes | bytearray | memoryview):
        if size is None:
            size = _image_size(bytes(first), "dataset item 0")
        return write_encoded_shards(
            uri, (dataset[i] for i in range(n)), size=size, num_classes=num_classes,
            rows_per_shard=rows_per_shard, total=n, progress=progress,
            name_of=lambda i: f"dataset item {i}")
    samples = np.stack([np.asarray(dataset[i][0]) for i in range(n)])
    labels = np.asarray([int(dataset[i][1]) for i in range(n)], dtype=np.int64)
    if samples.dtype != np.uint8:
        samples = samples.astype(np.float32)
    return write_shards(uri, samples, labels, num_classes=num_classes,
                        rows_per_shard=rows_per_shard)
