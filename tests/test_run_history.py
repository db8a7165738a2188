"""scripts/bench/run_history.py: metric histories of named runs from a real MLflow store."""

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import fresh_store, load_script


def load():
    return load_script("scripts/bench/run_history.py")


def test_histories_in_step_order_for_matching_finished_runs(tmp_path, mlflow_template, capsys):
    rh = load()
    uri = fresh_store(mlflow_template, tmp_path / "mlruns.db")
    client = MlflowClient(uri)
    exp = client.create_experiment("b")
    for name, status in (("uniframe_hg_pose_s0", "FINISHED"), ("uniframe_hg_pose_s1", "FAILED"),
                         ("uniframe_hg_context_s0", "FINISHED")):
        run = client.create_run(exp, run_name=name)
        for step, value in ((2, 0.3), (0, 0.1), (1, 0.2)):  # logged out of order
            client.log_metric(run.info.run_id, "epoch/pseudo/acc_kept", value, step=step)
        client.log_metric(run.info.run_id, "target_test/pck_at_0.05_crop/mean", 50.0, step=0)
        client.set_terminated(run.info.run_id, status)
    found = rh.histories("b", uri, ["uniframe_hg_pose_s[0-2]"], ["epoch/pseudo/acc_kept", "target_test/pck@0.05_crop/mean",
                                                                 "never/logged"])
    # the FAILED seed and the other shift are left out; @ reads as MLflow's _at_; unlogged keys are absent
    assert found == {"uniframe_hg_pose_s0": {"epoch/pseudo/acc_kept": [0.1, 0.2, 0.3],
                                             "target_test/pck@0.05_crop/mean": [50.0]}}
    assert rh.main(["--experiment", "b", "--tracking-uri", uri, "--runs", "uniframe_.*", "--metrics",
                    "epoch/pseudo/acc_kept", "--digits", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["uniframe_hg_context_s0  epoch/pseudo/acc_kept  0.10 0.20 0.30",
                     "uniframe_hg_pose_s0  epoch/pseudo/acc_kept  0.10 0.20 0.30"]


def test_nothing_matching_is_a_one_line_error(tmp_path, mlflow_template):
    rh = load()
    uri = fresh_store(mlflow_template, tmp_path / "mlruns.db")
    MlflowClient(uri).create_experiment("b")
    with pytest.raises(SystemExit, match="no finished run matches"):
        rh.main(["--experiment", "b", "--tracking-uri", uri, "--runs", "x", "--metrics", "y"])
    with pytest.raises(SystemExit, match="no experiment 'nope'"):
        rh.main(["--experiment", "nope", "--tracking-uri", uri, "--runs", "x", "--metrics", "y"])
