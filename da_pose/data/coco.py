"""COCO-keypoints reader and writer (Animal-Pose, AP-10K, COCO people) via pycocotools.

Keypoints in the JSON are a flat list ``[x1, y1, v1, x2, y2, v2, ...]`` with v in {0, 1, 2}
(0 not labelled, 1 labelled but occluded, 2 labelled and visible). A joint map
(``da_pose.data.joint_maps``: a built-in name, a YAML file, or plain
``(coco_keypoint_index, skeleton_index)`` pairs) carries a dataset's keypoints onto the 18-joint
TigDog skeleton; skeleton joints without a counterpart are unlabelled (visible 0). Named maps
and map files are checked against the category's keypoint names.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import warnings
from pathlib import Path

import numpy as np

from da_pose.fileio import write_bytes_atomic
from da_pose.data import joint_maps
from da_pose.data.records import PoseRecord, visible_box
from da_pose.data.skeleton import NUM_JOINTS
from da_pose.errors import ConfigError, DataError


# ----------------------------------------------------------------------------------- writers




def _plain(value):
    """numpy scalars and arrays -> JSON-serialisable Python values."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def write_coco(
    path: str | os.PathLike,
    images: list[dict],
    annotations: list[dict],
    keypoint_names: list[str],
    skeleton: list,
    category_name: str = "animal",
    category_id: int = 1,
) -> None:
    """Write a COCO keypoints JSON.

    ``images``: dicts with ``id``, ``file_name``, ``width``, ``height``.
    ``annotations``: dicts with ``id``, ``image_id`` and ``keypoints`` (a flat list of x, y, v
    triples or a (K, 3) array, v in {0, 1, 2}); ``bbox`` ([x, y, w, h]) is taken from the
    labelled keypoints when absent; ``num_keypoints``, ``area``, ``iscrowd`` and
    ``category_id`` are filled in when absent.
    ``skeleton``: pairs of 1-based keypoint indices (the COCO convention).
    """
    k = len(keypoint_names)
    out_anns = []
    for ann in annotations:
        ann = dict(_plain(ann))
        kp = np.asarray(ann["keypoints"], dtype=np.float64).reshape(-1)
        if kp.size != 3 * k:
            raise ValueError(f"annotation {ann.get('id')}: {kp.size} keypoint values, expected {3 * k}")
        kp3 = kp.reshape(k, 3)
        v = kp3[:, 2]
        if not np.isin(v, (0, 1, 2)).all():
            raise ValueError(f"annotation {ann.get('id')}: visibility flags must be 0, 1 or 2")
        ann["keypoints"] = [float(x) if i % 3 != 2 else int(x) for i, x in enumerate(kp)]
        labelled = kp3[v > 0]
        ann.setdefault("num_keypoints", int((v > 0).sum()))
        if "bbox" not in ann:
            if len(labelled):
                x0, y0 = labelled[:, 0].min(), labelled[:, 1].min()
                x1, y1 = labelled[:, 0].max(), labelled[:, 1].max()
                ann["bbox"] = [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]
            else:
                ann["bbox"] = [0.0, 0.0, 0.0, 0.0]
        ann["bbox"] = [float(b) for b in ann["bbox"]]
        ann.setdefault("area", float(ann["bbox"][2] * ann["bbox"][3]))
        ann.setdefault("iscrowd", 0)
        ann.setdefault("category_id", category_id)
        out_anns.append(ann)
    doc = {
        "images": [_plain(dict(im)) for im in images],
        "annotations": out_anns,
        "categories": [
            {
                "id": category_id,
                "name": category_name,
                "supercategory": category_name,
                "keypoints": list(keypoint_names),
                "skeleton": [[int(a), int(b)] for a, b in skeleton],
            }
        ],
    }
    write_bytes_atomic(Path(path), json.dumps(doc).encode("utf-8"))


# ----------------------------------------------------------------------------------- joint maps

