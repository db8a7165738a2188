"""UDA-Animal: the curriculum loss, the published schedules, mixup, the gradient reversal, the
switches of every term, the teacher -> student warp with flips, and an end-to-end run (with an
exact resume) on the tiny generated benchmark."""

from __future__ import annotations

import copy
import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from da_pose import checkpoint
from da_pose.adapt import run_adaptation
from da_pose.adapt.mean_teacher import EMATeacher
from da_pose.adapt.pseudo_labels import PseudoLabels
from da_pose.adapt.uda_animal import (Clock, Parts, UDAAnimalConfig, consistency_weight, curriculum_loss,
                                      domain_loss, flip_rotate_affines, mixup_cross, mixup_within, score_head,
                                      target_weight, teacher_in_student_view, topk_joints, uda_animal_step)
from da_pose.config import load_config
from da_pose.data.codec import HeatmapCodec
from da_pose.data.skeleton import FLIP_INDEX
from da_pose.data.transforms import apply_affine
from da_pose.errors import ConfigError
from da_pose.models.discriminator import StridedDomainClassifier
from da_pose.models.hourglass import HourglassNet
from tests.conftest import Killed, die_after_epoch, fresh_store, tiny_overrides

CFG = UDAAnimalConfig()


# ---------------------------------------------------------------------------------- CL_k
def test_curriculum_loss_is_the_mean_of_the_k_smallest_weighted_joint_losses():
    torch.manual_seed(0)
    b, k, h = 3, 6, 4
    pred, target = torch.rand(b, k, h, h), torch.rand(b, k, h, h)
    weight = torch.ones(b, k)
    weight[0, [1, 4]] = 0.0  # two joints without a label: never picked while 4 others have one
    weight[2, :4] = 0.0  # only two labelled joints: the third pick is a weight-0 joint, adding 0
    top = 3
    hand = 0.0
    for i in range(b):
        losses = sorted(0.5 * float(((pred[i, j] - target[i, j]) ** 2).mean()) for j in range(k) if weight[i, j] > 0)
        picked = losses[:top] + [0.0] * max(0, top - len(losses))
        hand += sum(picked)
    hand /= top * b
    got = curriculum_loss(pred, target, weight, top)
    assert got.item() == pytest.approx(hand, rel=1e-6)
    # two stacks: the sum; k = K with all weights 1: the plain joints MSE
    assert curriculum_loss([pred, pred], target, weight, top).item() == pytest.approx(2 * hand, rel=1e-6)
    full = curriculum_loss(pred, target, torch.ones(b, k), k)
    assert full.item() == pytest.approx(0.5 * float(((pred - target) ** 2).mean()), rel=1e-6)


# ---------------------------------------------------------------------------------- schedules
@pytest.mark.parametrize("e", [0, 1, 2, 3, 5, 10, 11, 12, 40, 79])
def test_schedules_equal_the_published_formulas(e):
    assert topk_joints(e, CFG) == max(18 - max(e - 2, 0), 9)
    gamma = min(max(15 * 0.5 * (1 + math.cos(math.pi * min(e, 15) / 15)), 8), 15)
    assert target_weight(e, CFG) == pytest.approx(gamma)
    assert consistency_weight(e, CFG) == pytest.approx(90 * math.exp(-5 * (1 - min(e, 10) / 10) ** 2))


def test_schedule_values_at_a_few_epochs_and_switches():
    assert [topk_joints(e, CFG) for e in (0, 2, 3, 10, 11, 30)] == [18, 18, 17, 10, 9, 9]
    assert target_weight(0, CFG) == 15.0 and target_weight(5, CFG) == pytest.approx(11.25)
    assert target_weight(10, CFG) == 8.0 and target_weight(40, CFG) == 8.0
    assert consistency_weight(0, CFG) == pytest.approx(90 * math.exp(-5)) and consistency_weight(10, CFG) == 90.0
    flat = dataclasses.replace(CFG, curriculum=False)
    assert topk_joints(30, flat) == 18 and target_weight(30, flat) == 15.0


