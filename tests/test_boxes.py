"""Boxes for predict: crops of boxes and of confident joints, the crop tracker, box files."""

import json

import numpy as np
import pytest

from da_pose.boxes import CropTracker, crop_of_box, joint_box, read_boxes
from da_pose.errors import DataError


def test_crop_of_box_is_centred_square():
    assert crop_of_box([10, 20, 40, 80], 1.25) == ((30.0, 60.0), 100.0)


def test_joint_box_uses_confident_joints_only():
    xy = np.array([[0, 0], [10, 5], [4, 20], [100, 100]], float)
    conf = np.array([0.9, 0.8, 0.5, 0.1])
    np.testing.assert_allclose(joint_box(xy, conf, 0.2, 3), [0, 0, 10, 20])
    assert joint_box(xy, conf, 0.2, 4) is None  # too few confident joints: no box


def test_tracker_smooths_and_follows_velocity():
    t = CropTracker(smooth=0.5)
    assert t.crop() is None
    t.update((100, 50), 80)
    assert t.crop() == ((100.0, 50.0), 80.0)
    t.update((120, 50), 120)  # moved 20 px right, grew
    (cx, cy), side = t.crop()
    assert side == pytest.approx(100.0)  # halfway
    assert 110 < cx <= 130 and cy == pytest.approx(50.0)  # smoothed, carried on by its velocity
    for x in range(140, 400, 20):  # a steady walk: the start crop keeps up with the animal
        t.update((x, 50), 100)
    assert t.crop()[0][0] == pytest.approx(400, abs=3)
    t.reset()
    assert t.crop() is None
    still = CropTracker(smooth=1.0)
    still.update((0, 0), 50)
    still.update((30, 0), 10)
    assert still.crop() == ((30.0, 0.0), 16.0)  # no smoothing, no velocity; min_side floor


def test_read_boxes_csv_and_coco(tmp_path):
    csv = tmp_path / "b.csv"
    csv.write_text("frame,x,y,w,h\n0,1,2,3,4\nimg_a.jpg,5,6,7,8\n")
    boxes = read_boxes(csv)
    assert set(boxes) == {"0", "img_a.jpg"} and boxes["0"].tolist() == [1, 2, 3, 4]
    coco = tmp_path / "d.json"
    coco.write_text(json.dumps({"images": [{"id": 7, "file_name": "dir/a.jpg"}],
                                "annotations": [{"image_id": 7, "bbox": [1, 1, 5, 5], "score": 0.2},
                                                {"image_id": 7, "bbox": [2, 2, 9, 9], "score": 0.8}]}))
    assert read_boxes(coco)["a.jpg"].tolist() == [2, 2, 9, 9]


@pytest.mark.parametrize("name, text, message", [
    ("b.csv", "0,1,2\n", "row 1 has 3 columns"),
    ("b.csv", "0,1,2,3,4\n0,1,2,3,4\n", "frame 0 has two boxes"),
    ("b.json", "{not json", "not a JSON file"),
    ("b.json", json.dumps([{"bbox": [0, 0, 1, 1]}]), "no image_id or file_name"),
    ("b.txt", "0,1,2,3,4", "unknown boxes file type"),
])
def test_bad_box_files(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(DataError, match=message):
        read_boxes(path)


def test_numbered_image_stems_match_however_written():
    from da_pose.boxes import _frame_key, box_keys

    # TigDog frames are 00000001.jpg: a box file may write 00000001, 1 or the file name
    keys = box_keys(0, "00000001", "00000001.jpg", video=False)
    assert _frame_key("00000001") in keys and _frame_key("1") in keys and "00000001.jpg" in keys
    assert box_keys(12, "clip_000012", "", video=True) == ("12", "clip_000012")


def test_locate_falls_back_to_the_whole_frame_when_confidence_collapses():
    """A fake model that is confident only when its crop holds the animal (at 300, 200): a tracked
    crop elsewhere collapses, and the frame starts again from the whole frame, then two passes."""
    from da_pose.predict import PredictOptions, locate

    animal = np.array([300.0, 200.0]) + np.random.default_rng(0).uniform(-20, 20, (18, 2))
    calls = []

    def fake(img, center, side):
        calls.append(side)
        inside = all(abs(animal[:, i] - center[i]).max() < side / 2 for i in range(2))
        return animal.astype(np.float32), np.full(18, 0.9 if inside else 0.05, np.float32)

    img = np.zeros((360, 480, 3), np.uint8)
    tracker = CropTracker(smooth=0.5)
    tracker.update((60, 60), 80)  # the animal has left this crop
    xy, conf, (center, side), how = locate(fake, img, None, tracker, PredictOptions())
    assert how == "two-pass" and calls[0] == 80 and calls[1] == 480 and len(calls) == 3
    assert abs(center[0] - 300) < 20 and abs(center[1] - 200) < 20
    calls.clear()
    assert locate(fake, img, None, tracker, PredictOptions())[3] == "track" and len(calls) == 1
