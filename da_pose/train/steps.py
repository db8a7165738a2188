"""The supervised step function: ``(model, batch) -> {"loss": ..., "loss/<part>": ...}``.

The trainer backpropagates ``loss`` and logs every key as an MLflow metric. The adaptation
methods' steps live with their methods (``da_pose.adapt``). Batches come from
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
