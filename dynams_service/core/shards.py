"""Dataset shards: Parquet files with columns ``index``, ``label``, ``sample``.

A dataset is a directory (local path or any pyarrow filesystem URI: s3://, gs://, …)
holding ``dynams-dataset.json`` (the manifest) and ``shard-NNNNN.parquet`` files, each a
contiguous row range, so K scorers can each read only their own shards. Row ``i`` is item
``i`` of the trainer's Dataset; the fingerprint (N, classes, hash of labels) guards that.
"""

from __future__ import annotations

import hashlib
import math
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

__all__ = [
    "ShardError",
    "DatasetFingerprint",
    "ShardInfo",
    "DatasetManifest",
    "ShardRows",
    "fingerprint",
    "write_shards",
    "write_shards_from_dataset",
    "read_manifest",
    "read_shards",
    "verify_dataset",
    "verified_labels",
    "DatasetNotFound",
    "InvalidDatasetURI",
    "FingerprintMismatch",
    "shard_groups",
    "decode_samples",
    "MANIFEST_NAME",
]

MANIFEST_NAME = "dynams-dataset.json"
FORMAT = "dynams-shards/1"
_SAMPLE_DTYPES = ("uint8", "float32")


class ShardError(ValueError):
    """A dataset or one of its shards is missing or malformed; the message names the file."""


class FingerprintMismatch(ShardError):
    """The dataset is not the one the trainer fingerprinted."""


class InvalidDatasetURI(ShardError):
    """No filesystem can open the URI (unknown scheme, NUL byte, unknown ~user, …)."""


class DatasetNotFound(ShardError):
    """No dataset (no readable manifest) at the given URI."""


class DatasetFingerprint(BaseModel):
    """What the trainer and the selector compare to know they see the same dataset."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    num_samples: int = Field(ge=1)
    num_classes: int = Field(ge=2)
    labels_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class ShardInfo(BaseModel):
    """One shard file and the rows ``[start, stop)`` it holds."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str
    start: int = Field(ge=0)
    stop: int = Field(ge=1)

    @property
    def num_rows(self) -> int:
        return self.stop - self.start


class DatasetManifest(BaseModel):
    """The dataset's layout: fingerprint, sample encoding, normalisation and shards."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: str = FORMAT
    fingerprint: DatasetFingerprint
    sample_shape: tuple[int, ...]
    sample_dtype: str
    mean: tuple[float, ...] = Field(description="per-channel mean after scaling to [0, 1]")
    std: tuple[float, ...] = Field(description="per-channel std after scaling to [0, 1]")
    shards: tuple[ShardInfo, ...]

    @property
    def num_samples(self) -> int:
        return self.fingerprint.num_samples


@dataclass(frozen=True)
class ShardRows:
    """Rows read from shards: global indices, labels and raw samples (numpy)."""

    indices: np.ndarray
    labels: np.ndarray
    samples: np.ndarray


def fingerprint(labels: np.ndarray, num_classes: int) -> DatasetFingerprint:
    """Fingerprint of a dataset from its labels (hashed as little-endian int64)."""
    labels = np.ascontiguousarray(labels, dtype="<i8")
    digest = hashlib.sha256(labels.tobytes()).hexdigest()
    return DatasetFingerprint(num_samples=len(labels), num_classes=num_classes,
                              labels_sha256=digest)


def _filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """pyarrow filesystem and path for a URI; plain paths are local."""
    try:
        if "://" in uri:
            return pafs.FileSystem.from_uri(uri)
        return pafs.LocalFileSystem(), str(Path(uri).expanduser().resolve())
    except (ValueError, OSError, RuntimeError) as exc:  # ArrowInvalid is a ValueError
        raise InvalidDatasetURI(f"dataset URI {uri!r} cannot be opened: {exc}") from None


def _channel_stats(samples: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of samples scaled to [0, 1] (channel = axis 1)."""
    scale = 255.0 if samples.dtype == np.uint8 else 1.0
    c = samples.shape[1]
    flat = samples.reshape(len(samples), c, -1)
    means, stds = [], []
    for ch in range(c):
        x = flat[:, ch].astype(np.float64) / scale
        means.append(float(x.mean()))
        stds.append(float(x.std()) or 1.0)
    return tuple(means), tuple(stds)


