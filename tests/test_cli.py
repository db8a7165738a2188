"""The command line under bad input: one ``error:`` line naming the problem, the right exit code.

Config mistakes exit with 2, every other project error with 1; a skipped sample is one
``warning:`` line; no traceback ever reaches the user. Most checks call ``main()`` in-process
(the console script's own function); a few run ``python -m da_pose`` to prove the real entry.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from da_pose import checkpoint, jobs, run
from da_pose.config import dump_yaml, load_config
from da_pose.data import manifest, tigdog
from da_pose.models.factory import build_model
from tests.conftest import call, fresh_store, tiny_overrides


# ----------------------------------------------------------------------------------- helpers


def run_cli(*args, cwd, timeout=300, env=None) -> subprocess.CompletedProcess:
    """``python -m da_pose ARGS`` in a fresh process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "da_pose", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=env)


def one_error(err: str, *fragments: str) -> str:
    """Exactly one line starts with ``error:``, it holds every fragment, and no traceback."""
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def as_sets(overrides) -> list[str]:
    out = []
    for o in overrides:
        out += ["--set", o]
    return out








@pytest.fixture
def bench(tiny_benchmark, tmp_path) -> Path:
    """A private copy of the tiny benchmark that a test may corrupt."""
    return Path(shutil.copytree(tiny_benchmark, tmp_path / "bench"))


# ----------------------------------------------------------------------------------- config
@pytest.mark.parametrize("override, fragments", [
    ("train.lrr=1", ["unknown config key 'train.lrr'", "valid keys in train:", "lr_milestones"]),
    ("nosuch=1", ["unknown config key 'nosuch'", "valid keys:"]),
    ("train.batch_size=abc", ["train.batch_size: expected an integer", "'abc'"]),
    ("train.deterministic=maybe", ["expected true or false"]),
    ("data.input_size=-64", ["data.input_size must be positive, got -64"]),
    ("train.epochs=-1", ["train.epochs must be >= 0"]),
    ("model.backbone=vgg", ["model.backbone: unknown value 'vgg'", "valid: hourglass, resnet18, resnet34"]),
    ("train.optimizer=lbfgs", ["train.optimizer: unknown value 'lbfgs'; valid: rmsprop, adam, sgd"]),
    ("codec.decode=magic", ["valid: quarter, dark, argmax"]),
    ("train", ["expected key=value"]),
])
def test_config_errors_exit_2_before_any_run(override, fragments, empty_yaml, tmp_path, capsys):
    base = [f"out_dir={tmp_path}/runs", f"tracking_uri=sqlite:///{tmp_path}/mlruns.db", "device=cpu"]
    code, _, err = call(["pretrain", str(empty_yaml), *as_sets(base + [override])], capsys)
    assert code == 2
    one_error(err, *fragments)
    # refused before a run folder or an MLflow run exists
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlruns.db").exists()


@pytest.mark.parametrize("text, fragments", [
    ("model:\n  widht: 3\n", ["unknown config key 'model.widht'", "valid keys in model:", "features"]),
    ("train: [1, 2\n", ["c.yaml: not valid YAML"]),
    ("- 1\n- 2\n", ["c.yaml: expected a mapping"]),
    ("train:\n  lr: fast\n", ["train.lr: expected a number, got 'fast'"]),
    (b"\xff\xfe\x00bad", ["c.yaml: not readable as UTF-8 text"]),
])
def test_bad_config_files(text, fragments, tmp_path, capsys):
    p = tmp_path / "c.yaml"
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    code, _, err = call(["pretrain", str(p)], capsys)
    assert code == 2
    one_error(err, *fragments)


def test_missing_config_file(tmp_path, capsys):
    code, _, err = call(["adapt", "ccssl", str(tmp_path / "none.yaml")], capsys)
    assert code == 2
    one_error(err, "config file not found", "none.yaml")


