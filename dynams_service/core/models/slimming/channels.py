"""Channel analysis: which tensors of a traced network shrink with the width, and how.

NOTE [ channel classes ]
A width-α sub-network keeps the leading channels of every layer. That is only one
network if every pair of tensors that meet (the two sides of a residual add, a
squeeze-excitation scale and the map it scales, a grouped convolution's input and output)
keeps the *same* channels. The analysis walks the ``torch.fx`` graph in order and tags each
tensor with its slimmed dimension and a *channel class*; a meeting unites two classes
(union-find). A class of C channels keeps ⌈α·C⌉ of them at width α, rounded up to a
multiple of the group size of any grouped convolution on it, so groups stay whole and
their number scales with the width. A flattened (C, h, w) map keeps whole channels: its
tag carries the h·w features per channel (``group``).

What has no consistent slice is refused with the module and the reason: a concatenation
along channels (the leading channels of the result are not the leading channels of each
part), attention heads, a flatten that interleaves channels, a reduction over channels,
any op not known to act channel by channel on a slimmed tensor.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..slimmable import check_widths
from . import ops
from .ops import is_stochastic_depth

__all__ = ["SlimmingError", "Tag", "ChannelClasses", "ModulePlan", "ChannelPlan", "analyse"]


class SlimmingError(ValueError):
    """A network that cannot be made slimmable; ``problems`` names each module and why."""

    def __init__(self, what: str, problems: Sequence[str]) -> None:
        shown = "\n  ".join(problems[:8])
        more = f"\n  … and {len(problems) - 8} more" if len(problems) > 8 else ""
        super().__init__(f"{what} cannot be made slimmable:\n  {shown}{more}")
        self.problems = list(problems)


@dataclass(frozen=True)
class Tag:
    """A slimmed tensor: dimension ``dim`` holds the channels of class ``cls``, each as
    ``group`` consecutive entries (1 unless a (C, h, w) map was flattened)."""

    dim: int
    cls: int
    group: int = 1


class ChannelClasses:
    """Union-find over channel classes; each has a channel count and a divisor (the
    group size its channels must be kept in)."""

    def __init__(self) -> None:
        self._parent: list[int] = []
        self._channels: list[int] = []
        self._divisor: list[int] = []

    def new(self, channels: int) -> int:
        self._parent.append(len(self._parent))
        self._channels.append(channels)
        self._divisor.append(1)
        return len(self._parent) - 1

    def find(self, cls: int) -> int:
        while self._parent[cls] != cls:
            self._parent[cls] = self._parent[self._parent[cls]]
            cls = self._parent[cls]
        return cls

    def channels(self, cls: int) -> int:
        return self._channels[self.find(cls)]

    def unite(self, a: int, b: int) -> bool:
        """Make a and b one class; False (and nothing changes) if their sizes differ."""
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return True
        if self._channels[ra] != self._channels[rb]:
            return False
        self._parent[rb] = ra
        self._divisor[ra] = math.lcm(self._divisor[ra], self._divisor[rb])
        return True

    def require_divisor(self, cls: int, divisor: int) -> None:
        root = self.find(cls)
        self._divisor[root] = math.lcm(self._divisor[root], divisor)

    def sizes(self, cls: int, widths: Sequence[float]) -> dict[float, int]:
        """Channels kept at each width: ⌈α·C / d⌉·d for the class's divisor d."""
        root = self.find(cls)
        c, d = self._channels[root], self._divisor[root]
        return {w: min(c, max(1, math.ceil(round(w * c / d, 9))) * d) for w in widths}

    def bad_divisors(self) -> list[tuple[int, int, int]]:
        """(class, channels, divisor) of every class whose size its divisor does not divide."""
        roots = {self.find(c) for c in range(len(self._parent))}
        return [(r, self._channels[r], self._divisor[r]) for r in sorted(roots)
                if self._channels[r] % self._divisor[r]]


@dataclass
class ModulePlan:
    """How one parameterised module is converted: its kind and the classes on each side
    (None: that side is not slimmed)."""

    kind: str  # "conv", "linear", "norm"
    in_cls: int | None = None
    in_group: int = 1
    out_cls: int | None = None


