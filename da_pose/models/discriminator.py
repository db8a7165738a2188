"""Domain discriminators for WS-CDA (Cao et al., ICCV 2019; FACTS section 5).

WS-CDA puts a domain discriminator on the pose model's features (``PoseOutput.features``) with
two binary outputs: y^, "animal vs other body plan" (humans in the paper), and z^, "target
species vs not", the latter counted on animal samples only (``L_DDL``, Cao et al. Eq. 1). The
two heads can be two instances with ``num_domains=1`` or one instance with ``num_domains=2``
(column 0 = y, column 1 = z); the loss in ``da_pose.adapt.wscda`` decides. Outputs are logits:
use ``binary_cross_entropy_with_logits`` (numerically safe under AMP), not a sigmoid + BCE.

The adversarial coupling (alpha = -1: the extractor maximises L_DDL) is done either with a
gradient reversal layer between features and discriminator (``da_pose.models.layers.GradReverse``)
or by alternating updates; the discriminator itself is the same.
"""

from __future__ import annotations

from torch import Tensor, nn


class DomainDiscriminator(nn.Module):
    """Global average pool of the features, then an MLP to per-domain logits.

    Pooling first makes the discriminator judge *what* the features encode rather than where
    (the pose is different in every image), and keeps it small and independent of the input
    size. No batch norm: batches are often one domain at a time, and batch statistics would
    then leak the domain label.

    Args:
        in_channels: C of the features (``model.feature_channels``).
        hidden: width of the two hidden layers.
        num_domains: number of binary outputs (1, or 2 for the y and z heads in one).

    Shape:
        features: (B, C, h, w) or already pooled (B, C) -> logits (B, num_domains)
    """

    def __init__(self, in_channels: int, hidden: int = 256, num_domains: int = 1):
        super().__init__()
        self.in_channels = in_channels
        self.num_domains = num_domains
        self.mlp = nn.Sequential(
            nn.Linear(in_channels, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, num_domains),
        )

    def forward(self, features: Tensor) -> Tensor:
        if features.dim() == 4:
            features = features.mean(dim=(2, 3))  # B, C
        if features.dim() != 2 or features.shape[1] != self.in_channels:
            raise ValueError(
                f"DomainDiscriminator: expected features (B, {self.in_channels}, h, w) or "
                f"(B, {self.in_channels}), got {tuple(features.shape)}"
            )
        return self.mlp(features)  # B, D


class ConvDomainDiscriminator(nn.Module):
    """A convolutional variant: two 3x3 stride-2 convs with LeakyReLU, then pool and a linear.

    Sees local feature statistics before pooling, for feature maps with a spatial extent worth
    judging (the hourglass's 64 x 64 map); heavier than :class:`DomainDiscriminator`.

    Shape:
        features: (B, C, h, w) -> logits (B, num_domains)
    """

    def __init__(self, in_channels: int, hidden: int = 256, num_domains: int = 1):
        super().__init__()
        self.in_channels = in_channels
        self.num_domains = num_domains
        self.convs = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 3, stride=2, padding=1),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride=2, padding=1),
            nn.LeakyReLU(0.2, inplace=True),
        )
        self.classifier = nn.Linear(hidden, num_domains)

    def forward(self, features: Tensor) -> Tensor:
        if features.dim() != 4 or features.shape[1] != self.in_channels:
            raise ValueError(
                f"ConvDomainDiscriminator: expected features (B, {self.in_channels}, h, w), "
                f"got {tuple(features.shape)}"
            )
        x = self.convs(features)  # B, hidden, h/4, w/4
        return self.classifier(x.mean(dim=(2, 3)))  # B, D


class StridedDomainClassifier(nn.Module):
    """UDA-Animal's domain classifier (Li & Lee CVPR 2021; FACTS section 8.1, M L142-171), sized
    to the feature map it reads.

    4 x 4 stride-2 convolutions (no bias) with LeakyReLU 0.1, ``width`` x 1, 2, 4, ... channels,
    until the map is 2 x 2 (at most ``max_convs``), then one convolution over the whole remaining
    map to a single logit; weights ~ N(0, 0.001) as published. On a 64 x 64 map this is the
    published stack (five convolutions, 64 -> 1024 channels, then a 2 x 2 convolution).

    Args:
        in_channels: C of the features it reads.
        size: side of the (square) feature map.

    Shape:
        features: (B, in_channels, size, size) -> logits (B,)
    """

    def __init__(self, in_channels: int, size: int, width: int = 64, max_convs: int = 5, slope: float = 0.1):
        super().__init__()
        self.in_channels = in_channels
        self.size = size
        layers: list[nn.Module] = []
        c, s = in_channels, size
        while s > 2 and len(layers) // 2 < max_convs:
            out = width * 2 ** (len(layers) // 2)
            layers += [nn.Conv2d(c, out, 4, stride=2, padding=1, bias=False), nn.LeakyReLU(slope, inplace=True)]
            c, s = out, s // 2
        layers.append(nn.Conv2d(c, 1, max(1, s), bias=False))
        self.net = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, mean=0.0, std=0.001)

    def forward(self, features: Tensor) -> Tensor:
        if features.dim() != 4 or features.shape[1] != self.in_channels:
            raise ValueError(f"StridedDomainClassifier: expected features (B, {self.in_channels}, h, w), "
                             f"got {tuple(features.shape)}")
        return self.net(features).flatten(1).mean(dim=1)  # B
