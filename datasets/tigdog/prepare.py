"""Pre-crop TigDog frames and write the split files (optional speed step).

    python datasets/tigdog/prepare.py --root behaviorDiscovery2.0 --animal horse --out prepared/horse

Writes into --out:
  train_idxs_by_video.npy, valid_idxs_by_video.npy  positions in the published numbering (see
      da_pose.data.tigdog): from --split-file (a published train file) or a seeded split by video
  crops/%08d.jpg         square crops (--size px) centred on the published crop box (1.5 x)
  crops/annotations.npz  frame, video (N,), keypoints (N, 18, 3) in crop pixels, center (N, 2),
                         side (N,) in original pixels
Skip the crops with --no-crops. The loaders read the original frames; crops are for quick looks
and for pipelines that want small files.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

from da_pose.fileio import write_bytes_atomic
from da_pose.data import tigdog
from da_pose.errors import DaPoseError


def crop_matrix(center: np.ndarray, side: float, size: int) -> np.ndarray:
    """2x3 affine taking the square (center, side) onto a size x size image.

    Pixel centres at integers on both sides: the crop's edges cx +- side/2 map to -0.5 and
    size - 0.5, so x_out = (x_in - cx) * size / side + size / 2 - 0.5.
    """
    a = size / side
    return np.array(
        [[a, 0.0, size / 2 - 0.5 - a * center[0]], [0.0, a, size / 2 - 0.5 - a * center[1]]],
        dtype=np.float64,
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", required=True, help="behaviorDiscovery2.0 folder")
    p.add_argument("--animal", required=True, help="horse, tiger, ...")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--size", type=int, default=256, help="crop side in pixels (published 256)")
    p.add_argument("--seed", type=int, default=0, help="split-by-video seed")
    p.add_argument("--test-fraction", type=float, default=0.2, help="share of shots in test")
    p.add_argument("--split-file", help="published train_idxs_by_video.npy to copy instead")
    p.add_argument("--no-crops", action="store_true", help="write the split files only")
    args = p.parse_args(argv)
    out = Path(args.out)
    try:
        records = tigdog.load_tigdog(args.root, args.animal, split="all")
        n = len(records)
        if args.split_file:  # published numbering: keep the positions of the frames present
            train = [r.extra["position"] for r in
                     tigdog.load_tigdog(args.root, args.animal, "train", split_file=args.split_file)]
            test = [r.extra["position"] for r in
                    tigdog.load_tigdog(args.root, args.animal, "test", split_file=args.split_file)]
        else:
            train, test = tigdog.split_by_video(records, args.test_fraction, args.seed)
        tigdog.write_split_files(out, train, test)
        print(f"{n} frames: {len(train)} train, {len(test)} test -> {out}")
        if args.no_crops:
            return 0
        kps = np.zeros((n, 18, 3), dtype=np.float32)
        for i, rec in enumerate(records):
            image = cv2.imread(rec.image_path, cv2.IMREAD_COLOR)
            if image is None:
                raise DaPoseError(f"{rec.image_path}: cannot decode image")
            m = crop_matrix(rec.center, rec.side, args.size)
            crop = cv2.warpAffine(image, m, (args.size, args.size), flags=cv2.INTER_LINEAR)
            write_bytes_atomic(out / "crops" / f"{rec.frame:08d}.jpg", cv2.imencode(".jpg", crop)[1].tobytes())
            kps[i, :, :2] = rec.keypoints[:, :2] @ m[:, :2].T + m[:, 2]
            kps[i, :, 2] = rec.keypoints[:, 2]
        np.savez(
            out / "crops" / "annotations.npz",
            frame=np.array([r.frame for r in records], dtype=np.int64),
            video=np.array([r.video for r in records], dtype=np.int64),
            keypoints=kps,
            center=np.stack([r.center for r in records]) if n else np.zeros((0, 2), np.float32),
            side=np.array([r.side for r in records], dtype=np.float32),
        )
    except DaPoseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
