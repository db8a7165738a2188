"""Shared fixtures: a tiny embedded benchmark generated once per test session."""

import dataclasses
import importlib.util
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

# the machine's cores shared between pytest-xdist's workers (make test runs 2 on the 2-core CI machine)
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, (os.cpu_count() or 1) // _WORKERS)))


def load_script(relpath: str):
    """A script of the repository (``scripts/bench/run_history.py``) imported as a module."""
    path = Path(__file__).resolve().parents[1] / relpath
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="session")
def tiny_benchmark(tmp_path_factory):
    from da_pose.data.toy import generate
    from da_pose.data.toy.presets import PRESETS

    root = tmp_path_factory.mktemp("bench") / "tiny"
    preset = dataclasses.replace(PRESETS["tiny"], source_train=12, source_val=4, target_videos=5, target_frames=4,
                                 other_train=6, other_val=2)
    generate(root, preset=preset, seed=0, workers=1, progress=False)
    return root


def tiny_overrides(root, tmp_path, name="t", uri=None):
    """A model and schedule small enough for seconds on 2 CPU cores."""
    uri = uri or f"sqlite:///{tmp_path}/mlruns.db"
    return [f"data.root={root}", "data.input_size=64", "data.heatmap_size=16", "model.backbone=hourglass",
            "model.stacks=1", "model.depth=2", "model.features=16", "train.batch_size=4", "train.epochs=2",
            "train.optimizer=adam", "train.lr=0.001", "train.lr_milestones=[]", "train.log_every=1",
            "train.deterministic=true", "ccssl.batch_size=8", f"out_dir={tmp_path}/runs", f"tracking_uri={uri}",
            f"name={name}", "experiment=tests", "device=cpu"]


@pytest.fixture
def empty_yaml(tmp_path) -> Path:
    p = tmp_path / "empty.yaml"
    p.write_text("{}\n")
    return p


@pytest.fixture(scope="session")
def mlflow_template(tmp_path_factory) -> Path:
    """An empty, initialised MLflow SQLite store: creating one costs ~20 s of schema migrations,
    copying it nothing (see fresh_store)."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("mlflow") / "template.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture(scope="session")
def tiny_source(tiny_benchmark, tmp_path_factory, mlflow_template) -> Path:
    """A one-epoch source-only hourglass (``tiny_overrides``) on the tiny benchmark, trained once per
    session: the checkpoint every adaptation test starts from (they read it, never write it)."""
    from da_pose import jobs
    from da_pose.config import load_config

    tmp = tmp_path_factory.mktemp("tiny_source")
    store = fresh_store(mlflow_template, tmp / "mlruns.db")
    cfg = load_config(None, tiny_overrides(tiny_benchmark, tmp, "src", uri=store) + ["train.epochs=1"])
    jobs.run_pretrain(cfg)
    return Path(cfg.out_dir) / "tests" / "src" / "last.pt"


def fresh_store(template: Path, path: Path) -> str:
    """A new store at ``path`` copied from ``mlflow_template``; returns its URI."""
    shutil.copyfile(template, path)
    return f"sqlite:///{path}"


def call(argv, capsys) -> tuple[int, str, str]:
    """Run ``da-pose`` (``main(argv)``) in-process: (exit code, stdout, stderr)."""
    from da_pose.cli import main

    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


class Killed(Exception):
    """What :func:`die_after_epoch` raises: a run stopped right after writing a checkpoint."""


@contextmanager
def die_after_epoch(epoch: int):
    """Within the block, ``Trainer.save`` writes its checkpoint and then raises :class:`Killed`
    once the trainer has finished ``epoch`` (an interrupted run to resume from)."""
    from da_pose.train.trainer import Trainer

    save = Trainer.save

    def save_then_die(self, name="last.pt"):
        save(self, name)
        if self.epoch == epoch:
            raise Killed

    Trainer.save = save_then_die
    try:
        yield
    finally:
        Trainer.save = save
