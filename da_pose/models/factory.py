"""Build a pose model from ``ModelConfig``: a plain dict of constructors, no registry.

``BACKBONES[name](cfg, num_joints)`` returns a model whose ``forward`` gives a
:class:`~da_pose.models.layers.PoseOutput` and which has ``num_joints``, ``stride`` and
``feature_channels``.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

from torch import nn

from da_pose.errors import ConfigError
from da_pose.models.hourglass import HourglassNet
from da_pose.models.pose_resnet import PoseResNet, load_pretrained_backbone, pose_resnet

if TYPE_CHECKING:  # a type only: config imports this module's names, not the other way round
    from da_pose.config import ModelConfig


def build_hourglass(cfg: ModelConfig, num_joints: int) -> HourglassNet:
    """Stacked hourglass from ``cfg.stacks/blocks/depth/features``."""
    if cfg.pretrained:
        raise ConfigError(
            f"model.pretrained='{cfg.pretrained}': ImageNet weights exist only for the ResNet "
            "backbones; set it to '' for the hourglass (start from a checkpoint with init= instead)"
        )
    return HourglassNet(num_joints, cfg.stacks, cfg.blocks, cfg.depth, cfg.features)


def build_pose_resnet(cfg: ModelConfig, num_joints: int, depth: int) -> PoseResNet:
    """SimpleBaseline ResNet-``depth``; loads ``cfg.pretrained`` into the backbone when set."""
    model = pose_resnet(depth, num_joints, cfg.deconv_layers, cfg.deconv_filters)
    if cfg.pretrained:
        load_pretrained_backbone(model, cfg.pretrained)
    return model


BACKBONES: dict[str, Callable[["ModelConfig", int], nn.Module]] = {
    "hourglass": build_hourglass,
    "resnet18": partial(build_pose_resnet, depth=18),
    "resnet34": partial(build_pose_resnet, depth=34),
    "resnet50": partial(build_pose_resnet, depth=50),
    "resnet101": partial(build_pose_resnet, depth=101),
    "resnet152": partial(build_pose_resnet, depth=152),
}


def build_model(cfg: ModelConfig, num_joints: int) -> nn.Module:
    """The pose model named by ``cfg.backbone``.

    Raises:
        ConfigError: unknown backbone (the valid names are listed), invalid sizes, or
            ``pretrained`` set for the hourglass.
        CheckpointError: ``pretrained`` file missing or not fitting the backbone.
    """
    if cfg.backbone not in BACKBONES:
        raise ConfigError(
            f"model.backbone: unknown backbone '{cfg.backbone}'; valid: {', '.join(BACKBONES)}"
        )
    if num_joints < 1:
        raise ConfigError(f"num_joints must be >= 1, got {num_joints}")
    return BACKBONES[cfg.backbone](cfg, num_joints)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements (all, or only those with ``requires_grad``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def describe(model: nn.Module) -> str:
    """One line: family and settings, parameter count, stride, feature width."""
    if isinstance(model, HourglassNet):
        name = (f"hourglass stacks={model.stacks} blocks={model.blocks} depth={model.depth} "
                f"features={model.feature_channels}")
    elif isinstance(model, PoseResNet):
        name = f"pose_resnet{getattr(model.backbone, 'depth', '')}"
    else:
        name = type(model).__name__
    params = count_parameters(model) / 1e6
    joints = getattr(model, "num_joints", "?")
    stride = getattr(model, "stride", "?")
    channels = getattr(model, "feature_channels", "?")
    return (f"{name}: {params:.2f} M parameters, {joints} joints, stride {stride}, "
            f"features {channels} ch")


def feature_channels(cfg: "ModelConfig") -> int:
    """C of ``PoseOutput.features`` for this model config (built on the meta device: no memory,
    no pretrained weights read)."""
    import dataclasses

    import torch

    with torch.device("meta"):
        return int(build_model(dataclasses.replace(cfg, pretrained=""), 18).feature_channels)
