"""Synthetic-animal reader and writer (CC-SSL's ``synthetic_animal`` format, FACTS section 3).

On-disk layout::

    <root>/<species>_combineds5r5_texture/X_img.png    640 x 480 RGB (sometimes RGBA)
    <root>/<species>_combineds5r5_texture/X_kpts.npy   float (V, 3) x, y, visible per mesh vertex

The 18 joints are fixed vertex ids per species (``VERTEX_IDS``).
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import cv2
import numpy as np

from da_pose.fileio import write_bytes_atomic
from da_pose.data.records import PoseRecord, visible_box
from da_pose.data.skeleton import NUM_JOINTS
from da_pose.errors import ConfigError, DataError

FOLDER_SUFFIX = "_combineds5r5_texture"
IMAGE_SUFFIX = "_img.png"
KPTS_SUFFIX = "_kpts.npy"


# ----------------------------------------------------------------------------------- writers




def species_folder(root: str | os.PathLike, species: str) -> Path:
    """``<root>/<species>_combineds5r5_texture``."""
    return Path(root) / f"{species}{FOLDER_SUFFIX}"


def write_sample(
    folder: str | os.PathLike, stem: str, image_rgb: np.ndarray, kpts: np.ndarray
) -> tuple[Path, Path]:
    """Write one synthetic sample: ``<stem>_img.png`` and ``<stem>_kpts.npy``.

    ``folder`` is the species folder itself (see :func:`species_folder`). Returns the two paths.

    Shape:
        image_rgb: (H, W, 3) uint8 RGB (published: 480, 640, 3).
        kpts: (V, 3) x, y, visible for every mesh vertex; saved as float64.
    """
    image_rgb = np.asarray(image_rgb)
    kpts = np.asarray(kpts, dtype=np.float64)
    if image_rgb.ndim != 3 or image_rgb.shape[2] != 3 or image_rgb.dtype != np.uint8:
        raise ValueError(f"image_rgb must be uint8 (H, W, 3), got {image_rgb.dtype} {image_rgb.shape}")
    if kpts.ndim != 2 or kpts.shape[1] != 3:
        raise ValueError(f"kpts must be (V, 3), got {kpts.shape}")
    folder = Path(folder)
    ok, png = cv2.imencode(".png", cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError("PNG encoding failed")
    buf = io.BytesIO()
    np.save(buf, kpts, allow_pickle=False)
    img_path = folder / f"{stem}{IMAGE_SUFFIX}"
    kpt_path = folder / f"{stem}{KPTS_SUFFIX}"
    # Keypoints first: a reader lists images, so an image never appears without its npy.
    write_bytes_atomic(kpt_path, buf.getvalue())
    write_bytes_atomic(img_path, png.tobytes())
    return img_path, kpt_path


# ----------------------------------------------------------------------------------- species

# Mesh vertex id of each of the 18 joints (FACTS section 3; published horse and tiger meshes of
# 3,299 vertices). Extended at run time by ``register_species`` (the embedded benchmark's).
VERTEX_IDS: dict[str, tuple[int, ...]] = {
    "horse": (1718, 1684, 1271, 1634, 1650, 1643, 1659, 925, 392,
              564, 993, 726, 1585, 1556, 427, 1548, 967, 877),
    "tiger": (2753, 2679, 2032, 1451, 1287, 3085, 1632, 229, 1441,
              1280, 2201, 1662, 266, 158, 270, 152, 219, 129),
}


def _check_vertex_ids(vertex_ids, where: str) -> np.ndarray:
    ids = np.asarray(vertex_ids)
    if ids.shape != (NUM_JOINTS,) or not np.issubdtype(ids.dtype, np.integer) or (ids < 0).any():
        raise ConfigError(
            f"{where}: vertex_ids must be {NUM_JOINTS} non-negative integers, got {list(np.ravel(ids))}"
        )
    return ids.astype(np.int64)


def register_species(name: str, vertex_ids) -> None:
    """Add (or replace) the joint vertex ids of a synthetic species."""
    VERTEX_IDS[name] = tuple(int(i) for i in _check_vertex_ids(vertex_ids, f"species {name!r}"))


def species_vertex_ids(species: str) -> np.ndarray:
    """The 18 joint vertex ids of ``species``; ConfigError listing the known species if absent."""
    if species not in VERTEX_IDS:
        raise ConfigError(
            f"unknown synthetic species {species!r}: expected one of {sorted(VERTEX_IDS)} "
            "(or pass vertex_ids / call register_species)"
        )
    return np.asarray(VERTEX_IDS[species], dtype=np.int64)


# ----------------------------------------------------------------------------------- reader

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) from a PNG header, without decoding the image; DataError if not a PNG."""
    with open(path, "rb") as f:
        head = f.read(24)
    if len(head) < 24 or head[:8] != _PNG_SIGNATURE or head[12:16] != b"IHDR":
        raise DataError(f"{path}: not a PNG file (expected a PNG header)")
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def read_kpts(path: str | os.PathLike) -> np.ndarray:
    """Read one ``*_kpts.npy``: float (V, 3) x, y, visible. DataError if malformed or not finite.

    Shape:
        returns: (V, 3) float64.
    """
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as exc:  # a malformed header raises ValueError, EOFError, tokenize errors, ...
        raise DataError(f"{path}: unreadable keypoint file ({exc}); expected a (V, 3) float .npy") from None
    if arr.ndim != 2 or arr.shape[1] != 3 or not np.issubdtype(arr.dtype, np.number):
        raise DataError(f"{path}: keypoints of shape {arr.shape} ({arr.dtype}), expected (V, 3) float")
    arr = arr.astype(np.float64)
    if not np.isfinite(arr[:, :2]).all():
        raise DataError(f"{path}: keypoint coordinates contain NaN or infinity")
    return arr


