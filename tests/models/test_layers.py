"""The hourglass's CPU pooling and upsampling ops equal the torch ops they replace."""

import pytest
import torch
import torch.nn.functional as F

from da_pose.models import layers
from da_pose.models.factory import build_model
from da_pose.config import ModelConfig


@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (1, 5, 4, 6), (3, 2, 16, 2)])
def test_max_pool2x2_equals_max_pool2d(shape):
    x = torch.randn(*shape)
    x[0, 0, 0, :2] = 1.5  # a tie
    with torch.no_grad():
        assert torch.equal(layers.max_pool2x2(x), F.max_pool2d(x, 2, 2))


def test_training_uses_the_torch_ops_and_their_gradients():
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    out = layers.max_pool2x2(x)
    assert out.grad_fn.name().startswith("MaxPool2D")
    low = torch.randn(2, 3, 4, 4, requires_grad=True)
    up = layers.add_upsampled2x(torch.randn(2, 3, 8, 8), low)
    assert torch.equal(up, up.detach())
    up.sum().backward()
    assert torch.equal(low.grad, torch.full_like(low, 4.0))


def test_max_pool2x2_odd_sides_fall_back():
    x = torch.randn(1, 2, 5, 7)
    assert torch.equal(layers.max_pool2x2(x), F.max_pool2d(x, 2, 2))


@torch.no_grad()
def test_add_upsampled2x_equals_interpolate_and_add():
    low = torch.randn(2, 4, 3, 5)
    skip = torch.randn(2, 4, 6, 10)
    expected = skip + F.interpolate(low, scale_factor=2, mode="nearest")
    assert torch.equal(layers.add_upsampled2x(skip, low), expected)
    # a channels_last skip takes the two-op path and still agrees
    cl = skip.contiguous(memory_format=torch.channels_last)
    assert torch.equal(layers.add_upsampled2x(cl, low), expected)


def test_hourglass_output_is_the_same_with_and_without_the_fast_ops(monkeypatch):
    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone="hourglass", stacks=2, blocks=1, depth=3, features=32), 18).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        fast = model(x)
        monkeypatch.setattr(layers, "FAST_CPU_OPS", False)
        slow = model(x)
    for a, b in zip(fast.heatmaps + [fast.features], slow.heatmaps + [slow.features]):
        assert torch.equal(a, b)
