"""Pieces shared by the pose models: the output type, the gradient reversal layer, the residual.

Every pose model (stacked hourglass, PoseResNet) returns a :class:`PoseOutput`, so training
steps, the pseudo-labeller and the evaluator never need to know which family they hold:

- ``heatmaps``: one (B, K, h, w) tensor per supervised output. The hourglass returns one per
  stack (intermediate supervision, Newell et al. 2016); PoseResNet a one-element list. The
  *last* element is the prediction used for decoding.
- ``features``: the (B, C, h', w') map that the WS-CDA domain discriminator reads (Cao et al.
  ICCV 2019, FACTS section 5). Each model documents which map that is.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# CPU replacements for two ops that dominate the hourglass's non-convolution time (profile in
# README "Benchmarks"): False falls back to F.max_pool2d / F.interpolate (scripts/bench/models.py
# flips it to measure both side by side).
FAST_CPU_OPS = True


class PoseOutput(NamedTuple):
    """What every pose model's ``forward`` returns.

    Shape:
        heatmaps: list of (B, K, h, w), one per stack (hourglass) or a single element (ResNet).
        features: (B, C, h', w') with C = ``model.feature_channels``.
    """

    heatmaps: list[Tensor]
    features: Tensor


# --------------------------------------------------------------------------------------------
# pooling and upsampling of the hourglass


def max_pool2x2(x: Tensor) -> Tensor:
    """2 x 2 max pooling with stride 2, equal to ``F.max_pool2d(x, 2, 2)``.

    In CPU inference (no autograd: evaluation, pseudo-labelling), the element-wise maximum of
    the four strided sub-grids is several times faster than ``max_pool2d`` on NCHW tensors, with
    the same values bit for bit. Training (autograd on), CUDA tensors, odd sides and
    ``FAST_CPU_OPS = False`` use ``max_pool2d``: a training step gains nothing (the maximum's
    backward costs what the pooling's forward saved) and keeps the published op's gradient.

    Shape:
        x: (B, C, H, W) -> (B, C, H/2, W/2)
    """
    if (not FAST_CPU_OPS or torch.is_grad_enabled() or x.is_cuda or x.dim() != 4
            or x.shape[-1] % 2 or x.shape[-2] % 2):
        return F.max_pool2d(x, kernel_size=2, stride=2)
    top = torch.maximum(x[..., 0::2, 0::2], x[..., 0::2, 1::2])
    bottom = torch.maximum(x[..., 1::2, 0::2], x[..., 1::2, 1::2])
    return torch.maximum(top, bottom)


def add_upsampled2x(skip: Tensor, low: Tensor) -> Tensor:
    """``skip + F.interpolate(low, scale_factor=2, mode="nearest")`` without the upsampled copy.

    In CPU inference, each low-resolution value is broadcast onto its 2 x 2 block of ``skip`` in
    one addition (same values bit for bit). Training, CUDA, non-contiguous ``skip``
    (channels_last) and ``FAST_CPU_OPS = False`` take the two-op path.

    Shape:
        skip: (B, C, 2h, 2w); low: (B, C, h, w) -> (B, C, 2h, 2w)
    """
    b, c, h, w = low.shape
    if (not FAST_CPU_OPS or torch.is_grad_enabled() or skip.is_cuda or not skip.is_contiguous()
            or tuple(skip.shape) != (b, c, 2 * h, 2 * w)):
        return skip + F.interpolate(low, scale_factor=2, mode="nearest")
    return (skip.view(b, c, h, 2, w, 2) + low[:, :, :, None, :, None]).view(b, c, 2 * h, 2 * w)


# --------------------------------------------------------------------------------------------
# gradient reversal (Ganin & Lempitsky 2015), used by WS-CDA's adversarial feature training


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; the incoming gradient times ``lam`` backward."""

    @staticmethod
    def forward(ctx, x: Tensor, lam: float) -> Tensor:
        ctx.lam = float(lam)
        # view_as: a new tensor object, so autograd records this node, with no copy of the data
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return grad * ctx.lam, None


def scale_grad(x: Tensor, lam: float) -> Tensor:
    """Identity forward; backward multiplies the gradient by ``lam`` (RegDA's warm start, not
    reversed; :func:`grad_reverse` is ``lam`` negated).

    Shape:
        x: any shape; the output has the same shape.
    """
    return _ScaleGrad.apply(x, lam)


def grad_reverse(x: Tensor, lam: float = 1.0) -> Tensor:
    """Gradient reversal: returns ``x`` unchanged; backward multiplies the gradient by ``-lam``.

    Placed between the feature extractor and the domain discriminator, one backward pass trains
    the discriminator to separate the domains while it pushes the extractor to confuse it: the
    min-max of WS-CDA (alpha = -1 on L_DDL, Cao et al. ICCV 2019) in a single step.

    Shape:
        x: any shape; the output has the same shape.
    """
    return _ScaleGrad.apply(x, -float(lam))


class GradReverse(nn.Module):
    """Module form of :func:`grad_reverse`; set ``lam`` during training (e.g. a warm-up ramp)."""

    def __init__(self, lam: float = 1.0):
        super().__init__()
        self.lam = float(lam)

    def forward(self, x: Tensor) -> Tensor:
        return grad_reverse(x, self.lam)

    def extra_repr(self) -> str:
        return f"lam={self.lam:g}"


# --------------------------------------------------------------------------------------------
# the hourglass residual module


class Bottleneck(nn.Module):
    """Pre-activation residual bottleneck of the stacked hourglass (Newell et al. 2016).

    BN-ReLU-conv1x1 (``planes``) -> BN-ReLU-conv3x3 (``planes``) -> BN-ReLU-conv1x1
    (``2 * planes``), plus the input (through a 1x1 conv when the widths differ). Names and
    biases follow the pytorch-pose code that CC-SSL builds on (every conv has a bias), so a
    published CC-SSL hourglass checkpoint loads by name. Consequence, not a bug: in training
    mode the biases of ``conv1`` and ``conv2`` feed a batch norm, which removes any per-channel
    constant, so their gradient is exactly zero there.

    Shape:
        x: (B, in_channels, H, W) -> (B, 2 * planes, H / stride, W / stride)
    """

    expansion = 2

    def __init__(self, in_channels: int, planes: int, stride: int = 1):
        super().__init__()
        out_channels = planes * self.expansion
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, planes, kernel_size=1, bias=True)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=True)
        self.bn3 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_channels, kernel_size=1, bias=True)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            # a Sequential so the key is ``downsample.0.*`` as in the published checkpoints
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=True)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv1(self.relu(self.bn1(x)))  # B, planes, H, W
        out = self.conv2(self.relu(self.bn2(out)))  # B, planes, H', W'
        out = self.conv3(self.relu(self.bn3(out)))  # B, 2 planes, H', W'
        residual = x if self.downsample is None else self.downsample(x)
        return out + residual


def residual_stack(in_channels: int, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
    """``blocks`` bottlenecks: the first maps ``in_channels`` to ``2 * planes``, the rest keep it.

    Shape:
        (B, in_channels, H, W) -> (B, 2 * planes, H / stride, W / stride)
    """
    layers = [Bottleneck(in_channels, planes, stride)]
    layers += [Bottleneck(planes * Bottleneck.expansion, planes) for _ in range(1, blocks)]
    return nn.Sequential(*layers)
