"""Dataset shards: Parquet files with columns ``index``, ``label``, ``sample``.

A dataset is a directory (local path or any pyarrow filesystem URI: s3://, gs://, …)
holding ``dynams-dataset.json`` (the manifest) and ``shard-NNNNN.parquet`` files, each a
contiguous row range, so K scorers can each read only their own shards. Row ``i`` is item
``i`` of the trainer's Dataset; the fingerprint (N, classes, hash of labels) guards that.

Format ``dynams-shards/2`` names a *decoder* for the ``sample`` column (``raw`` fixed-size
tensors, ``image`` JPEG/PNG bytes, or one an operator registered); ``dynams-shards/1``
datasets (raw tensors only) still read unchanged.
"""

from __future__ import annotations

import hashlib
import math
import os
import posixpath
import secrets
import stat
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import torch
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from .decoders import (
    DecodeError,
    Decoder,
    ImageDecoder,
    Normalizer,
    RawDecoder,
    build_decoder,
)
from .registry import UnknownName

__all__ = [
    "ShardError",
    "DatasetFingerprint",
    "ShardInfo",
    "DatasetManifest",
    "ShardRows",
    "fingerprint",
    "write_shards",
    "write_encoded_shards",
    "write_image_folder",
    "write_shards_from_dataset",
    "read_manifest",
    "read_shards",
    "dataset_decoder",
    "verify_dataset",
    "verified_labels",
    "DatasetNotFound",
    "InvalidDatasetURI",
    "FingerprintMismatch",
    "CorruptSample",
    "shard_groups",
    "decode_samples",
    "MANIFEST_NAME",
    "IMAGE_EXTENSIONS",
]

MANIFEST_NAME = "dynams-dataset.json"
FORMAT = "dynams-shards/2"
FORMAT_V1 = "dynams-shards/1"
MAX_MANIFEST_BYTES = 8 << 20
MAX_SAMPLE_ELEMENTS = 1 << 28  # a decoded sample: 256 M elements at most
SHARD_PATH_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.\-/]*$"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


class ShardError(ValueError):
    """A dataset or one of its shards is missing or malformed; the message names the file."""


class FingerprintMismatch(ShardError):
    """The dataset is not the one the trainer fingerprinted."""


class InvalidDatasetURI(ShardError):
    """No filesystem can open the URI (unknown scheme, NUL byte, unknown ~user, …)."""


class DatasetNotFound(ShardError):
    """No dataset (no readable manifest) at the given URI."""


class CorruptSample(ShardError):
    """A stored sample that its decoder cannot decode; names the shard file and row."""


class DatasetFingerprint(BaseModel):
    """What the trainer and the selector compare to know they see the same dataset."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    num_samples: int = Field(ge=1)
    num_classes: int = Field(ge=2)
    labels_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class ShardInfo(BaseModel):
    """One shard file and the rows ``[start, stop)`` it holds."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str = Field(pattern=SHARD_PATH_PATTERN, max_length=255,
                      description="relative to the dataset directory, never leaving it")
    start: int = Field(ge=0)
    stop: int = Field(ge=1)

    @field_validator("path")
    @classmethod
    def _inside_the_dataset(cls, path: str) -> str:
        if any(part in ("", ".", "..") for part in path.split("/")):
            raise ValueError("shard paths are relative and stay inside the dataset directory")
        return path

    @property
    def num_rows(self) -> int:
        return self.stop - self.start


