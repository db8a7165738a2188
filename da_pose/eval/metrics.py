"""Every metric an evaluation reports, from one set of predictions.

:func:`dataset_metrics` returns, in one flat dict:

* ``pck@0.05_crop/...`` and ``pck@0.05_bbox/...``: PCK on continuous coordinates in the original
  image (``evaluate.pck_metrics``), percent;
* ``pck@0.05_legacy/...``: the published CC-SSL figure from the integer peaks of the predicted
  and target heatmaps (``pck.legacy_summary``), percent, for every set whose predictions carry
  the peaks (``evaluate.predict`` keeps them);
* ``oks/AP``, ``oks/AP50``, ... ``oks/AR_L``: COCO keypoint AP/AR (pycocotools, COCO's 0-1
  scale) for records read from COCO-format files, against those files' own annotations.

OKS AP on a mapped set. A prediction lives on the 18 TigDog joints; the dataset's keypoints that
the joint map carries nowhere cannot be predicted. They are scored as not labelled (v = 0) in the
ground truth, so the AP is over the mapped keypoints, with the dataset's own OKS sigmas (the
joint map's: AP-10K's published ones, the mmpose Animal-Pose ones, COCO's for people; a map file
may give ``sigmas``). An 18-keypoint file read without a map uses ``oks.TIGDOG_SIGMAS``. Every
annotation of an image that has a record is in the ground truth (so another animal in the same
image is a miss if not predicted); images without a record are left out. Categories are pooled
(one ``animal`` category: one prediction per ground-truth box, as top-down evaluation does).
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from da_pose.data import joint_maps
from da_pose.data.records import PoseRecord
from da_pose.data.skeleton import NUM_JOINTS
from da_pose.errors import DataError
from da_pose.eval import oks, pck
from da_pose.eval.evaluate import pck_metrics

OKS_PREFIX = "oks"


def dataset_metrics(preds, records: Sequence[PoseRecord], thr: float = 0.05, legacy_batch_size: int = 6,
                    oks: bool = True) -> dict[str, float]:
    """PCK (crop, bbox), legacy PCK and, for COCO-format records, OKS AP of ``preds``.

    ``preds``: :class:`~da_pose.eval.evaluate.Predictions` (rows for ``records[preds.indices]``).
    ``legacy_batch_size``: the published evaluation's batch size (the legacy figure depends on it
    and on the sample order, see ``pck.legacy_pck``).
    """
    out = dict(pck_metrics(preds.coords, records, preds.indices, thr=thr))
    if getattr(preds, "legacy_pred", None) is not None and len(preds.indices):
        out.update(pck.legacy_summary_from_peaks(
            preds.legacy_pred, preds.legacy_gt, preds.heatmap_size, thr=thr, batch_size=legacy_batch_size
        ))
    if oks:
        out.update(coco_oks_metrics(preds.coords, preds.conf, records, preds.indices))
    return out


def _sigmas_for(jm, k: int, where: str):
    if isinstance(jm, joint_maps.JointMap):
        if jm.sigmas is None:
            return None, f"{jm.label} gives no OKS sigmas (add 'sigmas' to the map file)"
        return np.asarray(jm.sigmas, dtype=np.float64), ""
    if jm is None and k == NUM_JOINTS:
        return oks.TIGDOG_SIGMAS, ""
    return None, f"{where}: a joint map of bare index pairs has no OKS sigmas (use a named map or a map file)"


def _merged_ground_truth(docs: dict, maps: dict, names: list, rows: list):
    """One COCO ground truth over the files' images that have a record, re-numbered across
    files (unmapped keypoints -> v = 0); returns it and ``(file, image id) -> new id``."""
    k = len(names)
    wanted = {(r.extra["ann_file"], int(r.frame)) for _, r in rows}
    images, anns, new_image = [], [], {}
    for f, doc in docs.items():
        mapped = np.zeros(k, bool)
        mapped[maps[f][:, 0]] = True
        for im in doc["images"]:
            if (f, im.get("id")) in wanted and (f, im["id"]) not in new_image:
                new_image[(f, im["id"])] = len(images) + 1
                images.append({"id": len(images) + 1, "file_name": im.get("file_name", ""),
                               "width": im.get("width", 0), "height": im.get("height", 0)})
        for ann in doc["annotations"]:
            key = (f, ann.get("image_id"))
            if key not in new_image or "keypoints" not in ann:
                continue
            kp = np.asarray(ann["keypoints"], dtype=np.float64).reshape(k, 3)
            kp[~mapped] = 0.0
            bbox = [float(b) for b in ann.get("bbox", [0, 0, 0, 0])]
            anns.append({
                "id": len(anns) + 1, "image_id": new_image[key], "category_id": 1,
                "keypoints": kp.reshape(-1).tolist(), "num_keypoints": int((kp[:, 2] > 0).sum()),
                "bbox": bbox, "area": float(ann.get("area", bbox[2] * bbox[3])),
                "iscrowd": int(ann.get("iscrowd", 0)),
            })
    gt = {"images": images, "annotations": anns,
          "categories": [{"id": 1, "name": "animal", "keypoints": names, "skeleton": []}]}
    from pycocotools.coco import COCO

    coco_gt = COCO()
    coco_gt.dataset = gt
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt.createIndex()
    return coco_gt, new_image


def coco_oks_metrics(coords, conf, records: Sequence[PoseRecord], indices=None) -> dict[str, float]:
    """``oks/<stat>`` of predictions against the COCO files the records were read from.

    Empty when no record comes from a COCO file; a warning and an empty result when the files
    disagree on keypoints or no sigmas are known (see the module docstring for the rules).

    Shape:
        coords: (N, 18, 2) original image pixels; conf: (N, 18); indices: (N,) rows of records.
    """
    coords = np.asarray(coords, dtype=np.float64)
    conf = np.asarray(conf, dtype=np.float64)
    indices = np.arange(len(records)) if indices is None else np.asarray(indices)
    rows = [(row, records[int(i)]) for row, i in enumerate(indices) if "ann_file" in records[int(i)].extra]
    if not rows:
        return {}
    docs: dict[str, dict] = {}
    for _, rec in rows:
        f = rec.extra["ann_file"]
        if f not in docs:
            try:
                docs[f] = json.loads(Path(f).read_bytes())
            except (OSError, ValueError) as exc:
                raise DataError(f"{f}: cannot re-read the annotation file for OKS AP ({exc})") from None
    names = sigmas = None
    maps: dict[str, np.ndarray] = {}
    for f, doc in docs.items():
        cat = next(c for c in doc["categories"] if isinstance(c, dict) and c.get("keypoints"))
        jm = next(r.extra.get("joint_map") for _, r in rows if r.extra["ann_file"] == f)
        s, why = _sigmas_for(jm, len(cat["keypoints"]), f)
        if s is None:
            warnings.warn(f"no OKS AP: {why}", stacklevel=2)
            return {}
        if names is None:
            names, sigmas = list(cat["keypoints"]), s
        elif len(cat["keypoints"]) != len(names) or not np.array_equal(s, sigmas):
            warnings.warn(f"no OKS AP: {f} has other keypoints or sigmas than {next(iter(docs))}", stacklevel=2)
            return {}
        k = len(names)
        maps[f] = (np.stack([np.arange(k), np.arange(k)], axis=1) if jm is None
                   else np.asarray(list(jm), dtype=np.int64).reshape(-1, 2))

    coco_gt, new_image = _merged_ground_truth(docs, maps, names, rows)

    # Predictions in the dataset's keypoint order; unmapped keypoints at 0 with score 0.
    n = len(rows)
    pred = np.zeros((n, k, 3), dtype=np.float64)
    scores = np.zeros(n, dtype=np.float64)
    image_ids = np.zeros(n, dtype=np.int64)
    for i, (row, rec) in enumerate(rows):
        pairs = maps[rec.extra["ann_file"]]
        pred[i, pairs[:, 0], :2] = coords[row, pairs[:, 1]]
        pred[i, pairs[:, 0], 2] = conf[row, pairs[:, 1]]
        scores[i] = conf[row, pairs[:, 1]].mean() if len(pairs) else 0.0
        image_ids[i] = new_image[(rec.extra["ann_file"], int(rec.frame))]
    stats = oks.oks_ap(pred, image_ids, 1, coco_gt, sigmas=sigmas, instance_scores=scores)
    return {f"{OKS_PREFIX}/{key}": v for key, v in stats.items()}
