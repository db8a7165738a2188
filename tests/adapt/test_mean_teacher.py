"""Mean teacher: the EMA, the teacher -> student warp, the confidence filters, and end-to-end runs
(with an exact resume) on the tiny generated benchmark."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from torch import nn

from da_pose import checkpoint
from da_pose.adapt import run_adaptation
from da_pose.adapt.mean_teacher import (EMATeacher, MeanTeacherConfig, confidence_mask, consistency_mse,
                                        teacher_targets, view_affines)
from da_pose.config import load_config
from da_pose.data.codec import HeatmapCodec
from da_pose.data.transforms import apply_affine, compose, invert_affine
from da_pose.errors import ConfigError
from da_pose.run import final_checkpoint
from da_pose.tracking import mlflow_key
from tests.conftest import fresh_store, tiny_overrides


# ---------------------------------------------------------------------------------- EMA
def tiny_pair():
    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    teacher = EMATeacher(nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2)), alpha=0.9)
    return student, teacher


def test_ema_update_matches_a_hand_computation():
    student, teacher = tiny_pair()
    t0 = {k: v.clone() for k, v in teacher.model.state_dict().items()}
    s = {k: v.clone() for k, v in student.state_dict().items()}
    student[1].running_mean.fill_(5.0)  # buffers are not averaged
    assert teacher.update(student) == 0.9
    got = teacher.model.state_dict()
    for k in ("0.weight", "0.bias", "1.weight", "1.bias"):
        assert torch.allclose(got[k], 0.9 * t0[k] + 0.1 * s[k], atol=1e-7), k
    assert torch.equal(got["1.running_mean"], t0["1.running_mean"])
    assert int(teacher.updates) == 1


def test_ema_ramp_and_copy():
    student, teacher = tiny_pair()
    teacher.ramp, teacher.alpha = True, 0.7
    teacher.copy_from(student)
    for k, v in student.state_dict().items():
        assert torch.equal(teacher.model.state_dict()[k], v), k
    with torch.no_grad():
        student[0].weight.add_(1.0)
    # alpha_n = min(1 - 1/(n + 1), alpha): 0.5 at the first update, then 2/3, then capped at 0.7
    before = teacher.model[0].weight.clone()
    assert teacher.update(student) == pytest.approx(0.5)
    assert torch.allclose(teacher.model[0].weight, 0.5 * before + 0.5 * student[0].weight)
    assert teacher.update(student) == pytest.approx(2 / 3)
    assert teacher.update(student) == pytest.approx(0.7)
    assert int(teacher.updates) == 3


# ---------------------------------------------------------------------------------- views and warp
def test_view_affines_respect_the_ranges():
    cfg = MeanTeacherConfig()
    torch.manual_seed(0)
    a = view_affines(500, cfg, 64)
    lin = a[:, :, :2]
    det = torch.linalg.det(lin)  # s^2 (rotation and shear have determinant 1)
    assert (det.sqrt() >= 0.6 - 1e-9).all() and (det.sqrt() <= 1.3 + 1e-9).all()
    mid = torch.full((500, 2), 31.5, dtype=torch.float64)
    shift = apply_affine(a, mid[:, None])[:, 0] - mid  # where the centre goes: the translation
    assert torch.allclose(shift, shift.round(), atol=1e-9) and shift.abs().max() <= round(0.05 * 64) + 1e-9
    no_shear = view_affines(10, dataclasses.replace(cfg, shear=0.0, scale=(1.0, 1.0)), 64)[:, :, :2]
    assert torch.allclose(no_shear @ no_shear.transpose(1, 2), torch.eye(2, dtype=torch.float64).expand(10, 2, 2))


@pytest.mark.parametrize("rectify", [False, True])
def test_a_teacher_peak_lands_at_the_affine_mapped_point_in_the_student_view(rectify):
    codec = HeatmapCodec(64, 16, sigma=1.0, decode="dark")
    cfg = MeanTeacherConfig(rotate=40.0, shear=15.0, scale=(0.8, 1.2), rectify=rectify)
    torch.manual_seed(1)
    a_t, a_s = view_affines(6, cfg, 64), view_affines(6, cfg, 64)
    base = torch.tensor([[30.0, 26.0], [33.0, 35.5], [28.0, 31.0], [35.0, 29.0], [31.5, 31.5], [26.0, 36.0]],
                        dtype=torch.float64)[:, None]  # B, 1, 2: a point of each un-viewed crop
    in_teacher = apply_affine(a_t, base)  # B, 1, 2
    kp = torch.cat([in_teacher.float(), torch.ones(6, 1, 1)], -1).repeat(1, 18, 1)  # B, K, 3
    heatmaps, weight = codec.encode_batch(kp)
    assert weight.all()
    target, conf, kept, peak = teacher_targets(heatmaps, compose(a_s, invert_affine(a_t)), codec, cfg)
    expected = apply_affine(a_s, base).float()[:, 0]  # B, 2 input px of the student view
    xy, _ = codec.decode(target)
    if rectify:  # snapped to the integer argmax: within half a heatmap pixel (2 input px) per axis
        assert (xy[:, 0] - expected).abs().max() < 2.5
    else:  # the warped map itself: sub-pixel
        assert (xy[:, 0] - expected).norm(dim=-1).max() < 1.0
    assert (codec.to_input_coords(peak[:, 0].float()) - expected).abs().max() < 2.5
    if rectify:
        assert target.amax(dim=(2, 3)).eq(1.0).all()  # peak-1 Gaussians


def test_warped_heatmap_of_the_identity_is_unchanged():
    codec = HeatmapCodec(64, 16, sigma=1.0)
    hm, _ = codec.encode_batch(torch.tensor([[[20.0, 40.0, 1.0]] * 18]))
    eye = torch.eye(2, 3, dtype=torch.float64)[None]
    target, conf, _, _ = teacher_targets(hm, eye, codec, MeanTeacherConfig(rectify=False))
    assert torch.allclose(target, hm, atol=1e-5) and torch.allclose(conf, hm.amax(dim=(2, 3)), atol=1e-5)


# ---------------------------------------------------------------------------------- filters
def test_median_keeps_the_top_half_of_the_batch():
    conf = torch.arange(24, dtype=torch.float32).view(3, 8)[torch.randperm(3)]  # distinct values 0..23
    kept = confidence_mask(conf, MeanTeacherConfig(filter="median"))
    assert kept.sum() == 12 and conf[kept].min() > conf[~kept].max()
    # batch-wide, not per image: the least confident image may lose all its joints
    low = torch.tensor([[0.1, 0.2], [0.8, 0.9]])
    assert confidence_mask(low, MeanTeacherConfig()).tolist() == [[False, False], [True, True]]
    quarter = confidence_mask(conf, MeanTeacherConfig(mask_ratio=0.75))
    assert quarter.sum() == 6 and conf[quarter].min() >= 18
    assert confidence_mask(conf, MeanTeacherConfig(mask_ratio=0.0)).all()


def test_threshold_and_topk_filters():
    conf = torch.tensor([[0.9, 0.2, 0.6, 0.4], [0.1, 0.3, 0.2, 0.05]])
    thr = confidence_mask(conf, MeanTeacherConfig(filter="threshold", threshold=0.35))
    assert thr.tolist() == [[True, False, True, True], [False, False, False, False]]
    top = confidence_mask(conf, MeanTeacherConfig(filter="topk", topk=0.5))  # 2 of 4 joints per image
    assert top.tolist() == [[True, False, True, False], [False, True, True, False]]
    one = confidence_mask(conf, MeanTeacherConfig(filter="topk", topk=0.01))  # at least one per image
    assert one.sum(dim=1).tolist() == [1, 1]


def test_consistency_is_twice_joints_mse_on_kept_joints():
    torch.manual_seed(0)
    pred, target = torch.rand(2, 3, 4, 4), torch.rand(2, 3, 4, 4)
    kept = torch.tensor([[True, False, True], [False, False, True]])
    hand = ((pred - target) ** 2 * kept[..., None, None]).mean()  # UniFrame's L_c
    assert torch.allclose(consistency_mse([pred], target, kept), hand)


def test_config_checks():
    with pytest.raises(ConfigError, match="valid: median, threshold, topk"):
        load_config(None, ["mean_teacher.filter=mean"])
    with pytest.raises(ConfigError, match="alpha"):
        load_config(None, ["mean_teacher.alpha=1.0"])
    with pytest.raises(ConfigError, match="scale"):
        load_config(None, ["mean_teacher.scale=[1.3]"])
    assert load_config(None, ["mean_teacher.ema_ramp=true"]).section("mean_teacher").ema_ramp


def test_label_accuracy_diagnostic_maps_labels_back_to_the_original_image():
    import numpy as np

    from da_pose.adapt.mean_teacher import TeacherLabelAccuracy
    from da_pose.data.records import PoseRecord
    from da_pose.data.transforms import crop_affine

    rng = np.random.default_rng(0)
    gt = [np.concatenate([rng.uniform(20, 80, (18, 2)), np.ones((18, 1))], 1).astype(np.float32) for _ in range(2)]
    recs = [PoseRecord(f"{i}.jpg", gt[i], np.array([50, 50], np.float32), 100.0, np.array([0, 0, 100, 100], np.float32))
            for i in range(2)]
    affine = torch.tensor(np.stack([crop_affine((50, 50), 100, 64, rotation=r) for r in (10.0, -20.0)]))
    index = torch.tensor([1, 0])
    label_xy = apply_affine(affine, torch.tensor(np.stack([gt[1], gt[0]])[..., :2], dtype=torch.float64))
    label_xy[:, 9:] += 8.0  # 8 crop px = 12.5 original px > 0.05 x 100: wrong
    kept = torch.zeros(2, 18, dtype=torch.bool)
    kept[:, :9] = True
    batch = {"target": {"index": index, "affine": affine.float()}}
    stats = TeacherLabelAccuracy(recs).on_step_end(None, batch, {"_label_xy": label_xy, "_kept": kept})
    assert stats == {"pseudo/acc_kept": 100.0, "pseudo/acc_rejected": 0.0}


# ---------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def store(tmp_path_factory, mlflow_template):
    return fresh_store(mlflow_template, tmp_path_factory.mktemp("mt_store") / "mlruns.db")


@pytest.fixture(scope="module")
def pretrained(tiny_source):
    return tiny_source


def mt_config(root, tmp_path, store, name, init, *extra):
    return load_config(None, tiny_overrides(root, tmp_path, name, uri=store) + [
        f"init={init}", "train.epochs=2", "train.criteria=false", "mean_teacher.steps_per_epoch=2",
        "mean_teacher.alpha=0.9", *extra])


@pytest.mark.slow
def test_mean_teacher_runs_logs_and_resumes_exactly(tiny_benchmark, tmp_path, store, pretrained):
    full = mt_config(tiny_benchmark, tmp_path, store, "full", pretrained)
    metrics = run_adaptation(full, "mean_teacher")
    assert "target_test/pck@0.05_crop/mean" in metrics
    # the interrupted and resumed run reports its student: what is evaluated never changes training
    student = "mean_teacher.report=student"
    run_adaptation(mt_config(tiny_benchmark, tmp_path, store, "half", pretrained, "train.epochs=1", student),
                   "mean_teacher")
    run_adaptation(mt_config(tiny_benchmark, tmp_path, store, "half", pretrained, "resume=auto", student),
                   "mean_teacher")
    runs = Path(full.out_dir) / "tests"
    a, b = checkpoint.load(runs / "full" / "last.pt"), checkpoint.load(runs / "half" / "last.pt")
    assert a["epoch"] == b["epoch"] == 2 and a["step"] == b["step"] == 4
    for part in ("model", "teacher"):
        sa = a["model"] if part == "model" else a["state_modules"]["teacher"]
        sb = b["model"] if part == "model" else b["state_modules"]["teacher"]
        for k, v in sa.items():
            assert torch.equal(v, sb[k]), (part, k)
    teacher = a["state_modules"]["teacher"]
    assert int(teacher["updates"]) == 4
    # the teacher lags the student: same architecture, other weights
    assert any(not torch.equal(teacher[f"model.{k}"], v) for k, v in a["model"].items() if v.is_floating_point())
    client = MlflowClient(store)
    exp = client.get_experiment_by_name("tests")
    run = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}["full"]
    assert run.info.status == "FINISHED" and run.data.tags["method"] == "mean_teacher"
    assert run.data.tags["mean_teacher_filter"] == "median" and run.data.params["mean_teacher.alpha"] == "0.9"
    for key in ("train/loss/src", "train/loss/cons", "train/ema/alpha", "train/pseudo/kept_fraction",
                "train/pseudo/acc_kept"):
        assert len(client.get_metric_history(run.info.run_id, key)) == 4, key
    assert run.data.metrics["train/ema/alpha"] == pytest.approx(0.9)
    assert mlflow_key("target_test/pck@0.05_crop/mean") in run.data.metrics
    # the teacher is what is reported (published): reported.pt holds its weights and is the final checkpoint
    assert run.data.tags["reported_network"] == "teacher"
    reported = checkpoint.load(runs / "full" / "reported.pt")
    assert reported["reported"] == "teacher" and reported["selection"] == "last"
    assert all(torch.equal(v, teacher[f"model.{k}"]) for k, v in reported["model"].items())
    assert final_checkpoint(full, runs / "full") == runs / "full" / "reported.pt"
    assert run.data.metrics[mlflow_key("target_test/pck@0.05_crop/mean")] == pytest.approx(
        evaluate_checkpoint(full, runs / "full" / "reported.pt"), abs=1e-6)
    half = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}["half"]
    assert half.data.tags["reported_network"] == "student" and not (runs / "half" / "reported.pt").exists()


@pytest.mark.slow
def test_mean_teacher_selects_and_reports_the_teachers_best_epoch(tiny_benchmark, tmp_path, store, pretrained):
    cfg = mt_config(tiny_benchmark, tmp_path, store, "sel", pretrained, "train.selection=target_val",
                    "train.eval_every=1")
    run_adaptation(cfg, "mean_teacher")
    run_dir = Path(cfg.out_dir) / "tests" / "sel"
    best, reported = checkpoint.load(run_dir / "best.pt"), checkpoint.load(run_dir / "reported.pt")
    assert reported["selection"] == "target_val" and reported["epoch"] == best["epoch"]
    assert all(torch.equal(v, best["state_modules"]["teacher"][f"model.{k}"]) for k, v in reported["model"].items())


def evaluate_checkpoint(cfg, path: Path) -> float:
    """Target test crop PCK of a checkpoint file, through ``da-pose evaluate``'s job."""
    from da_pose.data.loaders import domain_records
    from da_pose.jobs import run_evaluate

    metrics = run_evaluate(str(path), cfg, domain_records(cfg, "target", "test"), path.parent / "evaluate")
    return metrics["pck@0.05_crop/mean"]
