"""Benchmark folders (``manifest.json``) and the CLI's ``--data`` specs.

A benchmark folder (the embedded benchmark the generator writes, or one a user assembles from
real datasets) holds ``manifest.json``::

    {"format_version": 1, "num_joints": 18, ...,
     "domains": {"source": {"format": "synthetic", "root": ..., "species": ..., ...},
                 "target": {"format": "tigdog", "root": ..., "species": ..., "split_files": {...}},
                 "other":  {"format": "coco", "annotations": {"train": ..., "val": ...},
                            "images": ..., "joint_map": "ap10k" | "map.yaml" | [[0, 0], ...]},
                 "animals": {"format": "ap10k", "annotations": {...}, "images": ...}}}

COCO-format domains: ``coco`` with a ``joint_map`` (a built-in name, a YAML joint-map file inside
the folder, or unchecked index pairs), or ``ap10k`` / ``animalpose``, which bring their built-in
map (checked against the file's keypoint names).

Every path in it is relative to the manifest's folder and must stay inside it (no absolute
paths, no ``..`` escaping it); symbolic links inside the folder are followed, so a real
dataset can be linked in. Split names follow the format: synthetic ``train``/``val``, tigdog
``train``/``test``, coco the keys of ``annotations``; ``all`` everywhere.
"""

from __future__ import annotations

import json
import os
import posixpath
import warnings
from pathlib import Path

from da_pose.data import coco, joint_maps, synthetic, tigdog
from da_pose.data.records import PoseRecord
from da_pose.data.skeleton import NUM_JOINTS
from da_pose.errors import ConfigError, DataError

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
FORMATS = ("synthetic", "tigdog", "coco", "ap10k", "animalpose")
# COCO-format sets with a built-in joint map of their own: ``ap10k`` = ``coco`` + joint map ``ap10k``.
COCO_KINDS = {"coco": None, "ap10k": "ap10k", "animalpose": "animalpose"}
SPLITS = {"synthetic": ("train", "val", "all"), "tigdog": ("train", "val", "test", "all")}


def resolve_inside(root: str | os.PathLike, relative: str, where: str = "") -> Path:
    """``root / relative``, refusing absolute paths and paths that climb out of ``root``."""
    label = f"{Path(root) / MANIFEST}{': ' + where if where else ''}"
    if not isinstance(relative, str) or not relative:
        raise DataError(f"{label}: path {relative!r} must be a non-empty relative path string")
    norm = posixpath.normpath(relative.replace("\\", "/"))
    if posixpath.isabs(norm) or os.path.isabs(relative) or norm == ".." or norm.startswith("../"):
        raise DataError(f"{label}: path {relative!r} escapes the benchmark folder (expected a path inside it)")
    return Path(root) / norm


