"""The pseudo-label mechanism study: the command end to end on the tiny preset, the matched kept
fractions, the accuracy against a direct computation, and the paired difference."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import torch

from da_pose import checkpoint, run
from da_pose.adapt.study import (VARIANTS, StudySettings, VariantLabels, kept_counts, parse_fractions,
                                 parse_variants, resampling_units, study_summary, study_rows, variant_config)
from da_pose.config import CCSSLConfig, dump_yaml, load_config
from da_pose.data import manifest
from da_pose.data.records import PoseRecord
from da_pose.errors import ConfigError
from da_pose.eval.stats import paired_ratio_difference, ratio_interval, resample_counts
from da_pose.models.factory import build_model
from da_pose.tracking import mlflow_key
from tests.conftest import call, fresh_store, tiny_overrides


@pytest.fixture
def study_ckpt(tiny_benchmark, tmp_path):
    """An untrained tiny model whose heatmaps are positive and vary (confidences without ties)."""
    cfg = load_config(None, tiny_overrides(tiny_benchmark, tmp_path, "study"))
    torch.manual_seed(0)
    model = build_model(cfg.model, 18)
    state = model.state_dict()
    state["score.0.weight"] *= 20.0
    state["score.0.bias"] += 1.0
    path = tmp_path / "study.pt"
    checkpoint.save(path, {"model": state, "arch": run.arch_of(cfg), "config": dump_yaml(cfg)})
    return path


def direct_accuracy(keypoints, confidence, records, fraction):
    """Kept-label PCK@0.05 (crop) written out from the definitions, independent of the module."""
    gt = np.stack([r.keypoints for r in records]).astype(np.float64)
    side = np.array([r.side for r in records], dtype=np.float64)
    n_keep = int(round(fraction * confidence.size))
    threshold = np.sort(confidence.ravel())[::-1][n_keep - 1]
    kept = confidence >= threshold
    scored = kept & (gt[..., 2] > 0)
    dist = np.sqrt(((keypoints - gt[..., :2]) ** 2).sum(-1)) / side[:, None]
    correct = scored & (dist < 0.05)
    return 100.0 * correct.sum() / scored.sum(), int(kept.sum()), int(scored.sum())


# ----------------------------------------------------------------------------------- end to end
def test_study_command_end_to_end(study_ckpt, tiny_benchmark, tmp_path, mlflow_template, capsys):
    from mlflow.tracking import MlflowClient

    uri = fresh_store(mlflow_template, tmp_path / "study.db")
    out = tmp_path / "study"
    # the studied folder is another shift than the checkpoint's training data (tiny_benchmark, `all`):
    # a copy whose manifest says `pose`; the run's shift tag must follow the data studied
    studied = tmp_path / "pose_copy"
    shutil.copytree(tiny_benchmark, studied)
    meta = json.loads((studied / "manifest.json").read_text())
    assert meta["gap"]["shifts"] == ["all"]
    meta["gap"]["shifts"] = ["pose"]
    (studied / "manifest.json").write_text(json.dumps(meta))
    code, stdout, err = call(["study", "pseudo-labels", "--checkpoint", str(study_ckpt), "--data",
                              f"{studied}#target", "--out", str(out), "--tracking-uri", uri, "--draws", "200",
                              "--experiment", "study-test", "--set", "ccssl.num_transforms=2"], capsys)
    assert code == 0, err
    for name in ("study.md", "study.csv", "study.png", "study.json", "labels.npz"):
        assert (out / name).is_file(), name
    assert "| +equivariance | max |" in (out / "study.md").read_text()
    rows = list(csv.DictReader((out / "study.csv").open()))
    assert len(rows) == len(VARIANTS) * 2 * 4

    # every accuracy equals a direct computation from the written labels and the records
    records = manifest.load_domain(studied, "target", "train")
    labels = np.load(out / "labels.npz")
    assert list(labels["images"]) == [str(r.image_path) for r in records]
    for row in rows:
        variant, rule = row["variant"].lstrip("+"), row["rule"]
        acc, kept, scored = direct_accuracy(labels[f"{variant}/{rule}/keypoints"],
                                            labels[f"{variant}/{rule}/confidence"], records,
                                            float(row["kept %"]) / 100.0)
        assert float(row["accuracy"]) == pytest.approx(acc, abs=1e-9)
        assert (int(row["kept joints"]), int(row["scored joints"])) == (kept, scored)
        assert float(row["lo"]) <= float(row["accuracy"]) <= float(row["hi"])
        assert int(row["views"]) == (1 if variant in ("identity", "temporal") else 3)
        if variant == "identity":
            assert [float(row[k]) for k in ("diff vs identity", "diff lo", "diff hi")] == [0.0, 0.0, 0.0]
    # one view: agreement is the max rule
    for variant in ("identity", "temporal"):
        assert np.array_equal(labels[f"{variant}/max/confidence"], labels[f"{variant}/agreement/confidence"])

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("study-test")
    (found,) = client.search_runs([exp.experiment_id])
    assert found.info.status == "FINISHED"
    assert found.data.tags["command"] == "study pseudo-labels"
    assert found.data.tags["shift"] == "pose"  # was the checkpoint's `all` (a bug)
    assert found.data.params["ccssl.num_transforms"] == "2"
    assert found.data.metrics[mlflow_key("study/identity/max/acc@40")] == pytest.approx(
        float(next(r for r in rows if r["variant"] == "identity" and r["kept %"] == "40.0")["accuracy"]))
    assert mlflow_key("study/all/agreement/diff_lo@80") in found.data.metrics
    artifacts = {a.path for a in client.list_artifacts(found.info.run_id, "study")}
    assert {"study/study.csv", "study/study.md", "study/study.png"} <= artifacts
    # the README's summary (scripts/update_readme_results.py --by study) reads the same metrics back
    m = found.data.metrics
    table = study_summary([("tiny", m)]).splitlines()
    identity = next(line for line in table if "| max | identity" in line)
    assert f"| {m[mlflow_key('study/identity/max/acc@40')]:.1f} |" in identity
    d, lo, hi = (m[mlflow_key(f"study/all/agreement/{k}@80")] for k in ("diff", "diff_lo", "diff_hi"))
    row = next(line for line in table if "| agreement | all |" in line)
    assert row.endswith(f"| {d:+.1f} [{lo:+.1f}, {hi:+.1f}]{' *' if lo > 0 or hi < 0 else ''} |")
    assert sum("| tiny |" in line for line in table) == 2 * len(VARIANTS)  # 2 rules x (identity + 5 variants)


@pytest.mark.parametrize("argv, fragment", [
    (["--variants", "identity,mirror"], "unknown variant 'mirror'"),
    (["--fractions", "0,40"], "outside (0, 100]"),
    (["--fractions", "20,120"], "outside (0, 100]"),
    (["--rules", "mean"], "unknown confidence rule 'mean'"),
])
def test_bad_options_are_one_line_exit_2(study_ckpt, tiny_benchmark, tmp_path, argv, fragment, capsys):
    code, _, err = call(["study", "pseudo-labels", "--checkpoint", str(study_ckpt), "--data",
                         f"{tiny_benchmark}#target", "--out", str(tmp_path / "s"), *argv], capsys)
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1 and fragment in lines[0] and "Traceback" not in err, err
    assert not (tmp_path / "s").exists()


def test_missing_checkpoint_is_one_line_exit_2(tmp_path, capsys):
    code, _, err = call(["study", "pseudo-labels", "--checkpoint", str(tmp_path / "none.pt")], capsys)
    assert code == 2 and err.startswith("error:") and "none.pt" in err and len(err.splitlines()) == 1, err


# ----------------------------------------------------------------------------------- pieces
def test_kept_fraction_keeps_the_requested_share():
    rng = np.random.default_rng(0)
    n, k = 37, 18
    conf = rng.random((n, k))
    gt = np.concatenate([rng.random((n, k, 2)) * 100, np.ones((n, k, 1))], -1)
    for fraction in (0.05, 0.2, 0.4, 0.6, 0.8, 1.0):
        kept, correct, scored = kept_counts(gt[..., :2], conf, gt, np.ones((n, k), bool), np.full(n, 100.0), fraction)
        assert kept.sum() == round(fraction * n * k)
        if fraction < 1:
            assert conf[kept].min() > conf[~kept].max()  # the most confident ones
        assert (correct == kept.sum(1)).all() and (scored == kept.sum(1)).all()  # perfect labels


def synthetic_case(seed=0, n=40, k=18):
    """Records and labels near the ground truth, some joints far off, some invisible."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        kp = np.concatenate([rng.random((k, 2)) * 200 + 20, (rng.random((k, 1)) > 0.1)], -1).astype(np.float32)
        records.append(PoseRecord(f"{i}.jpg", kp, np.array([120, 120], np.float32), 240.0,
                                  np.array([20, 20, 200, 200], np.float32), video=i // 8, frame=i))
    gt = np.stack([r.keypoints[:, :2] for r in records])
    noise = rng.normal(0, 6, gt.shape) + (rng.random(gt.shape[:2]) < 0.3)[..., None] * 40
    return records, (gt + noise).astype(np.float32), rng.random((n, k)).astype(np.float32)


def test_accuracy_and_intervals_equal_a_direct_computation():
    records, kp, conf = synthetic_case()
    other = kp + np.random.default_rng(1).normal(0, 3, kp.shape).astype(np.float32)
    labels = {("identity", "max"): VariantLabels(kp, conf, 1),
              ("equivariance", "max"): VariantLabels(kp.copy(), conf.copy(), 5),  # identical to identity
              ("invariance", "max"): VariantLabels(other, conf, 5)}
    s = StudySettings("x", variants=("identity", "equivariance", "invariance"), rules=("max",),
                      fractions=(20.0, 50.0, 100.0), draws=300, seed=3)
    rows = study_rows(labels, records, s)
    assert len(rows) == 9
    for row in rows:
        lab = labels[(row["variant"], "max")]
        acc, kept, scored = direct_accuracy(lab.keypoints, lab.confidence, records, row["kept %"] / 100.0)
        assert row["accuracy"] == pytest.approx(acc, abs=1e-9)
        assert (row["kept joints"], row["scored joints"]) == (kept, scored)
        # the interval is the stats module's, over images
        _, c, n = kept_counts(lab.keypoints, lab.confidence, np.stack([r.keypoints for r in records]),
                              np.stack([r.keypoints[:, 2] > 0 for r in records]),
                              np.array([r.side for r in records]), row["kept %"] / 100.0)
        assert (row["accuracy"], row["lo"], row["hi"]) == pytest.approx(ratio_interval(c, n, 300, 3))
        if row["variant"] in ("identity", "equivariance"):  # identity vs (a copy of) identity: exactly 0
            assert (row["diff vs identity"], row["diff lo"], row["diff hi"]) == (0.0, 0.0, 0.0)
            assert row["excludes 0"] == "no"
        else:
            ref = next(r for r in rows if r["variant"] == "identity" and r["kept %"] == row["kept %"])
            assert row["diff vs identity"] == pytest.approx(row["accuracy"] - ref["accuracy"])


def test_paired_difference_uses_one_resample_for_both():
    rng = np.random.default_rng(0)
    n = 60
    counted = rng.integers(1, 18, n).astype(float)
    a = np.minimum(counted, rng.binomial(counted.astype(int), 0.6))
    b = np.minimum(counted, a + rng.integers(0, 2, n))
    assert paired_ratio_difference(a, counted, a, counted, 500, 0) == (0.0, 0.0, 0.0)
    est, lo, hi = paired_ratio_difference(b, counted, a, counted, 500, 7)
    w = resample_counts(n, 500, np.random.default_rng(7))
    diff = (w @ b / (w @ counted) - w @ a / (w @ counted)) * 100
    assert est == pytest.approx((b.sum() - a.sum()) / counted.sum() * 100)
    assert (lo, hi) == pytest.approx(tuple(np.quantile(diff, [0.025, 0.975])))
    assert lo > 0  # b is never worse than a on any image: the paired interval sees it


def test_video_units_group_frames_of_a_video():
    records, _, _ = synthetic_case(n=20)
    records[-1] = PoseRecord("x.jpg", records[-1].keypoints, records[-1].center, 240.0, records[-1].bbox)  # no video
    assert resampling_units(records, "image").tolist() == list(range(20))
    units = resampling_units(records, "video")
    assert units.tolist() == [0] * 8 + [1] * 8 + [2] * 3 + [3]


def test_variants_are_replacements_of_the_config_section():
    base = CCSSLConfig(num_transforms=7, flow_ratio=0.8, confidence="max")
    flip = variant_config(base, "flip", "agreement")
    assert (flip.equivariance, flip.flip, flip.scale_sigma, flip.rotate_sigma) == (True, True, 0.0, 0.0)
    assert (flip.invariance, flip.temporal, flip.confidence) == (False, False, "agreement")
    assert (flip.num_transforms, flip.flow_ratio) == (7, 0.8)
    ident = variant_config(base, "identity", "max")
    assert not (ident.equivariance or ident.invariance or ident.flip or ident.temporal)
    assert parse_variants("+flip, all") == ("identity", "flip", "all")
    assert parse_fractions("80,20,40") == (20.0, 40.0, 80.0)
    with pytest.raises(ConfigError, match="valid: identity"):
        parse_variants("identity,+mirror")
