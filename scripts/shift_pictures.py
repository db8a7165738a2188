"""One picture per named shift for docs/shifts.md: source samples beside the shift's target frames.

    python scripts/shift_pictures.py --data data/shifts --out docs/img

``--data`` holds one generated folder per shift (``scripts/benchmark.py --shifts ...`` writes
them). Each ``shift_<name>.png`` shows the same source samples on the left (the source is the
same under every shift) and target test frames of that shift on the right, cropped around the
animal with the labelled joints drawn (da_pose.viz).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

from da_pose.data.manifest import load_domain
from da_pose.data.toy.presets import SHIFT_NAMES
from da_pose.data.transforms import apply_affine, crop_affine
from da_pose.viz import draw_skeleton, image_grid


def tiles(records, count: int, size: int, seed: int) -> list[np.ndarray]:
    """``count`` records drawn with ``seed``: crops around the animal with their joints."""
    pick = np.sort(np.random.default_rng(seed).choice(len(records), size=min(count, len(records)), replace=False))
    out = []
    for i in pick:
        rec = records[int(i)]
        image = cv2.imread(str(rec.image_path), cv2.IMREAD_COLOR)
        m = crop_affine(rec.center, rec.side if rec.side > 0 else float(max(image.shape[:2])), size)
        crop = cv2.warpAffine(image, m, (size, size), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0))
        kp = np.asarray(rec.keypoints, dtype=np.float64).copy()
        kp[:, :2] = apply_affine(m, kp[:, :2])
        out.append(draw_skeleton(crop, kp))
    return out


def picture(folder: Path, path: Path, count: int = 3, size: int = 128) -> Path:
    """Source crops | a white gap | target test crops of ``folder``, one row (BGR PNG)."""
    left = image_grid(tiles(load_domain(folder, "source", "train"), count, size, seed=0), cols=count)
    right = image_grid(tiles(load_domain(folder, "target", "test"), count, size, seed=1), cols=count)
    gap = np.full((left.shape[0], 12, 3), 255, np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.concatenate([left, gap, right], axis=1), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="data/shifts", help="one generated folder per shift")
    ap.add_argument("--out", default="docs/img")
    ap.add_argument("--shifts", nargs="+", default=list(SHIFT_NAMES))
    args = ap.parse_args(argv)
    for shift in args.shifts:
        folder = Path(args.data) / shift.replace(",", "+")
        if not (folder / "manifest.json").is_file():
            print(f"{folder}: no generated benchmark, skipped", file=sys.stderr)
            continue
        out = picture(folder, Path(args.out) / f"shift_{shift.replace(',', '+')}.png")
        print(f"wrote {out} ({out.stat().st_size // 1024} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
