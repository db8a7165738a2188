"""The training / evaluation dataset: records -> normalised crops, heatmap targets, weights.

One :class:`PoseDataset` serves every loader (synthetic, TigDog, COCO) because they all return
:class:`~da_pose.data.records.PoseRecord` lists in original image pixels.

Pipeline of one item: read the image (OpenCV, BGR -> RGB, alpha dropped) -> map the crop square
onto the input with :func:`~da_pose.data.transforms.crop_affine` (train mode: random scale,
rotation, shift and flip per :class:`~da_pose.config.AugConfig`) and ``cv2.warpAffine`` ->
appearance augmentation (train mode) -> normalise -> heatmap targets from the codec.

Cache (``cache=True``). Decoding JPEGs dominates the cost of small crops, so each record's
pixels are decoded once and kept in memory as uint8:

- without geometric augmentation (eval mode, or train mode with nothing geometric to sample)
  the final crop itself is kept, so cached and uncached items are identical;
- with geometric augmentation a patch is kept that covers every crop the augmentation range can
  ask for (the crop square scaled by the largest scale, turned by the largest rotation, moved
  by the largest shift), at the input's resolution (about 2-2.3 x input_size on a side), with
  its own affine; an augmented crop is warped from it by composing the two affines exactly.

The cache is filled lazily by ``__getitem__`` (each DataLoader worker fills its own copy: use
``persistent_workers=True``) or up front by :meth:`PoseDataset.prefetch` with threads (OpenCV
releases the GIL); filled in the main process before the DataLoader is made, it is inherited by
forked workers. Cache keys are (image, centre, side), so :meth:`PoseDataset.with_keypoints`
shares the pixels between datasets that differ only in their labels (CC-SSL pseudo-labels).

Unreadable images (missing, not decodable). ``strict=True``: a :class:`~da_pose.errors.DataError`
naming the file. ``strict=False``: :meth:`PoseDataset.prefetch` drops the unreadable records
from ``records`` (indices then refer to the shortened list; call it before building label arrays
or loaders) and warns once with the count; without a prefetch, an unreadable item found by
``__getitem__`` is warned about with a running count and the next readable record is returned
in its place (its own ``index`` is in the item, so nothing is attributed to the wrong record).
"""

from __future__ import annotations

import math
import os
import warnings
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from da_pose.data.codec import HeatmapCodec
from da_pose.data.records import PoseRecord
from da_pose.data.transforms import (
    appearance_augment,
    apply_affine,
    compose,
    crop_affine,
    flip_affine,
    flip_keypoints,
    invert_affine,
)
from da_pose.errors import ConfigError, DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class UnreadableImage(Exception):
    """An image file is missing or cannot be decoded (internal; becomes a warning or DataError)."""


def read_image(path: str) -> np.ndarray:
    """uint8 (H, W, 3) RGB. Grey images are expanded, an alpha channel is dropped, EXIF
    orientation is ignored (annotations refer to the stored pixel grid).

    Raises:
        UnreadableImage: missing or undecodable file.
    """
    if not os.path.isfile(path):
        raise UnreadableImage(f"{path}: file not found")
    try:
        bgr = cv2.imread(path, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    except cv2.error as exc:  # pragma: no cover - OpenCV usually returns None instead
        raise UnreadableImage(f"{path}: cannot decode ({str(exc).strip().splitlines()[-1]})") from None
    if bgr is None or bgr.size == 0:
        raise UnreadableImage(f"{path}: cannot decode the image")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def warp_crop(image: np.ndarray, a: np.ndarray, size: int) -> np.ndarray:
    """``cv2.warpAffine`` of ``image`` by ``a`` (source -> crop pixels) to ``size`` x ``size``,
    bilinear, zero border; antialiased when it shrinks by more than 2x.

    Bilinear warping of a strong reduction skips pixels (aliasing), so the image is first
    reduced with INTER_AREA to about the crop's resolution and the matrix is composed with the
    exact resize map (cv2.resize maps pixel centres as x' = (x + 0.5) f - 0.5).

    Shape:
        image: (H, W, C) uint8 -> (size, size, C) uint8
    """
    k = math.sqrt(abs(np.linalg.det(a[:, :2])))
    h, w = image.shape[:2]
    if k < 0.5:
        nw, nh = max(1, round(w * k)), max(1, round(h * k))
        fx, fy = nw / w, nh / h
        resize = np.array([[fx, 0.0, 0.5 * fx - 0.5], [0.0, fy, 0.5 * fy - 0.5]])
        image = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA)
        a = compose(a, invert_affine(resize))
    return cv2.warpAffine(
        image, a, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0
    )


