"""The proxy on the wire: a model's width-α slice exported as named raw tensors, and the
standalone proxy rebuilt from them.

What crosses the wire is only (name, dtype, shape, little-endian bytes) per tensor; the
selector rebuilds the proxy from a *registered* architecture and these bytes, so no client
code or pickle is ever executed. Every record is checked against the proxy's own shapes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from .models import SlimmableModel, build_architecture

__all__ = [
    "PSPError",
    "TensorRecord",
    "export_psp",
    "proxy_schema",
    "spec_of",
    "build_proxy",
    "load_proxy",
    "records_to_state",
    "WIRE_DTYPES",
]

# Wire dtype name → torch dtype. bfloat16 travels as its raw 2-byte pattern.
WIRE_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int64": torch.int64,
}
_DTYPE_NAMES = {v: k for k, v in WIRE_DTYPES.items()}
_WIRE_NUMPY = {"float32": "<f4", "float16": "<f2", "bfloat16": "<i2", "int64": "<i8"}
# Dotted torch module paths; a segment may hold "-" (torchvision's RegNet: block1-0).
_NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_-]+)*$")
MAX_TENSOR_DIMS = 8


class PSPError(ValueError):
    """Pushed proxy weights do not fit the proxy's architecture; the message says how."""


@dataclass(frozen=True)
class TensorRecord:
    """One named raw tensor: dtype name, shape, and its little-endian bytes."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    data: bytes

    @classmethod
    def from_tensor(cls, name: str, tensor: torch.Tensor) -> TensorRecord:
        t = tensor.detach().to("cpu").contiguous()
        if t.dtype not in _DTYPE_NAMES:
            raise PSPError(f"tensor {name!r} has unsupported dtype {t.dtype}")
        raw = t.view(torch.int16) if t.dtype == torch.bfloat16 else t
        return cls(name, _DTYPE_NAMES[t.dtype], tuple(t.shape), raw.numpy().tobytes())

    def to_tensor(self) -> torch.Tensor:
        """Decode the bytes (copying them, so the record's buffer is never aliased)."""
        if self.dtype not in WIRE_DTYPES:
            raise PSPError(
                f"tensor {self.name!r}: dtype {self.dtype!r} is not one of {sorted(WIRE_DTYPES)}"
            )
        if len(self.shape) > MAX_TENSOR_DIMS or any(d < 0 for d in self.shape):
            raise PSPError(f"tensor {self.name!r}: invalid shape {list(self.shape)}")
        dtype = WIRE_DTYPES[self.dtype]
        wire = np.dtype(_WIRE_NUMPY[self.dtype])
        numel = math.prod(self.shape)
        if len(self.data) != numel * wire.itemsize:
            raise PSPError(
                f"tensor {self.name!r}: {len(self.data)} bytes do not hold shape "
                f"{list(self.shape)} of {self.dtype} ({numel * wire.itemsize} bytes expected)"
            )
        array = np.frombuffer(self.data, dtype=wire).astype(wire.newbyteorder("="))
        tensor = torch.from_numpy(array)
        if dtype == torch.bfloat16:
            tensor = tensor.view(torch.bfloat16)
        return tensor.reshape(self.shape)

    @property
    def nbytes(self) -> int:
        return len(self.data)


def export_psp(model: SlimmableModel, width: float) -> list[TensorRecord]:
    """The width-``width`` slice of ``model`` as named raw tensors (≈width² of its size).

    Example:
        >>> from dynams_service.core.models.models import SlimCNN
        >>> records = export_psp(SlimCNN(), 0.25)
        >>> records[0].name, records[0].shape
        ('conv1.weight', (8, 1, 3, 3))
    """
    return [TensorRecord.from_tensor(n, t) for n, t in model.slice_state(width).items()]


def spec_of(model: SlimmableModel) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Name → (wire dtype, shape) of every tensor in ``model``'s state: what a push of it
    must carry."""
    return {n: (_DTYPE_NAMES[t.dtype], tuple(t.shape)) for n, t in model.state_dict().items()}


def proxy_schema(architecture: str, width: float) -> dict[str, tuple[str, tuple[int, ...]]]:
    """The tensor schema of the (architecture, width) proxy: name → (wire dtype, shape) of
    every tensor a push for it must carry."""
    return spec_of(build_architecture(architecture).make_proxy(width))


def records_to_state(
    records: Iterable[TensorRecord], spec: Mapping[str, tuple[str, tuple[int, ...]]]
) -> dict[str, torch.Tensor]:
    """Decode and check records against ``spec``: every name once, shapes equal, finite.

    Half-precision floats are accepted for float32 entries and widened.
    """
    state: dict[str, torch.Tensor] = {}
    for record in records:
        if not _NAME_PATTERN.match(record.name):
            raise PSPError(f"tensor name {record.name[:80]!r} is not a dotted module path")
        if record.name in state:
            raise PSPError(f"tensor {record.name!r} appears twice")
        if record.name not in spec:
            raise PSPError(f"tensor {record.name!r} is not part of the proxy "
                           f"(expected names like {sorted(spec)[:3]})")
        want_dtype, want_shape = spec[record.name]
        if tuple(record.shape) != tuple(want_shape):
            raise PSPError(f"tensor {record.name!r} has shape {list(record.shape)}, "
                           f"the proxy needs {list(want_shape)}")
        floaty = {"float32", "float16", "bfloat16"}
        if record.dtype != want_dtype and not (want_dtype == "float32" and record.dtype in floaty):
            raise PSPError(f"tensor {record.name!r} has dtype {record.dtype}, "
                           f"the proxy needs {want_dtype}")
        tensor = record.to_tensor()
        if tensor.is_floating_point():
            tensor = tensor.to(torch.float32)
            if not torch.isfinite(tensor).all():
                raise PSPError(f"tensor {record.name!r} contains NaN or Inf")
        state[record.name] = tensor
    missing = sorted(set(spec) - set(state))
    if missing:
        raise PSPError(f"{len(missing)} proxy tensors missing, e.g. {missing[:3]}")
    return state


def load_proxy(proxy: SlimmableModel, state: Mapping[str, torch.Tensor]) -> SlimmableModel:
    """Copy checked tensors into a proxy made by ``make_proxy`` and put it in eval mode."""
    proxy.load_state_dict(dict(state), strict=True)
    return proxy.eval()


def build_proxy(architecture: str, width: float,
                records: Iterable[TensorRecord]) -> SlimmableModel:
    """The standalone proxy of (architecture, width) holding the pushed tensors, eval mode.

    Its logits and features equal ``full_model(x, width)`` in eval mode.
    """
    proxy = build_architecture(architecture).make_proxy(width)
    return load_proxy(proxy, records_to_state(records, spec_of(proxy)))
