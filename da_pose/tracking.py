"""Experiment tracking: an MLflow tracker and a null tracker with the same methods.

The default store is a local SQLite file (``sqlite:///mlruns.db``) with artifacts in
``mlartifacts/`` beside it; any MLflow tracking URI works (``http://host:5000`` for a running
``mlflow server``, ``file:./mlruns``). An unreachable store is a :class:`TrackingError` within
seconds, before any training starts.

MLflow's own conventions are followed: experiments are created with MLflow's experiment-kind
tag (``mlflow.experimentKind = custom_model_development``: model training, not GenAI), every run
carries MLflow's source tags (``mlflow.source.*``, ``mlflow.project.entryPoint``), and the
``mlflow`` config section (:class:`MlflowConfig`) switches the extras of a training run: dataset
inputs, the final model as an MLflow PyTorch model (optionally registered), system metrics.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from da_pose import __version__
from da_pose.config import register_section
from da_pose.errors import ConfigError, TrackingError
from da_pose.retry import retry_locked

# Fail fast instead of MLflow's default minutes of retries against a dead server.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")

MAX_PARAM_LEN = 6000

# MLflow's experiment-kind tag (read by the MLflow 3 UI and its assistant): a model-training
# experiment, whose runs are the point, as opposed to a GenAI one (traces, evaluations).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
# MLflow 3.10+ UIs choose the view with a global GenAI / Model training switch instead; this query
# parameter opens an experiment in the Model training view (its runs table).
UI_RUNS_VIEW = "workflowType=machine_learning"
MODEL_FORMATS = ("pickle", "pt2")



@dataclass(frozen=True)
class MlflowConfig:
    """The ``mlflow`` config section: what a training run logs to MLflow besides params, metrics,
    tables and checkpoints (``--set mlflow.register_model=toy-hg``)."""

    log_model: bool = True  # the reported model as an MLflow PyTorch model named "model"
    # pickle: fast, loads where da_pose is installed | pt2: torch.export, no pickled code (slower to log)
    model_format: str = "pickle"
    register_model: str = ""  # register that model under this name (a new version per run)
    log_datasets: bool = True  # the run's domains as MLflow dataset inputs (annotation digests)
    system_metrics: bool = False  # CPU, memory, disk, network (GPU with pynvml) as system/* metrics
    system_metrics_interval: float = 10.0  # seconds between system metric samples

    def check(self) -> None:
        if self.model_format not in MODEL_FORMATS:
            raise ConfigError(f"mlflow.model_format: unknown value '{self.model_format}'; "
                              f"valid: {', '.join(MODEL_FORMATS)}")
        if self.register_model and not self.log_model:
            raise ConfigError("mlflow.register_model needs mlflow.log_model=true (the registered model is the logged one)")
        if self.system_metrics_interval <= 0:
            raise ConfigError(f"mlflow.system_metrics_interval must be > 0, got {self.system_metrics_interval}")
        if self.system_metrics:
            try:
                import psutil  # noqa: F401 - MLflow's CPU and memory monitors need it
            except ImportError:
                raise ConfigError("mlflow.system_metrics=true needs psutil: pip install psutil") from None


register_section("mlflow", MlflowConfig)


def experiment_url(server: str, experiment_id: str) -> str:
    """The MLflow UI page of an experiment's runs (``http://127.0.0.1:5000/#/experiments/1?...``)."""
    return f"{server.rstrip('/')}/#/experiments/{experiment_id}?{UI_RUNS_VIEW}"


def mlflow_key(name: str) -> str:
    """MLflow forbids '@' in metric names: ``pck@0.05_crop/eye`` is stored as ``pck_at_0.05_crop/eye``."""
    return name.replace("@", "_at_")


def metric_name(key: str) -> str:
    """Inverse of :func:`mlflow_key`."""
    return key.replace("_at_", "@")


