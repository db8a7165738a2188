"""Model + data -> predictions in original image pixels -> per-joint PCK.

Predictions are decoded by the shared codec in the crop frame and mapped back to the original
image with the inverse of each sample's crop affine, so every metric is computed on continuous
coordinates in one frame. See ``eval/pck.py`` for the normalisers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from da_pose.data.records import PoseRecord
from da_pose.data.transforms import apply_affine, invert_affine
from da_pose.eval.pck import bbox_normalizer, crop_normalizer, pck_summary


@dataclass
class Predictions:
    """Decoded predictions.

    Shape:
        coords: (N, K, 2) x, y in original image pixels; conf: (N, K) heatmap maxima;
        indices: (N,) dataset indices the rows belong to;
        legacy_pred, legacy_gt: (N, K, 2) the published integer peaks (``pck.legacy_peaks``) of
        the predicted maps and of the batches' target maps, for the legacy PCK (None when the
        batches carry no targets); heatmap_size: the maps' width.
    """

    coords: np.ndarray
    conf: np.ndarray
    indices: np.ndarray
    legacy_pred: np.ndarray | None = None
    legacy_gt: np.ndarray | None = None
    heatmap_size: int = 0

    def keypoints(self) -> np.ndarray:
        """(N, K, 3) x, y, confidence."""
        return np.concatenate([self.coords, self.conf[..., None]], axis=-1)


def predict_heatmaps(model, images: torch.Tensor, codec, flip_test: bool = False) -> torch.Tensor:
    """Last-stack heatmaps, averaged with the flipped image's when ``flip_test``.

    Shape: images (B, 3, S, S) -> (B, K, h, w)
    """
    hm = model(images).heatmaps[-1].float()
    if flip_test:
        hm_flip = model(torch.flip(images, dims=[3])).heatmaps[-1].float()
        hm = 0.5 * (hm + codec.flip_back(hm_flip))
    return hm


def heatmap_peaks(hm: torch.Tensor) -> np.ndarray:
    """``pck.legacy_peaks`` on the device: 1-based integer argmax, (0, 0) where the max is <= 0.

    Shape: hm (B, K, h, w) -> (B, K, 2) float64 x, y.
    """
    b, k, h, w = hm.shape
    peak, idx = hm.reshape(b, k, h * w).max(dim=-1)  # first maximum on ties, like numpy
    xy = torch.stack([idx % w + 1, idx // w + 1], dim=-1).double()
    xy[~(peak > 0)] = 0.0
    return xy.cpu().numpy()


@torch.no_grad()
def predict(model, loader: Iterable, codec, device: torch.device, flip_test: bool = False,
            progress: bool = True) -> Predictions:
    """Run ``model`` over ``loader`` (PoseDataset batches) and decode in original image pixels.

    Also keeps the published integer peaks of the predicted and target maps (``legacy_pred``,
    ``legacy_gt``) so that the legacy PCK can be computed without storing the maps.
    """
    was_training = model.training
    model.eval()
    coords, conf, indices = [], [], []
    peaks_pred, peaks_gt = [], []
    for batch in tqdm(loader, desc="predict", leave=False, disable=not progress):
        images = batch["image"].to(device, non_blocking=True)
        hm = predict_heatmaps(model, images, codec, flip_test)
        if "target" in batch:
            peaks_pred.append(heatmap_peaks(hm))
            peaks_gt.append(heatmap_peaks(batch["target"].float()))
        xy, maxval = codec.decode(hm)  # B, K, 2 in input px; B, K
        back = invert_affine(batch["affine"].to(xy.device, torch.float64))
        xy = apply_affine(back, xy.double())
        coords.append(xy.float().cpu().numpy())
        conf.append(maxval.float().cpu().numpy())
        indices.append(batch["index"].cpu().numpy())
    model.train(was_training)
    if not coords:
        k = getattr(codec, "num_joints", 0)
        return Predictions(np.zeros((0, k, 2), np.float32), np.zeros((0, k), np.float32), np.zeros(0, np.int64))
    legacy = len(peaks_pred) == len(coords)
    return Predictions(
        np.concatenate(coords), np.concatenate(conf), np.concatenate(indices).astype(np.int64),
        legacy_pred=np.concatenate(peaks_pred) if legacy else None,
        legacy_gt=np.concatenate(peaks_gt) if legacy else None,
        heatmap_size=int(hm.shape[-1]),
    )


def ground_truth(records: Sequence[PoseRecord], indices: np.ndarray | None = None):
    """Stack keypoints, crop sides and boxes of ``records`` (rows ``indices``)."""
    idx = range(len(records)) if indices is None else indices
    kpts = np.stack([records[i].keypoints for i in idx]).astype(np.float32)  # N, K, 3
    sides = np.array([records[i].side for i in idx], dtype=np.float64)
    boxes = np.stack([records[i].bbox for i in idx]).astype(np.float64)
    return kpts, sides, boxes


def pck_metrics(pred_xy: np.ndarray, records: Sequence[PoseRecord], indices: np.ndarray | None = None,
                thr: float = 0.05, keypoints: np.ndarray | None = None) -> dict[str, float]:
    """PCK with both normalisers (crop side, published; bbox max side, mmpose), visible joints only.

    ``keypoints`` (N, K, 3) replaces the records' labels (e.g. pseudo-label accuracy checks).
    """
    gt, sides, boxes = ground_truth(records, indices)
    if keypoints is not None:
        gt = keypoints
    visible = gt[..., 2] > 0
    metrics = pck_summary(pred_xy, gt[..., :2], visible, crop_normalizer(sides), thr=thr, normalizer="crop")
    metrics.update(pck_summary(pred_xy, gt[..., :2], visible, bbox_normalizer(boxes), thr=thr, normalizer="bbox"))
    return metrics


def evaluate(model, loader, records: Sequence[PoseRecord], codec, device: torch.device,
             flip_test: bool = False, prefix: str = "", progress: bool = True) -> dict[str, float]:
    """Predict over ``loader`` and return ``{prefix + "pck@0.05_crop/<joint>": percent, ...}``."""
    preds = predict(model, loader, codec, device, flip_test, progress)
    metrics = pck_metrics(preds.coords, records, preds.indices)
    return {f"{prefix}{k}": v for k, v in metrics.items()}
