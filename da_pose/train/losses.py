"""Heatmap losses.

``joints_mse`` is the weighted joints MSE of SimpleBaseline (Xiao et al. 2018) as used by the
CC-SSL code (Mu et al. 2020, FACTS section 4): for every joint ``0.5 * mean((pred * w -
target * w)^2)`` over the batch and the heatmap pixels, summed over joints and divided by the
number of joints, i.e. 0.5 x the mean over samples, joints and pixels. We keep the 0.5 so that
loss values and learning rates are comparable with the published ones. With intermediate
supervision (stacked hourglass) the loss is summed over the stacks' heatmaps, as published.
"""

from __future__ import annotations

import torch
from torch import Tensor

# SimpleBaseline / CC-SSL JointsMSELoss multiplies the MSE by 0.5
MSE_FACTOR = 0.5


def joints_mse(heatmaps: Tensor | list[Tensor] | tuple[Tensor, ...], target: Tensor,
               weight: Tensor | None = None, reduction: str = "mean") -> Tensor:
    """Weighted joints MSE, summed over stacks.

    Args:
        heatmaps: predicted (B, K, h, w), or a list of them (one per stack).
        target: (B, K, h, w) target heatmaps (Gaussians of peak 1).
        weight: (B, K) or (B, K, 1) per-joint weights (visibility x inside the map; 0 masks a
            joint out of the loss, it still counts in the 1/K mean as published). None: all 1.
        reduction: "mean" (a scalar) or "none" (per-sample values, e.g. for WS-CDA's
            domain-dependent sample weights). ``joints_mse(..., "none").mean()`` equals
            ``joints_mse(..., "mean")``.

    Shape:
        returns () for "mean", (B,) for "none".
    """
    if reduction not in ("mean", "none"):
        raise ValueError(f"joints_mse: reduction must be 'mean' or 'none', got {reduction!r}")
    stacks = [heatmaps] if isinstance(heatmaps, Tensor) else list(heatmaps)
    if not stacks:
        raise ValueError("joints_mse: got an empty list of heatmaps")
    if target.dim() != 4:
        raise ValueError(f"joints_mse: target must be (B, K, h, w), got {tuple(target.shape)}")
    b, k = target.shape[:2]
    # at least float32: under AMP the prediction (and maybe the target) is half precision
    dtype = torch.promote_types(torch.promote_types(target.dtype, stacks[0].dtype), torch.float32)
    if weight is None:
        w = torch.ones(b, k, 1, 1, dtype=dtype, device=target.device)
    else:
        if weight.shape not in ((b, k), (b, k, 1)):
            raise ValueError(
                f"joints_mse: weight must be ({b}, {k}) or ({b}, {k}, 1), got {tuple(weight.shape)}"
            )
        w = weight.reshape(b, k, 1, 1).to(dtype)  # B, K, 1, 1
    target_w = target.to(dtype) * w  # B, K, h, w
    total = None
    for pred in stacks:
        if pred.shape != target.shape:
            raise ValueError(
                f"joints_mse: heatmaps {tuple(pred.shape)} and target {tuple(target.shape)} differ"
            )
        sq = (pred.to(dtype) * w - target_w).pow(2)  # B, K, h, w
        per_sample = MSE_FACTOR * sq.flatten(1).mean(dim=1)  # B
        total = per_sample if total is None else total + per_sample
    return total.mean() if reduction == "mean" else total
