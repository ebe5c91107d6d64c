"""Reference slimmable models and the architecture registry that the selector builds from.

A model runs at any width it was built for (``model(x, width=0.25)``); its proxy at width
α is a standalone model of the sliced size, so the selector can rebuild it from raw
tensors alone (no pickle, no client code).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import Registry, load_plugin_modules
from .slimmable import (
    SlimmableConv2d,
    SlimmableLinear,
    SlimmableModule,
    SwitchableBatchNorm2d,
    check_widths,
    scaled_channels,
)

__all__ = [
    "SlimmableModel",
    "SlimCNN",
    "SlimResNet18",
    "register_architecture",
    "build_architecture",
    "architectures",
    "load_model_modules",
    "count_parameters",
    "count_macs",
]

DEFAULT_WIDTHS: tuple[float, ...] = (1.0, 0.5, 0.25)


class SlimmableModel(nn.Module):
    """Base class: ``forward_features`` to the penultimate layer, a linear ``head``.

    Subclasses store their constructor arguments (minus ``widths``) in ``self.config`` and
    implement ``proxy_config(width)``: the config of a standalone model of the width-α size.
    """

    head: SlimmableLinear
    config: dict[str, Any]
    widths: tuple[float, ...]

    def forward_features(self, x: torch.Tensor, width: float = 1.0) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, width: float = 1.0) -> torch.Tensor:
        return self.head(self.forward_features(x, width), width)

    def proxy_config(self, width: float) -> dict[str, Any]:
        raise NotImplementedError

    def check_width(self, width: float) -> float:
        """Return ``width`` as a float after checking that this model supports it."""
        if float(width) not in self.widths:
            raise ValueError(f"width {width} is not one this model was built for: {self.widths}")
        return float(width)

    def make_proxy(self, width: float) -> SlimmableModel:
        """A fresh standalone model of the width-α size (random weights, eval mode)."""
        self.check_width(width)
        proxy = type(self)(**self.proxy_config(width), widths=(1.0,))
        return proxy.eval()

    def slice_state(self, width: float) -> dict[str, torch.Tensor]:
        """The tensors the model uses at ``width``, named as in ``make_proxy(width)``."""
        self.check_width(width)
        state: dict[str, torch.Tensor] = {}
        for prefix, module in self.named_modules():
            own = list(module.named_parameters(recurse=False)) + list(
                module.named_buffers(recurse=False)
            )
            if isinstance(module, SlimmableModule):
                for name, tensor in module.slice_state(width).items():
                    state[f"{prefix}.{name}" if prefix else name] = tensor
            elif own and not _inside_slimmable(self, prefix):
                raise TypeError(
                    f"module {prefix!r} ({type(module).__name__}) holds tensors but is not "
                    "slimmable; build models from dynams_service.core.models.slimmable layers"
                )
        return state


def _inside_slimmable(model: nn.Module, prefix: str) -> bool:
    parts = prefix.split(".")
    for i in range(1, len(parts)):
        if isinstance(model.get_submodule(".".join(parts[:i])), SlimmableModule):
            return True
    return False


class SlimCNN(SlimmableModel):
    """A small CNN for square inputs (28×28 by default): two conv-BN-ReLU-pool blocks, an
    MLP layer, a head. ``input_size`` must be a multiple of 4.

    Example:
        >>> model = SlimCNN(num_classes=10)
        >>> model(torch.zeros(2, 1, 28, 28), width=0.25).shape
        torch.Size([2, 10])
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1,
                 channels: Sequence[int] = (32, 64), hidden: int = 128,
                 input_size: int = 28, widths: Sequence[float] = DEFAULT_WIDTHS) -> None:
        super().__init__()
        if input_size < 4 or input_size % 4:
            raise ValueError(f"input_size must be a positive multiple of 4, got {input_size}")
        c1, c2 = channels
        self.config = {"num_classes": num_classes, "in_channels": in_channels,
                       "channels": (c1, c2), "hidden": hidden, "input_size": input_size}
        self.widths = check_widths(widths)
        self.conv1 = SlimmableConv2d(in_channels, c1, 3, padding=1, bias=False, slim_in=False)
        self.bn1 = SwitchableBatchNorm2d(c1, self.widths)
        self.conv2 = SlimmableConv2d(c1, c2, 3, padding=1, bias=False)
        self.bn2 = SwitchableBatchNorm2d(c2, self.widths)
        pooled = (input_size // 4) ** 2
        self.fc = SlimmableLinear(c2 * pooled, hidden, in_group=pooled)
        self.head = SlimmableLinear(hidden, num_classes, slim_out=False)

    def forward_features(self, x: torch.Tensor, width: float = 1.0) -> torch.Tensor:
        # Channels-last activations: on CPU, max-pool runs ~9x and BatchNorm ~2x faster in
        # NHWC than NCHW, which makes a training step ~20 % faster at every width (and the
        # later layers follow the layout of their input). ReLU after the pool computes the
        # same function (max and ReLU commute) on a quarter of the elements.
        x = self.conv1(x, width).contiguous(memory_format=torch.channels_last)
        x = F.relu(F.max_pool2d(self.bn1(x, width), 2))
        x = F.relu(F.max_pool2d(self.bn2(self.conv2(x, width), width), 2))
        return F.relu(self.fc(x.flatten(1), width))

    def proxy_config(self, width: float) -> dict[str, Any]:
        c1, c2 = self.config["channels"]
        return {**self.config,
                "channels": (scaled_channels(c1, width), scaled_channels(c2, width)),
                "hidden": scaled_channels(self.config["hidden"], width)}


class _SlimBasicBlock(nn.Module):
    """ResNet basic block built from slimmable layers."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, widths: tuple[float, ...]) -> None:
        super().__init__()
        self.conv1 = SlimmableConv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = SwitchableBatchNorm2d(out_ch, widths)
        self.conv2 = SlimmableConv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.bn2 = SwitchableBatchNorm2d(out_ch, widths)
        self.shortcut_conv: SlimmableConv2d | None = None
        self.shortcut_bn: SwitchableBatchNorm2d | None = None
        if stride != 1 or in_ch != out_ch:
            self.shortcut_conv = SlimmableConv2d(in_ch, out_ch, 1, stride=stride, bias=False)
            self.shortcut_bn = SwitchableBatchNorm2d(out_ch, widths)

    def forward(self, x: torch.Tensor, width: float) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x, width), width))
        out = self.bn2(self.conv2(out, width), width)
        if self.shortcut_conv is not None and self.shortcut_bn is not None:
            x = self.shortcut_bn(self.shortcut_conv(x, width), width)
        return F.relu(out + x)


class SlimResNet18(SlimmableModel):
    """CIFAR-style ResNet-18 (3×3 stem, no max-pool) built from slimmable layers.

    Example:
        >>> model = SlimResNet18(num_classes=10)
        >>> model(torch.zeros(2, 3, 32, 32), width=0.5).shape
        torch.Size([2, 10])
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3,
                 channels: Sequence[int] = (64, 128, 256, 512),
                 widths: Sequence[float] = DEFAULT_WIDTHS) -> None:
        super().__init__()
        self.config = {"num_classes": num_classes, "in_channels": in_channels,
                       "channels": tuple(channels)}
        self.widths = check_widths(widths)
        self.stem = SlimmableConv2d(in_channels, channels[0], 3, padding=1, bias=False,
                                    slim_in=False)
        self.stem_bn = SwitchableBatchNorm2d(channels[0], self.widths)
        blocks = []
        in_ch = channels[0]
        for stage, out_ch in enumerate(channels):
            for i in range(2):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(_SlimBasicBlock(in_ch, out_ch, stride, self.widths))
                in_ch = out_ch
        self.blocks = nn.ModuleList(blocks)
        self.head = SlimmableLinear(channels[-1], num_classes, slim_out=False)

    def forward_features(self, x: torch.Tensor, width: float = 1.0) -> torch.Tensor:
        x = F.relu(self.stem_bn(self.stem(x, width), width))
        for block in self.blocks:
            x = block(x, width)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)

    def proxy_config(self, width: float) -> dict[str, Any]:
        return {**self.config,
                "channels": tuple(scaled_channels(c, width) for c in self.config["channels"])}


