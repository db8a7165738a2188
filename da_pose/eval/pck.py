"""Keypoint metrics as pure functions: per-joint PCK, the published legacy PCK, and OKS AP.

Three metrics, deliberately kept apart because their numbers are not interchangeable:

* ``pck_per_joint`` / ``pck_summary``: distance between continuous predicted and ground-truth
  coordinates divided by a per-sample normaliser, correct if strictly below ``thr``; visible
  joints only. Two normalisers are named in every metric key:

  - ``crop`` (the CC-SSL lineage's convention, Mu et al. CVPR 2020): the side of the square crop.
    Coordinates may be given in the original image with the crop side in original pixels, or in
    the model-input frame with the side equal to the input size; the crop is a similarity
    transform, so the ratio is the same. In a 256 x 256 crop, 0.05 is 12.8 px.
  - ``bbox`` (the mmpose convention): ``max(w, h)`` of the tight box of the labelled joints.
    A TigDog crop side is 1.5 x the longer box side, so ``bbox`` is the stricter of the two.

* ``legacy_pck`` / ``legacy_summary``: the figure the published CC-SSL code reports (integer
  argmax of predicted and target heatmaps, per-batch ratios); kept for comparing with published
  tables, with its quirks reproduced on purpose and listed in its docstring.

* ``oks_ap``: COCO keypoint AP via pycocotools, for COCO-format sets (Animal-Pose, AP-10K).

Metric keys are ``pck@{thr:g}_{normalizer}/{joint|group|mean|all}``, values in percent.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from da_pose.data import skeleton
from da_pose.errors import ConfigError


# ----------------------------------------------------------------------------------------------
# Normalisers
# ----------------------------------------------------------------------------------------------


def crop_normalizer(sides) -> np.ndarray:
    """Per-sample PCK normaliser of the CC-SSL lineage: the crop side.

    Shape:
        sides: (N,) crop side per sample, in the same unit as the coordinates.
        returns: (N,) float64.
    """
    sides = np.asarray(sides, dtype=np.float64)
    if sides.ndim != 1:
        raise ValueError(f"crop_normalizer: expected sides of shape (N,), got {sides.shape}")
    return sides


def bbox_normalizer(bboxes) -> np.ndarray:
    """Per-sample PCK normaliser of mmpose: ``max(w, h)`` of an ``x0, y0, w, h`` box.

    Shape:
        bboxes: (N, 4) x0, y0, w, h.
        returns: (N,) float64.
    """
    bboxes = np.asarray(bboxes, dtype=np.float64)
    if bboxes.ndim != 2 or bboxes.shape[1] != 4:
        raise ValueError(f"bbox_normalizer: expected bboxes of shape (N, 4), got {bboxes.shape}")
    return np.maximum(bboxes[:, 2], bboxes[:, 3])


# Plain dict: the names that may appear in a metric key, and how each is computed.
NORMALIZERS = {"crop": crop_normalizer, "bbox": bbox_normalizer}


def metric_prefix(thr: float, normalizer: str) -> str:
    """The key prefix ``pck@{thr:g}_{normalizer}`` shared by every PCK metric name."""
    return f"pck@{thr:g}_{normalizer}"


# ----------------------------------------------------------------------------------------------
# PCK on continuous coordinates
# ----------------------------------------------------------------------------------------------


def _check_inputs(pred, gt, visible, norm):
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    visible = np.asarray(visible)
    norm = np.asarray(norm, dtype=np.float64)
    if pred.ndim != 3 or pred.shape[-1] not in (2, 3):
        raise ValueError(f"pck: expected pred of shape (N, K, 2), got {pred.shape}")
    if gt.shape[:2] != pred.shape[:2] or gt.ndim != 3 or gt.shape[-1] not in (2, 3):
        raise ValueError(f"pck: expected gt of shape {pred.shape[:2] + (2,)}, got {gt.shape}")
    if visible.shape != pred.shape[:2]:
        raise ValueError(f"pck: expected visible of shape {pred.shape[:2]}, got {visible.shape}")
    if norm.shape != pred.shape[:1]:
        raise ValueError(f"pck: expected norm of shape {pred.shape[:1]}, got {norm.shape}")
    # Only x, y take part; a third column (score or visibility) is ignored.
    return pred[..., :2], gt[..., :2], visible.astype(bool), norm


def _hits_and_valid(pred, gt, visible, norm, thr):
    """Boolean (N, K) arrays: counted (visible with a usable normaliser) and correct."""
    pred, gt, visible, norm = _check_inputs(pred, gt, visible, norm)
    # A sample whose normaliser is zero, negative or not finite (a box of one visible joint, say)
    # cannot be scored; like mmpose, its joints are left out rather than divided by zero.
    usable = np.isfinite(norm) & (norm > 0)  # N
    valid = visible & usable[:, None]  # N, K
    safe_norm = np.where(usable, norm, 1.0)
    dist = np.sqrt(((pred - gt) ** 2).sum(axis=-1)) / safe_norm[:, None]  # N, K
    # Strict "<" as in FACTS section 6; a NaN prediction compares False and counts as wrong.
    hits = (dist < thr) & valid  # N, K
    return hits, valid


def _ratio(num, den):
    """num / den with NaN where den == 0 (a joint or group with no counted instance)."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def pck_per_joint(pred, gt, visible, norm, thr: float = 0.05):
    """Per-joint PCK: the share of visible instances with ``||pred - gt|| / norm < thr``.

    The comparison is strict (``<``): a joint at exactly ``thr x norm`` is wrong. Joints that are
    not visible are not counted; samples with a normaliser <= 0 or not finite are not counted.
    A prediction with NaN coordinates is counted and wrong.

    Shape:
        pred: (N, K, 2) predicted x, y (a third column is ignored).
        gt: (N, K, 2) ground-truth x, y, same frame and unit as ``pred``.
        visible: (N, K) bool, True where the joint is labelled and visible.
        norm: (N,) per-sample normaliser (``crop_normalizer`` or ``bbox_normalizer``).
        returns: per_joint (K,) float64 in [0, 1], NaN where a joint has no counted instance;
            counts (K,) int64, the number of counted instances per joint.
    """
    hits, valid = _hits_and_valid(pred, gt, visible, norm, thr)
    counts = valid.sum(axis=0)  # K
    return _ratio(hits.sum(axis=0), counts), counts.astype(np.int64)


