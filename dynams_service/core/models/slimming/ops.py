"""What each op does to channels: the tables the channel analysis reads, and the tracer
that keeps the layers the conversion replaces as single graph nodes."""

from __future__ import annotations

import operator
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import fx, nn

ELEMENTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Mish, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid,
    nn.Tanh, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.Softplus, nn.PReLU, nn.Identity,
    nn.Dropout, nn.Dropout2d, nn.AlphaDropout,
)
SPATIAL_POOL_MODULES = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
ELEMENTWISE_FUNCTIONS: set[Callable] = {
    F.relu, torch.relu, F.relu6, F.gelu, F.silu, F.mish, F.hardswish, F.hardsigmoid,
    F.sigmoid, torch.sigmoid, torch.tanh, F.tanh, F.leaky_relu, F.elu, F.selu, F.softplus,
    F.dropout, F.dropout2d, torch.clamp, torch.clip, operator.neg, torch.exp, torch.abs,
}
ELEMENTWISE_METHODS = {
    "relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "clamp", "clamp_", "clip",
    "contiguous", "clone", "float", "half", "bfloat16", "to", "type_as", "detach", "abs", "exp",
    "neg",
}
SPATIAL_POOL_FUNCTIONS: set[Callable] = {
    F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d,
}
BINARY_FUNCTIONS: set[Callable] = {
    operator.add, operator.sub, operator.mul, operator.truediv, operator.iadd, operator.isub,
    operator.imul, operator.itruediv, torch.add, torch.sub, torch.mul, torch.div,
}
BINARY_METHODS = {"add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_"}
RESHAPE_FUNCTIONS: set[Callable] = {torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze}
RESHAPE_METHODS = {"flatten", "view", "reshape", "squeeze", "unsqueeze"}
PERMUTE_FUNCTIONS: set[Callable] = {torch.permute, torch.transpose, torch.movedim}
PERMUTE_METHODS = {"permute", "transpose", "movedim"}
REDUCE_FUNCTIONS: set[Callable] = {torch.mean, torch.sum, torch.amax}
REDUCE_METHODS = {"mean", "sum", "amax"}
METADATA_FUNCTIONS: set[Callable] = {getattr, operator.getitem, torch._assert, len}
METADATA_METHODS = {"size", "dim"}
TRAINING_DEPENDENT_LEAVES = ("StochasticDepth",)  # torchvision.ops: bakes self.training


def is_stochastic_depth(module: nn.Module) -> bool:
    return (type(module).__name__ in TRAINING_DEPENDENT_LEAVES
            and type(module).__module__.startswith("torchvision."))


class SlimTracer(fx.Tracer):
    """``fx.Tracer`` that keeps the layers the conversion replaces as single nodes:
    convolutions, linear layers and norms (subclasses included, e.g. torchvision's
    ``LayerNorm2d``), and torchvision's ``StochasticDepth``, whose traced body would bake
    the training flag into the graph."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, (nn.Conv2d, nn.Linear, nn.LayerNorm, nn.modules.batchnorm._BatchNorm,
                          nn.GroupNorm)):
            return True
        return is_stochastic_depth(m) or super().is_leaf_module(m, module_qualified_name)