def augmentation_extent(aug) -> float:
    """Side of the region any augmented crop can touch, in units of the crop side.

    A crop of side ``side * s`` turned by ``r`` and moved by ``t * side * s`` reaches
    ``side * s * ((|cos r| + |sin r|) / 2 + |t|)`` from the crop centre along each axis.
    """
    if aug is None:
        return 1.0
    s_max = 1.0 + 2.0 * aug.scale
    r_max = math.radians(min(2.0 * aug.rotate, 45.0)) if aug.rotate_prob > 0 else 0.0
    return s_max * (math.cos(r_max) + math.sin(r_max) + 2.0 * aug.translate)


def sample_augmentation(aug, rng: np.random.Generator) -> dict:
    """Random crop parameters per :class:`~da_pose.config.AugConfig` (FACTS section 4).

    scale = clip(1 + N(0,1) scale, 1 -+ 2 scale); rotation = clip(N(0,1) rotate, -+ 2 rotate)
    with probability rotate_prob, else 0; shift uniform in +- translate per axis; flip with
    probability 0.5 when enabled.
    """
    scale = float(np.clip(1.0 + rng.standard_normal() * aug.scale, 1.0 - 2.0 * aug.scale, 1.0 + 2.0 * aug.scale))
    rotation = 0.0
    if rng.random() < aug.rotate_prob:
        rotation = float(np.clip(rng.standard_normal() * aug.rotate, -2.0 * aug.rotate, 2.0 * aug.rotate))
    shift = rng.uniform(-aug.translate, aug.translate, size=2)
    flip = bool(aug.flip and rng.random() < 0.5)
    return {"scale": scale, "rotation": rotation, "shift": (float(shift[0]), float(shift[1])), "flip": flip}


def _has_geometry(aug) -> bool:
    return aug is not None and (
        aug.scale > 0 or (aug.rotate > 0 and aug.rotate_prob > 0) or aug.translate > 0 or aug.flip
    )