@dataclass
class ChannelPlan:
    """The analysis's result: per-module plans, parameters read directly and cut along a
    dimension, reshapes to rewrite as flattens, the classifier and the problems found."""

    classes: ChannelClasses
    modules: dict[str, ModulePlan] = field(default_factory=dict)
    # parameter read in the graph → (dim, class, group) it is cut along
    params: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    flattens: dict[fx.Node, tuple[int, int]] = field(default_factory=dict)
    head: str = ""
    problems: list[str] = field(default_factory=list)

    def sizes(self, cls: int | None, widths: Sequence[float], group: int = 1) -> dict | None:
        if cls is None:
            return None
        return {w: c * group for w, c in self.classes.sizes(cls, widths).items()}


def _same_forward(module: nn.Module, base: type[nn.Module]) -> bool:
    return type(module).forward is base.forward


def _shape(node: Any) -> tuple[int, ...] | None:
    if not isinstance(node, fx.Node):
        return None
    meta = node.meta.get("tensor_meta")
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _where(node: fx.Node, modules: dict[str, nn.Module], root: str) -> str:
    """The module a node belongs to, as the user knows it: ``path (Type)``."""
    if node.op == "call_module":
        return f"{node.target} ({type(modules[node.target]).__name__})"
    stack = node.meta.get("nn_module_stack") or {}
    if stack:
        path, kind = list(stack.values())[-1]
        name = kind.__name__ if isinstance(kind, type) else str(kind).split(".")[-1]
        return f"{path or root} ({name}), op {_op_name(node)}"
    return f"{root}, op {_op_name(node)}"


def _op_name(node: fx.Node) -> str:
    if node.op == "call_function":
        return getattr(node.target, "__name__", str(node.target))
    return str(node.target)


def _normalise_dims(dims: Any, ndim: int) -> list[int]:
    if isinstance(dims, int):
        dims = [dims]
    return [d % ndim for d in dims]