def write_shards(uri: str, samples: np.ndarray, labels: np.ndarray, *,
                 num_classes: int | None = None, rows_per_shard: int = 8192,
                 stats_from: DatasetManifest | None = None) -> DatasetManifest:
    """Write ``samples`` (N, C, H, W) uint8/float32 and ``labels`` as a sharded dataset.

    Args:
        uri: target directory (created); any pyarrow filesystem URI.
        num_classes: defaults to ``labels.max() + 1``.
        rows_per_shard: rows per Parquet file.
        stats_from: reuse this manifest's normalisation (e.g. the train split's for test).
    """
    samples = np.ascontiguousarray(samples)
    labels = np.asarray(labels, dtype=np.int64)
    if samples.dtype.name not in _SAMPLE_DTYPES:
        raise ValueError(f"samples must be one of {_SAMPLE_DTYPES}, got {samples.dtype}")
    if samples.ndim < 2 or len(samples) != len(labels) or len(labels) == 0:
        raise ValueError(f"need (N, C, ...) samples and (N,) labels, got {samples.shape} "
                         f"and {labels.shape}")
    if rows_per_shard < 1:
        raise ValueError(f"rows_per_shard must be >= 1, got {rows_per_shard}")
    num_classes = int(labels.max()) + 1 if num_classes is None else num_classes
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must be in [0, {num_classes - 1}], got "
                         f"[{labels.min()}, {labels.max()}]")
    mean, std = (stats_from.mean, stats_from.std) if stats_from else _channel_stats(samples)
    fs, root = _filesystem(uri)
    fs.create_dir(root, recursive=True)
    n = len(labels)
    width = samples[0].nbytes
    shards = []
    for i, start in enumerate(range(0, n, rows_per_shard)):
        stop = min(n, start + rows_per_shard)
        name = f"shard-{i:05d}.parquet"
        sample_col = pa.FixedSizeBinaryArray.from_buffers(
            pa.binary(width), stop - start, [None, pa.py_buffer(samples[start:stop].tobytes())]
        )
        table = pa.table({"index": pa.array(np.arange(start, stop, dtype=np.int64)),
                          "label": pa.array(labels[start:stop]),
                          "sample": sample_col})
        with fs.open_output_stream(posixpath.join(root, name)) as out:
            pq.write_table(table, out, row_group_size=4096)
        shards.append(ShardInfo(path=name, start=start, stop=stop))
    manifest = DatasetManifest(
        fingerprint=fingerprint(labels, num_classes), sample_shape=tuple(samples.shape[1:]),
        sample_dtype=samples.dtype.name, mean=mean, std=std, shards=tuple(shards),
    )
    with fs.open_output_stream(posixpath.join(root, MANIFEST_NAME)) as out:
        out.write(manifest.model_dump_json(indent=2).encode())
    return manifest


def write_shards_from_dataset(uri: str, dataset: torch.utils.data.Dataset, *,
                              num_classes: int | None = None,
                              rows_per_shard: int = 8192) -> DatasetManifest:
    """Shard any map-style Dataset whose items are ``(sample, label)`` in index order."""
    items = [dataset[i] for i in range(len(dataset))]  # type: ignore[arg-type]
    samples = np.stack([np.asarray(x) for x, _ in items])
    labels = np.asarray([int(y) for _, y in items], dtype=np.int64)
    if samples.dtype != np.uint8:
        samples = samples.astype(np.float32)
    return write_shards(uri, samples, labels, num_classes=num_classes,
                        rows_per_shard=rows_per_shard)


def read_manifest(uri: str) -> DatasetManifest:
    """Read and validate a dataset's manifest."""
    fs, root = _filesystem(uri)
    path = posixpath.join(root, MANIFEST_NAME)
    try:
        with fs.open_input_stream(path) as f:
            raw = f.read()
    except (FileNotFoundError, OSError) as exc:
        raise DatasetNotFound(
            f"{uri}: no dataset here ({MANIFEST_NAME} unreadable: {exc})") from None
    try:
        manifest = DatasetManifest.model_validate_json(raw)
    except ValidationError as exc:
        raise ShardError(f"{path}: invalid manifest: {exc}") from None
    if manifest.format != FORMAT:
        raise ShardError(f"{path}: format {manifest.format!r}, this version reads {FORMAT!r}")
    if manifest.sample_dtype not in _SAMPLE_DTYPES:
        raise ShardError(f"{path}: sample_dtype {manifest.sample_dtype!r} not supported")
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


