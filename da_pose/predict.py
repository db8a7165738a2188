"""``da-pose predict``: a checkpoint on image files, folders of images and video files; skeleton
overlays and every keypoint (original pixels) in ``predictions.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from da_pose.config import Config
from da_pose.data.loaders import input_normalisation, make_codec
from da_pose.data.skeleton import JOINTS
from da_pose.data.transforms import apply_affine, crop_affine, invert_affine
from da_pose.errors import DaPoseError
from da_pose.eval import report
from da_pose.eval.evaluate import predict_heatmaps
from da_pose.run import load_model
from da_pose.train.trainer import resolve_device
from da_pose.viz import draw_skeleton

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")


def _iter_frames(inputs: Sequence[str]):
    """(name, BGR image) for image files, folders of images and video files."""
    import cv2

    for item in inputs:
        p = Path(item)
        if p.is_dir():
            for f in sorted(x for x in p.iterdir() if x.suffix.lower() in IMAGE_SUFFIXES):
                yield from _iter_frames([str(f)])
        elif p.suffix.lower() in VIDEO_SUFFIXES and p.is_file():
            cap = cv2.VideoCapture(str(p))
            if not cap.isOpened():
                raise DaPoseError(f"{p}: cannot open video")
            i = 0
            while True:
                ok, frame = cap.read()
                if not ok:
                    break
                yield f"{p.stem}_{i:06d}", frame
                i += 1
            cap.release()
        elif p.is_file():
            img = cv2.imread(str(p), cv2.IMREAD_COLOR)
            if img is None:
                raise DaPoseError(f"{p}: not a readable image (expected {', '.join(IMAGE_SUFFIXES)})")
            yield p.stem, img
        else:
            raise DaPoseError(f"input not found: {p}")


@torch.no_grad()
def run_predict(checkpoint_path: str, cfg: Config, inputs: Sequence[str], out: Path, batch_size: int | None = None) -> int:
    """Whole-frame predictions (the animal is assumed to fill the frame, as in a tracker's crop):
    skeleton overlays as PNG and all keypoints in ``predictions.json`` (original pixels)."""
    import cv2

    batch_size = batch_size or cfg.train.eval_batch_size
    device = resolve_device(cfg.device)
    model = load_model(checkpoint_path, cfg, device).eval()
    codec = make_codec(cfg)
    size = cfg.data.input_size
    mean, std = (np.asarray(v, np.float32) for v in input_normalisation(cfg))
    out.mkdir(parents=True, exist_ok=True)
    results = []
    pending: list[tuple[str, np.ndarray, np.ndarray]] = []

    def flush():
        if not pending:
            return
        crops = []
        for _, img, a in pending:
            rgb = cv2.cvtColor(cv2.warpAffine(img, a, (size, size), flags=cv2.INTER_LINEAR), cv2.COLOR_BGR2RGB)
            crops.append(((rgb.astype(np.float32) / 255.0 - mean) / std).transpose(2, 0, 1))
        x = torch.from_numpy(np.stack(crops)).to(device)
        hm = predict_heatmaps(model, x, codec, cfg.codec.flip_test)
        xy, conf = codec.decode(hm)
        affines = torch.from_numpy(np.stack([a for _, _, a in pending])).to(xy.device, torch.float64)
        xy = apply_affine(invert_affine(affines), xy.double()).float().cpu().numpy()
        conf = conf.float().cpu().numpy()
        for (name, img, _), pts, c in zip(pending, xy, conf):
            kp = np.concatenate([pts, c[:, None]], axis=1)
            vis = kp.copy()
            vis[:, 2] = (c > 0.1).astype(np.float32)
            cv2.imwrite(str(out / f"{name}.png"), draw_skeleton(img.copy(), vis))
            results.append({"image": name, "keypoints": kp.round(3).tolist()})
        pending.clear()

    for name, img in _iter_frames(inputs):
        h, w = img.shape[:2]
        a = crop_affine(((w - 1) / 2.0, (h - 1) / 2.0), float(max(w, h)), size)
        pending.append((name, img, a))
        if len(pending) >= batch_size:
            flush()
    flush()
    report.write_json(out / "predictions.json", {"joints": list(JOINTS), "checkpoint": str(checkpoint_path),
                                                 "predictions": results})
    return len(results)