class DatasetManifest(BaseModel):
    """The dataset's layout: fingerprint, decoder, normalisation and shards.

    ``decoder`` is ``{"name": NAME, **params}`` (see ``dynams_service.core.decoders``);
    ``sample_shape`` is the shape a decoded sample has. A ``dynams-shards/1`` manifest
    (``sample_dtype``, no decoder) reads as the ``raw`` decoder of that dtype and shape.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: str = FORMAT
    fingerprint: DatasetFingerprint
    decoder: dict[str, Any]
    sample_shape: tuple[int, ...]
    mean: tuple[float, ...] = Field(description="per-channel mean after scaling to [0, 1]")
    std: tuple[float, ...] = Field(description="per-channel std after scaling to [0, 1]")
    shards: tuple[ShardInfo, ...]
    class_names: tuple[str, ...] | None = Field(
        None, description="label i's class name (image folders: sorted folder names)")

    @field_validator("sample_shape")
    @classmethod
    def _bounded_shape(cls, shape: tuple[int, ...]) -> tuple[int, ...]:
        if not 1 <= len(shape) <= 8 or any(not 1 <= d <= 1 << 16 for d in shape) \
                or math.prod(shape) > MAX_SAMPLE_ELEMENTS:
            raise ValueError(f"sample_shape must have 1-8 sizes in [1, 65536] and at most "
                             f"{MAX_SAMPLE_ELEMENTS} elements")
        return shape

    @model_validator(mode="after")
    def _stats_per_channel(self) -> DatasetManifest:
        if not len(self.mean) == len(self.std) == self.sample_shape[0]:
            raise ValueError(f"mean and std need one value per channel "
                             f"({self.sample_shape[0]}), got {len(self.mean)} and {len(self.std)}")
        if any(not math.isfinite(v) for v in self.mean) or any(
                not (math.isfinite(v) and v > 0) for v in self.std):
            raise ValueError("mean must be finite and std finite and > 0")
        return self

    @model_validator(mode="before")
    @classmethod
    def _upgrade_v1(cls, data: Any) -> Any:
        """A /1 manifest's ``sample_dtype`` becomes the equivalent ``raw`` decoder."""
        if isinstance(data, dict) and data.get("format") == FORMAT_V1 and "decoder" not in data:
            data = dict(data)
            dtype = data.pop("sample_dtype", None)
            data["decoder"] = {"name": "raw", "dtype": dtype,
                               "shape": list(data.get("sample_shape") or [])}
        return data

    @property
    def num_samples(self) -> int:
        return self.fingerprint.num_samples

    def __hash__(self) -> int:  # the decoder dict is not hashable; the JSON is canonical
        return hash(self.model_dump_json())


@dataclass(frozen=True)
class ShardRows:
    """Rows read from shards: global indices, labels and stored samples (numpy).

    ``samples`` is ``(N, *sample_shape)`` for raw datasets and an object array of encoded
    ``bytes`` for others; ``decode_samples`` turns either into model inputs.
    """

    indices: np.ndarray
    labels: np.ndarray
    samples: np.ndarray


def fingerprint(labels: np.ndarray, num_classes: int) -> DatasetFingerprint:
    """Fingerprint of a dataset from its labels (hashed as little-endian int64)."""
    labels = np.ascontiguousarray(labels, dtype="<i8")
    digest = hashlib.sha256(labels.tobytes()).hexdigest()
    return DatasetFingerprint(num_samples=len(labels), num_classes=num_classes,
                              labels_sha256=digest)


def dataset_decoder(manifest: DatasetManifest) -> Decoder:
    """The decoder the manifest names, checked against its ``sample_shape``.

    Raises ``UnknownName`` (a KeyError) when no one registered the decoder here, and
    ShardError when its parameters are wrong.
    """
    try:
        decoder = build_decoder(manifest.decoder)
    except UnknownName:
        raise
    except (ValueError, TypeError) as exc:
        raise ShardError(f"manifest decoder {manifest.decoder}: {exc}") from None
    if tuple(decoder.shape) != tuple(manifest.sample_shape):
        raise ShardError(f"decoder {manifest.decoder.get('name')!r} makes samples of shape "
                         f"{list(decoder.shape)}, the manifest says {list(manifest.sample_shape)}")
    return decoder


