"""``da-pose predict``: a checkpoint on image files, folders of images and video files.

Top-down pose needs a box around the animal: given per frame (``--boxes``: a COCO detections
JSON or a CSV, :mod:`da_pose.boxes`), or found without a detector. Then a first pass on the whole
frame, a box from its confident joints (padded, squared), a second pass on that crop; in a video
the previous frames' crop, smoothed, is the next frame's starting crop, and when its confidence
collapses (fewer than ``min_joints`` joints at ``min_conf``) the frame starts again from the whole
frame. Outputs: a labelled video per video input (same fps and size; skeleton, per-joint
confidence bars, the crop), PNG overlays for images (and for video frames with ``frames=True``),
``predictions.csv`` (one row per frame x joint) and ``predictions.json``, in frame pixels.
"""

from __future__ import annotations

import csv
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from da_pose.boxes import CropTracker, box_keys, crop_of_box, joint_box, read_boxes, whole_frame
from da_pose.config import Config
from da_pose.data.loaders import input_normalisation, make_codec
from da_pose.data.skeleton import JOINTS
from da_pose.data.transforms import apply_affine, crop_affine, invert_affine
from da_pose.errors import ConfigError, DaPoseError, DataError
from da_pose.eval import report
from da_pose.eval.evaluate import predict_heatmaps
from da_pose.run import load_model
from da_pose.train.trainer import resolve_device
from da_pose.viz import draw_crop, draw_prediction

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")
CROP_MODES = ("auto", "whole")
CSV_COLUMNS = ("input", "frame", "image", "joint", "x", "y", "confidence", "crop")


@dataclass(frozen=True)
class PredictOptions:
    """How crops are found. ``crop``: auto (boxes, else two passes and tracking) or whole (the
    whole frame, as a tracker's crop would be); ``pad``: crop side / joint box side; ``box_pad``:
    crop side / given box side; ``smooth``: weight of the newest crop in the tracked one (1: none)."""

    crop: str = "auto"
    pad: float = 2.0
    box_pad: float = 1.25
    smooth: float = 0.5
    min_conf: float = 0.2
    min_joints: int = 4
    frames: bool = False  # also a PNG per video frame
    progress: bool = True

    def check(self) -> None:
        if self.crop not in CROP_MODES:
            raise ConfigError(f"--crop: unknown value '{self.crop}'; valid: {', '.join(CROP_MODES)}")
        if not (self.pad > 0 and self.box_pad > 0 and 0 < self.smooth <= 1 and self.min_joints >= 1):
            raise ConfigError("predict: pad and box_pad must be > 0, smooth in (0, 1], min_joints >= 1; got "
                              f"{self.pad}, {self.box_pad}, {self.smooth}, {self.min_joints}")


@dataclass(frozen=True)
class Source:
    """One input: a video (frames, fps, size) or a list of image files."""

    path: Path
    video: bool
    images: tuple[Path, ...] = ()
    frames: int = 0
    fps: float = 0.0
    size: tuple[int, int] = (0, 0)  # width, height

    def keys(self) -> set[str]:
        if self.video:
            return {k for i in range(self.frames) for k in box_keys(i, self.frame_name(i), "", True)}
        return {k for p in self.images for k in box_keys(0, p.stem, p.name, False)}

    def frame_name(self, index: int) -> str:
        return f"{self.path.stem}_{index:06d}" if self.video else self.images[index].stem


def _open_video(p: Path):
    import cv2

    cap = cv2.VideoCapture(str(p))
    if not cap.isOpened():
        raise DataError(f"{p}: cannot open video (damaged, or a codec OpenCV lacks)")
    return cap


