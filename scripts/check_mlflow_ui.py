"""Open da-pose's MLflow runs in a real (headless) browser and check what a user sees.

Starts ``mlflow server`` on 127.0.0.1 over a store written by a tiny run (or over ``--store``),
loads the experiment page, a run page and the run's artifacts page in headless Chromium, saves
a screenshot of each and fails unless the run, its PCK metrics, its dataset inputs, its source
and its artifacts are on the pages. It also records what the experiment's plain link opens on.

    python scripts/check_mlflow_ui.py --out runs/ui_check
    python scripts/check_mlflow_ui.py --store sqlite:///mlruns.db --experiment toy-benchmark

Needs Chromium (Debian/Ubuntu: ``sudo apt-get install -y chromium``); exit code 2 without it,
1 when a check fails, 0 when all pass. ``runs/`` is git-ignored.
"""

from __future__ import annotations

import argparse
import dataclasses
import html
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
REGISTERED = "da-pose-ui-check"  # the tiny run's model is registered under this name
INSTALL_HINT = "install Chromium: sudo apt-get install -y chromium (Debian/Ubuntu), or put it on PATH"


def find_chromium() -> str | None:
    """The path of a Chromium (or Chrome) binary, or None."""
    env = os.environ.get("CHROMIUM")
    if env and shutil.which(env):
        return shutil.which(env)
    for name in CHROMIUM_NAMES:
        if shutil.which(name):
            return shutil.which(name)
    return None


def tiny_store(folder: Path) -> tuple[str, str]:
    """A tiny benchmark and one short real pretrain run in a new SQLite store: (uri, experiment)."""
    import da_pose.adapt  # noqa: F401  (the methods' config sections)
    from da_pose.config import load_config
    from da_pose.data.toy import generate
    from da_pose.data.toy.presets import PRESETS
    from da_pose.jobs import run_pretrain

    bench = folder / "bench"
    preset = dataclasses.replace(PRESETS["tiny"], source_train=12, source_val=4, target_videos=5, target_frames=4,
                                 other_train=6, other_val=2)
    generate(bench, preset=preset, seed=0, workers=1, progress=False)
    uri = f"sqlite:///{folder / 'mlruns.db'}"
    overrides = [f"data.root={bench}", "data.input_size=64", "data.heatmap_size=16", "model.stacks=1",
                 "model.depth=2", "model.features=16", "train.batch_size=4", "train.epochs=2", "train.optimizer=adam",
                 "train.lr=0.001", "train.lr_milestones=[]", f"out_dir={folder / 'runs'}", f"tracking_uri={uri}",
                 "name=ui-check", "experiment=ui-check", "device=cpu", f"mlflow.register_model={REGISTERED}"]
    run_pretrain(load_config(None, overrides))
    return uri, "ui-check"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(uri: str, port: int, log: Path) -> subprocess.Popen:
    """``mlflow server`` over ``uri`` on 127.0.0.1:port; waits for /health (2 minutes at most)."""
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", "127.0.0.1",
           "--port", str(port), "--workers", "1"]
    # no job runner (its worker pool is not needed to show runs); a session of its own, so that
    # stop_server ends the server and every process it started, and nothing else
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {proc.returncode}; see {log}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as resp:
                if resp.status == 200:
                    return proc
        except OSError:
            time.sleep(1)
    stop_server(proc)
    raise RuntimeError(f"mlflow server did not answer within 2 minutes; see {log}")


