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

from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader

from da_pose.adapt.pseudo_labels import PseudoLabels, curriculum_mask, keep_fraction, threshold_mask
from da_pose.adapt.method import AdaptJob, Method, register, variant
from da_pose.adapt.pseudo_labels import pseudo_label_round
from da_pose.config import CCSSLConfig
from da_pose.data.records import PoseRecord
from da_pose.data.transforms import (apply_affine, invert_affine, random_appearance, random_geometric, warp_batch,
                                     warp_heatmaps)


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
    flipped = torch.zeros(1 + t, b, dtype=torch.bool, device=images.device)
    if a is not None:
        det = a[:, 0, 0] * a[:, 1, 1] - a[:, 0, 1] * a[:, 1, 0]
        is_flip = det < 0  # T*B
        back = warp_heatmaps(out[b:], invert_affine(a.double()), s)  # transformed -> identity; T*B, K, h, w
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
def _skip_views(images_shape, cfg: CCSSLConfig, generator: torch.Generator, device) -> None:
    """Advance ``generator`` exactly as :func:`predict_views` does for a batch of this shape,
    without a model: the random draws depend on the shapes only, never on pixel values."""
    b, c, s, _ = images_shape
    t = cfg.num_transforms if (cfg.equivariance or cfg.invariance) else 0
    if not t:
        return
    if cfg.equivariance:
        random_geometric(t * b, generator, cfg.scale_sigma, cfg.scale_clamp, cfg.rotate_sigma, cfg.rotate_clamp,
                         flip_prob=0.5 if cfg.flip else 0.0, size=s)
    if cfg.invariance:
        random_appearance(torch.zeros(t * b, c, s, s, device=device), generator)


