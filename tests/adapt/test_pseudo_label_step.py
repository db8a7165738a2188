"""pseudo_label_step: L = L_src + gamma * L_tgt over one mixed forward pass."""

import pytest
import torch

from da_pose.adapt.pseudo_labels import pseudo_label_step
from da_pose.config import ModelConfig
from da_pose.models.factory import build_model
from da_pose.train.losses import joints_mse


def model_of(stacks=2):
    torch.manual_seed(0)
    return build_model(ModelConfig(backbone="hourglass", stacks=stacks, depth=2, features=16), 18)


def part(n, seed, weight=None):
    g = torch.Generator().manual_seed(seed)
    w = (torch.rand(n, 18, generator=g) > 0.3).float() if weight is None else weight
    return {"image": torch.randn(n, 3, 64, 64, generator=g), "target": torch.rand(n, 18, 16, 16, generator=g),
            "target_weight": w}


@pytest.fixture
def batch():
    return {"source": part(3, 1), "target": part(2, 2)}


@torch.no_grad()
def test_loss_is_source_plus_gamma_target(batch):
    model = model_of().eval()  # eval: each half's maps do not depend on the other half
    out = pseudo_label_step(model, batch, gamma=7.0)
    src, tgt = batch["source"], batch["target"]
    l_src = joints_mse(model(src["image"]).heatmaps, src["target"], src["target_weight"])
    l_tgt = joints_mse(model(tgt["image"]).heatmaps, tgt["target"], tgt["target_weight"])
    assert l_src > 0 and l_tgt > 0
    torch.testing.assert_close(out["loss"], l_src + 7.0 * l_tgt, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(out["loss/src"], l_src, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(out["loss/tgt"], l_tgt, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(out["target/kept_joints"], tgt["target_weight"].mean())
    assert set(out) == {"loss", "loss/src", "loss/tgt", "target/kept_joints"}


def test_train_mode_is_one_forward_pass_over_both_halves(batch):
    model = model_of().train()
    src, tgt = batch["source"], batch["target"]
    torch.manual_seed(1)
    out = pseudo_label_step(model, batch, gamma=10.0)
    assert out["loss"].requires_grad and not out["loss/src"].requires_grad and not out["loss/tgt"].requires_grad
    # BatchNorm statistics over the concatenated batch: the same as forwarding it by hand
    model2 = model_of().train()
    hm = model2(torch.cat([src["image"], tgt["image"]])).heatmaps
    expected = (joints_mse([h[:3] for h in hm], src["target"], src["target_weight"])
                + 10.0 * joints_mse([h[3:] for h in hm], tgt["target"], tgt["target_weight"]))
    torch.testing.assert_close(out["loss"], expected, rtol=1e-5, atol=1e-7)


@torch.no_grad()
def test_rejected_joints_do_not_count(batch):
    model = model_of().eval()
    tgt = batch["target"]
    weight = torch.ones(2, 18)
    weight[:, ::2] = 0.0  # every other joint rejected
    tgt["target_weight"] = weight
    before = pseudo_label_step(model, batch, gamma=10.0)
    changed = dict(tgt, target=tgt["target"].clone())
    changed["target"][:, ::2] = 5.0  # rejected joints' targets: anything
    after = pseudo_label_step(model, {"source": batch["source"], "target": changed}, gamma=10.0)
    torch.testing.assert_close(after["loss"], before["loss"], rtol=0, atol=0)
    torch.testing.assert_close(after["target/kept_joints"], torch.tensor(0.5))
    kept_changed = dict(tgt, target=tgt["target"].clone())
    kept_changed["target"][:, 1] = 5.0  # a kept joint's target does count
    moved = pseudo_label_step(model, {"source": batch["source"], "target": kept_changed}, gamma=10.0)
    assert moved["loss"] > before["loss"] + 1.0