def _filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """pyarrow filesystem and path for a URI; plain paths are local."""
    try:
        if "://" in uri:
            return pafs.FileSystem.from_uri(uri)
        return pafs.LocalFileSystem(), str(Path(uri).expanduser().resolve())
    except (ValueError, OSError, RuntimeError) as exc:  # ArrowInvalid is a ValueError
        raise InvalidDatasetURI(f"dataset URI {uri!r} cannot be opened: {exc}") from None


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
    if samples.ndim < 2 or len(samples) != len(labels) or len(labels) == 0:
        raise ValueError(f"need (N, C, ...) samples and (N,) labels, got {samples.shape} "
                         f"and {labels.shape}")
    if rows_per_shard < 1:
        raise ValueError(f"rows_per_shard must be >= 1, got {rows_per_shard}")
    num_classes = _checked_labels(labels, num_classes)
    if stats_from:
        mean, std = stats_from.mean, stats_from.std
    else:
        stats = _ChannelStats()
        for start in range(0, len(samples), 8192):  # bounded float64 working memory
            stats.add(torch.from_numpy(samples[start:start + 8192]))
        mean, std = stats.result()
    fs, root = _filesystem(uri)
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
    fs, root = _filesystem(uri)
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
    threads: int | None = None, progress: bool = False,
) -> DatasetManifest:
    """Stream encoded images ``(bytes, label)`` into a dataset with the ``image`` decoder.

    Every image is decoded once on the way (to check it and to compute the normalisation),
    ``rows_per_shard`` at a time in a thread pool, so memory does not grow with the
    number of items. A sample that does not decode stops the conversion with an error
    naming it (``name_of(i)``, default ``item i``) and leaves no dataset behind.

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

    def check(args: tuple[int, bytes]) -> torch.Tensor:
        i, data = args
        try:
            return decoder.decode_one(data)
        except DecodeError as exc:
            raise ShardError(f"{name_of(i)}: {exc.reason}") from None

    with _new_dataset_dir(uri) as (fs, root), ThreadPoolExecutor(
            threads or min(4, os.cpu_count() or 1)) as pool:
        for block in _blocks(enumerate(items), rows_per_shard):
            values = [bytes(data) for _, (data, _) in block]
            start = len(labels)
            decoded = list(pool.map(check, [(i, v) for (i, _), v in zip(block, values,
                                                                        strict=True)]))
            stats.add(torch.stack(decoded))
            block_labels = np.asarray([int(y) for _, (_, y) in block], dtype=np.int64)
            labels.extend(block_labels.tolist())
            shards.append(_write_shard(fs, root, len(shards), start, block_labels,
                                       pa.array(values, type=pa.binary())))
            bar.update(len(block))
        bar.close()
        all_labels = np.asarray(labels, dtype=np.int64)
        num_classes = _checked_labels(all_labels, num_classes)
        mean, std = (stats_from.mean, stats_from.std) if stats_from else stats.result()
        manifest = DatasetManifest(
            fingerprint=fingerprint(all_labels, num_classes),
            decoder={"name": "image", "size": list(decoder.shape)},
            sample_shape=decoder.shape, mean=mean, std=std, shards=tuple(shards),
            class_names=tuple(class_names) if class_names is not None else None)
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
    for label, name in enumerate(classes):
        for folder, _, names in sorted(os.walk(root / name, followlinks=True)):
            files.extend((Path(folder, f), label) for f in sorted(names)
                         if f.lower().endswith(IMAGE_EXTENSIONS))
    if not files:
        raise ShardError(f"{root}: no images ({', '.join(IMAGE_EXTENSIONS)}) in its class "
                         "folders")
    return classes, files


def write_image_folder(folder: str | Path, uri: str, *, size: Sequence[int] | None = None,
                       rows_per_shard: int = 4096, progress: bool = False) -> DatasetManifest:
    """Convert an ``ImageFolder`` tree (one sub-folder per class) into encoded shards.

    Labels follow the sorted folder names (recorded as ``class_names``); images keep their
    encoded bytes. ``size`` (C, H, W) defaults to the first image's channels (grey → 1,
    else 3) and size. A corrupt image stops the conversion naming its file.
    """
    classes, files = image_folder_files(folder)
    if size is None:
        size = _image_size(files[0][0])
    return write_encoded_shards(
        uri, ((path.read_bytes(), label) for path, label in files), size=size,
        num_classes=len(classes), rows_per_shard=rows_per_shard, class_names=classes,
        name_of=lambda i: str(files[i][0]), total=len(files), progress=progress)


def _image_size(path: Path) -> tuple[int, int, int]:
    """(C, H, W) of one image file: grey images give C = 1, all others C = 3."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            channels = 1 if img.mode in ("1", "L", "I;16", "I", "F") else 3
            return channels, img.height, img.width
    except (OSError, ValueError, SyntaxError) as exc:
        raise ShardError(f"{path}: not a decodable image ({type(exc).__name__})") from None


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
            size = _encoded_size(bytes(first))
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


