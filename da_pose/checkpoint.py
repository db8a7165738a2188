"""Atomic checkpoints, loaded safely.

A checkpoint is a plain dict of tensors and primitives::

    {"format": 1, "model": state_dict, "optimizer": ..., "scheduler": ..., "extra_modules": {...},
     "step": int, "epoch": int, "round": int, "arch": {...}, "config": yaml str, "rng": {...},
     "metrics": {...}}

It is written to a temporary file in the same folder and renamed over the old one (an interrupted
save never leaves a partial file under the real name) and read with ``torch.load(...,
weights_only=True)``, which refuses pickled code.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from da_pose.errors import CheckpointError

FORMAT = 1


def atomic_write(path: str | Path, write_fn) -> Path:
    """Call ``write_fn(tmp_path)`` then rename the temporary file onto ``path``.

    Raises:
        CheckpointError: the folder is not writable or the disk is full; ``path`` is untouched.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise CheckpointError(f"cannot write to {path.parent}: {exc.strerror or exc}") from None
    try:
        write_fn(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise CheckpointError(
            f"could not write {path} ({exc.strerror or exc}); the previous file is unchanged"
        ) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


class _Writer:
    """A file for ``torch.save`` that remembers the OS error of a failed write."""

    def __init__(self, fh):
        self.fh = fh
        self.error: OSError | None = None

    def write(self, data) -> int:
        try:
            return self.fh.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.fh.flush()


def _torch_save(state: dict[str, Any], tmp: str) -> None:
    # torch's zip writer reports a failed write (disk full, file too large) as a RuntimeError
    # ("unexpected pos ..."); the OSError behind it is what atomic_write turns into a
    # CheckpointError that keeps the previous file.
    with open(tmp, "wb") as fh:
        writer = _Writer(fh)
        try:
            torch.save(state, writer)
        except RuntimeError:
            if writer.error is not None:
                raise writer.error from None
            raise


def save(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` atomically with ``torch.save``."""
    state = {"format": FORMAT, **state}
    return atomic_write(path, lambda tmp: _torch_save(state, tmp))


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
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for truncated / unsafe files
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            raise CheckpointError(
                f"{path}: refused, the file holds Python objects beyond tensors "
                "(loading with weights_only=True); only da_pose or plain state-dict files load"
            ) from None
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or corrupt?): {msg}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict checkpoint, got {type(obj).__name__}")
    return obj


def model_state(ckpt: dict) -> dict[str, torch.Tensor]:
    """The model weights of a da_pose checkpoint or a bare state dict."""
    state = ckpt.get("model", ckpt)
    if not isinstance(state, dict):
        raise CheckpointError("checkpoint has no model state dict")
    return state


def check_arch(ckpt: dict, arch: dict, path: str | Path = "checkpoint") -> None:
    """Refuse a checkpoint of another architecture or joint count, naming the difference."""
    saved = ckpt.get("arch")
    if not saved:
        return
    diffs = [f"{k}: checkpoint {saved.get(k)!r} vs config {v!r}" for k, v in arch.items() if saved.get(k) != v]
    if diffs:
        raise CheckpointError(f"{path} was trained with another model ({'; '.join(diffs)})")


def load_model_weights(model: torch.nn.Module, ckpt: dict, path: str | Path = "checkpoint") -> None:
    """Strict load with a one-line error on mismatching keys or shapes."""
    state = model_state(ckpt)
    if state and next(iter(state)).startswith("module."):  # saved from a DDP wrapper
        state = {k[len("module."):]: v for k, v in state.items()}
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