def _nanmean(values) -> float:
    values = np.asarray(values, dtype=np.float64)
    finite = ~np.isnan(values)
    return float(values[finite].mean()) if finite.any() else math.nan


def _check_names(num_joints: int, joints: Sequence[str], groups: Mapping[str, Sequence[int]]):
    if len(joints) != num_joints:
        raise ValueError(f"pck: {num_joints} joints in the arrays but {len(joints)} joint names")
    for name, members in groups.items():
        if any(not 0 <= int(j) < num_joints for j in members):
            raise ValueError(f"pck: group {name!r} has joint indices outside 0..{num_joints - 1}")


def pck_summary(
    pred,
    gt,
    visible,
    norm,
    thr: float = 0.05,
    normalizer: str = "crop",
    joints: Sequence[str] = skeleton.JOINTS,
    groups: Mapping[str, Sequence[int]] = skeleton.GROUPS,
) -> dict[str, float]:
    """PCK per joint, per group, mean and pooled, in PERCENT, keyed ``pck@{thr:g}_{normalizer}/``.

    * ``<prefix>/<joint>``: ``pck_per_joint`` x 100 (NaN where never visible).
    * ``<prefix>/<group>``: pooled over the counted instances of the group's joints (a group's
      correct count over its counted instances, not the mean of its joints' values).
    * ``<prefix>/mean``: mean of the per-joint values over the joints that have any counted
      instance, as the published per-joint tables do (each joint weighs the same).
    * ``<prefix>/all``: pooled over every counted joint instance (each instance weighs the same).

    ``normalizer`` only names the convention in the keys: ``norm`` must have been computed with
    the matching function of ``NORMALIZERS``.

    Shape:
        pred, gt: (N, K, 2); visible: (N, K) bool; norm: (N,).
    """
    if normalizer not in NORMALIZERS:
        raise ConfigError(
            f"unknown PCK normalizer {normalizer!r}; expected one of {sorted(NORMALIZERS)}"
        )
    hits, valid = _hits_and_valid(pred, gt, visible, norm, thr)
    _check_names(hits.shape[1], joints, groups)
    correct = hits.sum(axis=0)  # K
    counts = valid.sum(axis=0)  # K
    per_joint = _ratio(correct, counts) * 100.0  # K

    prefix = metric_prefix(thr, normalizer)
    out = {f"{prefix}/{name}": float(v) for name, v in zip(joints, per_joint)}
    for name, members in groups.items():
        idx = np.asarray(members, dtype=np.int64)
        out[f"{prefix}/{name}"] = float(_ratio(correct[idx].sum(), counts[idx].sum()) * 100.0)
    out[f"{prefix}/mean"] = _nanmean(per_joint)
    out[f"{prefix}/all"] = float(_ratio(correct.sum(), counts.sum()) * 100.0)
    return out