def _encoded_size(data: bytes) -> tuple[int, int, int]:
    import io

    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            return (1 if img.mode in ("1", "L", "I;16", "I", "F") else 3), img.height, img.width
    except (OSError, ValueError, SyntaxError) as exc:
        raise ShardError(f"dataset item 0: not a decodable image ({type(exc).__name__})"
                         ) from None


def regular_file_size(fs: pafs.FileSystem, path: str, what: str) -> int:
    """The size of ``path`` after checking that it is a regular file.

    Devices, FIFOs and sockets (a symlink to ``/dev/zero``, a named pipe) are refused
    before anything opens them: reading one would never end or never start.
    """
    try:
        info = fs.get_file_info(path)
    except (OSError, pa.ArrowException) as exc:
        raise ShardError(f"{path}: {what} unreadable ({type(exc).__name__})") from None
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(path)
    if info.type != pafs.FileType.File or (
            isinstance(fs, pafs.LocalFileSystem) and not stat.S_ISREG(os.stat(path).st_mode)):
        raise ShardError(f"{path}: {what} is not a regular file")
    return int(info.size or 0)


def read_manifest(uri: str) -> DatasetManifest:
    """Read and validate a dataset's manifest (``dynams-shards/1`` or ``/2``).

    Only a regular file of at most 8 MiB is read; errors name the problem, never the
    file's contents.
    """
    fs, root = _filesystem(uri)
    path = posixpath.join(root, MANIFEST_NAME)
    try:
        if regular_file_size(fs, path, "manifest") > MAX_MANIFEST_BYTES:
            raise ShardError(f"{path}: manifest larger than {MAX_MANIFEST_BYTES >> 20} MiB")
        with fs.open_input_stream(path) as f:
            raw = f.read(MAX_MANIFEST_BYTES + 1)
    except (FileNotFoundError, OSError) as exc:
        raise DatasetNotFound(f"{uri}: no dataset here ({MANIFEST_NAME} unreadable: "
                              f"{type(exc).__name__})") from None
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ShardError(f"{path}: manifest larger than {MAX_MANIFEST_BYTES >> 20} MiB")
    try:
        manifest = DatasetManifest.model_validate_json(raw)
    except ValidationError as exc:
        raise ShardError(f"{path}: invalid manifest: {_describe(exc)}") from None
    if manifest.format not in (FORMAT, FORMAT_V1):
        raise ShardError(f"{path}: format {manifest.format!r}, this version reads "
                         f"{FORMAT!r} and {FORMAT_V1!r}")
    expected_start = 0
    for shard in manifest.shards:
        if shard.start != expected_start or shard.stop <= shard.start:
            raise ShardError(f"{path}: shard {shard.path} covers rows [{shard.start}, "
                             f"{shard.stop}), expected to start at {expected_start}")
        expected_start = shard.stop
    if expected_start != manifest.num_samples:
        raise ShardError(f"{path}: shards cover {expected_start} rows, fingerprint says "
                         f"{manifest.num_samples}")
    return manifest


def _describe(exc: ValidationError) -> str:
    """Validation errors by field and reason, without the offending input: a manifest may
    be any file a client pointed at, and its contents are not echoed back."""
    known = set(DatasetManifest.model_fields) | set(DatasetFingerprint.model_fields) | set(
        ShardInfo.model_fields)
    parts = []
    for error in exc.errors(include_input=False, include_url=False)[:5]:
        loc = ".".join(str(p) if isinstance(p, int) or p in known else "<field>"
                       for p in error["loc"])
        message = error["msg"] if error["type"] != "json_invalid" else "not valid JSON"
        parts.append(f"{loc or 'manifest'}: {message}"[:200])
    return "; ".join(parts)


