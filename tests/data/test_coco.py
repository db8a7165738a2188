"""COCO-keypoints loader: mapping, unmapped joints, crop from bbox, built-in maps, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from da_pose.data import coco
from da_pose.data.skeleton import JOINTS, NUM_JOINTS
from da_pose.errors import ConfigError, DataError

ANIMAL_POSE_NAMES = list(coco.ANIMAL_POSE_KEYPOINTS)
AP10K_NAMES = list(coco.AP10K_KEYPOINTS)


def test_writer_emits_coco_keypoints(tmp_path, make_coco):
    made = make_coco(tmp_path)
    doc = json.loads(made["ann"].read_text())
    ann = doc["annotations"][0]
    assert len(ann["keypoints"]) == 3 * 20 and set(ann["keypoints"][2::3]) <= {0, 1, 2}
    assert ann["num_keypoints"] == sum(v > 0 for v in ann["keypoints"][2::3])
    assert ann["iscrowd"] == 0 and ann["area"] == ann["bbox"][2] * ann["bbox"][3]
    assert doc["categories"][0]["keypoints"] == ANIMAL_POSE_NAMES


def test_load_with_a_map(tmp_path, make_coco):
    made = make_coco(tmp_path)
    records = coco.load_coco(made["ann"], made["images"], coco.ANIMAL_POSE_MAP)
    assert len(records) == 6
    mapped = {s for _, s in coco.ANIMAL_POSE_MAP}
    for rec, ann in zip(records, made["anns"]):
        kp = made["keypoints"][ann["id"]]
        assert rec.keypoints.shape == (NUM_JOINTS, 3) and rec.keypoints.dtype == np.float32
        for c, s in coco.ANIMAL_POSE_MAP:
            if kp[c, 2] > 0:  # COCO v = 1 or 2: labelled
                np.testing.assert_array_equal(rec.keypoints[s], [kp[c, 0], kp[c, 1], 1])
            else:
                assert rec.keypoints[s, 2] == 0
        for s in set(range(NUM_JOINTS)) - mapped:  # no counterpart: never visible
            assert rec.keypoints[s].tolist() == [0, 0, 0]
        x, y, w, h = ann["bbox"]
        np.testing.assert_allclose(rec.center, [x + w / 2, y + h / 2])
        assert rec.side == pytest.approx(1.25 * max(w, h))
        assert rec.frame == ann["image_id"] and rec.species == "animal"
        assert rec.image_path.endswith(f"img_{ann['image_id']:03d}.jpg")


def test_unmapped_and_min_keypoints(tmp_path, make_coco):
    made = make_coco(tmp_path, per_image=1)
    only_eyes = coco.load_coco(made["ann"], made["images"], [(0, 0), (1, 1)])
    for rec in only_eyes:
        assert (rec.keypoints[2:] == 0).all()
    # keypoint flags cycle 0, 1, 2: of eyes (0, 1) exactly one is labelled
    assert all(rec.keypoints[:, 2].sum() == 1 for rec in only_eyes)
    assert coco.load_coco(made["ann"], made["images"], [(0, 0), (1, 1)], min_keypoints=2) == []


def test_identity_map_needs_matching_count(tmp_path, make_coco):
    made = make_coco(tmp_path, names=[f"j{i}" for i in range(18)])
    recs = coco.load_coco(made["ann"], made["images"], None)
    kp = made["keypoints"][made["anns"][0]["id"]]
    np.testing.assert_array_equal(recs[0].keypoints[:, 2], (kp[:, 2] > 0).astype(np.float32))
    other = make_coco(tmp_path / "b")
    with pytest.raises(ConfigError, match="20 keypoints per instance but 18 joints; its keypoint names fit the "
                                          "built-in map 'animalpose': use --data animalpose:ANN.json"):
        coco.load_coco(other["ann"], other["images"], None)
    with pytest.raises(ConfigError, match="out of range"):
        coco.load_coco(other["ann"], other["images"], [(25, 0)])


def test_crowd_is_dropped(tmp_path, make_coco):
    made = make_coco(tmp_path)
    doc = json.loads(made["ann"].read_text())
    doc["annotations"][0]["iscrowd"] = 1
    made["ann"].write_text(json.dumps(doc))
    assert len(coco.load_coco(made["ann"], made["images"], coco.ANIMAL_POSE_MAP)) == 5


def _side(name: str) -> str:
    low = name.lower()
    if low.startswith(("l_", "left")):
        return "left"
    return "right" if low.startswith(("r_", "right")) else "mid"


@pytest.mark.parametrize("pairs, names", [(coco.ANIMAL_POSE_MAP, ANIMAL_POSE_NAMES), (coco.AP10K_MAP, AP10K_NAMES)])
def test_builtin_maps_are_consistent(pairs, names):
    src = [c for c, _ in pairs]
    dst = [s for _, s in pairs]
    assert len(set(dst)) == len(dst) and len(set(src)) == len(src)
    assert max(src) < len(names) and max(dst) < NUM_JOINTS
    for c, s in pairs:
        assert _side(names[c]) == _side(JOINTS[s]), (names[c], JOINTS[s])
        # paws are hoofs, eyes are eyes, front stays front
        if "Paw" in names[c]:
            assert "hoof" in JOINTS[s]
            assert ("front" in JOINTS[s]) == ("_F_" in names[c])


# ----------------------------------------------------------------------------------- bad input


def test_missing_and_invalid_json(tmp_path):
    with pytest.raises(DataError, match="annotation file not found"):
        coco.load_coco(tmp_path / "none.json", tmp_path)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match="bad.json: not valid JSON"):
        coco.load_coco(tmp_path / "bad.json", tmp_path)


def test_json_without_keypoints(tmp_path, make_coco):
    made = make_coco(tmp_path)
    doc = json.loads(made["ann"].read_text())
    no_cat = dict(doc, categories=[{"id": 1, "name": "animal"}])
    (tmp_path / "a.json").write_text(json.dumps(no_cat))
    with pytest.raises(DataError, match="a.json: no category lists 'keypoints'"):
        coco.load_coco(tmp_path / "a.json", made["images"], coco.ANIMAL_POSE_MAP)
    no_ann = dict(doc, annotations=[{k: v for k, v in a.items() if k != "keypoints"} for a in doc["annotations"]])
    (tmp_path / "b.json").write_text(json.dumps(no_ann))
    with pytest.raises(DataError, match="b.json: no annotation has 'keypoints'"):
        coco.load_coco(tmp_path / "b.json", made["images"], coco.ANIMAL_POSE_MAP)
    (tmp_path / "c.json").write_text(json.dumps({"images": []}))
    with pytest.raises(DataError, match="c.json: no 'annotations' list"):
        coco.load_coco(tmp_path / "c.json", made["images"])


def test_one_bad_annotation_warns_or_fails_strict(tmp_path, make_coco):
    made = make_coco(tmp_path)
    doc = json.loads(made["ann"].read_text())
    doc["annotations"][1]["keypoints"] = doc["annotations"][1]["keypoints"][:-3]
    made["ann"].write_text(json.dumps(doc))
    with pytest.warns(UserWarning, match="skipped 1 annotation.*annotation 11 has 57 keypoint values"):
        records = coco.load_coco(made["ann"], made["images"], coco.ANIMAL_POSE_MAP)
    assert len(records) == 5
    with pytest.raises(DataError, match="annotation 11"):
        coco.load_coco(made["ann"], made["images"], coco.ANIMAL_POSE_MAP, strict=True)


def test_missing_image_warns_or_fails_strict(tmp_path, make_coco):
    made = make_coco(tmp_path)
    (made["images"] / "img_002.jpg").unlink()
    with pytest.warns(UserWarning, match="skipped 2 annotation"):
        records = coco.load_coco(made["ann"], made["images"], coco.ANIMAL_POSE_MAP)
    assert {r.frame for r in records} == {1, 3}
    with pytest.raises(DataError, match="img_002.jpg: image not found"):
        coco.load_coco(made["ann"], made["images"], coco.ANIMAL_POSE_MAP, strict=True)
