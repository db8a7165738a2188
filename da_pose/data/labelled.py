"""The semi-supervised protocol's data side: which target TRAIN images keep their labels.

``data.target_labels`` names a seeded subset of the target train split (never val or test: those
are other splits of the loader) whose labels a run may read; every other target train image is
unlabelled. Three forms (:func:`parse_spec`):

- ``FRACTION`` (0 < x < 1, e.g. ``0.05``): ``max(1, round(x * N))`` of the N train images;
- ``N`` (an integer, e.g. ``20``): that many images; ``all``: every image;
- ``K_per_video`` (e.g. ``2_per_video``): K frames of every shot (all of a shorter shot).

The subset is the first ``n`` of a permutation drawn with the run's seed over the images sorted by
id, so it is the same for every method of a seed, and the subsets of one seed are nested (the 1 %
set is part of the 5 % one; per video: the first K of each shot's permutation). The unchosen
images' labels are dropped from the records at load time (:func:`strip_unlabelled`), before any
dataset exists, so no step, diagnostic or criterion can read them. The crop box stays: like every
method here and the published protocol, target crops come from the annotated box.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from da_pose.data.records import PoseRecord
from da_pose.errors import ConfigError

# salt of the selection's random stream, so it shares no draws with the loaders of the same seed
LABEL_SEED = 52_021
# the batch role of the labelled target images and the epoch offset of its loader's seed
ROLE = "target_labelled"
ROLE_OFFSET = 300_000
SELECTION_FILE = "target_labels.json"
_PER_VIDEO = re.compile(r"^\s*(\d+)\s*_per_video\s*$")
FORMS = "a fraction in (0, 1) such as 0.05, an image count such as 20, 'all', or K_per_video such as 2_per_video"


@dataclass(frozen=True)
class LabelSpec:
    """A parsed ``data.target_labels``: ``kind`` none | fraction | count | all | per_video."""

    kind: str
    value: float = 0.0
    text: str = ""

    @property
    def active(self) -> bool:
        return self.kind != "none"


def parse_spec(text) -> LabelSpec:
    """``data.target_labels`` -> LabelSpec; ConfigError naming the valid forms otherwise."""
    raw = str(text).strip()
    if raw in ("", "0", "none"):
        return LabelSpec("none", 0.0, "")
    if raw == "all":
        return LabelSpec("all", 1.0, raw)
    m = _PER_VIDEO.match(raw)
    if m:
        if int(m.group(1)) < 1:
            raise ConfigError(f"data.target_labels={raw!r}: K_per_video needs K >= 1")
        return LabelSpec("per_video", float(m.group(1)), raw)
    if re.fullmatch(r"\d+", raw):
        return LabelSpec("count", float(int(raw)), raw)
    try:
        x = float(raw)
    except ValueError:
        raise ConfigError(f"data.target_labels={raw!r}: expected {FORMS}") from None
    if x == 0.0:
        return LabelSpec("none", 0.0, "")
    if x == 1.0:
        return LabelSpec("all", 1.0, raw)
    if not 0.0 < x < 1.0:
        raise ConfigError(f"data.target_labels={raw!r}: a fraction must lie in (0, 1); expected {FORMS}")
    return LabelSpec("fraction", x, raw)


def image_id(record: PoseRecord, root: str | os.PathLike | None = None) -> str:
    """The id of a record in the selection file: its image path (relative to ``root`` when inside),
    with the video and frame for frames of a video."""
    path = os.fspath(record.image_path)
    if root is not None:
        try:
            path = os.path.relpath(path, os.fspath(root)) if os.path.isabs(path) else path
        except ValueError:  # another drive
            pass
        if path.startswith(".."):
            path = os.fspath(record.image_path)
    return path.replace(os.sep, "/")


def select(records: Sequence[PoseRecord], spec: LabelSpec, seed: int) -> np.ndarray:
    """Indices (into ``records``, sorted) of the labelled images of ``spec`` for ``seed``.

    Deterministic: the same records (in any order) and seed give the same images.

    Shape:
        returns (n,) int64.
    """
    n = len(records)
    if not spec.active or n == 0:
        return np.zeros(0, np.int64)
    ids = [f"{image_id(r)}|{r.video}|{r.frame}" for r in records]
    order = np.array(sorted(range(n), key=lambda i: ids[i]), dtype=np.int64)
    rng = np.random.default_rng([LABEL_SEED, int(seed)])
    if spec.kind == "per_video":
        videos = np.array([records[i].video for i in order])
        if (videos < 0).any():
            raise ConfigError(f"data.target_labels={spec.text}: K_per_video needs video frames; the target has "
                              "still images (use a fraction or a count)")
        k = int(spec.value)
        chosen = [order[videos == v][rng.permutation(int((videos == v).sum()))[:k]] for v in np.unique(videos)]
        return np.sort(np.concatenate(chosen)).astype(np.int64)
    if spec.kind == "all":
        count = n
    elif spec.kind == "fraction":
        count = max(1, int(round(spec.value * n)))
    else:
        count = int(spec.value)
        if count > n:
            raise ConfigError(f"data.target_labels={spec.text}: the target train split has only {n} images")
    return np.sort(order[rng.permutation(n)[:count]]).astype(np.int64)


def strip_unlabelled(records: Sequence[PoseRecord], chosen: np.ndarray) -> list[PoseRecord]:
    """The records with every label outside ``chosen`` dropped (all joints at 0, not visible).

    The crop (centre, side, box) is kept: it places the image, it is not a training label.
    """
    keep = set(np.asarray(chosen).tolist())
    out = []
    for i, r in enumerate(records):
        if i in keep:
            out.append(r)
        else:
            out.append(dataclasses.replace(r, keypoints=np.zeros_like(np.asarray(r.keypoints, np.float32))))
    return out


def selection_tags(spec: LabelSpec, count: int, total: int) -> dict[str, str]:
    """The MLflow tags of a run's labelled subset (``compare --by labels`` groups by them)."""
    return {"target_labels": spec.text, "target_labels_count": str(count),
            "target_labels_fraction": f"{count / max(total, 1):.4g}"}


