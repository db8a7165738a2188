"""Checkpoint-selection criteria that need no target label, and how well each ranks checkpoints.

Every peer codebase selects adaptation checkpoints on target labels (FACTS section 8). These
criteria are computed at each epoch end of an adaptation run on unlabelled target train images
(the first ``CRITERIA_IMAGES`` of the split, fixed, the same for every epoch):

* ``criteria/confidence``: mean over images and joints of the heatmap maximum;
* ``criteria/flip_agreement``: share of joints whose prediction on the mirrored image (mapped
  back, left/right swapped) lies within 0.05 x the input side of the prediction on the image;
* ``source_val/pck@0.05_crop/mean`` where the run evaluates the source val split.

``rank_agreement`` measures, for one run, Spearman's rank correlation over its evaluated
checkpoints between a criterion and the target val PCK (the labelled reference); ``compare``
averages it per method.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import torch

from da_pose.data.loaders import eval_loader, make_dataset

CRITERIA_IMAGES = 128
CRITERIA = ("criteria/confidence", "criteria/flip_agreement", "source_val/pck@0.05_crop/mean")
REFERENCE = "target_val/pck@0.05_crop/mean"


@torch.no_grad()
def label_free_criteria(model, loader, codec, device: torch.device, thr: float = 0.05) -> dict[str, float]:
    """``criteria/confidence`` and ``criteria/flip_agreement`` of ``model`` over ``loader``."""
    was_training = model.training
    model.eval()
    conf, agree = [], []
    for batch in loader:
        images = batch["image"].to(device)
        hm = model(images).heatmaps[-1].float()  # B, K, h, w
        hm_flip = codec.flip_back(model(torch.flip(images, dims=[3])).heatmaps[-1].float())
        xy, maxval = codec.decode(hm)  # B, K, 2 input px
        xy_flip, _ = codec.decode(hm_flip)
        conf.append(maxval.cpu().numpy())
        agree.append(((xy - xy_flip).norm(dim=-1) < thr * images.shape[-1]).cpu().numpy())
    model.train(was_training)
    return {"criteria/confidence": float(np.concatenate(conf).mean()),
            "criteria/flip_agreement": 100.0 * float(np.concatenate(agree).mean())}


def criteria_evaluator(cfg, records, codec, device):
    """``evaluate(model) -> criteria`` on the first ``CRITERIA_IMAGES`` target train records."""
    ds = make_dataset(cfg, list(records)[:CRITERIA_IMAGES], codec, train=False)
    return partial(label_free_criteria, loader=eval_loader(cfg, ds), codec=codec, device=device)


def spearman(a, b) -> float:
    """Spearman's rank correlation (scipy; average ranks for ties); NaN with fewer than 3 pairs
    or a constant series."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def rank_agreement(histories: dict[str, dict[int, float]]) -> dict[str, float]:
    """Per criterion, Spearman's correlation with ``REFERENCE`` over the steps both were logged at.

    ``histories``: metric name -> {step: value}.
    """
    ref = histories.get(REFERENCE, {})
    out = {}
    for name in CRITERIA:
        steps = sorted(set(ref) & set(histories.get(name, {})))
        out[name] = spearman([histories[name][s] for s in steps], [ref[s] for s in steps])
    return out
