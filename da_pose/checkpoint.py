"""Atomic checkpoints, loaded safely.

A checkpoint is a plain dict of tensors and primitives::

    {"format": 1, "model": state_dict, "optimizer": ..., "scheduler": ..., "extra_modules": {...},
     "step": int, "epoch": int, "round": int, "arch": {...}, "config": yaml str, "rng": {...},
     "metrics": {...}}

It is serialised in memory and written with ``fileio.write_bytes_atomic`` (a temporary file in
the same folder renamed over the old one: an interrupted save never leaves a partial file under
the real name) and read with ``torch.load(..., weights_only=True)``, which refuses pickled code
(numpy scalars, which older checkpoints hold, are allowed: they are plain data).

A checkpoint may also be named by an MLflow URI (:func:`fetched`): ``runs:/<run_id>/checkpoint/last.pt``
(any run artifact), ``runs:/<run_id>/model`` or ``models:/<name>/<version>`` (an MLflow model
logged by da_pose, whose metadata names its checkpoint); it is downloaded from the tracking
server into a temporary folder and loaded as above.

Published checkpoints (the CC-SSL / pytorch-pose layout ``{"epoch", "arch": "hg", "state_dict":
{"module.<key>": tensor}, "best_acc", "optimizer"}``) load too: :func:`model_state` takes the
nested ``state_dict`` without the ``module.`` prefix and :func:`check_arch` compares what the
weights show (backbone, stacks, width, joints) with the config.
"""

from __future__ import annotations

import io
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

from da_pose.errors import CheckpointError
from da_pose.fileio import write_bytes_atomic

FORMAT = 1


def save(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` atomically with ``torch.save`` (through ``fileio.write_bytes_atomic``).

    The checkpoint is serialised in memory first, so a failure while pickling or writing never
    touches ``path``.

    Raises:
        CheckpointError: the folder is not writable or the disk is full; ``path`` is untouched.
    """
    path = Path(path)
    state = {"format": FORMAT, **state}
    buf = io.BytesIO()
    try:
        torch.save(state, buf)
    except OSError as exc:
        raise CheckpointError(
            f"could not write {path} ({exc.strerror or exc}); the previous file is unchanged"
        ) from None
    try:
        return write_bytes_atomic(path, buf.getbuffer())
    except PermissionError as exc:
        raise CheckpointError(f"cannot write to {path.parent}: {exc.strerror or exc}") from None
    except OSError as exc:
        if not path.parent.is_dir():
            raise CheckpointError(f"cannot write to {path.parent}: {exc.strerror or exc}") from None
        raise CheckpointError(
            f"could not write {path} ({exc.strerror or exc}); the previous file is unchanged"
        ) from None


def _numpy_scalar_globals() -> list:
    """numpy scalars and dtypes, which old checkpoints hold (``best_acc`` as a numpy float):
    plain data, allowed under both of numpy's module names."""
    import numpy as np

    try:
        scalar = np._core.multiarray.scalar
    except AttributeError:  # numpy < 2
        scalar = np.core.multiarray.scalar
    allowed = [scalar, (scalar, "numpy.core.multiarray.scalar"), np.dtype]
    for name in ("Float64DType", "Float32DType", "Float16DType", "Int64DType", "Int32DType", "BoolDType"):
        cls = getattr(getattr(np, "dtypes", None), name, None)
        if cls is not None:
            allowed.append(cls)
    return allowed


def _torch_load(path: Path, map_location):
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        if "numpy" not in str(exc) or "Unsupported global" not in str(exc):
            raise
    with torch.serialization.safe_globals(_numpy_scalar_globals()):
        return torch.load(path, map_location=map_location, weights_only=True)


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save` (or any plain state dict) safely.

    Raises:
        CheckpointError: missing, truncated, not a checkpoint, or holding code (refused by
            ``weights_only``).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        obj = _torch_load(path, map_location)
    except Exception as exc:  # torch raises many types for truncated / unsafe files
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "Unsupported global" in str(exc) or "Unsupported class" in str(exc):
            raise CheckpointError(
                f"{path}: refused, the file holds Python objects beyond tensors "
                "(loading with weights_only=True); only da_pose or plain state-dict files load"
            ) from None
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or corrupt?): {msg}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict checkpoint, got {type(obj).__name__}")
    return obj


