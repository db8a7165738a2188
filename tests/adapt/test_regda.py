"""RegDA pieces: GT(y) and GF(y) against hand computations, the KL loss against a direct formula,
the warm-start gradient layer, the signs of steps B and C on a tiny model, and end-to-end runs
(hourglass and PoseResNet, with an exact resume)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from da_pose import checkpoint, jobs
from da_pose.adapt import METHODS, run_adaptation
from da_pose.adapt.regda import (AdversarialHead, RegDAConfig, adversary_step, extractor_step, forward_with_features,
                                 ground_false, ground_truth, heatmap_kl, main_head, regression_head, scale_grad,
                                 warm_start_lambda)
from da_pose.config import TrainConfig, load_config
from da_pose.errors import ConfigError
from da_pose.models.hourglass import HourglassNet
from da_pose.models.pose_resnet import pose_resnet
from da_pose.train.trainer import Trainer
from tests.conftest import fresh_store, tiny_overrides

CPU = torch.device("cpu")


# ---------------------------------------------------------------------------------- GT(y), GF(y)
def peaks(b, k, h, w, locations, value=1.0):
    """A prediction whose joint (bi, ki) has its maximum ``value`` at (x, y); small noise elsewhere."""
    y = torch.rand(b, k, h, w, generator=torch.Generator().manual_seed(0)) * 0.1
    for (bi, ki), (x, yy) in locations.items():
        y[bi, ki, yy, x] = value
    return y


def test_ground_truth_is_a_truncated_peak_one_gaussian_at_the_argmax():
    h, w = 20, 24
    locs = {(0, 0): (3, 4), (0, 1): (23, 19), (1, 0): (10, 10), (1, 1): (0, 0)}
    y = peaks(2, 2, h, w, locs)
    y[1, 1] = -torch.rand(h, w) - 0.5  # maximum <= 0: the published get_max_preds puts it at (0, 0)
    y[1, 1, 5, 5] = -0.1
    gt = ground_truth(y, sigma=2.0, truncate=3.0)
    assert gt.shape == y.shape and not gt.requires_grad
    for (bi, ki), (mx, my) in locs.items():
        expected = np.zeros((h, w), np.float32)
        for yy in range(h):
            for x in range(w):
                if abs(x - mx) <= 6 and abs(yy - my) <= 6:
                    expected[yy, x] = math.exp(-((x - mx) ** 2 + (yy - my) ** 2) / 8.0)
        np.testing.assert_allclose(gt[bi, ki].numpy(), expected, rtol=1e-6, atol=1e-7)
        assert gt[bi, ki, my, mx] == 1.0
    # the 3-sigma square: 13 x 13 non-zero values for a peak away from the borders
    assert int((gt[1, 0] > 0).sum()) == 13 * 13


def test_ground_truth_ignores_gradient_and_follows_the_main_head():
    y = peaks(1, 3, 16, 16, {(0, 0): (2, 2), (0, 1): (8, 9), (0, 2): (14, 3)}).requires_grad_(True)
    gt = ground_truth(y)
    assert gt.grad_fn is None
    assert [tuple(int(v) for v in (gt[0, j] == 1).nonzero()[0]) for j in range(3)] == [(2, 2), (9, 8), (3, 14)]


def test_ground_false_equals_a_hand_computation():
    # two joints close together (their Gaussians overlap, so the clip matters), one far away
    h, w = 16, 16
    locs = {(0, 0): (4, 4), (0, 1): (5, 4), (0, 2): (12, 12)}
    gt = ground_truth(peaks(1, 3, h, w, locs))
    gf = ground_false(gt)
    g = gt[0].numpy()
    for k in range(3):
        expected = np.zeros((h, w), np.float32)
        for j in range(3):
            if j != k:
                expected += g[j]
        expected = np.clip(expected, 0.0, 1.0)
        np.testing.assert_allclose(gf[0, k].numpy(), expected, rtol=1e-6, atol=1e-7)
    # joint 2's ground false holds joints 0 and 1, clipped to 1 where they overlap
    assert gf[0, 2, 4, 4] == 1.0 and gf[0, 2, 4, 5] == 1.0 and gf[0, 2, 12, 12] == 0.0
    assert gf[0, 0, 4, 5] == 1.0 and gf[0, 0, 4, 4] == pytest.approx(math.exp(-1 / 8))
    assert float(gf.max()) <= 1.0 and float(gf.min()) >= 0.0


# ---------------------------------------------------------------------------------- the KL loss
def direct_kl(pred, target, weight, eps):
    """sum_p t_p log(t_p / q_p), t = (target + eps) / sum, q = softmax over the pixels; x weight;
    mean over B and K, written out with numpy loops."""
    pred, target, weight = pred.double().numpy(), target.double().numpy(), weight.double().numpy()
    b, k = pred.shape[:2]
    total = 0.0
    for i in range(b):
        for j in range(k):
            logits = pred[i, j].ravel()
            q = np.exp(logits - logits.max())
            q /= q.sum()
            t = target[i, j].ravel() + eps
            t /= t.sum()
            kl = sum(tp * math.log(tp / qp) for tp, qp in zip(t, q) if tp > 0)
            total += weight[i, j] * kl
    return total / (b * k)


@pytest.mark.parametrize("eps", [0.0, 1e-7, 0.01])
def test_kl_loss_matches_a_direct_computation(eps):
    gen = torch.Generator().manual_seed(1)
    pred = torch.randn(2, 3, 6, 5, generator=gen) * 3
    target = ground_truth(peaks(2, 3, 6, 5, {(0, 0): (1, 1), (1, 2): (4, 5)}), sigma=1.0)
    target[0, 1, :3] = 0.0  # a target with exact zeros
    weight = torch.tensor([[1.0, 0.5, 0.0], [2.0, 1.0, 1.0]])
    got = heatmap_kl(pred, target, weight, eps=eps)
    assert float(got) == pytest.approx(direct_kl(pred, target, weight, eps), rel=1e-5)
    assert float(heatmap_kl(pred, target, eps=eps)) == pytest.approx(
        direct_kl(pred, target, torch.ones(2, 3), eps), rel=1e-5)


def test_kl_loss_is_zero_for_a_matching_distribution_and_zero_for_an_empty_unweighted_map():
    target = torch.rand(1, 2, 4, 4) + 0.1
    pred = (target / target.flatten(2).sum(-1)[..., None, None]).log() + 7.0  # softmax recovers it
    assert float(heatmap_kl(pred, target)) == pytest.approx(0.0, abs=1e-6)
    empty = torch.zeros(1, 2, 4, 4)  # no label, eps 0: counts 0 (not NaN)
    assert float(heatmap_kl(torch.randn(1, 2, 4, 4), empty, torch.zeros(1, 2))) == 0.0


# ---------------------------------------------------------------------------------- warm start
def test_warm_start_lambda_schedule():
    assert warm_start_lambda(0) == 0.0
    assert warm_start_lambda(1000) == pytest.approx(0.2 / (1 + math.exp(-1)) - 0.1)
    assert warm_start_lambda(10**6) == pytest.approx(0.1)
    values = [warm_start_lambda(i) for i in range(0, 5000, 250)]
    assert all(a < b for a, b in zip(values, values[1:]))
    assert warm_start_lambda(0, lo=0.05, hi=0.5) == pytest.approx(0.05)


@pytest.mark.parametrize("iteration", [0, 700, 4000])
def test_the_warm_start_layer_scales_the_gradient_by_lambda(iteration):
    torch.manual_seed(0)
    head = AdversarialHead(regression_head(4, 3, hidden=8))
    head.iteration = iteration
    lam = head.lam()
    feats = torch.randn(2, 4, 5, 5)
    plain = feats.clone().requires_grad_(True)
    head.head(plain).square().sum().backward()
    head_grads = [p.grad.clone() for p in head.parameters()]
    head.zero_grad(set_to_none=True)
    scaled = feats.clone().requires_grad_(True)
    out = head(scaled)
    assert torch.equal(out, head.head(feats))  # identity forward
    out.square().sum().backward()
    assert torch.allclose(scaled.grad, plain.grad * lam, rtol=1e-6, atol=0)  # x lambda, not reversed
    assert lam >= 0 and (lam > 0) == (iteration > 0)
    for g, p in zip(head_grads, head.parameters()):  # the head's own gradient is not scaled
        assert torch.equal(p.grad, g)
    x = torch.ones(3, requires_grad=True)
    scale_grad(x, 0.25).sum().backward()
    assert torch.equal(x.grad, torch.full((3,), 0.25))


def test_head_architecture_and_checkpointed_counter():
    torch.manual_seed(0)
    head = AdversarialHead(regression_head(16, 5, hidden=256))
    convs = [m for m in head.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.kernel_size, c.out_channels) for c in convs] == [((3, 3), 256), ((1, 1), 5)]
    assert all(float(c.weight.detach().std()) == pytest.approx(0.001, rel=0.1) and not c.bias.any() for c in convs)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in head.modules())
    head.advance()
    head.advance()
    again = AdversarialHead(regression_head(16, 5))
    again.load_state_dict(head.state_dict())
    assert again.iteration == 2 and again.lam() == head.lam()


# ---------------------------------------------------------------------------------- signs of B and C
def tiny_trainer(model, head, tmp_path, lr):
    cfg = TrainConfig(optimizer="sgd", lr=lr, momentum=0.9, lr_milestones=(), batch_size=2)
    return Trainer(model, cfg, device=CPU, run_dir=tmp_path, extra_modules={"adv": head}, show_progress=False)


def disparities(trainer, head, images, gt, gf):
    """(KL(y_adv, GT), KL(y_adv, GF)) for fixed pseudo-labels, without touching the counter."""
    with torch.no_grad():
        _, feats = forward_with_features(trainer.net, images)
        y_adv = head(feats)
    return float(heatmap_kl(y_adv, gt, eps=1e-7)), float(heatmap_kl(y_adv, gf, eps=1e-7))


def snapshot(params):
    return [p.detach().clone() for p in params]


def changed(before, params):
    return [not torch.equal(b, p) for b, p in zip(before, params)]


@pytest.mark.parametrize("backbone", ["hourglass", "resnet"])
def test_steps_b_and_c_update_their_own_parameters_down_their_own_losses(tmp_path, backbone):
    """Step B moves the adversarial head alone, down KL(y_adv, GF) (towards the ground false: up
    the disparity with the main head); step C moves the feature extractor alone, down
    KL(y_adv, GT) (the disparity), through the warm-start layer."""
    torch.manual_seed(0)
    if backbone == "hourglass":
        model = HourglassNet(num_joints=3, stacks=2, blocks=1, depth=2, features=16)
    else:
        model = pose_resnet(18, num_joints=3, deconv_layers=3, deconv_filters=16)
    head = AdversarialHead(regression_head(16, 3, hidden=16))
    for m in head.modules():  # larger weights than N(0, 0.001): visible changes after one step
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.normal_(m.weight, std=0.1)
    head.iteration = 10_000  # lambda ~ 0.1
    cfg = RegDAConfig(head_channels=16)
    trainer = tiny_trainer(model, head, tmp_path, lr=0.05)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = trainer.net(images)
    gt = ground_truth(out.heatmaps[-1])
    gf = ground_false(gt)
    main = list(main_head(model).parameters())
    extractor = [p for p in model.parameters() if all(p is not q for q in main)]
    d_gt0, d_gf0 = disparities(trainer, head, images, gt, gf)

    before = snapshot(model.parameters()), snapshot(head.parameters())
    adversary_step(trainer, images, head, cfg)
    assert not any(changed(before[0], model.parameters()))  # B: the pose model is untouched
    assert changed(before[1], head.parameters())[-2:] == [True, True]  # its 1x1 conv (the 3x3 bias feeds BN: 0 grad)
    d_gt1, d_gf1 = disparities(trainer, head, images, gt, gf)
    assert d_gf1 < d_gf0  # the head moves towards the ground false

    before = snapshot(main), snapshot(head.parameters()), snapshot(extractor)
    extractor_step(trainer, images, head, cfg)
    assert not any(changed(before[0], main)) and not any(changed(before[1], head.parameters()))
    assert any(changed(before[2], extractor))
    d_gt2, _ = disparities(trainer, head, images, gt, gf)
    assert d_gt2 < d_gt1  # the features bring the adversarial head back to GT (step C's own labels)


def test_b_and_c_pull_the_adversarial_prediction_in_opposite_directions():
    """On the adversarial logits: step B's gradient lowers them at each joint's main-head peak and
    raises them at the other joints' peaks; step C's raises them at the joint's own peak."""
    locs = {(0, 0): (2, 3), (0, 1): (12, 4), (0, 2): (7, 13)}
    y = peaks(1, 3, 16, 16, locs)
    gt = ground_truth(y)
    gf = ground_false(gt)
    logits = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(2)).requires_grad_(True)
    (grad_b,) = torch.autograd.grad(heatmap_kl(logits, gf, eps=1e-7), logits)
    (grad_c,) = torch.autograd.grad(heatmap_kl(logits, gt, eps=1e-7), logits)
    for (_, k), (x, yy) in locs.items():
        assert grad_b[0, k, yy, x] > 0 and grad_c[0, k, yy, x] < 0  # descent: B down, C up at its own peak
        for (_, j), (xo, yo) in locs.items():
            if j != k:
                assert grad_b[0, k, yo, xo] < 0 and grad_c[0, k, yo, xo] > 0  # B up at the others' peaks