def synthetic_record(
    kpts: np.ndarray,
    vertex_ids: np.ndarray,
    width: int,
    height: int,
    crop_factor: float = 1.25,
    use_visibility: bool = False,
) -> tuple[np.ndarray, np.ndarray, float, np.ndarray, np.ndarray]:
    """Joints, crop centre, crop side, joint box and vertex box of one synthetic sample.

    Published rules (FACTS section 3): all 18 joints count as visible ("train with occlusion")
    unless ``use_visibility``; joints outside the image are zeroed; the crop box spans all
    vertices clipped to the image and its side is ``max(w, h) * crop_factor`` (published
    ``s = max(w, h) / 200 * 1.25`` with a 200 px reference, i.e. side = 200 s).
    "Inside the image" uses the pixel-centre convention: -0.5 <= x < W - 0.5.

    Shape:
        kpts: (V, 3) x, y, visible per vertex.
        returns: joints (18, 3) float32, center (2,), side, bbox (4,) x0 y0 w h of the visible
        joints, object box (4,) of the clipped vertices.
    """
    if int(vertex_ids.max()) >= len(kpts):
        raise ValueError(f"vertex id {int(vertex_ids.max())} out of range for {len(kpts)} vertices")
    joints = kpts[vertex_ids].astype(np.float32)  # 18, 3
    if not use_visibility:
        joints[:, 2] = 1.0
    joints[:, 2] = (joints[:, 2] > 0).astype(np.float32)
    x, y = joints[:, 0], joints[:, 1]
    inside = (x >= -0.5) & (x < width - 0.5) & (y >= -0.5) & (y < height - 0.5)
    joints[~inside] = 0.0

    vx = np.clip(kpts[:, 0], 0, width - 1)
    vy = np.clip(kpts[:, 1], 0, height - 1)
    x0, x1, y0, y1 = vx.min(), vx.max(), vy.min(), vy.max()
    center = np.array([(x0 + x1) / 2, (y0 + y1) / 2], dtype=np.float32)
    side = float(max(x1 - x0, y1 - y0) * crop_factor)
    obj_box = np.array([x0, y0, x1 - x0, y1 - y0], dtype=np.float32)
    bbox = visible_box(joints)
    return joints, center, side, bbox, obj_box