def _git(path: str | Path, *args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=path, capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def git_state(path: str | Path = ".") -> dict[str, str]:
    """``{"commit", "dirty", "branch", "remote"}`` of the checkout holding ``path`` (empty values
    outside a git checkout or without git)."""
    commit = _git(path, "rev-parse", "HEAD")
    if not commit:
        return {"commit": "", "dirty": "", "branch": "", "remote": ""}
    dirty = bool(_git(path, "status", "--porcelain", "--untracked-files=no"))
    return {"commit": commit, "dirty": str(dirty).lower(), "branch": _git(path, "rev-parse", "--abbrev-ref", "HEAD"),
            "remote": _git(path, "config", "--get", "remote.origin.url")}


def git_commit(path: str | Path = ".") -> str:
    """The commit of the working tree (``+dirty`` when modified), or ``unknown``."""
    state = git_state(path)
    return (state["commit"] + ("+dirty" if state["dirty"] == "true" else "")) if state["commit"] else "unknown"


def source_tags(command: str = "", git: Mapping[str, str] | None = None) -> dict[str, str]:
    """MLflow's own source tags, which its UI shows in the runs table's Source column and on the
    run page: ``mlflow.source.name`` / ``type``, ``mlflow.source.git.*`` (the commit of the
    da_pose code that ran, ``dirty`` when it had local changes), ``mlflow.project.entryPoint``
    (the command: ``pretrain``, ``adapt ccssl``) and ``mlflow.user``."""
    from mlflow.utils import mlflow_tags as t

    git = git if git is not None else git_state(Path(__file__).resolve().parent)
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (some containers)
        user = str(os.getuid()) if hasattr(os, "getuid") else "unknown"
    tags = {t.MLFLOW_SOURCE_NAME: f"da-pose {command}".strip(), t.MLFLOW_SOURCE_TYPE: "LOCAL", t.MLFLOW_USER: user}
    if command:
        tags[t.MLFLOW_PROJECT_ENTRY_POINT] = command
    if git.get("commit"):
        tags[t.MLFLOW_GIT_COMMIT] = git["commit"]
        tags[t.MLFLOW_GIT_DIRTY] = git["dirty"]
        if git.get("branch") and git["branch"] != "HEAD":
            tags[t.MLFLOW_GIT_BRANCH] = git["branch"]
        if git.get("remote"):
            tags[t.MLFLOW_GIT_REPO_URL] = git["remote"]
    return tags


def environment_tags(command: str = "") -> dict[str, str]:
    """The environment of a run: MLflow's source tags, and ours (``git_commit`` is kept beside
    ``mlflow.source.git.commit`` for older readers: the same commit, ``+dirty`` when modified)."""
    import platform

    import torch

    git = git_state(Path(__file__).resolve().parent)
    return {
        **source_tags(command, git),
        "da_pose.version": __version__,
        "git_commit": (git["commit"] + ("+dirty" if git["dirty"] == "true" else "")) if git["commit"] else "unknown",
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

    def log_inputs(self, inputs: Sequence[Any]) -> None:
        pass

    def extra(self, what: str, fn, *args, **kwargs):
        return None

    def end(self, status: str = "FINISHED") -> None:
        pass


def check_reachable(uri: str, must_exist: bool = False) -> None:
    """A one-line error for a store that cannot be used; ``must_exist`` (commands that only read):
    a missing SQLite file is an error, not a new empty store made by a typo."""
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
        if must_exist and not db.is_file():
            raise TrackingError(f"no MLflow store at {db} (from {uri}); expected the --tracking-uri the runs "
                                "were logged to")


@contextmanager
def first_use_lock(uri: str):
    """Hold an exclusive lock on a SQLite store's folder (other URIs: nothing): MLflow creates and
    migrates a new store's schema on first use, and two processes doing that at once leave one of
    them with an error (``table _alembic_tmp_metrics already exists``). Held only while opening."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        fcntl = None
    if fcntl is None or not uri.startswith("sqlite:///"):
        yield
        return
    fd = os.open(Path(uri[len("sqlite:///"):]).resolve().parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


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
        self._monitor = None
        self.lock_retries = 0  # SQLite lock errors retried (see retry_locked)
        try:
            with first_use_lock(uri):
                self.client = MlflowClient(tracking_uri=uri)
                exp_id = self._experiment(experiment)
            self.experiment_id = exp_id
            self.mark_dead_runs()
            all_tags = {**environment_tags((tags or {}).get("command", "")), **(tags or {})}
            if run_id:
                if self._call(self.client.get_run, run_id).info.lifecycle_stage == "deleted":
                    raise TrackingError(
                        f"cannot resume run '{run_name}': its MLflow run {run_id} is deleted in {uri}; restore it "
                        f"(mlflow runs restore --run-id {run_id}) or start afresh (--resume no, or another name)")
                self._call(self.client.update_run, run_id, status="RUNNING")
                self.run_id = run_id
                self.set_tags({"pid": str(os.getpid()), "resumed": "true"})
            else:
                run = self._call(self.client.create_run, exp_id, run_name=run_name,
                                 tags={k: str(v) for k, v in all_tags.items()})
                self.run_id = run.info.run_id
        except TrackingError:
            raise
        except Exception as exc:  # MLflow raises MlflowException, SQLAlchemy errors, ...
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise TrackingError(f"MLflow store {uri} is not usable: {msg[:300]}") from None

    def _experiment(self, name: str) -> str:
        """The id of experiment ``name``, created with MLflow's experiment-kind tag; an existing
        experiment without the tag gets it (the runs stay as they are). Two processes creating it
        at once: the second finds the first's."""
        from mlflow.exceptions import MlflowException

        exp = self._call(self.client.get_experiment_by_name, name)
        if exp is None:
            try:
                return self._call(self.client.create_experiment, name,
                                  artifact_location=_default_artifact_root(self.uri),
                                  tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
            except MlflowException:
                exp = self._call(self.client.get_experiment_by_name, name)
                if exp is None:
                    raise
        if EXPERIMENT_KIND_TAG not in exp.tags:
            self.extra("marking the experiment's kind", self.client.set_experiment_tag,
                       exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        return exp.experiment_id

    def _call(self, fn, *args, **kwargs):
        """``fn(*args, **kwargs)`` retried on SQLite lock errors (:func:`retry_locked`), counted in
        ``lock_retries``."""
        def count(i, exc):
            self.lock_retries += 1
            logging.getLogger(__name__).debug("MLflow store %s locked (%s); retry %d", self.uri, exc, i + 1)

        return retry_locked(fn, *args, on_retry=count, **kwargs)

    def extra(self, what: str, fn, *args, **kwargs):
        """``fn(*args, **kwargs)``, where a failure is one warning, never a lost run: the MLflow
        extras (dataset inputs, the MLflow model, system metrics) are not worth a run."""
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - MlflowException, SQLAlchemy, OSError, torch.export, ...
            msg = " ".join(str(exc).split("[SQL:")[0].split()) or type(exc).__name__
            warnings.warn(f"MLflow: {what} failed ({msg[:300]}); the run and its checkpoints are kept",
                          stacklevel=2)
            return None

    def mark_dead_runs(self) -> list[str]:
        """Mark RUNNING runs started on this host by a process that no longer exists as KILLED."""
        host = socket.gethostname()
        killed = []
        runs = self._call(self.client.search_runs, [self.experiment_id], filter_string="attributes.status = 'RUNNING'",
                                       max_results=200)
        for run in runs:
            if run.data.tags.get("host") != host:
                continue
            pid = run.data.tags.get("pid", "")
            if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
                self._call(self.client.set_terminated, run.info.run_id, status="KILLED")
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
            existing = self._call(self.client.get_run, self.run_id).data.params
            items = [Param(k, str(v)[:MAX_PARAM_LEN]) for k, v in params.items() if k not in existing]
            for i in range(0, len(items), 100):
                self._call(self.client.log_batch, self.run_id, params=items[i:i + 100])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        with self._store("setting tags"):
            self._call(self.client.log_batch, self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(mlflow_key(k), float(v), now, step or 0)
                 for k, v in metrics.items() if v == v]  # NaN (never visible) is not logged
        with self._store("logging metrics"):
            for i in range(0, len(items), 500):
                self._call(self.client.log_batch, self.run_id, metrics=items[i:i + 500])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        with self._store(f"logging artifact {path}"):
            self._call(self.client.log_artifact, self.run_id, str(path), artifact_path)

    def artifact_paths(self, folder: str = "") -> set[str]:
        """The paths of the run's artifacts directly under ``folder``."""
        with self._store("listing artifacts"):
            return {a.path for a in self._call(self.client.list_artifacts, self.run_id, folder or None)}

    def log_inputs(self, inputs: Sequence[Any]) -> None:
        """Log datasets as the run's MLflow inputs. Each item has ``name``, ``digest``, ``source``
        (a path or URI), ``context`` (the domain's role: source, target, other) and ``profile``
        (a dict: counts, format, ...); see :mod:`da_pose.data.inputs`."""
        from mlflow.entities import Dataset, DatasetInput, InputTag
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        items = [DatasetInput(Dataset(name=i.name, digest=i.digest, source_type="local",
                                      source=json.dumps({"uri": str(i.source)}), profile=json.dumps(i.profile)),
                              tags=[InputTag(MLFLOW_DATASET_CONTEXT, i.context)]) for i in inputs]
        if items:
            with self._store("logging dataset inputs"):
                self._call(self.client.log_inputs, self.run_id, datasets=items)

    def log_pytorch_model(self, model, input_shape: Sequence[int], name: str = "model",
                          registered_model_name: str = "", serialization_format: str = "pickle",
                          metadata: Mapping[str, Any] | None = None):
        """Log ``model`` (images -> heatmaps, see ``models.served``) as an MLflow PyTorch model of
        this run with a signature (batch dimension free), optionally registered; returns MLflow's
        ``ModelInfo``. ``mlflow.pytorch.load_model("runs:/<run_id>/model")`` reads it back."""
        import mlflow.pytorch
        import torch

        example = torch.zeros(2, *input_shape)
        with torch.no_grad():
            out = model.eval()(example)
        signature = _tensor_signature(tuple(input_shape), tuple(out.shape[1:]))
        pip = [f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}",
               f"da_pose=={__version__}"]
        # The logged model is created here, in this run's experiment: log_model would create it in
        # the global "active" experiment (Default, id 0) of the global tracking URI.
        logged = self.client.create_logged_model(self.experiment_id, name=name, source_run_id=self.run_id,
                                                 tags={"da_pose.format": serialization_format})
        quiet = logging.getLogger("mlflow.pytorch")
        level = quiet.level
        if serialization_format == "pickle":  # chosen knowingly (MlflowConfig.model_format): no warning per run
            quiet.setLevel(logging.ERROR)
        try:
            with using_tracking_uri(self.uri):  # log_model reads the global tracking URI
                info = mlflow.pytorch.log_model(
                    model, name=name, model_id=logged.model_id, run_id=self.run_id, signature=signature,
                    pip_requirements=pip, input_example=example.numpy() if serialization_format == "pt2" else None,
                    serialization_format=serialization_format, registered_model_name=registered_model_name or None,
                    metadata=dict(metadata or {}))
        except BaseException:
            self.extra("marking the MLflow model failed", self.client.finalize_logged_model, logged.model_id, "FAILED")
            raise
        finally:
            quiet.setLevel(level)
        self.client.finalize_logged_model(logged.model_id, "READY")
        return info

    def start_system_metrics(self, interval: float = 10.0) -> None:
        """MLflow's system metrics (``system/cpu_utilization_percentage``, memory, disk, network;
        GPU with pynvml) sampled every ``interval`` seconds until :meth:`end`."""
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        self._monitor = SystemMetricsMonitor(self.run_id, sampling_interval=interval, tracking_uri=self.uri,
                                             resume_logging=True)
        self._monitor.start()

    def end(self, status: str = "FINISHED") -> None:
        if self._monitor is not None:
            self.extra("stopping system metrics", self._monitor.finish)
            self._monitor = None
        try:
            self._call(self.client.set_terminated, self.run_id, status=status)
        except Exception:  # noqa: BLE001 - ending must never mask the original error
            pass


@contextmanager
def using_tracking_uri(uri: str):
    """MLflow's global tracking (and registry) URI set to ``uri`` for the block, restored after
    (the ``MLFLOW_TRACKING_URI`` variable included): the parts of MLflow without a
    ``tracking_uri`` argument (``log_model``) read the global one."""
    from mlflow.tracking._tracking_service import utils

    previous, env = utils._tracking_uri, os.environ.get("MLFLOW_TRACKING_URI")
    utils.set_tracking_uri(uri)
    try:
        yield
    finally:
        utils.set_tracking_uri(previous)
        if env is not None:
            os.environ["MLFLOW_TRACKING_URI"] = env


def _tensor_signature(input_shape: tuple, output_shape: tuple):
    """Images (-1, 3, S, S) float32 -> heatmaps (-1, K, h, w) float32, unnamed tensors (the
    PyTorch flavor serves a plain array)."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    f32 = np.dtype(np.float32)
    return ModelSignature(inputs=Schema([TensorSpec(f32, (-1, *input_shape))]),
                          outputs=Schema([TensorSpec(f32, (-1, *output_shape))]))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
