"""The embedded synthetic-to-real benchmark: a procedural generator writing real formats.

``generate(out_dir, preset="demo", seed=0, workers=2)`` writes a source domain (synthetic
quadrupeds, CC-SSL's synthetic-animal format), a target domain (the same body plan with a
domain gap, as TigDog videos) and an other-species domain (a biped, COCO keypoints), plus
``manifest.json``. ``shift=`` names the parts of the gap the target carries (``presets.SHIFTS``,
docs/shifts.md; the source is the same bytes under every shift). See ``presets.py`` for the gap
knobs and ``body.py`` for the left/right convention.
"""

from da_pose.data.toy.generate import generate
from da_pose.data.toy.presets import PRESETS, Preset, Style, get_preset

__all__ = ["generate", "PRESETS", "Preset", "Style", "get_preset"]