def _read_shard_table(fs: pafs.FileSystem, root: str, shard: ShardInfo,
                      manifest: DatasetManifest, columns: Sequence[str]) -> pa.Table:
    """Read ``columns`` of one shard after checking its schema and row count."""
    path = posixpath.join(root, shard.path)
    row_bytes = math.prod(manifest.sample_shape) * np.dtype(manifest.sample_dtype).itemsize
    try:
        with fs.open_input_file(path) as f:
            parquet = pq.ParquetFile(f)
            schema = parquet.schema_arrow
            missing = [c for c in ("index", "label", "sample") if c not in schema.names]
            if missing:
                raise ShardError(f"{path}: missing columns {missing} (has {schema.names})")
            for name in ("index", "label"):
                if not pa.types.is_integer(schema.field(name).type):
                    raise ShardError(f"{path}: column {name!r} must be integer, "
                                     f"got {schema.field(name).type}")
            if schema.field("sample").type != pa.binary(row_bytes):
                raise ShardError(f"{path}: column 'sample' must be fixed_size_binary"
                                 f"[{row_bytes}], got {schema.field('sample').type}")
            table = parquet.read(columns=list(columns))
    except ShardError:
        raise
    except (OSError, pa.ArrowException) as exc:
        raise ShardError(f"{path}: unreadable shard ({exc})") from None
    if table.num_rows != shard.num_rows:
        raise ShardError(f"{path}: {table.num_rows} rows, manifest says {shard.num_rows}")
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
    """Read the rows of the given shards (all by default), checking their contents."""
    manifest = manifest or read_manifest(uri)
    fs, root = _filesystem(uri)
    ids = range(len(manifest.shards)) if shard_ids is None else shard_ids
    row_bytes = math.prod(manifest.sample_shape) * np.dtype(manifest.sample_dtype).itemsize
    parts_idx, parts_lab, parts_smp = [], [], []
    for i in ids:
        shard = manifest.shards[i]
        path = posixpath.join(root, shard.path)
        table = _read_shard_table(fs, root, shard, manifest, ("index", "label", "sample"))
        index, label = _checked_index_labels(table, shard, manifest, path)
        sample = table.column("sample").combine_chunks()
        data = np.frombuffer(sample.buffers()[1], dtype=np.uint8,
                             count=row_bytes * len(sample), offset=sample.offset * row_bytes)
        parts_idx.append(index)
        parts_lab.append(label)
        parts_smp.append(data.view(manifest.sample_dtype).reshape(-1, *manifest.sample_shape))
    if not parts_idx:
        empty = np.zeros((0, *manifest.sample_shape), dtype=manifest.sample_dtype)
        return ShardRows(np.zeros(0, np.int64), np.zeros(0, np.int64), empty)
    return ShardRows(np.concatenate(parts_idx), np.concatenate(parts_lab),
                     np.concatenate(parts_smp))


def verify_dataset(uri: str, expected: DatasetFingerprint | None = None) -> DatasetManifest:
    """Check every shard (columns, index range, label range) and the label fingerprint.

    Reads only the ``index`` and ``label`` columns. Raises ShardError naming the bad file,
    or when ``expected`` differs from the dataset's fingerprint.
    """
    return verified_labels(uri, expected)[0]


def verified_labels(uri: str, expected: DatasetFingerprint | None = None
                    ) -> tuple[DatasetManifest, np.ndarray]:
    """``verify_dataset`` that also returns all labels (N,) int64, read once."""
    manifest = read_manifest(uri)
    fs, root = _filesystem(uri)
    labels = []
    for shard in manifest.shards:
        path = posixpath.join(root, shard.path)
        table = _read_shard_table(fs, root, shard, manifest, ("index", "label"))
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
    """Raw samples → normalised float32 tensor ``(N, C, ...)`` (scaled to [0, 1] first)."""
    x = torch.from_numpy(np.ascontiguousarray(samples)).to(torch.float32)
    if manifest.sample_dtype == "uint8":
        x = x / 255.0
    shape = (1, len(manifest.mean)) + (1,) * (x.dim() - 2)
    mean = torch.tensor(manifest.mean, dtype=torch.float32).reshape(shape)
    std = torch.tensor(manifest.std, dtype=torch.float32).reshape(shape)
    return (x - mean) / std
