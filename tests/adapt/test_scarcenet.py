"""ScarceNet: the small-loss selection keeps the scheduled fraction, the published schedules, the
agreement check on constructed heatmaps, the re-labels and labelled weights, the EMA ramp from
t = 0, the RandAugment operations and cutouts, and an end-to-end run (with an exact resume, and
with labelled target images) on the tiny generated benchmark."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from da_pose import checkpoint
from da_pose.adapt import run_adaptation
from da_pose.adapt.scarcenet import (RampTeacher, ScarceNetConfig, agreement, consistency_weight, joint_order,
                                     map_keypoints, small_loss_mask, small_loss_rate, supervision, view_affines)
from da_pose.adapt.uda_animal import Clock
from da_pose.config import load_config
from da_pose.data import randaugment as ra
from da_pose.data.codec import HeatmapCodec
from da_pose.data.skeleton import FLIP_INDEX
from da_pose.data.transforms import apply_affine, flip_affine
from da_pose.errors import ConfigError
from da_pose.models.hourglass import HourglassNet
from tests.conftest import Killed, die_after_epoch, fresh_store, tiny_overrides

CFG = ScarceNetConfig()
K = len(FLIP_INDEX)


# ---------------------------------------------------------------------------------- schedules
@pytest.mark.parametrize("e", [0, 1, 3, 5, 8, 9, 10, 15, 29, 30, 31, 149])
def test_schedules_equal_the_published_formulas(e):
    r = min(max(0.5 * (1 + math.cos(math.pi * min(e, 30) / 30)), 0.8), 1.0)
    assert small_loss_rate(e, CFG) == pytest.approx(r)
    assert consistency_weight(e, CFG) == pytest.approx(2.0 * math.exp(-5 * (1 - min(e, 10) / 10) ** 2))


def test_schedule_values_at_a_few_epochs():
    assert small_loss_rate(0, CFG) == 1.0
    assert small_loss_rate(5, CFG) == pytest.approx(0.5 * (1 + math.cos(math.pi / 6)))
    # the cosine crosses 0.8 between epochs 8 and 9 (FACTS 8.4: "at about epoch 9")
    assert small_loss_rate(8, CFG) > 0.8 and small_loss_rate(9, CFG) == 0.8 and small_loss_rate(100, CFG) == 0.8
    assert consistency_weight(0, CFG) == pytest.approx(2 * math.exp(-5)) and consistency_weight(10, CFG) == 2.0
    # the run's steps map onto the published 150 epochs
    clock = Clock(total_steps=300, epochs=150)
    clock.step = 21
    assert clock.epoch() == 10 and small_loss_rate(clock.epoch(), CFG) == 0.8


# ---------------------------------------------------------------------------------- small-loss selection
@pytest.mark.parametrize("e", [0, 3, 6, 9, 30])
def test_small_loss_selection_keeps_the_scheduled_fraction_of_the_smallest_losses(e):
    g = torch.Generator().manual_seed(e)
    b, h = 5, 8
    pred, target = torch.rand(b, K, h, h, generator=g), torch.rand(b, K, h, h, generator=g)
    weight = (torch.rand(b, K, generator=g) > 0.3).float()
    rate = small_loss_rate(e, CFG)
    mask = small_loss_mask(pred, target, weight, rate)
    n_visible = int((weight > 0).sum())
    assert int(mask.sum()) == math.floor(rate * n_visible)
    assert not (mask & (weight == 0)).any()  # only labelled joints are candidates
    per = ((pred - target) ** 2).mean(dim=(2, 3))  # by hand, across the whole batch
    chosen, others = per[mask], per[~mask & (weight > 0)]
    if others.numel():
        assert chosen.max() <= others.min()
    # the whole batch competes: one image may keep more joints than another
    if rate < 1:
        per_image = mask.sum(1).float() / (weight > 0).sum(1).clamp_min(1).float()
        assert per_image.max() > per_image.min()


def test_small_loss_selection_extremes():
    pred = torch.zeros(2, K, 4, 4)
    target = torch.rand(2, K, 4, 4)
    weight = torch.ones(2, K)
    assert small_loss_mask(pred, target, weight, 1.0).all()
    assert not small_loss_mask(pred, target, weight, 0.0).any()
    assert not small_loss_mask(pred, target, torch.zeros(2, K), 0.8).any()


# ---------------------------------------------------------------------------------- agreement
CODEC = HeatmapCodec(64, 16, sigma=1.0)


def one_hot_maps(points_hm: torch.Tensor, size: int = 16) -> torch.Tensor:
    """(B, K, 2) integer heatmap points -> maps with a single peak there."""
    b, k, _ = points_hm.shape
    maps = torch.zeros(b, k, size, size)
    for i in range(b):
        for j in range(k):
            x, y = points_hm[i, j].long().tolist()
            maps[i, j, y, x] = 1.0
    return maps


@pytest.mark.parametrize("delta, agree", [(0.0, True), (0.45, True), (0.59, True), (0.61, False), (1.0, False)])
def test_agreement_within_the_threshold_only(delta, agree):
    v2_peak = torch.tensor([[[7, 9]] * K], dtype=torch.float64)  # v2's argmax of every joint
    plain_hm = v2_peak + torch.tensor([delta, 0.0], dtype=torch.float64)  # un-augmented prediction, hm px
    plain_xy = CODEC.to_input_coords(plain_hm)
    a_v = torch.eye(2, 3, dtype=torch.float64)[None]
    got = agreement(one_hot_maps(v2_peak), plain_xy, a_v, CODEC, 0.6)
    assert bool(got.all()) is agree and bool(got.any()) is agree


def test_agreement_maps_through_the_exact_affine_and_matches_joints_through_a_flip():
    # v2 = the crop mirrored and shifted: the un-augmented prediction of joint j maps to a point,
    # v2 predicts joint j in channel flip_index[j]
    a_v = torch.as_tensor(flip_affine(64), dtype=torch.float64)
    a_v[0, 2] += 4.0  # + one heatmap pixel to the right
    a_v = a_v[None]
    g = torch.Generator().manual_seed(0)
    plain_hm = torch.randint(2, 13, (1, K, 2), generator=g).double()
    plain_xy = CODEC.to_input_coords(plain_hm)
    mapped = CODEC.to_heatmap_coords(apply_affine(a_v, plain_xy)).round()  # integer here: exact
    v2_peak = mapped[:, FLIP_INDEX]  # channel k of v2 holds joint flip_index[k]
    v2_peak[0, 0, 0] += 1  # joint flip_index[0] disagrees by one heatmap pixel
    got = agreement(one_hot_maps(v2_peak), plain_xy, a_v, CODEC, 0.6)
    expect = torch.ones(1, K, dtype=torch.bool)
    expect[0, FLIP_INDEX[0]] = False
    assert torch.equal(got, expect)
    assert torch.equal(joint_order(a_v, FLIP_INDEX)[0], torch.as_tensor(FLIP_INDEX))


def test_map_keypoints_swaps_left_and_right_under_a_flip():
    kp = torch.rand(1, K, 3, dtype=torch.float64) * 60
    kp[..., 2] = torch.arange(K) % 2
    a = torch.as_tensor(flip_affine(64), dtype=torch.float64)[None]
    out = map_keypoints(kp, a, FLIP_INDEX)
    for k in range(K):
        j = FLIP_INDEX[k]
        assert out[0, k, 0] == pytest.approx(63 - kp[0, j, 0].item())
        assert out[0, k, 1] == pytest.approx(kp[0, j, 1].item()) and out[0, k, 2] == kp[0, j, 2]


def test_supervision_weights_small_loss_relabels_and_labelled_images():
    b, h = 3, 4
    init_t, re_t = torch.rand(b, K, h, h), torch.rand(b, K, h, h)
    init_w = torch.ones(b, K)
    init_w[:, 0] = 0
    small = torch.zeros(b, K, dtype=torch.bool)
    small[:, 1] = True
    re_w = torch.zeros(b, K)
    re_w[:, [0, 2]] = 1.0  # joint 0 was rejected initially, it agrees: re-labelled
    labelled = torch.tensor([False, False, True])
    target, weight = supervision(init_t, init_w, small, (re_t, re_w), labelled, CFG)
    assert weight[0].tolist() == [1.0, 1.0, 1.0] + [0.0] * (K - 3)
    assert torch.equal(target[0, 0], re_t[0, 0]) and torch.equal(target[0, 1], init_t[0, 1])
    assert torch.equal(target[0, 2], re_t[0, 2]) and torch.equal(target[0, 3], init_t[0, 3])
    assert torch.equal(weight[2], 2.0 * init_w[2]) and torch.equal(target[2], init_t[2])
    plain, w = supervision(init_t, init_w, small, None, torch.zeros(b, dtype=torch.bool), CFG)
    assert torch.equal(w, small.float()) and torch.equal(plain, init_t)


# ---------------------------------------------------------------------------------- teacher, views
def test_ema_ramp_starts_at_zero_so_the_teacher_copies_the_student():
    torch.manual_seed(0)
    student = HourglassNet(num_joints=K, stacks=1, blocks=1, depth=2, features=16)
    teacher = RampTeacher(HourglassNet(num_joints=K, stacks=1, blocks=1, depth=2, features=16), 0.999, ramp=True)
    assert teacher.momentum() == 0.0
    assert teacher.update(student) == 0.0
    for (_, p), (_, q) in zip(student.named_parameters(), teacher.model.named_parameters()):
        assert torch.equal(p, q)
    assert [teacher.update(student) for _ in range(3)] == pytest.approx([0.5, 2 / 3, 0.75])
    teacher.updates.fill_(5000)
    assert teacher.momentum() == 0.999


def test_view_affines_respect_the_published_ranges():
    torch.manual_seed(0)
    a = view_affines(4000, 64, 0.5, 0.5, 40.0, 80.0, 0.6, 0.5)
    lin = a[:, :, :2]
    zoom = torch.sqrt(torch.abs(torch.linalg.det(lin)))  # 1 / box scale
    assert zoom.min() >= 1 / 1.5 - 1e-9 and zoom.max() <= 1 / 0.5 + 1e-9
    angle = torch.rad2deg(torch.atan2(lin[:, 0, 1], lin[:, 1, 1])).abs()
    assert angle.max() <= 80 + 1e-6 and 0.3 < (angle < 1e-9).double().mean() < 0.5  # p 0.6 of rotating
    assert 0.45 < (torch.linalg.det(lin) < 0).double().mean() < 0.55  # flips
    centre = torch.full((4000, 1, 2), 31.5, dtype=torch.float64)
    assert torch.allclose(apply_affine(a, centre), centre)  # about the crop centre


def test_step_returns_finite_terms_and_only_the_student_learns():
    from da_pose.adapt.scarcenet import Parts, scarcenet_step

    torch.manual_seed(0)
    student = HourglassNet(num_joints=K, stacks=1, blocks=1, depth=2, features=16)
    teacher = RampTeacher(HourglassNet(num_joints=K, stacks=1, blocks=1, depth=2, features=16), 0.999, ramp=True)
    teacher.copy_from(student)
    mean, std = torch.full((1, 3, 1, 1), 0.5), torch.full((1, 3, 1, 1), 0.25)
    parts = Parts(teacher, Clock(10, 150), CODEC, mean, std, torch.tensor([False, True, False, False]))
    kp = torch.rand(4, K, 3) * 60
    kp[..., 2] = (torch.rand(4, K) > 0.3).float()
    target, weight = CODEC.encode_batch(kp)
    batch = {"source": {"image": torch.randn(4, 3, 64, 64), "target": target, "target_weight": weight},
             "target": {"image": torch.randn(4, 3, 64, 64), "keypoints": kp, "index": torch.arange(4)}}
    out = scarcenet_step(student, batch, parts, dataclasses.replace(CFG, dist_thre=3.0))
    for key in ("loss", "loss/sup", "loss/cons", "loss/src", "sel/rate", "sel/agree_fraction"):
        assert torch.isfinite(out[key]).all(), key
    assert out["sel/rate"] == 1.0 and out["sel/labelled_images"] == 1.0
    out["loss"].backward()
    assert all(p.grad is not None for p in student.parameters())
    assert all(p.grad is None for p in teacher.parameters())
    no_src = scarcenet_step(student, batch, parts, dataclasses.replace(CFG, source_weight=0.0, relabel=False))
    assert "loss/src" not in no_src and "sel/agree_fraction" not in no_src


# ---------------------------------------------------------------------------------- RandAugment
@pytest.mark.parametrize("name", ra.OPS)
def test_every_operation_keeps_shape_and_range(name):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(6, 3, 20, 24, generator=g) * 0.6 + 0.2
    for v in (1, 5, 9):
        out = ra.apply_op(x, name, torch.full((6,), v))
        assert out.shape == x.shape and out.dtype == x.dtype
        assert out.min() >= 0 and out.max() <= 1 and torch.isfinite(out).all()
    if name == "Identity":
        assert ra.apply_op(x, name, torch.full((6,), 3)) is x


def test_operations_at_their_published_magnitudes():
    x = torch.full((1, 3, 8, 8), 200 / 255)
    x[..., :4] = 20 / 255
    v = torch.tensor([5])
    assert torch.allclose(ra.apply_op(x, "Brightness", v), x * 0.5)  # 0.9 * 5 / 10 + 0.05
    sol = ra.apply_op(x, "Solarize", v)  # threshold 256 - 128: 200 inverted, 20 kept
    assert torch.allclose(sol[..., 4:], torch.full_like(sol[..., 4:], 55 / 255))
    assert torch.equal(sol[..., :4], x[..., :4])
    post = ra.apply_op(x, "Posterize", torch.tensor([9]))  # int(36 / 10) + 4 = 7 bits
    assert torch.allclose(post * 255, torch.floor(x * 255 / 2).round() * 2)
    auto = ra.apply_op(x, "AutoContrast", v)
    assert auto.min() == 0 and auto.max() == 1
    # PIL's equalize: step = (pixels - count of the last level) // 255; 0 (a tiny image) = unchanged
    assert torch.equal(ra.apply_op(x, "Equalize", v), x)
    big = torch.full((1, 3, 64, 64), 200 / 255)
    big[..., :32] = 20 / 255
    eq = ra.apply_op(big, "Equalize", v)  # two levels of 2048 pixels: step 8, levels 0 and 255
    assert sorted(set((eq * 255).round().flatten().tolist())) == [0.0, 255.0]


def test_rand_augment_identity_and_skipped_images_are_exact():
    mean = torch.tensor([0.4, 0.5, 0.6]).view(1, 3, 1, 1)
    std = torch.tensor([0.2, 0.25, 0.3]).view(1, 3, 1, 1)
    x = torch.randn(4, 3, 16, 16) * 3  # beyond the pixel range: a round trip would clip it
    plan = ra.draw_plan(4)
    plan["ops"][:] = ra.IDENTITY
    plan["apply"][:] = True
    assert torch.equal(ra.rand_augment(x, mean, std, plan), x)
    plan = ra.draw_plan(4)
    plan["apply"][:] = False
    assert torch.equal(ra.rand_augment(x, mean, std, plan), x)
    plan = {"ops": torch.tensor([[ra.OPS.index("Brightness"), ra.IDENTITY]] * 2 + [[ra.IDENTITY] * 2] * 2),
            "mags": torch.full((4, 2), 5), "apply": torch.ones(4, 2, dtype=torch.bool)}
    out = ra.rand_augment(x, mean, std, plan)
    assert torch.equal(out[2:], x[2:]) and not torch.equal(out[:2], x[:2])
    raw = (out[:2] * std + mean)
    assert torch.allclose(raw, (x[:2] * std + mean).clamp(0, 1) * 0.5, atol=1e-6)


def test_draw_plan_ranges():
    torch.manual_seed(0)
    plan = ra.draw_plan(5000, 2, 10, 0.5)
    assert plan["ops"].shape == (5000, 2) and set(plan["ops"].unique().tolist()) == set(range(len(ra.OPS)))
    assert plan["mags"].min() == 1 and plan["mags"].max() == 9
    assert 0.47 < plan["apply"].float().mean() < 0.53


def test_cutout_count_size_and_fill():
    torch.manual_seed(0)
    boxes = ra.cutout_boxes(200, 6, 32, 256)
    assert boxes.shape == (200, 6, 4)
    w, h = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
    assert w.max() == 32 and h.max() == 32 and w.min() >= 1
    inner = (boxes[..., 0] > 0) & (boxes[..., 2] < 256) & (boxes[..., 1] > 0) & (boxes[..., 3] < 256)
    assert (w[inner] == 32).all() and (h[inner] == 32).all()
    # six disjoint boxes paint exactly 6 x 32 x 32 pixels, only in active images
    x = torch.zeros(2, 3, 256, 256)
    disjoint = torch.tensor([[[40 * i, 10, 40 * i + 32, 42] for i in range(6)]] * 2)
    fill = torch.tensor([1.0, 2.0, 3.0]).view(1, 3, 1, 1)
    out = ra.apply_cutout(x, disjoint, torch.tensor([True, False]), fill)
    for c in range(3):
        assert int((out[0, c] == c + 1).sum()) == 6 * 32 * 32
    assert torch.equal(out[1], x[1])


def test_random_cutout_probability_and_grey():
    mean = torch.tensor([0.4, 0.5, 0.6]).view(1, 3, 1, 1)
    std = torch.tensor([0.2, 0.25, 0.3]).view(1, 3, 1, 1)
    x = torch.full((3, 3, 64, 64), 10.0)
    assert torch.equal(ra.random_cutout(x, mean, std, 6, 8, p=0.0), x)
    out = ra.random_cutout(x, mean, std, 6, 8, p=1.0)
    grey = (ra.GREY - mean) / std
    for i in range(3):
        painted = out[i] != x[i]  # 3, 64, 64
        assert painted.any() and torch.equal(painted[0], painted[1]) and torch.equal(painted[0], painted[2])
        assert int(painted[0].sum()) <= 6 * 8 * 8
        for c in range(3):
            assert torch.allclose(out[i, c][painted[c]], grey[0, c, 0, 0].expand(int(painted[c].sum())))


# ---------------------------------------------------------------------------------- config
def test_config_checks():
    with pytest.raises(ConfigError, match="labels"):
        load_config(None, ["scarcenet.labels=all"])
    with pytest.raises(ConfigError, match="keep"):
        load_config(None, ["scarcenet.keep=0"])
    with pytest.raises(ConfigError, match="dist_thre"):
        load_config(None, ["scarcenet.dist_thre=-1"])
    assert load_config(None, ["scarcenet.relabel=false"]).section("scarcenet").relabel is False


def test_yamls_load():
    for path in ("experiments/toy/scarcenet_hg.yaml", "experiments/tigdog/scarcenet_hg.yaml"):
        cfg = load_config(Path(__file__).parents[2] / path, [])
        c = cfg.section("scarcenet")
        assert cfg.method == "scarcenet" and c.keep == 0.6 and c.dist_thre == 0.6 and c.min_rate == 0.8


# ---------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def store(tmp_path_factory, mlflow_template):
    return fresh_store(mlflow_template, tmp_path_factory.mktemp("scarce_store") / "mlruns.db")


@pytest.fixture(scope="module")
def pretrained(tiny_source):
    return tiny_source


def scarce_config(root, tmp_path, store, name, init, *extra):
    return load_config(None, tiny_overrides(root, tmp_path, name, uri=store) + [
        f"init={init}", "train.epochs=2", "train.criteria=false", "scarcenet.steps_per_epoch=2",
        "scarcenet.schedule_epochs=40", "scarcenet.dist_thre=2.0", *extra])


@pytest.mark.slow
def test_scarcenet_runs_logs_and_resumes_exactly(tiny_benchmark, tmp_path, store, pretrained):
    full = scarce_config(tiny_benchmark, tmp_path, store, "full", pretrained)
    metrics = run_adaptation(full, "scarcenet")
    assert "target_test/pck@0.05_crop/mean" in metrics
    with pytest.raises(Killed), die_after_epoch(1):
        run_adaptation(scarce_config(tiny_benchmark, tmp_path, store, "half", pretrained), "scarcenet")
    run_adaptation(scarce_config(tiny_benchmark, tmp_path, store, "half", pretrained, "resume=auto"), "scarcenet")
    runs = Path(full.out_dir) / "tests"
    a, b = checkpoint.load(runs / "full" / "last.pt"), checkpoint.load(runs / "half" / "last.pt")
    assert a["step"] == b["step"] == 4
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    for k, v in a["state_modules"]["teacher"].items():
        assert torch.equal(v, b["state_modules"]["teacher"][k]), k
    assert int(a["state_modules"]["teacher"]["updates"]) == 4
    client = MlflowClient(store)
    exp = client.get_experiment_by_name("tests")
    run = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}["full"]
    assert run.info.status == "FINISHED" and run.data.tags["method"] == "scarcenet"
    for key in ("train/loss/src", "train/loss/sup", "train/loss/cons", "train/sel/rate", "train/sel/agree_fraction",
                "train/sel/small_loss_fraction", "train/ema/alpha"):
        assert len(client.get_metric_history(run.info.run_id, key)) == 4, key
    alphas = sorted(client.get_metric_history(run.info.run_id, "train/ema/alpha"), key=lambda m: m.step)
    assert [m.value for m in alphas] == pytest.approx([0.0, 0.5, 2 / 3, 0.75])
    assert "scarcenet/acc_kept" in run.data.metrics and np.isfinite(run.data.metrics["train/loss/sup"])


@pytest.mark.slow
def test_scarcenet_mixes_labelled_target_images_in_instead_of_the_shared_term(tiny_benchmark, tmp_path, store,
                                                                            pretrained):
    cfg = scarce_config(tiny_benchmark, tmp_path, store, "semi", pretrained, "data.target_labels=0.5",
                        "train.epochs=1")
    run_adaptation(cfg, "scarcenet")
    client = MlflowClient(store)
    exp = client.get_experiment_by_name("tests")
    run = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}["semi"]
    assert run.info.status == "FINISHED" and int(run.data.tags["scarcenet_labelled_images"]) >= 1
    assert "train/loss/target_labelled" not in run.data.metrics  # no shared term on top
    labelled = client.get_metric_history(run.info.run_id, "train/sel/labelled_images")
    assert len(labelled) == 2 and sum(m.value for m in labelled) >= 1
    shared = scarce_config(tiny_benchmark, tmp_path, store, "shared", pretrained, "data.target_labels=0.5",
                           "train.epochs=1", "scarcenet.labels=shared")
    run_adaptation(shared, "scarcenet")
    run = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}["shared"]
    assert "train/loss/target_labelled" in run.data.metrics
    assert all(m.value == 0 for m in client.get_metric_history(run.info.run_id, "train/sel/labelled_images"))
