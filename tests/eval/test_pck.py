"""PCK, legacy PCK and OKS AP on tiny hand-made cases whose answers are worked out by hand."""

import json
import math

import numpy as np
import pytest

from da_pose.data import skeleton
from da_pose.errors import ConfigError, DataError
from da_pose.eval import oks, pck

JOINTS = ("a", "b", "c", "d")
GROUPS = {"g1": (0, 1), "g2": (2, 3)}


def hand_case():
    """3 samples x 4 joints with offsets of known length (3-4-5 triangles, axis offsets).

    Distances (px), visibility (x = invisible, placed exactly on the gt so that counting it
    would make it correct):
        s0: 0, 3, 5, 2        all visible     crop side 100 (thr 5 px)  bbox max 50 (2.5 px)
        s1: 9, 15, x, 30      c invisible     crop side 200 (thr 10)    bbox max 400 (20)
        s2: 6, x, 4, 3        b invisible     crop side 100 (thr 5)     bbox max 80 (4)
    """
    offsets = np.array(
        [
            [[0, 0], [0, 3], [3, 4], [0, 2]],
            [[9, 0], [9, 12], [0, 0], [18, 24]],
            [[0, -6], [0, 0], [-4, 0], [3, 0]],
        ],
        dtype=np.float64,
    )
    gt = np.array([[[10, 20], [30, 40], [50, 60], [70, 80]]] * 3, dtype=np.float64)
    gt += np.arange(3)[:, None, None] * 100.0
    pred = gt + offsets
    visible = np.array([[1, 1, 1, 1], [1, 1, 0, 1], [1, 0, 1, 1]], dtype=bool)
    sides = np.array([100.0, 200.0, 100.0])
    bboxes = np.array([[0, 0, 50, 20], [5, 5, 100, 400], [1, 2, 80, 80]], dtype=np.float64)
    return pred, gt, visible, sides, bboxes


def test_normalizers():
    _, _, _, sides, bboxes = hand_case()
    np.testing.assert_array_equal(pck.crop_normalizer(sides), [100, 200, 100])
    np.testing.assert_array_equal(pck.bbox_normalizer(bboxes), [50, 400, 80])


def test_per_joint_crop_by_hand():
    pred, gt, visible, sides, _ = hand_case()
    per_joint, counts = pck.pck_per_joint(pred, gt, visible, pck.crop_normalizer(sides))
    # a: 0<5 T, 9<10 T, 6>=5 F; b: 3<5 T, 15>=10 F; c: 5 is not < 5 F, 4<5 T; d: T, F, T
    np.testing.assert_allclose(per_joint, [2 / 3, 1 / 2, 1 / 2, 2 / 3])
    np.testing.assert_array_equal(counts, [3, 2, 2, 3])


def test_per_joint_bbox_by_hand_differs_from_crop():
    pred, gt, visible, _, bboxes = hand_case()
    per_joint, counts = pck.pck_per_joint(pred, gt, visible, pck.bbox_normalizer(bboxes))
    # a: 0<2.5 T, 9<20 T, 6>=4 F; b: 3>=2.5 F, 15<20 T; c: 5 F, 4/80 is not < .05 F; d: T, F, T
    np.testing.assert_allclose(per_joint, [2 / 3, 1 / 2, 0.0, 2 / 3])
    np.testing.assert_array_equal(counts, [3, 2, 2, 3])


def test_summary_keys_and_values_by_hand():
    pred, gt, visible, sides, bboxes = hand_case()
    crop = pck.pck_summary(pred, gt, visible, sides, joints=JOINTS, groups=GROUPS)
    names = ("a", "b", "c", "d", "g1", "g2", "mean", "all")
    assert list(crop) == [f"pck@0.05_crop/{k}" for k in names]
    expected = {
        "a": 200 / 3, "b": 50.0, "c": 50.0, "d": 200 / 3,
        "g1": 60.0,  # pooled: (2 + 1) correct of (3 + 2) counted, not the mean 58.3 of a and b
        "g2": 60.0,
        "mean": (200 / 3 + 50 + 50 + 200 / 3) / 4,  # 58.33: each joint weighs the same
        "all": 60.0,  # 6 correct of 10 counted instances
    }
    for k, v in expected.items():
        assert crop[f"pck@0.05_crop/{k}"] == pytest.approx(v)

    box = pck.pck_summary(
        pred, gt, visible, pck.bbox_normalizer(bboxes), normalizer="bbox",
        joints=JOINTS, groups=GROUPS,
    )
    expected = {
        "a": 200 / 3, "b": 50.0, "c": 0.0, "d": 200 / 3,
        "g1": 60.0, "g2": 40.0, "mean": (200 / 3 + 50 + 0 + 200 / 3) / 4, "all": 50.0,
    }
    for k, v in expected.items():
        assert box[f"pck@0.05_bbox/{k}"] == pytest.approx(v)


