"""Step functions: ``(model, batch) -> {"loss": ..., "loss/<part>": ...}``.

The trainer backpropagates ``loss`` and logs every key as an MLflow metric. Batches come from
:class:`da_pose.data.dataset.PoseDataset` (dicts with ``image``, ``target``, ``target_weight``).
"""

from __future__ import annotations

import torch

from da_pose.train.losses import joints_mse


def supervised_step(model, batch: dict) -> dict[str, torch.Tensor]:
    """Heatmap regression on labelled images (pretraining, oracle, fine-tuning).

    Shape:
        batch["image"]: (B, 3, S, S); batch["target"]: (B, K, h, w); batch["target_weight"]: (B, K)
    """
    out = model(batch["image"])
    loss = joints_mse(out.heatmaps, batch["target"], batch["target_weight"])
    return {"loss": loss}


def ccssl_step(model, batch: dict, gamma: float = 10.0) -> dict[str, torch.Tensor]:
    """CC-SSL training step (Mu et al. CVPR 2020, Sec. 3.4): L = L_src + gamma * L_tgt.

    ``batch["source"]`` is a labelled synthetic batch, ``batch["target"]`` a real batch whose
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