def write_selection(ctx, records: Sequence[PoseRecord], chosen: np.ndarray, spec: LabelSpec) -> Path | None:
    """Write ``target_labels.json`` (the chosen image ids) to the run folder, log it to MLflow
    with the tags of :func:`selection_tags`. Returns the file (None off the main rank)."""
    ctx.tracker.set_tags(selection_tags(spec, len(chosen), len(records)))
    if not ctx.is_main:
        return None
    root = ctx.cfg.data.root
    doc = {"target_labels": spec.text, "seed": ctx.cfg.seed, "split": "train", "count": int(len(chosen)),
           "total": len(records), "fraction": len(chosen) / max(len(records), 1),
           "images": [{"id": image_id(records[i], root), "video": int(records[i].video),
                       "frame": int(records[i].frame)} for i in np.asarray(chosen).tolist()]}
    path = Path(ctx.run_dir) / SELECTION_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    os.replace(tmp, path)
    ctx.tracker.log_artifact(path, "data")
    return path


class Cycled:
    """``steps`` batches of one loader, started over (a new seeded shuffle) as often as needed,
    so a labelled subset of any size feeds every step."""

    def __init__(self, loader, steps: int):
        self.loader = loader
        self.steps = steps

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        it = iter(self.loader)
        for _ in range(self.steps):
            try:
                batch = next(it)
            except StopIteration:
                it = iter(self.loader)
                batch = next(it)
            yield batch


def labelled_loader(cfg, ds, epoch: int, info=None, offset: int = ROLE_OFFSET):
    """The seeded loader of the labelled subset: ``train.batch_size`` images a batch, fewer when
    the subset (per DDP rank) is smaller."""
    from da_pose.data.loaders import make_loader

    world = info.world_size if info is not None and info.enabled else 1
    batch = max(1, min(cfg.train.batch_size, len(ds) // world))
    return make_loader(cfg, ds, batch, shuffle=True, epoch=epoch + offset, info=info, drop_last=True)
