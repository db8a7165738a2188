"""Write the embedded benchmark: three domains in the real datasets' formats plus a manifest.

Layout of ``out_dir`` (paths in ``manifest.json`` are relative to it)::

    manifest.json
    synthetic_animal/toyhorse_combineds5r5_texture/%05d_img.png, %05d_kpts.npy     source
    behaviorDiscovery2.0/ranges/toyhorse/ranges.mat                                target
    behaviorDiscovery2.0/landmarks/toyhorse/<shot>.mat
    behaviorDiscovery2.0/toyhorse/%08d.jpg
    behaviorDiscovery2.0/splits/toyhorse/{train,valid}_idxs_by_video.npy
    other/annotations/{train,val}.json, other/images/%06d.jpg                      other

Determinism: every sample draws from its own generator seeded by ``(seed, domain, index)``
(``numpy.random.SeedSequence``), so the bytes depend on the seed only, not on ``workers``.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from da_pose.data import coco, splits, synthetic, tigdog
from da_pose.data.skeleton import NUM_JOINTS
from da_pose.data.toy import body, domains
from da_pose.data.toy.presets import Preset, effective_target, effective_zoom, gap_knobs, get_preset, parse_shifts
from da_pose.errors import ConfigError

SPECIES = "toyhorse"
OTHER_SPECIES = "toybiped"
SOURCE_ROOT = "synthetic_animal"
TARGET_ROOT = "behaviorDiscovery2.0"
OTHER_ROOT = "other"
MIN_VISIBLE = 10  # TigDog loader filter: frames with fewer visible joints are dropped
CROP_FACTORS = {"source": 1.25, "target": 1.5, "other": 1.25}
DOMAIN_CODES = {"source": 1, "target": 2, "other": 3, "split": 4}
CHUNK = 16  # samples per task


def sample_rng(seed: int, domain: str, index: int) -> np.random.Generator:
    """The generator of one sample: a pure function of (seed, domain, index)."""
    return np.random.default_rng(np.random.SeedSequence([seed, DOMAIN_CODES[domain], index]))


# ------------------------------------------------------------------------------------ tasks


def _source_task(out: str, preset: Preset, seed: int, start: int, stop: int) -> int:
    folder = synthetic.species_folder(Path(out) / SOURCE_ROOT, SPECIES)
    for i in range(start, stop):
        image, kpts, _ = domains.source_sample(sample_rng(seed, "source", i), preset.source)
        synthetic.write_sample(folder, f"{i:05d}", image, kpts)
    return stop - start


def _target_task(out: str, preset: Preset, seed: int, shot: int, first_frame: int):
    shot_data = domains.target_shot(
        sample_rng(seed, "target", shot),
        effective_target(preset),
        preset.target_frames,
        preset.target_size,
        preset.phase_speed,
        preset.drift,
        preset.pan,
        effective_zoom(preset),
    )
    root = Path(out) / TARGET_ROOT
    for f, image in enumerate(shot_data.frames):
        tigdog.write_frame(root, SPECIES, first_frame + f, image, quality=shot_data.quality)
    tigdog.write_landmarks(tigdog.landmarks_path(root, SPECIES, shot), shot_data.coords, shot_data.visibility)
    return shot_data.coords, shot_data.visibility


def _other_task(out: str, preset: Preset, seed: int, start: int, stop: int) -> list:
    folder = Path(out) / OTHER_ROOT / "images"
    folder.mkdir(parents=True, exist_ok=True)
    results = []
    for i in range(start, stop):
        image, kp, bbox, quality = domains.other_sample(sample_rng(seed, "other", i), preset.other, preset.other_size)
        ok, jpg = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:  # pragma: no cover - OpenCV always encodes uint8 RGB
            raise RuntimeError("JPEG encoding failed")
        name = f"{i + 1:06d}.jpg"
        tmp = folder / f".{name}.tmp"
        tmp.write_bytes(jpg.tobytes())
        os.replace(tmp, folder / name)
        results.append((i, name, kp, bbox))
    return results


_TASKS = {"source": _source_task, "target": _target_task, "other": _other_task}


def _run(task: tuple):
    kind, args = task
    return kind, args, _TASKS[kind](*args)


def _context():
    """Fork where it is safe: workers then need no re-import of the caller's ``__main__``
    (spawn would re-run an unguarded script). Workers use only numpy and single-threaded
    OpenCV, so inherited threads of the parent (torch, MLflow) are never touched."""
    if "fork" in multiprocessing.get_all_start_methods() and sys.platform != "darwin":
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


# ------------------------------------------------------------------------------------ main


def _prepare_folder(out: Path) -> None:
    """Create ``out``; replace a previous generated benchmark in it; refuse other content."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: exists and is not a folder (expected an empty or generated benchmark folder)")
    out.mkdir(parents=True, exist_ok=True)
    entries = [p for p in out.iterdir()]
    if not entries:
        return
    manifest = out / "manifest.json"
    generated = False
    if manifest.is_file():
        try:
            generated = json.loads(manifest.read_text()).get("generator") == "da_pose.data.toy"
        except (OSError, ValueError):
            generated = False
    ours = {"manifest.json", ".manifest.json.tmp", SOURCE_ROOT, TARGET_ROOT, OTHER_ROOT}
    if not generated or any(p.name not in ours for p in entries):
        raise ConfigError(
            f"{out}: folder is not empty and not a benchmark written by this generator "
            "(expected an empty folder, or one to regenerate)"
        )
    manifest.unlink()
    for name in (SOURCE_ROOT, TARGET_ROOT, OTHER_ROOT):
        if (out / name).exists():
            shutil.rmtree(out / name)