def test_real_entry_point_config_error(empty_yaml, tmp_path):
    """``python -m da_pose``: the console script's path, exit code and single line."""
    proc = run_cli("pretrain", empty_yaml, "--set", "model.backbone=vgg", "--set", f"out_dir={tmp_path}/runs",
                   "--tracking-uri", f"sqlite:///{tmp_path}/mlruns.db", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    one_error(proc.stderr, "unknown value 'vgg'", "resnet50")
    assert proc.stderr.count("\n") == 1
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlruns.db").exists()


# ----------------------------------------------------------------------------------- data show
def _synthetic_folder(root: Path) -> Path:
    return root / "synthetic_animal" / "toyhorse_combineds5r5_texture"


def _shot_file(root: Path, shot: int = 2) -> Path:
    return tigdog.landmarks_path(root / "behaviorDiscovery2.0", "toyhorse", shot)


def _truncate(path: Path, keep: int = 100) -> Path:
    path.write_bytes(path.read_bytes()[:keep])
    return path


def _bad_jpg(root):
    p = root / "behaviorDiscovery2.0" / "toyhorse" / "00000003.jpg"
    p.write_bytes(b"not a jpeg at all")
    return p


def _bad_kpts_shape(root):
    p = _synthetic_folder(root) / "00001_kpts.npy"
    np.save(p, np.zeros((5, 2)))
    return p


def _nan_kpts(root):
    p = _synthetic_folder(root) / "00002_kpts.npy"
    k = np.load(p)
    k[:, 0] = np.nan
    np.save(p, k)
    return p


def _nan_landmarks(root):
    p = _shot_file(root)
    coords, vis = tigdog.read_landmarks(p)
    coords[1, 0, 0] = np.nan
    tigdog.write_landmarks(p, coords, vis)
    return p


def _coco(root, split="train"):
    return root / "other" / "annotations" / f"{split}.json"


def _edit_json(path, fn):
    doc = json.loads(path.read_text())
    fn(doc)
    path.write_text(json.dumps(doc))
    return path


# (corruption, domain, split, rc without --strict, warning fragment, rc with --strict, error fragment)
CORRUPTIONS = {
    "undecodable image": (_bad_jpg, "target", "all", 1, None, 1, "image not found or unreadable"),
    "truncated landmarks .mat": (lambda r: _truncate(_shot_file(r)), "target", "all", 0,
                                 "skipped 1 unreadable shot file(s)", 1, "unreadable MATLAB file"),
    "truncated ranges.mat": (lambda r: _truncate(tigdog.ranges_path(r / "behaviorDiscovery2.0", "toyhorse")),
                             "target", "all", 1, None, 1, "unreadable MATLAB file"),
    "NaN landmarks": (_nan_landmarks, "target", "all", 0, "skipped 1 unreadable shot file(s)", 1,
                      "NaN or infinite"),
    "kpts.npy of wrong shape": (_bad_kpts_shape, "source", "train", 0, "skipped 1 unreadable sample(s)", 1,
                                "keypoints of shape (5, 2)"),
    "NaN kpts.npy": (_nan_kpts, "source", "train", 0, "skipped 1 unreadable sample(s)", 1, "NaN or infinity"),
    "truncated kpts.npy": (lambda r: _truncate(_synthetic_folder(r) / "00003_kpts.npy", 60), "source", "train", 0,
                           "skipped 1 unreadable sample(s)", 1, "unreadable keypoint file"),
    "COCO without images": (lambda r: _edit_json(_coco(r), lambda d: d.pop("images")), "other", "train", 1, None,
                            1, "no 'images' list"),
    "COCO annotation without image_id": (lambda r: _edit_json(_coco(r), lambda d: d["annotations"][0].pop("image_id")),
                                         "other", "train", 1, None, 1, "missing 'image_id'"),
    "COCO annotation without keypoints": (
        lambda r: _edit_json(_coco(r), lambda d: d["annotations"][0].pop("keypoints")),
        "other", "train", 0, "skipped 1 annotation(s)", 1, "0 keypoint values"),
    "COCO keypoints not numbers": (
        lambda r: _edit_json(_coco(r), lambda d: d["annotations"][0].__setitem__("keypoints", "abc")),
        "other", "train", 0, "skipped 1 annotation(s)", 1, "non-numeric keypoint values"),
    "COCO image without file_name": (lambda r: _edit_json(_coco(r), lambda d: d["images"][0].pop("file_name")),
                                     "other", "train", 0, "skipped 1 annotation(s)", 1, "unknown image"),
    "manifest path escaping the folder": (
        lambda r: _edit_json(r / "manifest.json", lambda d: d["domains"]["target"].__setitem__("root", "../../etc")),
        "target", "all", 1, None, 1, "escapes the benchmark folder"),
}


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_data_show_corrupt_inputs(name, bench, tmp_path, capsys):
    corrupt, domain, split, rc, warning, strict_rc, error = CORRUPTIONS[name]
    bad = corrupt(bench)
    args = ["data", "show", "--data", f"{bench}#{domain}", "--split", split, "-n", "64",
            "--out", str(tmp_path / "s.png")]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, _, err = call(args, capsys)
    assert code == rc, err
    assert "Traceback" not in err
    if rc == 0:
        messages = [str(w.message) for w in caught]
        assert any(warning in m and bad.name in m for m in messages), messages
        assert (tmp_path / "s.png").is_file()
    else:
        one_error(err, error, bad.name)
    code, _, err = call(args + ["--strict"], capsys)
    assert code == strict_rc
    one_error(err, error, bad.name)


def test_data_show_real_entry_point_warns_and_refuses(bench, tmp_path):
    """``python -m da_pose``: a skipped sample is one ``warning:`` line; --strict makes it one error."""
    bad = _truncate(_shot_file(bench))
    args = ["data", "show", "--data", f"{bench}#target", "--out", tmp_path / "s.png"]
    proc = run_cli(*args, cwd=tmp_path)
    assert proc.returncode == 0 and (tmp_path / "s.png").is_file()
    lines = proc.stderr.splitlines()
    assert lines and all(line.startswith("warning: ") for line in lines), proc.stderr
    assert any("skipped 1 unreadable shot file(s)" in line and str(bad) in line for line in lines)
    strict = run_cli(*args, "--strict", cwd=tmp_path)
    assert strict.returncode == 1
    assert one_error(strict.stderr, str(bad), "unreadable MATLAB file") == strict.stderr.strip()


def test_data_show_out_of_image_keypoints_are_kept_invisible(bench, tmp_path, capsys):
    """Synthetic joints outside the image are zeroed (published rule), not an error."""
    p = _synthetic_folder(bench) / "00000_kpts.npy"
    k = np.load(p)
    k[:, 0] += 1e6
    np.save(p, k)
    code, _, err = call(["data", "show", "--data", f"{bench}#source", "--split", "train", "--strict",
                         "--out", str(tmp_path / "s.png")], capsys)
    assert code == 0, err
    rec = next(r for r in manifest.load_domain(bench, "source", "train") if r.image_path.endswith("00000_img.png"))
    assert (rec.keypoints == 0).all()


def test_data_show_unknown_spec(tmp_path, capsys):
    code, _, err = call(["data", "show", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "s.png")], capsys)
    assert code == 2
    one_error(err, "expected DIR#domain")


