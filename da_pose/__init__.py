"""da_pose: animal pose estimation across domains (synthetic -> real).

Pretrain a heatmap pose model on synthetic animals, adapt it to real animals with CC-SSL or
WS-CDA, evaluate per-joint PCK, compare the methods in MLflow.
"""

__version__ = "0.1.0"
