"""Keypoint-aware geometric transforms (which return their matrix) and appearance transforms.

Geometry is expressed as 2 x 3 affine matrices that map pixel coordinates (integer values at
pixel centres, OpenCV convention) from one frame to another. A transform that returns its
matrix lets the caller map keypoints with :func:`apply_affine`, invert it to bring predictions
back (:func:`invert_affine`), and warp heatmaps with the same map (:func:`heatmap_affine`,
:func:`warp_batch`), which CC-SSL's equivariance pseudo-labels need.

The matrix helpers (:func:`compose`, :func:`invert_affine`, :func:`apply_affine`,
:func:`heatmap_affine`) take numpy arrays or torch tensors, single (2, 3) or batched (..., 2, 3).

Appearance transforms work on float images in [0, 1] (before mean/std normalisation): batched
torch functions with a ``torch.Generator`` for CC-SSL's T_beta and GPU-side augmentation, and a
numpy/OpenCV per-sample :func:`appearance_augment` for the dataset.

imgaug 0.4 does not import under NumPy 2, so the published "strong" augmentation (CC-SSL,
FACTS section 4: every step with p = 0.5, in random order) is rebuilt here:

| published imgaug step (FACTS 4)      | replacement here                                                   |
|--------------------------------------|--------------------------------------------------------------------|
| Affine scale 0.5-1.5 (per axis)      | dataset: ``crop_affine(scale=s)``, isotropic, s = 1 + N(0,1)       |
|                                      | aug.scale clamped to 1 +- 2 aug.scale (0.5-1.5 with 0.25)          |
| Affine translate +-5 %               | dataset: ``crop_affine(shift=...)``, uniform +- aug.translate of   |
|                                      | the crop side per axis                                             |
| Affine rotate +-30                   | dataset: ``crop_affine(rotation=r)``, r = N(0,1) aug.rotate        |
|                                      | clamped to +- 2 aug.rotate, with p = aug.rotate_prob               |
| Affine shear +-20                    | not reproduced (AugConfig has no shear)                            |
| AdditiveGaussianNoise(0.5 x 255,     | ``add_gaussian_noise`` / ``appearance_augment`` noise step: sigma  |
| per_channel=0.5)                     | uniform in ``noise_sigma`` (fraction of 255), per channel half the |
|                                      | time. Published ``PUBLISHED_STRONG["noise_sigma"] = (0.5, 0.5)``   |
|                                      | swamps a small crop; default ``NOISE_SIGMA = (0, 0.05)``           |
| GaussianBlur sigma 1-5               | ``gaussian_blur`` (separable conv, reflect border) /               |
|                                      | ``cv2.GaussianBlur``. Published (1, 5) px on the full 640 x 480    |
|                                      | image; default ``BLUR_SIGMA = (0.5, 1.5)`` px on 64-128 px crops   |
| ContrastNormalization 0.5-2.0        | ``adjust_contrast``: 128 + a (v - 128), a uniform in               |
|                                      | ``CONTRAST = (0.5, 2.0)`` (published)                              |
| Fliplr p = 0.5                       | dataset: ``crop_affine(flip=True)`` + ``flip_keypoints`` (left and |
|                                      | right joints swapped via ``FLIP_INDEX``)                           |
| (none; CC-SSL T_beta colour change)  | ``adjust_brightness_colour``: a brightness gain 1 +- 0.2 and       |
|                                      | per-channel gains 1 +- 0.1 (``BRIGHTNESS``, ``COLOUR``)            |

Every appearance step runs with probability p (published 0.5; dataset: ``aug.appearance_prob``)
in a random order per sample, as published (FACTS section 4).
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch
import torch.nn.functional as F

# Default appearance magnitudes, in [0, 1] image units (noise sigma as a fraction of 255) and
# crop pixels (blur sigma); chosen for small CPU crops (64-128 px). See the module table.
NOISE_SIGMA: tuple[float, float] = (0.0, 0.05)
BLUR_SIGMA: tuple[float, float] = (0.5, 1.5)
CONTRAST: tuple[float, float] = (0.5, 2.0)
BRIGHTNESS: float = 0.2
COLOUR: float = 0.1
NOISE_PER_CHANNEL: float = 0.5
# The published "strong" augmentation's magnitudes (CC-SSL, FACTS section 4), for 256 px work.
PUBLISHED_STRONG: dict = {
    "noise_sigma": (0.5, 0.5),
    "blur_sigma": (1.0, 5.0),
    "contrast": (0.5, 2.0),
    "brightness": 0.0,
    "colour": 0.0,
}
_CONTRAST_PIVOT = 128.0 / 255.0  # imgaug's ContrastNormalization pivots around 128

# ----------------------------------------------------------------------------------------------
# affine matrices (numpy or torch, single or batched)


def _is_torch(a) -> bool:
    return isinstance(a, torch.Tensor)


def _cat_last(parts, like):
    return torch.cat(parts, dim=-1) if _is_torch(like) else np.concatenate(parts, axis=-1)


def _swap_last(a):
    return a.transpose(-1, -2) if _is_torch(a) else np.swapaxes(a, -1, -2)


def _same_kind(a, b):
    """Both torch (on ``a``'s device and dtype) when either is torch, else both numpy."""
    if _is_torch(a) and not _is_torch(b):
        return a, torch.as_tensor(np.asarray(b), dtype=a.dtype, device=a.device)
    if _is_torch(b) and not _is_torch(a):
        return torch.as_tensor(np.asarray(a), dtype=b.dtype, device=b.device), b
    if not _is_torch(a):
        return np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return a, b


def compose(a, b):
    """The affine map "first ``b``, then ``a``" (the matrix product ``a @ b`` in 3 x 3 form).

    Shape:
        a: (..., 2, 3), b: (..., 2, 3) (batch dims broadcast) -> (..., 2, 3)
    """
    a, b = _same_kind(a, b)
    lin = a[..., :2, :2] @ b[..., :2, :2]
    t = (a[..., :2, :2] @ b[..., :2, 2:3])[..., 0] + a[..., :, 2]
    return _cat_last([lin, t[..., None]], lin)


def invert_affine(a):
    """Inverse map: ``apply_affine(invert_affine(a), apply_affine(a, p)) == p``.

    Shape:
        a: (..., 2, 3) -> (..., 2, 3)
    """
    if not _is_torch(a):
        a = np.asarray(a, dtype=np.float64)
    lin = a[..., :2, :2]
    inv = torch.linalg.inv(lin) if _is_torch(a) else np.linalg.inv(lin)
    t = -(inv @ a[..., :2, 2:3])
    return _cat_last([inv, t], inv)


def apply_affine(a, pts):
    """Map points.

    Shape:
        a (2, 3), pts (..., 2) -> (..., 2);  a (B, 2, 3), pts (B, N, 2) -> (B, N, 2)
    """
    a, pts = _same_kind(a, pts)
    lin, t = a[..., :2, :2], a[..., :, 2]
    if a.ndim == 2:
        return pts @ _swap_last(lin) + t
    return pts @ _swap_last(lin) + t[..., None, :]


def crop_affine(
    center,
    side: float,
    input_size: int,
    scale: float = 1.0,
    rotation: float = 0.0,
    flip: bool = False,
    shift=(0.0, 0.0),
) -> np.ndarray:
    """Affine map from ORIGINAL image pixels to INPUT pixels of a square crop.

    The square of ``side * scale`` pixels centred at ``center + shift * side * scale`` is
    mapped onto the ``input_size`` x ``input_size`` input: its centre lands on the input centre
    ``(input_size - 1) / 2`` and its side on ``input_size`` pixels (the crop's outer edges at
    -0.5 and input_size - 0.5).

    Args:
        center: (x, y) of the crop centre in original pixels.
        side: crop side in original pixels.
        scale: > 1 zooms out (a larger region), < 1 zooms in.
        rotation: degrees about the crop centre; positive turns the image content
            counter-clockwise on screen (``cv2.getRotationMatrix2D``'s convention).
        flip: mirror the crop horizontally, ``x -> input_size - 1 - x`` (the caller swaps
            left/right joints, :func:`flip_keypoints`).
        shift: (dx, dy) move of the crop window as a fraction of the (scaled) crop side.
    Returns:
        float64 (2, 3).
    """
    side_eff = float(side) * float(scale)
    if not side_eff > 0:
        raise ValueError(f"crop side * scale must be positive, got {side} * {scale}")
    k = input_size / side_eff
    theta = math.radians(rotation)
    c, s = math.cos(theta), math.sin(theta)
    lin = k * np.array([[c, s], [-s, c]], dtype=np.float64)
    src = np.asarray(center, dtype=np.float64) + np.asarray(shift, dtype=np.float64) * side_eff
    mid = (input_size - 1) / 2.0
    t = np.array([mid, mid]) - lin @ src
    out = np.concatenate([lin, t[:, None]], axis=1)
    if flip:
        out = compose(flip_affine(input_size), out)
    return out


def flip_affine(width: int) -> np.ndarray:
    """Horizontal mirror of an image ``width`` pixels wide: ``x -> width - 1 - x``. (2, 3)."""
    return np.array([[-1.0, 0.0, width - 1.0], [0.0, 1.0, 0.0]])


def flip_keypoints(kpts: np.ndarray, width: int, flip_index) -> np.ndarray:
    """Keypoints of the mirrored image: x mirrored, left/right joints swapped.

    Joint ``j`` of the result is the mirror of joint ``flip_index[j]``.

    Shape:
        kpts: (K, 3) x, y, visible -> (K, 3) (a new array, same dtype)
    """
    out = np.array(kpts, copy=True)
    out[:, 0] = width - 1 - out[:, 0]
    return out[np.asarray(flip_index)]


def heatmap_affine(a_input, stride: float):
    """An input-pixel map (input -> input) expressed in heatmap pixels (heatmap -> heatmap).

    With the block-centre convention ``x_hm = (x_in + 0.5) / stride - 0.5`` this is
    ``to_hm o a_input o to_in``.

    Shape:
        a_input: (..., 2, 3) numpy or torch -> (..., 2, 3)
    """
    to_hm = np.array([[1.0 / stride, 0.0, 0.5 / stride - 0.5], [0.0, 1.0 / stride, 0.5 / stride - 0.5]])
    to_in = np.array([[stride, 0.0, 0.5 * stride - 0.5], [0.0, stride, 0.5 * stride - 0.5]])
    return compose(to_hm, compose(a_input, to_in))


def _size2(size) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def _pixel_to_norm(size_hw: tuple[int, int], dtype, device) -> torch.Tensor:
    """Pixel coordinates -> grid_sample's normalised coordinates (align_corners=False).

    With align_corners=False, -1 and 1 are the outer edges of the border pixels, i.e. pixel
    coordinates -0.5 and size - 0.5: u = (2 x + 1) / size - 1, matching pixel centres at
    integers.
    """
    h, w = size_hw
    return torch.tensor(
        [[2.0 / w, 0.0, 1.0 / w - 1.0], [0.0, 2.0 / h, 1.0 / h - 1.0]], dtype=dtype, device=device
    )


def warp_batch(x: torch.Tensor, a: torch.Tensor, out_size) -> torch.Tensor:
    """Warp a batch of images or heatmaps by affine maps, like ``cv2.warpAffine`` (bilinear,
    zero border), with ``F.affine_grid``/``F.grid_sample``.

    Args:
        x: (B, C, h, w) float.
        a: (B, 2, 3) or (2, 3) mapping SOURCE pixels -> DEST pixels (as ``cv2.warpAffine``'s M).
        out_size: int or (H', W').
    Shape:
        -> (B, C, H', W')
    """
    b, c, h, w = x.shape
    oh, ow = _size2(out_size)
    a = torch.as_tensor(a, device=x.device, dtype=torch.float64)
    if a.dim() == 2:
        a = a.expand(b, 2, 3)
    # dest pixel -> source pixel, then both ends in normalised coordinates
    src_from_dst = invert_affine(a)  # B, 2, 3
    norm_src = _pixel_to_norm((h, w), torch.float64, x.device)
    pix_dst = invert_affine(_pixel_to_norm((oh, ow), torch.float64, x.device))
    theta = compose(norm_src, compose(src_from_dst, pix_dst))  # B, 2, 3
    grid = F.affine_grid(theta.to(x.dtype), [b, c, oh, ow], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def warp_heatmaps(heatmaps: torch.Tensor, a_input, input_size: int) -> torch.Tensor:
    """Heatmaps predicted on one view, seen from another: ``a_input`` maps INPUT pixels of the
    first view to input pixels of the second; the maps are warped by that map expressed in
    heatmap pixels (:func:`heatmap_affine`, then :func:`warp_batch`: bilinear, zero outside).
    CC-SSL's equivariance and the mean teacher's teacher -> student map both use it.

    Shape:
        heatmaps: (B, K, h, w); a_input: (B, 2, 3) -> (B, K, h, w)
    """
    h = heatmaps.shape[-1]
    return warp_batch(heatmaps, heatmap_affine(a_input, input_size / h), h)


def random_geometric(
    batch: int,
    generator: torch.Generator | None,
    scale_sigma: float = 0.25,
    scale_clamp: float = 0.25,
    rotate_sigma: float = 30.0,
    rotate_clamp: float = 60.0,
    flip_prob: float = 0.0,
    size: int = 256,
) -> torch.Tensor:
    """CC-SSL's random geometric transforms T_alpha (Mu et al. 2020; FACTS section 4), about the
    image centre, as input -> input pixel maps.

    scale = clamp(1 + scale_sigma N(0,1), 1 - scale_clamp, 1 + scale_clamp) (> 1 zooms out, as in
    :func:`crop_affine`), rotation = clamp(rotate_sigma N(0,1), -rotate_clamp, rotate_clamp)
    degrees, horizontal flip with ``flip_prob`` (published: no flip). Samples are drawn on the
    generator's device.

    Shape:
        -> float32 (B, 2, 3), each equal to
        ``crop_affine(((size-1)/2,)*2, size, size, scale, rotation, flip)``
    """
    device = generator.device if generator is not None else torch.device("cpu")
    z = torch.randn(batch, 2, generator=generator, device=device, dtype=torch.float64)
    u = torch.rand(batch, generator=generator, device=device, dtype=torch.float64)
    scale = (1.0 + scale_sigma * z[:, 0]).clamp(1.0 - scale_clamp, 1.0 + scale_clamp)
    theta = torch.deg2rad((rotate_sigma * z[:, 1]).clamp(-rotate_clamp, rotate_clamp))
    flip = u < flip_prob
    k = 1.0 / scale
    cos, sin = k * torch.cos(theta), k * torch.sin(theta)
    mid = (size - 1) / 2.0
    # crop_affine with side = input_size = size, centre = mid: lin = k R, t = mid - lin @ mid
    row0 = torch.stack((cos, sin, mid - (cos + sin) * mid), dim=-1)
    row1 = torch.stack((-sin, cos, mid - (cos - sin) * mid), dim=-1)
    sign = torch.where(flip, -1.0, 1.0).to(torch.float64)[:, None]
    off = torch.where(flip, size - 1.0, 0.0).to(torch.float64)
    row0 = sign * row0
    row0 = torch.cat((row0[:, :2], (row0[:, 2] + off)[:, None]), dim=1)
    return torch.stack((row0, row1), dim=1).to(torch.float32)


# ----------------------------------------------------------------------------------------------
# appearance: batched torch on (B, 3, H, W) float images in [0, 1]


def _uniform(n: int, lo_hi, generator, device, dtype=torch.float32) -> torch.Tensor:
    lo, hi = float(lo_hi[0]), float(lo_hi[1])
    gdev = generator.device if generator is not None else torch.device("cpu")
    return (lo + (hi - lo) * torch.rand(n, generator=generator, device=gdev, dtype=dtype)).to(device)


def _randn(shape, generator, device, dtype=torch.float32) -> torch.Tensor:
    gdev = generator.device if generator is not None else torch.device("cpu")
    return torch.randn(shape, generator=generator, device=gdev, dtype=dtype).to(device)


def add_gaussian_noise(
    images: torch.Tensor,
    generator: torch.Generator | None,
    sigma=NOISE_SIGMA,
    per_channel: float = NOISE_PER_CHANNEL,
) -> torch.Tensor:
    """Additive Gaussian noise, sigma uniform in ``sigma`` per sample; independent per channel
    with probability ``per_channel``, else one noise image for all channels (imgaug's
    AdditiveGaussianNoise(per_channel=0.5)). Clipped to [0, 1].

    Shape:
        images: (B, C, H, W) -> (B, C, H, W)
    """
    b, c, h, w = images.shape
    s = _uniform(b, sigma, generator, images.device, images.dtype)  # B
    per = _uniform(b, (0.0, 1.0), generator, images.device) < per_channel  # B
    noise_c = _randn((b, c, h, w), generator, images.device, images.dtype)
    noise_g = _randn((b, 1, h, w), generator, images.device, images.dtype).expand(b, c, h, w)
    noise = torch.where(per[:, None, None, None], noise_c, noise_g)
    return (images + s[:, None, None, None] * noise).clamp(0.0, 1.0)


def gaussian_blur(images: torch.Tensor, generator: torch.Generator | None, sigma=BLUR_SIGMA) -> torch.Tensor:
    """Gaussian blur with sigma uniform in ``sigma`` (pixels) per sample; separable grouped
    convolution, reflect border (OpenCV's default BORDER_REFLECT_101).

    Shape:
        images: (B, C, H, W) -> (B, C, H, W)
    """
    b, c, h, w = images.shape
    s = _uniform(b, sigma, generator, images.device, images.dtype).clamp_min(1e-3)  # B
    r = max(1, math.ceil(3.0 * float(max(sigma))))
    x = torch.arange(-r, r + 1, device=images.device, dtype=images.dtype)
    ker = torch.exp(-(x[None, :] ** 2) / (2.0 * s[:, None] ** 2))  # B, 2r+1
    ker = (ker / ker.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # B*C, 2r+1
    mode = "reflect" if r < h and r < w else "replicate"
    y = images.reshape(1, b * c, h, w)
    y = F.conv2d(F.pad(y, (r, r, 0, 0), mode=mode), ker[:, None, None, :], groups=b * c)
    y = F.conv2d(F.pad(y, (0, 0, r, r), mode=mode), ker[:, None, :, None], groups=b * c)
    return y.reshape(b, c, h, w)


def adjust_contrast(images: torch.Tensor, generator: torch.Generator | None, factor=CONTRAST) -> torch.Tensor:
    """imgaug's ContrastNormalization: ``128 + a (v - 128)``, a uniform in ``factor`` per
    sample. Clipped to [0, 1].

    Shape:
        images: (B, C, H, W) -> (B, C, H, W)
    """
    a = _uniform(images.shape[0], factor, generator, images.device, images.dtype)[:, None, None, None]
    return (_CONTRAST_PIVOT + a * (images - _CONTRAST_PIVOT)).clamp(0.0, 1.0)


def adjust_brightness_colour(
    images: torch.Tensor,
    generator: torch.Generator | None,
    brightness: float = BRIGHTNESS,
    colour: float = COLOUR,
) -> torch.Tensor:
    """Brightness (one gain in 1 +- brightness) and colour (a gain in 1 +- colour per channel)
    per sample. Clipped to [0, 1].

    Shape:
        images: (B, C, H, W) -> (B, C, H, W)
    """
    b, c = images.shape[:2]
    g = 1.0 + _uniform(b, (-brightness, brightness), generator, images.device, images.dtype)  # B
    gc = 1.0 + _uniform(b * c, (-colour, colour), generator, images.device, images.dtype).view(b, c)
    return (images * (g[:, None] * gc)[:, :, None, None]).clamp(0.0, 1.0)


def _scaled_magnitudes(strength: float, noise_sigma, blur_sigma, contrast, brightness, colour) -> dict:
    """Scale every magnitude's distance from the identity by ``strength``."""
    return {
        "noise_sigma": (noise_sigma[0] * strength, noise_sigma[1] * strength),
        "blur_sigma": (blur_sigma[0] * strength, blur_sigma[1] * strength),
        "contrast": (contrast[0] ** strength, contrast[1] ** strength),  # multiplicative range
        "brightness": brightness * strength,
        "colour": colour * strength,
    }


def random_appearance(
    images: torch.Tensor,
    generator: torch.Generator | None,
    p: float = 0.5,
    strength: float = 1.0,
    *,
    noise_sigma=NOISE_SIGMA,
    blur_sigma=BLUR_SIGMA,
    contrast=CONTRAST,
    brightness: float = BRIGHTNESS,
    colour: float = COLOUR,
) -> torch.Tensor:
    """Noise, blur, contrast and brightness/colour, each with probability ``p``, in a random
    order per sample (the published strong augmentation's order and probability; CC-SSL's
    appearance transforms T_beta).

    ``strength`` scales every magnitude's distance from the identity (0: nothing changes).

    Shape:
        images: (B, 3, H, W) float in [0, 1] -> (B, 3, H, W)
    """
    m = _scaled_magnitudes(strength, noise_sigma, blur_sigma, contrast, brightness, colour)
    ops = (
        lambda x: add_gaussian_noise(x, generator, m["noise_sigma"]),
        lambda x: gaussian_blur(x, generator, m["blur_sigma"]),
        lambda x: adjust_contrast(x, generator, m["contrast"]),
        lambda x: adjust_brightness_colour(x, generator, m["brightness"], m["colour"]),
    )
    b = images.shape[0]
    gdev = generator.device if generator is not None else torch.device("cpu")
    order = torch.rand(b, len(ops), generator=generator, device=gdev).argsort(dim=1).to(images.device)
    apply = (torch.rand(b, len(ops), generator=generator, device=gdev) < p).to(images.device)
    out = images.clone()
    for slot in range(len(ops)):
        for k, op in enumerate(ops):
            mask = (order[:, slot] == k) & apply[:, k]  # B
            if mask.any():
                out[mask] = op(out[mask])
    return out


# ----------------------------------------------------------------------------------------------
# appearance: numpy / OpenCV, one uint8 RGB image (dataset workers)


def appearance_augment(
    image: np.ndarray,
    rng: np.random.Generator,
    p: float = 0.5,
    *,
    noise_sigma=NOISE_SIGMA,
    blur_sigma=BLUR_SIGMA,
    contrast=CONTRAST,
    brightness: float = BRIGHTNESS,
    colour: float = COLOUR,
    per_channel: float = NOISE_PER_CHANNEL,
) -> np.ndarray:
    """Per-sample version of :func:`random_appearance` for uint8 RGB crops.

    Each step (noise, blur, contrast, brightness/colour) with probability ``p``, in random
    order. Magnitudes in the same units as the torch functions ([0, 1] images, blur sigma in
    pixels).

    Shape:
        image: uint8 (H, W, 3) -> uint8 (H, W, 3)
    """
    x = image.astype(np.float32) / 255.0
    for k in rng.permutation(4):
        if rng.random() >= p:
            continue
        if k == 0:
            s = rng.uniform(*noise_sigma)
            shape = x.shape if rng.random() < per_channel else x.shape[:2] + (1,)
            x = x + np.float32(s) * rng.standard_normal(shape, dtype=np.float32)
        elif k == 1:
            s = max(float(rng.uniform(*blur_sigma)), 1e-3)
            x = cv2.GaussianBlur(x, (0, 0), sigmaX=s, sigmaY=s, borderType=cv2.BORDER_REFLECT_101)
        elif k == 2:
            a = np.float32(rng.uniform(*contrast))
            x = _CONTRAST_PIVOT + a * (x - _CONTRAST_PIVOT)
        else:
            g = (1.0 + rng.uniform(-brightness, brightness)) * (
                1.0 + rng.uniform(-colour, colour, size=x.shape[-1])
            )
            x = x * g.astype(np.float32)
        x = np.clip(x, 0.0, 1.0).astype(np.float32)
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)
