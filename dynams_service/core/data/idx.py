"""Reader for the IDX format of MNIST-style datasets (raw or gzip-compressed)."""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import numpy as np

__all__ = ["IDXError", "read_idx", "find_idx_split", "load_idx_split"]

# IDX type code → numpy big-endian dtype.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_SPLIT_PREFIX = {"train": "train", "test": "t10k"}


class IDXError(ValueError):
    """An IDX file is missing, truncated or malformed; the message names the file."""


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (``.gz`` or raw) into a native-endian numpy array."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except FileNotFoundError:
        raise IDXError(f"{path}: no such file") from None
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise IDXError(f"{path}: cannot decompress ({exc})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise IDXError(f"{path}: not an IDX file (bad magic number {raw[:4].hex() or 'empty'})")
    type_code, ndim = raw[2], raw[3]
    if type_code not in _IDX_DTYPES:
        raise IDXError(f"{path}: unknown IDX element type 0x{type_code:02x}")
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise IDXError(f"{path}: truncated header ({len(raw)} bytes, {ndim} dims)")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[type_code])
    expected = header + math.prod(shape) * dtype.itemsize
    if len(raw) != expected:
        raise IDXError(
            f"{path}: {len(raw)} bytes but header {list(shape)} of {dtype} needs {expected}"
            + (" (truncated)" if len(raw) < expected else " (trailing bytes)")
        )
    array = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="))


def find_idx_split(directory: str | Path, split: str) -> tuple[Path, Path]:
    """Paths of the (images, labels) IDX files of ``split`` ('train' or 'test')."""
    if split not in _SPLIT_PREFIX:
        raise ValueError(f"split must be one of {sorted(_SPLIT_PREFIX)}, got {split!r}")
    directory = Path(directory)
    if not directory.is_dir():
        raise IDXError(f"{directory}: not a directory of IDX files")
    prefix = _SPLIT_PREFIX[split]
    found = []
    for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
        candidates = [directory / f"{prefix}-{kind}{ext}" for ext in ("", ".gz")]
        existing = [c for c in candidates if c.exists()]
        if not existing:
            raise IDXError(f"{directory}: missing {candidates[0].name}[.gz]")
        found.append(existing[0])
    return found[0], found[1]


def load_idx_split(directory: str | Path, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Images ``(N, H, W)`` uint8 and labels ``(N,)`` int64 of a split, cross-checked."""
    images_path, labels_path = find_idx_split(directory, split)
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise IDXError(f"{images_path}: expected (N, H, W) uint8 images, got {images.shape} "
                       f"{images.dtype}")
    if labels.ndim != 1:
        raise IDXError(f"{labels_path}: expected (N,) labels, got shape {labels.shape}")
    if len(images) != len(labels):
        raise IDXError(f"{images_path} has {len(images)} images but {labels_path} has "
                       f"{len(labels)} labels")
    return images, labels.astype(np.int64)