# ----------------------------------------------------------------------------------------------
# The published CC-SSL lineage's PCK on heatmaps
# ----------------------------------------------------------------------------------------------

LEGACY = "legacy"


def _legacy_argmax(heatmaps: np.ndarray) -> np.ndarray:
    """Integer argmax of each map in the published 1-based convention.

    The published code turns the flat argmax into 1-based column and row, then sets both to 0
    when the map's maximum is not positive (an empty or all-negative map). numpy's argmax takes
    the first maximum on ties.

    Shape:
        heatmaps: (N, K, h, w).
        returns: (N, K, 2) float64 x, y (1-based; 0, 0 for a map whose maximum is <= 0).
    """
    n, k, h, w = heatmaps.shape
    flat = heatmaps.reshape(n, k, h * w)  # N, K, h*w
    idx = flat.argmax(axis=-1)  # N, K
    peak = np.take_along_axis(flat, idx[..., None], axis=-1)[..., 0]  # N, K
    xy = np.stack([idx % w + 1, idx // w + 1], axis=-1).astype(np.float64)  # N, K, 2
    xy[~(peak > 0)] = 0.0
    return xy


def legacy_peaks(heatmaps) -> np.ndarray:
    """The published integer argmax of each map (1-based; (0, 0) for a map whose maximum is <= 0).

    What the legacy PCK needs of a heatmap; an evaluation over many samples keeps these (N, K, 2)
    peaks per batch instead of the maps.

    Shape:
        heatmaps: (N, K, h, w) -> (N, K, 2) float64 x, y.
    """
    heatmaps = np.asarray(heatmaps)
    if heatmaps.ndim != 4:
        raise ValueError(f"legacy_peaks: expected heatmaps of shape (N, K, h, w), got {heatmaps.shape}")
    return _legacy_argmax(heatmaps)


def _legacy_hits_from_peaks(pred_xy, gt_xy, side: int, thr: float):
    pred_xy = np.asarray(pred_xy, dtype=np.float64)
    gt_xy = np.asarray(gt_xy, dtype=np.float64)
    if pred_xy.ndim != 3 or pred_xy.shape[-1] != 2 or pred_xy.shape != gt_xy.shape:
        raise ValueError(
            "legacy_pck: expected pred and gt peaks of the same shape (N, K, 2), got "
            f"{pred_xy.shape} and {gt_xy.shape}"
        )
    # Skipped: 1-based gt coordinate <= 1 on either axis, i.e. an empty target map (0, 0) or a
    # peak in the first row or first column. Visibility is not looked at.
    valid = (gt_xy[..., 0] > 1) & (gt_xy[..., 1] > 1)  # N, K
    dist = np.sqrt(((pred_xy - gt_xy) ** 2).sum(axis=-1))  # N, K in heatmap px
    hits = (dist < thr * side) & valid  # N, K
    return hits, valid


def _legacy_hits(pred_heatmaps, gt_heatmaps, thr: float):
    pred_heatmaps = np.asarray(pred_heatmaps)
    gt_heatmaps = np.asarray(gt_heatmaps)
    if pred_heatmaps.ndim != 4 or pred_heatmaps.shape != gt_heatmaps.shape:
        raise ValueError(
            "legacy_pck: expected pred and gt heatmaps of the same shape (N, K, h, w), got "
            f"{pred_heatmaps.shape} and {gt_heatmaps.shape}"
        )
    side = pred_heatmaps.shape[-1]  # the published code normalises by the map width
    return _legacy_hits_from_peaks(_legacy_argmax(pred_heatmaps), _legacy_argmax(gt_heatmaps), side, thr)


def _legacy_batches(hits, valid, batch_size: int):
    """Per-batch ratios: (B, K) with NaN where a batch has no counted instance of a joint."""
    if int(batch_size) < 1:
        raise ValueError(f"legacy_pck: batch_size must be >= 1, got {batch_size}")
    n, k = hits.shape
    num_batches = -(-n // batch_size)
    pad = num_batches * batch_size - n
    # Padding rows are neither counted nor correct, so a short last batch stays short.
    hits = np.concatenate([hits, np.zeros((pad, k), bool)]).reshape(num_batches, batch_size, k)
    valid = np.concatenate([valid, np.zeros((pad, k), bool)]).reshape(num_batches, batch_size, k)
    sizes = np.full(num_batches, batch_size, dtype=np.float64)
    if pad:
        sizes[-1] = batch_size - pad
    return _ratio(hits.sum(axis=1), valid.sum(axis=1)), sizes  # B, K and B


def legacy_pck(pred_heatmaps, gt_heatmaps, thr: float = 0.05, batch_size: int = 6) -> np.ndarray:
    """Per-joint PCK as the published CC-SSL code computes it (FACTS section 6).

    Reproduced quirks, on purpose (use ``pck_summary`` for the project's own figures):

    * Locations are the integer argmax of the predicted and of the target heatmaps (no sub-pixel
      refinement, no mapping back to the image), in 1-based coordinates.
    * A joint is correct if the distance is strictly below ``thr x heatmap width`` (3.2 heatmap
      px at 64 x 64 and 0.05, i.e. 12.8 px at 256). On a 64 grid with 0.05, ``<`` and the ``<=``
      of some copies agree, since no integer offset has length exactly 3.2.
    * A joint is skipped where the target map is empty (maximum <= 0) or its peak lies in the
      first row or first column (1-based coordinate <= 1); its visibility is never looked at.
    * A predicted map whose maximum is <= 0 is placed at 1-based (0, 0), one pixel outside the
      map, and still scored.
    * The per-joint value is the mean, over batches of ``batch_size`` consecutive samples (the
      last one may be shorter), of the per-batch ratio; batches without a counted instance of
      that joint are left out. Every batch weighs the same whatever its count, so the value
      depends on ``batch_size`` and on sample order, unlike a pooled ratio.

    Shape:
        pred_heatmaps, gt_heatmaps: (N, K, h, w).
        returns: (K,) float64 in [0, 1], NaN where a joint is never counted.
    """
    hits, valid = _legacy_hits(pred_heatmaps, gt_heatmaps, thr)
    ratios, _ = _legacy_batches(hits, valid, int(batch_size))  # B, K
    counted = ~np.isnan(ratios)  # B, K
    return _ratio(np.where(counted, ratios, 0.0).sum(axis=0), counted.sum(axis=0))


def legacy_summary(
    pred_heatmaps,
    gt_heatmaps,
    thr: float = 0.05,
    batch_size: int = 6,
    joints: Sequence[str] = skeleton.JOINTS,
    groups: Mapping[str, Sequence[int]] = skeleton.GROUPS,
) -> dict[str, float]:
    """``legacy_pck`` in PERCENT, keyed ``pck@{thr:g}_legacy/``.

    * ``<prefix>/<joint>``: ``legacy_pck`` x 100.
    * ``<prefix>/<group>``: mean of the group's per-joint values (the legacy per-joint values are
      already averages of ratios, so there is no count to pool).
    * ``<prefix>/mean``: mean of the per-joint values over joints ever counted.
    * ``<prefix>/batch_mean``: the published code's headline figure: per batch, the mean over
      joints of that batch's ratios; then the mean over batches weighted by batch size. A batch
      with no counted joint at all scores 0 and still weighs its batch size, as in the published
      code (which averages 0 for such a batch). It differs from ``mean`` (the published horse
      table lists joints averaging 71.08 under a headline 70.77).

    Shape:
        pred_heatmaps, gt_heatmaps: (N, K, h, w).
    """
    hits, valid = _legacy_hits(pred_heatmaps, gt_heatmaps, thr)
    return _legacy_summary(hits, valid, thr, batch_size, joints, groups)


def legacy_summary_from_peaks(
    pred_peaks,
    gt_peaks,
    heatmap_size: int,
    thr: float = 0.05,
    batch_size: int = 6,
    joints: Sequence[str] = skeleton.JOINTS,
    groups: Mapping[str, Sequence[int]] = skeleton.GROUPS,
) -> dict[str, float]:
    """:func:`legacy_summary` from the maps' :func:`legacy_peaks` (``heatmap_size`` = map width).

    Shape:
        pred_peaks, gt_peaks: (N, K, 2) 1-based integer peaks.
    """
    hits, valid = _legacy_hits_from_peaks(pred_peaks, gt_peaks, int(heatmap_size), thr)
    return _legacy_summary(hits, valid, thr, batch_size, joints, groups)


def _legacy_summary(hits, valid, thr, batch_size, joints, groups) -> dict[str, float]:
    _check_names(hits.shape[1], joints, groups)
    ratios, sizes = _legacy_batches(hits, valid, int(batch_size))  # B, K and B
    counted = ~np.isnan(ratios)  # B, K
    zeroed = np.where(counted, ratios, 0.0)
    per_joint = _ratio(zeroed.sum(axis=0), counted.sum(axis=0)) * 100.0  # K
    per_batch = _ratio(zeroed.sum(axis=1), counted.sum(axis=1))  # B
    # published: a batch without any counted joint averages to 0 and keeps its weight
    per_batch = np.where(np.isnan(per_batch), 0.0, per_batch)
    batch_mean = float((per_batch * sizes).sum() / sizes.sum() * 100.0) if sizes.sum() > 0 else math.nan

    prefix = metric_prefix(thr, LEGACY)
    out = {f"{prefix}/{name}": float(v) for name, v in zip(joints, per_joint)}
    for name, members in groups.items():
        out[f"{prefix}/{name}"] = _nanmean(per_joint[np.asarray(members, dtype=np.int64)])
    out[f"{prefix}/mean"] = _nanmean(per_joint)
    out[f"{prefix}/batch_mean"] = batch_mean
    return out


def joint_hits(pred, gt, visible, norm, thr: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Per-instance, per-joint correctness: boolean (N, K) ``hits`` (correct within
    ``thr * norm``) and ``counted`` (visible, with a usable normaliser); the arrays behind every
    PCK figure, for diagnostics that need them per joint (pseudo-label accuracy, say).
    """
    return _hits_and_valid(pred, gt, visible, norm, thr)
