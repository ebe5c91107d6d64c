"""Sample decoders: what a shard's ``sample`` column holds → the tensors a model reads.

A dataset's manifest names its decoder and parameters, e.g. ``{"name": "image", "size":
[3, 64, 64]}``; the name is looked up in a registry that operators extend exactly like
architectures (``register_decoder`` in a module loaded with ``dynams serve --models``), so a
client only names a dataset and never sends code. A decoder turns stored values into an
*unnormalised* tensor ``(B, *shape)`` (uint8 or float32, the compact form that caches
hold); ``Normalizer`` then scales to [0, 1] and applies the manifest's mean/std.

Built-ins:
- ``raw``: fixed-size tensors stored as ``fixed_size_binary`` (``shape``, ``dtype``);
- ``image``: JPEG/PNG/WebP/BMP bytes → grey or RGB → resize (antialiased bilinear, the
  shorter side first) and centre-crop to ``size`` = (C, H, W), with torchvision
  (``torchvision.io`` and ``transforms.v2``). On a CUDA device, JPEGs are decoded on the
  GPU in batches.
"""

from __future__ import annotations

import io
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from ..registry import Registry
from .image_headers import MAX_IMAGE_PIXELS, image_format, image_size

__all__ = [
    "DecodeError",
    "Decoder",
    "RawDecoder",
    "ImageDecoder",
    "Normalizer",
    "register_decoder",
    "build_decoder",
    "decoders",
    "resize_center_crop",
]

RAW_DTYPES = ("uint8", "float32")
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "BMP")


class DecodeError(ValueError):
    """A stored value that cannot be decoded; ``row`` is its position in the decoded batch."""

    def __init__(self, row: int, reason: str) -> None:
        super().__init__(f"row {row}: {reason}")
        self.row = row
        self.reason = reason


class Decoder(ABC):
    """Stored values of one dataset → unnormalised tensors ``(B, *shape)`` of ``dtype``."""

    shape: tuple[int, ...]
    dtype: torch.dtype

    column_kind: str = "binary"  # the Arrow type it reads, for error messages

    @abstractmethod
    def accepts(self, column_type: pa.DataType) -> bool:
        """Whether a shard's ``sample`` column of this Arrow type can be decoded."""

    @abstractmethod
    def decode(self, column: pa.Array) -> torch.Tensor:
        """Decode every value of ``column`` on the CPU; ``DecodeError`` names a bad row."""

    def decode_on(self, column: pa.Array, device: torch.device) -> torch.Tensor:
        """Decode onto ``device``: on the CPU, then a non-blocking copy from pinned memory
        (decoders that can decode on the device itself override this)."""
        x = self.decode(column)
        if device.type == "cuda":
            return x.pin_memory().to(device, non_blocking=True)
        return x.to(device)

    @property
    def row_bytes(self) -> int:
        """Bytes of one decoded sample (what a cache of decoded rows pays per row)."""
        return math.prod(self.shape) * torch.empty((), dtype=self.dtype).element_size()


class RawDecoder(Decoder):
    """Fixed-size tensors stored row by row as ``fixed_size_binary`` (no decoding work)."""

    def __init__(self, shape: Sequence[int], dtype: str = "uint8") -> None:
        if dtype not in RAW_DTYPES:
            raise ValueError(f"raw dtype must be one of {RAW_DTYPES}, got {dtype!r}")
        shape = tuple(int(s) for s in shape)
        if not shape or any(s < 1 for s in shape):
            raise ValueError(f"raw shape must be positive sizes, got {list(shape)}")
        self.shape = shape
        self.numpy_dtype = np.dtype(dtype)
        self.dtype = torch.uint8 if dtype == "uint8" else torch.float32
        self.width = math.prod(shape) * self.numpy_dtype.itemsize
        self.column_kind = f"fixed_size_binary[{self.width}]"

    def accepts(self, column_type: pa.DataType) -> bool:
        return column_type == pa.binary(self.width)

    def view(self, column: pa.Array) -> np.ndarray:
        """The column's values as a zero-copy numpy view ``(B, *shape)``."""
        if not self.accepts(column.type):
            raise DecodeError(0, f"expected fixed_size_binary[{self.width}], got {column.type}")
        data = np.frombuffer(column.buffers()[1], dtype=np.uint8, count=self.width * len(column),
                             offset=column.offset * self.width)
        return data.view(self.numpy_dtype).reshape(-1, *self.shape)

    def decode(self, column: pa.Array) -> torch.Tensor:
        return torch.from_numpy(self.view(column).copy())


