"""MLflow done the MLflow way (issue 19, item 1), on real SQLite stores and real (untrained) runs:
the experiment kind, MLflow's source tags, dataset inputs with the domain as context, the final
model as an MLflow PyTorch model that loads and predicts like its checkpoint, checkpoints read
back from the store by URI, model registration, system metrics, and extras that fail without
costing the run."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from da_pose import checkpoint
from da_pose.config import load_config
from da_pose.data.inputs import manifest_input, run_inputs
from da_pose.errors import ConfigError
from da_pose.models.served import HeatmapModel
from da_pose.run import build, load_model, open_run
from da_pose.tracking import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, MlflowTracker, git_state, using_tracking_uri
from tests.conftest import call, fresh_store, tiny_overrides

MODEL_NAME = "tiny-hg"


def open_and_save(cfg, command="pretrain", body=None):
    """A real run through ``open_run`` whose job only builds the model and saves its checkpoint
    (seconds: the MLflow conventions do not need a trained model)."""
    with open_run(cfg, command) as ctx:
        model, trainer = build(cfg, ctx)
        trainer.save("last.pt")
        if body is not None:
            body(ctx)
        return ctx.tracker.run_id, ctx.run_dir


@pytest.fixture(scope="module")
def logged(tiny_benchmark, tmp_path_factory, mlflow_template):
    """One run with every extra on: (cfg, run_id, run_dir, client)."""
    tmp = tmp_path_factory.mktemp("conventions")
    uri = fresh_store(mlflow_template, tmp / "mlruns.db")
    cfg = load_config(None, tiny_overrides(tiny_benchmark, tmp, "conv", uri) + [f"mlflow.register_model={MODEL_NAME}"])
    run_id, run_dir = open_and_save(cfg)
    return cfg, run_id, run_dir, MlflowClient(uri)


def test_experiment_is_marked_as_model_training(logged):
    cfg, run_id, _, client = logged
    exp = client.get_experiment_by_name(cfg.experiment)
    assert exp.tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND == "custom_model_development"
    assert client.get_run(run_id).info.status == "FINISHED"


def test_existing_experiment_without_kind_gets_it(tmp_path, mlflow_template):
    uri = fresh_store(mlflow_template, tmp_path / "mlruns.db")
    client = MlflowClient(uri)
    exp_id = client.create_experiment("old", artifact_location=(tmp_path / "art").as_uri())
    old_run = client.create_run(exp_id, run_name="before").info.run_id
    assert EXPERIMENT_KIND_TAG not in client.get_experiment(exp_id).tags
    tracker = MlflowTracker(uri, "old", "after")
    tracker.end()
    assert tracker.experiment_id == exp_id
    assert client.get_experiment(exp_id).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    assert client.get_run(old_run).info.run_name == "before"  # the old runs are untouched


def test_runs_carry_mlflow_source_tags(logged):
    _, run_id, _, client = logged
    tags = client.get_run(run_id).data.tags
    assert tags["mlflow.source.name"] == "da-pose pretrain"
    assert tags["mlflow.source.type"] == "LOCAL"
    assert tags["mlflow.project.entryPoint"] == "pretrain"
    assert tags["mlflow.user"]
    git = git_state(Path(checkpoint.__file__).parent)
    if git["commit"]:  # a git checkout: MLflow's commit tag is the bare commit, ours keeps "+dirty"
        assert tags["mlflow.source.git.commit"] == git["commit"]
        assert tags["mlflow.source.git.dirty"] == git["dirty"]
        assert tags["git_commit"].split("+")[0] == git["commit"]
    else:
        assert tags["git_commit"] == "unknown" and "mlflow.source.git.commit" not in tags


def test_dataset_inputs_name_digest_and_domain_context(logged, tiny_benchmark):
    cfg, run_id, _, client = logged
    inputs = client.get_run(run_id).inputs.dataset_inputs
    by_context = {next(t.value for t in i.tags if t.key == "mlflow.data.context"): i.dataset for i in inputs}
    assert set(by_context) == {"source", "target"}  # pretrain: trained on source, reported on target
    expected = {i.context: i for i in run_inputs(cfg.data, ("source", "target"))}
    for role, ds in by_context.items():
        assert ds.name == f"{tiny_benchmark.name}#{role}"
        assert ds.digest == expected[role].digest and len(ds.digest) == 16
        assert ds.source_type == "local" and str(tiny_benchmark.resolve()) in ds.source
    assert '"count"' in by_context["target"].profile and '"tigdog"' in by_context["target"].profile


def test_digest_follows_the_annotations_not_the_images(tiny_benchmark, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_benchmark, copy)
    before = {d: manifest_input(copy, d, d) for d in ("source", "target", "other")}
    assert before["other"] is not None and len({b.digest for b in before.values()}) == 3
    # an image changed: same digests (images are never read)
    png = next(copy.rglob("*_img.png"))
    png.write_bytes(png.read_bytes() + b"\0")
    assert manifest_input(copy, "source", "source").digest == before["source"].digest
    # a source label changed: the source digest changes, the target's does not
    kpts = next(copy.rglob("*_kpts.npy"))
    arr = np.load(kpts)
    arr[0, 0] += 1.0
    np.save(kpts, arr)
    assert manifest_input(copy, "source", "source").digest != before["source"].digest
    assert manifest_input(copy, "target", "target").digest == before["target"].digest
    assert manifest_input(copy, "nope", "other") is None


def test_logged_model_loads_and_predicts_like_the_checkpoint(logged):
    cfg, run_id, run_dir, client = logged
    with using_tracking_uri(cfg.tracking_uri):
        loaded = mlflow.pytorch.load_model(f"runs:/{run_id}/model")
        info = mlflow.models.get_model_info(f"runs:/{run_id}/model")
    reference = HeatmapModel(load_model(run_dir / "last.pt", cfg, torch.device("cpu"))).eval()
    x = torch.randn(3, 3, cfg.data.input_size, cfg.data.input_size)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), reference(x))
    sig = info.signature.to_dict()
    assert "[-1, 3, 64, 64]" in sig["inputs"] and "[-1, 18, 16, 16]" in sig["outputs"]
    assert info.metadata["da_pose"]["checkpoint"] == f"runs:/{run_id}/checkpoint/last.pt"
    # the run shows its model (MLflow's Models column) and the checkpoint stays a run artifact
    assert len(client.get_run(run_id).outputs.model_outputs) == 1
    assert {a.path for a in client.list_artifacts(run_id, "checkpoint")} == {"checkpoint/last.pt"}


def test_final_model_is_registered(logged):
    cfg, run_id, _, client = logged
    versions = client.search_model_versions(f"name = '{MODEL_NAME}'")
    assert [str(v.version) for v in versions] == ["1"] and versions[0].run_id == run_id
    assert client.get_run(run_id).data.tags["registered_model"] == f"models:/{MODEL_NAME}/1"


def test_evaluate_reads_checkpoints_from_the_store(logged, tmp_path, capsys):
    cfg, run_id, run_dir, _ = logged
    results = {}
    for ref in (str(run_dir / "last.pt"), f"runs:/{run_id}/checkpoint/last.pt", f"runs:/{run_id}/model",
                f"models:/{MODEL_NAME}/1"):
        out = tmp_path / str(len(results))
        code, _, err = call(["evaluate", "--checkpoint", ref, "--tracking-uri", cfg.tracking_uri, "--out", str(out)],
                            capsys)
        assert code == 0, err
        results[ref] = (out / "metrics.json").read_text()
    assert len(set(results.values())) == 1  # the same checkpoint, whichever way it was named


def test_unreachable_store_is_one_line(tmp_path, capsys):
    t0 = time.perf_counter()
    code, _, err = call(["evaluate", "--checkpoint", "runs:/0123/checkpoint/last.pt",
                         "--tracking-uri", "http://127.0.0.1:9"], capsys)
    assert code == 1 and "unreachable" in err and len(err.strip().splitlines()) == 1
    assert time.perf_counter() - t0 < 10


def test_failing_extra_keeps_the_run_and_checkpoint(tiny_benchmark, tmp_path, mlflow_template):
    uri = fresh_store(mlflow_template, tmp_path / "mlruns.db")
    # MLflow refuses this registered model name: the registration fails after the run's work
    cfg = load_config(None, tiny_overrides(tiny_benchmark, tmp_path, "bad", uri) + ["mlflow.register_model=a/b:c"])
    with pytest.warns(UserWarning, match="logging the final model failed"):
        run_id, run_dir = open_and_save(cfg)
    client = MlflowClient(uri)
    assert client.get_run(run_id).info.status == "FINISHED"
    assert checkpoint.load(run_dir / "last.pt")["model"]
    assert {a.path for a in client.list_artifacts(run_id, "checkpoint")} == {"checkpoint/last.pt"}


def test_system_metrics_switch(tiny_benchmark, tmp_path, mlflow_template):
    uri = fresh_store(mlflow_template, tmp_path / "mlruns.db")
    overrides = tiny_overrides(tiny_benchmark, tmp_path, "sys", uri) + ["mlflow.log_model=false"]
    off, _ = open_and_save(load_config(None, overrides))
    on, _ = open_and_save(load_config(None, overrides + ["name=sys_on", "mlflow.system_metrics=true",
                                                         "mlflow.system_metrics_interval=0.2"]),
                          body=lambda ctx: time.sleep(1.5))
    client = MlflowClient(uri)
    assert not any(k.startswith("system/") for k in client.get_run(off).data.metrics)
    metrics = client.get_run(on).data.metrics
    assert "system/cpu_utilization_percentage" in metrics and "system/system_memory_usage_megabytes" in metrics


def test_mlflow_section_is_checked():
    with pytest.raises(ConfigError, match="model_format"):
        load_config(None, ["mlflow.model_format=onnx"])
    with pytest.raises(ConfigError, match="register_model needs"):
        load_config(None, ["mlflow.register_model=x", "mlflow.log_model=false"])
    with pytest.raises(ConfigError, match="unknown config key 'mlflow.nope'"):
        load_config(None, ["mlflow.nope=1"])


@pytest.mark.slow
def test_pt2_model_loads_without_pickled_code(tiny_benchmark, tmp_path, mlflow_template):
    uri = fresh_store(mlflow_template, tmp_path / "mlruns.db")
    cfg = load_config(None, tiny_overrides(tiny_benchmark, tmp_path, "pt2", uri) + ["mlflow.model_format=pt2"])
    run_id, run_dir = open_and_save(cfg)
    with using_tracking_uri(uri):
        loaded = mlflow.pytorch.load_model(f"runs:/{run_id}/model")
    assert not isinstance(loaded, HeatmapModel)  # a torch.export graph, not our class
    reference = HeatmapModel(load_model(run_dir / "last.pt", cfg, torch.device("cpu"))).eval()
    x = torch.randn(3, 3, cfg.data.input_size, cfg.data.input_size)
    with torch.no_grad():
        assert torch.allclose(loaded(x), reference(x), atol=1e-5)


def test_logged_evaluation_carries_its_seed_and_shift(logged, tmp_path, capsys):
    """An ``evaluate --log`` run is a row of ``compare``: it tags the checkpoint's training seed
    and the evaluated data's shift itself (the benchmark runner no longer has to)."""
    cfg, _, run_dir, client = logged
    shift = ",".join(json.loads((Path(cfg.data.root) / "manifest.json").read_text())["gap"]["shifts"])
    code, _, err = call(["evaluate", "--checkpoint", str(run_dir / "last.pt"), "--tracking-uri", cfg.tracking_uri,
                         "--out", str(tmp_path / "ev"), "--log", "--set", "name=ev_logged"], capsys)
    assert code == 0, err
    exp = client.get_experiment_by_name(cfg.experiment)
    [run] = client.search_runs([exp.experiment_id], filter_string="attributes.run_name = 'ev_logged'")
    assert run.data.tags["command"] == "evaluate"
    assert run.data.tags["seed"] == str(cfg.seed) and run.data.tags["shift"] == shift
