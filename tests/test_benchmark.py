"""scripts/benchmark.py (``make benchmark``): the plan, resuming from MLflow, failures that stop dependents."""

import importlib.util
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import fresh_store, tiny_overrides

ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("benchmark_script", ROOT / "scripts" / "benchmark.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    yield mod
    del sys.modules[spec.name]


def test_plan_covers_every_method_and_seed_with_dependencies(bench):
    jobs = bench.plan([0, 1, 2], bench.METHODS, Path("runs"), "exp")
    names = [j.name for j in jobs]
    assert len(names) == len(set(names)) == 3 * len(bench.METHODS)
    by_name = {j.name: j for j in jobs}
    for s in (0, 1, 2):
        assert by_name[f"pretrain_hg_s{s}"].after == [] and by_name[f"oracle_hg_s{s}"].after == []
        cc = by_name[f"ccssl_hg_s{s}"]
        assert cc.after == [f"pretrain_hg_s{s}"]
        assert f"init=runs/exp/pretrain_hg_s{s}/last.pt" in cc.argv and cc.argv[cc.argv.index("--seed") + 1] == str(s)
        assert by_name[f"ccssl_r_hg_s{s}"].after == [f"ccssl_hg_s{s}"]
        assert f"init=runs/exp/ccssl_hg_s{s}/last.pt" in by_name[f"ccssl_r_hg_s{s}"].argv
    # every job comes after the jobs it depends on, and the main rows come before the ablations
    position = {n: i for i, n in enumerate(names)}
    assert all(position[a] < position[j.name] for j in jobs for a in j.after)
    assert max(position[f"wscda_pplo_hg_s{s}"] for s in (0, 1, 2)) < min(
        position[f"ccssl_no_temporal_hg_s{s}"] for s in (0, 1, 2))


def test_plan_for_the_resnet_backbone(bench):
    jobs = {j.name: j for j in bench.plan([1], ["source_only", "ccssl"], Path("runs"), "exp", "resnet18")}
    assert sorted(jobs) == ["ccssl_r18_s1", "pretrain_r18_s1"]
    cc = jobs["ccssl_r18_s1"]
    assert cc.after == ["pretrain_r18_s1"] and "init=runs/exp/pretrain_r18_s1/last.pt" in cc.argv
    assert "model.backbone=resnet18" in cc.argv and "model.backbone=resnet18" in jobs["pretrain_r18_s1"].argv
    # the scratch learning rate only where a model is trained from scratch
    assert "train.lr=0.001" in jobs["pretrain_r18_s1"].argv and "train.lr=0.001" not in cc.argv


def test_plan_drops_dependencies_on_methods_not_asked_for(bench):
    jobs = bench.plan([0], ["ccssl"], Path("runs"), "exp")
    assert [(j.name, j.after) for j in jobs] == [("ccssl_hg_s0", [])]


def test_failed_dependency_skips_its_dependents(bench, tmp_path, mlflow_template, capsys):
    """A pretraining that fails (a config error here) stops the runs that start from it, exit 1."""
    uri = fresh_store(mlflow_template, tmp_path / "mlruns.db")
    rc = bench.main(["--data", str(tmp_path / "nodata"), "--experiment", "e", "--seeds", "0",
                     "--methods", "source_only", "source_only_ext", "--tracking-uri", uri, "--out", str(tmp_path / "runs"),
                     "--set", "train.no_such_key=1", "--preset", "tiny"])
    out, err = capsys.readouterr()
    assert rc == 1
    assert "pretrain_hg_s0: failed (exit 2" in out
    assert "source_only_ext_hg_s0: skipped: pretrain_hg_s0 failed" in out
    assert "not finished: " in err
    log = (tmp_path / "runs" / "e" / "logs" / "pretrain_hg_s0.log").read_text()
    assert "no_such_key" in log


@pytest.mark.slow
def test_runs_then_skips_finished_runs(bench, tiny_benchmark, tmp_path, mlflow_template, capsys):
    uri = fresh_store(mlflow_template, tmp_path / "mlruns.db")
    keep = [kv for kv in tiny_overrides(tiny_benchmark, tmp_path)
            if kv.split("=")[0] not in ("out_dir", "tracking_uri", "name", "experiment", "data.root")]
    sets = [a for kv in keep + ["train.epochs=1", "train.max_steps=2"] for a in ("--set", kv)]
    argv = ["--data", str(tiny_benchmark), "--experiment", "bench", "--seeds", "0", "--jobs", "2",
            "--methods", "source_only", "source_only_ext", "oracle", "--tracking-uri", uri,
            "--out", str(tmp_path / "runs"), "--bin", str(Path(sys.executable).parent), *sets]
    assert bench.main(argv) == 0
    out = capsys.readouterr().out
    assert "3 of 3 runs finished" in out and "source_only_ext" in out
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("bench")
    first = {r.info.run_name: r.info.status for r in client.search_runs([exp.experiment_id])}
    assert {n: first[n] for n in ("pretrain_hg_s0", "source_only_ext_hg_s0", "oracle_hg_s0")} == dict.fromkeys(
        ("pretrain_hg_s0", "source_only_ext_hg_s0", "oracle_hg_s0"), "FINISHED")
    ext = client.search_runs([exp.experiment_id], "tags.method = 'source_only_ext'")[0]
    assert ext.data.params["init"].endswith("pretrain_hg_s0/last.pt")
    # again: nothing is re-run (only another compare summary run appears)
    assert bench.main(argv) == 0
    assert "start " not in capsys.readouterr().out
    second = client.search_runs([exp.experiment_id], "tags.command != 'compare'")
    assert len(second) == 3