def stop_server(proc: subprocess.Popen) -> None:
    """End the server's process group (the server and the workers it started)."""
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def browse(chromium: str, url: str, shot: Path, profile: Path, budget_ms: int = 20000) -> str:
    """Load ``url`` in headless Chromium: save a screenshot to ``shot``; return the page's text."""
    base = [chromium, "--headless", "--disable-gpu", "--hide-scrollbars", "--window-size=1800,1000",
            f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        base.append("--no-sandbox")  # Chromium refuses to run as root with its sandbox
    subprocess.run(base + [f"--screenshot={shot}", url], capture_output=True, timeout=180, check=False)
    dom = subprocess.run(base + ["--dump-dom", url], capture_output=True, text=True, timeout=180, check=False).stdout
    text = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", text)).split())


def run_facts(uri: str, experiment: str) -> dict:
    """What the pages must show, read from the store: ids, run name, metric keys, datasets, artifacts."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise SystemExit(f"no experiment '{experiment}' in {uri}")
    runs = client.search_runs([exp.experiment_id], filter_string="attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        raise SystemExit(f"experiment '{experiment}' in {uri} has no finished run")
    run = runs[0]
    pck = sorted(k for k in run.data.metrics if k.startswith("target_test/pck_at_0.05_crop/"))
    return {"exp_id": exp.experiment_id, "run_id": run.info.run_id, "run_name": run.info.run_name,
            "pck": pck, "datasets": [d.dataset.name for d in run.inputs.dataset_inputs],
            "source": run.data.tags.get("mlflow.source.name", ""),
            "registered": run.data.tags.get("registered_model", "").split("/")[1:2],
            "artifacts": [a.path for a in client.list_artifacts(run.info.run_id)]}


def check_pages(chromium: str, server: str, facts: dict, out: Path, profile: Path) -> list[str]:
    """Load the pages, save the screenshots; the list of what was not visible (empty: all passed)."""
    exp, run = facts["exp_id"], facts["run_id"]
    pages = {
        "experiment": f"{server}/#/experiments/{exp}?workflowType=machine_learning",
        "run": f"{server}/#/experiments/{exp}/runs/{run}?workflowType=machine_learning",
        "artifacts": f"{server}/#/experiments/{exp}/runs/{run}/artifacts?workflowType=machine_learning",
        "experiment_plain_link": f"{server}/#/experiments/{exp}",
    }
    text = {}
    for name, url in pages.items():
        text[name] = browse(chromium, url, out / f"{name}.png", profile)
        (out / f"{name}.txt").write_text(text[name] + "\n")
        print(f"{name}: {url} -> {out / (name + '.png')}")
    want = {
        "experiment": [facts["run_name"], "Runs", *facts["datasets"][:1], facts["source"]],
        "run": [facts["run_name"], *facts["pck"][:3], "target_test/pck_at_0.05_crop/mean", *facts["datasets"][:1],
                *facts["registered"]],
        "artifacts": list(facts["artifacts"]),
    }
    missing = [f"{page}: '{s}' not visible" for page, items in want.items() for s in items if s and s not in text[page]]
    if not facts["pck"]:
        missing.append("the run has no target_test/pck@0.05_crop metrics")
    plain = text["experiment_plain_link"]
    view = ("the runs table" if "Run Name" in plain else "the GenAI overview" if "Overview" in plain else "?")
    print(f"the experiment's plain link opens on: {view}"
          + ("; its side bar lists 'Training runs'" if "Training runs" in plain else ""))
    return missing


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("runs/ui_check"), help="Folder for screenshots and page texts.")
    ap.add_argument("--store", default=None, help="An MLflow store URI to look at (default: a new tiny run's).")
    ap.add_argument("--experiment", default=None, help="The experiment to open (with --store).")
    args = ap.parse_args(argv)
    chromium = find_chromium()
    if chromium is None:
        print(f"error: Chromium not found; {INSTALL_HINT}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="da_pose_ui_") as tmp:
        tmp = Path(tmp)
        if args.store:
            uri, experiment = args.store, args.experiment or "da_pose"
        else:
            uri, experiment = tiny_store(tmp)
        facts = run_facts(uri, experiment)
        port = free_port()
        server = start_server(uri, port, args.out / "server.log")
        try:
            missing = check_pages(chromium, f"http://127.0.0.1:{port}", facts, args.out, tmp / "profile")
        finally:
            stop_server(server)
    for line in missing:
        print(f"FAIL {line}")
    print("PASS: run, PCK metrics, datasets, source and artifacts visible" if not missing else
          f"{len(missing)} check(s) failed; screenshots in {args.out}")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
