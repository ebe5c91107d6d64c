"""make_slimmable on torchvision's own model definitions (random weights, no download), and
on small networks that each exercise one rule or one refusal."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision.models as tvm
from torch import nn

from dynams_service.client.joint_training import JointPSP, psp_loss
from dynams_service.core.models.models import register_architecture
from dynams_service.core.models.proxy import build_proxy, export_psp
from dynams_service.core.models.slimming import SlimmedNetwork, SlimmingError, make_slimmable
from dynams_service.core.models.slimming.layers import SwitchableNorm, WidthConv2d, WidthLinear
from dynams_service.core.selection.scoring import score

CONVERTED = ["resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0",
             "regnet_y_400mf", "vgg11_bn", "convnext_tiny"]
SHAPE = (3, 64, 64)  # small inputs keep the suite fast; every model here reads them
WIDTHS = (1.0, 0.25)


def _torchvision(name: str) -> nn.Module:
    torch.manual_seed(0)
    return getattr(tvm, name)(num_classes=10)


def _inputs(n: int = 4, shape=SHAPE, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module", params=CONVERTED)
def converted(request) -> tuple[str, nn.Module, SlimmedNetwork]:
    original = _torchvision(request.param)
    return request.param, original, make_slimmable(original, WIDTHS, input_shape=SHAPE)


def test_width_one_is_the_original_network(converted):
    name, original, net = converted
    x = _inputs()
    original.eval()
    net.eval()
    with torch.no_grad():
        assert torch.equal(net(x), original(x)), name
    own = {id(p) for p in net.parameters()}
    assert all(id(p) in own for p in original.parameters())  # the same tensors, not copies
    assert not any(isinstance(m, (WidthConv2d, WidthLinear, SwitchableNorm))
                   for m in original.modules())  # the user's model is left as it was


def test_joint_step_trains_every_parameter_and_the_push_rebuilds_the_slice(converted):
    name, _, net = converted
    net.train()
    joint = JointPSP(net, 0.25)
    x, y = _inputs(8, seed=2), torch.arange(8) % 10
    logits, psp_logits = joint(x)
    assert logits.shape == (8, 10) and psp_logits.shape == (4, 10)
    loss = psp_loss(logits, psp_logits, y)
    loss.backward()
    assert torch.isfinite(loss)
    missing = [n for n, p in net.named_parameters() if p.grad is None]
    assert not missing, missing  # DDP needs no find_unused_parameters
    net.zero_grad()

    net.eval()
    register_architecture(f"test-tv-{name}", lambda: make_slimmable(
        _torchvision(name), WIDTHS, input_shape=SHAPE), replace=True)
    records = export_psp(net, 0.25)
    proxy = build_proxy(f"test-tv-{name}", 0.25, records)
    x = _inputs(seed=3)
    with torch.no_grad():
        torch.testing.assert_close(proxy(x), net(x, 0.25), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(score(proxy, x), score(net, x, width=0.25), atol=1e-4,
                               rtol=1e-4)
    pushed = sum(r.nbytes for r in records)
    full = sum(t.numel() * t.element_size() for t in net.state_dict().values())
    assert pushed < 0.1 * full, (name, pushed / full)


def test_grouped_convolutions_keep_whole_groups():
    net = make_slimmable(_torchvision("regnet_y_400mf"), (1.0, 0.5, 0.25), input_shape=SHAPE)
    grouped = [m for m in net.modules() if isinstance(m, WidthConv2d) and m.groups > 1]
    assert grouped
    for conv in grouped:
        per_group = conv.in_channels // conv.groups
        for width in (0.5, 0.25):
            c_in, c_out, groups = conv.channels(width)
            assert c_in == c_out == groups * per_group, (conv, width)
            assert groups < conv.groups
    depthwise = make_slimmable(_torchvision("mobilenet_v2"), WIDTHS, input_shape=SHAPE)
    dw = next(m for m in depthwise.modules() if isinstance(m, WidthConv2d) and m.groups > 1)
    c_in, _, groups = dw.channels(0.25)
    assert groups == c_in == -(-dw.in_channels // 4)  # depthwise: one group per channel


def test_layer_scale_parameters_are_sliced():
    net = make_slimmable(_torchvision("convnext_tiny"), WIDTHS, input_shape=SHAPE)
    scales = [n for n in net.param_slices if n.endswith("layer_scale")]
    assert len(scales) == 18  # one per CNBlock
    state = net.slice_state(0.25)
    assert state[scales[0]].shape == (24, 1, 1)  # 96 channels at width 0.25


@pytest.mark.parametrize(("name", "where", "why"), [
    ("densenet121", "features.denseblock1.denselayer1 (_DenseLayer), op cat",
     "a concatenation along channels"),
    ("vit_b_16", "encoder.layers.encoder_layer_0.self_attention (MultiheadAttention)",
     "attention heads"),
])
def test_torchvision_models_that_cannot_be_sliced_are_refused(name, where, why):
    shape = (3, 224, 224) if name == "vit_b_16" else SHAPE
    with pytest.raises(SlimmingError) as info:
        make_slimmable(_torchvision(name), WIDTHS, input_shape=shape)
    assert f"{where}: {why}" in str(info.value)
    assert len(info.value.problems) == 1  # the cause, not everything downstream of it


# --- one rule per network ---------------------------------------------------------------


class _Stem(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class FlattenedMap(nn.Module):
    """A flattened 4x4 map into an MLP (VGG's classifier in small)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = _Stem()
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.fc = nn.Linear(16 * 16, 32)
        self.norm = nn.BatchNorm1d(32)
        self.head = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.stem(x)).view(x.size(0), 16 * 16)  # a constant size, rewritten
        return self.head(F.relu(self.norm(self.fc(x))))