def test_clock_maps_the_step_budget_onto_the_published_epochs():
    clock = Clock(total_steps=160, epochs=80)
    seen = []
    for step in (0, 1, 2, 3, 80, 159, 160):
        clock.step = step
        seen.append(clock.epoch())
    assert seen == [0, 0, 1, 1, 40, 79, 79]
    clock.step = 40
    assert clock.progress() == 0.25


# ---------------------------------------------------------------------------------- mixup
def item(b=4, k=18, h=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.rand(b, 3, 32, 32, generator=g), "target": torch.rand(b, k, h, h, generator=g),
            "target_weight": (torch.rand(b, k, generator=g) > 0.5).float()}


def test_cross_domain_mixup_keeps_each_side_dominant_and_takes_the_max_weight():
    src, tgt = item(seed=1), item(seed=2)
    torch.manual_seed(0)
    ms, mt, lam = mixup_cross(src, tgt, 0.8)
    assert (lam >= 0.5).all() and (lam <= 1).all()
    m = lam.view(-1, 1, 1, 1)
    assert torch.allclose(ms["image"], m * src["image"] + (1 - m) * tgt["image"])
    assert torch.allclose(mt["target"], m * tgt["target"] + (1 - m) * src["target"])
    w = torch.maximum(src["target_weight"], tgt["target_weight"])
    assert torch.equal(ms["target_weight"], w) and torch.equal(mt["target_weight"], w)


def test_within_target_mixup_pairs_a_permutation():
    tgt = item(b=6, seed=3)
    torch.manual_seed(1)
    out, lam = mixup_within(tgt, 0.8)
    torch.manual_seed(1)
    torch.distributions.Beta(torch.tensor(0.8), torch.tensor(0.8)).sample((6,))
    perm = torch.randperm(6)
    m = lam.view(-1, 1, 1, 1)
    assert torch.allclose(out["image"], m * tgt["image"] + (1 - m) * tgt["image"][perm])
    assert torch.equal(out["target_weight"], torch.maximum(tgt["target_weight"], tgt["target_weight"][perm]))


# ---------------------------------------------------------------------------------- gradient reversal
def test_domain_loss_reverses_the_extractors_gradient_and_not_the_classifiers():
    torch.manual_seed(0)
    clf = StridedDomainClassifier(8, 16, width=4)
    with torch.no_grad():
        for p in clf.parameters():
            p.normal_(0, 0.1)  # the published N(0, 0.001) init gives vanishing gradients
    feats = torch.randn(4, 8, 16, 16)
    lam = 0.7

    plain = feats.clone().requires_grad_(True)
    loss, _ = domain_loss(clf, plain, 2, 0.0, 1.0)  # lam 0: the reversal multiplies by -0
    loss_ref, _ = domain_loss(clf, feats, 2, lam, 1.0)
    assert torch.equal(loss, loss_ref)  # identity forward
    logits = clf(plain).float()
    labels = torch.tensor([1.0, 1.0, 0.0, 0.0])
    ref = (torch.nn.functional.binary_cross_entropy_with_logits(logits[:2], labels[:2])
           + torch.nn.functional.binary_cross_entropy_with_logits(logits[2:], labels[2:])) / 2
    assert torch.allclose(ref, loss)
    ref.backward()
    clf_grads = [p.grad.clone() for p in clf.parameters()]
    clf.zero_grad(set_to_none=True)

    rev = feats.clone().requires_grad_(True)
    loss, acc = domain_loss(clf, rev, 2, lam, 1.0)
    loss.backward()
    assert torch.allclose(rev.grad, -lam * plain.grad, atol=1e-9)
    for p, g in zip(clf.parameters(), clf_grads):
        assert torch.allclose(p.grad, g, atol=1e-9)  # the classifier itself minimises the loss
    assert 0.0 <= float(acc) <= 1.0


