"""Stacked hourglass: shapes, gradients, published size, published key layout."""

from __future__ import annotations

import re

import pytest
import torch

from da_pose.errors import ConfigError
from da_pose.models.hourglass import HourglassNet
from da_pose.models.layers import PoseOutput

# Conv biases that feed straight into a batch norm: in training mode BN subtracts the batch
# mean per channel, so a per-channel constant cannot change the output and their gradient is
# exactly zero (up to rounding). They exist only to keep the published checkpoint layout.
_BIAS_BEFORE_BN = re.compile(r"((^|\.)conv[12]\.bias|^fc\.\d+\.0\.bias)$")


def _small(stacks=2, blocks=1, depth=3, features=32, joints=18):
    torch.manual_seed(0)
    return HourglassNet(num_joints=joints, stacks=stacks, blocks=blocks, depth=depth,
                        features=features)


def _backward(model, x):
    out = model(x)
    torch.manual_seed(1)
    # random projections so no gradient vanishes by symmetry
    loss = sum((h * torch.randn_like(h)).sum() for h in out.heatmaps)
    loss.backward()
    return out


@pytest.mark.parametrize("stacks,blocks", [(2, 1), (1, 2)])
def test_forward_shapes_and_attributes(stacks, blocks):
    model = _small(stacks=stacks, blocks=blocks)
    out = model(torch.randn(2, 3, 64, 64))
    assert isinstance(out, PoseOutput)
    assert len(out.heatmaps) == stacks
    for h in out.heatmaps:
        assert h.shape == (2, 18, 16, 16)
        assert torch.isfinite(h).all()
    assert out.features.shape == (2, 32, 16, 16)
    assert model.num_joints == 18 and model.stride == 4 and model.feature_channels == 32
    assert 64 // out.heatmaps[-1].shape[-1] == model.stride


def test_features_are_the_last_stack_map_before_its_heatmap_conv():
    model = _small().eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
        assert torch.allclose(model.score[-1](out.features), out.heatmaps[-1], atol=1e-6)


def test_train_mode_gradients_reach_every_parameter_but_biases_before_bn():
    model = _small().train()
    out = _backward(model, torch.randn(2, 3, 64, 64))
    assert all(torch.isfinite(h).all() for h in out.heatmaps)
    params = dict(model.named_parameters())
    exempt = [n for n in params if _BIAS_BEFORE_BN.search(n)]
    assert exempt, "the exemption pattern matched nothing"
    for name, p in params.items():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        if name in exempt:
            weight_grad = params[name[: -len("bias")] + "weight"].grad
            assert p.grad.abs().max() <= 1e-3 * weight_grad.abs().max(), name
        else:
            assert p.grad.abs().sum() > 0, name


def test_eval_mode_gradients_reach_every_parameter():
    # with running statistics the BN no longer cancels the conv biases: all must get gradient
    model = _small()
    with torch.no_grad():  # some running statistics that are not the defaults
        model.train()
        model(torch.randn(2, 3, 64, 64))
    model.eval()
    _backward(model, torch.randn(2, 3, 64, 64))
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
        assert torch.isfinite(p.grad).all(), name


def test_published_parameter_count():
    # CC-SSL / pytorch-pose hg: 4 stacks, 1 block, depth 4, 256 features, 18 joints -> 13.02 M
    model = HourglassNet(num_joints=18, stacks=4, blocks=1, depth=4, features=256)
    count = sum(p.numel() for p in model.parameters())
    assert abs(count - 13.02e6) / 13.02e6 < 0.02


def test_published_input_gives_64x64_heatmaps():
    model = HourglassNet(num_joints=18, stacks=1, blocks=1, depth=4, features=16).eval()
    with torch.no_grad():
        out = model(torch.zeros(1, 3, 256, 256))
    assert out.heatmaps[-1].shape == (1, 18, 64, 64)


def test_published_key_layout():
    # names of the pytorch-pose code, so a published checkpoint loads by name
    keys = set(HourglassNet(stacks=4, depth=4, features=32).state_dict())
    for key in ("conv1.weight", "conv1.bias", "bn1.running_mean", "layer1.0.downsample.0.weight",
                "layer2.0.downsample.0.weight", "hg.3.hg.0.3.0.conv3.weight",
                "hg.0.hg.3.2.0.bn1.weight", "res.3.0.conv2.weight", "fc.3.0.weight",
                "fc.3.1.running_var", "score.3.weight", "fc_.2.weight", "score_.2.bias"):
        assert key in keys, key
    # layer3 keeps the width: no shortcut conv; only the innermost level has a 4th residual;
    # the last stack has no remaps
    for key in ("layer3.0.downsample.0.weight", "hg.0.hg.1.3.0.conv1.weight", "fc_.3.weight",
                "score_.3.weight"):
        assert key not in keys, key


@pytest.mark.parametrize("side", [48, 72])
def test_input_side_not_divisible_is_a_config_error(side):
    model = _small(depth=3)  # needs a multiple of 4 * 2**3 = 32
    with pytest.raises(ConfigError, match="divisible by 32"):
        model(torch.zeros(1, 3, side, side))


@pytest.mark.parametrize("kwargs", [{"features": 30}, {"stacks": 0}, {"depth": 0}])
def test_bad_settings_are_config_errors(kwargs):
    with pytest.raises(ConfigError):
        HourglassNet(**kwargs)
