"""Layers of a converted network: an ordinary layer's own parameters, run at any width.

Each layer holds the parameters of the layer it replaces (the same tensors, not copies)
and a table of how many leading channels it keeps at each supported width. The tables
come from the conversion's channel analysis (``channels.py``), so that every tensor that
must agree with another one (the two sides of a residual add, a grouped convolution's
groups) has the same size at every width. ``forward(x, width)`` slices and computes;
``slice_state(width)`` exports what the width uses under the names of a standalone
layer; ``narrow_(width)`` turns the layer into that standalone layer (the proxy).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..slimmable import SlimmableModule

__all__ = ["Sizes", "WidthConv2d", "WidthLinear", "SwitchableNorm", "WidthNarrow", "size_at"]

Sizes = dict[float, int]  # width → channels kept (features, for a flattened map)


def size_at(sizes: Mapping[float, int], width: float) -> int:
    """The entry of ``sizes`` for ``width``; a ValueError names the supported widths."""
    try:
        return sizes[width]
    except KeyError:
        raise ValueError(f"width {width} is not one this model was built for: "
                         f"{tuple(sizes)}") from None


def _shrunk(tensor: torch.Tensor, dims: Sequence[int]) -> nn.Parameter | torch.Tensor:
    """A copy of ``tensor`` cut to ``dims`` leading entries per dimension (a parameter
    stays a parameter)."""
    cut = tensor.detach()[tuple(slice(0, d) for d in dims)].clone()
    if isinstance(tensor, nn.Parameter):
        return nn.Parameter(cut, requires_grad=tensor.requires_grad)
    return cut


class WidthConv2d(SlimmableModule, nn.Conv2d):
    """``nn.Conv2d`` keeping ``out_sizes[w]`` output and ``in_sizes[w]`` input channels.

    ``in_sizes`` is None when the input is not slimmed (the stem reads all the image's
    channels). A grouped or depthwise convolution keeps its leading groups whole: the
    analysis makes both sides a multiple of the group size, and the group count at width
    w is ``in_sizes[w] / (in_channels / groups)``.
    """

    in_sizes: Sizes | None
    out_sizes: Sizes

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, in_sizes: Sizes | None, out_sizes: Sizes) -> WidthConv2d:
        new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                  padding=conv.padding, dilation=conv.dilation, groups=conv.groups,
                  bias=conv.bias is not None, padding_mode=conv.padding_mode, device="meta")
        new.weight = conv.weight
        new.bias = conv.bias
        new.in_sizes, new.out_sizes = in_sizes, dict(out_sizes)
        if in_sizes is not None:
            new.in_sizes = dict(in_sizes)
        new.train(conv.training)
        return new

    def channels(self, width: float) -> tuple[int, int, int]:
        """(input channels, output channels, groups) at ``width``."""
        c_out = size_at(self.out_sizes, width)
        if self.in_sizes is None:
            return self.in_channels, c_out, self.groups
        c_in = size_at(self.in_sizes, width)
        groups = c_in // (self.in_channels // self.groups) if self.groups > 1 else 1
        return c_in, c_out, groups

    def forward(self, x: torch.Tensor, width: float = 1.0) -> torch.Tensor:  # type: ignore[override]
        if width == 1.0:
            return self._conv_forward(x, self.weight, self.bias)
        c_in, c_out, groups = self.channels(width)
        if x.shape[1] != c_in:
            raise ValueError(f"expected {c_in} input channels at width {width}, got {x.shape[1]}")
        weight, bias = self._sliced(c_in, c_out, groups)
        if self.padding_mode != "zeros":
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return F.conv2d(x, weight, bias, self.stride, 0, self.dilation, groups)
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, groups)

    def _sliced(self, c_in: int, c_out: int,
                groups: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        # A grouped weight is (out, in / groups, k, k): its input side is per group.
        weight = self.weight[:c_out] if self.groups > 1 else self.weight[:c_out, :c_in]
        return weight, None if self.bias is None else self.bias[:c_out]

    def slice_state(self, width: float) -> dict[str, torch.Tensor]:
        weight, bias = self._sliced(*self.channels(width))
        return {"weight": weight} if bias is None else {"weight": weight, "bias": bias}

    def narrow_(self, width: float) -> None:
        """Become the standalone layer of the width-``width`` proxy (copies the slice)."""
        c_in, c_out, groups = self.channels(width)
        state = self.slice_state(width)
        self.weight = _shrunk(self.weight, state["weight"].shape)
        if self.bias is not None:
            self.bias = _shrunk(self.bias, (c_out,))
        self.in_channels, self.out_channels, self.groups = c_in, c_out, groups
        self.out_sizes = {1.0: c_out}
        self.in_sizes = None if self.in_sizes is None else {1.0: c_in}


class WidthLinear(SlimmableModule, nn.Linear):
    """``nn.Linear`` reading ``in_sizes[w]`` features, writing ``out_sizes[w]`` of them.

    ``out_sizes`` is None for the classifier, which keeps all its outputs; ``in_sizes`` is
    None when its input is not slimmed. A flattened (channels, h, w) map keeps whole
    channels: its table counts features, channels × h·w.
    """

    in_sizes: Sizes | None
    out_sizes: Sizes | None

    @classmethod
    def from_linear(cls, linear: nn.Linear, in_sizes: Sizes | None,
                    out_sizes: Sizes | None) -> WidthLinear:
        new = cls(linear.in_features, linear.out_features, bias=linear.bias is not None,
                  device="meta")
        new.weight = linear.weight
        new.bias = linear.bias
        new.in_sizes = None if in_sizes is None else dict(in_sizes)
        new.out_sizes = None if out_sizes is None else dict(out_sizes)
        new.train(linear.training)
        return new

    def features(self, width: float) -> tuple[int, int]:
        """(input, output) features at ``width``."""
        f_in = self.in_features if self.in_sizes is None else size_at(self.in_sizes, width)
        f_out = self.out_features if self.out_sizes is None else size_at(self.out_sizes, width)
        return f_in, f_out

    def forward(self, x: torch.Tensor, width: float = 1.0) -> torch.Tensor:  # type: ignore[override]
        if width == 1.0:
            return F.linear(x, self.weight, self.bias)
        f_in, f_out = self.features(width)
        if x.shape[-1] != f_in:
            raise ValueError(f"expected {f_in} input features at width {width}, got {x.shape[-1]}")
        bias = None if self.bias is None else self.bias[:f_out]
        return F.linear(x, self.weight[:f_out, :f_in], bias)

    def slice_state(self, width: float) -> dict[str, torch.Tensor]:
        f_in, f_out = self.features(width)
        state = {"weight": self.weight[:f_out, :f_in]}
        if self.bias is not None:
            state["bias"] = self.bias[:f_out]
        return state

    def narrow_(self, width: float) -> None:
        """Become the standalone layer of the width-``width`` proxy (copies the slice)."""
        f_in, f_out = self.features(width)
        self.weight = _shrunk(self.weight, (f_out, f_in))
        if self.bias is not None:
            self.bias = _shrunk(self.bias, (f_out,))
        self.in_features, self.out_features = f_in, f_out
        self.in_sizes = None if self.in_sizes is None else {1.0: f_in}
        self.out_sizes = None if self.out_sizes is None else {1.0: f_out}


def _norm_of_size(norm: nn.Module, channels: int) -> nn.Module:
    """A copy of a BatchNorm or LayerNorm cut to its leading ``channels``: its affine
    parameters and running statistics are those channels' (a good start for a pretrained
    model), its size attribute says ``channels``."""
    full = norm.num_features if hasattr(norm, "num_features") else norm.normalized_shape[0]
    memo: dict[int, object] = {}
    for tensor in list(norm.parameters(recurse=False)) + list(norm.buffers(recurse=False)):
        if tensor.dim() >= 1 and tensor.shape[0] == full:
            memo[id(tensor)] = _shrunk(tensor, (channels,))
    small = copy.deepcopy(norm, memo)
    if hasattr(small, "num_features"):
        small.num_features = channels
    else:
        small.normalized_shape = (channels,)
    return small


class SwitchableNorm(SlimmableModule):
    """A BatchNorm or LayerNorm with its own statistics and affine parameters per width.

    Sub-networks of different widths see differently distributed activations (slimmable
    networks, Yu et al. 2019), so each width has its own norm; the width-1.0 one is the
    original module itself, the others start as copies of its leading channels.
    """

    def __init__(self, norm: nn.Module, sizes: Sizes) -> None:
        super().__init__()
        self.widths = tuple(sizes)
        self.norms = nn.ModuleList(norm if w == 1.0 else _norm_of_size(norm, sizes[w])
                                   for w in self.widths)

    def _index(self, width: float) -> int:
        try:
            return self.widths.index(width)
        except ValueError:
            raise ValueError(f"width {width} is not one this model was built for: "
                             f"{self.widths}") from None

    def forward(self, x: torch.Tensor, width: float = 1.0) -> torch.Tensor:
        return self.norms[self._index(width)](x)

    def slice_state(self, width: float) -> dict[str, torch.Tensor]:
        norm = self.norms[self._index(width)]
        return {f"norms.0.{name}": t for name, t in norm.state_dict(keep_vars=True).items()}

    def narrow_(self, width: float) -> None:
        """Keep only the width-``width`` norm, as the proxy's only one."""
        self.norms = nn.ModuleList([self.norms[self._index(width)]])
        self.widths = (1.0,)


class WidthNarrow(nn.Module):
    """Cuts a tensor read straight from a parameter (e.g. ConvNeXt's ``layer_scale``) to
    the channels kept at the width, along ``dim``."""

    def __init__(self, dim: int, sizes: Sizes) -> None:
        super().__init__()
        self.dim = dim
        self.sizes = dict(sizes)

    def forward(self, tensor: torch.Tensor, width: float = 1.0) -> torch.Tensor:
        return tensor.narrow(self.dim, 0, size_at(self.sizes, width))

    def narrow_(self, width: float) -> None:
        self.sizes = {1.0: size_at(self.sizes, width)}

    def extra_repr(self) -> str:
        return f"dim={self.dim}, sizes={self.sizes}"
