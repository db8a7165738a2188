"""Boxes for top-down pose on footage: read from a detector's output, or found from the model's
own confident joints and carried from frame to frame.

A box is ``(x, y, w, h)`` in frame pixels (COCO's convention); the model's input is the square
crop around it, ``side = max(w, h) * pad`` (:func:`crop_of_box`), as the training crops are
(TigDog: the joints' box x 1.5; synthetic and COCO: the object's box x 1.25).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from da_pose.errors import DataError

BOX_FORMS = ("a COCO detections JSON: [{image_id or file_name, bbox: [x, y, w, h], score}, ...]",
             "a CSV with columns frame,x,y,w,h")


def crop_of_box(box, pad: float) -> tuple[tuple[float, float], float]:
    """The square crop (centre, side) of a box ``(x, y, w, h)``: its centre, ``max(w, h) * pad``."""
    x, y, w, h = (float(v) for v in box)
    return (x + w / 2.0, y + h / 2.0), max(w, h) * pad


def joint_box(xy: np.ndarray, conf: np.ndarray, min_conf: float, min_joints: int) -> np.ndarray | None:
    """The tight box ``(x, y, w, h)`` of the joints with ``conf >= min_conf``; None when fewer
    than ``min_joints`` are that confident (the model has not found the animal).

    Shape:
        xy: (K, 2) frame pixels; conf: (K,) -> (4,) float64 or None
    """
    ok = np.asarray(conf) >= min_conf
    if ok.sum() < max(1, min_joints):
        return None
    pts = np.asarray(xy, np.float64)[ok]
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    return np.array([lo[0], lo[1], hi[0] - lo[0], hi[1] - lo[1]])


@dataclass
class CropTracker:
    """The previous frames' crop, exponentially smoothed, moved on by the smoothed velocity, as
    the next frame's starting crop (an alpha-beta tracker of the crop's centre and side).

    ``smooth`` is the weight of the newest crop (1: the last frame's crop as it is, no velocity);
    the centre's velocity is smoothed with the same weight. ``min_side`` keeps a collapsed joint
    box (all joints on one point) from shrinking the crop to nothing.
    """

    smooth: float = 0.5
    min_side: float = 16.0
    center: np.ndarray | None = None
    side: float = 0.0
    velocity: np.ndarray | None = None

    def crop(self) -> tuple[tuple[float, float], float] | None:
        if self.center is None:
            return None
        c = self.center + (self.velocity if self.velocity is not None and self.smooth < 1 else 0.0)
        return (float(c[0]), float(c[1])), self.side

    def update(self, center, side: float) -> None:
        c, s = np.asarray(center, np.float64), max(float(side), self.min_side)
        if self.center is None:
            self.center, self.side = c, s
            return
        a = self.smooth
        start = self.crop()[0]
        step = c - self.center
        self.velocity = step if self.velocity is None else a * step + (1 - a) * self.velocity
        self.center = a * c + (1 - a) * np.asarray(start)
        self.side = a * s + (1 - a) * self.side

    def reset(self) -> None:
        self.center, self.side, self.velocity = None, 0.0, None


def _check_box(box, where: str) -> np.ndarray:
    try:
        b = np.asarray([float(v) for v in box], np.float64)
    except (TypeError, ValueError):
        raise DataError(f"{where}: bbox must be 4 numbers [x, y, w, h], got {box!r}") from None
    if b.shape != (4,) or not np.isfinite(b).all() or b[2] <= 0 or b[3] <= 0:
        raise DataError(f"{where}: bbox must be 4 finite numbers [x, y, w, h] with w, h > 0, got {box!r}")
    return b


def _frame_key(value) -> str:
    """Frames are matched by name: an int (or ``"12"``) is a video frame index, a string an image
    file name or stem (``clip_000012`` names frame 12 of clip.mp4)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    key = str(value).strip()
    return str(int(key)) if key.isdigit() else key


def _coco_boxes(path: Path) -> dict[str, tuple[np.ndarray, float]]:
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not a JSON file ({exc}); expected {BOX_FORMS[0]}") from None
    names = {}
    if isinstance(data, dict):  # a COCO file: annotations, and images for file names
        names = {im.get("id"): Path(im.get("file_name", "")).name for im in data.get("images", [])
                 if isinstance(im, dict)}
        data = data.get("annotations")
    if not isinstance(data, list):
        raise DataError(f"{path}: expected {BOX_FORMS[0]}")
    best: dict[str, tuple[np.ndarray, float]] = {}
    for i, det in enumerate(data):
        where = f"{path}: detection {i}"
        if not isinstance(det, dict) or "bbox" not in det:
            raise DataError(f"{where}: expected an object with bbox and image_id or file_name")
        ref = det.get("file_name", det.get("image", names.get(det.get("image_id"), det.get("image_id"))))
        if ref is None:
            raise DataError(f"{where}: no image_id or file_name")
        score = float(det.get("score", 1.0))
        key = _frame_key(ref)
        if key not in best or score > best[key][1]:  # one animal per frame: the best detection
            best[key] = (_check_box(det["bbox"], where), score)
    return best


def _csv_boxes(path: Path) -> dict[str, tuple[np.ndarray, float]]:
    rows = [r for r in csv.reader(path.read_text().splitlines()) if r and any(c.strip() for c in r)]
    if rows and rows[0][0].strip().lower() in ("frame", "image", "file_name"):
        rows = rows[1:]
    out = {}
    for i, row in enumerate(rows, start=1):
        if len(row) < 5:
            raise DataError(f"{path}: row {i} has {len(row)} columns; expected {BOX_FORMS[1]}")
        key = _frame_key(row[0])
        if key in out:
            raise DataError(f"{path}: frame {key} has two boxes (rows {out[key][1]} and {i})")
        out[key] = (_check_box(row[1:5], f"{path}: row {i}"), i)
    return {k: (b, 1.0) for k, (b, _) in out.items()}


def read_boxes(path: str | Path) -> dict[str, np.ndarray]:
    """Frame key -> box ``(x, y, w, h)`` from a COCO detections JSON (the best-scoring detection
    of each image) or a CSV ``frame,x,y,w,h`` (an optional header row). Keys: a video frame
    index (``"0"``, 0-based) or an image's file name or stem."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"boxes file not found: {path}")
    read = _coco_boxes if path.suffix.lower() == ".json" else _csv_boxes
    if path.suffix.lower() not in (".json", ".csv"):
        raise DataError(f"{path}: unknown boxes file type; expected {' or '.join(BOX_FORMS)}")
    boxes = {k: b for k, (b, _) in read(path).items()}
    if not boxes:
        raise DataError(f"{path}: no boxes; expected {' or '.join(BOX_FORMS)}")
    return boxes


def box_keys(index: int, name: str, file_name: str, video: bool) -> tuple[str, ...]:
    """The keys a boxes file may use for one frame: a video frame's index and name
    (``clip_000012``), an image's file name and stem."""
    return tuple(_frame_key(k) for k in ((index, name) if video else (file_name, name)))


def whole_frame(width: int, height: int) -> tuple[tuple[float, float], float]:
    """The crop of the whole frame: its centre, its longer side (the rest is border)."""
    return ((width - 1) / 2.0, (height - 1) / 2.0), float(max(width, height))

