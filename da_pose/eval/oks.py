"""OKS AP for COCO-format keypoint sets (pycocotools), with per-dataset sigmas."""

from __future__ import annotations

import contextlib
import io
import math
import os

import numpy as np

from da_pose.data import skeleton
from da_pose.errors import ConfigError, DataError


# Default OKS sigmas for the 18 TigDog joints. TigDog has no published sigmas; each joint borrows
# the AP-10K animal sigma (Yu et al., NeurIPS 2021 datasets track) of the nearest AP-10K part:
#   eyes -> eye .025; chin -> nose .026; front hooves -> front paw .062; back hooves -> back paw
#   .089; hip (tail root) -> root of tail .035; shoulders -> shoulder .079; front elbows and front
#   knees (the carpus, the middle of the front leg) -> elbow .072; back elbows (stifle) and back
#   knees (hock) -> knee .087.
TIGDOG_SIGMAS = np.array(
    [
        0.025, 0.025,  # left_eye, right_eye
        0.026,  # chin
        0.062, 0.062, 0.089, 0.089,  # hooves: front left/right, back left/right
        0.035,  # hip (tail root)
        0.072, 0.072, 0.087, 0.087,  # knees: front left/right, back left/right
        0.079, 0.079,  # shoulders
        0.072, 0.072, 0.087, 0.087,  # elbows: front left/right, back left/right
    ],
    dtype=np.float64,
)

# AP-10K's published per-keypoint sigmas, in AP-10K's keypoint order (eyes, nose, neck, tail
# root, left front shoulder/elbow/paw, right front ..., left hip/knee/back paw, right ...).
AP10K_SIGMAS = np.array(
    [0.025, 0.025, 0.026, 0.035, 0.035, 0.079, 0.072, 0.062, 0.079, 0.072,
     0.062, 0.107, 0.087, 0.089, 0.107, 0.087, 0.089],
    dtype=np.float64,
)

OKS_STAT_NAMES = ("AP", "AP50", "AP75", "AP_M", "AP_L", "AR", "AR50", "AR75", "AR_M", "AR_L")


def _load_coco(coco_gt):
    """A pycocotools COCO object from an object or a file path (its log lines swallowed)."""
    from pycocotools.coco import COCO

    if isinstance(coco_gt, COCO):
        return coco_gt, "<COCO object>"
    path = os.fspath(coco_gt)
    if not os.path.isfile(path):
        raise DataError(f"{path}: COCO annotation file not found; expected a COCO keypoints JSON")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return COCO(path), path
    except (ValueError, KeyError, TypeError, AssertionError) as exc:
        raise DataError(f"{path}: not a COCO keypoints JSON ({exc})") from exc


def _check_ground_truth(coco_gt, category_id: int, k: int, image_ids: np.ndarray):
    """The COCO object, once the category, its keypoint count, the image ids and the
    annotations' fields fit the predictions (DataError naming the file otherwise)."""
    coco, name = _load_coco(coco_gt)
    if category_id not in coco.cats:
        raise DataError(
            f"{name}: no category id {category_id}; expected one of {sorted(coco.cats)}"
        )
    num_kpts = len(coco.cats[category_id].get("keypoints", []))
    if num_kpts != k:
        raise DataError(
            f"{name}: category {category_id} has {num_kpts} keypoints; predictions have {k}"
        )
    unknown = sorted(set(image_ids.tolist()) - set(coco.imgs))
    if unknown:
        raise DataError(f"{name}: prediction image ids {unknown[:5]} are not in the image list")
    for ann in coco.loadAnns(coco.getAnnIds(catIds=[category_id])):
        missing = [key for key in ("keypoints", "num_keypoints", "area", "bbox") if key not in ann]
        if missing:
            raise DataError(
                f"{name}: annotation {ann.get('id')} lacks {missing}; "
                "expected COCO keypoints fields keypoints, num_keypoints, area, bbox"
            )
    return coco


def oks_ap(
    pred_keypoints,
    image_ids,
    category_id: int,
    coco_gt,
    sigmas=None,
    instance_scores=None,
) -> dict[str, float]:
    """COCO keypoint AP/AR of predictions against a COCO-format ground truth (pycocotools).

    Predictions are in original image pixels and ``K`` is the category's keypoint count. The
    instance score defaults to the mean of the per-joint scores. Default sigmas: ``TIGDOG_SIGMAS``
    for 18 keypoints; any other count needs explicit ``sigmas`` (``AP10K_SIGMAS`` for AP-10K).
    Every image of the ground truth is evaluated: an instance without a prediction is a miss.

    Shape:
        pred_keypoints: (N, K, 3) x, y, score.
        image_ids: (N,) the COCO image id of each prediction.
        sigmas: (K,) or None; instance_scores: (N,) or None.
        returns: {"AP", "AP50", "AP75", "AP_M", "AP_L", "AR", "AR50", "AR75", "AR_M", "AR_L"}
            in [0, 1] (COCO's scale, not percent); NaN where COCO reports -1 (no ground truth in
            that area range).
    """
    from pycocotools.cocoeval import COCOeval

    pred = np.asarray(pred_keypoints, dtype=np.float64)
    image_ids = np.asarray(image_ids).reshape(-1)
    if pred.ndim != 3 or pred.shape[-1] != 3:
        raise ValueError(f"oks_ap: expected pred_keypoints of shape (N, K, 3), got {pred.shape}")
    n, k, _ = pred.shape
    if n == 0:
        raise ValueError("oks_ap: no predictions to evaluate")
    if image_ids.shape != (n,):
        raise ValueError(f"oks_ap: expected {n} image ids, got {image_ids.shape[0]}")
    coco = _check_ground_truth(coco_gt, category_id, k, image_ids)

    if sigmas is None:
        if k != skeleton.NUM_JOINTS:
            # 17 keypoints may be COCO humans or AP-10K animals, whose sigmas differ: no guess.
            raise ConfigError(
                f"oks_ap: no default OKS sigmas for {k} keypoints; pass sigmas of length {k} "
                "(AP10K_SIGMAS for AP-10K)"
            )
        sigmas = TIGDOG_SIGMAS
    sigmas = np.asarray(sigmas, dtype=np.float64)
    if sigmas.shape != (k,) or not (sigmas > 0).all():
        raise ConfigError(f"oks_ap: expected {k} positive sigmas, got shape {sigmas.shape}")

    if instance_scores is None:
        instance_scores = pred[..., 2].mean(axis=1)
    instance_scores = np.asarray(instance_scores, dtype=np.float64).reshape(-1)
    if instance_scores.shape != (n,):
        raise ValueError(f"oks_ap: expected {n} instance scores, got {instance_scores.shape[0]}")

    # pycocotools takes a list of result dicts; building it is the only per-instance Python step.
    results = [
        {
            "image_id": int(image_ids[i]),
            "category_id": int(category_id),
            "keypoints": pred[i].reshape(-1).tolist(),
            "score": float(instance_scores[i]),
        }
        for i in range(n)
    ]
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco.loadRes(results)
        evaluator = COCOeval(coco, coco_dt, "keypoints")
        evaluator.params.catIds = [int(category_id)]
        evaluator.params.imgIds = sorted(coco.getImgIds())
        evaluator.params.kpt_oks_sigmas = sigmas
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {
        key: (float(v) if v >= 0 else math.nan)
        for key, v in zip(OKS_STAT_NAMES, evaluator.stats)
    }