def test_threshold_in_key_and_strictness():
    pred, gt, visible, sides, _ = hand_case()
    out = pck.pck_summary(pred, gt, visible, sides, thr=0.1, joints=JOINTS, groups=GROUPS)
    # Thresholds 10 / 20 / 10 px: a 0, 9, 6 all in; c 5 and 4 in; d 2 in, 30 out, 3 in.
    assert out["pck@0.1_crop/a"] == pytest.approx(100.0)
    assert out["pck@0.1_crop/c"] == pytest.approx(100.0)
    assert out["pck@0.1_crop/d"] == pytest.approx(200 / 3)
    # A distance of exactly thr x norm is wrong (strict <).
    one = np.zeros((1, 1, 2))
    at = np.array([[[5.0, 0.0]]])
    assert pck.pck_per_joint(at, one, np.ones((1, 1), bool), [100.0])[0][0] == 0.0
    assert pck.pck_per_joint(at * 0.999, one, np.ones((1, 1), bool), [100.0])[0][0] == 1.0


def test_never_visible_joint_is_nan_and_left_out_of_means():
    pred, gt, visible, sides, _ = hand_case()
    visible = visible.copy()
    visible[:, 3] = False  # joint d never visible
    per_joint, counts = pck.pck_per_joint(pred, gt, visible, sides)
    assert math.isnan(per_joint[3]) and counts[3] == 0
    groups = {"g1": (0, 1), "g2": (2, 3), "dd": (3,)}
    out = pck.pck_summary(pred, gt, visible, sides, joints=JOINTS, groups=groups)
    assert math.isnan(out["pck@0.05_crop/d"])
    assert math.isnan(out["pck@0.05_crop/dd"])
    assert out["pck@0.05_crop/g2"] == pytest.approx(50.0)  # c alone: 1 of 2
    assert out["pck@0.05_crop/mean"] == pytest.approx((200 / 3 + 50 + 50) / 3)
    assert out["pck@0.05_crop/all"] == pytest.approx(400 / 7)  # 4 of 7


def test_nothing_visible_gives_nan_everywhere_without_warnings():
    pred, gt, _, sides, _ = hand_case()
    with np.errstate(all="raise"):
        out = pck.pck_summary(pred, gt, np.zeros((3, 4), bool), sides, joints=JOINTS, groups=GROUPS)
    assert all(math.isnan(v) for v in out.values())


def test_zero_normalizer_sample_is_left_out():
    pred, gt, visible, _, bboxes = hand_case()
    bboxes = bboxes.copy()
    bboxes[1, 2:] = 0.0  # a box of a single point: sample 1 cannot be scored
    per_joint, counts = pck.pck_per_joint(pred, gt, visible, pck.bbox_normalizer(bboxes))
    np.testing.assert_array_equal(counts, [2, 1, 2, 2])
    np.testing.assert_allclose(per_joint, [1 / 2, 0.0, 0.0, 1.0])


