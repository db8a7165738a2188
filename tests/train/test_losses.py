"""joints_mse against a hand computation; masking; stacks; reductions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from da_pose.train.losses import joints_mse


def _hand(pred: np.ndarray, target: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Per-sample SimpleBaseline loss, element by element: 0.5 * mean over (K, h, w)."""
    b, k, h, w = pred.shape
    out = np.zeros(b)
    for i in range(b):
        total = 0.0
        for j in range(k):
            for y in range(h):
                for x in range(w):
                    diff = pred[i, j, y, x] * weight[i, j] - target[i, j, y, x] * weight[i, j]
                    total += diff**2
        out[i] = 0.5 * total / (k * h * w)
    return out


def _fixture(b=2, k=3, h=4, w=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    pred = torch.randn(b, k, h, w, generator=g, dtype=torch.float64)
    target = torch.rand(b, k, h, w, generator=g, dtype=torch.float64)
    weight = torch.tensor([[1.0, 0.0, 1.0], [0.5, 1.0, 2.0]], dtype=torch.float64)[:b, :k]
    return pred, target, weight


def test_matches_hand_computation():
    pred, target, weight = _fixture()
    hand = _hand(pred.numpy(), target.numpy(), weight.numpy())
    per_sample = joints_mse(pred, target, weight, reduction="none")
    assert per_sample.shape == (2,)
    np.testing.assert_allclose(per_sample.numpy(), hand, rtol=1e-12)
    np.testing.assert_allclose(joints_mse(pred, target, weight).item(), hand.mean(), rtol=1e-12)


def test_tiny_case_by_hand():
    # one sample, one joint, 1x2 map: 0.5 * ((1 - 0)^2 + (3 - 1)^2) / 2 = 1.25; weight 2 -> x4
    pred = torch.tensor([[[[1.0, 3.0]]]])
    target = torch.tensor([[[[0.0, 1.0]]]])
    assert joints_mse(pred, target, torch.ones(1, 1)).item() == pytest.approx(1.25)
    assert joints_mse(pred, target, torch.full((1, 1), 2.0)).item() == pytest.approx(5.0)


def test_zero_weight_masks_a_joint():
    pred, target, weight = _fixture()
    assert weight[0, 1] == 0
    changed = pred.clone()
    changed[0, 1] += 100.0
    base = joints_mse(pred, target, weight, reduction="none")
    assert torch.equal(joints_mse(changed, target, weight, reduction="none"), base)
    changed[1, 1] += 1.0  # weight 1: the loss moves
    assert joints_mse(changed, target, weight, reduction="none")[1] > base[1]


def test_masked_joint_gets_no_gradient():
    pred, target, weight = _fixture()
    pred.requires_grad_(True)
    joints_mse(pred, target, weight).backward()
    assert torch.all(pred.grad[0, 1] == 0)
    assert torch.all(pred.grad[0, 0] != 0)


def test_sums_over_stacks():
    pred, target, weight = _fixture()
    other = pred.flip(-1) * 0.3
    stacked = joints_mse([pred, other], target, weight, reduction="none")
    assert torch.allclose(stacked, joints_mse(pred, target, weight, reduction="none")
                          + joints_mse(other, target, weight, reduction="none"))
    assert torch.allclose(joints_mse((pred, other), target, weight),
                          joints_mse(pred, target, weight) + joints_mse(other, target, weight))


def test_mean_of_none_is_mean_and_default_weight_is_one():
    pred, target, _ = _fixture()
    ones = torch.ones(2, 3, dtype=torch.float64)
    per_sample = joints_mse(pred, target, reduction="none")
    assert torch.allclose(per_sample.mean(), joints_mse(pred, target))
    assert torch.equal(joints_mse(pred, target), joints_mse(pred, target, ones))
    # SimpleBaseline's (B, K, 1) weight layout is accepted
    assert torch.equal(joints_mse(pred, target, ones[..., None]), joints_mse(pred, target, ones))


def test_perfect_prediction_is_zero():
    _, target, weight = _fixture()
    assert joints_mse([target, target], target, weight).item() == 0.0


def test_half_precision_prediction_gives_a_float32_loss():
    pred, target, weight = _fixture()
    loss = joints_mse(pred.half(), target.float(), weight.float())
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(joints_mse(pred, target, weight).item(), rel=1e-2)


@pytest.mark.parametrize("kwargs,match", [
    ({"reduction": "sum"}, "reduction"),
    ({"weight": torch.ones(3, 2)}, "weight"),
    ({"heatmaps": torch.zeros(2, 3, 4, 4)}, "differ"),
    ({"heatmaps": []}, "empty"),
])
def test_bad_arguments(kwargs, match):
    pred, target, weight = _fixture()
    args = {"heatmaps": pred, "target": target, "weight": weight, **kwargs}
    with pytest.raises(ValueError, match=match):
        joints_mse(**args)