class ImageDecoder(Decoder):
    """Encoded images → uint8 ``(C, H, W)``: grey (C = 1) or RGB (C = 3), resized so the
    image covers H×W (aspect kept, antialiased bilinear), then centre-cropped."""

    dtype = torch.uint8

    def __init__(self, size: Sequence[int], formats: Sequence[str] = IMAGE_FORMATS) -> None:
        size = tuple(int(s) for s in size)
        if len(size) != 3 or size[0] not in (1, 3) or min(size[1:]) < 1:
            raise ValueError(f"image size must be [C, H, W] with C 1 or 3, got {list(size)}")
        unknown = sorted(set(formats) - set(IMAGE_FORMATS))
        if unknown:
            raise ValueError(f"image formats {unknown} not supported; choose from "
                             f"{list(IMAGE_FORMATS)}")
        self.shape = size
        self.formats = tuple(formats)
        self.mode = "L" if size[0] == 1 else "RGB"

    def accepts(self, column_type: pa.DataType) -> bool:
        return pa.types.is_binary(column_type) or pa.types.is_large_binary(column_type)

    def decode_one(self, data: bytes, row: int = 0) -> torch.Tensor:
        """One encoded image → uint8 ``(C, H, W)``.

        JPEG, PNG and WebP decode with ``torchvision.io.decode_image`` and resize with
        ``transforms.v2`` (2–3× Pillow's rate, ``benchmarks/decode.py``); BMP, which
        torchvision does not read, with Pillow. The header is checked first: a format the
        dataset does not allow, or a decompression bomb, is refused before decoding.
        """
        fmt = self.checked_format(data, row)
        x = self._pillow(data, row) if fmt == "BMP" else self._torchvision(data, row, fmt)
        return resize_center_crop(x, self.shape[1], self.shape[2])

    def checked_format(self, data: bytes | None, row: int) -> str:
        """The image's format, after checking its header; ``DecodeError`` otherwise."""
        if data is None:
            raise DecodeError(row, "null sample")
        fmt = image_format(data)
        if fmt not in self.formats:
            raise DecodeError(row, f"not a decodable {'/'.join(self.formats)} image")
        size = image_size(data, fmt)
        if size is None:
            raise DecodeError(row, f"not a decodable {fmt} image (malformed header)")
        if size[0] * size[1] > MAX_IMAGE_PIXELS:
            raise DecodeError(row, f"a {size[0]}x{size[1]} image exceeds the limit of "
                                   f"{MAX_IMAGE_PIXELS} pixels")
        return fmt

    def _torchvision(self, data: bytes, row: int, fmt: str) -> torch.Tensor:
        from torchvision.io import ImageReadMode, decode_image
        from torchvision.transforms.v2 import functional as TF

        grey = self.shape[0] == 1 and fmt != "WEBP"  # torchvision reads WebP only in colour
        mode = ImageReadMode.GRAY if grey else ImageReadMode.RGB
        try:
            x = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=mode)
        except RuntimeError:
            raise DecodeError(row, f"not a decodable {fmt} image") from None
        if x.dtype != torch.uint8:  # a 16-bit PNG
            x = TF.to_dtype(x, torch.uint8, scale=True)
        return TF.rgb_to_grayscale(x) if self.shape[0] == 1 and x.shape[0] == 3 else x

    def _pillow(self, data: bytes, row: int) -> torch.Tensor:
        from PIL import Image

        try:
            with Image.open(io.BytesIO(data), formats=["BMP"]) as img:
                pixels = np.array(img.convert(self.mode))  # writable, for torch
        except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError):
            raise DecodeError(row, "not a decodable BMP image") from None
        x = torch.from_numpy(pixels)
        return x.unsqueeze(0) if x.dim() == 2 else x.permute(2, 0, 1)

    def decode(self, column: pa.Array) -> torch.Tensor:
        if not self.accepts(column.type):
            raise DecodeError(0, f"expected binary image bytes, got {column.type}")
        out = torch.empty((len(column), *self.shape), dtype=torch.uint8)
        for i, data in enumerate(column.to_pylist()):
            out[i] = self.decode_one(data, i)
        return out

    def decode_on(self, column: pa.Array, device: torch.device) -> torch.Tensor:
        """On CUDA, the batch's JPEGs decode on the GPU in one call
        (``torchvision.io.decode_jpeg(device=...)``); other formats on the CPU."""
        if device.type != "cuda":
            return super().decode_on(column, device)
        from torchvision.io import ImageReadMode, decode_jpeg

        values = column.to_pylist()
        formats = [self.checked_format(v, i) for i, v in enumerate(values)]
        out = torch.empty((len(values), *self.shape), dtype=torch.uint8, device=device)
        jpegs = [i for i, fmt in enumerate(formats) if fmt == "JPEG"]
        mode = ImageReadMode.GRAY if self.shape[0] == 1 else ImageReadMode.RGB
        try:
            decoded = decode_jpeg([torch.frombuffer(bytearray(values[i]), dtype=torch.uint8)
                                   for i in jpegs], mode=mode, device=device) if jpegs else []
        except RuntimeError:
            return self.decode(column).to(device)  # the CPU decoder names the bad row
        for i, x in zip(jpegs, decoded, strict=True):
            out[i] = resize_center_crop(x, self.shape[1], self.shape[2])
        for i in sorted(set(range(len(values))) - set(jpegs)):
            out[i] = self.decode_one(values[i], i).to(device)
        return out


