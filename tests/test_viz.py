"""Drawing: skeleton overlays land where the keypoints are; grids have the expected shapes."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from da_pose import viz
from da_pose.data.records import PoseRecord
from da_pose.data.skeleton import NUM_JOINTS
from da_pose.errors import DataError


def _keypoints(points: dict[int, tuple[float, float]]) -> np.ndarray:
    kp = np.zeros((NUM_JOINTS, 3), np.float32)
    for j, (x, y) in points.items():
        kp[j] = (x, y, 1.0)
    return kp


def test_draw_skeleton_colours_joints_by_side_and_skips_invisible():
    image = np.zeros((64, 64, 3), np.uint8)
    kp = _keypoints({0: (10, 12), 1: (50, 12), 2: (30, 40)})  # left eye, right eye, chin
    kp[3] = (40, 55, 0.0)  # left front hoof: labelled position but not visible
    out = viz.draw_skeleton(image, kp, radius=3, thickness=1)
    assert image.sum() == 0  # the input is left alone
    assert tuple(out[12, 10]) == viz.LEFT_COLOUR
    assert tuple(out[12, 50]) == viz.RIGHT_COLOUR
    assert tuple(out[40, 30]) == viz.MID_COLOUR
    assert out[55, 40].sum() == 0 and out[50:60, 35:45].sum() == 0
    # the eye-to-eye limb runs between the eyes; eye-chin limbs pass through (20, 26)
    assert out[12, 30].sum() > 0 and out[26, 20].sum() > 0
    assert out[60, 5].sum() == 0


def test_draw_skeleton_single_colour_and_other_keypoint_counts():
    image = np.full((32, 32, 3), 255, np.uint8)
    kp = np.array([[5, 5, 1], [25, 25, 1], [16, 5, 0]], np.float32)
    out = viz.draw_skeleton(image, kp, color=(0, 0, 255), limbs=[(0, 1), (1, 2)], radius=2, thickness=1)
    assert tuple(out[5, 5]) == (0, 0, 255) and tuple(out[15, 15]) == (0, 0, 255)
    assert tuple(out[5, 16]) == (255, 255, 255)


def test_image_grid_shape_and_placement():
    images = [np.full((10, 20, 3), i * 40, np.uint8) for i in range(1, 6)] + [np.full((12, 8), 250, np.uint8)]
    grid = viz.image_grid(images, cols=3, pad=2)
    assert grid.shape == (2 * 12 + 2, 3 * 20 + 2 * 2, 3) and grid.dtype == np.uint8
    assert (grid[0:10, 0:20] == 40).all() and (grid[0:10, 22:42] == 80).all()
    assert (grid[14:26, 44:52] == 250).all()  # the grey image, second row third column
    assert (grid[10:12, :] == 0).all()  # padding under the shorter first-row images
    with pytest.raises(ValueError):
        viz.image_grid([], cols=2)


def _record(path, center, side, points) -> PoseRecord:
    kp = _keypoints(points)
    return PoseRecord(str(path), kp, np.asarray(center, np.float32), float(side), np.zeros(4, np.float32))


def test_records_grid_crops_around_the_record_and_draws_keypoints(tmp_path):
    records = []
    for i in range(3):
        path = tmp_path / f"im{i}.png"
        cv2.imwrite(str(path), np.full((80, 120, 3), 30 * (i + 1), np.uint8))
        # a 40 px square centred at (60, 40) -> 80 px tile: scale 2
        records.append(_record(path, (59.5, 39.5), 40, {0: (50, 30)}))
    out = viz.records_grid(records, tmp_path / "sheet" / "grid.png", n=16, seed=0, size=80)
    assert out == tmp_path / "sheet" / "grid.png"
    grid = cv2.imread(str(out))
    assert grid.shape == (2 * 80 + 2, 2 * 80 + 2, 3)  # 3 tiles -> 2 x 2
    # keypoint (50, 30): (50 - 59.5) * 2 + 39.5 = 20.5, (30 - 39.5) * 2 + 39.5 = 20.5
    assert tuple(grid[20, 20]) == viz.LEFT_COLOUR
    assert tuple(grid[60, 60]) == (30, 30, 30)  # plain image elsewhere
    assert tuple(grid[60, 82 + 60]) == (60, 60, 60)  # second record in the second cell


def test_records_grid_samples_n_and_reports_missing_images(tmp_path):
    path = tmp_path / "a.png"
    cv2.imwrite(str(path), np.zeros((20, 20, 3), np.uint8))
    records = [_record(path, (10, 10), 20, {}) for _ in range(10)]
    grid = cv2.imread(str(viz.records_grid(records, tmp_path / "g.png", n=4, size=16)))
    assert grid.shape == (2 * 16 + 2, 2 * 16 + 2, 3)
    with pytest.raises(DataError, match="missing.png"):
        viz.records_grid([_record(tmp_path / "missing.png", (5, 5), 10, {})], tmp_path / "x.png")
    with pytest.raises(DataError):
        viz.records_grid([], tmp_path / "y.png")


def test_prediction_grid_draws_predictions_over_ground_truth(tmp_path):
    crops = [np.zeros((64, 64, 3), np.uint8) for _ in range(3)]
    preds = np.stack([_keypoints({1: (20, 20)}) for _ in range(3)])
    gts = np.stack([_keypoints({1: (44, 44)}) for _ in range(3)])
    grid = cv2.imread(str(viz.prediction_grid(crops, preds, gts, tmp_path / "p.png", cols=2)))
    assert grid.shape == (2 * 64 + 2, 2 * 64 + 2, 3)
    assert tuple(grid[20, 20]) == viz.RIGHT_COLOUR
    assert tuple(grid[44, 44]) == viz.GT_COLOUR
    with pytest.raises(ValueError):
        viz.prediction_grid(crops, preds[:2], None, tmp_path / "q.png")