def _tasks(out: str, p: Preset, seed: int, target_only: bool = False) -> list[tuple]:
    tasks = []
    for shot in range(p.target_videos):
        tasks.append(("target", (out, p, seed, shot + 1, 1 + shot * p.target_frames)))
    if target_only:
        return tasks
    n_src = p.source_train + p.source_val
    for start in range(0, n_src, CHUNK):
        tasks.append(("source", (out, p, seed, start, min(start + CHUNK, n_src))))
    n_other = p.other_train + p.other_val
    for start in range(0, n_other, CHUNK):
        tasks.append(("other", (out, p, seed, start, min(start + CHUNK, n_other))))
    return tasks


def _reusable(folder: Path, p: Preset, seed: int) -> dict:
    """The manifest of ``folder`` when its source and other domains are what ``p`` and ``seed``
    would render (same seed, sizes and styles; any shift); ConfigError saying why not otherwise."""
    try:
        m = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        raise ConfigError(f"{folder}: no readable manifest.json to take the source from") from None
    mine = json.loads(json.dumps(gap_knobs(p)))
    off = json.loads(json.dumps(gap_knobs(Preset())["source"]))  # every knob's default, its "off" value

    def same_style(theirs: dict, ours: dict) -> bool:
        # a knob added since that folder was written is absent there: fine when it is off here
        # (an off knob draws nothing, so the bytes are what they were)
        return all(theirs.get(k, off[k]) == v for k, v in ours.items()) and set(theirs) <= set(ours)

    same = (
        m.get("generator") == "da_pose.data.toy" and m.get("seed") == seed
        and same_style(m.get("gap", {}).get("source", {}), mine["source"])
        and same_style(m.get("gap", {}).get("other", {}), mine["other"])
        and m.get("domains", {}).get("source", {}).get("split") == {"train": p.source_train, "val": p.source_val}
        and m.get("domains", {}).get("other", {}).get("split") == {"train": p.other_train, "val": p.other_val}
        and m.get("preset") == p.name
    )
    if not same:
        raise ConfigError(f"{folder}: its source/other domains were generated with another seed, preset or style; "
                          "cannot take them from there")
    return m


def _link_tree(src: Path, dst: Path) -> None:
    """Hard-link every file of ``src`` under ``dst`` (copy where linking is impossible)."""
    for path in sorted(src.rglob("*")):
        target = dst / path.relative_to(src)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, target)
        except OSError:
            shutil.copy2(path, target)


def _task_size(task: tuple, p: Preset) -> int:
    kind, args = task
    return p.target_frames if kind == "target" else args[4] - args[3]