# The built-in maps live in ``da_pose.data.joint_maps`` (checked by keypoint name); these names
# stay for code that imports them from here. Each is a JointMap that iterates as
# ``(coco_keypoint_index, skeleton_index)`` pairs.
ANIMAL_POSE_KEYPOINTS = joint_maps.ANIMAL_POSE_KEYPOINTS
ANIMAL_POSE_MAP = joint_maps.ANIMAL_POSE
AP10K_KEYPOINTS = joint_maps.AP10K_KEYPOINTS
AP10K_MAP = joint_maps.AP10K
COCO_PERSON_MAP = joint_maps.COCO_PERSON

JOINT_MAPS: dict[str, joint_maps.JointMap] = {
    **joint_maps.BUILTIN,
    **{alias: joint_maps.BUILTIN[key] for alias, key in joint_maps.ALIASES.items()},
}


# ----------------------------------------------------------------------------------- reader


def _read_json(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            doc = json.load(f)
    except FileNotFoundError:
        raise DataError(f"{path}: annotation file not found (expected a COCO keypoints JSON)") from None
    except (OSError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"{path}: not valid JSON ({reason}); expected a COCO keypoints JSON") from None
    if not isinstance(doc, dict):
        raise DataError(f"{path}: top level is {type(doc).__name__}; expected a COCO keypoints object")
    for key in ("images", "annotations", "categories"):
        if not isinstance(doc.get(key), list):
            raise DataError(f"{path}: no {key!r} list; expected a COCO keypoints JSON")
    if not any(isinstance(c, dict) and c.get("keypoints") for c in doc["categories"]):
        raise DataError(f"{path}: no category lists 'keypoints'; expected a COCO keypoints JSON")
    if doc["annotations"] and not any(isinstance(a, dict) and "keypoints" in a for a in doc["annotations"]):
        raise DataError(f"{path}: no annotation has 'keypoints'; expected a COCO keypoints JSON")
    return doc


def _number_array(value) -> np.ndarray | None:
    """``value`` as a float64 array, or None when it is not a (nested) list of numbers."""
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        return None


def _check_joint_map(joint_map, num_coco: int, num_joints: int, path: Path) -> np.ndarray:
    pairs = np.asarray(joint_map, dtype=np.int64).reshape(-1, 2) if len(joint_map) else np.zeros((0, 2), np.int64)
    if len(pairs) and (
        pairs[:, 0].min() < 0 or pairs[:, 0].max() >= num_coco
        or pairs[:, 1].min() < 0 or pairs[:, 1].max() >= num_joints
    ):
        raise ConfigError(
            f"{path}: joint_map {pairs.tolist()} out of range; expected (coco index < {num_coco}, "
            f"skeleton index < {num_joints}) pairs"
        )
    if len(np.unique(pairs[:, 1])) != len(pairs):
        raise ConfigError(f"{path}: joint_map maps two keypoints onto one skeleton joint")
    return pairs


def _file_joint_map(ann_file: Path, cats: dict, joint_map, num_joints: int) -> np.ndarray:
    """The (P, 2) pairs for every keypoint category of the file, checked by name and range."""
    with_kps = [c for c in cats.values() if isinstance(c.get("keypoints"), list) and c["keypoints"]]
    if not with_kps:
        raise DataError(f"{ann_file}: no category lists 'keypoints'; expected a COCO keypoints JSON")
    first = with_kps[0]
    names = [str(n) for n in first["keypoints"]]
    for cat in with_kps[1:]:
        other = [str(n) for n in cat["keypoints"]]
        if other != names:
            i = next((i for i, (a, b) in enumerate(zip(names, other)) if a != b), min(len(names), len(other)))
            got = repr(other[i]) if i < len(other) else "nothing"
            want = repr(names[i]) if i < len(names) else "nothing"
            raise DataError(
                f"{ann_file}: categories {first.get('name')!r} and {cat.get('name')!r} disagree on keypoint "
                f"{i} ({want} vs {got}); expected one keypoint list for every category of a file"
            )
    k = len(names)
    if joint_map is None:
        if k != num_joints:
            raise ConfigError(
                f"{ann_file}: {k} keypoints per instance but {num_joints} joints; "
                + joint_maps.identity_hint(names, num_joints)
            )
        return np.stack([np.arange(k), np.arange(k)], axis=1)
    if isinstance(joint_map, joint_maps.JointMap):
        joint_maps.check_names(joint_map, names, f"{ann_file}: category {first.get('name')!r}")
    return _check_joint_map(joint_map, k, num_joints, ann_file)


def _coco_index(ann_file: Path, doc: dict):
    """pycocotools' index of a parsed file, its annotation and image ids checked to be integers."""
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = doc
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
        try:
            coco.createIndex()
        except KeyError as exc:
            raise DataError(f"{ann_file}: malformed COCO structure (missing {exc}); expected COCO keypoints") from None
        except TypeError as exc:
            raise DataError(f"{ann_file}: malformed COCO structure ({exc}); expected COCO keypoints") from None

    # COCO ids are integers; records carry them (frame = image id) and are sorted by annotation id
    for kind, ids in (("annotation", coco.anns), ("image", coco.imgs)):
        odd = [i for i in ids if not isinstance(i, int) or isinstance(i, bool)]
        if odd:
            raise DataError(f"{ann_file}: {kind} id {odd[0]!r} is not an integer; expected COCO keypoints")
    return coco


def _make_record(ann: dict, ann_id: int, kp: np.ndarray, joints: np.ndarray, image_path: Path, cat: dict,
                 ann_file: Path, joint_map, crop_factor: float) -> PoseRecord | None:
    """The record of one annotation: the crop from its bbox (or its labelled keypoints), the
    tight box of the mapped joints; None when there is nothing to crop."""
    bbox = visible_box(joints)
    obj = _number_array(ann.get("bbox", [0, 0, 0, 0]))  # unusable box: taken from the keypoints
    obj = np.zeros(0, np.float32) if obj is None else obj.astype(np.float32).reshape(-1)
    if obj.shape != (4,) or not np.isfinite(obj).all() or max(obj[2], obj[3]) <= 0:
        lab = kp[kp[:, 2] > 0]
        obj = (
            np.array([lab[:, 0].min(), lab[:, 1].min(), np.ptp(lab[:, 0]), np.ptp(lab[:, 1])], np.float32)
            if len(lab) else np.zeros(4, np.float32)
        )
    side = float(max(obj[2], obj[3]) * crop_factor)
    if side <= 0:
        return None  # a single labelled point and no box: nothing to crop
    return PoseRecord(
        image_path=str(image_path),
        keypoints=joints,
        center=np.array([obj[0] + obj[2] / 2, obj[1] + obj[3] / 2], dtype=np.float32),
        side=side,
        bbox=bbox,
        video=-1,
        frame=int(ann["image_id"]),
        species=str(cat.get("name", "")),
        extra={"object_bbox": obj, "annotation_id": int(ann_id), "ann_file": str(ann_file),
               "category_id": cat["id"], "joint_map": joint_map},
    )


def _report_skipped(ann_file: Path, bad: list[str], records: list) -> None:
    """All annotations unusable: DataError; some: one warning with the count and the first."""
    if bad and not records:
        raise DataError(f"{ann_file}: all {len(bad)} annotations unusable, first: {bad[0]}")
    if bad:
        warnings.warn(
            f"{ann_file}: skipped {len(bad)} annotation(s), first: {bad[0]} (strict=True makes this an error)",
            stacklevel=3,
        )


def load_coco(
    ann_file: str | os.PathLike,
    image_root: str | os.PathLike,
    joint_map=None,
    num_joints: int = NUM_JOINTS,
    crop_factor: float = 1.25,
    min_keypoints: int = 1,
    strict: bool = False,
) -> list[PoseRecord]:
    """Load a COCO keypoints JSON as PoseRecords (one per annotation, original pixels).

    ``joint_map``: a built-in map name (``ap10k``, ``animalpose``, ``coco_person``), a YAML
    joint-map file, a :class:`~da_pose.data.joint_maps.JointMap` (``AP10K_MAP``,
    ``ANIMAL_POSE_MAP``), or plain ``(coco_keypoint_index, skeleton_index)`` pairs; ``None``
    means identity and needs exactly ``num_joints`` keypoints. Every keypoint category of the
    file must list the same keypoint names (DataError otherwise), and a named map or map file
    must declare exactly those names (ConfigError naming the first difference). A COCO flag v > 0 (labelled, visible or not) gives visible 1; unmapped joints
    get 0. Crowd annotations and those with fewer than ``min_keypoints`` mapped labelled
    joints are dropped. Crop: centre of the annotation bbox, side = max(w, h) * crop_factor
    (the box from the labelled keypoints when the bbox is missing or empty). ``record.bbox``
    is the tight box of the mapped labelled joints (like the other loaders);
    ``extra["object_bbox"]`` is the annotation bbox. An annotation with a malformed keypoint
    list or a missing image is skipped with a warning (``strict``: DataError).
    ``record.frame`` = image id, ``record.species`` = category name; ``extra`` also holds
    ``ann_file``, ``category_id`` and ``joint_map`` (what OKS AP needs to score the record
    against its own file).
    """
    joint_map = joint_maps.resolve_joint_map(joint_map)
    ann_file, image_root = Path(ann_file).resolve(), Path(image_root).resolve()
    doc = _read_json(ann_file)
    coco = _coco_index(ann_file, doc)
    cats = {c["id"]: c for c in doc["categories"] if isinstance(c, dict) and "id" in c}
    pairs = _file_joint_map(ann_file, cats, joint_map, num_joints)
    exists: dict[str, bool] = {}  # file_name -> is a file (several instances share an image)
    records, bad = [], []
    for ann_id in sorted(coco.getAnnIds()):
        ann = coco.anns[ann_id]
        try:
            if ann.get("iscrowd", 0):
                continue
            cat = cats.get(ann.get("category_id"))
            if cat is None or not cat.get("keypoints"):
                raise DataError(f"{ann_file}: annotation {ann_id} has no keypoint category")
            k = len(cat["keypoints"])
            kp = _number_array(ann.get("keypoints", []))
            if kp is None or kp.shape != (3 * k,):
                size = "non-numeric" if kp is None else kp.size
                raise DataError(f"{ann_file}: annotation {ann_id} has {size} keypoint values, expected {3 * k} numbers")
            if not np.isfinite(kp).all():
                raise DataError(f"{ann_file}: annotation {ann_id} has NaN or infinite keypoint values")
            kp = kp.reshape(k, 3)
            joints = np.zeros((num_joints, 3), dtype=np.float32)
            src, dst = pairs[:, 0], pairs[:, 1]
            labelled = kp[src, 2] > 0
            joints[dst[labelled], :2] = kp[src[labelled], :2]
            joints[dst[labelled], 2] = 1.0
            if labelled.sum() < min_keypoints:
                continue
            image = coco.imgs.get(ann["image_id"])
            if image is None or "file_name" not in image:
                raise DataError(f"{ann_file}: annotation {ann_id} refers to unknown image {ann['image_id']}")
            name = image["file_name"]
            if not isinstance(name, str) or not name:
                raise DataError(f"{ann_file}: image {ann['image_id']} has file_name {name!r}, expected a file name")
            if name not in exists:
                exists[name] = (image_root / name).is_file()
            if not exists[name]:
                raise DataError(f"{image_root / image['file_name']}: image not found (annotation {ann_id})")
        except DataError as exc:
            if strict:
                raise
            bad.append(str(exc))
            continue

        record = _make_record(ann, ann_id, kp, joints, image_root / image["file_name"], cat, ann_file, joint_map,
                              crop_factor)
        if record is not None:
            records.append(record)
    _report_skipped(ann_file, bad, records)
    return records