# ----------------------------------------------------------------------------------- evaluate
@pytest.fixture
def tiny_ckpt(tiny_benchmark, tmp_path):
    """An untrained tiny model saved as a da_pose checkpoint (weights, arch and config)."""
    cfg = load_config(None, tiny_overrides(tiny_benchmark, tmp_path, "ev"))
    model = build_model(cfg.model, 18)
    path = tmp_path / "ev.pt"
    checkpoint.save(path, {"model": model.state_dict(), "arch": run.arch_of(cfg), "config": dump_yaml(cfg)})
    return path, cfg


def test_evaluate_good_checkpoint_and_bad_image(tiny_ckpt, bench, tmp_path, capsys):
    path, cfg = tiny_ckpt
    code, out, err = call(["evaluate", "--checkpoint", str(path), "--data", f"{bench}#target",
                           "--out", str(tmp_path / "ev")], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["pck@0.05_crop/mean"] >= 0
    # one unreadable test image: skipped with a count; refused with data.strict
    test = manifest.load_domain(bench, "target", "test")
    Path(test[0].image_path).write_bytes(b"\x00" * 10)
    with pytest.warns(UserWarning, match="1 unreadable image"):
        code, out, err = call(["evaluate", "--checkpoint", str(path), "--data", f"{bench}#target",
                               "--out", str(tmp_path / "ev2")], capsys)
    assert code == 0, err
    code, out, err = call(["evaluate", "--checkpoint", str(path), "--data", f"{bench}#target", "--out",
                           str(tmp_path / "ev3"), "--set", "data.strict=true"], capsys)
    assert code == 1
    one_error(err, "unreadable image", Path(test[0].image_path).name)


def test_evaluate_strict_applies_to_the_loader(tiny_ckpt, bench, tmp_path, capsys):
    path, _ = tiny_ckpt
    _truncate(_shot_file(bench, 1))
    code, _, err = call(["evaluate", "--checkpoint", str(path), "--data", f"{bench}#target", "--out",
                         str(tmp_path / "ev"), "--set", "data.strict=true"], capsys)
    assert code == 1
    one_error(err, "1.mat", "unreadable MATLAB file")


class _Evil:
    """Unpickling this calls ``open(marker, "w")``: code in a checkpoint."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _other_joints(path, cfg):
    model = build_model(cfg.model, 17)
    checkpoint.save(path, {"model": model.state_dict(), "arch": {**run.arch_of(cfg), "num_joints": 17},
                           "config": dump_yaml(cfg)})


def _other_joints_no_arch(path, cfg):
    model = build_model(cfg.model, 17)
    checkpoint.save(path, {"model": model.state_dict(), "config": dump_yaml(cfg)})


def _pickle_with_code(path, cfg):
    torch.save({"model": _Evil(path.parent / "PWNED"), "config": dump_yaml(cfg)}, path)


def _truncated(path, cfg):
    _truncate(path, path.stat().st_size // 2)


def _text_file(path, cfg):
    path.write_text("this is not a checkpoint\n")


CKPT_FAULTS = {
    "another joint count": (_other_joints, [],
                            ["trained with another model", "num_joints: checkpoint 17 vs config 18"]),
    "another joint count, no arch": (_other_joints_no_arch, [], ["does not fit the model", "another shape"]),
    "another architecture": (None, ["model.features=32"], ["features: checkpoint 16 vs config 32"]),
    "another backbone": (None, ["model.backbone=resnet18"], ["backbone: checkpoint 'hourglass' vs config 'resnet18'"]),
    "pickle with code": (_pickle_with_code, [], ["refused", "weights_only"]),
    "truncated": (_truncated, [], ["not a readable checkpoint (truncated or corrupt?)"]),
    "not a checkpoint": (_text_file, [], ["not a readable checkpoint"]),
}


@pytest.mark.parametrize("name", list(CKPT_FAULTS))
def test_evaluate_bad_checkpoints(name, tiny_ckpt, tmp_path, capsys):
    path, cfg = tiny_ckpt
    make, sets, fragments = CKPT_FAULTS[name]
    if make is not None:
        make(path, cfg)
    code, _, err = call(["evaluate", "--checkpoint", str(path), *as_sets(sets)], capsys)
    assert code == 1
    one_error(err, *fragments)
    assert not (tmp_path / "PWNED").exists()  # the pickled code never ran


def test_evaluate_missing_checkpoint(tmp_path, capsys):
    code, _, err = call(["evaluate", "--checkpoint", str(tmp_path / "none.pt")], capsys)
    assert code == 1
    one_error(err, "checkpoint not found", "none.pt")


def test_bare_state_dict_error_names_a_real_option(tiny_ckpt, capsys):
    path, cfg = tiny_ckpt
    checkpoint.save(path, {"model": build_model(cfg.model, 18).state_dict()})
    code, _, err = call(["evaluate", "--checkpoint", str(path)], capsys)
    line = one_error(err, "carries no config")
    help_code, help_out, _ = call(["evaluate", "--help"], capsys)
    options = [word for word in line.split() if word.startswith("--")]
    assert options and all(o in help_out for o in options)


# ----------------------------------------------------------------------------------- tracking
def test_unreachable_tracking_server_fails_fast_before_training(tiny_benchmark, empty_yaml, tmp_path):
    over = tiny_overrides(tiny_benchmark, tmp_path, "unreach")
    t0 = time.perf_counter()
    proc = run_cli("pretrain", empty_yaml, *as_sets(over), "--tracking-uri", "http://127.0.0.1:9", cwd=tmp_path,
                   timeout=120)
    elapsed = time.perf_counter() - t0
    assert proc.returncode == 1, proc.stderr
    one_error(proc.stderr, "http://127.0.0.1:9", "unreachable")
    assert elapsed < 60  # imports included; MLflow's own retries would take minutes
    assert not (tmp_path / "runs").exists()  # nothing started


def test_tracking_store_folder_missing(tiny_benchmark, empty_yaml, tmp_path, capsys):
    over = tiny_overrides(tiny_benchmark, tmp_path, "nostore", uri=f"sqlite:///{tmp_path}/nope/mlruns.db")
    code, _, err = call(["pretrain", str(empty_yaml), *as_sets(over)], capsys)
    assert code == 1
    one_error(err, "tracking store folder does not exist", "nope")
    assert not (tmp_path / "runs").exists()


# ----------------------------------------------------------------------------------- runs
@pytest.mark.slow
def test_nan_loss_exit_code(tiny_benchmark, empty_yaml, tmp_path, capsys, monkeypatch, mlflow_template):
    uri = fresh_store(mlflow_template, tmp_path / "mlruns.db")
    over = tiny_overrides(tiny_benchmark, tmp_path, "nan", uri) + ["train.epochs=2", "train.eval_every=10"]
    calls = {"n": 0}
    real = jobs.supervised_step

    def step(model, batch):
        calls["n"] += 1
        out = real(model, batch)
        if calls["n"] > 3:  # the second epoch's first step
            out["loss"] = out["loss"] * float("inf")
        return out

    monkeypatch.setattr(jobs, "supervised_step", step)
    code, _, err = call(["pretrain", str(empty_yaml), *as_sets(over)], capsys)
    assert code == 1
    one_error(err, "loss became inf", "the last good checkpoint")
    assert checkpoint.load(tmp_path / "runs" / "tests" / "nan" / "last.pt")["epoch"] == 1


@pytest.mark.slow
def test_out_dir_that_is_a_file(tiny_benchmark, empty_yaml, tmp_path, capsys, mlflow_template):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the run folder should go\n")
    uri = fresh_store(mlflow_template, tmp_path / "mlruns.db")
    over = tiny_overrides(tiny_benchmark, tmp_path, "blocked", uri) + [f"out_dir={blocker}"]
    code, _, err = call(["pretrain", str(empty_yaml), *as_sets(over)], capsys)
    assert code == 1
    one_error(err, str(blocker))
    assert blocker.read_text().startswith("a file")


# ----------------------------------------------------------------------------------- threads
def test_threads_option_sets_torch_threads_and_rejects_zero(capsys, tiny_benchmark, tmp_path):
    before = torch.get_num_threads()
    try:
        code, _, _ = call(["--threads", "1", "data", "show", "--data", f"{tiny_benchmark}#source",
                           "--out", str(tmp_path / "s.png"), "-n", "2"], capsys)
        assert code == 0 and torch.get_num_threads() == 1
        code, _, err = call(["--threads", "0", "data", "show", "--data", f"{tiny_benchmark}#source",
                             "--out", str(tmp_path / "s.png")], capsys)
        assert code == 2 and err.count("\n") == 1 and "--threads 0" in err
    finally:
        torch.set_num_threads(before)


def test_a_checkpoint_config_of_an_earlier_version_is_read(tmp_path):
    from da_pose.jobs import config_from_checkpoint

    cfg = load_config(None, [])
    text = dump_yaml(cfg).replace("data:\n", "data:\n  target_labelled: 7\n", 1)
    path = tmp_path / "old.pt"
    checkpoint.save(path, {"model": {}, "config": text})
    assert config_from_checkpoint(path).wscda.target_labelled == 7
