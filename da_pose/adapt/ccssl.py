"""CC-SSL pseudo-labels (Mu et al., "Learning from Synthetic Animals", CVPR 2020, Sec. 3).

One round of pseudo-labelling over the unlabelled target train split:

1. **Equivariance** (T_alpha): each image is seen as the identity plus ``num_transforms`` random
   geometric transforms (scale, rotation, optional flip). Every view's heatmaps are warped back
   into the identity frame with the exact inverse affine (in heatmap pixels) and averaged.
2. **Invariance** (T_beta): the transformed views also get random appearance changes (noise, blur,
   contrast, colour) that must not change the prediction.
3. **Confidence**: ``max`` (published) = the per-joint maximum of the averaged heatmap;
   ``agreement`` = that maximum scaled down by the spread of the views' individual peaks.
4. **Temporal consistency** (T_Delta): pyramidal Lucas-Kanade optical flow tracks the previous
   frame's labels; a joint whose own confidence is below ``ratio`` x the tracked one takes the
   tracked position with confidence ``ratio`` x tracked. Only consecutive frames of the same video
   are linked (the published code also tracked across video boundaries: a bug, not reproduced).
5. **Curriculum**: all confidences are pooled and the top fraction given by the round's schedule
   is kept (published: 20 %, 40 %, 60 %, 80 %, 80 %, 80 %).

Unlike the published code, which runs five forward passes per image one image at a time, the
views of a whole batch of images are made with one batched warp and go through the model
together (one forward pass on a GPU; passes of one batch each on a CPU, where that is faster).
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader

from da_pose import checkpoint
from da_pose.config import CCSSLConfig
from da_pose.data.records import PoseRecord
from da_pose.data.transforms import heatmap_affine, invert_affine, random_appearance, random_geometric, warp_batch
from da_pose.errors import CheckpointError
from da_pose.eval.evaluate import apply_affines, invert_affines


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


@torch.no_grad()
def predict_views(model, images: torch.Tensor, codec, cfg: CCSSLConfig, mean: torch.Tensor, std: torch.Tensor,
                  generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Heatmaps of the identity and the transformed views, warped back and stacked.

    All ``(1 + T) * B`` views go through the model together: in one forward pass on a GPU, in
    passes of ``B`` views on a CPU (see below).

    Shape:
        images: (B, 3, S, S) normalised -> (1 + T, B, K, h, w) heatmaps in the identity frame,
        and (1 + T, B) flags of views that were flipped (already flipped back).
    """
    b, _, s, _ = images.shape
    t = cfg.num_transforms if (cfg.equivariance or cfg.invariance) else 0
    views = images
    a = None
    if t:
        # all T transformed views of the batch at once (one warp, one appearance call): view
        # i * B + j shows image j, so the T random draws per image stay independent
        x = images.repeat(t, 1, 1, 1)  # T*B, 3, S, S
        if cfg.equivariance:
            a = random_geometric(t * b, generator, cfg.scale_sigma, cfg.scale_clamp, cfg.rotate_sigma,
                                 cfg.rotate_clamp, flip_prob=0.5 if cfg.flip else 0.0,
                                 size=s).to(images.device)  # T*B, 2, 3
            x = warp_batch(x, a, s)
        if cfg.invariance:
            # appearance transforms act on [0, 1] pixels: undo the normalisation around them
            # (in place: x and random_appearance's result are fresh tensors)
            raw = x.mul_(std).add_(mean).clamp_(0, 1)
            x = random_appearance(raw, generator).sub_(mean).div_(std)
        views = torch.cat([images, x])  # (1+T)*B, 3, S, S
    # a CPU runs a pass of (1+T)*B views about 2x slower per view than passes of B (the
    # activations leave the caches; scripts/bench/pseudo_labels.py); a GPU wants one large pass.
    # In eval mode (generate_raw sets it) a view's output does not depend on the other views.
    chunk = b if views.device.type == "cpu" else views.shape[0]
    out = torch.cat([model(v).heatmaps[-1].float() for v in views.split(chunk)])  # (1+T)*B, K, h, w
    h = out.shape[-1]
    flipped = torch.zeros(1 + t, b, dtype=torch.bool, device=images.device)
    if a is not None:
        det = a[:, 0, 0] * a[:, 1, 1] - a[:, 0, 1] * a[:, 1, 0]
        is_flip = det < 0  # T*B
        a_hm = heatmap_affine(invert_affine(a.double()), s / h)  # transformed -> identity, heatmap px
        back = warp_batch(out[b:], a_hm, h)  # T*B, K, h, w
        if is_flip.any():
            # a mirrored view predicts the left joints in the right channels: swap them back
            back[is_flip] = back[is_flip][:, torch.as_tensor(codec.flip_index, device=back.device)]
        out = torch.cat([out[:b], back])
        flipped[1:] = is_flip.view(t, b)
    return out.view(1 + t, b, *out.shape[1:]), flipped


