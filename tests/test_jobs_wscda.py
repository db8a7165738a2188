"""End-to-end WS-CDA runs on the tiny generated benchmark with a real SQLite MLflow store."""

from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from da_pose import checkpoint
from da_pose.adapt import run_adaptation
from da_pose.config import load_config
from da_pose.tracking import mlflow_key
from tests.conftest import tiny_overrides

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One MLflow store for the module (creating a SQLite store takes seconds); run names differ."""
    return f"sqlite:///{tmp_path_factory.mktemp('wscda_store')}/mlruns.db"


@pytest.fixture(scope="module")
def pretrained(tiny_source):
    return tiny_source


def wscda_overrides(root, tmp_path, store, name, init, *extra):
    return tiny_overrides(root, tmp_path, name, uri=store) + [
        f"init={init}", "train.epochs=1", "wscda.steps_per_epoch=2", "wscda.disc_hidden=16", "wscda.pplo_steps=2",
        "ccssl.num_transforms=1", "wscda.pplo_rounds=0", *extra]


def run_of(uri, name):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("tests")
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    return client, runs[name]


@pytest.mark.parametrize("mode", ["grl", "minmax"])
def test_wscda_with_pplo_logs_discriminator_pplo_and_target_metrics(tiny_benchmark, tmp_path, store, pretrained, mode):
    over = [f"wscda.mode={mode}", "wscda.pplo_rounds=1", "wscda.pplo_keep=[0.5]", "wscda.target_labelled=2"]
    cfg = load_config(None, wscda_overrides(tiny_benchmark, tmp_path, store, f"ws_{mode}", pretrained, *over))
    metrics = run_adaptation(cfg, "wscda_pplo")
    assert "target_test/pck@0.05_crop/mean" in metrics
    client, run = run_of(cfg.tracking_uri, f"ws_{mode}")
    assert run.info.status == "FINISHED"
    tags = run.data.tags
    assert tags["method"] == "wscda_pplo" and tags["command"] == "adapt wscda_pplo"
    assert tags["wscda_mode"] == mode and tags["target_labelled"] == "2"
    rid = run.info.run_id
    for key in ("train/disc/acc_y", "train/disc/acc_z", "train/loss/ddl", "train/loss/pose_animal",
                "train/loss/pose_other"):
        hist = client.get_metric_history(rid, key)
        assert len(hist) == 2, key  # log_every=1, two adversarial steps
        if "acc" in key:
            assert all(0.0 <= m.value <= 1.0 for m in hist)
    assert ("train/grl/lambda" in run.data.metrics) == (mode == "grl")
    if mode == "grl":  # warm-up: lambda(0) = 0, then rising
        lam = [m.value for m in sorted(client.get_metric_history(rid, "train/grl/lambda"), key=lambda m: m.step)]
        assert lam[0] == 0.0 and lam[1] > 0.0
    kept = client.get_metric_history(rid, "pplo/kept_fraction")
    assert [m.step for m in kept] == [0] and kept[0].value == pytest.approx(0.5, abs=0.05)
    assert "pplo/acc_kept" in run.data.metrics
    assert mlflow_key("target_test/pck@0.05_crop/mean") in run.data.metrics
    assert {"pseudo_labels/confidence_round_00.png"} <= {a.path for a in client.list_artifacts(rid, "pseudo_labels")}
    ckpt = checkpoint.load(Path(cfg.out_dir) / "tests" / f"ws_{mode}" / "last.pt")
    assert ckpt["epoch"] == 2 and ckpt["step"] == 4  # 2 adversarial steps + 2 PPLO steps
    assert ckpt["extra_modules"]["domain_adversary"]["_extra_state"]["step"] == 2


def test_minmax_resume_continues_exactly(tiny_benchmark, tmp_path, store, pretrained):
    over = ["wscda.mode=minmax", "train.epochs=2"]
    full = load_config(None, wscda_overrides(tiny_benchmark, tmp_path, store, "full", pretrained, *over))
    run_adaptation(full, "wscda")
    half = load_config(None, wscda_overrides(tiny_benchmark, tmp_path, store, "half", pretrained, *over,
                                             "train.epochs=1"))
    run_adaptation(half, "wscda")
    run_adaptation(load_config(None, wscda_overrides(tiny_benchmark, tmp_path, store, "half", pretrained, *over,
                                                     "resume=auto")), "wscda")
    a = checkpoint.load(Path(full.out_dir) / "tests" / "full" / "last.pt")
    b = checkpoint.load(Path(full.out_dir) / "tests" / "half" / "last.pt")
    assert a["epoch"] == b["epoch"] == 2 and a["step"] == b["step"] == 4
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    da, db = a["extra_modules"]["domain_adversary"], b["extra_modules"]["domain_adversary"]
    for k, v in da.items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(v, db[k]), k
    assert da["_extra_state"]["step"] == db["_extra_state"]["step"] == 4
    _, run = run_of(full.tracking_uri, "half")
    assert run.data.tags["method"] == "wscda" and run.info.status == "FINISHED"
    assert mlflow_key("target_test/pck@0.05_crop/mean") in run.data.metrics