def test_matches_an_independent_loop():
    rng = np.random.default_rng(0)
    n, k = 40, 18
    gt = rng.uniform(0, 256, (n, k, 2))
    pred = gt + rng.normal(0, 12, (n, k, 2))
    visible = rng.random((n, k)) > 0.3
    norm = rng.uniform(100, 300, n)
    per_joint, counts = pck.pck_per_joint(pred, gt, visible, norm)
    for j in range(k):
        hit = tot = 0
        for i in range(n):
            if visible[i, j]:
                tot += 1
                d = math.hypot(pred[i, j, 0] - gt[i, j, 0], pred[i, j, 1] - gt[i, j, 1])
                hit += d / norm[i] < 0.05
        assert counts[j] == tot
        assert per_joint[j] == pytest.approx(hit / tot)
    out = pck.pck_summary(pred, gt, visible, norm)
    names = (*skeleton.JOINTS, *skeleton.GROUPS, "mean", "all")
    assert set(out) == {f"pck@0.05_crop/{x}" for x in names}


def test_bad_inputs():
    pred, gt, visible, sides, _ = hand_case()
    with pytest.raises(ConfigError, match="crop"):
        pck.pck_summary(pred, gt, visible, sides, normalizer="torso", joints=JOINTS, groups=GROUPS)
    with pytest.raises(ValueError, match="visible"):
        pck.pck_per_joint(pred, gt, visible[:, :2], sides)
    with pytest.raises(ValueError, match="joint names"):
        pck.pck_summary(pred, gt, visible, sides)  # 4 joints, 18 default names


# ----------------------------------------------------------------------------------------------
# legacy PCK
# ----------------------------------------------------------------------------------------------

H = W = 64  # the published heatmap size: threshold 0.05 x 64 = 3.2 heatmap px


def peak_maps(points):
    """(N, K, 64, 64) maps with a single peak of 1 at each 0-based (x, y); None = empty map."""
    n, k = len(points), len(points[0])
    maps = np.zeros((n, k, H, W), np.float32)
    for i, row in enumerate(points):
        for j, p in enumerate(row):
            if p is not None:
                maps[i, j, p[1], p[0]] = 1.0
    return maps


def test_legacy_distance_threshold_and_skip_rules():
    # One joint per case, one sample per batch (batch_size=1) so the value is a plain count.
    gt = [[(20, 20)], [(20, 20)], [(20, 20)], [(20, 20)], [None], [(0, 30)], [(30, 0)], [(1, 1)]]
    pred = [[(23, 20)], [(23, 21)], [(22, 23)], [(24, 20)], [(5, 5)], [(0, 30)], [(30, 0)], [None]]
    pm, gm = peak_maps(pred), peak_maps(gt)
    # Case by case with batch_size=1: 3 < 3.2 T; sqrt(10)=3.16 T; sqrt(13)=3.61 F; 4 F;
    # empty gt skipped; gt in column 0 skipped; gt in row 0 skipped; empty prediction lands at
    # 0-based (-1, -1), sqrt(8)=2.83 from gt (1, 1), which counts (1-based 2 > 1): T.
    expected_counted = [1, 1, 1, 1, 0, 0, 0, 1]
    expected_hit = [1, 1, 0, 0, 0, 0, 0, 1]
    for i in range(len(gt)):
        value = pck.legacy_pck(pm[i : i + 1], gm[i : i + 1], batch_size=1)[0]
        if expected_counted[i]:
            assert value == expected_hit[i], i
        else:
            assert math.isnan(value), i
    # Pooled over the counted five with one batch: 3 of 5.
    assert pck.legacy_pck(pm, gm, batch_size=8)[0] == pytest.approx(3 / 5)


def test_legacy_uses_argmax_position_only():
    gt = peak_maps([[(10, 12)]])
    pred = np.full((1, 1, H, W), -1.0, np.float32)
    pred[0, 0, 12, 10] = 0.2  # a low peak in the right place: only its position matters
    pred[0, 0, 40, 40] = 0.1
    assert pck.legacy_pck(pred, gt)[0] == 1.0
    # A prediction map with no positive value is put at 1-based (0, 0) and is wrong here.
    assert pck.legacy_pck(np.full((1, 1, H, W), -1.0), gt)[0] == 0.0


