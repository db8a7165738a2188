"""Rasterise a posed :class:`~da_pose.data.toy.body.Figure` and finish frames (blur, noise, light).

Drawing is a painter's algorithm over the figure's primitives: far-side limbs first, then the
midline (tail, torso, neck, head), then near-side limbs, then the eyes that face the camera.
Each primitive is rasterised anti-aliased into a mask of its bounding box and blended with its
material: a flat colour or a texture defined on the camera plane of the body (so a pattern
moves with the animal across the frames of a video). A label buffer records which primitive
is on top at each pixel; it decides which sample points are hidden.

Images are float32 RGB in 0..255 while drawing and uint8 at the end.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from da_pose.data.toy.body import Figure, Prim, View, facing_visible, project, side_depth, similarity

SHIFT = 4  # sub-pixel bits for cv2 drawing
ONE = 1 << SHIFT
OCCLUDER = 250  # label of foreground occluders (above every primitive's rank)
FAR_SIDE = 0.3  # a sided primitive is on the far side when its side's depth exceeds this


@dataclass(frozen=True)
class Material:
    """A flat ``colour`` (3,) RGB, or a ``texture`` (S, S, 3) float32 RGB on the camera plane
    whose top-left pixel is at camera-plane ``(u0, v0)`` with ``ppu`` pixels per body unit."""

    colour: tuple[float, float, float] = (128.0, 128.0, 128.0)
    texture: np.ndarray | None = None
    u0: float = 0.0
    v0: float = 0.0
    ppu: float = 1.0


def texture_to_image(material: Material, view: View, x0: int = 0, y0: int = 0) -> np.ndarray:
    """2x3 affine from texture pixels to image pixels (minus an ROI offset ``x0, y0``).

    Texture pixel (a, b) is camera-plane (u0 + a / ppu, v0 - b / ppu); the view's similarity
    maps the camera plane to the image.
    """
    m = similarity(view)
    lin = m[:, :2] @ np.diag([1.0 / material.ppu, -1.0 / material.ppu])
    off = m[:, :2] @ np.array([material.u0, material.v0]) + m[:, 2] - np.array([x0, y0])
    return np.concatenate([lin, off[:, None]], axis=1)


def draw_order(figure: Figure, view: View, facing: dict | None = None) -> list[Prim]:
    """Primitives back to front (eyes, ears, noses facing away from the camera are left out).

    Far-side primitives (layer 0.x), midline primitives (their own layer, ~1), near-side
    primitives (2.x), eyes (3); ties are broken by the mean depth of the primitive's points.
    """
    left_depth = side_depth(view)
    _, depth = project(figure.points, view)
    if facing is None:
        facing = facing_visible(figure, view)
    keyed = []
    for prim in figure.prims:
        if len(prim.points) == 1 and not facing.get(prim.points[0], True):
            continue  # an eye or a nose turned away from the camera
        if prim.material == "eye":
            layer = 3.0
        elif prim.side == 0:
            layer = prim.layer
        else:
            far = prim.side * left_depth > FAR_SIDE
            layer = (0.0 if far else 2.0) + 0.1 * prim.layer
        # among equal layers the farther primitive (larger depth) is painted first
        keyed.append(((layer, -float(depth[list(prim.points)].mean())), prim))
    keyed.sort(key=lambda kv: kv[0])
    return [prim for _, prim in keyed]


def _prim_mask(prim: Prim, xy: np.ndarray, scale: float, shape: tuple[int, int]):
    """Anti-aliased uint8 mask of one primitive in its clipped bounding box.

    Returns (mask, x0, y0) or None when the primitive is off-image.
    """
    pts = xy[list(prim.points)]
    radii = np.asarray(prim.radii, dtype=float) * scale if prim.radii else np.zeros(len(pts))
    pad = (radii.max() if len(radii) else 0.0) + 2.0
    h, w = shape
    x0 = int(max(np.floor(pts[:, 0].min() - pad), 0))
    y0 = int(max(np.floor(pts[:, 1].min() - pad), 0))
    x1 = int(min(np.ceil(pts[:, 0].max() + pad) + 1, w))
    y1 = int(min(np.ceil(pts[:, 1].max() + pad) + 1, h))
    if x1 <= x0 or y1 <= y0:
        return None
    mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
    fixed = np.round((pts - (x0, y0)) * ONE).astype(np.int32)
    if prim.kind == "polygon":
        cv2.fillPoly(mask, [fixed], 255, cv2.LINE_AA, SHIFT)
    else:
        for c, r in zip(fixed, radii):
            cv2.circle(mask, (int(c[0]), int(c[1])), max(int(round(r * ONE)), 1), 255, -1, cv2.LINE_AA, SHIFT)
        for a, b, ra, rb in zip(pts[:-1], pts[1:], radii[:-1], radii[1:]):
            d = b - a
            n = np.array([-d[1], d[0]]) / max(np.hypot(*d), 1e-9)
            quad = np.array([a + ra * n, b + rb * n, b - rb * n, a - ra * n]) - (x0, y0)
            cv2.fillConvexPoly(mask, np.round(quad * ONE).astype(np.int32), 255, cv2.LINE_AA, SHIFT)
    return mask, x0, y0


def _material_patch(material: Material, view: View, x0: int, y0: int, w: int, h: int) -> np.ndarray:
    if material.texture is None:
        return np.broadcast_to(np.asarray(material.colour, np.float32), (h, w, 3))
    m = texture_to_image(material, view, x0, y0)
    return cv2.warpAffine(
        material.texture, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT
    )


def draw_figure(
    image: np.ndarray,
    figure: Figure,
    view: View,
    materials: dict[str, Material],
    far_shade: float = 0.7,
    near_shade: float = 1.0,
    label: np.ndarray | None = None,
) -> tuple[np.ndarray, dict[str, int]]:
    """Paint ``figure`` into ``image`` in place; return the label buffer and primitive ranks.

    Far-side primitives are multiplied by ``far_shade`` and near-side ones by ``near_shade``,
    so left and right limbs can be told apart from the image alone. ``label`` (H, W) uint8
    receives the rank (1-based drawing position) of the top primitive at each pixel.

    Shape:
        image: (H, W, 3) float32 RGB 0..255; returns label (H, W) uint8, {prim name: rank}.
    """
    h, w = image.shape[:2]
    if label is None:
        label = np.zeros((h, w), np.uint8)
    xy, _ = project(figure.points, view)
    left_depth = side_depth(view)
    ranks = {}
    for rank, prim in enumerate(draw_order(figure, view), start=1):
        ranks[prim.name] = rank
        out = _prim_mask(prim, xy, view.scale, (h, w))
        if out is None:
            continue
        mask, x0, y0 = out
        mh, mw = mask.shape
        colour = _material_patch(materials[prim.material], view, x0, y0, mw, mh)
        if prim.side != 0 and prim.material != "eye":
            colour = colour * (far_shade if prim.side * left_depth > FAR_SIDE else near_shade)
        alpha = (mask.astype(np.float32) / 255.0)[..., None]
        roi = image[y0: y0 + mh, x0: x0 + mw]
        roi *= 1.0 - alpha
        roi += alpha * colour
        label[y0: y0 + mh, x0: x0 + mw][mask >= 128] = rank
    return label, ranks


def cast_shadow(image: np.ndarray, figure: Figure, view: View, lean: tuple[float, float], opacity: float) -> None:
    """Darken the ground where a low sun casts the figure's shadow, in place (drawn before the
    figure, so the animal stays on top).

    The ground is the horizontal line through the lowest hoof or toe; a point ``h`` pixels above it
    casts its shadow ``lean[0] * h`` pixels sideways and ``lean[1] * h`` pixels down (toward
    the camera on the ground plane), so each leg's shadow is a dark limb-shaped band that starts
    at its hoof; with a large downward lean (the sun behind the animal) it looks like a second leg.
    """
    if opacity <= 0:
        return
    h, w = image.shape[:2]
    xy, _ = project(figure.points, view)
    feet = [i for i, name in enumerate(figure.names) if name.endswith(("hoof", "toe"))]
    ground = xy[feet, 1].max() if feet else xy[:, 1].max()
    height = np.maximum(ground - xy[:, 1], 0.0)
    shadow = np.stack([xy[:, 0] + lean[0] * height, ground + lean[1] * height], axis=1)
    mask = np.zeros((h, w), np.uint8)
    for prim in figure.prims:
        if prim.material == "eye" or len(prim.points) == 1:
            continue
        out = _prim_mask(prim, shadow, view.scale, (h, w))
        if out is not None:
            m, x0, y0 = out
            roi = mask[y0: y0 + m.shape[0], x0: x0 + m.shape[1]]
            np.maximum(roi, m, out=roi)
    soft = cv2.GaussianBlur(mask.astype(np.float32) / 255.0, (0, 0), 1.5)
    image *= (1.0 - opacity * soft)[..., None]


def hidden_by_label(
    xy: np.ndarray, owner_ranks: np.ndarray, label: np.ndarray
) -> np.ndarray:
    """Whether each point is covered by something drawn after (in front of) its own primitive.

    A point whose owners were all drawn before the top primitive at its pixel is hidden.
    Points outside the image are not "hidden" (the caller handles the frame test).

    Shape:
        xy: (N, 2); owner_ranks (N,) highest rank among the point's primitives (0: none);
        label (H, W); returns bool (N,).
    """
    h, w = label.shape
    xi = np.clip(np.round(xy[:, 0]).astype(np.int64), 0, w - 1)
    yi = np.clip(np.round(xy[:, 1]).astype(np.int64), 0, h - 1)
    top = label[yi, xi].astype(np.int64)
    return top > owner_ranks


def inside(xy: np.ndarray, width: int, height: int, margin: float = 0.0) -> np.ndarray:
    """Pixel-centre convention: -0.5 <= x < W - 0.5 (shrunk by ``margin`` on every side)."""
    x, y = xy[:, 0], xy[:, 1]
    return (x >= margin - 0.5) & (x < width - 0.5 - margin) & (y >= margin - 0.5) & (y < height - 0.5 - margin)


# ------------------------------------------------------------------------------------ finishing


def light_gradient(rng: np.random.Generator, height: int, width: int, strength: float) -> np.ndarray | None:
    """A multiplicative illumination map: a linear ramp in a random direction plus a vignette
    (None when ``strength`` is 0).

    Shape:
        returns (H, W, 1) float32 around 1.
    """
    if strength <= 0:
        return None
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    a = rng.uniform(0, 2 * np.pi)
    ramp = ((xx / width - 0.5) * np.cos(a) + (yy / height - 0.5) * np.sin(a)) * 2  # -1..1
    r2 = ((xx / width - 0.5) ** 2 + (yy / height - 0.5) ** 2) * 2
    light = 1.0 + strength * (0.35 * ramp - 0.4 * r2)
    return light[..., None].astype(np.float32)


def finish(
    image: np.ndarray,
    rng: np.random.Generator,
    blur_sigma: float = 0.0,
    noise_sigma: float = 0.0,
    gain: np.ndarray | None = None,
    light: np.ndarray | None = None,
) -> np.ndarray:
    """Camera effects in the order a sensor sees them: illumination and white balance
    (``gain`` (3,)), optical blur, then sensor noise (luminance noise plus a third as much
    per-channel noise); returns uint8 RGB.

    Shape:
        image: (H, W, 3) float32 0..255; returns (H, W, 3) uint8.
    """
    out = image
    if light is not None:
        out = out * light
    if gain is not None and np.any(np.asarray(gain) != 1):
        out = cv2.multiply(out, tuple(float(g) for g in gain) + (1.0,))
    if blur_sigma > 0.05:
        out = cv2.GaussianBlur(out, (0, 0), blur_sigma)
    if noise_sigma > 0:
        h, w = out.shape[:2]
        luma = rng.standard_normal((h, w), dtype=np.float32) * np.float32(noise_sigma)
        chroma = rng.standard_normal((h // 2, w // 2, 3), dtype=np.float32) * np.float32(noise_sigma / 3)
        noise = cv2.resize(chroma, (w, h), interpolation=cv2.INTER_NEAREST)
        noise += cv2.merge([luma, luma, luma])
        out = cv2.add(out, noise)
    # cv2 rounds to nearest and saturates to 0..255
    return cv2.convertScaleAbs(cv2.max(out, 0.0))
