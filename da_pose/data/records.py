"""The record every loader returns: one annotated (or unannotated) instance in one image."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class PoseRecord:
    """One pose instance, in original image pixels.

    Attributes:
        image_path: absolute or root-relative path of the image file.
        keypoints: float32 (K, 3) of x, y, visible (1.0 visible/labelled, 0.0 not); pixel
            coordinates with integer values at pixel centres (OpenCV convention).
        center: float32 (2,) centre of the crop box, x, y.
        side: side of the square crop in pixels (TigDog: 1.5 x the longer box side).
        bbox: float32 (4,) tight box x0, y0, w, h of the labelled joints (the mmpose PCK
            normaliser uses max(w, h)).
        video: video (shot) id for frames of a video, -1 for still images.
        frame: frame number within the animal's folder (TigDog) or the image index.
        species: species / animal name.
    """

    image_path: str
    keypoints: np.ndarray
    center: np.ndarray
    side: float
    bbox: np.ndarray
    video: int = -1
    frame: int = -1
    species: str = ""
    extra: dict = field(default_factory=dict, compare=False)


def visible_box(keypoints: np.ndarray) -> np.ndarray:
    """The tight box ``(x0, y0, w, h)`` of the visible joints (zeros when none is visible).

    Shape:
        keypoints: (K, 3) x, y, visible -> (4,) float32
    """
    vis = keypoints[keypoints[:, 2] > 0]
    if not len(vis):
        return np.zeros(4, dtype=np.float32)
    x0, y0 = vis[:, 0].min(), vis[:, 1].min()
    return np.array([x0, y0, vis[:, 0].max() - x0, vis[:, 1].max() - y0], dtype=np.float32)