def _warn_skipped(what: str, bad: list[str]) -> None:
    if bad:
        warnings.warn(
            f"{what}: skipped {len(bad)} unreadable sample(s), first: {bad[0]} "
            "(strict=True makes this an error)",
            stacklevel=3,
        )


TRAIN_IDX_FILE = "train_idxs.npy"
VALID_IDX_FILE = "valid_idxs.npy"


def read_index_file(path: str | os.PathLike, n: int) -> np.ndarray:
    """A published split file: 1-D distinct integer positions into the sorted image listing.

    Raises:
        DataError: unreadable, not 1-D integers, duplicates, or a position outside ``0..n-1``.
    """
    path = Path(path)
    expected = f"a 1-D array of distinct integer image positions in 0..{n - 1}"
    try:
        idx = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"{path}: split file not found (expected {expected})") from None
    except Exception as exc:  # malformed headers raise many types
        raise DataError(f"{path}: unreadable split file ({exc}); expected {expected}") from None
    if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
        raise DataError(f"{path}: {idx.dtype} array of shape {idx.shape}; expected {expected}")
    if len(idx) and (idx.min() < 0 or idx.max() >= n):
        bad = int(idx.max()) if idx.max() >= n else int(idx.min())
        raise DataError(f"{path}: position {bad} outside the {n} images of the folder; expected {expected}")
    if len(np.unique(idx)) != len(idx):
        raise DataError(f"{path}: a position appears twice; expected {expected}")
    return idx.astype(np.int64)


def synthetic_split(folder: str | os.PathLike, n: int, split: str, train_count: int | None = None,
                    split_files: dict | None = None) -> tuple[np.ndarray, str]:
    """Positions (into the name-sorted ``*_img.png`` listing) of ``split`` and how they were chosen.

    In order of precedence: ``split_files`` (``{"train": path, "val": path}``, either may be
    missing: it is then the rest); the published files ``train_idxs.npy`` / ``valid_idxs.npy``
    in the species folder when present (random positions, not "the first 8,000"); the first
    ``train_count`` images as train (default ``round(0.8 n)``). ``val`` positions keep the
    file's order (the published evaluation order).
    """
    folder = Path(folder)
    files = dict(split_files or {})
    if set(files) - {"train", "val"}:
        raise ConfigError(f"synthetic split_files keys {sorted(files)}: expected 'train' and/or 'val'")
    source = "given split files"
    if not files:
        found = {k: folder / f for k, f in (("train", TRAIN_IDX_FILE), ("val", VALID_IDX_FILE)) if (folder / f).is_file()}
        if found:
            files, source = found, "published split files in the folder"
    if files:
        idx = {k: read_index_file(v, n) for k, v in files.items()}
        if "train" in idx and "val" in idx:
            both = np.intersect1d(idx["train"], idx["val"])
            if len(both):
                raise DataError(f"{files['val']}: position {int(both[0])} is also in {files['train']}; "
                                "expected disjoint train and val positions")
        for have, other in (("train", "val"), ("val", "train")):
            if have not in idx:
                idx[have] = np.setdiff1d(np.arange(n), idx[other])
        names = ", ".join(f"{k} {Path(v).name}" for k, v in files.items())
        text = f"{source} ({names}): {len(idx['train'])} train / {len(idx['val'])} val of {n}"
        chosen = {"train": idx["train"], "val": idx["val"], "all": np.arange(n)}[split]
        return chosen, text
    if train_count is None:
        train_count = int(round(0.8 * n))
    if not 0 <= train_count <= n:
        raise ConfigError(f"train_count {train_count} out of range for {n} images in {folder}")
    text = f"first {train_count} of {n} name-sorted images as train, the rest val (no {TRAIN_IDX_FILE})"
    span = {"train": np.arange(train_count), "val": np.arange(train_count, n), "all": np.arange(n)}[split]
    return span, text


