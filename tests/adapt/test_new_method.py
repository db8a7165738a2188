"""A method defined here, in a few lines, runs end to end through ``da-pose adapt`` with its
metrics in MLflow: nothing outside this file knows it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from da_pose import config as config_mod
from da_pose.adapt import METHODS, Method, register
from da_pose.cli import main
from da_pose.config import load_config
from da_pose.jobs import run_pretrain
from da_pose.tracking import mlflow_key
from da_pose.train.losses import joints_mse
from tests.conftest import fresh_store, tiny_overrides


# ---- the whole method: a config section and a step function
@dataclass(frozen=True)
class EntropyConfig:
    weight: float = 0.1  # weight of the target term
    steps_per_epoch: int = 2


def entropy_step(model, batch, cfg: EntropyConfig):
    """Source heatmap loss plus the spatial entropy of the target heatmaps."""
    src, tgt = batch["source"], batch["target"]
    out = model(torch.cat([src["image"], tgt["image"]]))
    n = src["image"].size(0)
    loss_src = joints_mse([h[:n] for h in out.heatmaps], src["target"], src["target_weight"])
    p = torch.softmax(out.heatmaps[-1][n:].flatten(2), dim=-1)
    entropy = -(p * p.clamp_min(1e-12).log()).sum(-1).mean()
    return {"loss": loss_src + cfg.weight * entropy, "loss/entropy": entropy.detach()}


@pytest.fixture
def entropy_method():
    method = register(Method("test_entropy", "entropy minimisation (a test method)", section="test_entropy",
                             config=EntropyConfig, step=entropy_step))
    yield method
    METHODS.pop(method.name)
    config_mod.SECTIONS.pop(method.section)


@pytest.mark.slow
def test_a_method_defined_in_a_test_runs_through_the_cli(tiny_benchmark, tmp_path, mlflow_template, entropy_method,
                                                         capsys):
    uri = fresh_store(mlflow_template, tmp_path / "mlruns.db")
    run_pretrain(load_config(None, tiny_overrides(tiny_benchmark, tmp_path, "src", uri=uri) + ["train.epochs=1"]))
    init = tmp_path / "runs" / "tests" / "src" / "last.pt"
    yaml = tmp_path / "entropy.yaml"
    yaml.write_text("method: test_entropy\ntest_entropy:\n  weight: 0.5\n")
    argv = ["adapt", "test_entropy", str(yaml), "--set", f"init={init}", "--set", "test_entropy.steps_per_epoch=3"]
    for o in tiny_overrides(tiny_benchmark, tmp_path, "ent", uri=uri) + ["train.epochs=1"]:
        argv += ["--set", o]
    main(argv)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("tests")
    run = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}["ent"]
    assert run.info.status == "FINISHED"
    assert run.data.tags["method"] == "test_entropy" and run.data.tags["command"] == "adapt test_entropy"
    assert run.data.params["test_entropy.weight"] == "0.5" and run.data.params["test_entropy.steps_per_epoch"] == "3"
    assert len(client.get_metric_history(run.info.run_id, "train/loss/entropy")) == 3  # log_every=1, 3 steps
    assert mlflow_key("target_test/pck@0.05_crop/mean") in run.data.metrics
    assert (Path(tmp_path) / "runs" / "tests" / "ent" / "last.pt").is_file()
    assert "target test after entropy minimisation" in capsys.readouterr().out


def test_an_unknown_method_lists_the_valid_ones(tmp_path, empty_yaml, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["adapt", "no_such_method", str(empty_yaml)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown method 'no_such_method'" in err
    assert all(name in err for name in ("ccssl", "plain_pl", "wscda", "wscda_pplo"))


def test_a_config_for_another_method_is_refused(tmp_path, capsys):
    yaml = tmp_path / "pl.yaml"
    yaml.write_text("method: plain_pl\n")
    with pytest.raises(SystemExit) as exc:
        main(["adapt", "ccssl", str(yaml), "--set", "init=x.pt"])
    assert exc.value.code == 2
    assert "run it with da-pose adapt plain_pl" in capsys.readouterr().err


def test_a_variant_fixes_its_settings():
    from da_pose.adapt.method import method_config

    cfg = method_config(load_config(None, ["method=plain_pl"]), METHODS["plain_pl"])
    assert not (cfg.ccssl.invariance or cfg.ccssl.equivariance or cfg.ccssl.temporal) and cfg.ccssl.curriculum
    assert method_config(load_config(None, []), METHODS["ccssl_no_temporal"]).ccssl.temporal is False
    with pytest.raises(Exception, match="pplo_rounds > 0"):
        method_config(load_config(None, ["wscda.pplo_rounds=0"]), METHODS["wscda_pplo"])


def test_a_baseline_job_refuses_a_method_tag(tmp_path):
    from da_pose.errors import ConfigError

    with pytest.raises(ConfigError, match="not a baseline"):
        run_pretrain(load_config(None, ["method=ccsl", f"out_dir={tmp_path}"]))
