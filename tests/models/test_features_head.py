"""``forward_features`` / ``forward_head`` compose to the model's last heatmap, for both families."""

import pytest
import torch

from da_pose.models.hourglass import HourglassNet
from da_pose.models.pose_resnet import pose_resnet


@pytest.mark.parametrize("make", [lambda: HourglassNet(18, stacks=2, blocks=1, depth=2, features=16),
                                  lambda: pose_resnet(18, 18, deconv_layers=3, deconv_filters=16)])
def test_features_then_head_is_the_last_heatmap(make):
    torch.manual_seed(0)
    model = make().eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = model(x)
        features = model.forward_features(x)
        head = model.forward_head(features)
    assert torch.equal(features, out.features)
    assert torch.equal(head, out.heatmaps[-1])
    assert features.shape[1] == model.feature_channels
    # a second head on the same features gets gradients only through what it reads
    extra = torch.nn.Conv2d(model.feature_channels, 18, 1)
    model.train()
    loss = extra(model.forward_features(x)).square().mean()
    loss.backward()
    assert extra.weight.grad is not None