def test_domain_classifier_matches_the_published_stack_on_a_64_map():
    clf = StridedDomainClassifier(1024, 64)
    convs = [m for m in clf.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 128, 256, 512, 1024, 1]
    assert convs[-1].kernel_size == (2, 2) and all(c.bias is None for c in convs)
    assert clf(torch.randn(2, 1024, 64, 64)).shape == (2,)
    assert StridedDomainClassifier(512, 4)(torch.randn(3, 512, 4, 4)).shape == (3,)


# ---------------------------------------------------------------------------------- views
def test_teacher_peak_lands_at_the_mapped_point_and_a_flip_swaps_left_and_right():
    codec = HeatmapCodec(64, 16, sigma=1.0)
    kp = torch.zeros(1, 18, 3)
    kp[0, :, :2] = torch.tensor([40.0, 24.0])
    kp[0, :, 2] = 1
    kp[0, 0, :2] = torch.tensor([20.0, 30.0])  # joint 0 elsewhere: its channel must move to its pair
    hm, _ = codec.encode_batch(kp)
    torch.manual_seed(0)
    a = flip_rotate_affines(1, 64, 30.0, 60.0, 1.0, 1.0)  # always flipped and rotated
    assert torch.linalg.det(a[0, :, :2]) < 0
    out = teacher_in_student_view(hm, a, 64, FLIP_INDEX)
    xy, _ = codec.decode(out)
    pair = FLIP_INDEX[0]
    expected = apply_affine(a, kp[:, :1, :2].double()).float()[0, 0]
    assert (xy[0, pair] - expected).norm() < 1.5
    plain = teacher_in_student_view(hm, torch.eye(2, 3, dtype=torch.float64)[None], 64, FLIP_INDEX)
    assert torch.allclose(plain, hm, atol=1e-5)


# ---------------------------------------------------------------------------------- switches
def parts_for(model, cfg, seed=0):
    torch.manual_seed(seed)
    teacher = EMATeacher(copy.deepcopy(model), cfg.alpha, ramp=True)
    return Parts(teacher, copy.deepcopy(score_head(model)) if cfg.dual_head else None,
                 StridedDomainClassifier(model.feature_channels, 16, 8) if cfg.domain else None,
                 Clock(100, 80), HeatmapCodec(64, 16, sigma=1.0), torch.zeros(1, 3, 1, 1), torch.ones(1, 3, 1, 1),
                 stacks=model.stacks)


def step_batch():
    g = torch.Generator().manual_seed(5)

    def one():
        return {"image": torch.rand(2, 3, 64, 64, generator=g), "target": torch.rand(2, 18, 16, 16, generator=g),
                "target_weight": torch.ones(2, 18)}

    return {"source": one(), "target": one()}


TERMS = {"pseudo_labels": "loss/pl", "mean_teacher": "loss/cons", "self_distill": "loss/distill",
         "domain": "loss/domain", "mixup": "mixup/lambda"}


@pytest.mark.parametrize("switch", [None, *TERMS, "dual_head"])
def test_each_switch_removes_its_term(switch):
    torch.manual_seed(0)
    model = HourglassNet(18, stacks=2, blocks=1, depth=2, features=16)
    cfg = UDAAnimalConfig(mixup_cross_prob=1.0)
    if switch is not None:
        cfg = dataclasses.replace(cfg, **{switch: False})
    parts = parts_for(model, cfg)
    torch.manual_seed(1)
    out = uda_animal_step(model, step_batch(), parts, cfg)
    keys = {k for k in out if k.startswith(("loss/", "mixup/"))}
    expected = {"loss/src", "loss/agree", *TERMS.values(), "mixup/cross"}
    if switch == "dual_head":
        expected -= {"loss/agree"}
    elif switch == "mixup":
        expected -= {"mixup/lambda", "mixup/cross"}
    elif switch is not None:
        expected -= {TERMS[switch]}
    assert keys == expected
    logged = [v for k, v in out.items() if k.startswith("loss/")]
    assert torch.allclose(out["loss"].detach(), sum(logged), rtol=1e-5)
    out["loss"].backward()
    assert all(p.grad is None for p in parts.teacher.parameters())