def open_shard(fs: pafs.FileSystem, root: str, shard: ShardInfo, decoder: Decoder,
               ) -> tuple[pq.ParquetFile, Any]:
    """Open one shard (a regular file) after checking its schema and row count; returns
    (file, handle) — close the handle when done."""
    path = posixpath.join(root, shard.path)
    handle = None
    try:
        regular_file_size(fs, path, "shard")
        if isinstance(fs, pafs.LocalFileSystem) and not os.path.realpath(path).startswith(
                os.path.realpath(root) + os.sep):
            raise ShardError(f"{path}: shard resolves outside the dataset directory")
        handle = fs.open_input_file(path)
        parquet = pq.ParquetFile(handle)
        schema = parquet.schema_arrow
        missing = [c for c in ("index", "label", "sample") if c not in schema.names]
        if missing:
            raise ShardError(f"{path}: missing columns {missing} (has {schema.names})")
        for name in ("index", "label"):
            if not pa.types.is_integer(schema.field(name).type):
                raise ShardError(f"{path}: column {name!r} must be integer, "
                                 f"got {schema.field(name).type}")
        if not decoder.accepts(schema.field("sample").type):
            raise ShardError(f"{path}: column 'sample' must be {decoder.column_kind} for "
                             f"this dataset's decoder, got {schema.field('sample').type}")
        if parquet.metadata.num_rows != shard.num_rows:
            raise ShardError(f"{path}: {parquet.metadata.num_rows} rows, manifest says "
                             f"{shard.num_rows}")
        return parquet, handle
    except BaseException as exc:
        if handle is not None:
            handle.close()
        if isinstance(exc, ShardError):
            raise
        if isinstance(exc, OSError | pa.ArrowException):
            raise ShardError(f"{path}: unreadable shard ({exc})") from None
        raise


def _read_shard_table(fs: pafs.FileSystem, root: str, shard: ShardInfo, decoder: Decoder,
                      columns: Sequence[str]) -> pa.Table:
    """Read ``columns`` of one shard after checking its schema and row count."""
    parquet, handle = open_shard(fs, root, shard, decoder)
    try:
        table = parquet.read(columns=list(columns))
    except (OSError, pa.ArrowException) as exc:
        raise ShardError(f"{posixpath.join(root, shard.path)}: unreadable shard ({exc})"
                         ) from None
    finally:
        handle.close()
    if table.num_rows != shard.num_rows:
        raise ShardError(f"{posixpath.join(root, shard.path)}: {table.num_rows} rows, "
                         f"manifest says {shard.num_rows}")
    return table


def _checked_index_labels(table: pa.Table, shard: ShardInfo, manifest: DatasetManifest,
                          path: str) -> tuple[np.ndarray, np.ndarray]:
    """The shard's index and label columns, checked: contiguous range, labels in range."""
    index = table.column("index").to_numpy().astype(np.int64, copy=False)
    label = table.column("label").to_numpy().astype(np.int64, copy=False)
    if not np.array_equal(index, np.arange(shard.start, shard.stop)):
        raise ShardError(f"{path}: index column is not the contiguous range "
                         f"[{shard.start}, {shard.stop})")
    num_classes = manifest.fingerprint.num_classes
    if label.min() < 0 or label.max() >= num_classes:
        raise ShardError(f"{path}: labels in [{label.min()}, {label.max()}], outside "
                         f"[0, {num_classes - 1}]")
    return index, label


