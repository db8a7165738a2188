"""dataset_metrics: PCK (crop, bbox), legacy PCK and OKS AP from one set of predictions; OKS AP
on the real AP-10K and Animal-Pose files with their own sigmas."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from da_pose.data import coco, manifest
from da_pose.eval import pck
from da_pose.eval.evaluate import Predictions, heatmap_peaks
from da_pose.eval.metrics import coco_oks_metrics, dataset_metrics

REAL = Path(__file__).resolve().parents[2].parent / "shared" / "reference" / "real" / "coco"
needs_real = pytest.mark.skipif(not REAL.is_dir(), reason=f"{REAL} absent (real reference files not mounted)")
SPECS = {"ap10k": REAL / "ap10k" / "test_ap10k.json", "animalpose": REAL / "animalpose" / "test_animalpose.json"}


def _perfect(records) -> Predictions:
    kp = np.stack([r.keypoints for r in records])
    return Predictions(kp[..., :2].copy(), np.where(kp[..., 2] > 0, 0.9, 0.1), np.arange(len(records)))


@needs_real
@pytest.mark.parametrize("kind", ["ap10k", "animalpose"])
def test_oks_ap_on_real_files(kind):
    records = manifest.parse_data_spec(f"{kind}:{SPECS[kind]}")
    preds = _perfect(records)
    m = dataset_metrics(preds, records)
    assert m["oks/AP"] == pytest.approx(1.0) and m["oks/AR"] == pytest.approx(1.0)
    assert m["pck@0.05_crop/mean"] == 100.0 and m["pck@0.05_bbox/all"] == 100.0
    assert not any(k.startswith("pck@0.05_legacy") for k in m)  # no peaks in these predictions
    # move every mapped joint by 3 % of the box: OKS AP drops, PCK@0.05 stays
    off = preds.coords + 0.03 * np.array([r.extra["object_bbox"][2] for r in records])[:, None, None]
    worse = coco_oks_metrics(off, preds.conf, records)
    assert worse["oks/AP"] < 1.0


@needs_real
def test_oks_uses_the_dataset_sigmas_and_ignores_unmapped_keypoints():
    records = manifest.parse_data_spec(f"ap10k:{SPECS['ap10k']}")
    preds = _perfect(records)
    # AP-10K's nose, neck, hips, knees are labelled in the file but unmapped: still AP 1.0
    doc = json.loads(SPECS["ap10k"].read_text())
    assert all(a["keypoints"][2 * 3 + 2] > 0 for a in doc["annotations"])  # nose labelled
    assert coco_oks_metrics(preds.coords, preds.conf, records)["oks/AP"] == pytest.approx(1.0)
    # the same error hurts more with small sigmas (eyes .025) than large ones (paws .089)
    eye, paw = 0, 3
    e1, e2 = preds.coords.copy(), preds.coords.copy()
    e1[:, eye] += 60.0
    e2[:, paw] += 60.0
    ap_eye = coco_oks_metrics(e1, preds.conf, records)["oks/AR"]
    ap_paw = coco_oks_metrics(e2, preds.conf, records)["oks/AR"]
    assert ap_eye < ap_paw


def _identity_file(tmp_path, n=3):
    import cv2

    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    images, anns = [], []
    for i in range(1, n + 1):
        cv2.imwrite(str(tmp_path / "images" / f"{i}.jpg"), np.zeros((60, 80, 3), np.uint8))
        images.append({"id": i, "file_name": f"{i}.jpg", "width": 80, "height": 60})
        kp = np.stack([rng.integers(5, 75, 18), rng.integers(5, 55, 18), np.full(18, 2)], axis=1)
        anns.append({"id": i, "image_id": i, "keypoints": kp.reshape(-1).tolist(), "bbox": [2, 2, 76, 56],
                     "area": 76.0 * 56})
    ann = tmp_path / "ann.json"
    coco.write_coco(ann, images, anns, [f"j{i}" for i in range(18)], [[1, 2]])
    return {"ann": ann, "images": tmp_path / "images"}


def test_identity_file_uses_tigdog_sigmas_and_legacy_from_peaks(tmp_path):
    made = _identity_file(tmp_path)
    records = coco.load_coco(made["ann"], made["images"])
    kp = np.stack([r.keypoints for r in records])
    maps = np.zeros((len(records), 18, 64, 64), np.float32)
    maps[:, :, 20, 20] = 1.0
    peaks = heatmap_peaks(torch.from_numpy(maps))
    np.testing.assert_array_equal(peaks, pck.legacy_peaks(maps))
    preds = Predictions(kp[..., :2].copy(), np.full(kp.shape[:2], 0.8), np.arange(len(records)),
                        legacy_pred=peaks, legacy_gt=peaks, heatmap_size=64)
    m = dataset_metrics(preds, records)
    assert m["oks/AP"] == pytest.approx(1.0)
    assert m["pck@0.05_legacy/mean"] == 100.0 and m["pck@0.05_legacy/batch_mean"] == 100.0
    # bare pairs have no sigmas: PCK still, OKS left out with a warning
    records = coco.load_coco(made["ann"], made["images"], [(i, i) for i in range(18)])
    with pytest.warns(UserWarning, match="no OKS AP: .*bare index pairs"):
        m = dataset_metrics(preds, records)
    assert "oks/AP" not in m and m["pck@0.05_crop/all"] == 100.0


def test_non_coco_records_have_no_oks():
    from da_pose.data.records import PoseRecord

    kp = np.concatenate([np.random.default_rng(1).uniform(10, 90, (18, 2)), np.ones((18, 1))], 1).astype(np.float32)
    records = [PoseRecord("x.jpg", kp, np.array([50, 50], np.float32), 120.0, np.array([10, 10, 80, 80], np.float32))]
    m = dataset_metrics(_perfect(records), records)
    assert not any(k.startswith("oks/") for k in m) and not math.isnan(m["pck@0.05_crop/mean"])
