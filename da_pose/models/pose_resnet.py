"""SimpleBaseline PoseResNet (Xiao et al., ECCV 2018): a ResNet backbone and a deconvolution head.

The backbone is the project's own ResNet (He et al. 2016, torchvision's "v1.5" layout with the
stride on the 3x3 conv of a bottleneck) whose ``state_dict`` key names and shapes equal
torchvision's ``resnet18 ... resnet152`` minus ``fc.*`` (torchvision does not import on these
machines, see DESIGN section 5): an ImageNet checkpoint file saved by torchvision loads with
:func:`load_pretrained_backbone`. The classifier (``avgpool``, ``fc``) is left out because a
pose model never uses it; its keys in a checkpoint file are ignored.

The model is built from parts (STYLE "pass parts in"): ``PoseResNet(ResNet(...), DeconvHead(...))``;
:func:`pose_resnet` builds the usual combination.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from da_pose.errors import CheckpointError, ConfigError
from da_pose.models.layers import PoseOutput


class BasicBlock(nn.Module):
    """Two 3x3 convs (ResNet-18/34). Shape: (B, in, H, W) -> (B, planes, H/stride, W/stride)."""

    expansion = 1

    def __init__(self, in_channels: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = _downsample(in_channels, planes * self.expansion, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride here, torchvision v1.5) -> 1x1 x4 (ResNet-50/101/152).

    Shape: (B, in, H, W) -> (B, 4 planes, H/stride, W/stride)
    """

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(in_channels, planes * self.expansion, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


def _downsample(in_channels: int, out_channels: int, stride: int) -> nn.Sequential | None:
    """1x1 conv + BN on the shortcut when the shape changes (keys ``downsample.0/1``)."""
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
        nn.BatchNorm2d(out_channels),
    )


