"""Slimmable layers, reference models, and the PSP slice: proxy == model at width α."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dynams_service import SlimCNN, SlimResNet18, build_architecture
from dynams_service.core.models.models import (
    SlimmableModel,
    count_macs,
    count_parameters,
    register_architecture,
)
from dynams_service.core.models.proxy import build_proxy, export_psp
from dynams_service.core.models.slimmable import (
    SlimmableConv2d,
    SwitchableBatchNorm2d,
    scaled_channels,
)

CASES = [("fmnist-cnn", (1, 28, 28)), ("cifar-resnet18", (3, 32, 32))]


def _trained_a_little(name: str, input_shape, widths=(1.0, 0.5, 0.25)) -> SlimmableModel:
    """A model whose BN statistics differ per width (a few train-mode forwards)."""
    torch.manual_seed(0)
    model = build_architecture(name)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            for w in widths:
                model(torch.randn(8, *input_shape) * 2 + 0.5, width=w)
    return model.eval()


@pytest.mark.parametrize(("name", "input_shape"), CASES)
@pytest.mark.parametrize("width", [0.25, 0.5, 1.0])
def test_proxy_equals_model_at_width(name, input_shape, width):
    model = _trained_a_little(name, input_shape)
    proxy = build_proxy(name, width, export_psp(model, width))
    x = torch.randn(4, *input_shape)
    with torch.no_grad():
        torch.testing.assert_close(proxy(x), model(x, width), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(proxy.forward_features(x), model.forward_features(x, width),
                                   atol=1e-5, rtol=1e-5)
    assert not proxy.training


@pytest.mark.parametrize(("name", "input_shape"), CASES)
def test_proxy_is_a_fraction_of_the_model(name, input_shape):
    model = build_architecture(name)
    full_params, full_macs = count_parameters(model), count_macs(model, input_shape)
    for width, (lo, hi) in {0.25: (0.04, 0.12), 0.5: (0.2, 0.32)}.items():
        proxy = model.make_proxy(width)
        param_ratio = count_parameters(proxy) / full_params
        mac_ratio = count_macs(model, input_shape, width) / full_macs
        assert lo < param_ratio < hi, (name, width, param_ratio)
        assert lo < mac_ratio < hi, (name, width, mac_ratio)
        assert count_macs(proxy, input_shape) == count_macs(model, input_shape, width)


def test_switchable_bn_keeps_separate_statistics_per_width():
    model = SlimCNN().train()
    model(torch.randn(16, 1, 28, 28) * 5 + 3, width=0.25)
    bns = model.bn1.bn
    assert not torch.equal(bns[2].running_mean[:8], torch.zeros(8))
    assert torch.equal(bns[0].running_mean, torch.zeros(32))  # width 1.0 untouched


def test_unsupported_width_is_named():
    model = SlimCNN(widths=(1.0, 0.5))
    with pytest.raises(ValueError, match=r"width 0.25 is not one this model was built for"):
        model(torch.zeros(1, 1, 28, 28), width=0.25)
    with pytest.raises(ValueError, match="widths must include 1.0"):
        SlimCNN(widths=(0.5,))
    with pytest.raises(ValueError, match=r"widths must be in \(0, 1\]"):
        SwitchableBatchNorm2d(4, (1.0, 1.5))


def test_channel_rounding_is_robust():
    assert scaled_channels(10, 0.3) == 3
    assert scaled_channels(64, 0.25) == 16
    assert scaled_channels(3, 0.01) == 1


def test_conv_checks_its_input_channels():
    conv = SlimmableConv2d(8, 16, 3)
    with pytest.raises(ValueError, match="expected 4 input channels at width 0.5"):
        conv(torch.zeros(1, 8, 5, 5), width=0.5)


def test_non_slimmable_parameters_are_refused_at_export():
    class Mixed(SlimCNN):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.extra = nn.Linear(2, 2)

    with pytest.raises(TypeError, match="'extra'.*not slimmable"):
        Mixed().slice_state(0.5)


def test_registry_refuses_duplicates_and_bad_names():
    with pytest.raises(ValueError, match="already registered"):
        register_architecture("fmnist-cnn", SlimCNN)
    with pytest.raises(ValueError, match="letters, digits"):
        register_architecture("../evil", SlimCNN)
    with pytest.raises(KeyError, match="unknown architecture 'nope'"):
        build_architecture("nope")


def test_resnet_shapes():
    model = SlimResNet18(num_classes=7)
    x = torch.randn(2, 3, 32, 32)
    assert model(x, 0.25).shape == (2, 7)
    assert model.forward_features(x, 0.5).shape == (2, 256)