def read_shards(uri: str, shard_ids: Sequence[int] | None = None, *,
                manifest: DatasetManifest | None = None) -> ShardRows:
    """Read the rows of the given shards (all by default), checking their contents.

    Everything is read into memory: for datasets larger than memory, stream them with
    ``dynams_service.core.stream.ShardStream`` or index them with ``ShardDataset``.
    """
    manifest = manifest or read_manifest(uri)
    decoder = dataset_decoder(manifest)
    fs, root = _filesystem(uri)
    ids = range(len(manifest.shards)) if shard_ids is None else shard_ids
    parts_idx, parts_lab, parts_smp = [], [], []
    for i in ids:
        shard = manifest.shards[i]
        path = posixpath.join(root, shard.path)
        table = _read_shard_table(fs, root, shard, decoder, ("index", "label", "sample"))
        index, label = _checked_index_labels(table, shard, manifest, path)
        column = table.column("sample").combine_chunks()
        parts_idx.append(index)
        parts_lab.append(label)
        if isinstance(decoder, RawDecoder):
            parts_smp.append(decoder.view(column))
        else:  # encoded: one bytes object per row
            parts_smp.append(np.array(column.to_pylist(), dtype=object))
    if not parts_idx:
        empty = (np.zeros((0, *manifest.sample_shape), dtype=decoder.numpy_dtype)
                 if isinstance(decoder, RawDecoder) else np.zeros(0, dtype=object))
        return ShardRows(np.zeros(0, np.int64), np.zeros(0, np.int64), empty)
    return ShardRows(np.concatenate(parts_idx), np.concatenate(parts_lab),
                     np.concatenate(parts_smp))


def verify_dataset(uri: str, expected: DatasetFingerprint | None = None) -> DatasetManifest:
    """Check every shard (columns, index range, label range) and the label fingerprint.

    Reads only the ``index`` and ``label`` columns (``core.stream.verify_samples`` also
    decodes every sample). Raises ShardError naming the bad file, or when ``expected``
    differs from the dataset's fingerprint.
    """
    return verified_labels(uri, expected)[0]


def verified_labels(uri: str, expected: DatasetFingerprint | None = None
                    ) -> tuple[DatasetManifest, np.ndarray]:
    """``verify_dataset`` that also returns all labels (N,) int64, read once."""
    manifest = read_manifest(uri)
    decoder = dataset_decoder(manifest)
    fs, root = _filesystem(uri)
    labels = []
    for shard in manifest.shards:
        path = posixpath.join(root, shard.path)
        table = _read_shard_table(fs, root, shard, decoder, ("index", "label"))
        labels.append(_checked_index_labels(table, shard, manifest, path)[1])
    all_labels = np.concatenate(labels)
    actual = fingerprint(all_labels, manifest.fingerprint.num_classes)
    if actual != manifest.fingerprint:
        raise ShardError(f"{uri}: labels do not match the manifest's fingerprint")
    if expected is not None and expected != actual:
        raise FingerprintMismatch(f"{uri}: fingerprint {actual.model_dump()} differs from "
                                  f"the trainer's {expected.model_dump()}")
    return manifest, all_labels


def shard_groups(manifest: DatasetManifest, k: int) -> list[list[int]]:
    """Split the shards into ``k`` contiguous, non-empty groups with balanced row counts."""
    n_shards = len(manifest.shards)
    if not 1 <= k <= n_shards:
        raise ValueError(f"number of scorers {k} must be in [1, {n_shards}] (one shard or "
                         "more each); write the dataset with a smaller --rows-per-shard")
    rows_before = np.concatenate(([0], np.cumsum([s.num_rows for s in manifest.shards])))
    bounds = [0]
    for g in range(1, k):
        target = manifest.num_samples * g / k
        lo, hi = bounds[-1] + 1, n_shards - (k - g)
        candidates = np.arange(lo, hi + 1)
        bounds.append(int(candidates[np.argmin(np.abs(rows_before[candidates] - target))]))
    bounds.append(n_shards)
    return [list(range(bounds[g], bounds[g + 1])) for g in range(k)]


def decode_samples(samples: np.ndarray, manifest: DatasetManifest) -> torch.Tensor:
    """Stored samples (``ShardRows.samples``) → normalised float32 tensor ``(N, C, ...)``."""
    if samples.dtype == object:
        decoder = dataset_decoder(manifest)
        x = decoder.decode(pa.array(list(samples), type=pa.binary()))
    else:
        x = torch.from_numpy(np.ascontiguousarray(samples))
    return Normalizer(manifest.mean, manifest.std)(x)