class ChannelsFirstLayerNorm(nn.LayerNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight,
                            self.bias, self.eps).permute(0, 3, 1, 2)


class Scaled(nn.Module):
    """A channels-first LayerNorm, a per-channel parameter and squeeze-excitation."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = _Stem()
        self.norm = ChannelsFirstLayerNorm(16)
        self.gamma = nn.Parameter(torch.rand(16, 1, 1) + 0.5)
        self.squeeze = nn.Conv2d(16, 4, 1)
        self.excite = nn.Conv2d(4, 16, 1)
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.stem(x)) * self.gamma
        gate = torch.sigmoid(self.excite(F.relu(self.squeeze(x.mean((2, 3), keepdim=True)))))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x * gate + x, 1), 1))


@pytest.mark.parametrize("model_type", [FlattenedMap, Scaled])
def test_small_networks_convert_and_their_proxy_is_the_slice(model_type):
    torch.manual_seed(0)
    original = model_type().eval()
    net = make_slimmable(original, (1.0, 0.5, 0.25), input_shape=(3, 8, 8)).eval()
    x = _inputs(shape=(3, 8, 8))
    with torch.no_grad():
        assert torch.equal(net(x), original(x))
        for width in (0.5, 0.25):
            proxy = net.make_proxy(width)
            proxy.load_state_dict(net.slice_state(width))
            torch.testing.assert_close(proxy(x), net(x, width))


def test_flattened_map_keeps_whole_channels():
    net = make_slimmable(FlattenedMap(), (1.0, 0.25), input_shape=(3, 8, 8))
    fc = net.body.get_submodule("fc")
    assert fc.features(0.25) == (4 * 16, 8)  # 4 of 16 channels, each a 4x4 map


class Concat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = _Stem()
        self.branch = nn.Conv2d(16, 8, 1)
        self.mix = nn.Conv2d(24, 8, 1)
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.mix(torch.cat([x, self.branch(x)], 1))
        return self.head(x.mean((2, 3)))


class ChannelsLastFlatten(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = _Stem()
        self.head = nn.Linear(16 * 8 * 8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stem(x).permute(0, 2, 3, 1).flatten(1))


class TwoOutputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = _Stem()
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.stem(x).mean((2, 3))
        return self.head(z), z


class ConvClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = _Stem()
        self.classifier = nn.Conv2d(16, 5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.stem(x)).mean((2, 3))


class DataDependent(TwoOutputs):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        z = self.stem(x).mean((2, 3))
        return self.head(z if z.sum() > 0 else -z)


class TrainingBranch(TwoOutputs):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        z = self.stem(x).mean((2, 3))
        return self.head(z * 0.5 if self.training else z)


class ChannelSort(TwoOutputs):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        z = torch.sort(self.stem(x), dim=1).values
        return self.head(z.mean((2, 3)))


class ChannelMean(TwoOutputs):
    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(64, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.head(self.stem(x).mean(1).flatten(1))


class StandardisedConv(nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight - self.weight.mean((1, 2, 3), keepdim=True)
        return self._conv_forward(x, w, self.bias)


class CustomConv(TwoOutputs):
    def __init__(self) -> None:
        super().__init__()
        self.extra = StandardisedConv(16, 16, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.head(self.extra(self.stem(x)).mean((2, 3)))


class Grouped(TwoOutputs):
    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(4, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.head(self.norm(self.stem(x)).mean((2, 3)))


@pytest.mark.parametrize(("model_type", "message"), [
    (Concat, "Concat, op cat: a concatenation along channels"),
    (ChannelsLastFlatten, "a flatten that puts other dimensions before the channels"),
    (TwoOutputs, "the model returns tuple; DynaMS needs one tensor of logits"),
    (ConvClassifier, "must come straight from an nn.Linear classifier"),
    (DataDependent, "torch.fx cannot trace it"),
    (TrainingBranch, "branches on self.training"),
    (ChannelSort, "Sort, op sort: an op with no slimming rule on a slimmed tensor"),
    (ChannelMean, "op mean: a reduction over channels"),
    (CustomConv, "extra (StandardisedConv): a Conv2d subclass with its own forward"),
    (Grouped, "norm (GroupNorm): GroupNorm: its groups do not follow the width"),
])
def test_what_cannot_be_sliced_is_refused_by_module_and_reason(model_type, message):
    with pytest.raises(SlimmingError, match="cannot be made slimmable") as info:
        make_slimmable(model_type(), (1.0, 0.25), input_shape=(3, 8, 8))
    assert message in str(info.value), str(info.value)


def test_widths_must_include_the_full_model():
    with pytest.raises(ValueError, match="must include 1.0"):
        make_slimmable(FlattenedMap(), (0.5, 0.25), input_shape=(3, 8, 8))


def test_unknown_width_is_refused():
    net = make_slimmable(FlattenedMap(), (1.0, 0.25), input_shape=(3, 8, 8))
    with pytest.raises(ValueError, match="not one this model was built for"):
        net(_inputs(shape=(3, 8, 8)), width=0.5)