def aggregate(views: torch.Tensor, codec, confidence: str = "max") -> tuple[torch.Tensor, torch.Tensor]:
    """Average the views' heatmaps and decode; confidence from the average (or the agreement).

    Shape:
        views: (V, B, K, h, w) -> coords (B, K, 2) input px, confidence (B, K)
    """
    mean_hm = views.mean(0)
    coords, maxval = codec.decode(mean_hm)
    if confidence == "agreement" and views.shape[0] > 1:
        v, b, k, h, w = views.shape
        each, _ = codec.decode(views.reshape(v * b, k, h, w))
        each = each.view(v, b, k, 2)
        spread = (each - coords[None]).norm(dim=-1).mean(0)  # B, K input px
        maxval = maxval * torch.exp(-spread / (2.0 * codec.stride))
    return coords, maxval.clamp(min=0)


@torch.no_grad()
def generate_raw(model, dataset, codec, cfg: CCSSLConfig, device: torch.device, seed: int,
                 indices: Sequence[int] | None = None, progress: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Batched T_alpha/T_beta pseudo-labels for ``dataset`` (an eval-mode PoseDataset).

    Returns (indices (N,), keypoints (N, K, 2) original px, confidence (N, K)).
    """
    from tqdm import tqdm

    subset = dataset if indices is None else torch.utils.data.Subset(dataset, list(indices))
    loader = DataLoader(subset, batch_size=cfg.batch_size, shuffle=False, num_workers=0)
    gen = torch.Generator(device="cpu")
    gen.manual_seed(int(seed) % (2**31 - 1))
    mean = torch.tensor(dataset.mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    std = torch.tensor(dataset.std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    was_training = model.training
    model.eval()
    out_idx, out_xy, out_conf = [], [], []
    for batch in tqdm(loader, desc="pseudo-labels", leave=False, disable=not progress):
        images = batch["image"].to(device, non_blocking=True)
        views, _ = predict_views(model, images, codec, cfg, mean, std, gen)
        xy, conf = aggregate(views, codec, cfg.confidence)
        back = invert_affines(batch["affine"].to(device, torch.float64))
        xy = apply_affines(back, xy.double())
        out_idx.append(batch["index"].numpy())
        out_xy.append(xy.float().cpu().numpy())
        out_conf.append(conf.float().cpu().numpy())
    model.train(was_training)
    return np.concatenate(out_idx), np.concatenate(out_xy), np.concatenate(out_conf)


# ---------------------------------------------------------------------------------- temporal
def video_links(records: Sequence[PoseRecord]) -> list[tuple[int, int]]:
    """(previous, current) record positions of consecutive frames of the same video, in time order.

    Frames of different videos are never linked; a gap in frame numbers breaks the chain.
    """
    order = sorted(range(len(records)), key=lambda i: (records[i].video, records[i].frame))
    links = []
    for a, b in zip(order, order[1:]):
        ra, rb = records[a], records[b]
        if ra.video >= 0 and ra.video == rb.video and rb.frame == ra.frame + 1:
            links.append((a, b))
    return links


def _lk(prev: np.ndarray, cur: np.ndarray, pts: np.ndarray, window: int, levels: int) -> tuple[np.ndarray, np.ndarray]:
    """Pyramidal Lucas-Kanade from ``prev`` to ``cur``. Shape: pts (K, 2) -> (K, 2), (K,) bool."""
    p0 = pts.reshape(-1, 1, 2).astype(np.float32)
    p1, status, _ = cv2.calcOpticalFlowPyrLK(
        prev, cur, p0, None, winSize=(window, window), maxLevel=levels,
        criteria=(cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 0.01))
    return p1.reshape(-1, 2), status.reshape(-1).astype(bool)


def _refine_chain(chain: list[int], records: Sequence[PoseRecord], kp: np.ndarray, conf: np.ndarray,
                  cfg: CCSSLConfig) -> int:
    """Apply the temporal rule along one run of consecutive frames, in place; returns replacements."""
    replaced = 0
    prev_img = cv2.imread(str(records[chain[0]].image_path), cv2.IMREAD_GRAYSCALE)
    for a, b in zip(chain, chain[1:]):
        cur_img = cv2.imread(str(records[b].image_path), cv2.IMREAD_GRAYSCALE)
        if prev_img is not None and cur_img is not None and prev_img.shape == cur_img.shape:
            p1, ok = _lk(prev_img, cur_img, kp[a], cfg.flow_window, cfg.flow_levels)
            moved = np.linalg.norm(p1 - kp[a], axis=1)
            # a point that moved more than flow_max_motion pixels gets flow confidence 0
            tracked_conf = np.where(ok & (moved <= cfg.flow_max_motion), cfg.flow_ratio * conf[a], 0.0)
            take = conf[b] < tracked_conf
            kp[b][take] = p1[take]
            conf[b][take] = tracked_conf[take]
            replaced += int(take.sum())
        prev_img = cur_img
    return replaced


def temporal_refine(records: Sequence[PoseRecord], keypoints: np.ndarray, confidence: np.ndarray,
                    cfg: CCSSLConfig, workers: int = 2) -> tuple[np.ndarray, np.ndarray, int]:
    """T_Delta: propagate confident labels forward along each video with optical flow.

    Each run of consecutive frames is processed in order (a replaced label propagates further, as
    in the published code); runs are independent and go to parallel threads (OpenCV releases the
    GIL).

    Returns the refined keypoints (N, K, 2), confidences (N, K) and how many joints were replaced.
    """
    kp = keypoints.copy()
    conf = confidence.copy()
    chains: list[list[int]] = []
    for a, b in video_links(records):
        if chains and chains[-1][-1] == a:
            chains[-1].append(b)
        else:
            chains.append([a, b])
    if not chains:
        return kp, conf, 0
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        counts = list(pool.map(lambda c: _refine_chain(c, records, kp, conf, cfg), chains))
    return kp, conf, int(sum(counts))


# ---------------------------------------------------------------------------------- one round
def generate_pseudo_labels(model, dataset, records: Sequence[PoseRecord], codec, cfg: CCSSLConfig,
                           device: torch.device, seed: int, round_index: int, progress: bool = True,
                           gather=None) -> PseudoLabels:
    """Pseudo-labels for every record of the target train split, with the round's selection.

    ``gather`` (DDP) shards the images across ranks: ``gather(local_result) -> list of all``.
    """
    n, k = len(records), codec.num_joints
    indices = None
    if gather is not None:
        rank, world = gather.rank, gather.world_size
        indices = list(range(rank, n, world))
    idx, xy, conf = generate_raw(model, dataset, codec, cfg, device, seed * 1009 + round_index, indices, progress)
    if gather is not None:
        parts = gather((idx, xy, conf))
        idx = np.concatenate([p[0] for p in parts])
        xy = np.concatenate([p[1] for p in parts])
        conf = np.concatenate([p[2] for p in parts])
    raw_xy = np.zeros((n, k, 2), np.float32)
    raw_conf = np.zeros((n, k), np.float32)
    raw_xy[idx] = xy
    raw_conf[idx] = conf
    valid = np.zeros((n, k), dtype=bool)
    valid[idx] = True
    kp, cf, replaced = raw_xy, raw_conf, 0
    if cfg.temporal:
        kp, cf, replaced = temporal_refine(records, raw_xy, raw_conf, cfg)
    fraction = keep_fraction(cfg, round_index)
    kept = curriculum_mask(cf, fraction, valid) if cfg.curriculum else (threshold_mask(cf, cfg.fixed_threshold) & valid)
    meta = {"round": round_index, "keep_fraction": fraction if cfg.curriculum else -1.0,
            "temporal_replaced": replaced, "images": int(len(idx))}
    return PseudoLabels(kp.astype(np.float32), cf.astype(np.float32), kept, raw_xy, raw_conf, meta)


def label_accuracy(labels: PseudoLabels, records: Sequence[PoseRecord], thr: float = 0.05) -> dict[str, float]:
    """Diagnostic only (never used for selection): PCK of the pseudo-labels against the target
    train ground truth, for kept, rejected and all visible joints (crop normaliser, percent)."""
    gt = np.stack([r.keypoints for r in records])  # N, K, 3
    sides = np.array([r.side for r in records], dtype=np.float64)
    visible = gt[..., 2] > 0
    dist = np.linalg.norm(labels.keypoints - gt[..., :2], axis=-1) / sides[:, None]
    correct = dist < thr
    out = {}
    for name, mask in (("kept", labels.kept & visible), ("rejected", ~labels.kept & visible), ("all", visible)):
        out[f"pseudo/acc_{name}"] = float(100.0 * correct[mask].mean()) if mask.any() else float("nan")
        out[f"pseudo/count_{name}"] = float(mask.sum())
    raw_dist = np.linalg.norm(labels.raw_keypoints - gt[..., :2], axis=-1) / sides[:, None]
    out["pseudo/acc_before_temporal"] = float(100.0 * (raw_dist < thr)[visible].mean()) if visible.any() else float("nan")
    return out