def test_step_c_does_nothing_to_the_features_at_lambda_zero(tmp_path):
    torch.manual_seed(0)
    model = HourglassNet(num_joints=3, stacks=1, blocks=1, depth=2, features=16)
    head = AdversarialHead(regression_head(16, 3, hidden=16))
    trainer = tiny_trainer(model, head, tmp_path, lr=0.05)
    extractor_step(trainer, torch.randn(2, 3, 32, 32), head, RegDAConfig())
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.count_nonzero(g) == 0 for g in grads)
    assert all(p.grad is None for p in head.parameters()) and model.score[-1].weight.grad is None


def test_config_is_checked():
    with pytest.raises(ConfigError, match="regda.source_loss: unknown value 'l1'"):
        load_config(None, ["regda.source_loss=l1"])
    with pytest.raises(ConfigError, match="regda.sigma must be positive"):
        load_config(None, ["regda.sigma=0"])
    cfg = load_config(None, [])
    assert cfg.section("regda") == RegDAConfig() and RegDAConfig().margin == 4.0
    assert "regda" in METHODS


# ---------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def store(tmp_path_factory, mlflow_template):
    """One MLflow store for the module, copied from the initialised template; run names differ."""
    return fresh_store(mlflow_template, tmp_path_factory.mktemp("regda_store") / "mlruns.db")


