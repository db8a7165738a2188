"""Throughput of one SQLite MLflow store under 1, 2 and 4 concurrent writers (``--jobs N``).

Each writer is a process with its own run, logging ``--steps`` steps of two metrics (one
``log_metrics`` call per step, as a training loop does), params, tags and an artifact, through
``da_pose.tracking.MlflowTracker`` (so with its lock retries). Prints a markdown table: writers,
wall seconds, metric rows per second over all writers, lock retries, rows lost (must be 0).

    python scripts/bench/sqlite_writers.py                  # 1, 2, 4 writers, 200 steps each
    python scripts/bench/sqlite_writers.py --writers 1 8 --steps 500
"""

from __future__ import annotations

import argparse
import multiprocessing
import shutil
import tempfile
import time
from pathlib import Path


def writer(uri: str, name: str, steps: int, folder: str, start, results) -> None:
    from da_pose.tracking import MlflowTracker

    try:
        start.wait(120)
        tracker = MlflowTracker(uri, "sqlite-writers", name)
        tracker.log_params({f"p{i}": i for i in range(30)})
        tracker.set_tags({"writer": name})
        for step in range(steps):
            tracker.log_metrics({"loss": 1.0 / (step + 1), "lr": 0.001}, step=step)
        art = Path(folder) / f"{name}.txt"
        art.write_text(name)
        tracker.log_artifact(art)
        tracker.end()
        results.put((name, tracker.run_id, tracker.lock_retries, ""))
    except BaseException as exc:  # noqa: BLE001 - counted as a failed writer
        results.put((name, None, 0, f"{type(exc).__name__}: {exc}"))


def measure(n: int, steps: int, template: Path, folder: Path) -> tuple[float, int, int, list[str]]:
    """(wall seconds, lock retries, metric rows lost, errors) for ``n`` writers."""
    from mlflow.tracking import MlflowClient

    db = folder / f"w{n}.db"
    shutil.copyfile(template, db)
    uri = f"sqlite:///{db}"
    ctx = multiprocessing.get_context("spawn")
    start, results = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=writer, args=(uri, f"w{i}", steps, str(folder), start, results)) for i in range(n)]
    for p in procs:
        p.start()
    time.sleep(3.0)  # imports done before the clock starts
    t0 = time.perf_counter()
    start.set()
    got = [results.get(timeout=900) for _ in procs]
    wall = time.perf_counter() - t0
    for p in procs:
        p.join()
    client = MlflowClient(uri)
    lost = 0
    for _, run_id, _, error in got:
        if run_id:
            lost += 2 * steps - sum(len(client.get_metric_history(run_id, k)) for k in ("loss", "lr"))
    return wall, sum(g[2] for g in got), lost, [g[3] for g in got if g[3]]


def main() -> None:
    from mlflow.tracking import MlflowClient

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--writers", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--steps", type=int, default=200)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="sqlite_writers_") as tmp:
        folder = Path(tmp)
        template = folder / "template.db"
        MlflowClient(f"sqlite:///{template}").search_experiments()  # schema once, copied per measurement
        print(f"setting: {args.steps} steps x 2 metrics per writer, one log_metrics call per step")
        print("| writers | wall s | metric rows/s (all writers) | lock retries | rows lost | errors |")
        print("|---|---|---|---|---|---|")
        for n in args.writers:
            wall, retries, lost, errors = measure(n, args.steps, template, folder)
            print(f"| {n} | {wall:.1f} | {n * 2 * args.steps / wall:.0f} | {retries} | {lost} | {len(errors)} |",
                  flush=True)
            for e in errors:
                print(f"  error: {e[:200]}")


if __name__ == "__main__":
    main()