def test_legacy_per_batch_averaging_depends_on_batch_size():
    # Joint 0: s0 correct, s1 skipped (gt in column 0), s2 correct, s3 wrong.
    # Joint 1: correct only in sample 3, skipped elsewhere (empty gt).
    gt = [[(20, 20), None], [(0, 20), None], [(20, 20), None], [(20, 20), (40, 40)]]
    pred = [[(20, 20), (1, 1)], [(0, 20), (1, 1)], [(21, 20), (1, 1)], [(30, 30), (40, 41)]]
    pm, gm = peak_maps(pred), peak_maps(gt)
    # batch_size 2: joint 0 batches [1/1, 1/2] -> 0.75 (pooled would be 2/3); joint 1 [-, 1/1] -> 1.
    np.testing.assert_allclose(pck.legacy_pck(pm, gm, batch_size=2), [0.75, 1.0])
    # batch_size 4: one batch -> the pooled 2/3.
    np.testing.assert_allclose(pck.legacy_pck(pm, gm, batch_size=4), [2 / 3, 1.0])
    # batch_size 3: batches [s0..s2], [s3]: joint 0 [2/2, 0/1] -> 0.5; the short last batch
    # weighs as much as the full one.
    np.testing.assert_allclose(pck.legacy_pck(pm, gm, batch_size=3), [0.5, 1.0])

    out = pck.legacy_summary(pm, gm, batch_size=2, joints=("p", "q"), groups={"g": (0, 1)})
    assert out["pck@0.05_legacy/p"] == pytest.approx(75.0)
    assert out["pck@0.05_legacy/q"] == pytest.approx(100.0)
    assert out["pck@0.05_legacy/g"] == pytest.approx(87.5)
    assert out["pck@0.05_legacy/mean"] == pytest.approx(87.5)
    # Headline figure: batch 0 mean over counted joints = 1.0, batch 1 = (0.5 + 1) / 2 = 0.75;
    # weighted by batch sizes 2 and 2 -> 87.5. With batch_size 3: (1.0 * 3 + 0.5 * 1) / 4 = 87.5
    # where batch 1 holds only s3: joint 0 0/1, joint 1 1/1 -> 0.5.
    assert out["pck@0.05_legacy/batch_mean"] == pytest.approx(87.5)
    out3 = pck.legacy_summary(pm, gm, batch_size=3, joints=("p", "q"), groups={"g": (0, 1)})
    assert out3["pck@0.05_legacy/batch_mean"] == pytest.approx(87.5)
    assert out3["pck@0.05_legacy/mean"] == pytest.approx(75.0)


def test_legacy_empty_batch_weighs_zero_with_its_size_as_published():
    # Two samples, batch_size 1: sample 0 has one counted, correct joint; sample 1 none at all
    # (empty target). The published headline averages the batches' means, 0 for a batch with
    # nothing counted, weighted by batch size: (1.0 * 1 + 0.0 * 1) / 2 = 50.0 (not 100.0).
    gm = peak_maps([[(20, 20)], [None]])
    out = pck.legacy_summary(gm, gm, batch_size=1, joints=("p",), groups={})
    assert out["pck@0.05_legacy/batch_mean"] == pytest.approx(50.0)
    assert out["pck@0.05_legacy/p"] == pytest.approx(100.0)  # per joint: uncounted batches left out
    assert out["pck@0.05_legacy/mean"] == pytest.approx(100.0)
    # one batch of both: one counted joint, correct -> 100
    assert pck.legacy_summary(gm, gm, batch_size=2, joints=("p",), groups={})["pck@0.05_legacy/batch_mean"] == 100.0
    # nothing counted anywhere: every batch averages 0
    empty = peak_maps([[None], [None]])
    assert pck.legacy_summary(empty, empty, batch_size=1, joints=("p",), groups={})["pck@0.05_legacy/batch_mean"] == 0.0


def test_legacy_from_peaks_equals_from_maps():
    rng = np.random.default_rng(3)
    pm = rng.random((7, 18, H, W)).astype(np.float32)
    gm = peak_maps([[(int(x), int(y)) for x, y in rng.integers(0, 64, (18, 2))] for _ in range(7)])
    from_maps = pck.legacy_summary(pm, gm, batch_size=3)
    from_peaks = pck.legacy_summary_from_peaks(pck.legacy_peaks(pm), pck.legacy_peaks(gm), W, batch_size=3)
    assert from_maps.keys() == from_peaks.keys()
    np.testing.assert_allclose(list(from_maps.values()), list(from_peaks.values()))
    with pytest.raises(ValueError, match="same shape"):
        pck.legacy_summary_from_peaks(np.zeros((2, 18, 2)), np.zeros((3, 18, 2)), 64)


