"""Experiment tracking: an MLflow tracker and a null tracker with the same methods.

The default store is a local SQLite file (``sqlite:///mlruns.db``) with artifacts in
``mlartifacts/`` beside it; any MLflow tracking URI works (``http://host:5000`` for a running
``mlflow server``, ``file:./mlruns``). An unreachable store is a :class:`TrackingError` within
seconds, before any training starts.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Mapping

from da_pose import __version__
from da_pose.errors import TrackingError

# Fail fast instead of MLflow's default minutes of retries against a dead server.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")

MAX_PARAM_LEN = 6000


def mlflow_key(name: str) -> str:
    """MLflow forbids '@' in metric names: ``pck@0.05_crop/eye`` is stored as ``pck_at_0.05_crop/eye``."""
    return name.replace("@", "_at_")


def metric_name(key: str) -> str:
    """Inverse of :func:`mlflow_key`."""
    return key.replace("_at_", "@")


def git_commit(path: str | Path = ".") -> str:
    """The commit of the working tree (``+dirty`` when modified), or ``unknown``."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True, timeout=5
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=path, capture_output=True, text=True, timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (commit + ("+dirty" if dirty else "")) if commit else "unknown"


def environment_tags() -> dict[str, str]:
    import platform

    import torch

    return {
        "da_pose.version": __version__,
        "git_commit": git_commit(Path(__file__).resolve().parent),
        "host": socket.gethostname(),
        "pid": str(os.getpid()),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": str(torch.cuda.is_available()),
    }


class NullTracker:
    """Does nothing; used by tests and by non-zero DDP ranks."""

    run_id: str | None = None

    def log_params(self, params: Mapping[str, Any]) -> None:
        pass

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        pass

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        pass

    def end(self, status: str = "FINISHED") -> None:
        pass


def check_reachable(uri: str) -> None:
    if uri.startswith(("http://", "https://")):
        url = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                resp.read(64)
        except urllib.error.HTTPError:
            return  # the server answered: reachable
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise TrackingError(f"MLflow tracking server {uri} is unreachable ({reason}); "
                                "start it or pass --tracking-uri sqlite:///mlruns.db") from None
    elif uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        parent = db.parent if str(db.parent) else Path(".")
        if not parent.is_dir():
            raise TrackingError(f"tracking store folder does not exist: {parent} (from {uri})")
        if not os.access(parent, os.W_OK):
            raise TrackingError(f"tracking store folder is not writable: {parent} (from {uri})")


def _default_artifact_root(uri: str) -> str | None:
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):]).resolve()
        return (db.parent / "mlartifacts").as_uri()
    return None


class MlflowTracker:
    """One MLflow run: params, tags, metrics by step, artifacts.

    ``run_id`` resumes an existing run (``--resume auto``); otherwise a new run is created. On
    start, RUNNING runs of this experiment whose process on this host is gone are marked KILLED.
    """

    def __init__(self, uri: str, experiment: str, run_name: str, run_id: str | None = None,
                 tags: Mapping[str, str] | None = None):
        check_reachable(uri)
        from mlflow.tracking import MlflowClient

        self.uri = uri
        try:
            self.client = MlflowClient(tracking_uri=uri)
            exp = self.client.get_experiment_by_name(experiment)
            if exp is None:
                exp_id = self.client.create_experiment(
                    experiment, artifact_location=_default_artifact_root(uri)
                )
            else:
                exp_id = exp.experiment_id
            self.experiment_id = exp_id
            self.mark_dead_runs()
            all_tags = {**environment_tags(), **(tags or {})}
            if run_id:
                self.client.update_run(run_id, status="RUNNING")
                self.run_id = run_id
                self.set_tags({"pid": str(os.getpid()), "resumed": "true"})
            else:
                run = self.client.create_run(exp_id, run_name=run_name, tags={k: str(v) for k, v in all_tags.items()})
                self.run_id = run.info.run_id
        except TrackingError:
            raise
        except Exception as exc:  # MLflow raises MlflowException, SQLAlchemy errors, ...
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise TrackingError(f"MLflow store {uri} is not usable: {msg[:300]}") from None

    def mark_dead_runs(self) -> list[str]:
        """Mark RUNNING runs started on this host by a process that no longer exists as KILLED."""
        host = socket.gethostname()
        killed = []
        runs = self.client.search_runs([self.experiment_id], filter_string="attributes.status = 'RUNNING'",
                                       max_results=200)
        for run in runs:
            if run.data.tags.get("host") != host:
                continue
            pid = run.data.tags.get("pid", "")
            if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
                self.client.set_terminated(run.info.run_id, status="KILLED")
                killed.append(run.info.run_id)
        return killed

    @contextmanager
    def _store(self, what: str):
        """A store that fails mid-run (server gone, disk full, database damaged) is one
        TrackingError line; the run stops and its last checkpoint stays for --resume auto."""
        try:
            yield
        except Exception as exc:  # MlflowException, SQLAlchemy errors, OSError, ...
            msg = " ".join(str(exc).split("[SQL:")[0].split()) or type(exc).__name__
            raise TrackingError(f"MLflow store {self.uri}: {what} failed ({msg[:300]})") from None

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        with self._store("logging params"):
            existing = self.client.get_run(self.run_id).data.params
            items = [Param(k, str(v)[:MAX_PARAM_LEN]) for k, v in params.items() if k not in existing]
            for i in range(0, len(items), 100):
                self.client.log_batch(self.run_id, params=items[i:i + 100])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        with self._store("setting tags"):
            self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(mlflow_key(k), float(v), now, step or 0)
                 for k, v in metrics.items() if v == v]  # NaN (never visible) is not logged
        with self._store("logging metrics"):
            for i in range(0, len(items), 500):
                self.client.log_batch(self.run_id, metrics=items[i:i + 500])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        with self._store(f"logging artifact {path}"):
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def end(self, status: str = "FINISHED") -> None:
        try:
            self.client.set_terminated(self.run_id, status=status)
        except Exception:  # noqa: BLE001 - ending must never mask the original error
            pass


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
