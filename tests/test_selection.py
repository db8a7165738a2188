"""The labelled target val split, checkpoint selection on it, and the per-image results of a run."""

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from da_pose import checkpoint, jobs
from da_pose.adapt import run_adaptation
from da_pose.config import load_config
from da_pose.data import manifest
from da_pose.errors import ConfigError
from da_pose.eval import stats
from da_pose.eval.target import read_per_image
from da_pose.tracking import mlflow_key
from tests.conftest import tiny_overrides


def test_val_split_is_whole_videos_disjoint_from_train_and_test_and_fixed(tiny_benchmark):
    parts = {s: manifest.load_domain(tiny_benchmark, "target", s) for s in ("train", "val", "test")}
    videos = {s: {r.video for r in recs} for s, recs in parts.items()}
    assert videos["val"] and not videos["val"] & videos["train"] and not videos["val"] & videos["test"]
    assert not videos["train"] & videos["test"]
    doc = manifest.read_manifest(tiny_benchmark)["domains"]["target"]
    assert {s: len(r) for s, r in parts.items()} == doc["split"]
    assert sorted(videos["val"]) == doc["val_shots"]
    again = manifest.load_domain(tiny_benchmark, "target", "val")
    assert [r.frame for r in again] == [r.frame for r in parts["val"]]


@pytest.mark.slow
def test_pretrain_selected_on_target_val_reports_that_checkpoint(tiny_benchmark, tmp_path):
    over = tiny_overrides(tiny_benchmark, tmp_path, "sel") + ["train.selection=target_val", "train.epochs=3",
                                                               "train.eval_every=1", "settings=target_val"]
    cfg = load_config(None, over)
    metrics = jobs.run_pretrain(cfg)
    client = MlflowClient(cfg.tracking_uri)
    run = client.search_runs([client.get_experiment_by_name("tests").experiment_id])[0]
    assert run.data.tags["selection"] == "target_val" and run.data.tags["settings"] == "target_val"
    history = client.get_metric_history(run.info.run_id, mlflow_key("target_val/pck@0.05_crop/mean"))
    assert len(history) >= 3  # every epoch end, and the report
    best = max(m.value for m in history[:-1])
    assert history[-1].value == pytest.approx(best)  # the reported model is the best epoch's
    saved = checkpoint.load(tmp_path / "runs" / "tests" / "sel" / "best.pt")
    assert saved["epoch"] == int(run.data.metrics["selection/best_epoch"])
    # the per-image results behind the reported figure
    path = client.download_artifacts(run.info.run_id, "eval/per_image.npz", str(tmp_path / "dl"))
    res = read_per_image(path)
    assert res["hits"].shape == (len(manifest.load_domain(tiny_benchmark, "target", "test")), 18)
    assert stats.mean_pck(res["hits"], res["counted"]) == pytest.approx(metrics["target_test/pck@0.05_crop/mean"])
    assert not (res["hits"] & ~res["counted"]).any()


def test_adaptation_refuses_source_val_selection(tiny_benchmark, tmp_path):
    cfg = load_config(None, tiny_overrides(tiny_benchmark, tmp_path, "a") + ["train.selection=source_val",
                                                                              f"init={tmp_path}/none.pt"])
    with pytest.raises(ConfigError, match="source_val is for pretraining"):
        run_adaptation(cfg, "ccssl")


def test_unknown_selection_is_a_config_error(tiny_benchmark, tmp_path):
    with pytest.raises(ConfigError, match="train.selection: unknown value 'test'"):
        load_config(None, tiny_overrides(tiny_benchmark, tmp_path) + ["train.selection=test"])


def test_val_fraction_zero_keeps_the_published_train_whole(tiny_benchmark):
    from da_pose.data import tigdog

    entry = manifest.read_manifest(tiny_benchmark)["domains"]["target"]
    files = {k: tiny_benchmark / v for k, v in entry["split_files"].items()}
    root = tiny_benchmark / entry["root"]
    whole = tigdog.load_tigdog(root, entry["species"], "train", split_files=files, val_fraction=0)
    assert len(whole) == entry["split"]["train"] + entry["split"]["val"]
    assert tigdog.load_tigdog(root, entry["species"], "val", split_files=files, val_fraction=0) == []
    positions = np.load(files["train"])
    assert sorted(r.extra["position"] for r in whole) == sorted(positions.tolist())