# depth -> (block type, blocks per stage), He et al. 2016 Table 1
RESNET_SPECS: dict[int, tuple[type[nn.Module], tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
}


class ResNet(nn.Module):
    """ResNet feature extractor without the classifier; output stride 32.

    Attributes:
        out_channels: width of the last stage (512 for 18/34, 2048 for 50/101/152).

    Shape:
        x: (B, 3, H, W) -> (B, out_channels, H/32, W/32) (sides rounded up at each stride).
    """

    def __init__(self, depth: int = 50):
        super().__init__()
        if depth not in RESNET_SPECS:
            valid = ", ".join(map(str, RESNET_SPECS))
            raise ConfigError(f"unknown ResNet depth {depth}; valid: {valid}")
        block, counts = RESNET_SPECS[depth]
        self.depth = depth
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        in_channels = 64
        stages = zip((64, 128, 256, 512), counts, (1, 2, 2, 2))
        for index, (planes, count, stride) in enumerate(stages, start=1):
            blocks = []
            for b in range(count):
                blocks.append(block(in_channels, planes, stride if b == 0 else 1))
                in_channels = planes * block.expansion
            self.add_module(f"layer{index}", nn.Sequential(*blocks))
        self.out_channels = in_channels
        # torchvision's initialisation, so a from-scratch backbone trains like theirs
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # B, 64, H/4, W/4
        x = self.layer1(x)  # B, 64 e, H/4, W/4
        x = self.layer2(x)  # B, 128 e, H/8, W/8
        x = self.layer3(x)  # B, 256 e, H/16, W/16
        return self.layer4(x)  # B, 512 e, H/32, W/32

    def extra_repr(self) -> str:
        return f"depth={self.depth}"


# deconv kernel -> (padding, output_padding) that exactly doubles the side (SimpleBaseline)
_DECONV_PADDING = {4: (1, 0), 3: (1, 1), 2: (0, 0)}


class DeconvHead(nn.Module):
    """SimpleBaseline head: ``layers`` x (4x4 stride-2 deconv, no bias, BN, ReLU), then 1x1 conv.

    Each deconvolution doubles the side; three of them take ResNet's stride 32 to stride 4.
    Weights start as in SimpleBaseline: deconv and final conv ~ N(0, 0.001), zero final bias.

    Shape:
        (B, in_channels, h, w) -> (B, num_joints, h * 2**layers, w * 2**layers)
    """

    def __init__(self, in_channels: int, num_joints: int, layers: int = 3, filters: int = 256,
                 kernel: int = 4):
        super().__init__()
        if layers < 1:
            raise ConfigError(f"deconv_layers must be >= 1, got {layers}")
        if filters < 1:
            raise ConfigError(f"deconv_filters must be >= 1, got {filters}")
        if kernel not in _DECONV_PADDING:
            raise ConfigError(f"deconv kernel {kernel} unsupported; valid: 2, 3, 4")
        padding, output_padding = _DECONV_PADDING[kernel]
        self.upsample_factor = 2**layers
        modules: list[nn.Module] = []
        channels = in_channels
        for _ in range(layers):
            deconv = nn.ConvTranspose2d(channels, filters, kernel, stride=2, padding=padding,
                                        output_padding=output_padding, bias=False)
            nn.init.normal_(deconv.weight, std=0.001)
            modules += [deconv, nn.BatchNorm2d(filters), nn.ReLU(inplace=True)]
            channels = filters
        self.deconv_layers = nn.Sequential(*modules)
        self.final_layer = nn.Conv2d(filters, num_joints, kernel_size=1)
        nn.init.normal_(self.final_layer.weight, std=0.001)
        nn.init.zeros_(self.final_layer.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.final_layer(self.deconv_layers(x))


class PoseResNet(nn.Module):
    """A backbone and a head passed in; ``forward`` returns :class:`PoseOutput`.

    ``features`` is the backbone's last stage output (B, C, H/32, W/32): the extractor's output
    that the head turns into heatmaps, and the map WS-CDA's discriminator reads (as the
    published feature-level adversarial methods for pose do).

    Attributes:
        num_joints, stride (input / heatmap size; 4 with three deconvolutions),
        feature_channels (the backbone's ``out_channels``).

    Shape:
        x: (B, 3, H, W) -> heatmaps: [(B, K, H/stride, W/stride)]; features: (B, C, H/32, W/32)
    """

    def __init__(self, backbone: ResNet, head: DeconvHead, num_joints: int):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.num_joints = num_joints
        self.feature_channels = backbone.out_channels
        if head.upsample_factor > 32:
            raise ConfigError(
                f"deconv head upsamples x{head.upsample_factor}, beyond the backbone's stride 32; "
                "expected at most 5 deconv layers"
            )
        self.stride = 32 // head.upsample_factor

    def forward_features(self, x: Tensor) -> Tensor:
        """The backbone's output. Shape: (B, 3, H, W) -> (B, C, H/32, W/32)"""
        return self.backbone(x)

    def forward_head(self, features: Tensor) -> Tensor:
        """The deconvolution head. Shape: (B, C, h, w) -> (B, K, h * upsample, w * upsample)"""
        return self.head(features)

    def forward(self, x: Tensor) -> PoseOutput:
        features = self.forward_features(x)  # B, C, H/32, W/32
        return PoseOutput([self.forward_head(features)], features)  # B, K, H/4, W/4


def pose_resnet(depth: int = 50, num_joints: int = 18, deconv_layers: int = 3,
                deconv_filters: int = 256) -> PoseResNet:
    """The SimpleBaseline model: ResNet-``depth`` plus the published 3 x 256 deconv head."""
    backbone = ResNet(depth)
    head = DeconvHead(backbone.out_channels, num_joints, deconv_layers, deconv_filters)
    return PoseResNet(backbone, head, num_joints)


# --------------------------------------------------------------------------------------------
# ImageNet weights


def _names(keys, limit: int = 3) -> str:
    keys = sorted(keys)
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def load_pretrained_backbone(model: nn.Module, path: str | Path) -> None:
    """Load a torchvision ResNet ImageNet state dict (``resnetXX-*.pth``) into the backbone.

    ``model`` is a :class:`PoseResNet` (its ``backbone`` is loaded) or a bare :class:`ResNet`.
    The file must be a state dict of tensors, read with ``weights_only=True``. Loading is
    strict on the backbone: ``fc.*`` keys are ignored; a missing ``num_batches_tracked``
    buffer is allowed (torchvision's original files predate it; the model's counter is kept).

    Raises:
        CheckpointError: missing or unreadable file, not a state dict, or missing, unexpected or
            wrongly shaped keys (a few are named).
    """
    backbone = model.backbone if isinstance(model, PoseResNet) else model
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"pretrained backbone file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling refused, truncated zip, not a torch file ...
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise CheckpointError(f"{path}: not a readable weights-only torch file ({first})") from None
    if not isinstance(state, dict) or not state or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise CheckpointError(
            f"{path}: expected a state dict (a mapping of parameter names to tensors), "
            f"got {type(state).__name__}"
        )
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    expected = backbone.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    mismatched = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
                  if k in state and state[k].shape != v.shape]
    problems = []
    if missing:
        problems.append(f"missing keys: {_names(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_names(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatch (file vs model): {_names(mismatched)}")
    if problems:
        depth = getattr(backbone, "depth", "?")
        raise CheckpointError(
            f"{path}: does not fit the resnet{depth} backbone; " + "; ".join(problems)
        )
    backbone.load_state_dict(state, strict=False)
