"""scripts/check_mlflow_ui.py: the MLflow UI, opened in headless Chromium over a tiny run's store,
shows the run, its PCK metrics, its datasets, its source and its artifacts. Runs only where
Chromium is installed (``apt-get install -y chromium``)."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
SCRIPT = ROOT / "scripts" / "check_mlflow_ui.py"


def _chromium():
    spec = importlib.util.spec_from_file_location("check_mlflow_ui", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.find_chromium()


@pytest.mark.slow
@pytest.mark.skipif(_chromium() is None, reason="Chromium is not installed (apt-get install -y chromium)")
def test_runs_metrics_and_artifacts_are_visible_in_the_ui(tmp_path):
    out = tmp_path / "ui"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out)], capture_output=True, text=True,
                          timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "PASS" in proc.stdout
    for page in ("experiment", "run", "artifacts", "experiment_plain_link"):
        assert (out / f"{page}.png").stat().st_size > 10_000, page  # a rendered page, not a blank one
    assert "target_test/pck_at_0.05_crop/mean" in (out / "run.txt").read_text()
    assert "checkpoint" in (out / "artifacts.txt").read_text()


def test_without_chromium_the_script_says_how_to_install_it(tmp_path):
    env = {"PATH": str(tmp_path), "CHROMIUM": ""}  # no browser on this PATH
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "ui")], capture_output=True,
                          text=True, timeout=120, env=env, cwd=tmp_path)
    assert proc.returncode == 2 and "apt-get install -y chromium" in proc.stderr
