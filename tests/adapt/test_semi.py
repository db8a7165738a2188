"""The semi-supervised protocol in the method framework: the supervised term on the labelled
target subset, added once for every method, and end-to-end runs on target data whose other labels
are poisoned with NaN (they must never be read)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from torch import nn

from da_pose import jobs
from da_pose.adapt import run_adaptation
from da_pose.adapt.semi import WithLabelled, _supervised_step, label_spec
from da_pose.config import load_config
from da_pose.data import labelled, manifest
from da_pose.data.dataset import PoseDataset
from da_pose.data.loaders import make_codec
from da_pose.errors import ConfigError, DataError
from da_pose.models.layers import PoseOutput
from da_pose.train.losses import joints_mse
from tests.conftest import fresh_store, tiny_overrides


class TinyPose(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3, padding=1)

    def forward(self, x):
        return PoseOutput([self.conv(x)], x)


def test_supervised_term_is_added_and_hidden_from_the_method_step():
    torch.manual_seed(0)
    model = TinyPose()
    seen = {}

    def inner(m, batch):
        seen["roles"] = sorted(batch)
        loss = m(batch["target"]["image"]).heatmaps[0].pow(2).mean()
        return {"loss": loss, "loss/own": loss.detach()}

    lab = {"image": torch.randn(3, 3, 8, 8), "target": torch.rand(3, 2, 8, 8), "target_weight": torch.ones(3, 2)}
    batch = {"source": {}, "target": {"image": torch.randn(2, 3, 8, 8)}, labelled.ROLE: lab}
    out = _supervised_step(model, batch, inner, weight=0.5)
    assert seen["roles"] == ["source", "target"]  # the method's step never sees the labelled batch
    sup = joints_mse(model(lab["image"]).heatmaps, lab["target"], lab["target_weight"])
    assert out["loss/target_labelled"] == pytest.approx(float(sup.detach()))
    assert float(out["loss"].detach()) == pytest.approx(float(out["loss/own"]) + 0.5 * float(sup.detach()), rel=1e-6)
    out["loss"].backward()
    assert model.conv.weight.grad is not None


def test_every_batch_gains_a_labelled_batch_and_keeps_its_length():
    batches = [{"source": i} for i in range(5)]
    wrapped = WithLabelled(batches, [torch.tensor([1]), torch.tensor([2])])  # a 2-batch loader, cycled
    got = list(wrapped)
    assert len(wrapped) == 5 and [b["source"] for b in got] == list(range(5))
    assert [int(b[labelled.ROLE]) for b in got] == [1, 2, 1, 2, 1]


def test_config_section_and_wscda_count_conflict(tiny_benchmark, tmp_path):
    cfg = load_config(None, tiny_overrides(tiny_benchmark, tmp_path) + ["data.target_labels=0.05", "semi.weight=0.5"])
    assert cfg.data.target_labels == "0.05" and cfg.section("semi").weight == 0.5
    assert label_spec(cfg).kind == "fraction"
    both = load_config(None, tiny_overrides(tiny_benchmark, tmp_path) + [
        "data.target_labels=2_per_video", "wscda.target_labelled=3", "method=wscda"])
    with pytest.raises(ConfigError, match="wscda.target_labelled"):
        label_spec(both)
    with pytest.raises(ConfigError, match="semi.weight"):
        load_config(None, ["semi.weight=-1"])


# ---------------------------------------------------------------------------------- end to end
SPEC = "0.25"


@pytest.fixture(scope="module")
def store(tmp_path_factory, mlflow_template):
    return fresh_store(mlflow_template, tmp_path_factory.mktemp("semi_store") / "mlruns.db")


@pytest.fixture(scope="module")
def pretrained(tiny_source):
    return tiny_source


@pytest.fixture
def poisoned(monkeypatch):
    """Every target train label outside the seed's labelled subset becomes NaN as it is read from
    disk (the real loader, the real records, only their other labels poisoned)."""
    real = manifest.load_domain

    def load_domain(root, domain, split, strict=False):
        records = real(root, domain, split, strict)
        if domain != "target" or split != "train":
            return records
        keep = set(labelled.select(records, labelled.parse_spec(SPEC), seed=0).tolist())
        return [r if i in keep else dataclasses.replace(r, keypoints=np.full_like(r.keypoints, np.nan))
                for i, r in enumerate(records)]

    monkeypatch.setattr(manifest, "load_domain", load_domain)
    return load_domain


def _run(store, name):
    client = MlflowClient(store)
    exp = client.get_experiment_by_name("tests")
    return client, {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}[name]


def _check_selection(run_dir: Path, run, client) -> dict:
    doc = json.loads((run_dir / labelled.SELECTION_FILE).read_text())
    assert doc["target_labels"] == SPEC and doc["split"] == "train" and doc["count"] == len(doc["images"]) >= 1
    assert run.info.status == "FINISHED"
    assert run.data.tags["target_labels"] == SPEC and run.data.tags["target_labels_count"] == str(doc["count"])
    assert float(run.data.tags["target_labels_fraction"]) == pytest.approx(doc["count"] / doc["total"], rel=1e-3)
    assert run.data.params["data.target_labels"] == SPEC
    assert "target_labels.json" in {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "data")}
    return doc


@pytest.mark.slow
def test_poison_is_real(tiny_benchmark, tmp_path, poisoned):
    """Without the protocol the poisoned labels are refused: a dataset of them cannot even be built."""
    cfg = load_config(None, tiny_overrides(tiny_benchmark, tmp_path))
    records = manifest.load_domain(tiny_benchmark, "target", "train")
    assert any(np.isnan(r.keypoints).all() for r in records)
    with pytest.raises(DataError, match="NaN"):
        PoseDataset(records, make_codec(cfg), cfg.data.input_size, train=True)


@pytest.mark.slow
@pytest.mark.parametrize("method, extra", [
    ("plain_pl", ["ccssl.rounds=1", "ccssl.steps_per_round=2", "ccssl.num_transforms=2"]),
    ("mean_teacher", ["mean_teacher.steps_per_epoch=2", "train.epochs=1"]),
    ("regda", ["regda.steps_per_epoch=2", "regda.head_channels=8", "train.epochs=1"]),
    ("wscda", ["wscda.steps_per_epoch=2", "train.epochs=1"]),
])
def test_methods_read_only_the_labelled_subset(tiny_benchmark, tmp_path, store, pretrained, poisoned, method, extra):
    name = f"semi_{method}"
    cfg = load_config(None, tiny_overrides(tiny_benchmark, tmp_path, name, uri=store) + [
        f"init={pretrained}", "train.criteria=false", f"data.target_labels={SPEC}", *extra])
    metrics = run_adaptation(cfg, method)
    assert np.isfinite(metrics["target_test/pck@0.05_crop/mean"])
    client, run = _run(store, name)
    _check_selection(Path(cfg.out_dir) / "tests" / name, run, client)
    history = client.get_metric_history(run.info.run_id, "train/loss/target_labelled")
    assert history and all(np.isfinite(m.value) and m.value > 0 for m in history)


@pytest.mark.slow
def test_supervised_only_floor_trains_on_the_subset(tiny_benchmark, tmp_path, store, pretrained, poisoned):
    cfg = load_config(None, tiny_overrides(tiny_benchmark, tmp_path, "floor", uri=store) + [
        f"init={pretrained}", "method=oracle", "train.epochs=1", f"data.target_labels={SPEC}"])
    metrics = jobs.run_finetune(cfg)
    assert np.isfinite(metrics["target_test/pck@0.05_crop/mean"])
    client, run = _run(store, "floor")
    doc = _check_selection(Path(cfg.out_dir) / "tests" / "floor", run, client)
    assert run.data.tags["method"] == "oracle" and doc["count"] < doc["total"]
