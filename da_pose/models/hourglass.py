"""Stacked hourglass network (Newell et al., ECCV 2016), the CC-SSL model (FACTS section 4).

The layout follows the pytorch-pose code that CC-SSL (Mu et al., CVPR 2020) trains: a 7x7
stride-2 conv stem, pre-activation residual bottlenecks, a 2x2 max-pool to 1/4 resolution,
then per stack an hourglass, ``blocks`` residuals, a 1x1 conv-BN-ReLU and a 1x1 heatmap conv;
every stack but the last adds 1x1 remaps of its features and of its heatmaps back onto its
input (intermediate supervision). Module names equal that code's, so a published checkpoint's
state dict (with any ``module.`` prefix stripped) loads by name. At the published setting (4
stacks, 1 block, depth 4, 256 features, 18 joints) the model has about 13.0 M parameters and
maps a 256 x 256 input to 64 x 64 heatmaps.
"""

from __future__ import annotations

from torch import Tensor, nn

from da_pose.errors import ConfigError
from da_pose.models.layers import Bottleneck, PoseOutput, add_upsampled2x, max_pool2x2, residual_stack


class Hourglass(nn.Module):
    """One hourglass of ``depth`` levels, each level halving the resolution.

    ``hg[d]`` holds the residuals of level ``d + 1`` counted from the innermost: ``[0]`` the
    skip branch at full resolution, ``[1]`` after pooling, ``[2]`` after the inner recursion;
    the innermost level (``hg[0]``) has a fourth residual in place of a deeper hourglass.

    Shape:
        x: (B, 2 * planes, H, W) -> (B, 2 * planes, H, W); H and W divisible by ``2**depth``.
    """

    def __init__(self, planes: int, blocks: int, depth: int):
        super().__init__()
        self.depth = depth
        width = planes * Bottleneck.expansion
        levels = []
        for level in range(depth):
            count = 4 if level == 0 else 3
            levels.append(
                nn.ModuleList(residual_stack(width, planes, blocks) for _ in range(count))
            )
        self.hg = nn.ModuleList(levels)

    def _level(self, n: int, x: Tensor) -> Tensor:
        res = self.hg[n - 1]
        up1 = res[0](x)  # B, C, H, W: skip branch
        low = res[1](max_pool2x2(x))  # B, C, H/2, W/2
        low = self._level(n - 1, low) if n > 1 else res[3](low)
        low = res[2](low)
        return add_upsampled2x(up1, low)  # B, C, H, W: up1 + nearest 2x upsampling of low

    def forward(self, x: Tensor) -> Tensor:
        return self._level(self.depth, x)


