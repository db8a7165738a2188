"""RandAugmentMC and grey cutouts in batched torch: ScarceNet's strong augmentation of the
student's view (Li & Lee CVPR 2023; FACTS section 8.4, ``lib/utils/augmentation_pool.py``),
itself FixMatch's RandAugment restricted to appearance operations.

Per image: ``n`` operations drawn with replacement from :data:`OPS`, each with a magnitude
``v`` uniform in 1 .. m - 1 (published n = 2, m = 10) and applied with probability ``p`` (0.5);
then, with probability ``cutout_prob`` (0.5), ``holes`` grey squares (6 of 32 px at 256 px).

The operations follow PIL's definitions on [0, 1] float pixels instead of uint8 images (no PIL
or torchvision needed): the enhancement operations blend with a degenerate image (black, grey
level, grey mean, smoothed image) by a factor ``0.9 v / 10 + 0.05``; Posterize keeps
``int(4 v / 10) + 4`` bits; Solarize inverts pixels at or above ``256 - int(25.6 v)`` (uint8
levels); Equalize and Posterize quantise to 256 levels. The tensors the model sees are
normalised (``(x - mean) / std``): :func:`rand_augment` maps to pixels and back only for the
images an operation changes, so an image that drew only Identity (or nothing) is returned
bit for bit.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

OPS = ("AutoContrast", "Brightness", "Color", "Contrast", "Equalize", "Identity", "Posterize", "Sharpness",
       "Solarize")
IDENTITY = OPS.index("Identity")
GREY = 127.0 / 255.0  # the published cutout colour (127, 127, 127)


def _factor(v: Tensor) -> Tensor:
    """The enhancement factor of magnitude v (max 0.9, bias 0.05, PARAMETER_MAX 10)."""
    return v.float() * 0.9 / 10.0 + 0.05


def _grey(x: Tensor) -> Tensor:
    """PIL's 'L' conversion (ITU-R 601-2 luma). (N, 3, H, W) -> (N, 1, H, W)."""
    return 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]


def _blend(degenerate: Tensor, x: Tensor, factor: Tensor) -> Tensor:
    """PIL ImageEnhance: ``degenerate + f (x - degenerate)``, clipped to [0, 1]."""
    f = factor.view(-1, 1, 1, 1).to(x.dtype)
    return (degenerate + f * (x - degenerate)).clamp(0.0, 1.0)


def _levels(x: Tensor) -> Tensor:
    """[0, 1] pixels -> integer uint8 levels (long)."""
    return (x * 255.0).round().clamp(0, 255).long()


def auto_contrast(x: Tensor) -> Tensor:
    """Stretch every channel of every image to the full range (PIL autocontrast, cutoff 0)."""
    lo = x.amin(dim=(2, 3), keepdim=True)
    hi = x.amax(dim=(2, 3), keepdim=True)
    span = hi - lo
    return torch.where(span > 0, (x - lo) / span.clamp_min(1e-12), x)