def test_one_stack_models_have_no_self_distillation_and_the_teacher_gets_no_gradient():
    torch.manual_seed(0)
    model = HourglassNet(18, stacks=1, blocks=1, depth=2, features=16)
    parts = parts_for(model, CFG)
    out = uda_animal_step(model, step_batch(), parts, CFG)
    assert "loss/distill" not in out and "loss/cons" in out
    out["loss"].backward()
    assert all(p.grad is None for p in parts.teacher.parameters())
    assert all(p.grad is not None for p in parts.aux_head.parameters())
    assert all(p.grad is not None for p in parts.classifier.parameters())


def test_config_checks():
    with pytest.raises(ConfigError, match="valid: random, student"):
        load_config(None, ["uda_animal.teacher_init=copy"])
    with pytest.raises(ConfigError, match="keep"):
        load_config(None, ["uda_animal.keep=0"])
    assert load_config(None, ["uda_animal.mixup=false"]).section("uda_animal").mixup is False


def test_yamls_load():
    for path in ("experiments/toy/uda_animal_hg.yaml", "experiments/tigdog/uda_animal_hg.yaml"):
        cfg = load_config(Path(__file__).parents[2] / path, [])
        assert cfg.method == "uda_animal" and cfg.section("uda_animal").keep == 0.4


# ---------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def store(tmp_path_factory, mlflow_template):
    return fresh_store(mlflow_template, tmp_path_factory.mktemp("uda_store") / "mlruns.db")


@pytest.fixture(scope="module")
def pretrained(tiny_source):
    return tiny_source


def uda_config(root, tmp_path, store, name, init, *extra):
    return load_config(None, tiny_overrides(root, tmp_path, name, uri=store) + [
        f"init={init}", "train.epochs=2", "train.criteria=false", "uda_animal.steps_per_epoch=2",
        "uda_animal.disc_width=8", "uda_animal.schedule_epochs=4", *extra])


@pytest.mark.slow
def test_uda_animal_runs_logs_and_resumes_exactly(tiny_benchmark, tmp_path, store, pretrained):
    full = uda_config(tiny_benchmark, tmp_path, store, "full", pretrained)
    metrics = run_adaptation(full, "uda_animal")
    assert "target_test/pck@0.05_crop/mean" in metrics
    # the schedules depend on the run's total steps, so the interrupted run has the full run's
    # config and dies right after writing epoch 1's checkpoint
    with pytest.raises(Killed), die_after_epoch(1):
        run_adaptation(uda_config(tiny_benchmark, tmp_path, store, "half", pretrained), "uda_animal")
    run_adaptation(uda_config(tiny_benchmark, tmp_path, store, "half", pretrained, "resume=auto"), "uda_animal")
    runs = Path(full.out_dir) / "tests"
    a, b = checkpoint.load(runs / "full" / "last.pt"), checkpoint.load(runs / "half" / "last.pt")
    assert a["step"] == b["step"] == 4
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    for group in ("state_modules", "extra_modules"):
        for name, state in a[group].items():
            for k, v in state.items():
                assert torch.equal(v, b[group][name][k]), (name, k)
    assert int(a["state_modules"]["teacher"]["updates"]) == 4
    labels = PseudoLabels.load(runs / "full" / "pseudo_labels" / "round_00.pt")
    assert labels.kept.mean() == pytest.approx(0.4, abs=0.05)
    client = MlflowClient(store)
    exp = client.get_experiment_by_name("tests")
    run = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}["full"]
    assert run.info.status == "FINISHED" and run.data.tags["method"] == "uda_animal"
    for key in ("train/loss/src", "train/loss/pl", "train/loss/cons", "train/loss/agree", "train/loss/domain",
                "train/sched/k", "train/ema/alpha"):
        assert len(client.get_metric_history(run.info.run_id, key)) == 4, key
    assert "uda_animal/acc_kept" in run.data.metrics  # the diagnostic, CC-SSL's log_round
    lrs = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "train/lr"), key=lambda m: m.step)]
    assert lrs[0] <= 0.001 and lrs[-1] < lrs[0]  # poly decay over the schedule epochs
    assert np.isfinite(run.data.metrics["train/loss/pl"])
