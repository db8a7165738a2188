"""scripts/sweep.py: grid points as real da-pose runs, the best chosen on target val, resumable."""

import importlib.util
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.conftest import tiny_overrides

ROOT = Path(__file__).resolve().parents[1]


def load_sweep():
    spec = importlib.util.spec_from_file_location("sweep", ROOT / "scripts" / "sweep.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_grid_parsing_and_points():
    sweep = load_sweep()
    grid = sweep.parse_grid(["train.lr=1e-4,0.001", "ccssl.gamma=1,10"])
    assert grid == {"train.lr": [1e-4, 0.001], "ccssl.gamma": [1, 10]}
    assert sweep.points(grid)[1] == {"train.lr": 1e-4, "ccssl.gamma": 10} and len(sweep.points(grid)) == 4
    from da_pose.errors import ConfigError

    with pytest.raises(ConfigError, match="expected KEY=V1,V2"):
        sweep.parse_grid(["train.lr"])
    lists = sweep.parse_grid(["ccssl.keep_schedule=[0.2,0.2];[0.2,0.4]"])
    assert lists == {"ccssl.keep_schedule": [[0.2, 0.2], [0.2, 0.4]]}
    # a list value reaches the run as one --set item that the config reads back as a list
    args = type("A", (), {"threads": 1, "command": "adapt ccssl", "config": "c.yaml", "tracking_uri": "u",
                          "set": [], "experiment": "e", "selection": "last"})()
    cmd = sweep.command_for(args, sweep.points(lists)[1], "e_p1")
    assert "ccssl.keep_schedule=[0.2, 0.4]" in cmd


def test_a_bad_grid_key_or_value_is_one_error_before_any_run(tmp_path, capsys):
    from da_pose.errors import ConfigError, run_script

    sweep = load_sweep()
    base = [str(ROOT / "experiments" / "toy" / "ccssl_hg.yaml"), "--command", "adapt ccssl", "--experiment", "s",
            "--tracking-uri", f"sqlite:///{tmp_path / 'mlruns.db'}", "--out", str(tmp_path / "sweep")]
    with pytest.raises(ConfigError, match=r"sweep point s_p0 \{'train.bogus': 1\}: unknown config key 'train.bogus'"):
        sweep.main([*base, "--grid", "train.bogus=1,2"])
    assert run_script(sweep.main, [*base, "--grid", "train.lr=0.1,abc"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: sweep point s_p1 {'train.lr': 'abc'}: train.lr: expected a number") and err.count("\n") == 1
    assert not (tmp_path / "sweep").exists() and not (tmp_path / "mlruns.db").exists()


def test_a_method_with_its_own_config_section_sweeps_in_a_fresh_interpreter(tmp_path):
    # regda_hg.yaml has a `regda:` section, registered when the methods are imported; a fresh
    # process (as a user runs it) must know it before checking the points
    import subprocess
    import sys

    config = ROOT / "experiments" / "toy" / "regda_hg.yaml"
    argv = [sys.executable, str(ROOT / "scripts" / "sweep.py"), str(config), "--command", "adapt regda",
            "--experiment", "s", "--grid", "train.lr=0.0002,0.0005",
            "--tracking-uri", f"sqlite:///{tmp_path / 'mlruns.db'}", "--dry-run"]
    out = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("adapt regda") == 2 and "train.lr=0.0005" in out.stdout


@pytest.mark.slow
def test_sweep_runs_points_chooses_on_target_val_and_resumes(tiny_benchmark, tmp_path, capsys):
    sweep = load_sweep()
    base = tmp_path / "base.yaml"
    base.write_text("method: source_only\ntrain:\n  epochs: 1\n")
    uri = f"sqlite:///{tmp_path}/mlruns.db"
    sets = [s for s in tiny_overrides(tiny_benchmark, tmp_path) if not s.startswith(("name=", "experiment=",
                                                                                     "tracking_uri="))]
    argv = [str(base), "--command", "pretrain", "--grid", "train.lr=0.0001,0.003", "--experiment", "sw",
            "--tracking-uri", uri, "--threads", "1", "--jobs", "2", "--out", str(tmp_path / "out"),
            "--write", str(tmp_path / "chosen.yaml")] + [x for s in sets for x in ("--set", s)]
    assert sweep.main(argv) == 0
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("sw").experiment_id])
    scores = {r.info.run_name: r.data.metrics["target_val/pck_at_0.05_crop/mean"] for r in runs}
    assert set(scores) == {"sw_p0", "sw_p1"} and all(r.info.status == "FINISHED" for r in runs)
    best = max(("sw_p0", "sw_p1"), key=scores.get)  # a tie goes to the first point in grid order
    chosen = yaml.safe_load((tmp_path / "chosen.yaml").read_text())
    assert chosen["settings"] == "target_val" and chosen["method"] == "source_only" and chosen["name"] == "chosen"
    assert chosen["train"]["lr"] == {"sw_p0": 0.0001, "sw_p1": 0.003}[best] and chosen["train"]["epochs"] == 1
    text = (tmp_path / "out" / "sweep.md").read_text()
    assert f"{best} (chosen)" in text and "target_test" not in text
    # the two points ran side by side, each with its own log
    assert all((tmp_path / "out" / f"sw_p{i}.log").stat().st_size > 0 for i in (0, 1))
    # a second call finds every point FINISHED and runs nothing
    capsys.readouterr()
    assert sweep.main(argv) == 0
    assert "running" not in capsys.readouterr().out
    assert len(client.search_runs([client.get_experiment_by_name("sw").experiment_id])) == 2