def _need(entry: dict, key: str, kind, label: str):
    if key not in entry:
        raise DataError(f"{label}: missing field {key!r}")
    value = entry[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        name = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise DataError(f"{label}: field {key!r} is {type(value).__name__}, expected {name}")
    return value


def _check_domain(root: Path, name: str, entry, num_joints: int) -> None:
    label = f"{root / MANIFEST}: domain {name!r}"
    if not isinstance(entry, dict):
        raise DataError(f"{label}: expected an object, got {type(entry).__name__}")
    fmt = _need(entry, "format", str, label)
    if fmt not in FORMATS:
        raise DataError(f"{label}: format {fmt!r}, expected one of {list(FORMATS)}")
    _need(entry, "species", str, label)
    if "crop_factor" in entry:
        cf = _need(entry, "crop_factor", (int, float), label)
        if cf <= 0:
            raise DataError(f"{label}: crop_factor {cf} must be positive")
    if "split" in entry:
        split = _need(entry, "split", dict, label)
        for key, count in split.items():
            if not isinstance(count, int) or isinstance(count, bool) or count < 0:
                raise DataError(f"{label}: split[{key!r}] = {count!r}, expected a non-negative integer")
    if fmt in ("synthetic", "tigdog"):
        resolve_inside(root, _need(entry, "root", str, label), f"domain {name!r} root")
    if fmt == "synthetic" and "vertex_ids" in entry:
        ids = _need(entry, "vertex_ids", list, label)
        if len(ids) != num_joints or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
            raise DataError(f"{label}: vertex_ids must be {num_joints} non-negative integers")
    if fmt in ("tigdog", "synthetic") and "split_files" in entry:
        files = _need(entry, "split_files", dict, label)
        held_out = "test" if fmt == "tigdog" else "val"
        if not files or set(files) - {"train", held_out}:
            raise DataError(f"{label}: split_files keys {sorted(files)}, expected 'train' and/or '{held_out}'")
        for key, rel in files.items():
            resolve_inside(root, rel, f"domain {name!r} split_files[{key!r}]")
    if fmt in COCO_KINDS:
        anns = _need(entry, "annotations", dict, label)
        if not anns:
            raise DataError(f"{label}: annotations is empty, expected {{split: path}}")
        for key, rel in anns.items():
            if key == "all":
                raise DataError(f"{label}: 'all' is reserved (it loads every annotation file)")
            resolve_inside(root, rel, f"domain {name!r} annotations[{key!r}]")
        resolve_inside(root, _need(entry, "images", str, label), f"domain {name!r} images")
        if "joint_map" in entry and COCO_KINDS[fmt] is not None:
            raise DataError(f"{label}: format {fmt!r} brings its own joint map; drop 'joint_map' or use format 'coco'")
        if "joint_map" in entry:
            jm = entry["joint_map"]
            if isinstance(jm, str):
                if joint_maps.is_map_file(jm):
                    resolve_inside(root, jm, f"domain {name!r} joint_map")
                elif jm not in coco.JOINT_MAPS:
                    raise DataError(
                        f"{label}: joint_map {jm!r}, expected one of {joint_maps.builtin_names()}, "
                        "a .yaml joint-map file inside the folder, or pairs"
                    )
            elif not isinstance(jm, list) or not all(
                isinstance(p, list) and len(p) == 2 and all(isinstance(i, int) and i >= 0 for i in p) for p in jm
            ):
                raise DataError(f"{label}: joint_map must be a list of [coco_index, skeleton_index] pairs")
            elif any(p[1] >= num_joints for p in jm):
                raise DataError(f"{label}: joint_map skeleton index >= num_joints ({num_joints})")


def read_manifest(root: str | os.PathLike) -> dict:
    """Read and validate ``<root>/manifest.json``; DataError naming the file and field if not."""
    root = Path(root)
    path = root / MANIFEST
    if not root.is_dir():
        raise DataError(f"{root}: benchmark folder not found (expected a folder with {MANIFEST})")
    try:
        with open(path, "rb") as f:
            doc = json.load(f)
    except FileNotFoundError:
        raise DataError(f"{path}: not found (expected the benchmark manifest)") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not valid JSON ({str(exc).splitlines()[0]})") from None
    if not isinstance(doc, dict):
        raise DataError(f"{path}: top level is {type(doc).__name__}, expected an object")
    version = _need(doc, "format_version", int, str(path))
    if version != FORMAT_VERSION:
        raise DataError(f"{path}: format_version {version}, expected {FORMAT_VERSION}")
    num_joints = doc.get("num_joints", NUM_JOINTS)
    if num_joints != NUM_JOINTS:
        raise DataError(f"{path}: num_joints {num_joints!r}, expected {NUM_JOINTS} (the TigDog skeleton)")
    domains = _need(doc, "domains", dict, str(path))
    if not domains:
        raise DataError(f"{path}: no domains")
    for name, entry in domains.items():
        _check_domain(root, name, entry, num_joints)
    return doc


def _joint_map(value, root=None):
    """A manifest entry's or the CLI's joint map (a map file relative to ``root`` for a manifest)."""
    if isinstance(value, str) and root is not None and joint_maps.is_map_file(value):
        return joint_maps.read_joint_map(resolve_inside(root, value, "joint_map"))
    return joint_maps.resolve_joint_map(value)


def _entry_joint_map(root, entry: dict):
    builtin = COCO_KINDS[entry["format"]]
    return joint_maps.BUILTIN[builtin] if builtin else _joint_map(entry.get("joint_map"), root)


def default_image_root(ann_file: str | os.PathLike) -> Path:
    """Where ``coco:ANN.json`` looks for images when no ``@IMAGEDIR`` is given.

    ``images/`` beside the annotation file's folder (``ROOT/annotations/val.json`` ->
    ``ROOT/images/``, the layout of datasets/animal_pose/README.md); when there is no such
    folder, the annotation file's own folder.
    """
    folder = Path(ann_file).resolve().parent
    beside = folder.parent / "images"
    return beside if beside.is_dir() else folder


def load_entry(root: str | os.PathLike, name: str, entry: dict, split: str, strict: bool = False) -> list[PoseRecord]:
    """Load ``split`` of one (validated) manifest domain entry."""
    root = Path(root)
    fmt = entry["format"]
    valid = SPLITS.get(fmt) or (*entry["annotations"], "all")
    if split not in valid:
        raise ConfigError(f"domain {name!r} ({fmt}) has no split {split!r}: expected one of {list(valid)}")
    kwargs = {"crop_factor": float(entry["crop_factor"])} if "crop_factor" in entry else {}
    if fmt == "synthetic":
        counts = entry.get("split", {})
        return synthetic.load_synthetic(
            resolve_inside(root, entry["root"]),
            entry["species"],
            split,
            vertex_ids=entry.get("vertex_ids"),
            train_count=counts.get("train"),
            split_files={k: resolve_inside(root, v) for k, v in entry["split_files"].items()}
            if "split_files" in entry else None,
            strict=strict,
            **kwargs,
        )
    if fmt == "tigdog":
        files = entry.get("split_files")
        return tigdog.load_tigdog(
            resolve_inside(root, entry["root"]),
            entry["species"],
            split,
            split_files={k: resolve_inside(root, v) for k, v in files.items()} if files else None,
            min_visible=int(entry.get("min_visible", 10)),
            strict=strict,
            **kwargs,
        )
    names = list(entry["annotations"]) if split == "all" else [split]
    jm = _entry_joint_map(root, entry)
    records: list[PoseRecord] = []
    for key in names:
        records += coco.load_coco(
            resolve_inside(root, entry["annotations"][key]),
            resolve_inside(root, entry["images"]),
            joint_map=jm,
            strict=strict,
            **kwargs,
        )
    return records


def _check_count(root, name: str, entry: dict, split: str, records: list) -> None:
    """Warn when a split's size differs from the manifest's ``split`` counts (a generator and a
    loader that disagree, e.g. on split-file positions, show up here)."""
    counts = dict(entry.get("split", {}))
    if entry["format"] == "tigdog" and "val" not in counts and split in ("train", "val"):
        return  # written before the val split: its train count holds train and val together
    expected = sum(counts.values()) if split == "all" and counts else counts.get(split)
    if expected is not None and expected != len(records):
        warnings.warn(
            f"{Path(root) / MANIFEST}: domain {name!r} split {split!r} has {len(records)} samples, "
            f"the manifest says {expected}",
            stacklevel=3,
        )


def load_domain(root: str | os.PathLike, domain: str, split: str, strict: bool = False) -> list[PoseRecord]:
    """Records of ``split`` of manifest domain ``domain`` (e.g. ``source``, ``target``).

    Warns when the number of records differs from the manifest's ``split`` counts.
    """
    doc = read_manifest(root)
    if domain not in doc["domains"]:
        raise ConfigError(f"{Path(root) / MANIFEST}: no domain {domain!r}, expected one of {sorted(doc['domains'])}")
    records = load_entry(root, domain, doc["domains"][domain], split, strict)
    _check_count(root, domain, doc["domains"][domain], split, records)
    return records


def _held_out(split: str, valid: tuple[str, ...]) -> str:
    """The CLI says ``test``; formats whose held-out split is ``val`` get ``val``."""
    return "val" if split == "test" and "test" not in valid and "val" in valid else split


SPEC_FORMS = (
    f"DIR#domain (DIR holding {MANIFEST}), tigdog:ROOT, synthetic:ROOT, ap10k:ANN.json[@IMAGEDIR], "
    "animalpose:ANN.json[@IMAGEDIR] or coco:ANN.json[@IMAGEDIR]"
)


def data_spec(root: str, fmt: str = "manifest", domain: str = "target") -> str:
    """The ``--data`` spec for a config's ``data.root`` read as ``data.format``.

    ``manifest`` (default): ``ROOT#domain``; any other format: ``FORMAT:ROOT`` (``ap10k:ANN.json``).
    """
    if fmt == "manifest":
        return f"{root}#{domain}"
    if fmt not in FORMATS:
        raise ConfigError(f"data.format {fmt!r}: expected manifest or one of {', '.join(FORMATS)}")
    return f"{fmt}:{root}"


def parse_data_spec(
    spec: str, animal: str | None = None, split: str = "test", joint_map=None, strict: bool = False
) -> list[PoseRecord]:
    """Records for a CLI ``--data`` spec.

    - ``DIR#domain``: a benchmark folder with ``manifest.json`` and one of its domains.
    - ``tigdog:ROOT``: a ``behaviorDiscovery2.0`` folder; needs ``animal``.
    - ``synthetic:ROOT``: a ``synthetic_animal`` folder; needs ``animal``.
    - ``ap10k:ANN.json[@IMAGEDIR]`` and ``animalpose:ANN.json[@IMAGEDIR]``: AP-10K and
      Animal-Pose files with their built-in joint maps (checked by keypoint name).
    - ``coco:ANN.json[@IMAGEDIR]``: any COCO keypoints file; ``joint_map`` is a built-in map
      name, a YAML joint-map file or pairs (default identity: 18 keypoints).

    For the COCO kinds the whole file is loaded (``split`` is ignored); without ``@IMAGEDIR``
    the images are read from :func:`default_image_root`.

    ``split="test"`` means ``val`` for formats whose held-out split is called ``val``.
    """
    if not isinstance(spec, str) or not spec:
        raise ConfigError(f"data spec is empty: expected {SPEC_FORMS}")
    kind, sep, rest = spec.partition(":")
    if sep and kind in ("tigdog", "synthetic", *COCO_KINDS) and rest:
        if kind in COCO_KINDS:
            ann, _, images = rest.partition("@")
            builtin = COCO_KINDS[kind]
            if builtin and joint_map not in (None, "") and joint_maps.resolve_joint_map(joint_map) is not (
                joint_maps.BUILTIN[builtin]
            ):
                raise ConfigError(
                    f"data spec {spec!r}: {kind}: brings the {builtin!r} joint map; use coco:{rest} with "
                    "--joint-map to read the file with another map"
                )
            jm = joint_maps.BUILTIN[builtin] if builtin else _joint_map(joint_map)
            image_root = Path(images) if images else default_image_root(ann)
            return coco.load_coco(ann, image_root, joint_map=jm, strict=strict)
        if not animal:
            raise ConfigError(f"data spec {spec!r} needs --animal (the species folder to read)")
        if kind == "tigdog":
            return tigdog.load_tigdog(rest, animal, split, strict=strict)
        return synthetic.load_synthetic(rest, animal, _held_out(split, SPLITS["synthetic"]), strict=strict)
    folder, _, domain = spec.partition("#")
    if not (Path(folder) / MANIFEST).is_file():
        raise ConfigError(f"data spec {spec!r}: expected {SPEC_FORMS}")
    doc = read_manifest(folder)
    if domain not in doc["domains"]:
        raise ConfigError(f"data spec {spec!r}: domain {domain!r}, expected one of {sorted(doc['domains'])}")
    entry = doc["domains"][domain]
    valid = SPLITS.get(entry["format"]) or (*entry["annotations"], "all")
    split = _held_out(split, valid)
    records = load_entry(folder, domain, entry, split, strict)
    _check_count(folder, domain, entry, split, records)
    return records