def resize_center_crop(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """uint8 ``(C, h, w)`` → ``(C, height, width)``: scale to cover (aspect kept, antialiased
    bilinear, torchvision's ``transforms.v2`` on tensors), then crop the centre."""
    from torchvision.transforms.v2 import functional as TF

    h, w = x.shape[-2:]
    if (h, w) == (height, width):
        return x.contiguous()
    scale = max(height / h, width / w)
    new_h, new_w = max(height, round(h * scale)), max(width, round(w * scale))
    if (new_h, new_w) != (h, w):
        x = TF.resize(x, [new_h, new_w], antialias=True)
    return TF.center_crop(x, [height, width]).contiguous()


class Normalizer:
    """Unnormalised decoded samples → float32: uint8 scaled to [0, 1], then per-channel
    ``(x − mean) / std`` (channel = dim 1), on the input's device."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32)
        self.std = torch.tensor(std, dtype=torch.float32)
        self._on: dict[tuple[torch.device, int], tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        uint8 = x.dtype == torch.uint8
        y = x.to(torch.float32, copy=True)  # never the caller's (cached) tensor
        if uint8:
            y.div_(255.0)
        key = (y.device, y.dim())
        if key not in self._on:
            shape = (1, len(self.mean)) + (1,) * (y.dim() - 2)
            self._on[key] = (self.mean.to(y.device).reshape(shape),
                             self.std.to(y.device).reshape(shape))
        mean, std = self._on[key]
        return y.sub_(mean).div_(std)  # in place: one allocation per batch


# --- registry -------------------------------------------------------------------------

_DECODERS: Registry[Callable[..., Decoder]] = Registry("decoder")


def register_decoder(name: str, factory: Callable[..., Decoder], *,
                     replace: bool = False) -> None:
    """Make decoder ``name`` usable in manifests; ``factory(**params)`` returns a Decoder.

    Call it at import time of a module the operator names (``dynams serve --models mod``).
    """
    _DECODERS.register(name, factory, replace=replace)


def build_decoder(spec: Mapping[str, Any]) -> Decoder:
    """The decoder a manifest names: ``{"name": NAME, **params}``.

    Raises ``UnknownName`` (a KeyError) for an unregistered name and ValueError for
    parameters the decoder does not take.
    """
    params = dict(spec)
    name = params.pop("name", None)
    factory = _DECODERS.get(name) if isinstance(name, str) else None
    if factory is None:
        raise ValueError(f"decoder spec needs a 'name', got {sorted(spec)}")
    try:
        decoder = factory(**params)
    except TypeError as exc:
        raise ValueError(f"decoder {name!r}: bad parameters {sorted(params)}: {exc}") from None
    if not isinstance(decoder, Decoder):
        raise TypeError(f"decoder factory {name!r} returned {type(decoder).__name__}, "
                        "not a Decoder")
    return decoder


def decoders() -> list[str]:
    """Names of all registered decoders."""
    return _DECODERS.names()


register_decoder("raw", RawDecoder)
register_decoder("image", ImageDecoder)
