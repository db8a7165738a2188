"""A pose model as MLflow serves it: images in, the last stack's heatmaps out.

``mlflow.pytorch.load_model("runs:/<run_id>/model")`` returns this module (or, for models logged
with ``mlflow.model_format=pt2``, its ``torch.export`` graph); the da_pose model is ``.model``.
Decoding heatmaps to joints is the codec's job (``da_pose.data.codec``), as for a checkpoint.
"""

from __future__ import annotations

import torch
from torch import nn


class HeatmapModel(nn.Module):
    """``model(x).heatmaps[-1]``: the heatmaps every da_pose evaluation decodes.

    Shape:
        x: (B, 3, S, S) normalised images (``data.mean`` / ``data.std`` of the run's config)
        -> (B, K, S / 4, S / 4) heatmaps.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).heatmaps[-1]
