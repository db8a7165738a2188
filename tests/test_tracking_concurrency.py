"""Several processes logging to one SQLite MLflow store at once (``benchmark.py --jobs 2``): no run,
metric, param, tag or artifact is lost and no "database is locked" escapes; the retry of
:mod:`da_pose.retry` is exercised with a real SQLite lock."""

import multiprocessing
import sqlite3
import threading
import time

import pytest

from da_pose.retry import is_lock_error, retry_locked
from tests.conftest import fresh_store

WRITERS = 4
STEPS = 200  # log_metrics calls per run, two metrics each (a training loop's per-step logging)
PARAMS = 30


def _writer(uri: str, name: str, folder: str, start, results) -> None:
    """One process: a run with PARAMS params, tags, STEPS x 2 metrics and an artifact; reports
    (name, run id, lock retries, error) through ``results``."""
    from pathlib import Path

    from da_pose.tracking import MlflowTracker

    try:
        start.wait(60)  # every writer past its imports before any writes: real overlap
        tracker = MlflowTracker(uri, "concurrent", name, tags={"command": "pretrain"})
        tracker.log_params({f"p{i}": f"{name}-{i}" for i in range(PARAMS)})
        tracker.set_tags({"writer": name})
        for step in range(STEPS):
            tracker.log_metrics({"loss": step / STEPS, "pck@0.05_crop/mean": step % 7}, step=step)
        art = Path(folder) / f"{name}.txt"
        art.write_text(f"artifact of {name}\n")
        tracker.log_artifact(art, "notes")
        tracker.end()
        results.put((name, tracker.run_id, tracker.lock_retries, ""))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which fails the test
        results.put((name, None, -1, f"{type(exc).__name__}: {exc}"))


@pytest.mark.slow
def test_four_concurrent_writers_lose_nothing(mlflow_template, tmp_path, capfd):
    from mlflow.tracking import MlflowClient

    uri = fresh_store(mlflow_template, tmp_path / "mlruns.db")
    ctx = multiprocessing.get_context("spawn")
    start, results = ctx.Event(), ctx.Queue()
    names = [f"w{i}" for i in range(WRITERS)]
    procs = [ctx.Process(target=_writer, args=(uri, n, str(tmp_path), start, results)) for n in names]
    for p in procs:
        p.start()
    time.sleep(1.0)
    start.set()
    got = {}
    for _ in procs:
        name, run_id, retries, error = results.get(timeout=300)
        got[name] = (run_id, retries, error)
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert {n: e for n, (_, _, e) in got.items() if e} == {}
    assert "database is locked" not in capfd.readouterr().err

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("concurrent")
    runs = client.search_runs([exp.experiment_id])
    assert sorted(r.info.run_name for r in runs) == names  # one experiment, four runs, none twice
    counts = {}
    for run in runs:
        name = run.info.run_name
        assert run.info.status == "FINISHED"
        assert run.info.run_id == got[name][0]
        loss = client.get_metric_history(run.info.run_id, "loss")
        pck = client.get_metric_history(run.info.run_id, "pck_at_0.05_crop/mean")
        assert sorted(m.step for m in loss) == list(range(STEPS))
        assert sorted((m.step, m.value) for m in pck) == [(s, float(s % 7)) for s in range(STEPS)]
        assert {m.step: m.value for m in loss} == {s: s / STEPS for s in range(STEPS)}
        assert run.data.params == {f"p{i}": f"{name}-{i}" for i in range(PARAMS)}
        assert run.data.tags["writer"] == name
        assert [a.path for a in client.list_artifacts(run.info.run_id, "notes")] == [f"notes/{name}.txt"]
        counts[name] = (len(loss) + len(pck), len(run.data.params), got[name][1])
    # the counts the issue asks for: metric rows and params per run, and lock retries taken
    print(f"\nconcurrent writers: {WRITERS} runs FINISHED; per run (metrics, params, lock retries): {counts}")
    assert all(c[:2] == (2 * STEPS, PARAMS) for c in counts.values())


