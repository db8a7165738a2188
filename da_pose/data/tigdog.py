"""TigDog (``behaviorDiscovery2.0``) reader and writer: shots, landmarks, crop, split by video.

On-disk layout (FACTS section 2; the embedded benchmark writes the same)::

    <root>/ranges/<animal>/ranges.mat         variable ``ranges``: (N, 3) [shot, start, end]
    <root>/landmarks/<animal>/<shot>.mat      variable ``landmarks``: (F, 1) cell of 1x1 structs
    <root>/<animal>/%08d.jpg                  frames, numbered by the global frame number

A landmark struct holds a (19, 2) array of x, y and a (19, 1) visibility array, read
positionally (``L[f][0][0][0][0]`` and ``L[f][0][0][0][1]``, ``f = frame - start``).

Split files (``train_idxs_by_video.npy`` / ``valid_idxs_by_video.npy``) hold *positions*: the
index of a frame in the list of all frames of the shots that have a landmarks file, in load
order, before the visibility filter (checked against the published horse and tiger files,
whose largest positions exceed the filtered frame counts). Records carry theirs in
``record.extra["position"]``.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import cv2
import numpy as np
import scipy.io

from da_pose.fileio import write_bytes_atomic
from da_pose.data.records import PoseRecord
from da_pose.data.skeleton import tigdog_landmark_index
from da_pose.data.splits import VAL_FRACTION, split_by_video, split_positions, val_shots
from da_pose.errors import ConfigError, DataError

NUM_LANDMARKS = 19  # per frame in the files; the model keeps the first 18 (FACTS section 2)
# Field names of the landmark struct. The reader is positional, so only the order matters.
LANDMARK_FIELDS = ("coords", "visibility")
SPLIT_FILES = {"train": "train_idxs_by_video.npy", "test": "valid_idxs_by_video.npy"}


# ----------------------------------------------------------------------------------- writers




def _mat_bytes(variables: dict) -> bytes:
    buf = io.BytesIO()
    scipy.io.savemat(buf, variables, do_compression=True)
    return buf.getvalue()


def write_ranges(path: str | os.PathLike, ranges: np.ndarray) -> None:
    """Write a TigDog ``ranges.mat``: MATLAB variable ``ranges``, rows ``[shot, start, end]``.

    Shape:
        ranges: (N, 3) integers; ``start`` and ``end`` are inclusive global frame numbers.
    """
    ranges = np.asarray(ranges)
    if ranges.ndim != 2 or ranges.shape[1] != 3:
        raise ValueError(f"ranges must be (N, 3), got {ranges.shape}")
    write_bytes_atomic(Path(path), _mat_bytes({"ranges": ranges.astype(np.int64)}))


def write_landmarks(
    path: str | os.PathLike, coords: np.ndarray, visibility: np.ndarray
) -> None:
    """Write a TigDog shot file: variable ``landmarks``, a (F, 1) cell of 1x1 structs.

    Each struct has two fields, coordinates (19, 2) and visibility (19, 1), so that scipy reads
    ``L[f][0][0][0][0]`` as the coordinates and ``L[f][0][0][0][1]`` as the visibility.
    Unlabelled points should have coordinate 0 (the TigDog convention).

    Shape:
        coords: (F, 19, 2) float x, y pixels.
        visibility: (F, 19) float, 1 visible, 0 not.
    """
    coords = np.asarray(coords, dtype=np.float64)
    visibility = np.asarray(visibility, dtype=np.float64)
    if coords.ndim != 3 or coords.shape[1:] != (NUM_LANDMARKS, 2):
        raise ValueError(f"coords must be (F, {NUM_LANDMARKS}, 2), got {coords.shape}")
    if visibility.shape != coords.shape[:2]:
        raise ValueError(f"visibility must be {coords.shape[:2]}, got {visibility.shape}")
    dtype = [(name, object) for name in LANDMARK_FIELDS]
    cell = np.empty((len(coords), 1), dtype=object)
    for f in range(len(coords)):
        struct = np.empty((1, 1), dtype=dtype)
        struct[0, 0][LANDMARK_FIELDS[0]] = coords[f]  # 19, 2
        struct[0, 0][LANDMARK_FIELDS[1]] = visibility[f][:, None]  # 19, 1
        cell[f, 0] = struct
    write_bytes_atomic(Path(path), _mat_bytes({"landmarks": cell}))


def write_frame(
    root: str | os.PathLike, animal: str, frame: int, image_rgb: np.ndarray, quality: int = 95
) -> Path:
    """Write frame ``frame`` of ``animal`` as ``<root>/<animal>/%08d.jpg`` (JPEG, ``quality``).

    Shape:
        image_rgb: (H, W, 3) uint8 RGB.
    """
    image_rgb = np.asarray(image_rgb)
    if image_rgb.ndim != 3 or image_rgb.shape[2] != 3 or image_rgb.dtype != np.uint8:
        raise ValueError(f"image_rgb must be uint8 (H, W, 3), got {image_rgb.dtype} {image_rgb.shape}")
    ok, jpg = cv2.imencode(
        ".jpg", cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    )
    if not ok:
        raise ValueError("JPEG encoding failed")
    path = frame_path(root, animal, frame)
    write_bytes_atomic(path, jpg.tobytes())
    return path


def write_split_files(
    folder: str | os.PathLike, train_positions: np.ndarray, test_positions: np.ndarray
) -> tuple[Path, Path]:
    """Write ``train_idxs_by_video.npy`` and ``valid_idxs_by_video.npy`` (sorted int64).

    Returns the two paths (train, valid).
    """
    folder = Path(folder)
    out = []
    for name, positions in (("train", train_positions), ("test", test_positions)):
        arr = np.sort(np.asarray(positions, dtype=np.int64))
        buf = io.BytesIO()
        np.save(buf, arr, allow_pickle=False)
        path = folder / SPLIT_FILES[name]
        write_bytes_atomic(path, buf.getvalue())
        out.append(path)
    return out[0], out[1]


# ----------------------------------------------------------------------------------- reader


def ranges_path(root: str | os.PathLike, animal: str) -> Path:
    return Path(root) / "ranges" / animal / "ranges.mat"


def landmarks_path(root: str | os.PathLike, animal: str, shot: int) -> Path:
    return Path(root) / "landmarks" / animal / f"{shot}.mat"


def frame_path(root: str | os.PathLike, animal: str, frame: int) -> Path:
    return Path(root) / animal / f"{frame:08d}.jpg"


def _loadmat(path: Path, variable: str, expected: str) -> np.ndarray:
    """One variable of a .mat file; any scipy failure becomes a one-line DataError."""
    if not path.is_file():
        raise DataError(f"{path}: file not found (expected {expected})")
    try:
        data = scipy.io.loadmat(path, variable_names=[variable])
    except Exception as exc:  # scipy raises ValueError, TypeError, OSError, zlib errors...
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"{path}: unreadable MATLAB file ({reason}); expected {expected}") from None
    if variable not in data:
        raise DataError(f"{path}: no variable {variable!r}; expected {expected}")
    return data[variable]


def read_ranges(path: str | os.PathLike) -> np.ndarray:
    """Read ``ranges.mat``: (N, 3) int64 rows ``[shot, start, end]`` (inclusive frames)."""
    path = Path(path)
    expected = "variable 'ranges', an (N, 3) integer array [shot, start, end]"
    arr = _loadmat(path, "ranges", expected)
    if arr.ndim != 2 or arr.shape[1] != 3 or not np.issubdtype(arr.dtype, np.number):
        raise DataError(f"{path}: ranges of shape {arr.shape} ({arr.dtype}); expected {expected}")
    if not np.isfinite(arr).all() or (arr != np.round(arr)).any():
        raise DataError(f"{path}: ranges hold non-integer values; expected {expected}")
    arr = arr.astype(np.int64)
    if (arr[:, 2] < arr[:, 1]).any():
        row = int(np.argmax(arr[:, 2] < arr[:, 1]))
        raise DataError(f"{path}: row {row} ends before it starts ({arr[row].tolist()})")
    return arr


def read_landmarks(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read one shot's landmark file.

    Shape:
        returns: coords (F, 19, 2) float32 x, y; visibility (F, 19) float32.
    """
    path = Path(path)
    expected = "variable 'landmarks', an (F, 1) cell of structs with (19, 2) coords and (19, 1) visibility"
    cell = _loadmat(path, "landmarks", expected)
    if cell.dtype != object or cell.ndim != 2 or cell.shape[1] != 1:
        raise DataError(f"{path}: landmarks of shape {cell.shape} ({cell.dtype}); expected {expected}")
    coords = np.zeros((len(cell), NUM_LANDMARKS, 2), dtype=np.float32)
    vis = np.zeros((len(cell), NUM_LANDMARKS), dtype=np.float32)
    for f in range(len(cell)):
        try:
            record = cell[f][0][0][0]  # the 1x1 struct's only element, read positionally
            xy = np.asarray(record[0], dtype=np.float32)
            v = np.asarray(record[1], dtype=np.float32)
        except (IndexError, TypeError, ValueError, KeyError):
            raise DataError(f"{path}: frame {f} is not a struct of (coords, visibility); expected {expected}") from None
        if xy.shape != (NUM_LANDMARKS, 2) or v.size != NUM_LANDMARKS:
            raise DataError(
                f"{path}: frame {f} has coords {xy.shape} and visibility {v.shape}; "
                f"expected ({NUM_LANDMARKS}, 2) and ({NUM_LANDMARKS}, 1)"
            )
        if not (np.isfinite(xy).all() and np.isfinite(v).all()):
            raise DataError(f"{path}: frame {f} holds NaN or infinite values")
        coords[f], vis[f] = xy, v.reshape(-1)
    return coords, vis


