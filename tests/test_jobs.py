"""End-to-end runs of the commands on a tiny generated benchmark with a real SQLite MLflow store."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from da_pose.adapt import run_adaptation
from da_pose.adapt.ccssl import generate_pseudo_labels
from da_pose.adapt.pseudo_labels import load_or_generate_labels
from da_pose.data import loaders
from da_pose.run import RunContext
from da_pose.tracking import NullTracker
from da_pose.train.dist import DistInfo
from da_pose import checkpoint, jobs
from da_pose.config import load_config
from da_pose.errors import ConfigError, TrainingError
from da_pose.tracking import mlflow_key
from tests.conftest import tiny_overrides

pytestmark = pytest.mark.slow


def runs_by_name(uri, experiment="tests"):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return client, {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}


def test_pretrain_logs_params_metrics_and_artifacts(tiny_benchmark, tmp_path):
    cfg = load_config(None, tiny_overrides(tiny_benchmark, tmp_path, "pre"))
    metrics = jobs.run_pretrain(cfg)
    assert "target_test/pck@0.05_crop/mean" in metrics and "target_test/pck@0.05_bbox/mean" in metrics
    client, runs = runs_by_name(cfg.tracking_uri)
    run = runs["pre"]
    assert run.info.status == "FINISHED"
    assert run.data.params["model.features"] == "16" and run.data.tags["method"] == "source_only"
    assert run.data.tags["git_commit"] and run.data.tags["backbone"] == "hourglass"
    assert mlflow_key("target_test/pck@0.05_crop/hoof") in run.data.metrics
    assert mlflow_key("target_test/pck@0.05_bbox/mean") in run.data.metrics
    assert mlflow_key("source_val/pck@0.05_crop/mean") in run.data.metrics
    assert "train/loss" in run.data.metrics and "train/images_per_s" in run.data.metrics
    arts = {a.path for a in client.list_artifacts(run.info.run_id, "eval")}
    assert {"eval/per_joint.csv", "eval/per_joint.md", "eval/per_joint.png", "eval/predictions.png"} <= arts
    assert [a.path for a in client.list_artifacts(run.info.run_id, "checkpoint")] == ["checkpoint/last.pt"]
    run_dir = Path(cfg.out_dir) / "tests" / "pre"
    assert (run_dir / "last.pt").is_file() and (run_dir / "best.pt").is_file()
    # a second run into the same folder is refused rather than overwriting the checkpoint
    with pytest.raises(ConfigError, match="already holds a run"):
        jobs.run_pretrain(cfg)


def test_resume_gives_identical_weights(tiny_benchmark, tmp_path):
    full = load_config(None, tiny_overrides(tiny_benchmark, tmp_path, "full"))
    jobs.run_pretrain(full)
    half = load_config(None, tiny_overrides(tiny_benchmark, tmp_path, "half") + ["train.epochs=1"])
    jobs.run_pretrain(half)
    resumed = load_config(None, tiny_overrides(tiny_benchmark, tmp_path, "half") + ["resume=auto"])
    jobs.run_pretrain(resumed)
    a = checkpoint.load(Path(full.out_dir) / "tests" / "full" / "last.pt")
    b = checkpoint.load(Path(full.out_dir) / "tests" / "half" / "last.pt")
    assert a["epoch"] == b["epoch"] == 2 and a["step"] == b["step"]
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    _, runs = runs_by_name(full.tracking_uri)
    assert runs["half"].data.tags.get("resumed") == "true"


def test_nan_loss_stops_and_keeps_checkpoint(tiny_benchmark, tmp_path, monkeypatch):
    cfg = load_config(None, tiny_overrides(tiny_benchmark, tmp_path, "nan") + ["train.epochs=3"])
    calls = {"n": 0}
    real = jobs.supervised_step

    def step(model, batch):
        calls["n"] += 1
        out = real(model, batch)
        if calls["n"] > 3:  # after the first epoch (3 steps) the loss turns NaN
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(jobs, "supervised_step", step)
    with pytest.raises(TrainingError, match="loss became nan"):
        jobs.run_pretrain(cfg)
    ckpt = checkpoint.load(Path(cfg.out_dir) / "tests" / "nan" / "last.pt")
    assert ckpt["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    _, runs = runs_by_name(cfg.tracking_uri)
    assert runs["nan"].info.status == "FAILED"


def test_ccssl_rounds_log_and_resume_from_cache(tiny_benchmark, tmp_path):
    pre = load_config(None, tiny_overrides(tiny_benchmark, tmp_path, "src") + ["train.epochs=1"])
    jobs.run_pretrain(pre)
    init = Path(pre.out_dir) / "tests" / "src" / "last.pt"
    over = tiny_overrides(tiny_benchmark, tmp_path, "cc") + [f"init={init}", "method=ccssl", "ccssl.steps_per_round=2",
                                                             "ccssl.num_transforms=2"]
    one = load_config(None, over + ["ccssl.rounds=1"])
    run_adaptation(one, "ccssl")
    run_dir = Path(one.out_dir) / "tests" / "cc"
    # simulate a run killed after round 1's pseudo-labelling, before its training
    two = load_config(None, over + ["ccssl.rounds=2", "resume=auto"])
    from da_pose.models.factory import build_model

    model = build_model(two.model, 18)
    checkpoint.load_model_weights(model, checkpoint.load(run_dir / "last.pt"))
    codec = loaders.make_codec(two)
    ds = loaders.make_dataset(two, loaders.domain_records(two, "target", "train"), codec, train=False)
    ctx = RunContext(two, run_dir, NullTracker(), torch.device("cpu"), DistInfo())
    labels, cached = load_or_generate_labels(ctx, model, codec, ds, ds.records, 1, two.ccssl, generate_pseudo_labels)
    assert not cached
    stamp = (run_dir / "pseudo_labels" / "round_01.pt").stat().st_mtime_ns
    run_adaptation(two, "ccssl")
    assert (run_dir / "pseudo_labels" / "round_01.pt").stat().st_mtime_ns == stamp
    client, runs = runs_by_name(two.tracking_uri)
    rid = runs["cc"].info.run_id
    cached_hist = {m.step: m.value for m in client.get_metric_history(rid, "ccssl/cached")}
    assert cached_hist == {0: 0.0, 1: 1.0}
    kept = {m.step: m.value for m in client.get_metric_history(rid, "ccssl/kept_fraction")}
    assert kept[0] == pytest.approx(0.2, abs=0.02) and kept[1] == pytest.approx(0.4, abs=0.02)
    assert mlflow_key("target_test/pck@0.05_crop/mean") in runs["cc"].data.metrics
    assert runs["cc"].info.status == "FINISHED"
    arts = {a.path for a in client.list_artifacts(rid, "pseudo_labels")}
    assert "pseudo_labels/confidence_round_01.png" in arts


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_processes_gloo(tiny_benchmark, tmp_path):
    over = tiny_overrides(tiny_benchmark, tmp_path, "ddp") + ["train.epochs=1"]
    (tmp_path / "empty.yaml").write_text("{}\n")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "da_pose", "pretrain", str(tmp_path / "empty.yaml")]
    for o in over:
        cmd += ["--set", o]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _, runs = runs_by_name(f"sqlite:///{tmp_path}/mlruns.db")
    assert list(runs) == ["ddp"] and runs["ddp"].info.status == "FINISHED"
    run_dir = tmp_path / "runs" / "tests" / "ddp"
    assert sorted(p.name for p in run_dir.glob("*.pt")) == ["best.pt", "last.pt"]
    ckpt = checkpoint.load(run_dir / "last.pt")
    # 12 source images, batch 4 per rank, 2 ranks: one epoch = 1 step per rank (drop_last)
    assert ckpt["step"] == 1 and ckpt["epoch"] == 1