class _Walk:
    """One pass over the graph in order (NOTE [ channel classes ])."""

    def __init__(self, gm: fx.GraphModule, head: str, root: str) -> None:
        self.gm = gm
        self.root = root
        self.modules = dict(gm.named_modules())
        self.plan = ChannelPlan(classes=ChannelClasses(), head=head)
        self.tags: dict[fx.Node, Tag | None] = {}
        self.failed: set[fx.Node] = set()  # nodes with a problem, or downstream of one
        self.inherited = False  # the current node reads a failed one

    # -- helpers ----------------------------------------------------------------------------

    def problem(self, node: fx.Node, reason: str) -> None:
        """Record why ``node`` cannot be slimmed, unless it only inherits an earlier
        problem (then what it reports would follow from that one)."""
        self.failed.add(node)
        if not self.inherited:
            self.plan.problems.append(f"{_where(node, self.modules, self.root)}: {reason}")

    def tag(self, arg: Any) -> Tag | None:
        return self.tags.get(arg) if isinstance(arg, fx.Node) else None

    def tensor_args(self, node: fx.Node) -> list[fx.Node]:
        found: list[fx.Node] = []
        fx.node.map_arg((node.args, node.kwargs),
                        lambda a: found.append(a) if _shape(a) is not None else None)
        return found

    def slimmed_args(self, node: fx.Node) -> list[tuple[fx.Node, Tag]]:
        return [(a, t) for a in self.tensor_args(node) if (t := self.tag(a)) is not None]

    def module_plan(self, name: str, kind: str) -> ModulePlan:
        return self.plan.modules.setdefault(name, ModulePlan(kind))

    def unite(self, node: fx.Node, a: int, b: int, what: str) -> None:
        classes = self.plan.classes
        if not classes.unite(a, b):
            self.problem(node, f"{what} of {classes.channels(a)} and {classes.channels(b)} "
                               "channels")

    def channels_of(self, tag: Tag) -> int:
        return self.plan.classes.channels(tag.cls) * tag.group

    # -- the walk -------------------------------------------------------------------------

    def run(self) -> ChannelPlan:
        for node in self.gm.graph.nodes:
            self.inherited = any(a in self.failed for a in node.all_input_nodes)
            if self.inherited:
                self.failed.add(node)
            if node.op in ("placeholder", "get_attr"):
                self.tags[node] = None
            elif node.op == "call_module":
                self.tags[node] = self.call_module(node, self.modules[node.target])
            elif node.op in ("call_function", "call_method"):
                self.tags[node] = self.call(node)
            elif node.op == "output":
                self.output(node)
        return self.plan

    def output(self, node: fx.Node) -> None:
        for arg in self.tensor_args(node):
            if self.tag(arg) is not None:
                self.problem(node, "the model's output is slimmed (its classifier must keep "
                                   "all its outputs)")

    def call_module(self, node: fx.Node, module: nn.Module) -> Tag | None:
        slimmed = self.slimmed_args(node)
        first = slimmed[0][1] if slimmed else None
        if isinstance(module, nn.Conv2d):
            return self.conv(node, module, first)
        if isinstance(module, nn.Linear):
            return self.linear(node, module, first)
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm)):
            return self.norm(node, module, first)
        if not slimmed:  # an op on unslimmed tensors is the same at every width
            return None
        shape = _shape(node.args[0]) or ()
        if isinstance(module, ops.ELEMENTWISE_MODULES) or is_stochastic_depth(module):
            if isinstance(module, nn.PReLU) and module.num_parameters > 1:
                self.problem(node, "PReLU with one slope per channel has no slimming rule")
            return first
        if isinstance(module, ops.SPATIAL_POOL_MODULES):
            return self.spatial(node, first, shape)
        if isinstance(module, nn.Flatten):
            return self.reshape(node, first, shape, _shape(node))
        if isinstance(module, nn.MultiheadAttention):
            self.problem(node, "attention heads: their split of the channels does not follow "
                               "the width")
        elif isinstance(module, nn.GroupNorm):
            self.problem(node, "GroupNorm: its groups do not follow the width")
        else:
            self.problem(node, "no slimming rule for this layer")
        return first

    def conv(self, node: fx.Node, conv: nn.Conv2d, tag: Tag | None) -> Tag | None:
        if not _same_forward(conv, nn.Conv2d):
            self.problem(node, "a Conv2d subclass with its own forward; its slice is unknown")
        plan = self.module_plan(node.target, "conv")
        if tag is not None and (tag.dim != 1 or tag.group != 1
                                or self.channels_of(tag) != conv.in_channels):
            self.problem(node, f"input is slimmed along dim {tag.dim}, not its "
                               f"{conv.in_channels} channels")
            tag = None
        if tag is not None:
            plan.in_cls = tag.cls if plan.in_cls is None else plan.in_cls
            self.unite(node, plan.in_cls, tag.cls, "a layer called on inputs")
        if plan.out_cls is None:
            plan.out_cls = self.plan.classes.new(conv.out_channels)
        if conv.groups > 1:
            if tag is None:
                self.problem(node, "a grouped convolution on an unslimmed input")
            elif conv.in_channels != conv.out_channels:
                self.problem(node, "a grouped convolution whose output channels differ from "
                                   "its input's")
            else:
                self.unite(node, plan.in_cls, plan.out_cls, "grouped convolution")
                self.plan.classes.require_divisor(plan.out_cls, conv.in_channels // conv.groups)
        return Tag(1, plan.out_cls)

    def linear(self, node: fx.Node, linear: nn.Linear, tag: Tag | None) -> Tag | None:
        if not _same_forward(linear, nn.Linear):
            self.problem(node, "a Linear subclass with its own forward; its slice is unknown")
        plan = self.module_plan(node.target, "linear")
        ndim = len(_shape(node.args[0]) or (0,))
        if tag is not None and (tag.dim != ndim - 1
                                or self.channels_of(tag) != linear.in_features):
            self.problem(node, f"input is slimmed along dim {tag.dim}, not its "
                               f"{linear.in_features} features")
            tag = None
        if tag is not None:
            if plan.in_cls is None:
                plan.in_cls, plan.in_group = tag.cls, tag.group
            elif plan.in_group != tag.group:
                self.problem(node, "called on differently flattened inputs")
            self.unite(node, plan.in_cls, tag.cls, "a layer called on inputs")
        if node.target == self.plan.head:
            return None
        if plan.out_cls is None:
            plan.out_cls = self.plan.classes.new(linear.out_features)
        return Tag(ndim - 1, plan.out_cls)

    def norm(self, node: fx.Node, norm: nn.Module, tag: Tag | None) -> Tag | None:
        if tag is None:
            return None  # normalises an unslimmed tensor: the same at every width
        plan = self.module_plan(node.target, "norm")
        shape = _shape(node.args[0]) or ()
        if isinstance(norm, nn.LayerNorm):
            dim = self.layer_norm_dim(node, norm, shape)
            if dim is None:
                return tag
        else:
            if not _same_forward(norm, nn.modules.batchnorm._BatchNorm):
                self.problem(node, "a BatchNorm subclass with its own forward")
            dim = 1
        if tag.dim != dim or tag.group != 1:
            self.problem(node, f"normalises dim {dim}, but the tensor is slimmed along "
                               f"dim {tag.dim}")
            return tag
        if plan.in_cls is None:
            plan.in_cls = tag.cls
        self.unite(node, plan.in_cls, tag.cls, "a norm called on inputs")
        plan.out_cls = plan.in_cls
        return tag

    def layer_norm_dim(self, node: fx.Node, norm: nn.LayerNorm,
                       shape: tuple[int, ...]) -> int | None:
        """The dimension a LayerNorm normalises: the last one (``nn.LayerNorm``) or dim 1
        (a channels-first subclass such as torchvision's ``LayerNorm2d``), told apart by
        running the module once against both definitions."""
        if len(norm.normalized_shape) != 1:
            self.problem(node, "a LayerNorm over several dimensions")
            return None
        if _same_forward(norm, nn.LayerNorm):
            return len(shape) - 1
        x = torch.randn(2, *shape[1:], generator=torch.Generator().manual_seed(0)).to(
            norm.weight.device if norm.weight is not None else "cpu")
        channels = norm.normalized_shape[0]
        with torch.no_grad():
            got = norm(x)
            for dim in (len(shape) - 1, 1):
                if shape[dim] != channels:
                    continue
                want = F.layer_norm(x.movedim(dim, -1), norm.normalized_shape, norm.weight,
                                    norm.bias, norm.eps).movedim(-1, dim)
                if torch.allclose(got, want, atol=1e-5):
                    return dim
        self.problem(node, "a LayerNorm subclass that normalises neither the last dimension "
                           "nor dim 1")
        return None

    def call(self, node: fx.Node) -> Tag | None:
        target = node.target
        method = node.op == "call_method"
        if target is operator.getitem and _shape(node) is not None:
            return self.index(node)
        if (target in ops.METADATA_METHODS) if method else (target in ops.METADATA_FUNCTIONS):
            return None
        if (target in ops.BINARY_METHODS) if method else (target in ops.BINARY_FUNCTIONS):
            return self.binary(node)
        slimmed = self.slimmed_args(node)
        if not slimmed:
            return None
        first, tag = slimmed[0]
        shape = _shape(first) or ()
        if (target in ops.ELEMENTWISE_METHODS) if method else (target in ops.ELEMENTWISE_FUNCTIONS):
            return tag
        if not method and target in ops.SPATIAL_POOL_FUNCTIONS:
            return self.spatial(node, tag, shape)
        if (target in ops.RESHAPE_METHODS) if method else (target in ops.RESHAPE_FUNCTIONS):
            out = self.reshape(node, tag, shape, _shape(node))
            if target in ("view", "reshape", torch.reshape):
                self.plan.flattens[node] = self.merged_range(shape, _shape(node) or ())
            return out
        if (target in ops.PERMUTE_METHODS) if method else (target in ops.PERMUTE_FUNCTIONS):
            return self.permute(node, tag, len(shape))
        if (target in ops.REDUCE_METHODS) if method else (target in ops.REDUCE_FUNCTIONS):
            return self.reduce(node, tag, len(shape))
        if target is torch.cat:
            return self.cat(node)
        if "attention" in _op_name(node):
            self.problem(node, "attention heads: their split of the channels does not follow "
                               "the width")
        else:
            self.problem(node, "an op with no slimming rule on a slimmed tensor")
        return tag

    def index(self, node: fx.Node) -> Tag | None:
        """``x[i]``, ``x[:, 0]``: fine while the channels are left whole."""
        tag = self.tag(node.args[0])
        if tag is None:
            return None
        index = node.args[1] if isinstance(node.args[1], tuple) else (node.args[1],)
        if any(not isinstance(i, (int, slice)) for i in index) or (
                len(index) > tag.dim and index[tag.dim] != slice(None)):
            self.problem(node, "indexing that selects channels of a slimmed tensor")
            return tag
        dropped = sum(isinstance(i, int) for i in index[:tag.dim])
        return Tag(tag.dim - dropped, tag.cls, tag.group)

    def spatial(self, node: fx.Node, tag: Tag, shape: tuple[int, ...]) -> Tag:
        if tag.dim != 1 or len(shape) != 4:
            self.problem(node, "spatial pooling of a tensor not slimmed along channels")
        return tag

    def binary(self, node: fx.Node) -> Tag | None:
        out_shape = _shape(node)
        if out_shape is None:
            return None
        operands = [a for a in self.tensor_args(node)]
        result: Tag | None = None
        for arg in operands:
            tag = self.tag(arg)
            if tag is None:
                continue
            aligned = Tag(tag.dim + len(out_shape) - len(_shape(arg) or ()), tag.cls, tag.group)
            if result is None:
                result = aligned
            elif aligned.dim != result.dim or aligned.group != result.group:
                self.problem(node, "combines tensors slimmed along different dimensions")
            else:
                self.unite(node, result.cls, aligned.cls, "adds or multiplies tensors")
        if result is None:
            return None
        full = self.channels_of(result)
        for arg in operands:
            shape = _shape(arg) or ()
            if self.tag(arg) is not None:
                continue
            dim = result.dim - (len(out_shape) - len(shape))
            if dim < 0 or shape[dim] == 1:
                continue  # broadcast along the channels
            if shape[dim] != full or not self.slice_parameter(arg, dim, result):
                self.problem(node, "combines a slimmed tensor with a full-width one that is "
                                   "not a parameter")
        return result

    def slice_parameter(self, arg: fx.Node, dim: int, tag: Tag) -> bool:
        """Cut a parameter read in the graph (possibly through ``expand``) to ``tag``'s
        channels along ``dim`` of ``arg``; False if ``arg`` is not such a read."""
        while arg.op == "call_method" and arg.target == "expand":
            source = arg.args[0]
            dim -= len(_shape(arg) or ()) - len(_shape(source) or ())
            arg = source
        if arg.op != "get_attr" or dim < 0:
            return False
        self.plan.params[str(arg.target)] = (dim, tag.cls, tag.group)
        return True

    def reshape(self, node: fx.Node, tag: Tag, shape: tuple[int, ...],
                out: tuple[int, ...] | None) -> Tag | None:
        if out is None:
            return None
        if out == shape:
            return tag
        merged = self.merged_range(shape, out)
        if merged is None:
            self.problem(node, f"a reshape from {list(shape)} to {list(out)} that is not a "
                               "flatten of consecutive dimensions")
            return tag
        a, b = merged
        if tag.dim < a:
            return tag
        if tag.dim > b:
            return Tag(tag.dim - (b - a), tag.cls, tag.group)
        if tag.dim == a:
            return Tag(a, tag.cls, tag.group * math.prod(shape[a + 1:b + 1]))
        self.problem(node, "a flatten that puts other dimensions before the channels "
                           "(the channels would be interleaved)")
        return tag

    @staticmethod
    def merged_range(shape: Sequence[int], out: Sequence[int]) -> tuple[int, int] | None:
        """(a, b) with ``out == shape[:a] + (prod(shape[a:b+1]),) + shape[b+1:]``, else None."""
        for a in range(len(shape)):
            for b in range(a, len(shape)):
                merged = (*shape[:a], math.prod(shape[a:b + 1]), *shape[b + 1:])
                if tuple(merged) == tuple(out):
                    return a, b
        return None

    def permute(self, node: fx.Node, tag: Tag, ndim: int) -> Tag:
        args = list(node.args[1:]) + list(node.kwargs.values())
        if node.target in ("permute", torch.permute):
            dims = args[0] if len(args) == 1 and isinstance(args[0], (list, tuple)) else args
            order = _normalise_dims(list(dims), ndim)
        else:  # transpose / movedim of two dimensions
            d0, d1 = _normalise_dims(args[:2], ndim)
            order = list(range(ndim))
            if node.target in ("transpose", torch.transpose):
                order[d0], order[d1] = d1, d0
            else:
                order.remove(d0)
                order.insert(d1, d0)
        return Tag(order.index(tag.dim), tag.cls, tag.group)

    def reduce(self, node: fx.Node, tag: Tag, ndim: int) -> Tag | None:
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        keepdim = node.kwargs.get("keepdim", node.args[2] if len(node.args) > 2 else False)
        if dims is None:
            self.problem(node, "a reduction over all dimensions of a slimmed tensor")
            return None
        dims = _normalise_dims(dims, ndim)
        if tag.dim in dims:
            self.problem(node, "a reduction over channels")
            return tag
        if keepdim:
            return tag
        return Tag(tag.dim - sum(d < tag.dim for d in dims), tag.cls, tag.group)

    def cat(self, node: fx.Node) -> Tag | None:
        parts = node.args[0]
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        ndim = len(_shape(node) or ())
        tags = [self.tag(p) for p in parts]
        slimmed = [t for t in tags if t is not None]
        if any(t.dim == dim % ndim for t in slimmed):
            self.problem(node, "a concatenation along channels (the result's leading "
                               "channels are not each part's)")
            return slimmed[0]
        for t in slimmed[1:]:
            if t.dim != slimmed[0].dim:
                self.problem(node, "concatenates tensors slimmed along different dimensions")
            self.unite(node, slimmed[0].cls, t.cls, "concatenates tensors")
        for part, tag in zip(parts, tags, strict=True):
            if tag is None and not self.slice_parameter(part, slimmed[0].dim, slimmed[0]):
                self.problem(node, "concatenates a slimmed tensor with an unslimmed one")
        return slimmed[0]


def find_head(gm: fx.GraphModule, root: str = "model") -> tuple[str, list[str]]:
    """The classifier: the ``nn.Linear`` whose output is the model's only output."""
    output = next(n for n in gm.graph.nodes if n.op == "output")
    result = output.args[0]
    modules = dict(gm.named_modules())
    if not isinstance(result, fx.Node):
        return "", [f"the model returns {type(result).__name__}; DynaMS needs one tensor of "
                    "logits"]
    if result.op != "call_module" or not isinstance(modules[result.target], nn.Linear):
        return "", [f"{_where(result, modules, root)}: the model's output must come straight from "
                    "an nn.Linear classifier"]
    if len(result.users) != 1:
        return "", [f"{_where(result, modules, root)}: the classifier's output is used inside the "
                    "model too"]
    return str(result.target), []


def analyse(gm: fx.GraphModule, widths: Iterable[float], root: str = "model") -> ChannelPlan:
    """The channel plan of a traced, shape-propagated graph (``tensor_meta`` on every
    tensor node); ``plan.problems`` lists what cannot be slimmed."""
    check_widths(tuple(widths))
    head, problems = find_head(gm, root)
    if problems:
        plan = ChannelPlan(classes=ChannelClasses())
        plan.problems = problems
        return plan
    plan = _Walk(gm, head, root).run()
    for _, channels, divisor in plan.classes.bad_divisors():
        plan.problems.append(f"{channels} channels must be kept in groups of {divisor} "
                             "(grouped convolutions of different group sizes meet)")
    return plan