class HourglassNet(nn.Module):
    """Stacked hourglass pose model.

    Args:
        num_joints: K, heatmaps per stack.
        stacks: hourglasses in sequence, each supervised (the loss sums over stacks).
        blocks: residual bottlenecks per residual unit.
        depth: levels per hourglass (input side must be divisible by ``4 * 2**depth``).
        features: width of the stacked part (256 published; divisible by 4). The stem uses
            ``features / 4`` then ``features / 2`` channels (64 and 128 published).

    Attributes:
        num_joints, stride (= 4, input / heatmap size), feature_channels (= features).

    ``features`` of the output is the last stack's map after its 1x1 conv-BN-ReLU, right before
    its heatmap conv: the representation every joint's heatmap is read from, which is what the
    WS-CDA discriminator should make domain-invariant.

    Shape:
        x: (B, 3, H, W) -> heatmaps: ``stacks`` x (B, K, H/4, W/4); features: (B, features,
        H/4, W/4).
    """

    stride = 4

    def __init__(self, num_joints: int = 18, stacks: int = 4, blocks: int = 1, depth: int = 4,
                 features: int = 256):
        super().__init__()
        for name, value in (("num_joints", num_joints), ("stacks", stacks), ("blocks", blocks),
                            ("depth", depth), ("features", features)):
            if value < 1:
                raise ConfigError(f"hourglass {name} must be >= 1, got {value}")
        if features % 4:
            raise ConfigError(f"hourglass features must be a multiple of 4, got {features}")
        self.num_joints = num_joints
        self.stacks = stacks
        self.blocks = blocks
        self.depth = depth
        self.feature_channels = features
        stem = features // 4  # 64 at the published width
        planes = features // 2  # bottleneck planes; output width 2 * planes = features

        self.conv1 = nn.Conv2d(3, stem, kernel_size=7, stride=2, padding=3, bias=True)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = residual_stack(stem, stem, 1)  # -> features / 2
        self.layer2 = residual_stack(2 * stem, 2 * stem, 1)  # -> features
        self.layer3 = residual_stack(features, planes, 1)  # -> features

        self.hg = nn.ModuleList(Hourglass(planes, blocks, depth) for _ in range(stacks))
        self.res = nn.ModuleList(residual_stack(features, planes, blocks) for _ in range(stacks))
        self.fc = nn.ModuleList(
            nn.Sequential(nn.Conv2d(features, features, 1, bias=True), nn.BatchNorm2d(features),
                          nn.ReLU(inplace=True))
            for _ in range(stacks)
        )
        self.score = nn.ModuleList(nn.Conv2d(features, num_joints, 1, bias=True)
                                   for _ in range(stacks))
        self.fc_ = nn.ModuleList(nn.Conv2d(features, features, 1, bias=True)
                                 for _ in range(stacks - 1))
        self.score_ = nn.ModuleList(nn.Conv2d(num_joints, features, 1, bias=True)
                                    for _ in range(stacks - 1))
        # Heatmap heads start near zero (SimpleBaseline's std 0.001): the default init starts
        # every map far from the mostly-zero targets and spends the first epochs unlearning it.
        for head in self.score:
            nn.init.normal_(head.weight, std=0.001)
            nn.init.zeros_(head.bias)

    def _stacks(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        """The stem and every stack: the heatmaps of all stacks but the last, and the last
        stack's features."""
        multiple = 4 * 2**self.depth
        if x.shape[-1] % multiple or x.shape[-2] % multiple:
            raise ConfigError(
                f"hourglass input {x.shape[-2]}x{x.shape[-1]}: expected sides divisible by "
                f"{multiple} (4 * 2**depth, depth={self.depth})"
            )
        x = self.relu(self.bn1(self.conv1(x)))  # B, F/4, H/2, W/2
        x = max_pool2x2(self.layer1(x))  # B, F/2, H/4, W/4
        x = self.layer3(self.layer2(x))  # B, F, H/4, W/4
        heatmaps = []
        y = x
        for i in range(self.stacks):
            y = self.fc[i](self.res[i](self.hg[i](x)))  # B, F, H/4, W/4
            if i < self.stacks - 1:
                score = self.score[i](y)  # B, K, H/4, W/4
                heatmaps.append(score)
                x = x + self.fc_[i](y) + self.score_[i](score)
        return heatmaps, y

    def forward_features(self, x: Tensor) -> Tensor:
        """The last stack's features (what ``PoseOutput.features`` holds).

        Shape: (B, 3, H, W) -> (B, features, H/4, W/4)
        """
        return self._stacks(x)[1]

    def forward_head(self, features: Tensor) -> Tensor:
        """The last stack's score head. Shape: (B, features, h, w) -> (B, K, h, w)"""
        return self.score[-1](features)

    def forward(self, x: Tensor) -> PoseOutput:
        heatmaps, y = self._stacks(x)
        heatmaps.append(self.forward_head(y))
        return PoseOutput(heatmaps, y)

    def extra_repr(self) -> str:
        return (f"num_joints={self.num_joints}, stacks={self.stacks}, blocks={self.blocks}, "
                f"depth={self.depth}, features={self.feature_channels}")