def equalize(x: Tensor) -> Tensor:
    """Histogram equalisation per image and channel on 256 levels (PIL ImageOps.equalize: the
    step ignores the last occupied level; a channel with a single level stays unchanged)."""
    n, c, h, w = x.shape
    q = _levels(x).view(n * c, h * w)
    hist = torch.zeros(n * c, 256, dtype=torch.long, device=x.device).scatter_add_(1, q, torch.ones_like(q))
    last = 255 - (hist > 0).flip(1).long().argmax(dim=1, keepdim=True)  # the last occupied level
    step = (h * w - hist.gather(1, last)) // 255  # N C, 1
    below = hist.cumsum(1) - hist  # pixels strictly below each level
    lut = ((below + step // 2) // step.clamp_min(1)).clamp(max=255)
    lut = torch.where(step > 0, lut, torch.arange(256, device=x.device).expand_as(lut))
    return (lut.gather(1, q).to(x.dtype) / 255.0).view(n, c, h, w)


def posterize(x: Tensor, bits: Tensor) -> Tensor:
    """Keep the top ``bits`` (per image) of each uint8 level."""
    drop = (8 - bits.long()).view(-1, 1, 1, 1)
    q = _levels(x)
    return ((q >> drop) << drop).to(x.dtype) / 255.0


def sharpness(x: Tensor, factor: Tensor) -> Tensor:
    """Blend with PIL's SMOOTH filter (3 x 3, centre 5, sum 13); border pixels are kept."""
    kernel = torch.ones(3, 3, dtype=x.dtype, device=x.device)
    kernel[1, 1] = 5.0
    kernel = (kernel / 13.0).expand(x.shape[1], 1, 3, 3)
    smooth = F.conv2d(x, kernel, padding=1, groups=x.shape[1])
    inner = torch.zeros_like(x, dtype=torch.bool)
    inner[..., 1:-1, 1:-1] = True
    return _blend(torch.where(inner, smooth, x), x, factor)


def solarize(x: Tensor, threshold: Tensor) -> Tensor:
    """Invert the pixels whose uint8 level is >= ``threshold`` (per image, 0 .. 256)."""
    return torch.where(_levels(x) >= threshold.view(-1, 1, 1, 1), 1.0 - x, x)


def apply_op(x: Tensor, name: str, v: Tensor) -> Tensor:
    """Operation ``name`` of :data:`OPS` at magnitudes ``v`` (one per image, 1 .. 9).

    Shape:
        x: (N, 3, H, W) pixels in [0, 1]; v: (N,) -> (N, 3, H, W) in [0, 1]
    """
    if name == "Identity":
        return x
    if name == "AutoContrast":
        return auto_contrast(x)
    if name == "Equalize":
        return equalize(x)
    if name == "Brightness":
        return _blend(torch.zeros_like(x), x, _factor(v))
    if name == "Color":
        return _blend(_grey(x).expand_as(x), x, _factor(v))
    if name == "Contrast":
        return _blend(_grey(x).mean(dim=(1, 2, 3), keepdim=True).expand_as(x), x, _factor(v))
    if name == "Sharpness":
        return sharpness(x, _factor(v))
    if name == "Posterize":
        return posterize(x, (v.long() * 4) // 10 + 4)
    if name == "Solarize":
        return solarize(x, 256 - (v.long() * 256) // 10)
    raise ValueError(f"unknown RandAugment operation '{name}'; valid: {', '.join(OPS)}")


def draw_plan(batch: int, n: int = 2, m: int = 10, p: float = 0.5) -> dict[str, Tensor]:
    """Per image and slot: an operation index, a magnitude in 1 .. m - 1, and whether it applies.
    Draws from torch's global (CPU) generator, which the trainer reseeds every epoch.

    Shape:
        -> ops, mags long (B, n); apply bool (B, n)
    """
    ops = torch.randint(0, len(OPS), (batch, n))
    mags = torch.randint(1, max(2, m), (batch, n))
    apply = torch.rand(batch, n) < p
    return {"ops": ops, "mags": mags, "apply": apply}


def rand_augment(images: Tensor, mean: Tensor, std: Tensor, plan: dict[str, Tensor]) -> Tensor:
    """RandAugmentMC on normalised images following ``plan`` (:func:`draw_plan`), in slot order.

    Shape:
        images: (B, 3, S, S) normalised; mean, std: (1, 3, 1, 1) -> (B, 3, S, S) normalised
    """
    ops, mags, apply = (plan[k].to(images.device) for k in ("ops", "mags", "apply"))
    active = apply & (ops != IDENTITY)  # B, n
    changed = active.any(dim=1)
    if not bool(changed.any()):
        return images
    raw = (images[changed] * std + mean).clamp(0.0, 1.0)
    ops, mags, active = ops[changed], mags[changed], active[changed]
    for slot in range(ops.shape[1]):
        for code in ops[:, slot][active[:, slot]].unique().tolist():
            sel = active[:, slot] & (ops[:, slot] == code)
            raw[sel] = apply_op(raw[sel], OPS[code], mags[sel, slot])
    out = images.clone()
    out[changed] = ((raw - mean) / std).to(images.dtype)
    return out


def cutout_boxes(batch: int, holes: int, size: int, side: int) -> Tensor:
    """``holes`` boxes per image as published: a centre uniform on the image, the box
    ``[c - size/2, c + size/2)`` clipped to the image (so a box at the border is smaller).

    Shape:
        -> long (B, holes, 4) x0, y0, x1, y1 (exclusive ends)
    """
    centre = torch.rand(batch, holes, 2, dtype=torch.float64) * side
    lo = (centre - size / 2.0).clamp_min(0).floor().long()
    hi = (lo + size).clamp_max(side)
    return torch.cat((lo, hi), dim=-1)


def apply_cutout(images: Tensor, boxes: Tensor, active: Tensor, fill: Tensor) -> Tensor:
    """Paint ``fill`` (per channel, in the images' normalised units) into every box of the
    ``active`` images.

    Shape:
        images: (B, C, S, S); boxes: (B, n, 4); active: bool (B,); fill: (1, C, 1, 1) -> (B, C, S, S)
    """
    b, _, h, w = images.shape
    boxes = boxes.to(images.device)
    ys = torch.arange(h, device=images.device).view(1, 1, h, 1)
    xs = torch.arange(w, device=images.device).view(1, 1, 1, w)
    x0, y0, x1, y1 = (boxes[..., i].view(b, -1, 1, 1) for i in range(4))
    inside = ((xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1)).any(dim=1)  # B, h, w
    inside = inside & active.to(images.device).view(b, 1, 1)
    return torch.where(inside[:, None], fill.to(images.dtype).expand_as(images), images)


def random_cutout(images: Tensor, mean: Tensor, std: Tensor, holes: int = 6, size: int = 32,
                  p: float = 0.5) -> Tensor:
    """With probability ``p`` per image, ``holes`` grey ``size`` x ``size`` cutouts.

    Shape:
        images: (B, 3, S, S) normalised -> (B, 3, S, S)
    """
    b, s = images.shape[0], images.shape[-1]
    active = torch.rand(b) < p
    boxes = cutout_boxes(b, holes, size, s)
    if holes <= 0 or size <= 0 or not bool(active.any()):
        return images
    return apply_cutout(images, boxes, active, (GREY - mean) / std)
