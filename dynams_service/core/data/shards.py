"""Reading shard datasets: Parquet files with columns ``index``, ``label``, ``sample``.

A dataset is a directory (local path or any pyarrow filesystem URI: s3://, gs://, …)
holding ``dynams-dataset.json`` (the manifest, see ``core.manifest``) and
``shard-NNNNN.parquet`` files, each a contiguous row range, so K scorers can each read
only their own shards. Row ``i`` is item ``i`` of the trainer's Dataset; the fingerprint
(N, classes, hash of labels) guards that. Writing lives in ``core.convert``, streaming
in ``core.stream``; this module re-exports both's names for convenience.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import torch

from .convert import (
    IMAGE_EXTENSIONS,
    image_folder_files,
    write_encoded_shards,
    write_image_folder,
    write_shards,
    write_shards_from_dataset,
)
from .decoders import Decoder, Normalizer, RawDecoder
from .manifest import (
    FORMAT,
    MANIFEST_NAME,
    CorruptSample,
    DatasetFingerprint,
    DatasetManifest,
    DatasetNotFound,
    FingerprintMismatch,
    InvalidDatasetURI,
    ShardError,
    ShardInfo,
    dataset_decoder,
    dataset_filesystem,
    fingerprint,
    read_manifest,
    regular_file_size,
)

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
    "image_folder_files",
    "read_manifest",
    "read_shards",
    "open_shard",
    "read_shard_columns",
    "checked_index_labels",
    "read_index_labels",
    "dataset_decoder",
    "dataset_filesystem",
    "verify_dataset",
    "verified_labels",
    "DatasetNotFound",
    "InvalidDatasetURI",
    "FingerprintMismatch",
    "CorruptSample",
    "shard_groups",
    "decode_samples",
    "MANIFEST_NAME",
    "FORMAT",
    "IMAGE_EXTENSIONS",
]


@dataclass(frozen=True)
class ShardRows:
    """Rows read from shards: global indices, labels and stored samples (numpy).

    ``samples`` is ``(N, *sample_shape)`` for raw datasets and an object array of encoded
    ``bytes`` for others; ``decode_samples`` turns either into model inputs.
    """

    indices: np.ndarray
    labels: np.ndarray
    samples: np.ndarray



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


def read_shard_columns(fs: pafs.FileSystem, root: str, shard: ShardInfo, decoder: Decoder,
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


def checked_index_labels(table: pa.Table, shard: ShardInfo, manifest: DatasetManifest,
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
    ``dynams_service.core.data.stream.ShardStream`` or index them with ``ShardDataset``.
    """
    manifest = manifest or read_manifest(uri)
    decoder = dataset_decoder(manifest)
    fs, root = dataset_filesystem(uri)
    ids = range(len(manifest.shards)) if shard_ids is None else shard_ids
    parts_idx, parts_lab, parts_smp = [], [], []
    for i in ids:
        shard = manifest.shards[i]
        path = posixpath.join(root, shard.path)
        table = read_shard_columns(fs, root, shard, decoder, ("index", "label", "sample"))
        index, label = checked_index_labels(table, shard, manifest, path)
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
    decodes every sample), one shard at a time into a running hash: its memory is one
    shard's columns whatever N (``verified_labels`` holds all labels). Raises ShardError
    naming the bad file, or FingerprintMismatch when ``expected`` differs from the
    dataset's fingerprint.
    """
    manifest = read_manifest(uri)
    fs, root = dataset_filesystem(uri)
    decoder = dataset_decoder(manifest)
    digest, count = hashlib.sha256(), 0
    for shard in manifest.shards:
        table = read_shard_columns(fs, root, shard, decoder, ("index", "label"))
        _, labels = checked_index_labels(table, shard, manifest,
                                         posixpath.join(root, shard.path))
        digest.update(np.ascontiguousarray(labels, dtype="<i8").tobytes())  # as fingerprint()
        count += len(labels)
        del table, labels
    pa.default_memory_pool().release_unused()  # give the read buffers back to the system
    actual = DatasetFingerprint(num_samples=count,
                                num_classes=manifest.fingerprint.num_classes,
                                labels_sha256=digest.hexdigest())
    _check_fingerprint(uri, manifest, actual, expected)
    return manifest


def read_index_labels(fs: pafs.FileSystem, root: str, manifest: DatasetManifest,
                      decoder: Decoder, shards: Sequence[ShardInfo]
                      ) -> tuple[np.ndarray, np.ndarray]:
    """The checked ``index`` and ``label`` columns of ``shards``, concatenated (int64)."""
    indices, labels = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for shard in shards:
        table = read_shard_columns(fs, root, shard, decoder, ("index", "label"))
        i, y = checked_index_labels(table, shard, manifest, posixpath.join(root, shard.path))
        indices.append(i)
        labels.append(y)
    return np.concatenate(indices), np.concatenate(labels)


def verified_labels(uri: str, expected: DatasetFingerprint | None = None
                    ) -> tuple[DatasetManifest, np.ndarray]:
    """``verify_dataset`` that also returns all labels (N,) int64, read once."""
    manifest = read_manifest(uri)
    fs, root = dataset_filesystem(uri)
    _, all_labels = read_index_labels(fs, root, manifest, dataset_decoder(manifest),
                                      manifest.shards)
    _check_fingerprint(uri, manifest, fingerprint(all_labels, manifest.fingerprint.num_classes),
                       expected)
    return manifest, all_labels


def _check_fingerprint(uri: str, manifest: DatasetManifest, actual: DatasetFingerprint,
                       expected: DatasetFingerprint | None) -> None:
    if actual != manifest.fingerprint:
        raise ShardError(f"{uri}: labels do not match the manifest's fingerprint")
    if expected is not None and expected != actual:
        raise FingerprintMismatch(f"{uri}: fingerprint {actual.model_dump()} differs from "
                                  f"the trainer's {expected.model_dump()}")


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
