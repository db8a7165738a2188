"""Splits of video datasets by shot: train / test from a seed or from the published split files
(positions), and the labelled target val split carved out of train.

A shot lies wholly on one side of every split, so no video is seen in training and in
evaluation.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from da_pose.data.records import PoseRecord
from da_pose.errors import ConfigError, DataError


#
# A "position" is the published split files' numbering: the index of a frame in the list of
# all frames of the shots that have a landmarks file, in load order, BEFORE the visibility
# filter. The published files hold only positions of frames that pass the filter (horse:
# 10,152 positions, the largest 13,409). A loaded record carries its position in
# ``record.extra["position"]``.


def split_by_video(records_or_videos, test_fraction: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Split positions by shot: every shot lies wholly on one side.

    The shots are shuffled with ``seed`` and the first ``round(test_fraction * n_shots)`` (at
    least one when there are two or more shots and the fraction is positive, never all) go to
    test. Given PoseRecords, returns their positions (``extra["position"]``, else the list
    index), ready for :func:`write_split_files`; given an array of video ids, returns indices
    into it.

    Shape:
        returns: train positions (N_train,), test positions (N_test,), sorted int64.
    """
    if not 0.0 <= test_fraction < 1.0:
        raise ConfigError(f"test_fraction {test_fraction}: expected a value in [0, 1)")
    items = list(records_or_videos)
    videos = np.asarray([r.video if isinstance(r, PoseRecord) else int(r) for r in items], dtype=np.int64)
    positions = np.asarray(
        [r.extra.get("position", i) if isinstance(r, PoseRecord) else i for i, r in enumerate(items)],
        dtype=np.int64,
    )
    shots = np.unique(videos)
    n_test = int(round(test_fraction * len(shots)))
    if test_fraction > 0 and len(shots) >= 2:
        n_test = min(max(n_test, 1), len(shots) - 1)
    rng = np.random.default_rng(seed)
    test_shots = rng.permutation(shots)[:n_test]
    is_test = np.isin(videos, test_shots)
    return np.sort(positions[~is_test]), np.sort(positions[is_test])


# The labelled target validation split (DESIGN section 3): a seeded subset of the TRAIN shots,
# whole shots only, so it never shares a video with train or test. The seed is fixed (not the
# run's seed) so that every run and every method of a comparison is selected on the same frames.
VAL_FRACTION = 0.1
VAL_SEED = 20260


def val_shots(videos, fraction: float = VAL_FRACTION, seed: int = VAL_SEED) -> np.ndarray:
    """The shots of ``videos`` (the train split's video ids) that form the val split.

    ``round(fraction * n_shots)`` shots, at least one when the fraction is positive and there are
    two or more shots, never all of them; drawn with ``seed``.

    Shape:
        videos: (N,) video id per train frame -> (M,) sorted val shot ids.
    """
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(f"val_fraction {fraction}: expected a value in [0, 1)")
    shots = np.unique(np.asarray(videos, dtype=np.int64))
    n_val = int(round(fraction * len(shots)))
    n_val = min(max(n_val, 1 if fraction > 0 else 0), max(len(shots) - 1, 0))
    return np.sort(np.random.default_rng(seed).permutation(shots)[:n_val])


def read_split_file(path: str | os.PathLike, length: int) -> np.ndarray:
    """Read a ``*_idxs_by_video.npy``: positions into a numbering of ``length`` frames.

    DataError if unreadable, not a 1-D integer array, or any position is out of range.

    Shape:
        returns: (M,) sorted unique int64.
    """
    path = Path(path)
    try:
        arr = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"{path}: split file not found (expected a 1-D int64 .npy of positions)") from None
    except Exception as exc:  # a malformed header raises ValueError, EOFError, tokenize errors, ...
        raise DataError(f"{path}: unreadable split file ({exc}); expected a 1-D int64 .npy") from None
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise DataError(f"{path}: split of shape {arr.shape} ({arr.dtype}); expected 1-D integers")
    if len(arr) and (arr.min() < 0 or arr.max() >= length):
        raise DataError(
            f"{path}: position {int(arr.max() if arr.max() >= length else arr.min())} out of range for "
            f"{length} frames (the file must belong to this animal's ranges and landmarks)"
        )
    return np.unique(arr.astype(np.int64))


def split_positions(
    length: int,
    split: str,
    split_file: str | os.PathLike | None = None,
    split_files: dict | None = None,
) -> np.ndarray:
    """Positions of ``split`` ('train' | 'test' | 'all') from published split files.

    ``split_file`` is a train file (``train_idxs_by_video.npy``); test is its complement.
    ``split_files`` = ``{"train": path, "test": path}`` names each side (either may be
    missing: its side is then the other's complement); when both are given they must not
    overlap. ``length`` is the numbering's length (:func:`count_positions`).
    """
    if split == "all":
        return np.arange(length, dtype=np.int64)
    if split_file is not None and split_files:
        raise ConfigError("pass split_file or split_files, not both")
    files = {"train": split_file} if split_file is not None else dict(split_files or {})
    unknown = set(files) - {"train", "test"}
    if unknown or not files:
        raise ConfigError(f"split_files keys {sorted(files)}: expected 'train' and/or 'test'")
    sides = {name: read_split_file(p, length) for name, p in files.items()}
    if len(sides) == 2:
        overlap = np.intersect1d(sides["train"], sides["test"])
        if len(overlap):
            raise DataError(
                f"{files['test']}: {len(overlap)} positions also in {files['train']} (train and test must not overlap)"
            )
    if split in sides:
        return sides[split]
    other = sides["test" if split == "train" else "train"]
    return np.setdiff1d(np.arange(length, dtype=np.int64), other)