def frame_keypoints(coords: np.ndarray, vis: np.ndarray, animal: str) -> np.ndarray:
    """Model-order keypoints of one frame: first 18 landmarks, tiger remap, visibility rule.

    A joint is visible when the file marks it visible AND both coordinates are > 0 (TigDog
    stores unlabelled points at 0). Coordinates are kept as stored.

    Shape:
        coords: (19, 2); vis: (19,); returns (18, 3) float32.
    """
    index = tigdog_landmark_index(animal)  # 18 indices into the 19 landmarks (FACTS section 1)
    xy = coords[index]  # 18, 2
    visible = (vis[index] > 0) & (xy[:, 0] > 0) & (xy[:, 1] > 0)
    return np.concatenate([xy, visible[:, None]], axis=1).astype(np.float32)


def crop_box(keypoints: np.ndarray, crop_factor: float = 1.5) -> tuple[np.ndarray, float, np.ndarray]:
    """Published TigDog crop: box = min/max of the coordinates > 0 (x and y separately).

    Centre = box centre; side = max(w, h) * crop_factor (published ``s = max(w, h) / 200 *
    1.5`` with a 200 px reference and a 256 crop, FACTS section 2). The box uses every point
    with a positive coordinate, as published, not only the visible ones.

    Shape:
        keypoints: (K, 3); returns center (2,), side, box (4,) x0, y0, w, h.
    """
    xs = keypoints[:, 0][keypoints[:, 0] > 0]
    ys = keypoints[:, 1][keypoints[:, 1] > 0]
    if not len(xs) or not len(ys):
        return np.zeros(2, np.float32), 0.0, np.zeros(4, np.float32)
    x0, x1, y0, y1 = xs.min(), xs.max(), ys.min(), ys.max()
    center = np.array([(x0 + x1) / 2, (y0 + y1) / 2], dtype=np.float32)
    box = np.array([x0, y0, x1 - x0, y1 - y0], dtype=np.float32)
    return center, float(max(x1 - x0, y1 - y0) * crop_factor), box


