"""PoseResNet: torchvision key names, shapes, gradients, ImageNet weight loading and its errors."""

from __future__ import annotations

import argparse

import pytest
import torch

from da_pose.errors import CheckpointError, ConfigError
from da_pose.models.layers import PoseOutput
from da_pose.models.pose_resnet import (DeconvHead, PoseResNet, ResNet, load_pretrained_backbone,
                                        pose_resnet)

# torchvision's ResNets written out from He et al. 2016 Table 1: block kind, blocks per stage.
TORCHVISION_LAYOUT = {
    18: ("basic", [2, 2, 2, 2]),
    34: ("basic", [3, 4, 6, 3]),
    50: ("bottleneck", [3, 4, 6, 3]),
    101: ("bottleneck", [3, 4, 23, 3]),
    152: ("bottleneck", [3, 8, 36, 3]),
}
# torchvision's published parameter counts, classifier included
TORCHVISION_PARAMS = {18: 11_689_512, 34: 21_797_672, 50: 25_557_032, 101: 44_549_160,
                      152: 60_192_808}


def _bn(prefix: str, c: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.weight": (c,), f"{prefix}.bias": (c,), f"{prefix}.running_mean": (c,),
            f"{prefix}.running_var": (c,), f"{prefix}.num_batches_tracked": ()}


