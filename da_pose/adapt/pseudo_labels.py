"""Self-training rounds: the pseudo-labels of a round (cached atomically per round, reused on
resume when the weights and settings are the same), their per-round logging, and the step that
trains on source labels plus kept pseudo-labels. Used by CC-SSL, PPLO and every later
self-training method.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from da_pose import checkpoint
from da_pose.adapt.method import RoundPlan
from da_pose.config import CCSSLConfig
from da_pose.data.records import PoseRecord
from da_pose.errors import CheckpointError, DaPoseError
from da_pose.eval.pck import crop_normalizer, joint_hits
from da_pose.train import dist
from da_pose.train.losses import joints_mse
from da_pose.viz import confidence_histogram, pseudo_label_grid


@dataclass
class PseudoLabels:
    """Pseudo-labels of one round, in original image pixels.

    Shape:
        keypoints: (N, K, 2) x, y; confidence: (N, K); kept: (N, K) bool; raw_keypoints and
        raw_confidence: (N, K, 2) / (N, K) before temporal refinement; one row per target record.
    """

    keypoints: np.ndarray
    confidence: np.ndarray
    kept: np.ndarray
    raw_keypoints: np.ndarray
    raw_confidence: np.ndarray
    meta: dict = field(default_factory=dict)

    def as_labels(self) -> np.ndarray:
        """(N, K, 3) x, y, visible=kept: the training labels (rejected joints get weight 0)."""
        return np.concatenate([self.keypoints, self.kept[..., None].astype(np.float32)], axis=-1).astype(np.float32)

    def save(self, path: str | Path) -> Path:
        """Atomic write (loaded back with weights_only=True)."""
        state = {name: torch.from_numpy(np.ascontiguousarray(getattr(self, name)))
                 for name in ("keypoints", "confidence", "kept", "raw_keypoints", "raw_confidence")}
        state["meta"] = dict(self.meta)
        return checkpoint.save(path, state)

    @classmethod
    def load(cls, path: str | Path) -> "PseudoLabels":
        state = checkpoint.load(path)
        try:
            arrays = {k: state[k].numpy() for k in ("keypoints", "confidence", "kept", "raw_keypoints", "raw_confidence")}
        except (KeyError, AttributeError):
            raise CheckpointError(f"{path}: not a pseudo-label file") from None
        return cls(**arrays, meta=dict(state.get("meta", {})))


def state_hash(model: torch.nn.Module) -> str:
    """A short hash of the model weights: pseudo-labels are valid for these weights only."""
    h = hashlib.sha1()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def keep_fraction(cfg: CCSSLConfig, round_index: int) -> float:
    """The round's kept fraction from ``keep_schedule`` (its last value repeats)."""
    sched = cfg.keep_schedule
    return float(sched[min(round_index, len(sched) - 1)]) if sched else 1.0


def curriculum_mask(confidence: np.ndarray, fraction: float, valid: np.ndarray | None = None) -> np.ndarray:
    """Keep the ``fraction`` most confident labels, pooled over all images and joints.

    The published rule sorts all confidences and keeps those above the value at position
    ``(1 - fraction) * N``. Ties at the threshold are kept.

    Shape:
        confidence: (N, K) -> (N, K) bool
    """
    valid = np.ones_like(confidence, dtype=bool) if valid is None else valid
    values = confidence[valid]
    if values.size == 0 or fraction <= 0:
        return np.zeros_like(confidence, dtype=bool)
    if fraction >= 1:
        return valid.copy()
    n_keep = max(1, int(round(fraction * values.size)))
    threshold = np.partition(values, values.size - n_keep)[values.size - n_keep]
    return valid & (confidence >= threshold)


def threshold_mask(confidence: np.ndarray, threshold: float) -> np.ndarray:
    """Ablation without curriculum: a fixed confidence threshold."""
    return confidence > threshold


def label_accuracy(labels: PseudoLabels, records: Sequence[PoseRecord], thr: float = 0.05) -> dict[str, float]:
    """Diagnostic only (never used for selection): PCK of the pseudo-labels against the target
    train ground truth, for kept, rejected and all visible joints (crop normaliser, percent)."""
    gt = np.stack([r.keypoints for r in records])  # N, K, 3
    norm = crop_normalizer([r.side for r in records])
    visible = gt[..., 2] > 0
    correct, counted = joint_hits(labels.keypoints, gt, visible, norm, thr)
    out = {}
    for name, mask in (("kept", labels.kept & counted), ("rejected", ~labels.kept & counted), ("all", counted)):
        out[f"pseudo/acc_{name}"] = float(100.0 * correct[mask].mean()) if mask.any() else float("nan")
        out[f"pseudo/count_{name}"] = float(mask.sum())
    raw_correct, _ = joint_hits(labels.raw_keypoints, gt, visible, norm, thr)
    out["pseudo/acc_before_temporal"] = float(100.0 * raw_correct[counted].mean()) if counted.any() else float("nan")
    return out