RESNET = ["model.backbone=resnet18", "model.deconv_filters=16"]


@pytest.fixture(scope="module")
def pretrained(tiny_benchmark, tmp_path_factory, store, tiny_source):
    """A one-epoch source-only checkpoint per backbone (the hourglass is the session's)."""
    tmp = tmp_path_factory.mktemp("regda_pre")
    cfg = load_config(None, tiny_overrides(tiny_benchmark, tmp, "src_resnet", uri=store) + RESNET
                      + ["train.epochs=1"])
    jobs.run_pretrain(cfg)
    return {"hourglass": tiny_source, "resnet": Path(cfg.out_dir) / "tests" / "src_resnet" / "last.pt"}


def regda_config(root, tmp_path, store, name, init, *extra):
    return load_config(None, tiny_overrides(root, tmp_path, name, uri=store) + [
        f"init={init}", "train.epochs=1", "regda.steps_per_epoch=2", "regda.head_channels=8", "regda.warm_iters=2",
        "train.criteria=false", *extra])


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["hourglass", "resnet"])
def test_regda_runs_end_to_end(tiny_benchmark, tmp_path, store, pretrained, backbone):
    extra = RESNET if backbone == "resnet" else []
    cfg = regda_config(tiny_benchmark, tmp_path, store, f"regda_{backbone}", pretrained[backbone], *extra)
    metrics = run_adaptation(cfg, "regda")
    assert "target_test/pck@0.05_crop/mean" in metrics
    client = MlflowClient(store)
    exp = client.get_experiment_by_name("tests")
    run = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}[f"regda_{backbone}"]
    assert run.info.status == "FINISHED" and run.data.tags["method"] == "regda"
    for key in ("train/loss/source", "train/loss/disparity_source", "train/loss/ground_false",
                "train/loss/ground_truth", "train/regda/lambda"):
        hist = client.get_metric_history(run.info.run_id, key)
        assert len(hist) == 2 and all(math.isfinite(m.value) for m in hist), key
    lam = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "train/regda/lambda"),
                                   key=lambda m: m.step)]
    assert lam[0] == 0.0 and lam[1] > 0.0
    ckpt = checkpoint.load(Path(cfg.out_dir) / "tests" / f"regda_{backbone}" / "last.pt")
    assert ckpt["step"] == 2 and ckpt["extra_modules"]["regda_adversarial_head"]["_extra_state"]["iteration"] == 2


@pytest.mark.slow
def test_regda_resume_continues_exactly(tiny_benchmark, tmp_path, store, pretrained):
    init = pretrained["hourglass"]
    run_adaptation(regda_config(tiny_benchmark, tmp_path, store, "rg_full", init, "train.epochs=2"), "regda")
    run_adaptation(regda_config(tiny_benchmark, tmp_path, store, "rg_half", init), "regda")
    half = regda_config(tiny_benchmark, tmp_path, store, "rg_half", init, "train.epochs=2", "resume=auto")
    run_adaptation(half, "regda")
    a = checkpoint.load(Path(half.out_dir) / "tests" / "rg_full" / "last.pt")
    b = checkpoint.load(Path(half.out_dir) / "tests" / "rg_half" / "last.pt")
    assert a["epoch"] == b["epoch"] == 2 and a["step"] == b["step"] == 4
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    ha, hb = a["extra_modules"]["regda_adversarial_head"], b["extra_modules"]["regda_adversarial_head"]
    for k, v in ha.items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(v, hb[k]), k
    assert ha["_extra_state"]["iteration"] == hb["_extra_state"]["iteration"] == 4
