"""build_model: the dict of constructors, errors, pretrained weights, counting, describing."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from da_pose.config import ModelConfig, load_config
from da_pose.errors import CheckpointError, ConfigError
from da_pose.models.factory import BACKBONES, build_model, count_parameters, describe
from da_pose.models.hourglass import HourglassNet
from da_pose.models.pose_resnet import PoseResNet, ResNet

SMALL_HG = ModelConfig(backbone="hourglass", stacks=2, blocks=1, depth=2, features=16)


def test_unknown_backbone_lists_the_valid_names():
    with pytest.raises(ConfigError) as info:
        build_model(ModelConfig(backbone="vgg16"), 18)
    msg = str(info.value)
    assert "vgg16" in msg
    for name in BACKBONES:
        assert name in msg


def test_names():
    assert set(BACKBONES) == {"hourglass", "resnet18", "resnet34", "resnet50", "resnet101",
                              "resnet152"}


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_every_backbone_builds_with_the_common_interface(name):
    cfg = dataclasses.replace(SMALL_HG, backbone=name, deconv_filters=16)
    with torch.device("meta"):  # attributes only; forward passes are tested per family
        model = build_model(cfg, 7)
    assert model.num_joints == 7
    assert model.stride == 4
    channels = {"hourglass": 16, "resnet18": 512, "resnet34": 512}.get(name, 2048)
    assert model.feature_channels == channels


def test_small_models_forward():
    small_resnet = ModelConfig(backbone="resnet18", deconv_filters=16)
    for cfg, channels in ((SMALL_HG, 16), (small_resnet, 512)):
        model = build_model(cfg, 5)
        out = model(torch.randn(1, 3, 64, 64))
        assert out.heatmaps[-1].shape == (1, 5, 16, 16)
        assert out.features.shape[1] == channels


def test_config_defaults_build_the_published_hourglass():
    model = build_model(load_config().model, 18)
    assert isinstance(model, HourglassNet)
    assert (model.stacks, model.blocks, model.depth, model.feature_channels) == (4, 1, 4, 256)


def test_pretrained_for_hourglass_is_a_config_error(tmp_path):
    cfg = dataclasses.replace(SMALL_HG, pretrained=str(tmp_path / "r18.pth"))
    with pytest.raises(ConfigError, match="hourglass"):
        build_model(cfg, 18)


def test_pretrained_resnet_weights_are_loaded(tmp_path):
    torch.manual_seed(3)
    src = ResNet(18)
    state = dict(src.state_dict())
    state.update({"fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)})
    path = tmp_path / "resnet18-imagenet.pth"
    torch.save(state, path)
    cfg = ModelConfig(backbone="resnet18", deconv_filters=16, pretrained=str(path))
    model = build_model(cfg, 18)
    assert isinstance(model, PoseResNet)
    for key, value in src.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[key], value), key


def test_missing_pretrained_file_is_a_checkpoint_error(tmp_path):
    cfg = ModelConfig(backbone="resnet18", deconv_filters=16, pretrained=str(tmp_path / "x.pth"))
    with pytest.raises(CheckpointError, match="not found"):
        build_model(cfg, 18)


@pytest.mark.parametrize("changes", [{"deconv_layers": 0}, {"deconv_filters": 0}])
def test_bad_head_settings_are_config_errors(changes):
    with pytest.raises(ConfigError):
        build_model(ModelConfig(backbone="resnet18", **changes), 18)


def test_bad_joint_count_is_a_config_error():
    with pytest.raises(ConfigError, match="num_joints"):
        build_model(SMALL_HG, 0)


def test_count_parameters():
    model = build_model(ModelConfig(backbone="resnet18", deconv_filters=16), 18)
    total = sum(p.numel() for p in model.parameters())
    assert count_parameters(model) == total
    model.backbone.requires_grad_(False)
    head = sum(p.numel() for p in model.head.parameters())
    assert count_parameters(model, trainable_only=True) == head
    # 3 deconvs 512->16, 16->16, 16->16 (4x4, no bias), 3 BNs, 1x1 conv 16->18 with bias
    assert head == 512 * 16 * 16 + 2 * 16 * 16 * 16 + 3 * 2 * 16 + 16 * 18 + 18


def test_describe_is_one_short_line():
    text = describe(build_model(SMALL_HG, 18))
    assert "\n" not in text and len(text) < 160
    assert "hourglass" in text and "stride 4" in text and "M parameters" in text
    text = describe(build_model(ModelConfig(backbone="resnet18", deconv_filters=16), 18))
    assert "resnet18" in text and "512" in text
