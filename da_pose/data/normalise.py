"""Input normalisation: ImageNet mean and std (the project's default) or the published per-dataset
mean (CC-SSL's ``mean.pth.tar`` / ``mean_by_video.pth.tar``), subtracted without dividing by the
std, as the published code does.

A published checkpoint was trained on inputs ``rgb / 255 - mean``; evaluating it with ImageNet
normalisation feeds it other numbers. ``normalisation("published", FILE)`` gives the
``(mean, std)`` pair that :class:`~da_pose.data.dataset.PoseDataset` takes for that:
``std = (1, 1, 1)``. The published code normalises real (TigDog) images with the synthetic
set's mean, so for the published horse model the file is the synthetic horse folder's
``mean.pth.tar``.
"""

from __future__ import annotations

import os
from pathlib import Path

from da_pose.data.dataset import IMAGENET_MEAN, IMAGENET_STD
from da_pose.errors import ConfigError, DataError

MODES = ("imagenet", "published")
MEAN_FILES = ("mean.pth.tar", "mean_by_video.pth.tar")  # synthetic species folder; TigDog animal folder


def find_mean_file(folder: str | os.PathLike) -> Path:
    """``mean.pth.tar`` or ``mean_by_video.pth.tar`` in ``folder`` (in that order)."""
    folder = Path(folder)
    for name in MEAN_FILES:
        if (folder / name).is_file():
            return folder / name
    raise DataError(f"{folder}: no {' or '.join(MEAN_FILES)} (expected the published normalisation file)")


def read_mean_file(path: str | os.PathLike) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)`` RGB in 0-1 from a published ``mean.pth.tar`` (read with weights_only=True).

    Raises:
        DataError: missing, not a torch file, needing pickle, or without 3-value ``mean`` and
            ``std``; the message names the file and what was expected.
    """
    import torch

    path = Path(path)
    if path.is_dir():
        path = find_mean_file(path)
    expected = "a dict of 'mean' and 'std' tensors of 3 values (RGB, 0-1)"
    if not path.is_file():
        raise DataError(f"{path}: normalisation file not found (expected {expected})")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types
        text = str(exc)
        if "Unsupported global" in text or "Unsupported class" in text:
            raise DataError(f"{path}: refused, the file needs pickle (Python objects beyond tensors); "
                            f"expected {expected}") from None
        first = text.splitlines()[0] if text else type(exc).__name__
        raise DataError(f"{path}: not a readable torch file ({first}); expected {expected}") from None
    if not isinstance(obj, dict) or "mean" not in obj or "std" not in obj:
        keys = sorted(map(str, obj)) if isinstance(obj, dict) else type(obj).__name__
        raise DataError(f"{path}: holds {keys}; expected {expected}")
    out = []
    for key in ("mean", "std"):
        try:
            values = torch.as_tensor(obj[key], dtype=torch.float64).reshape(-1).tolist()
        except (TypeError, ValueError, RuntimeError):
            raise DataError(f"{path}: {key!r} is not numeric; expected {expected}") from None
        if len(values) != 3 or not all(0.0 <= v <= 1.0 for v in values):
            raise DataError(f"{path}: {key!r} is {values}; expected {expected}")
        out.append(tuple(values))
    return out[0], out[1]


def normalisation(mode: str = "imagenet", mean_file: str | os.PathLike | None = None,
                  mean=None, std=None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The ``(mean, std)`` a dataset normalises with, ``(rgb / 255 - mean) / std``.

    - ``imagenet``: ``mean``/``std`` when given (``data.mean``/``data.std``), else ImageNet's.
    - ``published``: the mean of ``mean_file`` (a ``mean.pth.tar`` / ``mean_by_video.pth.tar``
      or a folder holding one) and ``std = (1, 1, 1)``: the mean is subtracted, nothing divided.
    """
    if mode == "imagenet":
        return (tuple(mean) if mean is not None else IMAGENET_MEAN,
                tuple(std) if std is not None else IMAGENET_STD)
    if mode != "published":
        raise ConfigError(f"data.normalise {mode!r}: expected one of {', '.join(MODES)}")
    if not mean_file:
        raise ConfigError("data.normalise 'published' needs data.mean_file (the dataset's mean.pth.tar "
                          "or mean_by_video.pth.tar, or the folder holding it)")
    file_mean, _ = read_mean_file(mean_file)
    return file_mean, (1.0, 1.0, 1.0)