def test_legacy_never_counted_joint_is_nan():
    gm = peak_maps([[(20, 20), None], [(20, 20), (0, 5)]])
    out = pck.legacy_pck(gm, gm, batch_size=6)
    assert out[0] == 1.0 and math.isnan(out[1])


# ----------------------------------------------------------------------------------------------
# OKS AP
# ----------------------------------------------------------------------------------------------


def write_coco(path, instances):
    """A COCO keypoints JSON with one category of the 18 TigDog joints.

    instances: list of (image_id, (18, 3) keypoints with COCO visibility 0/2).
    """
    images = [{"id": i, "file_name": f"{i:08d}.jpg", "width": 640, "height": 480} for i in (1, 2)]
    anns = []
    for ann_id, (image_id, kp) in enumerate(instances, start=1):
        labelled = kp[:, 2] > 0
        x0, y0 = kp[labelled, :2].min(axis=0)
        x1, y1 = kp[labelled, :2].max(axis=0)
        anns.append(
            {
                "id": ann_id,
                "image_id": image_id,
                "category_id": 1,
                "keypoints": kp.reshape(-1).tolist(),
                "num_keypoints": int(labelled.sum()),
                "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                "area": float((x1 - x0) * (y1 - y0)),
                "iscrowd": 0,
            }
        )
    cats = [{"id": 1, "name": "horse", "keypoints": list(skeleton.JOINTS), "skeleton": []}]
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path


@pytest.fixture
def coco_case(tmp_path):
    rng = np.random.default_rng(3)
    instances = []
    for image_id, (cx, cy) in ((1, (200, 200)), (1, (450, 260)), (2, (320, 240))):
        kp = np.zeros((18, 3))
        kp[:, 0] = cx + rng.uniform(-80, 80, 18)
        kp[:, 1] = cy + rng.uniform(-60, 60, 18)
        kp[:, 2] = 2
        kp[rng.choice(18, 3, replace=False)] = 0  # three unlabelled joints: all zero in COCO
        instances.append((image_id, kp))
    path = write_coco(tmp_path / "gt.json", instances)
    pred = np.stack([kp for _, kp in instances]).astype(np.float64)
    pred[..., 2] = 1.0  # scores
    return path, pred, np.array([i for i, _ in instances])


def test_oks_ap_perfect_is_one_and_perturbed_is_less(coco_case):
    path, pred, image_ids = coco_case
    perfect = oks.oks_ap(pred, image_ids, 1, path)
    assert perfect["AP"] == pytest.approx(1.0)
    assert perfect["AP50"] == pytest.approx(1.0) and perfect["AR"] == pytest.approx(1.0)

    from pycocotools.coco import COCO

    noisy = pred.copy()
    noisy[..., :2] += np.random.default_rng(0).normal(0, 12, noisy[..., :2].shape)
    worse = oks.oks_ap(noisy, image_ids, 1, COCO(str(path)))  # a COCO object works too
    assert 0.0 <= worse["AP"] < 1.0
    # Wider sigmas forgive the same error more.
    wider = oks.oks_ap(noisy, image_ids, 1, path, sigmas=oks.TIGDOG_SIGMAS * 4)
    assert wider["AP"] >= worse["AP"] and wider["AR"] > worse["AR"]


def test_oks_ap_errors(coco_case, tmp_path):
    path, pred, image_ids = coco_case
    with pytest.raises(DataError, match="not found"):
        oks.oks_ap(pred, image_ids, 1, tmp_path / "missing.json")
    with pytest.raises(DataError, match="keypoints"):
        oks.oks_ap(pred[:, :17], image_ids, 1, path)
    with pytest.raises(DataError, match="image ids"):
        oks.oks_ap(pred, image_ids + 10, 1, path)
    with pytest.raises(DataError, match="category"):
        oks.oks_ap(pred, image_ids, 7, path)
    with pytest.raises(ConfigError, match="sigmas"):
        oks.oks_ap(pred, image_ids, 1, path, sigmas=np.ones(17))