def is_published(ckpt: dict) -> bool:
    """True for the published (pytorch-pose / CC-SSL) layout: ``{"state_dict": ..., "arch": "hg",
    "epoch", "best_acc", "optimizer"}``, usually with DataParallel's ``module.`` key prefix."""
    return "model" not in ckpt and isinstance(ckpt.get("state_dict"), dict)


def model_state(ckpt: dict) -> dict[str, torch.Tensor]:
    """The model weights of a da_pose checkpoint, a published checkpoint or a bare state dict,
    without a DataParallel / DDP ``module.`` prefix."""
    state = ckpt["state_dict"] if is_published(ckpt) else ckpt.get("model", ckpt)
    if not isinstance(state, dict):
        raise CheckpointError("checkpoint has no model state dict")
    if state and all(isinstance(k, str) and k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


# Published ``arch`` names and the backbone they are.
PUBLISHED_ARCHS = {"hg": "hourglass"}


def published_arch(ckpt: dict) -> dict:
    """What can be read off a published checkpoint: backbone, and for the hourglass the number of
    stacks, the width and the joint count (from the ``score.<i>`` heads)."""
    name = ckpt.get("arch")
    name = name if isinstance(name, str) else ""
    state = model_state(ckpt)
    backbone = PUBLISHED_ARCHS.get(name.lower(), name.lower() or None)
    heads = sorted(int(k.split(".")[1]) for k in state if k.startswith("score.") and k.endswith(".weight")
                   and k.split(".")[1].isdigit())
    if backbone is None and heads and any(k.startswith("hg.") for k in state):
        backbone = "hourglass"
    arch: dict = {"backbone": backbone}
    if backbone == "hourglass" and heads:
        w = state[f"score.{heads[0]}.weight"]
        arch.update(stacks=len(heads), num_joints=int(w.shape[0]), features=int(w.shape[1]))
    return arch


def published_overrides(ckpt: dict) -> list[str]:
    """``--set`` overrides that give a config the model of a published checkpoint (which carries
    no config): ``["model.backbone=hourglass", "model.stacks=4", "model.features=256"]``."""
    arch = published_arch(ckpt)
    out = [f"model.backbone={arch['backbone']}"] if arch.get("backbone") else []
    out += [f"model.{k}={arch[k]}" for k in ("stacks", "features") if k in arch]
    return out


def check_arch(ckpt: dict, arch: dict, path: str | Path = "checkpoint") -> None:
    """Refuse a checkpoint of another architecture or joint count, naming the difference.

    A published checkpoint (``arch`` is a name such as ``"hg"``) is compared on what can be read
    off its weights (:func:`published_arch`); the message says which ``--set model.*`` fit it.
    """
    saved = ckpt.get("arch")
    if not saved:
        return
    if isinstance(saved, str) or is_published(ckpt):
        found = published_arch(ckpt)
        diffs = [f"{k}: checkpoint {found[k]!r} vs config {v!r}" for k, v in arch.items()
                 if k in found and found[k] != v]
        if diffs:
            fix = " ".join(f"--set {o}" for o in published_overrides(ckpt))
            raise CheckpointError(
                f"{path} is a published checkpoint (arch {saved!r}) of another model ({'; '.join(diffs)})"
                + (f"; its model is {fix}" if fix else "")
            )
        return
    if not isinstance(saved, dict):
        raise CheckpointError(f"{path}: 'arch' is {type(saved).__name__}, expected a dict or a published arch name")
    diffs = [f"{k}: checkpoint {saved.get(k)!r} vs config {v!r}" for k, v in arch.items() if saved.get(k) != v]
    if diffs:
        raise CheckpointError(f"{path} was trained with another model ({'; '.join(diffs)})")


def load_model_weights(model: torch.nn.Module, ckpt: dict, path: str | Path = "checkpoint") -> None:
    """Strict load with a one-line error on mismatching keys or shapes."""
    state = model_state(ckpt)  # a DataParallel / DDP "module." prefix removed
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if shapes:
            k = shapes[0]
            parts.append(f"{len(shapes)} of another shape (e.g. {k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)})")
        raise CheckpointError(f"{path} does not fit the model: {', '.join(parts)}")
    model.load_state_dict(state)


# ------------------------------------------------------------------------------------------------
# checkpoints on a tracking server

MLFLOW_SCHEMES = ("runs:/", "models:/", "mlflow-artifacts:/")
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".tar")