def generate(
    out_dir: str | os.PathLike,
    preset: str | Preset = "demo",
    seed: int = 0,
    workers: int = 2,
    progress: bool = True,
    shift: str | tuple[str, ...] | None = None,
    source_from: str | os.PathLike | None = None,
) -> dict:
    """Generate the embedded synthetic-to-real benchmark into ``out_dir``; return the manifest.

    ``preset`` is a name of ``PRESETS`` or a :class:`Preset` (e.g. ``dataclasses.replace``
    of one). ``shift`` (``"pose"``, ``"pose,shape"``, ...; default: the preset's ``shifts``,
    ``all`` for the built-in ones) names the parts of the gap the target carries; the source
    and other domains are the same bytes whatever the shift. ``workers`` processes render in
    parallel (1 renders inline); the output bytes do not depend on it. A folder holding a
    previous generated benchmark is regenerated; a non-empty folder with anything else is
    refused (ConfigError). ``source_from``: a folder generated with the same preset and seed
    (any shift) whose source and other domains are hard-linked instead of rendered again: the
    same bytes, since those domains do not depend on the shift.
    """
    p = get_preset(preset)
    if shift is not None:
        p = dataclasses.replace(p, shifts=parse_shifts(shift))
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ConfigError(f"seed {seed!r}: expected a non-negative integer")
    if not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers {workers!r}: expected a positive integer")
    out = Path(out_dir)
    reused = _reusable(Path(source_from), p, seed) if source_from is not None else None
    _prepare_folder(out)
    if reused is not None:
        for name in (SOURCE_ROOT, OTHER_ROOT):
            _link_tree(Path(source_from) / name, out / name)
    tasks = _tasks(str(out), p, seed, target_only=reused is not None)
    total = sum(_task_size(t, p) for t in tasks)

    shots: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    others: list = []
    bar = tqdm(total=total, desc=f"generate {p.name}", unit="img", disable=not progress)
    cv_threads = cv2.getNumThreads()
    if workers == 1:
        results = map(_run, tasks)
        pool = None
    else:
        # Stop OpenCV's thread pool before forking: a child inherits the pool's state but not
        # its threads, and would wait for them forever. Children run OpenCV single-threaded.
        cv2.setNumThreads(1)
        ctx = _context()
        spawned = ctx.get_start_method() == "spawn"
        pool = ctx.Pool(
            min(workers, len(tasks)),
            initializer=cv2.setNumThreads if spawned else None,
            initargs=(1,) if spawned else (),
        )
        results = pool.imap(_run, tasks, chunksize=1)
    try:
        for task, (kind, args, result) in zip(tasks, results):
            if kind == "target":
                shots[args[3]] = result
            elif kind == "other":
                others += result
            bar.update(_task_size(task, p))
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
            pool.join()
            cv2.setNumThreads(cv_threads)

    target = _write_target_index(out, p, seed, shots)
    other = reused["domains"]["other"] if reused is not None else _write_other_index(out, p, others)
    manifest = {
        "format_version": 1,
        "generator": "da_pose.data.toy",
        "preset": p.name,
        "seed": seed,
        "num_joints": NUM_JOINTS,
        "gap": gap_knobs(p),
        "domains": {
            "source": {
                "format": "synthetic",
                "root": SOURCE_ROOT,
                "species": SPECIES,
                "vertex_ids": list(domains.VERTEX_IDS),
                "count": p.source_train + p.source_val,
                "split": {"train": p.source_train, "val": p.source_val},
                "crop_factor": CROP_FACTORS["source"],
            },
            "target": target,
            "other": other,
        },
    }
    tmp = out / ".manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, out / "manifest.json")
    return manifest


