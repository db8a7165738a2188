"""Drawing: skeleton overlays, image grids, dataset and prediction contact sheets.

Images are OpenCV BGR uint8 arrays; keypoints are (K, 3) x, y, visible in pixel coordinates
(integer values at pixel centres). Left joints are drawn in one colour, right joints in
another, midline joints in a third, so a left/right swap is visible at a glance.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from da_pose.data import skeleton
from da_pose.data.records import PoseRecord
from da_pose.data.transforms import apply_affine, crop_affine
from da_pose.errors import DataError

# BGR
LEFT_COLOUR = (40, 110, 255)  # orange-red
RIGHT_COLOUR = (255, 160, 30)  # blue
MID_COLOUR = (60, 220, 60)  # green
GT_COLOUR = (255, 255, 255)


def side_colours(names: Sequence[str]) -> list[tuple[int, int, int]]:
    """Colour of each joint from its name: ``left_*``, ``right_*`` or midline."""
    return [
        LEFT_COLOUR if n.startswith("left") else RIGHT_COLOUR if n.startswith("right") else MID_COLOUR
        for n in names
    ]


def draw_skeleton(
    image_bgr: np.ndarray,
    keypoints: np.ndarray,
    color: tuple[int, int, int] | None = None,
    limbs: Sequence[tuple[int, int]] = skeleton.LIMBS,
    radius: int | None = None,
    thickness: int | None = None,
    names: Sequence[str] | None = None,
) -> np.ndarray:
    """A copy of ``image_bgr`` with the visible joints and the limbs between visible joints.

    ``color`` draws everything in one colour; by default joints are coloured by side using
    ``names`` (the 18 TigDog joint names when K = 18, else all midline). A limb takes the
    colour of its side when both ends agree, else the midline colour. ``radius`` and
    ``thickness`` default to sizes proportional to the image.

    Shape:
        image_bgr: (H, W, 3) uint8; keypoints (K, 3); returns (H, W, 3) uint8.
    """
    image = np.ascontiguousarray(image_bgr, dtype=np.uint8).copy()
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    kp = np.asarray(keypoints, dtype=np.float64).reshape(-1, 3)
    h, w = image.shape[:2]
    if radius is None:
        radius = max(2, int(round(min(h, w) / 70)))
    if thickness is None:
        thickness = max(1, radius // 2)
    if names is None:
        names = skeleton.JOINTS if len(kp) == skeleton.NUM_JOINTS else [""] * len(kp)
    colours = [tuple(color)] * len(kp) if color is not None else side_colours(names)
    visible = (kp[:, 2] > 0) & np.isfinite(kp[:, :2]).all(axis=1)
    shift = 4
    pts = np.round(np.nan_to_num(kp[:, :2]) * (1 << shift)).astype(np.int64)
    for a, b in limbs:
        if a < len(kp) and b < len(kp) and visible[a] and visible[b]:
            c = colours[a] if colours[a] == colours[b] else (tuple(color) if color is not None else MID_COLOUR)
            cv2.line(image, tuple(int(v) for v in pts[a]), tuple(int(v) for v in pts[b]), c, thickness, cv2.LINE_AA, shift)
    for j in np.flatnonzero(visible):
        cv2.circle(image, tuple(int(v) for v in pts[j]), radius << shift, colours[j], -1, cv2.LINE_AA, shift)
    return image


def draw_prediction(image_bgr: np.ndarray, xy: np.ndarray, conf: np.ndarray, min_conf: float) -> np.ndarray:
    """A labelled frame: the joints with ``conf >= min_conf`` and their limbs, each joint's
    circle fading with its confidence, and a bar per joint (top left: height = confidence, in the
    joint's side colour; a grey tick at ``min_conf``), so a doubtful joint is visible at a glance.

    Shape:
        image_bgr: (H, W, 3) uint8; xy: (K, 2) pixels; conf: (K,) -> (H, W, 3) uint8
    """
    conf = np.asarray(conf, np.float64)
    kp = np.concatenate([np.asarray(xy, np.float64), (conf >= min_conf)[:, None]], axis=1)
    solid = draw_skeleton(image_bgr, kp)
    faint = draw_skeleton(image_bgr, np.concatenate([kp[:, :2], np.ones((len(kp), 1))], axis=1))
    # joints below min_conf are drawn at 35 % opacity: present, but plainly doubtful
    out = np.where(np.any(faint != image_bgr, axis=-1, keepdims=True) & ~np.any(solid != image_bgr, axis=-1,
                   keepdims=True), (0.35 * faint + 0.65 * image_bgr).astype(np.uint8), solid)
    h, w = out.shape[:2]
    bar_w, bar_h, x0, y0 = max(2, w // 160), max(12, h // 8), 4, 4
    names = skeleton.JOINTS if len(conf) == skeleton.NUM_JOINTS else [""] * len(conf)
    panel = (x0 - 2, y0 - 2, x0 + len(conf) * (bar_w + 1) + 1, y0 + bar_h + 2)
    out[panel[1]:panel[3], panel[0]:panel[2]] = (out[panel[1]:panel[3], panel[0]:panel[2]] * 0.4).astype(np.uint8)
    for j, (c, colour) in enumerate(zip(np.clip(conf, 0, 1), side_colours(names))):
        x = x0 + j * (bar_w + 1)
        top = y0 + bar_h - int(round(c * bar_h))
        cv2.rectangle(out, (x, top), (x + bar_w - 1, y0 + bar_h), colour, -1)
    tick = y0 + bar_h - int(round(min(min_conf, 1.0) * bar_h))
    cv2.line(out, (x0, tick), (panel[2] - 2, tick), (160, 160, 160), 1)
    return out


def draw_crop(image_bgr: np.ndarray, center, side: float, colour=(0, 215, 255)) -> np.ndarray:
    """The square crop the model saw, as a thin rectangle (in place; returns the image)."""
    h = side / 2.0
    p0 = (int(round(center[0] - h)), int(round(center[1] - h)))
    p1 = (int(round(center[0] + h)), int(round(center[1] + h)))
    cv2.rectangle(image_bgr, p0, p1, colour, 1, cv2.LINE_AA)
    return image_bgr


def image_grid(images: list, cols: int, pad: int = 2) -> np.ndarray:
    """Tile images row by row (``cols`` per row) on black, each cell the size of the largest.

    Shape:
        images: N arrays (H_i, W_i, 3) or (H_i, W_i) uint8; returns (rows * (H + pad) - pad,
        cols * (W + pad) - pad, 3) uint8 where H, W are the largest height and width.
    """
    if not images:
        raise ValueError("image_grid needs at least one image")
    if cols < 1:
        raise ValueError(f"cols must be >= 1, got {cols}")
    imgs = [cv2.cvtColor(im, cv2.COLOR_GRAY2BGR) if im.ndim == 2 else im for im in images]
    ch = max(im.shape[0] for im in imgs)
    cw = max(im.shape[1] for im in imgs)
    cols = min(cols, len(imgs))
    rows = math.ceil(len(imgs) / cols)
    grid = np.zeros((rows * (ch + pad) - pad, cols * (cw + pad) - pad, 3), np.uint8)
    for i, im in enumerate(imgs):
        r, c = divmod(i, cols)
        y, x = r * (ch + pad), c * (cw + pad)
        grid[y: y + im.shape[0], x: x + im.shape[1]] = im[..., :3]
    return grid


def _write_png(path: str | os.PathLike, image: np.ndarray) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, png = cv2.imencode(".png", image)
    if not ok:  # pragma: no cover - uint8 BGR always encodes
        raise DataError(f"{path}: PNG encoding failed")
    path.write_bytes(png.tobytes())
    return path


def records_grid(
    records: list[PoseRecord], path: str | os.PathLike, n: int = 16, seed: int = 0, size: int = 160
) -> Path:
    """A PNG contact sheet of ``n`` records (drawn at random with ``seed``, shown in order):
    each cropped around its centre and side, with its labelled keypoints drawn.

    Returns ``path``. DataError when there is no record or an image cannot be read.
    """
    if not records:
        raise DataError(f"{path}: no records to draw")
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(records), size=min(n, len(records)), replace=False))
    tiles = []
    for i in pick:
        rec = records[int(i)]
        image = cv2.imread(str(rec.image_path), cv2.IMREAD_COLOR)
        if image is None:
            raise DataError(f"{rec.image_path}: image not found or unreadable")
        side = rec.side if rec.side > 0 else float(max(image.shape[:2]))
        m = crop_affine(rec.center, side, size)
        crop = cv2.warpAffine(image, m, (size, size), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0))
        kp = np.asarray(rec.keypoints, dtype=np.float64).copy()
        kp[:, :2] = apply_affine(m, kp[:, :2])
        tiles.append(draw_skeleton(crop, kp))
    return _write_png(path, image_grid(tiles, cols=math.ceil(math.sqrt(len(tiles)))))


def prediction_grid(
    images_bgr: list,
    preds: np.ndarray,
    gts: np.ndarray | None,
    path: str | os.PathLike,
    cols: int = 4,
) -> Path:
    """A PNG sheet of crops with predictions (side colours) over ground truth (thin, white).

    Joints with ``pred[:, 2] > 0`` are drawn (pass confidences, or ones); ground truth draws
    its visible joints. Returns ``path``.

    Shape:
        images_bgr: N crops (H, W, 3) uint8; preds (N, K, 3); gts (N, K, 3) or None.
    """
    preds = np.asarray(preds)
    if len(images_bgr) != len(preds) or (gts is not None and len(gts) != len(preds)):
        raise ValueError(
            f"prediction_grid: {len(images_bgr)} images, {len(preds)} predictions"
            + (f", {len(gts)} ground truths" if gts is not None else "")
        )
    tiles = []
    for i, image in enumerate(images_bgr):
        h, w = image.shape[:2]
        radius = max(2, int(round(min(h, w) / 60)))
        tile = image
        if gts is not None:
            tile = draw_skeleton(tile, gts[i], color=GT_COLOUR, radius=max(1, radius // 2), thickness=1)
        tiles.append(draw_skeleton(tile, preds[i], radius=radius, thickness=max(2, radius // 2)))
    return _write_png(path, image_grid(tiles, cols=cols))


def draw_prediction_grid(records: Sequence[PoseRecord], coords: np.ndarray, indices: np.ndarray,
                         path: str | os.PathLike, n: int = 12, size: int = 192) -> None:
    """A sheet of up to ``n`` evenly spread predictions over their ground truth, each cropped
    around its record. Coordinates at -1000 (hidden joints) fall outside the crop.

    Shape:
        coords: (N, K, 2) original pixels of ``records[indices[i]]``; indices: (N,)
    """
    if len(indices) == 0:
        return
    pick = np.linspace(0, len(indices) - 1, min(n, len(indices))).astype(int)
    crops, pk, gk = [], [], []
    for row in pick:
        rec = records[int(indices[row])]
        img = cv2.imread(str(rec.image_path), cv2.IMREAD_COLOR)
        if img is None:
            continue
        affine = crop_affine(rec.center, rec.side, size)
        crops.append(cv2.warpAffine(img, affine, (size, size), flags=cv2.INTER_LINEAR))
        pts = np.concatenate([coords[row], np.ones((coords.shape[1], 1), np.float32)], axis=1)
        pts[:, :2] = apply_affine(affine, pts[:, :2])
        gt = rec.keypoints.copy()
        gt[:, :2] = apply_affine(affine, gt[:, :2])
        pk.append(pts)
        gk.append(gt)
    if crops:
        prediction_grid(crops, np.stack(pk), np.stack(gk), path, cols=4)


def confidence_histogram(confidence: np.ndarray, kept: np.ndarray, path: str | os.PathLike, title: str) -> None:
    """Histogram of pseudo-label confidences, kept and rejected joints in two colours."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    bins = np.linspace(0, max(1.0, float(confidence.max(initial=0))), 41)
    ax.hist(confidence[kept], bins=bins, alpha=0.7, label="kept", color="tab:green")
    ax.hist(confidence[~kept], bins=bins, alpha=0.7, label="rejected", color="tab:red")
    ax.set_xlabel("confidence")
    ax.set_ylabel("joints")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def pseudo_label_grid(records: Sequence[PoseRecord], keypoints: np.ndarray, kept: np.ndarray,
                      path: str | os.PathLike, n: int = 8) -> None:
    """Kept pseudo-labels in the prediction colours over the ground truth; rejected joints hidden.

    Shape:
        keypoints: (N, K, 2) original pixels, one row per record; kept: (N, K) bool
    """
    pick = np.linspace(0, len(records) - 1, min(n, len(records))).astype(int)
    shown = np.where(kept[pick, :, None], keypoints[pick], -1000.0)
    draw_prediction_grid(records, shown, pick, path, n=n)