def generate_raw(model, dataset, codec, cfg: CCSSLConfig, device: torch.device, seed: int,
                 indices: Sequence[int] | None = None, progress: bool = True,
                 shard: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Batched T_alpha/T_beta pseudo-labels for ``dataset`` (an eval-mode PoseDataset).

    ``shard = (rank, world)``: this rank labels batches ``rank, rank + world, ...`` of the
    single-process batching and advances the random generator over the others, so every image
    gets the views it would get in one process (the union of the shards equals one process).

    Returns (indices (N,), keypoints (N, K, 2) original px, confidence (N, K)).
    """
    if shard is not None:
        return _generate_shard(model, dataset, codec, cfg, device, seed, shard, progress)
    out_idx, out_xy, out_conf = [], [], []
    for batch, views in iter_views(model, dataset, codec, cfg, device, seed, indices, progress):
        xy, conf = aggregate(views, codec, cfg.confidence)
        back = invert_affine(batch["affine"].to(device, torch.float64))
        xy = apply_affine(back, xy.double())
        out_idx.append(batch["index"].numpy())
        out_xy.append(xy.float().cpu().numpy())
        out_conf.append(conf.float().cpu().numpy())
    return np.concatenate(out_idx), np.concatenate(out_xy), np.concatenate(out_conf)


def iter_views(model, dataset, codec, cfg: CCSSLConfig, device: torch.device, seed: int,
               indices: Sequence[int] | None = None, progress: bool = True):
    """The batches of :func:`generate_raw` with their views, before aggregation: ``(batch, views)``
    per batch of ``cfg.batch_size`` images, in dataset order, the model in eval mode meanwhile.
    The seam the pseudo-label study (:mod:`da_pose.adapt.study`) uses to aggregate the same views
    under several confidence rules.

    Shape:
        views: (1 + T, B, K, h, w), as :func:`predict_views` returns them.
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
    try:
        for batch in tqdm(loader, desc="pseudo-labels", leave=False, disable=not progress):
            images = batch["image"].to(device, non_blocking=True)
            views, _ = predict_views(model, images, codec, cfg, mean, std, gen)
            yield batch, views
    finally:
        model.train(was_training)


@torch.no_grad()
def _generate_shard(model, dataset, codec, cfg: CCSSLConfig, device, seed: int, shard: tuple[int, int],
                    progress: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rank, world = shard
    n, bs = len(dataset), cfg.batch_size
    starts = list(range(0, n, bs))
    mine = [i for bi, start in enumerate(starts) if bi % world == rank for i in range(start, min(start + bs, n))]
    k = codec.num_joints
    if not mine:
        return np.zeros(0, np.int64), np.zeros((0, k, 2), np.float32), np.zeros((0, k), np.float32)
    # my batches, in order, are exactly the single-process batches I own (only the last global
    # batch can be short, and it is the last of mine when I own it)
    loader = iter(DataLoader(torch.utils.data.Subset(dataset, mine), batch_size=bs, shuffle=False, num_workers=0))
    gen = torch.Generator(device="cpu")
    gen.manual_seed(int(seed) % (2**31 - 1))
    mean = torch.tensor(dataset.mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    std = torch.tensor(dataset.std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    s = dataset.input_size
    was_training = model.training
    model.eval()
    out_idx, out_xy, out_conf = [], [], []
    for bi, start in enumerate(starts):
        size = min(start + bs, n) - start
        if bi % world != rank:
            _skip_views((size, 3, s, s), cfg, gen, device)
            continue
        batch = next(loader)
        images = batch["image"].to(device, non_blocking=True)
        views, _ = predict_views(model, images, codec, cfg, mean, std, gen)
        xy, conf = aggregate(views, codec, cfg.confidence)
        xy = apply_affine(invert_affine(batch["affine"].to(device, torch.float64)), xy.double())
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
    shard = (gather.rank, gather.world_size) if gather is not None else None
    idx, xy, conf = generate_raw(model, dataset, codec, cfg, device, seed * 1009 + round_index, progress=progress,
                                 shard=shard)
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
    if cfg.diagnostic_visible_only:  # the same selection less its labels on joints the target shows not
        kept &= visible_joints(records, k)
    meta = {"round": round_index, "keep_fraction": fraction if cfg.curriculum else -1.0,
            "temporal_replaced": replaced, "images": int(len(idx))}
    return PseudoLabels(kp.astype(np.float32), cf.astype(np.float32), kept, raw_xy, raw_conf, meta)


def visible_joints(records: Sequence[PoseRecord], num_joints: int) -> np.ndarray:
    """(N, K) bool: the joints the records' labels mark visible. Only the diagnostic switch
    ``diagnostic_visible_only`` calls it: a method never reads the target labels."""
    return np.stack([r.keypoints[:num_joints, 2] > 0 for r in records])


# ---------------------------------------------------------------------------------- the methods
def _round_epochs(job: AdaptJob, r: int) -> int:
    c = job.section
    return 1 if c.steps_per_round else max(1, c.epochs_per_round)


def _plan_round(job: AdaptJob, r: int):
    """Pseudo-label the target train split with the current model, then train on source + kept labels."""
    c = job.section
    target = job.data["target_eval"]
    steps = job.steps_per_epoch(len(target), c.steps_per_round)
    return pseudo_label_round(job, r, c, generate_pseudo_labels, job.data["source"], target, job.data["target"],
                              steps, "ccssl", "round")


CCSSL = register(Method(
    "ccssl", "CC-SSL rounds (invariance, equivariance, temporal consistency, curriculum)", section="ccssl",
    config=CCSSLConfig, needs=("source", "target"), rounds=lambda c: c.rounds, round_epochs=_round_epochs,
    plan_round=_plan_round))
register(variant(CCSSL, "plain_pl", "plain pseudo-label rounds (curriculum only)",
                 fixed={"invariance": False, "equivariance": False, "temporal": False}))
for _term in ("invariance", "equivariance", "temporal", "curriculum"):
    register(variant(CCSSL, f"ccssl_no_{_term}", f"CC-SSL rounds without {_term}", fixed={_term: False}))