def _hold_exclusive(db: str, seconds: float, locked: threading.Event) -> None:
    conn = sqlite3.connect(db, timeout=30, isolation_level=None)
    conn.execute("BEGIN EXCLUSIVE")
    locked.set()
    time.sleep(seconds)
    conn.execute("COMMIT")
    conn.close()


def test_retry_outlasts_a_real_exclusive_lock(tmp_path):
    """Another connection holds ``BEGIN EXCLUSIVE`` for 0.6 s; a writer that does not wait
    (timeout 0, as SQLite answers a writer whose transaction already read) gets a real
    ``database is locked``, is retried with backoff and succeeds once the lock is gone."""
    db = str(tmp_path / "store.db")
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE metrics (step INTEGER)")
    locked = threading.Event()
    holder = threading.Thread(target=_hold_exclusive, args=(db, 0.6, locked))
    holder.start()
    locked.wait(10)
    errors = []

    def write():
        with sqlite3.connect(db, timeout=0) as conn:
            conn.execute("INSERT INTO metrics VALUES (1)")

    t0 = time.monotonic()
    retry_locked(write, on_retry=lambda i, exc: errors.append(str(exc)), backoff=(0.05, 0.4))
    waited = time.monotonic() - t0
    holder.join()
    assert errors and set(errors) == {"database is locked"}  # the retry was hit, on the real error
    assert waited >= 0.5  # it waited for the holder rather than giving up
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM metrics").fetchone() == (1,)


def test_retry_is_bounded_and_other_errors_pass_at_once(tmp_path):
    calls, sleeps = [], []

    def locked():
        calls.append(1)
        raise sqlite3.OperationalError("database is locked")

    with pytest.raises(sqlite3.OperationalError, match="locked"):
        retry_locked(locked, retries=3, backoff=(0.1, 0.25), sleep=sleeps.append)
    assert len(calls) == 4 and len(sleeps) == 3
    # exponential, capped, jittered by x0.5 .. x1.5
    for s, base in zip(sleeps, [0.1, 0.2, 0.25]):
        assert 0.5 * base <= s < 1.5 * base

    def broken():
        calls.append(1)
        raise ValueError("not a lock")

    calls.clear()
    with pytest.raises(ValueError):
        retry_locked(broken, sleep=sleeps.append)
    assert len(calls) == 1


def test_lock_error_found_through_wrappers():
    from mlflow.exceptions import MlflowException

    try:
        try:
            raise sqlite3.OperationalError("database is locked")
        except sqlite3.OperationalError as inner:
            raise MlflowException("(sqlite3.OperationalError) ...") from inner
    except MlflowException as exc:
        assert is_lock_error(exc)
    assert not is_lock_error(MlflowException("RESOURCE_DOES_NOT_EXIST"))


def test_tracker_retries_a_locked_store(mlflow_template, tmp_path, monkeypatch):
    """MlflowTracker's writes go through the retry: a log_batch that meets a lock once is retried
    and the metric is stored once."""
    from mlflow.tracking import MlflowClient

    from da_pose.tracking import MlflowTracker

    uri = fresh_store(mlflow_template, tmp_path / "mlruns.db")
    tracker = MlflowTracker(uri, "retry", "r")
    real = tracker.client.log_batch
    db = str(tmp_path / "mlruns.db")
    state = {"first": True}

    def log_batch(*args, **kwargs):
        if state["first"]:  # a real lock error from the store's own file
            state["first"] = False
            locked = threading.Event()
            holder = threading.Thread(target=_hold_exclusive, args=(db, 0.3, locked))
            holder.start()
            locked.wait(10)
            try:
                with sqlite3.connect(db, timeout=0) as conn:
                    conn.execute("UPDATE runs SET name = name")
            finally:
                holder.join()
        return real(*args, **kwargs)

    monkeypatch.setattr(tracker.client, "log_batch", log_batch)
    tracker.log_metrics({"loss": 0.5}, step=3)
    tracker.end()
    assert tracker.lock_retries == 1
    hist = MlflowClient(uri).get_metric_history(tracker.run_id, "loss")
    assert [(m.step, m.value) for m in hist] == [(3, 0.5)]