# --- registry -------------------------------------------------------------------------

_ARCHITECTURES: Registry[Callable[[], SlimmableModel]] = Registry("architecture")


def register_architecture(name: str, factory: Callable[[], SlimmableModel], *,
                          replace: bool = False) -> None:
    """Make ``name`` buildable by the selector; ``factory()`` returns the full model.

    Call it at import time of a module the operator names (``dynams serve --models mod``).
    """
    _ARCHITECTURES.register(name, factory, replace=replace)


def build_architecture(name: str) -> SlimmableModel:
    """A new full-width model of the registered architecture ``name`` (``UnknownName``
    otherwise, a ``KeyError``)."""
    return _ARCHITECTURES.get(name)()


def architectures() -> list[str]:
    """Names of all registered architectures."""
    return _ARCHITECTURES.names()


def load_model_modules(modules: Sequence[str]) -> None:
    """Import operator-named modules whose import registers architectures, decoders or scores."""
    load_plugin_modules(modules)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count_macs(model: SlimmableModel, input_shape: Sequence[int], width: float = 1.0) -> int:
    """Multiply-accumulates of one forward pass of a single sample at ``width``."""
    total = 0

    def conv_hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        k = module.kernel_size[0] * module.kernel_size[1]
        total += output[0].numel() * inputs[0].shape[1] * k

    def linear_hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        total += output[0].numel() * inputs[0].shape[-1]

    handles = []
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_hook(conv_hook))
        elif isinstance(module, nn.Linear):
            handles.append(module.register_forward_hook(linear_hook))
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, *input_shape), width)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return total


register_architecture("fmnist-cnn", lambda: SlimCNN(num_classes=10, in_channels=1))
register_architecture("cnn64-grey",
                      lambda: SlimCNN(num_classes=10, in_channels=1, input_size=64))
register_architecture("cifar-resnet18", lambda: SlimResNet18(num_classes=10, in_channels=3))