def visible_positions(shots: dict[int, tuple[np.ndarray, np.ndarray]]) -> list[tuple[int, int, int]]:
    """(shot, frame offset, position) of every frame the TigDog loader keeps, in load order.

    Kept: at least ``MIN_VISIBLE`` of the 18 joints visible with positive coordinates (the
    loader's rule). Position: the split files' numbering, the index of the frame among ALL
    frames of the shots in ranges order, before the visibility filter. The published horse
    files show this (10,152 positions, the largest 13,409), and ``tigdog.load_tigdog`` reads
    them so; only kept frames are listed in the files.
    """
    kept = []
    first = 0
    for shot in sorted(shots):
        coords, vis = shots[shot]
        for f in range(len(coords)):
            xy = coords[f, :NUM_JOINTS]
            visible = (vis[f, :NUM_JOINTS] > 0) & (xy[:, 0] > 0) & (xy[:, 1] > 0)
            if visible.sum() >= MIN_VISIBLE:
                kept.append((shot, f, first + f))
        first += len(coords)
    return kept


def _write_target_index(out: Path, p: Preset, seed: int, shots: dict) -> dict:
    root = out / TARGET_ROOT
    ids = sorted(shots)
    ranges = np.array([[s, 1 + (s - 1) * p.target_frames, s * p.target_frames] for s in ids], dtype=np.int64)
    tigdog.write_ranges(tigdog.ranges_path(root, SPECIES), ranges)

    # about a fifth of the shots go to test, whole shots only (split by video)
    rng = np.random.default_rng(np.random.SeedSequence([seed, DOMAIN_CODES["split"]]))
    n_test = int(round(p.target_test_fraction * len(ids)))
    if p.target_test_fraction > 0 and len(ids) >= 2:
        n_test = min(max(n_test, 1), len(ids) - 1)
    test_shots = set(int(s) for s in rng.permutation(ids)[:n_test])
    kept = visible_positions(shots)
    train_pos = [pos for s, _, pos in kept if s not in test_shots]
    test_pos = [pos for s, _, pos in kept if s in test_shots]
    # the loader carves the labelled val split out of train (same function, same fixed seed)
    val = set(splits.val_shots([s for s, _, _ in kept if s not in test_shots]).tolist())
    n_val = sum(1 for s, _, _ in kept if s in val)
    split_dir = root / "splits" / SPECIES
    tigdog.write_split_files(split_dir, np.array(train_pos, np.int64), np.array(test_pos, np.int64))
    rel = f"{TARGET_ROOT}/splits/{SPECIES}"
    return {
        "format": "tigdog",
        "root": TARGET_ROOT,
        "species": SPECIES,
        "count": len(kept),
        "videos": len(ids),
        "split": {"train": len(train_pos) - n_val, "val": n_val, "test": len(test_pos)},
        "val_shots": sorted(int(v) for v in val),
        "split_files": {
            "train": f"{rel}/{tigdog.SPLIT_FILES['train']}",
            "test": f"{rel}/{tigdog.SPLIT_FILES['test']}",
        },
        "crop_factor": CROP_FACTORS["target"],
    }


def _write_other_index(out: Path, p: Preset, results: list) -> dict:
    results = sorted(results, key=lambda r: r[0])
    width, height = p.other_size
    files = {}
    for split, (lo, hi) in (("train", (0, p.other_train)), ("val", (p.other_train, p.other_train + p.other_val))):
        images, anns = [], []
        for i, name, kp, bbox in results[lo:hi]:
            images.append({"id": i + 1, "file_name": name, "width": width, "height": height})
            anns.append({
                "id": i + 1, "image_id": i + 1, "keypoints": kp.reshape(-1).tolist(), "bbox": bbox,
                "area": float(bbox[2] * bbox[3]),
            })
        path = out / OTHER_ROOT / "annotations" / f"{split}.json"
        coco.write_coco(
            path, images, anns, list(body.COCO_KEYPOINTS), [list(e) for e in body.COCO_SKELETON],
            category_name=OTHER_SPECIES,
        )
        files[split] = f"{OTHER_ROOT}/annotations/{split}.json"
    return {
        "format": "coco",
        "root": OTHER_ROOT,
        "species": OTHER_SPECIES,
        "annotations": files,
        "images": f"{OTHER_ROOT}/images",
        "joint_map": [list(pair) for pair in domains.OTHER_JOINT_MAP],
        "count": p.other_train + p.other_val,
        "split": {"train": p.other_train, "val": p.other_val},
        "crop_factor": CROP_FACTORS["other"],
    }