class PoseDataset(Dataset):
    """Crops, targets and weights for a list of pose records.

    Args:
        records: the instances (original image pixels).
        codec: the heatmap codec (targets; its flip_index swaps joints on flips).
        input_size: model input side; must equal ``codec.input_size``.
        train: random geometric (and appearance, if ``aug.appearance``) augmentation.
        aug: augmentation ranges; None = none (also in train mode).
        mean, std: RGB normalisation, ``(rgb / 255 - mean) / std``.
        cache: keep decoded pixels in memory (module docstring).
        strict: an unreadable image is a DataError instead of a warning and a skip.
        keypoints: (N, K, 3) in original pixels replacing the records' keypoints (pseudo-labels).
        root: folder that relative ``image_path`` values are relative to.

    Items (``__getitem__``), all torch tensors:
        image float32 (3, S, S); target float32 (K, h, w); target_weight float32 (K,);
        keypoints float32 (K, 3) in input pixels, visible set to 0 outside the input;
        affine float32 (2, 3) original -> input pixels (including a flip); index, video, frame
        int64 scalars. With a flip, ``keypoints[j]`` is joint ``flip_index[j]`` of the original
        mapped by ``affine``.
    """

    def __init__(
        self,
        records: list[PoseRecord],
        codec: HeatmapCodec,
        input_size: int,
        train: bool,
        aug=None,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        cache: bool = True,
        strict: bool = False,
        keypoints: np.ndarray | None = None,
        root: str | os.PathLike | None = None,
    ):
        if input_size != codec.input_size:
            raise ConfigError(f"dataset input_size {input_size} differs from the codec's {codec.input_size}")
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ConfigError(f"mean and std need 3 values (RGB) and std > 0, got {mean}, {std}")
        if aug is not None and not (0 <= aug.scale < 0.5 and aug.rotate >= 0 and 0 <= aug.translate < 0.5):
            raise ConfigError(
                f"aug.scale must be in [0, 0.5), aug.rotate >= 0, aug.translate in [0, 0.5); got "
                f"{aug.scale}, {aug.rotate}, {aug.translate}"
            )
        self.records = list(records)
        self.codec = codec
        self.input_size = int(input_size)
        self.train = bool(train)
        self.aug = aug
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.cache = bool(cache)
        self.strict = bool(strict)
        self.root = os.fspath(root) if root is not None else None
        self._geometric = self.train and _has_geometry(aug)
        self._extent = augmentation_extent(aug) if self._geometric else 1.0
        self._appearance = self.train and aug is not None and aug.appearance and aug.appearance_prob > 0
        self._mean = np.asarray(self.mean, dtype=np.float32)
        self._std = np.asarray(self.std, dtype=np.float32)
        self._cache: dict = {}
        self._bad: dict = {}  # cache key -> reason, shared like the cache
        self._check_records()
        self.keypoints = self._checked_keypoints(keypoints)

    # ---- construction checks

    def _check_records(self) -> None:
        for r in self.records:
            c = np.asarray(r.center, dtype=np.float64)
            if c.shape != (2,) or not np.isfinite(c).all() or not (np.isfinite(r.side) and r.side > 0):
                raise DataError(f"{r.image_path}: crop centre/side must be finite with side > 0, got {c}, {r.side}")

    def _checked_keypoints(self, keypoints) -> np.ndarray:
        k = self.codec.num_joints
        if keypoints is None:
            arrays = []
            for r in self.records:
                kp = np.asarray(r.keypoints, dtype=np.float32)
                if kp.shape != (k, 3):
                    raise DataError(f"{r.image_path}: keypoints must be ({k}, 3), got {kp.shape}")
                if not np.isfinite(kp).all():
                    raise DataError(f"{r.image_path}: keypoints contain NaN or infinite values")
                arrays.append(kp)
            return np.stack(arrays) if arrays else np.zeros((0, k, 3), np.float32)
        kp = np.asarray(keypoints, dtype=np.float32)
        if kp.shape != (len(self.records), k, 3):
            raise DataError(f"keypoints override must be ({len(self.records)}, {k}, 3), got {kp.shape}")
        bad = np.flatnonzero(~np.isfinite(kp).reshape(len(kp), -1).all(axis=1))
        if bad.size:
            raise DataError(f"{self.records[bad[0]].image_path}: keypoints override contains NaN or infinite values")
        return kp.copy()

    def with_keypoints(self, keypoints: np.ndarray) -> "PoseDataset":
        """The same dataset with other labels (N, K, 3) in original pixels; shares the cache."""
        other = PoseDataset(
            self.records, self.codec, self.input_size, self.train, self.aug, self.mean, self.std,
            cache=self.cache, strict=self.strict, keypoints=keypoints, root=self.root,
        )
        other._cache = self._cache
        other._bad = self._bad
        return other

    # ---- pixels

    def __len__(self) -> int:
        return len(self.records)

    def _path(self, r: PoseRecord) -> str:
        p = os.fspath(r.image_path)
        return os.path.join(self.root, p) if self.root is not None and not os.path.isabs(p) else p

    @staticmethod
    def _key(r: PoseRecord) -> tuple:
        c = np.asarray(r.center, dtype=np.float64)
        return (os.fspath(r.image_path), float(c[0]), float(c[1]), float(r.side))

    def _source(self, r: PoseRecord) -> tuple[np.ndarray, np.ndarray]:
        """Pixels to crop from and their affine (original -> these pixels).

        Uncached: the whole image and the identity. Cached: the stored crop or patch.

        Raises:
            UnreadableImage
        """
        key = self._key(r)
        if key in self._bad:
            raise UnreadableImage(self._bad[key])
        if self.cache and key in self._cache:
            return self._cache[key]
        try:
            image = read_image(self._path(r))
        except UnreadableImage as exc:
            self._bad[key] = str(exc)
            raise
        if not self.cache:
            return image, np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
        if self._geometric:
            size = math.ceil(self._extent * self.input_size)
            a = crop_affine(r.center, r.side * self._extent, size)
        else:
            size = self.input_size
            a = crop_affine(r.center, r.side, size)
        entry = (warp_crop(image, a, size), a)
        self._cache[key] = entry
        return entry

    def prefetch(self, num_threads: int = 2, progress: bool = True) -> int:
        """Decode every record now (filling the cache when ``cache=True``) with threads.

        Unreadable records are dropped from ``records`` (and the labels) with one warning; with
        ``strict=True`` the first one is a DataError. Returns the number dropped.
        """
        from tqdm import tqdm

        def load(r):
            try:
                self._source(r)
                return None
            except UnreadableImage as exc:
                return str(exc)

        with ThreadPoolExecutor(max_workers=max(1, num_threads)) as pool:
            results = list(tqdm(pool.map(load, self.records), total=len(self.records),
                                desc="decoding images", disable=not progress, leave=False))
        bad = [i for i, res in enumerate(results) if res is not None]
        if bad and self.strict:
            raise DataError(f"unreadable image: {results[bad[0]]}")
        if bad:
            keep = np.setdiff1d(np.arange(len(self.records)), bad)
            self.records = [self.records[i] for i in keep]
            self.keypoints = self.keypoints[keep]
            warnings.warn(
                f"{len(bad)} unreadable image(s) dropped, {len(self.records)} records left "
                f"(first: {results[bad[0]]})",
                stacklevel=2,
            )
        return len(bad)

    # ---- items

    def _affine(self, r: PoseRecord, rng: np.random.Generator | None) -> tuple[np.ndarray, bool]:
        """Original -> input map without the flip, and whether to flip."""
        if not self._geometric:
            return crop_affine(r.center, r.side, self.input_size), False
        p = sample_augmentation(self.aug, rng)
        a = crop_affine(r.center, r.side, self.input_size, scale=p["scale"], rotation=p["rotation"],
                        shift=p["shift"])
        return a, p["flip"]

    def _item(self, i: int) -> dict:
        r = self.records[i]
        src, src_affine = self._source(r)
        rng = None
        if self.train:
            # one seed per item from torch's RNG: reproducible under torch.manual_seed and
            # different in every DataLoader worker (torch seeds each worker)
            rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item()))
        a, flip = self._affine(r, rng)
        if flip:
            a_full = compose(flip_affine(self.input_size), a)
        else:
            a_full = a
        if self.cache and not self._geometric:
            crop = src  # the stored crop is exactly this item's crop
        else:
            crop = warp_crop(src, compose(a_full, invert_affine(src_affine)), self.input_size)
        if self._appearance:
            crop = appearance_augment(crop, rng, p=self.aug.appearance_prob)

        kp = self.keypoints[i]
        kp_in = np.concatenate([apply_affine(a, kp[:, :2]).astype(np.float32), kp[:, 2:3]], axis=1)
        if flip:
            kp_in = flip_keypoints(kp_in, self.input_size, self.codec.flip_index)
        inside = ((kp_in[:, :2] >= -0.5) & (kp_in[:, :2] < self.input_size - 0.5)).all(axis=1)
        kp_in[:, 2] = np.where(inside, kp_in[:, 2], 0.0)
        target, weight = self.codec.encode(kp_in)

        image = (crop.astype(np.float32) / 255.0 - self._mean) / self._std  # S, S, 3
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            "target": torch.from_numpy(target),
            "target_weight": torch.from_numpy(weight),
            "keypoints": torch.from_numpy(kp_in.astype(np.float32)),
            "affine": torch.from_numpy(a_full.astype(np.float32)),
            "index": torch.tensor(i, dtype=torch.int64),
            "video": torch.tensor(int(r.video), dtype=torch.int64),
            "frame": torch.tensor(int(r.frame), dtype=torch.int64),
        }

    def __getitem__(self, i: int) -> dict:
        n = len(self.records)
        if not 0 <= i < n:
            raise IndexError(f"index {i} out of range for {n} records")
        for step in range(n):
            j = (i + step) % n
            try:
                return self._item(j)
            except UnreadableImage as exc:
                if self.strict:
                    raise DataError(f"unreadable image: {exc}") from None
                warnings.warn(
                    f"skipping unreadable image {exc} ({len(self._bad)} unreadable so far); "
                    f"returning the next readable record",
                    stacklevel=2,
                )
        raise DataError(f"none of the {n} images can be read (first: {self._path(self.records[i])})")
