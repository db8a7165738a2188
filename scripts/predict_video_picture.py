"""The picture of ``da-pose predict`` on footage (docs/img/predict_video.png).

Writes one shot of a TigDog-format target folder (JPEG frames) as an mp4 video, runs
``da-pose predict`` on it twice (the default two-pass crop with tracking, and ``--crop whole``),
and tiles the first frames of both labelled videos: the top row is the default, the bottom row
the whole frame. It prints which crop each frame used.

    python scripts/predict_video_picture.py --checkpoint runs/shifts-calib/ccssl_hg_all_s0/last.pt \\
        --frames data/shifts/all/behaviorDiscovery2.0/toyhorse --shot 5 --out docs/img/predict_video.png
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import cv2
import numpy as np

from da_pose.cli import main as da_pose
from da_pose.viz import image_grid


def write_video(frames: list[Path], path: Path, fps: float) -> tuple[int, int]:
    first = cv2.imread(str(frames[0]))
    h, w = first.shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    for f in frames:
        writer.write(cv2.imread(str(f)))
    writer.release()
    return w, h


def first_frames(video: Path, n: int, label: str) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(video))
    out = []
    while len(out) < n:
        ok, frame = cap.read()
        if not ok:
            break
        cv2.putText(frame, f"{label} {len(out)}", (6, frame.shape[0] - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
                    (255, 255, 255), 1, cv2.LINE_AA)
        out.append(frame)
    cap.release()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--frames", required=True, help="A folder of JPEG frames (TigDog layout: 00000001.jpg, ...).")
    ap.add_argument("--shot", type=int, default=0, help="Which run of --shot-length frames to use.")
    ap.add_argument("--shot-length", type=int, default=15)
    ap.add_argument("--show", type=int, default=4, help="Frames per row.")
    ap.add_argument("--fps", type=float, default=8.0)
    ap.add_argument("--scale", type=float, default=0.5, help="Size of the picture against the frames.")
    ap.add_argument("--out", default="docs/img/predict_video.png")
    args = ap.parse_args()
    files = sorted(Path(args.frames).glob("*.jpg"))[args.shot * args.shot_length:(args.shot + 1) * args.shot_length]
    if not files:
        raise SystemExit(f"no frames for shot {args.shot} in {args.frames}")
    with tempfile.TemporaryDirectory(prefix="predict_picture_") as tmp:
        video = Path(tmp) / "shot.mp4"
        write_video(files, video, args.fps)
        rows = []
        for mode in ("auto", "whole"):
            out = Path(tmp) / mode
            try:
                da_pose(["predict", "--checkpoint", args.checkpoint, str(video), "--out", str(out), "--crop", mode])
            except SystemExit as exc:
                if exc.code:
                    raise
            data = json.loads((out / "predictions.json").read_text())
            hows = [p["how"] for p in data["predictions"]]
            print(f"{mode}: crops {hows}")
            rows += first_frames(out / "shot.mp4", args.show, "two-pass + tracking" if mode == "auto" else "whole frame")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    grid = image_grid(rows, cols=args.show)
    size = (int(grid.shape[1] * args.scale), int(grid.shape[0] * args.scale))
    cv2.imwrite(args.out, cv2.resize(grid, size, interpolation=cv2.INTER_AREA), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