def pseudo_label_step(model, batch: dict, gamma: float = 10.0) -> dict[str, torch.Tensor]:
    """L = L_src + gamma * L_tgt (Mu et al. CVPR 2020, Sec. 3.4).

    ``batch["source"]`` is a labelled source batch, ``batch["target"]`` a target batch whose
    targets are the kept pseudo-labels (rejected joints have weight 0). Both go through the model
    in one forward pass (one BatchNorm statistic over the mixed batch, as the published code's
    concatenated batch does).
    """
    src, tgt = batch["source"], batch["target"]
    n = src["image"].size(0)
    out = model(torch.cat([src["image"], tgt["image"]]))
    hm_src = [h[:n] for h in out.heatmaps]
    hm_tgt = [h[n:] for h in out.heatmaps]
    loss_src = joints_mse(hm_src, src["target"], src["target_weight"])
    loss_tgt = joints_mse(hm_tgt, tgt["target"], tgt["target_weight"])
    return {"loss": loss_src + gamma * loss_tgt, "loss/src": loss_src.detach(), "loss/tgt": loss_tgt.detach(),
            "target/kept_joints": tgt["target_weight"].mean().detach()}


def _settings_hash(*parts) -> str:
    return hashlib.sha1(repr(parts).encode()).hexdigest()[:16]


class _Gather:
    """All-gather of the shards of a pseudo-labelling pass over the DDP ranks."""

    def __init__(self, info: dist.DistInfo):
        self.info = info
        self.rank, self.world_size = info.rank, info.world_size

    def __call__(self, obj):
        return dist.all_gather_objects(obj, self.info)


def load_or_generate_labels(ctx, model, codec, dataset, records, round_index: int, settings: CCSSLConfig,
                            generate: Callable) -> tuple[PseudoLabels, bool]:
    """The round's pseudo-labels: from the run folder's cache when they were made from the same
    weights and settings, else generated (batched, sharded over DDP ranks) and written atomically.
    ``generate`` makes them, e.g. CC-SSL's labeller :func:`da_pose.adapt.ccssl.generate_pseudo_labels`.
    Returns the labels and whether they came from the cache."""
    cfg = ctx.cfg
    path = ctx.run_dir / "pseudo_labels" / f"round_{round_index:02d}.pt"
    key = {"model": state_hash(model), "config": _settings_hash(settings, cfg.data, cfg.seed, len(records)),
           "round": round_index}
    if path.is_file():
        try:
            cached = PseudoLabels.load(path)
            if all(cached.meta.get(k) == v for k, v in key.items()):
                return cached, True
        except DaPoseError:
            pass  # unreadable cache: regenerate (the file is replaced atomically below)
    gather = _Gather(ctx.dist) if ctx.dist.enabled else None
    labels = generate(model, dataset, records, codec, settings, ctx.device, cfg.seed, round_index,
                                    progress=ctx.is_main, gather=gather)
    labels.meta.update(key)
    if ctx.is_main:
        labels.save(path)
    dist.barrier(ctx.dist)
    return labels, False


def log_round(ctx, labels: PseudoLabels, cached: bool, records, r: int, prefix: str, title: str) -> dict:
    """Log one round: kept share, confidence, diagnostic accuracy of kept vs rejected labels
    against the target train labels (never used to select anything), histogram and picture."""
    stats = {f"{prefix}/round": r, f"{prefix}/kept_fraction": float(labels.kept.mean()),
             f"{prefix}/mean_confidence": float(labels.confidence.mean()),
             f"{prefix}/temporal_replaced": float(labels.meta.get("temporal_replaced", 0)),
             f"{prefix}/cached": float(cached)}
    stats.update({f"{prefix}/{k.split('/', 1)[1]}": v for k, v in label_accuracy(labels, records).items()})
    ctx.tracker.log_metrics(stats, step=r)
    if ctx.is_main:
        vis = ctx.run_dir / "pseudo_labels"
        confidence_histogram(labels.confidence, labels.kept, vis / f"confidence_round_{r:02d}.png",
                             f"{title} {r}: confidence of pseudo-labels")
        pseudo_label_grid(records, labels.keypoints, labels.kept, vis / f"kept_round_{r:02d}.png")
        for name in (f"confidence_round_{r:02d}.png", f"kept_round_{r:02d}.png"):
            if (vis / name).is_file():
                ctx.tracker.log_artifact(vis / name, "pseudo_labels")
        print(f"{title} {r}: kept {stats[f'{prefix}/kept_fraction']:.0%} of joints; pseudo-label accuracy "
              f"kept {stats[f'{prefix}/acc_kept']:.1f} / rejected {stats[f'{prefix}/acc_rejected']:.1f}"
              f" (diagnostic, target train labels)")
    return stats


def pseudo_label_round(job, r: int, settings: CCSSLConfig, generate: Callable, source, label_ds, train_ds,
                       steps: int, prefix: str, title: str) -> RoundPlan:
    """Round ``r`` of a self-training method: pseudo-label ``label_ds`` (no augmentation) with
    the current model (``generate``), log the round, and return the round plan: ``source`` batches with
    ``train_ds`` (the same images, augmented) carrying the kept pseudo-labels.
    """
    records = label_ds.records
    labels, cached = load_or_generate_labels(job.ctx, job.model, job.codec, label_ds, records, r, settings, generate)
    log_round(job.ctx, labels, cached, records, r, prefix, title)
    labelled = train_ds.with_keypoints(labels.as_labels())
    return RoundPlan(partial(pseudo_label_step, gamma=settings.gamma), job.mixed({"source": source, "target": labelled}, steps),
                     desc=f"{title} {r + 1}/{settings.rounds}")
