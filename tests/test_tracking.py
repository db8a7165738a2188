import os
import subprocess
import sys
import time

import pytest

from da_pose.errors import TrackingError
from da_pose.tracking import MlflowTracker, metric_name, mlflow_key


def test_sqlite_store_round_trip(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlruns.db"
    tr = MlflowTracker(uri, "exp", "run-a", tags={"method": "ccssl"})
    tr.log_params({"train.lr": 0.1, "data.root": "x"})
    tr.log_metrics({"pck@0.05_crop/left_eye": 50.0, "loss": 1.5, "nan": float("nan")}, step=3)
    (tmp_path / "a.txt").write_text("hello")
    tr.log_artifact(tmp_path / "a.txt", "tables")
    tr.end("FINISHED")
    client = MlflowClient(uri)
    run = client.get_run(tr.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["train.lr"] == "0.1"
    assert run.data.tags["method"] == "ccssl" and run.data.tags["git_commit"]
    assert run.data.metrics[mlflow_key("pck@0.05_crop/left_eye")] == 50.0
    assert "nan" not in run.data.metrics
    assert [a.path for a in client.list_artifacts(tr.run_id, "tables")] == ["tables/a.txt"]
    assert metric_name(mlflow_key("pck@0.05_crop/eye")) == "pck@0.05_crop/eye"
    # resuming continues the same run
    again = MlflowTracker(uri, "exp", "run-a", run_id=tr.run_id)
    assert again.run_id == tr.run_id and client.get_run(tr.run_id).info.status == "RUNNING"
    again.end("FINISHED")


def test_resuming_a_deleted_run_says_so_and_leaves_it_deleted(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlruns.db"
    tr = MlflowTracker(uri, "exp", "run-a")
    tr.end("KILLED")
    client = MlflowClient(uri)
    client.delete_run(tr.run_id)
    with pytest.raises(TrackingError) as exc:
        MlflowTracker(uri, "exp", "run-a", run_id=tr.run_id)
    msg = str(exc.value)
    assert "\n" not in msg and f"run {tr.run_id} is deleted" in msg and "mlflow runs restore" in msg
    run = client.get_run(tr.run_id)  # nothing was written to it
    assert run.info.lifecycle_stage == "deleted" and run.info.status == "KILLED" and "resumed" not in run.data.tags


def test_unreachable_server_fails_fast():
    t0 = time.perf_counter()
    with pytest.raises(TrackingError, match="unreachable"):
        MlflowTracker("http://127.0.0.1:9", "exp", "r")
    assert time.perf_counter() - t0 < 10


def test_missing_store_folder(tmp_path):
    with pytest.raises(TrackingError, match="does not exist"):
        MlflowTracker(f"sqlite:///{tmp_path}/nope/mlruns.db", "exp", "r")


def test_dead_runs_are_marked_killed(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlruns.db"
    # a process that opens a run and dies without ending it
    code = (f"from da_pose.tracking import MlflowTracker; t = MlflowTracker({uri!r}, 'exp', 'dies'); "
            "print(t.run_id); import os; os._exit(0)")
    run_id = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=os.getcwd()).stdout.strip().splitlines()[-1]
    client = MlflowClient(uri)
    assert client.get_run(run_id).info.status == "RUNNING"
    MlflowTracker(uri, "exp", "next").end()
    assert client.get_run(run_id).info.status == "KILLED"


def test_processes_opening_a_new_store_at_once_all_succeed(tmp_path):
    """MLflow migrates a new SQLite store on first use; without the first-use lock two processes
    doing it at once leave one with 'table _alembic_tmp_... already exists'."""
    uri = f"sqlite:///{tmp_path}/fresh.db"
    go = tmp_path / "go"
    code = ("import time, pathlib, sys; from da_pose.tracking import MlflowTracker; import mlflow.tracking\n"
            f"pathlib.Path({str(tmp_path)!r}, 'ready' + sys.argv[1]).touch()\n"
            f"while not pathlib.Path({str(go)!r}).exists(): time.sleep(0.005)\n"
            f"t = MlflowTracker({uri!r}, 'exp', 'run' + sys.argv[1]); t.end(); print('ok')")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(i)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, cwd=os.getcwd()) for i in range(3)]
    deadline = time.monotonic() + 240
    while len(list(tmp_path.glob("ready*"))) < 3 and time.monotonic() < deadline:  # all at the start line
        time.sleep(0.05)
    go.touch()
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err[-300:] for _, err in outs]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("exp").experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["run0", "run1", "run2"]