def _species_images(root: Path, species: str) -> tuple[Path, list[str]]:
    """The species folder and its ``*_img.png`` names, hidden ones left out, sorted by name (the
    published listing, which the split files index); DataError when absent or empty."""
    if not root.is_dir():
        raise DataError(f"{root}: synthetic-animal root not found (expected a folder with <species>{FOLDER_SUFFIX}/)")
    folder = species_folder(root, species)
    if not folder.is_dir():
        raise DataError(f"{folder}: species folder not found (expected *{IMAGE_SUFFIX} + *{KPTS_SUFFIX} files)")
    # The published split files index this listing: CC-SSL lists the folder with glob '*img.png'
    # and sorts the paths (JitengMu/Learning-from-Synthetic-Animals @24288a5,
    # pose/datasets/synthetic_animal.py L43-44, synthetic_animal_sp.py L49-50). A glob '*' skips
    # hidden names, so '.'-names (macOS '._X_img.png' copies) are left out here too: listed,
    # they would sort first and shift every published position.
    images = sorted(p for p in os.listdir(folder) if p.endswith(IMAGE_SUFFIX) and not p.startswith("."))
    if not images:
        raise DataError(f"{folder}: no *{IMAGE_SUFFIX} images")
    return folder, images


def load_synthetic(
    root: str | os.PathLike,
    species: str,
    split: str = "train",
    vertex_ids=None,
    train_count: int | None = None,
    crop_factor: float = 1.25,
    use_visibility: bool = False,
    strict: bool = False,
    split_files: dict | None = None,
) -> list[PoseRecord]:
    """Load one species of the synthetic-animal format as PoseRecords (original pixels).

    Images ``*_img.png`` are sorted by name. The split (:func:`synthetic_split`): the published
    ``train_idxs.npy`` / ``valid_idxs.npy`` positions when given (``split_files``) or present in
    the species folder, else the first ``train_count`` are ``train`` and the rest ``val``
    (default ``round(0.8 n)``); ``all`` is both. Which one was used is in every record's
    ``extra["split_source"]``. The split is taken on the listing, so a skipped bad sample never
    moves another across it.
    ``vertex_ids`` overrides the species table. A sample whose npy is missing, malformed or
    NaN, or whose image is not a PNG, is skipped with a warning (``strict``: DataError). Each
    npy is read once and only its 18 joints and the box are kept.
    ``record.frame`` is the position in the sorted listing, ``extra["object_bbox"]`` the box of
    the clipped vertices (x0, y0, w, h).
    """
    if split not in ("train", "val", "all"):
        raise ConfigError(f"synthetic split {split!r}: expected 'train', 'val' or 'all'")
    ids = (
        species_vertex_ids(species)
        if vertex_ids is None
        else _check_vertex_ids(vertex_ids, f"species {species!r}")
    )
    folder, images = _species_images(Path(root), species)
    n = len(images)
    span, split_source = synthetic_split(folder, n, split, train_count, split_files)

    records, bad = [], []
    for i in (int(j) for j in span):
        name = images[i]
        stem = name[: -len(IMAGE_SUFFIX)]
        img_path = folder / name
        kpt_path = folder / f"{stem}{KPTS_SUFFIX}"
        try:
            kpts = read_kpts(kpt_path)
            if int(ids.max()) >= len(kpts):
                raise DataError(
                    f"{kpt_path}: {len(kpts)} vertices, but joint vertex id {int(ids.max())} "
                    f"needs at least {int(ids.max()) + 1}"
                )
            width, height = png_size(img_path)
            joints, center, side, bbox, obj_box = synthetic_record(
                kpts, ids, width, height, crop_factor, use_visibility
            )
            if side <= 0:
                raise DataError(f"{kpt_path}: all vertices fall on one point, no crop box")
        except (DataError, OSError) as exc:
            if strict:
                raise DataError(str(exc)) from None
            bad.append(str(exc))
            continue
        records.append(
            PoseRecord(
                image_path=str(img_path.resolve()),
                keypoints=joints,
                center=center,
                side=side,
                bbox=bbox,
                video=-1,
                frame=i,
                species=species,
                extra={"object_bbox": obj_box, "split_source": split_source},
            )
        )
    if bad and not records:
        raise DataError(f"{folder}: all {len(bad)} samples of split {split!r} unreadable, first: {bad[0]}")
    _warn_skipped(str(folder), bad)
    return records
