"""``make_slimmable``: an ordinary ``nn.Module`` → the same network, runnable at any width.

The model is traced with ``torch.fx``, its shapes propagated on an example input, and its
channels analysed (NOTE [ channel classes ] in ``channels.py``); convolutions, linear
layers and norms are replaced by width-aware layers that hold the *same* parameter
tensors, and the graph gains a ``width`` input. At width 1.0 it computes what the
original computes; at width α it is the slimmed sub-network whose standalone copy
(``make_proxy``) the selector rebuilds from raw tensors. Every conversion ends with a dry
run at each width, so a model that converts is one that scores.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from ..models import SlimmableModel
from ..slimmable import SlimmableModule, check_widths
from .channels import ChannelPlan, SlimmingError, analyse
from .layers import Sizes, SwitchableNorm, WidthConv2d, WidthLinear, WidthNarrow, size_at
from .ops import SlimTracer

__all__ = ["make_slimmable", "SlimmedNetwork", "SlimmingError"]


class SlimmedNetwork(SlimmableModel):
    """A converted network: ``body`` (the traced graph up to the classifier's input, with
    a ``width`` argument) and ``head`` (the classifier, all outputs kept).

    ``model(x)`` is the original network; ``model(x, width=α)`` its width-α sub-network.
    Built by ``make_slimmable``; parameters are those of the model it was made from.
    """

    head: WidthLinear

    def __init__(self, body: fx.GraphModule, head: WidthLinear, widths: Sequence[float],
                 param_slices: dict[str, tuple[int, Sizes]], name: str) -> None:
        super().__init__()
        self.body = body
        self.head = head
        self.widths = tuple(widths)
        self.config = {"source": name}
        self.param_slices = param_slices  # body parameter → (dim, channels per width)

    def forward_features(self, x: torch.Tensor, width: float = 1.0) -> torch.Tensor:
        return self.body(x, width=self.check_width(width))

    def slice_state(self, width: float) -> dict[str, torch.Tensor]:
        """The tensors used at ``width``, named as in ``make_proxy(width)``."""
        width = self.check_width(width)
        state: dict[str, torch.Tensor] = {}
        inside: list[str] = []
        for prefix, module in self.named_modules():
            if any(prefix.startswith(p + ".") for p in inside):
                continue
            if isinstance(module, SlimmableModule):
                inside.append(prefix)
                for name, tensor in module.slice_state(width).items():
                    state[f"{prefix}.{name}" if prefix else name] = tensor
                continue
            own = list(module.named_parameters(recurse=False)) + list(
                module.named_buffers(recurse=False))
            for name, tensor in own:
                full = f"{prefix}.{name}" if prefix else name
                if full in self.param_slices:
                    dim, sizes = self.param_slices[full]
                    tensor = tensor.narrow(dim, 0, size_at(sizes, width))
                state[full] = tensor
        return state

    def make_proxy(self, width: float) -> SlimmedNetwork:
        """The standalone width-``width`` network (a copy of the slice, eval mode), whose
        ``state_dict`` names and shapes are those of ``slice_state(width)``."""
        width = self.check_width(width)
        memo: dict[int, object] = {}  # copy only the slices, never the full tensors
        for module in self.modules():
            if isinstance(module, (WidthConv2d, WidthLinear)):
                for name, part in module.slice_state(width).items():
                    memo[id(getattr(module, name))] = _copy_of(getattr(module, name), part)
        for name, (dim, sizes) in self.param_slices.items():
            full = _tensor(self, name)
            memo[id(full)] = _copy_of(full, full.narrow(dim, 0, size_at(sizes, width)))
        proxy = copy.deepcopy(self, memo)
        for module in proxy.modules():
            if isinstance(module, (WidthConv2d, WidthLinear, SwitchableNorm, WidthNarrow)):
                module.narrow_(width)
        proxy.widths = (1.0,)
        proxy.param_slices = {name: (dim, {1.0: size_at(sizes, width)})
                              for name, (dim, sizes) in self.param_slices.items()}
        return proxy.eval()


def _tensor(module: nn.Module, name: str) -> torch.Tensor:
    """The parameter or buffer ``name`` of ``module``."""
    try:
        return module.get_parameter(name)
    except AttributeError:
        return module.get_buffer(name)


def _copy_of(full: torch.Tensor, part: torch.Tensor) -> torch.Tensor:
    cut = part.detach().clone()
    return nn.Parameter(cut, requires_grad=full.requires_grad) \
        if isinstance(full, nn.Parameter) else cut


def make_slimmable(model: nn.Module, widths: Sequence[float] = (1.0, 0.25), *,
                   input_shape: Sequence[int] = (3, 224, 224),
                   verify: bool = True) -> SlimmedNetwork:
    """``model`` as a network that also runs at each of ``widths`` (1.0 included).

    Every layer keeps its leading ⌈α·C⌉ channels at width α (rounded up to whole groups
    of a grouped convolution), BatchNorm and LayerNorm get their own parameters per width,
    the classifier keeps all its outputs. The result holds ``model``'s own parameter
    tensors (train the result, not ``model``; load pretrained weights before converting)
    and equals it at width 1.0. ``input_shape`` is one sample's (C, H, W): the shapes the
    analysis and the dry run see. What cannot be sliced consistently raises
    ``SlimmingError`` naming each module and the reason; ``verify`` runs the result at
    each width against ``model`` and against its standalone proxy before returning it.

    Example:
        >>> from torchvision.models import resnet18  # doctest: +SKIP
        >>> net = make_slimmable(resnet18(num_classes=10), widths=(1.0, 0.25))  # doctest: +SKIP
        >>> net(torch.zeros(2, 3, 224, 224), width=0.25).shape  # doctest: +SKIP
        torch.Size([2, 10])
    """
    widths = check_widths(widths)
    name = type(model).__name__
    was_training = model.training
    device = next(model.parameters(), torch.empty(0)).device
    example = torch.randn(2, *input_shape, generator=torch.Generator().manual_seed(0)).to(device)
    try:
        gm = _trace(model, name)
        gm.eval()
        try:
            with torch.no_grad():
                ShapeProp(gm).propagate(example)
        except Exception as exc:  # noqa: BLE001 - any failure of the user's forward
            raise SlimmingError(name, [f"running it on an input of shape {list(input_shape)} "
                                       f"failed: {_first_line(exc)}"]) from exc
        plan = analyse(gm, widths, name)
        if plan.problems:
            raise SlimmingError(name, plan.problems)
        net = _build(gm, plan, widths, name)
        net.train(was_training)
        if verify:
            _verify(model, net, example)
        return net
    finally:
        model.train(was_training)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300] if text else ''}"


def _trace(model: nn.Module, name: str) -> fx.GraphModule:
    """Trace ``model`` in training and in eval mode; both must give the same graph (a
    forward that branches on ``self.training`` outside known layers would be baked in)."""
    codes = []
    graph = None
    for training in (True, False):
        model.train(training)
        tracer = SlimTracer()
        try:
            graph = tracer.trace(model)
        except Exception as exc:  # noqa: BLE001 - fx raises many kinds
            raise SlimmingError(name, [f"torch.fx cannot trace it: {_first_line(exc)}"]) from exc
        codes.append(graph.python_code("self").src)
    if codes[0] != codes[1]:
        raise SlimmingError(name, ["its forward branches on self.training outside the layers "
                                   "the conversion knows (the traced graphs differ)"])
    return fx.GraphModule(model, graph, class_name=name)


def _build(gm: fx.GraphModule, plan: ChannelPlan, widths: tuple[float, ...],
           name: str) -> SlimmedNetwork:
    """Rewrite the traced graph into a ``SlimmedNetwork`` (see the module docstring)."""
    graph = gm.graph
    nodes = list(graph.nodes)
    placeholders = [n for n in nodes if n.op == "placeholder"]
    with graph.inserting_after(placeholders[-1]):
        width = graph.placeholder("width", default_value=1.0)
    for node in nodes:
        if node.op == "call_module" and node.target in plan.modules:
            node.args = (node.args[0], width, *node.args[1:])
    for target, module_plan in plan.modules.items():
        old = gm.get_submodule(target)
        in_sizes = plan.sizes(module_plan.in_cls, widths, module_plan.in_group)
        out_sizes = plan.sizes(module_plan.out_cls, widths)
        if module_plan.kind == "conv":
            new: nn.Module = WidthConv2d.from_conv(old, in_sizes, out_sizes)
        elif module_plan.kind == "linear":
            new = WidthLinear.from_linear(old, in_sizes, out_sizes)
        else:
            new = SwitchableNorm(old, in_sizes)
        _set_submodule(gm, target, new)
    param_slices: dict[str, tuple[int, Sizes]] = {}
    for index, (target, (dim, cls, group)) in enumerate(sorted(plan.params.items())):
        sizes = plan.sizes(cls, widths, group)
        param_slices[f"body.{target}"] = (dim, sizes)
        narrow_name = f"dynams_narrow_{index}"
        gm.add_submodule(narrow_name, WidthNarrow(dim, sizes))
        for node in nodes:
            if node.op == "get_attr" and node.target == target:
                with graph.inserting_after(node):
                    cut = graph.call_module(narrow_name, (node, width))
                node.replace_all_uses_with(cut, delete_user_cb=lambda user, c=cut: user is not c)
    for node, merged in plan.flattens.items():
        if merged is None:
            continue
        with graph.inserting_after(node):
            flat = graph.call_function(torch.flatten, (node.args[0], *merged))
        node.replace_all_uses_with(flat)
        graph.erase_node(node)
    output = next(n for n in graph.nodes if n.op == "output")
    head_node = output.args[0]
    output.args = (head_node.args[0],)
    graph.erase_node(head_node)
    head = gm.get_submodule(plan.head)
    graph.eliminate_dead_code()
    graph.lint()
    gm.recompile()
    gm.delete_all_unused_submodules()
    return SlimmedNetwork(gm, head, widths, param_slices, name)


def _set_submodule(root: nn.Module, target: str, module: nn.Module) -> None:
    parent, _, leaf = target.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)


def _verify(model: nn.Module, net: SlimmedNetwork, x: torch.Tensor) -> None:
    """Width 1.0 equals ``model``; every width runs, and its standalone proxy loaded with
    ``slice_state`` computes the same logits."""
    name = net.config["source"]
    modes = [(m, m.training) for m in (model, net)]
    try:
        model.eval()
        net.eval()
        with torch.no_grad():
            reference = model(x)
            full = net(x)
            if full.shape != reference.shape or not torch.allclose(full, reference,
                                                                   rtol=1e-4, atol=1e-5):
                raise SlimmingError(name, ["at width 1.0 it differs from the original model"])
            for width in net.widths:
                if width == 1.0:
                    continue
                try:
                    logits = net(x, width)
                    proxy = net.make_proxy(width)
                    proxy.load_state_dict(net.slice_state(width), strict=True)
                    standalone = proxy(x)
                except (RuntimeError, ValueError) as exc:
                    raise SlimmingError(name, [f"running it at width {width} failed: "
                                               f"{_first_line(exc)}"]) from exc
                if logits.shape != reference.shape or not torch.allclose(
                        standalone, logits, rtol=1e-4, atol=1e-4):
                    raise SlimmingError(name, [f"at width {width} its standalone proxy "
                                               "differs from the slice"])
    finally:
        for module, training in modes:
            module.train(training)
