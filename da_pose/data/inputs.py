"""The data of a run as MLflow dataset inputs.

One input per domain a run uses: its name (``<benchmark>#<domain>``, the ``--data`` spec form),
a digest of its annotation files and of its manifest entry (never of the images: cheap on every
run), where it is, and the domain's role as the input's context (``source``, ``target``,
``other``), which MLflow shows beside the dataset in the runs table and on the run page.

The digest changes when the labels, the splits or the generator's settings of that domain change;
the source of a generated benchmark keeps its digest under every target shift (its entry, its
generator settings and its files are the same).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from da_pose.data import manifest

# Files that hold labels, splits or metadata (hashed); everything else (images, videos) is not read.
ANNOTATION_SUFFIXES = (".json", ".npy", ".mat", ".csv", ".yaml", ".yml", ".txt")
# Beyond this many annotation files only names and sizes are hashed (a huge real dataset).
MAX_HASHED_FILES = 20000


@dataclass(frozen=True)
class DataInput:
    """A dataset as MLflow logs it (``MlflowTracker.log_inputs``)."""

    name: str
    digest: str
    source: str  # the folder or file, as an absolute path
    context: str  # source | target | other
    profile: dict = field(default_factory=dict)


def annotation_files(path: Path) -> list[Path]:
    """``path`` itself (a file) or the annotation files under it (a folder), sorted."""
    if path.is_file():
        return [path]
    found = []
    for folder, dirs, files in os.walk(path, followlinks=True):
        dirs.sort()
        found += [Path(folder) / f for f in sorted(files) if f.lower().endswith(ANNOTATION_SUFFIXES)]
    return found


def digest(header: dict, files: list[Path], base: Path) -> str:
    """sha256 of ``header`` (canonical JSON) and of each file's relative name and bytes (names
    and sizes only beyond :data:`MAX_HASHED_FILES`); 16 hex digits."""
    h = hashlib.sha256(json.dumps(header, sort_keys=True, default=str).encode())
    read = len(files) <= MAX_HASHED_FILES
    for f in files:
        rel = os.path.relpath(f, base).replace(os.sep, "/")
        h.update(rel.encode() + b"\0")
        h.update(f.read_bytes() if read else str(f.stat().st_size).encode())
    return h.hexdigest()[:16]


def _entry_paths(root: Path, entry: dict) -> list[Path]:
    rels = [entry["root"]] if isinstance(entry.get("root"), str) else []
    for key in ("annotations", "split_files"):
        if isinstance(entry.get(key), dict):
            rels += [v for v in entry[key].values() if isinstance(v, str)]
    return [manifest.resolve_inside(root, r) for r in dict.fromkeys(rels)]


def manifest_input(root: str | Path, domain: str, role: str) -> DataInput | None:
    """The input of ``domain`` of a benchmark folder, or None when the manifest has no such domain."""
    root = Path(root)
    doc = manifest.read_manifest(root)
    entry = doc["domains"].get(domain)
    if entry is None:
        return None
    gap = doc.get("gap") if isinstance(doc.get("gap"), dict) else {}
    header = {"entry": entry, "generator": doc.get("generator"), "preset": doc.get("preset"),
              "seed": doc.get("seed"), "settings": gap.get(domain)}
    paths = _entry_paths(root, entry)
    files = sorted({f for p in paths for f in annotation_files(p)})
    profile = {k: entry[k] for k in ("format", "species", "count", "split", "videos") if k in entry}
    where = (paths[0] if paths else root).resolve()
    return DataInput(f"{root.resolve().name}#{domain}", digest(header, files, root), str(where), role, profile)


def dataset_input(fmt: str, spec_root: str, role: str, animal: str = "") -> DataInput:
    """The input of a real dataset read as ``fmt`` (``tigdog`` folder, ``coco`` file[@images])."""
    path = Path(spec_root.partition("@")[0]) if fmt not in ("tigdog", "synthetic") else Path(spec_root)
    files = annotation_files(path) if path.exists() else []
    base = path.parent if path.is_file() else path
    name = f"{fmt}:{path.resolve().name}" + (f"/{animal}" if animal else "")
    return DataInput(name, digest({"format": fmt, "animal": animal}, files, base), str(path.resolve()), role,
                     {"format": fmt, **({"species": animal} if animal else {})})


def run_inputs(data_cfg, roles) -> list[DataInput]:
    """The inputs of a run's ``roles`` (``source``, ``target``, ``other``) for its ``data`` config
    section; a role whose domain the benchmark lacks is left out."""
    out = []
    for role in dict.fromkeys(roles):
        domain = getattr(data_cfg, role)
        if data_cfg.format == "manifest":
            item = manifest_input(data_cfg.root, domain, role)
        else:
            item = dataset_input(data_cfg.format, data_cfg.root, role, data_cfg.animal)
        if item is not None:
            out.append(item)
    return out