def count_positions(root: str | os.PathLike, animal: str) -> int:
    """Length of the published position numbering: every frame of every shot that has a
    landmarks file, by ``ranges`` (before any filter)."""
    ranges = read_ranges(ranges_path(root, animal))
    return int(
        sum(end - start + 1 for shot, start, end in ranges.tolist() if landmarks_path(root, animal, shot).exists())
    )


def _scan(
    root: Path, animal: str, min_visible: int, crop_factor: float, strict: bool
) -> tuple[list[PoseRecord], list[str], int]:
    """Every usable frame in load order (shots in ranges order, frames in order).

    Returns the records that pass the visibility filter, the messages of unreadable shot
    files, and the length of the position numbering. A record's ``extra["position"]`` is its
    index in the unfiltered list of all frames of the shots that have a landmarks file: the
    numbering of the published split files (an unreadable shot still takes its frames' places,
    from ``ranges``, so it never shifts the others).
    """
    ranges = read_ranges(ranges_path(root, animal))
    records, bad = [], []
    position = 0
    for shot, start, end in ranges.tolist():
        lm_path = landmarks_path(root, animal, shot)
        if not lm_path.exists():
            continue  # published: shots without landmarks are skipped (and take no positions)
        first, position = position, position + end - start + 1
        try:
            coords, vis = read_landmarks(lm_path)
            if len(coords) != end - start + 1:
                raise DataError(
                    f"{lm_path}: {len(coords)} frames, but ranges say {end - start + 1} ({start}..{end})"
                )
        except DataError as exc:
            if strict:
                raise
            bad.append(str(exc))
            continue
        for f in range(len(coords)):
            kp = frame_keypoints(coords[f], vis[f], animal)
            # Published filter: visible sum > 18 // 2, i.e. at least 10 of 18 (FACTS section 2).
            if kp[:, 2].sum() < min_visible:
                continue
            center, side, box = crop_box(kp, crop_factor)
            if side <= 0:
                continue
            frame = start + f
            records.append(
                PoseRecord(
                    image_path=str(frame_path(root, animal, frame)),
                    keypoints=kp,
                    center=center,
                    side=side,
                    bbox=box,
                    video=int(shot),
                    frame=int(frame),
                    species=animal,
                    extra={"position": first + f},
                )
            )
    return records, bad, position


