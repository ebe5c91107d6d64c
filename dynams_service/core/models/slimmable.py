"""Slimmable layers: one set of weights, run at any width by keeping leading channels.

A layer at width α uses its leading ⌈α·C⌉ output channels (and as many input channels as
its input has), so the proxy at α is literally a slice of the full model. BatchNorm is
switchable: each supported width has its own statistics and affine parameters, as in
slimmable networks (Yu et al. 2019).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "SlimmableConv2d",
    "SlimmableLinear",
    "SwitchableBatchNorm2d",
    "SlimmableModule",
    "scaled_channels",
    "check_widths",
]


def scaled_channels(channels: int, width: float) -> int:
    """⌈width·channels⌉, at least 1; robust to float noise (0.3·10 → 3, not 4)."""
    return max(1, math.ceil(round(width * channels, 9)))


def check_widths(widths: Sequence[float]) -> tuple[float, ...]:
    """Validate a set of supported widths: each in (0, 1], 1.0 included, no duplicates."""
    ws = tuple(float(w) for w in widths)
    bad = [w for w in ws if not 0 < w <= 1]
    if bad:
        raise ValueError(f"widths must be in (0, 1], got {bad}")
    if 1.0 not in ws:
        raise ValueError(f"widths must include 1.0 (the full model), got {ws}")
    if len(set(ws)) != len(ws):
        raise ValueError(f"widths must be distinct, got {ws}")
    return ws


class SlimmableModule(nn.Module):
    """A layer that can export the weights it uses at a width under its local names."""

    def slice_state(self, width: float) -> dict[str, torch.Tensor]:
        """Tensors this layer uses at ``width``, keyed as in a standalone layer of that size."""
        raise NotImplementedError


class SlimmableConv2d(SlimmableModule, nn.Conv2d):
    """Conv2d whose output (and, if ``slim_in``, input) channels shrink with the width."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *,
                 stride: int = 1, padding: int = 0, bias: bool = True,
                 slim_in: bool = True, slim_out: bool = True) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride,
                         padding=padding, bias=bias)
        self.slim_in = slim_in
        self.slim_out = slim_out

    def channels(self, width: float) -> tuple[int, int]:
        """(in, out) channels used at ``width``."""
        c_in = scaled_channels(self.in_channels, width) if self.slim_in else self.in_channels
        c_out = scaled_channels(self.out_channels, width) if self.slim_out else self.out_channels
        return c_in, c_out

    def forward(self, x: torch.Tensor, width: float = 1.0) -> torch.Tensor:  # type: ignore[override]
        c_in, c_out = self.channels(width)
        if x.shape[1] != c_in:
            raise ValueError(f"expected {c_in} input channels at width {width}, got {x.shape[1]}")
        weight = self.weight[:c_out, :c_in]
        bias = self.bias[:c_out] if self.bias is not None else None
        return F.conv2d(x, weight, bias, self.stride, self.padding)

    def slice_state(self, width: float) -> dict[str, torch.Tensor]:
        c_in, c_out = self.channels(width)
        state = {"weight": self.weight[:c_out, :c_in]}
        if self.bias is not None:
            state["bias"] = self.bias[:c_out]
        return state


class SlimmableLinear(SlimmableModule, nn.Linear):
    """Linear layer whose input (and, if ``slim_out``, output) features shrink with width."""

    def __init__(self, in_features: int, out_features: int, *, bias: bool = True,
                 slim_in: bool = True, slim_out: bool = True, in_group: int = 1) -> None:
        super().__init__(in_features, out_features, bias=bias)
        if in_features % in_group:
            raise ValueError(f"in_features {in_features} must be a multiple of in_group {in_group}")
        self.slim_in = slim_in
        self.slim_out = slim_out
        self.in_group = in_group

    def features(self, width: float) -> tuple[int, int]:
        """(in, out) features used at ``width``.

        With ``in_group = g`` the input is a flattened (channels, g) map, so the leading
        ⌈α·channels⌉ channels are kept whole: ``⌈α·in/g⌉·g`` features.
        """
        f_in = self.in_features
        if self.slim_in:
            f_in = scaled_channels(self.in_features // self.in_group, width) * self.in_group
        f_out = scaled_channels(self.out_features, width) if self.slim_out else self.out_features
        return f_in, f_out

    def forward(self, x: torch.Tensor, width: float = 1.0) -> torch.Tensor:  # type: ignore[override]
        f_in, f_out = self.features(width)
        if x.shape[-1] != f_in:
            raise ValueError(f"expected {f_in} input features at width {width}, got {x.shape[-1]}")
        bias = self.bias[:f_out] if self.bias is not None else None
        return F.linear(x, self.weight[:f_out, :f_in], bias)

    def slice_state(self, width: float) -> dict[str, torch.Tensor]:
        f_in, f_out = self.features(width)
        state = {"weight": self.weight[:f_out, :f_in]}
        if self.bias is not None:
            state["bias"] = self.bias[:f_out]
        return state


class SwitchableBatchNorm2d(SlimmableModule):
    """BatchNorm2d with private statistics and affine parameters for each supported width.

    Sub-networks of different widths see differently distributed activations, so sharing
    running statistics between them would make every width's eval-mode output wrong.
    """

    def __init__(self, num_features: int, widths: Sequence[float]) -> None:
        super().__init__()
        self.widths = check_widths(widths)
        self.num_features = num_features
        self.bn = nn.ModuleList(
            nn.BatchNorm2d(scaled_channels(num_features, w)) for w in self.widths
        )

    def _index(self, width: float) -> int:
        try:
            return self.widths.index(float(width))
        except ValueError:
            raise ValueError(
                f"width {width} is not one this model was built for: {self.widths}"
            ) from None

    def forward(self, x: torch.Tensor, width: float = 1.0) -> torch.Tensor:
        return self.bn[self._index(width)](x)

    def slice_state(self, width: float) -> dict[str, torch.Tensor]:
        bn = self.bn[self._index(width)]
        return {f"bn.0.{name}": t for name, t in bn.state_dict(keep_vars=True).items()}
