"""The dataset manifest: its typed record, fingerprint, decoder, and a careful reader.

``dynams-dataset.json`` describes a shard dataset: fingerprint (N, classes, hash of the
labels), the *decoder* of the ``sample`` column and its parameters, the decoded sample
shape, the normalisation, and the shards (contiguous row ranges). Format
``dynams-shards/2``. A manifest is untrusted input (a client names the dataset): it is
read only from a regular file of bounded size, and errors never echo its contents.
"""

from __future__ import annotations

import hashlib
import math
import os
import posixpath
import stat
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from ..registry import Registry, UnknownName
from .decoders import Decoder, build_decoder

__all__ = [
    "is_relative_local_path",
    "ShardError",
    "FingerprintMismatch",
    "InvalidDatasetURI",
    "DatasetNotFound",
    "CorruptSample",
    "DatasetFingerprint",
    "ShardInfo",
    "DatasetManifest",
    "fingerprint",
    "dataset_decoder",
    "dataset_filesystem",
    "filesystem_schemes",
    "register_filesystem",
    "regular_file_size",
    "read_manifest",
    "MANIFEST_NAME",
    "FORMAT",
]

MANIFEST_NAME = "dynams-dataset.json"
FORMAT = "dynams-shards/2"
MAX_MANIFEST_BYTES = 8 << 20
MAX_SAMPLE_ELEMENTS = 1 << 28  # a decoded sample: 256 M elements at most
SHARD_PATH_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.\-/]*$"

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

    ``decoder`` is ``{"name": NAME, **params}`` (see ``dynams_service.core.data.decoders``);
    ``sample_shape`` is the shape a decoded sample has.
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
    skipped: tuple[str, ...] = Field(
        (), description="items left out at conversion because they did not decode "
                        "(`dynams dataset convert --skip-broken`)")

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

    @property
    def num_samples(self) -> int:
        return self.fingerprint.num_samples

    def __hash__(self) -> int:  # the decoder dict is not hashable; the JSON is canonical
        return hash(self.model_dump_json())

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


_FILESYSTEMS: Registry[Callable[[], pafs.FileSystem]] = Registry("dataset filesystem")


def register_filesystem(scheme: str, factory: Callable[[], pafs.FileSystem], *,
                        replace: bool = False) -> None:
    """Serve dataset URIs ``<scheme>://<path>`` from the pyarrow filesystem ``factory()``
    returns (e.g. a ``pyarrow.fs.PyFileSystem`` over an in-house store), called with the
    path ``<netloc>/<path>``. Registered by the operator's module (``dynams serve
    --models MODULE``), it is allowed like the built-in schemes; clients only name it.

    Example:
        >>> register_filesystem("scratch", pafs.LocalFileSystem)  # doctest: +SKIP
    """
    if not isinstance(scheme, str) or not scheme.isascii() or not scheme.isalpha() \
            or scheme != scheme.lower():
        raise ValueError(f"filesystem scheme must be lowercase ASCII letters, got {scheme!r}")
    _FILESYSTEMS.register(scheme, factory, replace=replace)


def filesystem_schemes() -> list[str]:
    """The URI schemes registered with :func:`register_filesystem`."""
    return _FILESYSTEMS.names()


def is_relative_local_path(uri: str) -> bool:
    """A plain path (no ``scheme://``) that is not absolute, ``~`` expanded: it names a
    different dataset in every working directory."""
    return "://" not in uri and not os.path.isabs(os.path.expanduser(uri))


def dataset_filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """pyarrow filesystem and path for a URI; plain paths are local."""
    try:
        if "://" in uri:
            scheme, rest = uri.split("://", 1)
            if scheme.lower() in _FILESYSTEMS:
                return _FILESYSTEMS.get(scheme.lower())(), rest
            return pafs.FileSystem.from_uri(uri)
        return pafs.LocalFileSystem(), os.path.realpath(os.path.expanduser(uri))
    except (ValueError, OSError, RuntimeError) as exc:  # ArrowInvalid is a ValueError
        raise InvalidDatasetURI(f"dataset URI {uri!r} cannot be opened: {exc}") from None

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
    """Read and validate a dataset's manifest (``dynams-shards/2``).

    Only a regular file of at most 8 MiB is read; errors name the problem, never the
    file's contents.
    """
    fs, root = dataset_filesystem(uri)
    path = posixpath.join(root, MANIFEST_NAME)
    try:
        if regular_file_size(fs, path, "manifest") > MAX_MANIFEST_BYTES:
            raise ShardError(f"{path}: manifest larger than {MAX_MANIFEST_BYTES >> 20} MiB")
        with fs.open_input_stream(path) as f:
            raw = f.read(MAX_MANIFEST_BYTES + 1)
    except (FileNotFoundError, OSError) as exc:
        hint = ("; a relative path is resolved in the reader's working directory (the "
                "selector's, for a job): pass an absolute path"
                if is_relative_local_path(uri) else "")
        raise DatasetNotFound(f"{uri}: no dataset here ({MANIFEST_NAME} unreadable: "
                              f"{type(exc).__name__}){hint}") from None
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ShardError(f"{path}: manifest larger than {MAX_MANIFEST_BYTES >> 20} MiB")
    try:
        manifest = DatasetManifest.model_validate_json(raw)
    except ValidationError as exc:
        raise ShardError(f"{path}: invalid manifest: {_describe(exc)}") from None
    if manifest.format != FORMAT:
        raise ShardError(f"{path}: format {manifest.format!r}, this version reads {FORMAT!r}")
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