def load_tigdog(
    root: str | os.PathLike,
    animal: str,
    split: str = "train",
    split_file: str | os.PathLike | None = None,
    split_files: dict | None = None,
    seed: int = 0,
    test_fraction: float = 0.2,
    min_visible: int = 10,
    crop_factor: float = 1.5,
    strict: bool = False,
    val_fraction: float = VAL_FRACTION,
) -> list[PoseRecord]:
    """Load one animal of ``behaviorDiscovery2.0`` as PoseRecords (original pixels).

    Reads every shot listed in ``ranges`` that has a landmarks file (frames with fewer than
    ``min_visible`` visible joints dropped), then selects ``split``: by published split files
    (``split_file``: a train file, test = the rest; or ``split_files={"train": p, "test": p}``;
    see :func:`split_positions` and the note on positions above) or else by
    :func:`split_by_video` with ``seed`` and ``test_fraction``. A split-file position whose
    frame was dropped (filter, unreadable shot) is left out with a warning. Frames whose jpg
    is missing are left out last, with a warning. A bad shot file is skipped with a warning;
    with ``strict`` every such case is a DataError. ``val``: a seeded ``val_fraction`` of the
    train shots (:func:`val_shots`), removed from ``train`` (0: the published train, whole).
    ``record.video`` = shot id, ``record.frame`` = global frame number,
    ``record.extra["position"]`` = position in the published numbering.
    """
    if split not in ("train", "val", "test", "all"):
        raise ConfigError(f"tigdog split {split!r}: expected 'train', 'val', 'test' or 'all'")
    root = Path(root).resolve()
    if not root.is_dir():
        raise DataError(f"{root}: TigDog root not found (expected behaviorDiscovery2.0 with ranges/, landmarks/)")
    records, bad, length = _scan(root, animal, min_visible, crop_factor, strict)
    if bad and not records:
        raise DataError(f"{ranges_path(root, animal)}: all {len(bad)} shot files unreadable, first: {bad[0]}")
    if bad:
        warnings.warn(
            f"{root / 'landmarks' / animal}: skipped {len(bad)} unreadable shot file(s), first: {bad[0]} "
            "(strict=True makes this an error)",
            stacklevel=2,
        )
    # val is carved out of train: select train first, then split it by shot
    side = "train" if split == "val" else split
    if split == "all":
        selected = records
    elif split_file is not None or split_files:
        wanted = split_positions(length, side, split_file, split_files)
        by_position = {r.extra["position"]: r for r in records}
        selected = [by_position[p] for p in wanted.tolist() if p in by_position]
        dropped = len(wanted) - len(selected)
        # The complement of a train file naturally holds filtered-out frames; only positions
        # read from a file must all exist.
        explicit = side == "train" if split_file is not None else side in (split_files or {})
        if dropped and explicit:
            source = split_file if split_file is not None else split_files[side]
            message = (
                f"{source}: {dropped} of {len(wanted)} positions point at frames dropped by the "
                f"visibility filter (min_visible={min_visible}) or an unreadable shot"
            )
            if strict:
                raise DataError(message)
            warnings.warn(message, stacklevel=2)
    else:
        train, test = split_by_video(records, test_fraction, seed)
        wanted = set((train if side == "train" else test).tolist())
        selected = [r for r in records if r.extra["position"] in wanted]
    if side == "train" and split != "all":
        held = set(val_shots([r.video for r in selected], val_fraction).tolist())
        selected = [r for r in selected if (r.video in held) == (split == "val")]

    image_dir = root / animal
    present = set(os.listdir(image_dir)) if image_dir.is_dir() else set()
    kept = [r for r in selected if os.path.basename(r.image_path) in present]
    missing = len(selected) - len(kept)
    if missing:
        first = next(r.image_path for r in selected if os.path.basename(r.image_path) not in present)
        if strict:
            raise DataError(f"{first}: image not found ({missing} of {len(selected)} frames missing)")
        warnings.warn(f"{image_dir}: {missing} of {len(selected)} frame images missing, first: {first}", stacklevel=2)
    return kept