def _video_source(p: Path) -> Source:
    import cv2

    cap = _open_video(p)
    n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    fps = float(cap.get(cv2.CAP_PROP_FPS)) or 25.0
    size = (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    if n <= 0:  # a container without a frame count: count by decoding
        n = 0
        while cap.grab():
            n += 1
    cap.release()
    if n <= 0 or size[0] <= 0 or size[1] <= 0:
        raise DataError(f"{p}: no frame can be read (damaged, or not a video)")
    return Source(p, True, frames=n, fps=fps, size=size)


def open_sources(inputs: Sequence[str]) -> list[Source]:
    """The inputs in order: folders give their images (sorted), video files their frame count,
    fps and size. Missing inputs are one error before any work."""
    out: list[Source] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files = tuple(sorted(x for x in p.iterdir() if x.suffix.lower() in IMAGE_SUFFIXES))
            out.append(Source(p, False, images=files, frames=len(files)))
        elif p.suffix.lower() in VIDEO_SUFFIXES and p.is_file():
            out.append(_video_source(p))
        elif p.is_file():
            out.append(Source(p, False, images=(p,), frames=1))
        else:
            raise DaPoseError(f"input not found: {p}")
    return out


def iter_frames(src: Source) -> Iterator[tuple[int, str, np.ndarray]]:
    """(index, name, BGR image) of one source."""
    import cv2

    if not src.video:
        for i, f in enumerate(src.images):
            img = cv2.imread(str(f), cv2.IMREAD_COLOR)
            if img is None:
                raise DataError(f"{f}: not a readable image (expected {', '.join(IMAGE_SUFFIXES)})")
            yield i, f.stem, img
        return
    cap = _open_video(src.path)
    i = 0
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            yield i, src.frame_name(i), frame
            i += 1
    finally:
        cap.release()
    if i == 0:
        raise DataError(f"{src.path}: no frame can be read (damaged, or not a video)")
    if i < src.frames:
        warnings.warn(f"{src.path}: {i} of {src.frames} frames could be read (the rest is damaged)", stacklevel=2)


class Predictor:
    """A model on square crops of a frame: keypoints and confidences in frame pixels."""

    def __init__(self, checkpoint_path: str, cfg: Config):
        self.device = resolve_device(cfg.device)
        self.model = load_model(checkpoint_path, cfg, self.device).eval()
        self.codec = make_codec(cfg)
        self.size = cfg.data.input_size
        self.flip = cfg.codec.flip_test
        self.mean, self.std = (np.asarray(v, np.float32) for v in input_normalisation(cfg))

    @torch.no_grad()
    def __call__(self, img: np.ndarray, center, side: float) -> tuple[np.ndarray, np.ndarray]:
        """Shape: img (H, W, 3) BGR uint8 -> xy (K, 2) frame pixels, conf (K,)."""
        import cv2

        a = crop_affine(center, side, self.size)
        rgb = cv2.cvtColor(cv2.warpAffine(img, a, (self.size, self.size), flags=cv2.INTER_LINEAR), cv2.COLOR_BGR2RGB)
        x = ((rgb.astype(np.float32) / 255.0 - self.mean) / self.std).transpose(2, 0, 1)
        hm = predict_heatmaps(self.model, torch.from_numpy(x[None]).to(self.device), self.codec, self.flip)
        xy, conf = self.codec.decode(hm)  # 1, K, 2 input pixels; 1, K
        xy = apply_affine(invert_affine(a), xy[0].double().cpu().numpy())
        return xy.astype(np.float32), conf[0].float().cpu().numpy()


def locate(pred: Predictor, img: np.ndarray, given, tracker: CropTracker, opts: PredictOptions):
    """Keypoints of one frame: ``(xy (K, 2), conf (K,), (centre, side) of the crop used, how)``.

    how: ``boxes`` (the given box), ``whole`` (the whole frame), ``two-pass`` (whole frame, then
    the crop around its confident joints) or ``track`` (the smoothed crop of earlier frames).
    """
    h, w = img.shape[:2]
    if given is not None:
        crop, how = crop_of_box(given, opts.box_pad), "boxes"
        xy, conf = pred(img, *crop)
    elif opts.crop == "whole":
        crop, how = whole_frame(w, h), "whole"
        xy, conf = pred(img, *crop)
    else:
        crop, how = tracker.crop(), "track"
        if crop is not None:
            xy, conf = pred(img, *crop)
            if (conf >= opts.min_conf).sum() < opts.min_joints:
                crop = None  # confidence collapsed: the animal left the crop, start again
                tracker.reset()  # the lost crop must not pull the new one back
        if crop is None:
            crop, how = whole_frame(w, h), "whole"
            xy, conf = pred(img, *crop)
            box = joint_box(xy, conf, opts.min_conf, opts.min_joints)
            if box is not None:
                crop, how = crop_of_box(box, opts.pad), "two-pass"
                xy, conf = pred(img, *crop)
    box = joint_box(xy, conf, opts.min_conf, opts.min_joints)
    if box is None:
        tracker.reset()
    else:
        tracker.update(*crop_of_box(box, opts.pad))
    return xy, conf, crop, how


class Outputs:
    """The files of one predict call: labelled videos, PNG overlays, the CSV and JSON tables."""

    def __init__(self, out: Path, opts: PredictOptions):
        import cv2

        self.cv2, self.out, self.opts = cv2, out, opts
        out.mkdir(parents=True, exist_ok=True)
        self.csv_file = (out / "predictions.csv").open("w", newline="")
        self.csv = csv.writer(self.csv_file)
        self.csv.writerow(CSV_COLUMNS)
        self.results: list[dict] = []
        self.videos: dict[str, dict] = {}
        self.writer = None

    def start(self, src: Source) -> None:
        if not src.video:
            return
        path = self.out / f"{src.path.stem}.mp4"
        self.writer = self.cv2.VideoWriter(str(path), self.cv2.VideoWriter_fourcc(*"mp4v"), src.fps, src.size)
        if not self.writer.isOpened():
            raise DaPoseError(f"{path}: OpenCV cannot write an mp4v video here")
        self.videos[src.path.name] = {"video": path.name, "fps": src.fps, "width": src.size[0],
                                      "height": src.size[1], "frames": 0}

    def add(self, src: Source, index: int, name: str, img: np.ndarray, result) -> None:
        xy, conf, (center, side), how = result
        drawn = draw_crop(draw_prediction(img, xy, conf, self.opts.min_conf), center, side)
        if src.video:
            self.writer.write(drawn)
            self.videos[src.path.name]["frames"] += 1
        if not src.video or self.opts.frames:
            self.cv2.imwrite(str(self.out / f"{name}.png"), drawn)
        for j, joint in enumerate(JOINTS):
            self.csv.writerow((src.path.name, index, name, joint, f"{xy[j, 0]:.2f}", f"{xy[j, 1]:.2f}",
                               f"{conf[j]:.4f}", how))
        kp = np.concatenate([xy, conf[:, None]], axis=1)
        crop = [round(float(center[0] - side / 2), 2), round(float(center[1] - side / 2), 2), round(float(side), 2)]
        self.results.append({"image": name, "input": src.path.name, "frame": index, "keypoints": kp.round(3).tolist(),
                             "crop": crop, "how": how})

    def finish_source(self) -> None:
        if self.writer is not None:
            self.writer.release()
            self.writer = None

    def close(self, checkpoint: str) -> None:
        self.finish_source()
        self.csv_file.close()
        report.write_json(self.out / "predictions.json", {
            "joints": list(JOINTS), "checkpoint": str(checkpoint), "videos": self.videos,
            "crop_convention": "crop = [x0, y0, side] of the square fed to the model, frame pixels",
            "predictions": self.results})


def _check_boxes(boxes: dict, sources: list[Source], path) -> None:
    """Every box names a frame of the inputs (a typo, or an index past the video's end, is an
    error rather than a silently unused box)."""
    known = set().union(*(s.keys() for s in sources)) if sources else set()
    unknown = sorted(k for k in boxes if k not in known)
    if unknown:
        have = "; ".join(f"{s.path.name}: frames 0-{s.frames - 1}" if s.video else f"{s.path.name}: {s.frames} images"
                         for s in sources)
        raise DataError(f"{path}: {len(unknown)} box(es) for frames no input has, e.g. '{unknown[0]}' ({have})")


def run_predict(checkpoint_path: str, cfg: Config, inputs: Sequence[str], out: Path,
                opts: PredictOptions | None = None, boxes: str | Path | None = None,
                checkpoint_ref: str | None = None) -> int:
    """Predict every frame of ``inputs`` into ``out``; returns the number of frames."""
    from tqdm import tqdm

    opts = opts or PredictOptions()
    opts.check()
    sources = open_sources(inputs)
    given = read_boxes(boxes) if boxes else {}
    _check_boxes(given, sources, boxes)
    pred = Predictor(checkpoint_path, cfg)
    outputs = Outputs(out, opts)
    total = sum(s.frames for s in sources)
    bar = tqdm(total=total, desc="predict", unit="frame", disable=not opts.progress or None, leave=False)
    n = 0
    try:
        for src in sources:
            outputs.start(src)
            tracker = CropTracker(smooth=opts.smooth)
            for index, name, img in iter_frames(src):
                file_name = "" if src.video else src.images[index].name
                box = next((given[k] for k in box_keys(index, name, file_name, src.video) if k in given), None)
                outputs.add(src, index, name, img, locate(pred, img, box, tracker, opts))
                n += 1
                bar.update()
            outputs.finish_source()
    finally:
        bar.close()
        outputs.close(checkpoint_ref or checkpoint_path)
    return n
