"""Tiny datasets in the exact real on-disk formats, written with the project's own writers.

Each fixture is a factory: call it with a folder and a few knobs; it writes the files and
returns what it wrote, so a test can compare the loader's output with the ground truth.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from da_pose.data import coco, synthetic, tigdog

W, H = 64, 48  # tiny frames


def tigdog_frame(rng: np.random.Generator, n_visible: int) -> tuple[np.ndarray, np.ndarray]:
    """One frame of 19 landmarks with ``n_visible`` of the first 18 labelled and visible.

    Unlabelled points have coordinate 0 and visibility 0 (TigDog convention). Coordinates are
    distinct multiples of 0.5 inside the frame, so any reordering is visible.

    Shape:
        returns coords (19, 2), visibility (19,).
    """
    coords = np.zeros((19, 2))
    vis = np.zeros(19)
    labelled = rng.choice(18, size=n_visible, replace=False)
    coords[labelled, 0] = rng.integers(2, 2 * (W - 2), size=n_visible) / 2
    coords[labelled, 1] = rng.integers(2, 2 * (H - 2), size=n_visible) / 2
    vis[labelled] = 1
    coords[18] = (W / 2, H / 2)  # the 19th landmark, dropped by the loader
    vis[18] = 1
    return coords, vis


@pytest.fixture
def make_tigdog():
    """``make(root, animal, shots=[(shot_id, n_frames), ...], n_visible=...)`` -> ground truth.

    ``n_visible`` is an int or a callable ``(shot_index, frame_index) -> int``. Frames are
    numbered globally from 1 in ranges order. Returns ``{"root", "ranges", "coords": {shot:
    (F, 19, 2)}, "vis": {shot: (F, 19)}}``.
    """

    def make(root, animal="horse", shots=((1, 3), (2, 4), (5, 2)), n_visible=14, seed=0, images=True):
        root = Path(root)
        rng = np.random.default_rng(seed)
        rows, coords_by_shot, vis_by_shot = [], {}, {}
        frame = 1
        for s, (shot, count) in enumerate(shots):
            frames = [
                tigdog_frame(rng, n_visible(s, f) if callable(n_visible) else n_visible)
                for f in range(count)
            ]
            coords = np.stack([c for c, _ in frames])
            vis = np.stack([v for _, v in frames])
            tigdog.write_landmarks(tigdog.landmarks_path(root, animal, shot), coords, vis)
            if images:
                for f in range(count):
                    img = np.full((H, W, 3), 40 * (f % 5), dtype=np.uint8)
                    tigdog.write_frame(root, animal, frame + f, img, quality=80)
            rows.append((shot, frame, frame + count - 1))
            coords_by_shot[shot], vis_by_shot[shot] = coords, vis
            frame += count
        ranges = np.array(rows, dtype=np.int64)
        tigdog.write_ranges(tigdog.ranges_path(root, animal), ranges)
        return {"root": root, "ranges": ranges, "coords": coords_by_shot, "vis": vis_by_shot}

    return make


@pytest.fixture
def make_synthetic():
    """``make(root, species, n=5, vertices=40)`` -> {"root", "folder", "ids", "kpts": [(V, 3)]}.

    Registers ``species`` with vertex ids ``ids`` (18 distinct ids in range). Vertices are
    spread over and a little beyond the frame, so some joints fall outside the image.
    """

    def make(root, species="toyhorse", n=5, vertices=40, seed=0, size=(W, H)):
        rng = np.random.default_rng(seed)
        width, height = size
        ids = np.sort(rng.choice(vertices, size=18, replace=False))
        synthetic.register_species(species, ids)
        folder = synthetic.species_folder(root, species)
        all_kpts = []
        for i in range(n):
            kpts = np.zeros((vertices, 3))
            kpts[:, 0] = rng.uniform(-8, width + 8, size=vertices)
            kpts[:, 1] = rng.uniform(-6, height + 6, size=vertices)
            kpts[:, 2] = rng.integers(0, 2, size=vertices)
            img = rng.integers(0, 255, size=(height, width, 3), dtype=np.uint8)
            synthetic.write_sample(folder, f"{i:05d}", img, kpts)
            all_kpts.append(kpts)
        return {"root": Path(root), "folder": folder, "ids": ids, "kpts": all_kpts}

    return make


@pytest.fixture
def make_coco():
    """``make(folder, names, n_images=3, per_image=2)`` -> {"ann", "images", "keypoints": {ann_id: (K, 3)}}.

    Writes ``<folder>/annotations.json`` and jpgs in ``<folder>/images/``. Keypoint flags cycle
    through 0, 1, 2 so every kind appears; boxes are given explicitly.
    """

    def make(folder, names=coco.ANIMAL_POSE_KEYPOINTS, n_images=3, per_image=2, seed=0, ann_name="annotations.json"):
        folder = Path(folder)
        rng = np.random.default_rng(seed)
        k = len(names)
        images, anns, truth = [], [], {}
        for i in range(1, n_images + 1):
            name = f"img_{i:03d}.jpg"
            (folder / "images").mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(folder / "images" / name), np.full((H, W, 3), 30 * i, np.uint8))
            images.append({"id": i, "file_name": name, "width": W, "height": H})
            for j in range(per_image):
                kp = np.zeros((k, 3))
                kp[:, 0] = rng.integers(1, W - 1, size=k)
                kp[:, 1] = rng.integers(1, H - 1, size=k)
                kp[:, 2] = (np.arange(k) + j) % 3
                kp[kp[:, 2] == 0, :2] = 0
                ann_id = 10 * i + j
                box = [float(rng.integers(0, 10)), float(rng.integers(0, 10)), 30.0 + j, 20.0]
                anns.append({"id": ann_id, "image_id": i, "keypoints": kp.reshape(-1).tolist(), "bbox": box})
                truth[ann_id] = kp
        path = folder / ann_name
        coco.write_coco(path, images, anns, names, [[1, 2]])
        return {"ann": path, "images": folder / "images", "keypoints": truth, "anns": anns}

    return make