def torchvision_state_shapes(depth: int) -> dict[str, tuple[int, ...]]:
    """Key -> shape of torchvision's ``resnet{depth}().state_dict()``, written from the spec."""
    kind, counts = TORCHVISION_LAYOUT[depth]
    expansion = 1 if kind == "basic" else 4
    shapes = {"conv1.weight": (64, 3, 7, 7), **_bn("bn1", 64)}
    inplanes = 64
    for stage, (planes, count) in enumerate(zip([64, 128, 256, 512], counts), start=1):
        for b in range(count):
            p = f"layer{stage}.{b}"
            if kind == "basic":
                shapes[f"{p}.conv1.weight"] = (planes, inplanes, 3, 3)
                shapes.update(_bn(f"{p}.bn1", planes))
                shapes[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
                shapes.update(_bn(f"{p}.bn2", planes))
            else:
                shapes[f"{p}.conv1.weight"] = (planes, inplanes, 1, 1)
                shapes.update(_bn(f"{p}.bn1", planes))
                shapes[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
                shapes.update(_bn(f"{p}.bn2", planes))
                shapes[f"{p}.conv3.weight"] = (planes * 4, planes, 1, 1)
                shapes.update(_bn(f"{p}.bn3", planes * 4))
            stride = 2 if (b == 0 and stage > 1) else 1
            if b == 0 and (stride != 1 or inplanes != planes * expansion):
                shapes[f"{p}.downsample.0.weight"] = (planes * expansion, inplanes, 1, 1)
                shapes.update(_bn(f"{p}.downsample.1", planes * expansion))
            inplanes = planes * expansion
    shapes["fc.weight"] = (1000, 512 * expansion)
    shapes["fc.bias"] = (1000,)
    return shapes


@pytest.mark.parametrize("depth", [18, 34, 50, 101, 152])
def test_backbone_keys_and_shapes_equal_torchvision(depth):
    expected = torchvision_state_shapes(depth)
    # the spec itself agrees with torchvision's published parameter count
    n_params = sum(torch.Size(s).numel() for k, s in expected.items()
                   if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    assert n_params == TORCHVISION_PARAMS[depth]
    with torch.device("meta"):  # shapes only, no memory or init time
        state = ResNet(depth).state_dict()
    expected_backbone = {k: v for k, v in expected.items() if not k.startswith("fc.")}
    assert set(state) == set(expected_backbone)
    assert {k: tuple(v.shape) for k, v in state.items()} == expected_backbone


@pytest.mark.parametrize("depth,channels", [(18, 512), (50, 2048)])
def test_forward_backward_every_parameter_gets_gradient(depth, channels):
    torch.manual_seed(0)
    model = pose_resnet(depth, num_joints=18, deconv_filters=32).train()
    out = model(torch.randn(2, 3, 64, 64))
    assert isinstance(out, PoseOutput) and len(out.heatmaps) == 1
    assert out.heatmaps[0].shape == (2, 18, 16, 16)
    assert out.features.shape == (2, channels, 2, 2)
    assert model.stride == 4 and model.num_joints == 18 and model.feature_channels == channels
    loss = (out.heatmaps[0] * torch.randn_like(out.heatmaps[0])).sum()
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_parts_are_passed_in_and_stride_follows_the_head():
    backbone = ResNet(18)
    model = PoseResNet(backbone, DeconvHead(backbone.out_channels, 5, layers=2, filters=16), 5)
    assert model.backbone is backbone
    assert model.stride == 8
    out = model(torch.randn(1, 3, 64, 64))
    assert out.heatmaps[0].shape == (1, 5, 8, 8)


def test_head_settings_are_checked():
    with pytest.raises(ConfigError, match="deconv_layers"):
        DeconvHead(512, 18, layers=0)
    with pytest.raises(ConfigError, match="kernel"):
        DeconvHead(512, 18, kernel=5)
    with pytest.raises(ConfigError, match="depth"):
        ResNet(42)


# --------------------------------------------------------------------------------------------
# load_pretrained_backbone


def _imagenet_file(tmp_path, depth=18, seed=1, drop=(), extra=None, name="resnet.pth"):
    """A file shaped like torchvision's ``resnetXX-*.pth``: backbone weights plus ``fc.*``."""
    torch.manual_seed(seed)
    src = ResNet(depth)
    with torch.no_grad():  # non-default BN statistics, so the round trip checks buffers too
        for m in src.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    state = dict(src.state_dict())
    state["fc.weight"] = torch.randn(1000, src.out_channels)
    state["fc.bias"] = torch.randn(1000)
    for key in drop:
        state.pop(key)
    state.update(extra or {})
    path = tmp_path / name
    torch.save(state, path)
    return path, state


def test_round_trip_loads_backbone_only(tmp_path):
    path, state = _imagenet_file(tmp_path)
    torch.manual_seed(2)
    model = pose_resnet(18, deconv_filters=16)
    head_before = {k: v.clone() for k, v in model.head.state_dict().items()}
    load_pretrained_backbone(model, path)
    loaded = model.backbone.state_dict()
    for key, value in loaded.items():
        assert torch.equal(value, state[key]), key
    for key, value in model.head.state_dict().items():
        assert torch.equal(value, head_before[key]), key


def test_round_trip_into_a_bare_backbone(tmp_path):
    path, state = _imagenet_file(tmp_path)
    backbone = ResNet(18)
    load_pretrained_backbone(backbone, path)
    assert torch.equal(backbone.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])


def test_old_files_without_num_batches_tracked_load(tmp_path):
    with torch.device("meta"):
        keys = [k for k in ResNet(18).state_dict() if k.endswith("num_batches_tracked")]
    path, state = _imagenet_file(tmp_path, drop=keys)
    model = pose_resnet(18, deconv_filters=16)
    load_pretrained_backbone(model, path)
    assert torch.equal(model.backbone.bn1.running_var, state["bn1.running_var"])


def _load_error(model, path) -> str:
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError) as info:
        load_pretrained_backbone(model, path)
    message = str(info.value)
    assert "\n" not in message
    # a refused file leaves the model untouched
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    return message


def test_missing_file(tmp_path):
    msg = _load_error(ResNet(18), tmp_path / "nope.pth")
    assert "not found" in msg and "nope.pth" in msg


def test_not_a_torch_file(tmp_path):
    path = tmp_path / "garbage.pth"
    path.write_bytes(b"this is not a checkpoint")
    assert "garbage.pth" in _load_error(ResNet(18), path)


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "obj.pth"
    torch.save({"conv1.weight": argparse.Namespace(x=1)}, path)
    assert "weights-only" in _load_error(ResNet(18), path)


@pytest.mark.parametrize("payload", [[1, 2, 3], {"a": 1}, {}])
def test_not_a_state_dict(tmp_path, payload):
    path = tmp_path / "list.pth"
    torch.save(payload if not isinstance(payload, list) else torch.tensor(payload), path)
    assert "expected a state dict" in _load_error(ResNet(18), path)


def test_missing_keys_are_named(tmp_path):
    path, _ = _imagenet_file(tmp_path, drop=["layer4.1.bn2.weight", "layer3.0.conv1.weight"])
    msg = _load_error(ResNet(18), path)
    assert "missing keys" in msg
    assert "layer4.1.bn2.weight" in msg and "layer3.0.conv1.weight" in msg


def test_unexpected_keys_are_named(tmp_path):
    path, _ = _imagenet_file(tmp_path, extra={"layer5.0.conv1.weight": torch.zeros(1)})
    msg = _load_error(ResNet(18), path)
    assert "unexpected keys" in msg and "layer5.0.conv1.weight" in msg


def test_shape_mismatch_is_named(tmp_path):
    path, _ = _imagenet_file(tmp_path, extra={"conv1.weight": torch.zeros(64, 3, 3, 3)})
    msg = _load_error(ResNet(18), path)
    assert "shape mismatch" in msg and "conv1.weight" in msg


def test_wrong_depth_is_refused(tmp_path):
    path, _ = _imagenet_file(tmp_path, depth=18)
    msg = _load_error(ResNet(34), path)
    assert "resnet34" in msg and "missing keys" in msg