def is_mlflow_uri(ref: str | Path) -> bool:
    return str(ref).startswith(MLFLOW_SCHEMES)


def _download(uri: str, dst: Path, tracking_uri: str) -> Path:
    import mlflow.artifacts

    from da_pose.tracking import using_tracking_uri

    dst.mkdir(parents=True, exist_ok=True)
    try:
        # the global URI too: MLflow's lookup of a run's logged model ignores the argument
        with using_tracking_uri(tracking_uri):
            return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst),
                                                            tracking_uri=tracking_uri, registry_uri=tracking_uri))
    except Exception as exc:  # MlflowException, OSError, ...
        msg = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise CheckpointError(f"{uri}: cannot download it from {tracking_uri} ({msg})") from None


def _model_checkpoint(model_dir: Path, ref: str) -> str:
    """The checkpoint URI an MLflow model logged by da_pose records in its metadata."""
    from mlflow.models import Model

    meta = Model.load(str(model_dir / "MLmodel")).metadata or {}
    uri = (meta.get("da_pose") or {}).get("checkpoint")
    if not isinstance(uri, str) or not uri:
        raise CheckpointError(f"{ref} is an MLflow model without a da_pose checkpoint in its metadata; "
                              "pass the run's checkpoint instead: runs:/<run_id>/checkpoint/last.pt")
    return uri


def download(ref: str, dst: Path, tracking_uri: str) -> Path:
    """Download the checkpoint named by an MLflow URI into ``dst``; returns the file.

    An MLflow model (``models:/name/version``, ``runs:/<id>/model``) is followed to the checkpoint
    its metadata names; a folder holding one checkpoint file gives that file.
    """
    from da_pose.tracking import check_reachable

    check_reachable(tracking_uri, must_exist=True)  # an unreachable server or a missing store: one line
    if not ref.rstrip("/").endswith(CHECKPOINT_SUFFIXES):
        try:  # an MLflow model: only its MLmodel file, not its weights
            meta_dir = _download(ref.rstrip("/") + "/MLmodel", dst / "meta", tracking_uri).parent
            return download(_model_checkpoint(meta_dir, ref), dst, tracking_uri)
        except CheckpointError as exc:
            if "without a da_pose checkpoint" in str(exc) or ref.startswith("models:/"):
                raise
    local = _download(ref, dst / "files", tracking_uri)
    if local.is_dir():
        found = sorted(p for p in local.rglob("*") if p.is_file() and p.suffix in CHECKPOINT_SUFFIXES)
        if len(found) != 1:
            names = ", ".join(p.relative_to(local).as_posix() for p in found) or "none"
            raise CheckpointError(f"{ref} is a folder; name one checkpoint file in it (found: {names})")
        local = found[0]
    return local


@contextmanager
def fetched(ref: str | Path, tracking_uri: str | None = None) -> Iterator[Path]:
    """A local checkpoint path for ``ref``: a path as it is, an MLflow URI downloaded to a
    temporary folder removed after the block. ``tracking_uri`` defaults to ``MLFLOW_TRACKING_URI``,
    then to da_pose's default store (``sqlite:///mlruns.db``)."""
    if not is_mlflow_uri(ref):
        yield Path(ref)
        return
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlruns.db"
    with tempfile.TemporaryDirectory(prefix="da_pose_ckpt_") as tmp:
        yield download(str(ref), Path(tmp), uri)
