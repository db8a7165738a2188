"""Colours, coat textures, backgrounds and occluders of the embedded benchmark.

Everything takes a ``numpy.random.Generator`` and returns float32 RGB arrays in 0..255; no
global random state is touched, so a seed fixes every pixel.

Source-like ("simple") pictures: flat or geometric coats in natural or arbitrary colours, on
procedural backgrounds of gradients and random shapes, like the random-texture synthetic
animals of CC-SSL. Target-like ("scene") pictures: natural coats with fur grain, sky, hills and
ground with texture, trees, fences, poles and limb-like sticks, foreground occluders.
"""

from __future__ import annotations

import cv2
import numpy as np

from da_pose.data.toy.render import OCCLUDER

# Natural horse coats (RGB): body, lower legs, mane and tail, hooves.
HORSE_COATS: dict[str, tuple[tuple[int, int, int], ...]] = {
    "bay": ((125, 72, 42), (34, 26, 22), (28, 22, 20), (45, 40, 36)),
    "chestnut": ((150, 82, 44), (140, 78, 42), (120, 66, 36), (60, 48, 40)),
    "flaxen": ((160, 92, 50), (150, 88, 48), (215, 190, 140), (60, 48, 40)),
    "black": ((38, 33, 32), (28, 25, 24), (22, 20, 20), (35, 32, 30)),
    "grey": ((172, 170, 164), (120, 118, 114), (110, 108, 104), (60, 58, 56)),
    "white": ((222, 218, 208), (200, 196, 188), (230, 226, 218), (90, 86, 80)),
    "palomino": ((208, 166, 98), (200, 160, 96), (236, 226, 200), (80, 66, 52)),
    "dun": ((186, 152, 104), (62, 48, 38), (56, 44, 36), (50, 42, 36)),
}
SKIN = ((236, 200, 170), (205, 160, 125), (160, 112, 80), (110, 75, 55), (80, 55, 40))
HAIR = ((30, 25, 22), (80, 55, 35), (150, 110, 60), (200, 170, 110), (120, 120, 120))
SKIES = (((110, 160, 220), (195, 215, 238)), ((168, 174, 182), (212, 214, 216)), ((226, 178, 128), (242, 222, 186)))
GROUNDS = ((78, 112, 50), (120, 130, 62), (152, 140, 82), (122, 96, 70), (190, 170, 130), (172, 140, 100), (220, 222, 228))


def _colour_tuple(colour) -> tuple[float, ...]:
    """A colour array as the plain float tuple OpenCV drawing functions take."""
    return tuple(float(c) for c in colour)


def jitter_colour(rng: np.random.Generator, colour, amount: float = 0.12) -> np.ndarray:
    """A colour with every channel scaled by ``1 + amount * U(-1, 1)`` (plus a shared factor)."""
    c = np.asarray(colour, np.float32)
    c = c * (1 + amount * rng.uniform(-1, 1)) * (1 + 0.5 * amount * rng.uniform(-1, 1, size=3))
    return np.clip(c, 0, 255).astype(np.float32)


def random_colour(rng: np.random.Generator, sat=(0.2, 0.9), val=(0.25, 0.95)) -> np.ndarray:
    """A colour of uniform hue with saturation and value in the given ranges (RGB 0..255)."""
    hsv = np.array([[[rng.uniform(0, 180), rng.uniform(*sat) * 255, rng.uniform(*val) * 255]]], np.float32)
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)


def horse_colours(rng: np.random.Generator, natural: bool) -> dict[str, np.ndarray]:
    """Colours of body, lower legs, mane/tail, hooves, head, and a second pattern colour."""
    if natural:
        name = list(HORSE_COATS)[rng.integers(len(HORSE_COATS))]
        body, lower, mane, hoof = (jitter_colour(rng, c) for c in HORSE_COATS[name])
        second = jitter_colour(rng, HORSE_COATS["white"][0] if rng.random() < 0.6 else HORSE_COATS["black"][0])
    else:
        body = random_colour(rng)
        lower = body if rng.random() < 0.5 else random_colour(rng)
        mane = random_colour(rng)
        hoof = random_colour(rng, val=(0.1, 0.4))
        second = random_colour(rng)
    return {"body": body, "lower": lower, "mane": mane, "hoof": hoof, "second": second}


def biped_colours(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Skin, hair, shirt, trousers, shoes and a pattern colour of the toy person."""
    return {
        "skin": jitter_colour(rng, SKIN[rng.integers(len(SKIN))], 0.08),
        "hair": jitter_colour(rng, HAIR[rng.integers(len(HAIR))], 0.1),
        "shirt": random_colour(rng),
        "pants": random_colour(rng, sat=(0.1, 0.7), val=(0.15, 0.7)),
        "shoe": random_colour(rng, sat=(0.0, 0.5), val=(0.05, 0.4)),
        "second": random_colour(rng),
    }


# ------------------------------------------------------------------------------------ noise


def smooth_noise(rng: np.random.Generator, height: int, width: int, cells: float, channels: int = 1) -> np.ndarray:
    """Zero-mean, unit-variance band-limited noise with about ``cells`` blobs across the width.

    Shape:
        returns (H, W) or (H, W, C) float32.
    """
    gw = max(int(round(cells)), 1) + 2
    gh = max(int(round(cells * height / width)), 1) + 2
    coarse = rng.standard_normal((gh, gw, channels)).astype(np.float32)
    up = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    up = up.reshape(height, width, channels)
    up = (up - up.mean()) / (up.std() + 1e-6)
    return up[..., 0] if channels == 1 else up


def streak_noise(rng: np.random.Generator, height: int, width: int, length: int, angle: float = 0.0) -> np.ndarray:
    """Unit-variance noise smeared along ``angle`` (degrees): the grain of fur or grass.

    Shape:
        returns (H, W) float32.
    """
    white = rng.standard_normal((height, width)).astype(np.float32)
    k = np.zeros((length, length), np.float32)
    k[length // 2, :] = 1.0 / length
    rot = cv2.getRotationMatrix2D(((length - 1) / 2, (length - 1) / 2), angle, 1.0)
    k = cv2.warpAffine(k, rot, (length, length))
    k /= max(k.sum(), 1e-6)
    out = cv2.filter2D(white, -1, k, borderType=cv2.BORDER_REFLECT)
    return (out - out.mean()) / (out.std() + 1e-6)


# ------------------------------------------------------------------------------------ coats

PATTERNS = ("flat", "two_tone", "stripes", "checker", "spots", "patches", "dapple")


def coat_texture(
    rng: np.random.Generator,
    pattern: str,
    base: np.ndarray,
    second: np.ndarray,
    grid: tuple[np.ndarray, np.ndarray],
    fur: float = 0.0,
    shading: float = 0.0,
    soft: float = 0.0,
) -> np.ndarray:
    """A coat on the camera plane: ``pattern`` of ``second`` over ``base``, fur grain, top light.

    ``grid`` are the camera-plane coordinates (U, V) of every texture pixel in body units;
    ``shading`` brightens the back and darkens the belly and legs (light from above); ``soft``
    blurs the pattern edges (texture pixels); ``fur`` is the strength of the grain.

    Shape:
        grid: two (S, S) arrays; returns (S, S, 3) float32.
    """
    u, v = grid
    size = u.shape[0]
    if pattern == "flat":
        mask = np.zeros_like(u)
    elif pattern == "two_tone":  # counter-shading: a lighter belly below a wavy line
        wave = 0.05 * np.sin(u * rng.uniform(3, 8) + rng.uniform(0, 6))
        mask = (v < rng.uniform(0.55, 0.75) + wave).astype(np.float32)
    elif pattern == "stripes":
        period = rng.uniform(0.07, 0.18)
        theta = np.deg2rad(rng.uniform(60, 120) if rng.random() < 0.7 else rng.uniform(0, 180))
        warp = 0.5 * smooth_noise(rng, size, size, 4)
        phase = (u * np.cos(theta) + v * np.sin(theta)) / period * 2 * np.pi + warp
        mask = (np.sin(phase) > rng.uniform(-0.2, 0.4)).astype(np.float32)
    elif pattern == "checker":
        period = rng.uniform(0.08, 0.25)
        mask = ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float32)
    elif pattern == "spots":
        mask = np.zeros_like(u)
        ppu = (size - 1) / max(u.max() - u.min(), 1e-6)
        for _ in range(int(rng.integers(25, 70))):
            c = (int(rng.uniform(0, size)), int(rng.uniform(0, size)))
            cv2.circle(mask, c, max(int(rng.uniform(0.025, 0.07) * ppu), 1), 1.0, -1, cv2.LINE_AA)
    elif pattern == "patches":  # pinto: large irregular white patches
        mask = (smooth_noise(rng, size, size, rng.uniform(3, 6)) > rng.uniform(0.0, 0.8)).astype(np.float32)
    elif pattern == "dapple":  # grey dapples: small lighter rings
        mask = np.clip(smooth_noise(rng, size, size, rng.uniform(18, 30)) * 0.6 + 0.2, 0, 1)
    else:
        raise ValueError(f"unknown coat pattern {pattern!r}; valid: {', '.join(PATTERNS)}")
    if soft > 0:
        mask = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), soft)
    tex = base[None, None] * (1 - mask[..., None]) + second[None, None] * mask[..., None]
    if fur > 0:
        grain = 0.3 * smooth_noise(rng, size, size, 10) + 0.7 * streak_noise(rng, size, size, 9, rng.uniform(-20, 20))
        tint = smooth_noise(rng, size, size, 6, channels=3) * 0.04
        tex = tex * (1 + fur * 0.18 * grain[..., None] + fur * tint)
    if shading > 0:
        light = 1 + shading * np.clip((v - 0.7) / 0.45, -1.2, 1.0) * 0.45
        tex = tex * light[..., None]
    return np.clip(tex, 0, 255).astype(np.float32)


def texture_grid(u0: float, v0: float, extent: float, size: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Camera-plane coordinates of an ``size`` x ``size`` texture covering ``extent`` body units
    from top-left ``(u0, v0)`` (v up). Returns U, V and pixels per body unit."""
    ppu = size / extent
    a = (np.arange(size, dtype=np.float32) + 0.5) / ppu
    uu, vv = np.meshgrid(u0 + a, v0 - a)
    return uu.astype(np.float32), vv.astype(np.float32), ppu


# ------------------------------------------------------------------------------------ backgrounds


def _limb_stick(img: np.ndarray, rng: np.random.Generator, x: float, y: float, length: float, colour) -> None:
    """A two- or three-segment jointed stick, roughly vertical: looks like a leg or a branch."""
    pts = [np.array([x, y])]
    angle = rng.uniform(-25, 25)
    for _ in range(int(rng.integers(2, 4))):
        a = np.deg2rad(angle)
        pts.append(pts[-1] + length / 3 * np.array([np.sin(a), np.cos(a)]))
        angle += rng.uniform(-45, 45)
    width = max(int(length * rng.uniform(0.04, 0.09)), 2)
    for a, b in zip(pts[:-1], pts[1:]):
        cv2.line(img, tuple(int(v) for v in a), tuple(int(v) for v in b), colour, width, cv2.LINE_AA)
    for p in pts:
        cv2.circle(img, tuple(int(v) for v in p), max(width // 2 + 1, 1), colour, -1, cv2.LINE_AA)


def simple_background(
    rng: np.random.Generator, height: int, width: int, shapes: int, limb_like: float = 0.0
) -> np.ndarray:
    """Procedural background: a flat colour, gradient or colour-noise field plus random shapes.

    Shape:
        returns (H, W, 3) float32.
    """
    kind = rng.integers(3)
    if kind == 0:
        img = np.empty((height, width, 3), np.float32)
        img[:] = random_colour(rng)
    elif kind == 1:
        a, b = random_colour(rng), random_colour(rng)
        t = np.linspace(0, 1, height if rng.random() < 0.5 else width, dtype=np.float32)
        ramp = t[:, None, None] if len(t) == height else t[None, :, None]
        img = np.broadcast_to(a * (1 - ramp) + b * ramp, (height, width, 3)).copy()
    else:
        img = 128 + 50 * smooth_noise(rng, height, width, rng.uniform(2, 8), channels=3)
        img = img.astype(np.float32)
    for _ in range(shapes):
        colour = tuple(float(c) for c in random_colour(rng))
        x, y = int(rng.uniform(0, width)), int(rng.uniform(0, height))
        size = int(rng.uniform(0.04, 0.25) * width)
        if rng.random() < limb_like:
            _limb_stick(img, rng, x, y - size, 2.5 * size, colour)
            continue
        kind = rng.integers(4)
        if kind == 0:
            cv2.rectangle(img, (x, y), (x + size, y + int(size * rng.uniform(0.3, 2))), colour, -1)
        elif kind == 1:
            cv2.circle(img, (x, y), size // 2, colour, -1, cv2.LINE_AA)
        elif kind == 2:
            cv2.ellipse(img, (x, y), (size, size // 3), rng.uniform(0, 180), 0, 360, colour, -1, cv2.LINE_AA)
        else:
            pts = np.array([[x, y], [x + size, y + size // 3], [x + size // 4, y + size]], np.int32)
            cv2.fillConvexPoly(img, pts, colour, cv2.LINE_AA)
    return np.clip(img, 0, 255).astype(np.float32)


def scene_background(
    rng: np.random.Generator,
    height: int,
    width: int,
    clutter: int,
    limb_like: float = 0.3,
    horizon: float | None = None,
) -> tuple[np.ndarray, float]:
    """An outdoor scene: sky, a hill or tree line, textured ground and scattered objects
    (trees, fences, poles, rocks, bushes and jointed limb-like sticks).

    Returns the image and the horizon row.

    Shape:
        returns (H, W, 3) float32, horizon.
    """
    hz = float(horizon if horizon is not None else rng.uniform(0.2, 0.5) * height)
    top, bottom = SKIES[rng.integers(len(SKIES))]
    t = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
    sky = np.asarray(top, np.float32) * (1 - t) + np.asarray(bottom, np.float32) * t
    img = np.broadcast_to(sky, (height, width, 3)).copy()

    # distant hills or tree line
    xs = np.arange(width, dtype=np.float32)
    profile = hz - height * (
        0.04 + 0.03 * np.sin(xs / width * rng.uniform(2, 6) + rng.uniform(0, 6))
        + 0.015 * smooth_noise(rng, 1, width, rng.uniform(10, 40))[0]
    )
    far = jitter_colour(rng, (70, 95, 70) if rng.random() < 0.6 else (110, 120, 135), 0.2)
    rows = np.arange(height, dtype=np.float32)[:, None]
    hill = (rows >= profile[None, :]).astype(np.float32)[..., None]
    img = img * (1 - hill) + hill * far * (1 + 0.08 * smooth_noise(rng, height, width, 30)[..., None])

    # ground below the horizon, with grain and a light falloff toward the viewer
    ground = jitter_colour(rng, GROUNDS[rng.integers(len(GROUNDS))], 0.1)
    tex = (
        1
        + 0.12 * smooth_noise(rng, height, width, rng.uniform(4, 10))
        + 0.07 * streak_noise(rng, height, width, 7, 90 + rng.uniform(-20, 20))
    )
    below = np.clip((rows - hz) / 3.0, 0, 1)[..., None]
    depth = np.clip((rows - hz) / max(height - hz, 1), 0, 1)[..., None]
    ground_img = ground * tex[..., None] * (0.9 + 0.2 * depth)
    img = img * (1 - below) + ground_img * below

    for _ in range(clutter):
        y = rng.uniform(hz, height * 1.05)
        k = 0.3 + 1.2 * (y - hz) / max(height - hz, 1)  # nearer objects are larger
        x = rng.uniform(-0.05, 1.05) * width
        size = k * rng.uniform(0.08, 0.2) * height
        if rng.random() < limb_like:
            colour = tuple(float(c) for c in jitter_colour(rng, (90, 70, 50) if rng.random() < 0.5 else (60, 55, 50), 0.3))
            _limb_stick(img, rng, x, y - 1.3 * size, 1.4 * size, colour)
            continue
        kind = rng.integers(5)
        if kind == 0:  # tree: trunk and canopy
            trunk = tuple(float(c) for c in jitter_colour(rng, (80, 60, 45), 0.2))
            tw = max(int(size * 0.12), 2)
            cv2.rectangle(img, (int(x - tw / 2), int(y - 2.2 * size)), (int(x + tw / 2), int(y)), trunk, -1)
            leaf = jitter_colour(rng, (60, 100, 50), 0.25)
            for _ in range(6):
                c = (int(x + rng.uniform(-0.6, 0.6) * size), int(y - 2.4 * size + rng.uniform(-0.4, 0.4) * size))
                radius = int(size * rng.uniform(0.35, 0.6))
                cv2.circle(img, c, radius, _colour_tuple(jitter_colour(rng, leaf, 0.15)), -1, cv2.LINE_AA)
        elif kind == 1:  # fence: posts and two rails across the frame
            wood = tuple(float(c) for c in jitter_colour(rng, (150, 120, 90), 0.25))
            th = max(int(size * 0.06), 2)
            for r in (0.45, 0.8):
                y_end = int(y - r * size + rng.uniform(-0.1, 0.1) * size)
                cv2.line(img, (0, int(y - r * size)), (width, y_end), wood, th, cv2.LINE_AA)
            step = max(int(size * rng.uniform(1.2, 2.5)), 8)
            for px in range(int(rng.uniform(0, step)), width, step):
                cv2.rectangle(img, (px, int(y - size)), (px + max(th, 3), int(y)), wood, -1)
        elif kind == 2:  # pole
            colour = tuple(float(c) for c in jitter_colour(rng, (120, 110, 100), 0.3))
            cv2.rectangle(img, (int(x), int(y - 2.5 * size)), (int(x + max(size * 0.08, 2)), int(y)), colour, -1)
        elif kind == 3:  # rock
            colour = tuple(float(c) for c in jitter_colour(rng, (130, 125, 118), 0.2))
            cv2.ellipse(img, (int(x), int(y)), (int(size * 0.5), int(size * 0.3)), 0, 180, 360, colour, -1, cv2.LINE_AA)
        else:  # bush
            leaf = jitter_colour(rng, (70, 105, 55), 0.25)
            for _ in range(5):
                c = (int(x + rng.uniform(-0.5, 0.5) * size), int(y - rng.uniform(0, 0.4) * size))
                radius = int(size * rng.uniform(0.2, 0.4))
                cv2.circle(img, c, radius, _colour_tuple(jitter_colour(rng, leaf, 0.15)), -1, cv2.LINE_AA)
    return np.clip(img, 0, 255).astype(np.float32), hz


def indoor_background(rng: np.random.Generator, height: int, width: int, clutter: int) -> np.ndarray:
    """A room: a wall (plain, striped or tiled) over a floor, with furniture-like boxes.

    Shape:
        returns (H, W, 3) float32.
    """
    floor_y = int(rng.uniform(0.55, 0.8) * height)
    wall = random_colour(rng, sat=(0.0, 0.35), val=(0.5, 0.95))
    img = np.empty((height, width, 3), np.float32)
    img[:] = wall
    if rng.random() < 0.5:
        period = int(rng.uniform(0.03, 0.1) * width)
        stripe = jitter_colour(rng, wall, 0.15)
        for x in range(0, width, 2 * max(period, 2)):
            img[:, x: x + period] = stripe
    img[floor_y:] = random_colour(rng, sat=(0.1, 0.5), val=(0.25, 0.7))
    img *= (1 + 0.05 * smooth_noise(rng, height, width, 8))[..., None]
    for _ in range(clutter):
        colour = tuple(float(c) for c in random_colour(rng))
        x = int(rng.uniform(0, width))
        w, h = int(rng.uniform(0.05, 0.25) * width), int(rng.uniform(0.1, 0.4) * height)
        top = floor_y + int(rng.uniform(-0.05, 0.1) * height) - h
        cv2.rectangle(img, (x, top), (x + w, floor_y + int(0.05 * height)), colour, -1)
    return np.clip(img, 0, 255).astype(np.float32)


# ------------------------------------------------------------------------------------ occluders


def make_occluder(rng: np.random.Generator, box: np.ndarray, height: int) -> list[tuple]:
    """Foreground shapes that cover part of an object whose box is ``box`` (x0, y0, x1, y1).

    One of: tall grass over the lower legs, a post across the body, a bush over the legs, a
    branch entering from above. Returns drawing commands in image coordinates (see
    :func:`draw_occluder`); they can be shifted per frame.
    """
    x0, y0, x1, y1 = (float(v) for v in box)
    w, h = x1 - x0, y1 - y0
    kind = rng.integers(4)
    cmds: list[tuple] = []
    if kind == 0:  # grass tuft
        green = jitter_colour(rng, (95, 125, 55) if rng.random() < 0.6 else (160, 150, 80), 0.15)
        cx, span = rng.uniform(x0, x1), rng.uniform(0.25, 0.6) * w
        for _ in range(int(rng.integers(25, 60))):
            bx = cx + rng.uniform(-span / 2, span / 2)
            by = y1 + rng.uniform(0.0, 0.08) * h
            top = (bx + rng.uniform(-0.08, 0.08) * h, by - rng.uniform(0.12, 0.35) * h)
            c = tuple(float(v) for v in jitter_colour(rng, green, 0.2))
            cmds.append(("line", (bx, by), top, max(int(h * 0.012), 2), c))
    elif kind == 1:  # post
        wood = tuple(float(v) for v in jitter_colour(rng, (120, 95, 70), 0.25))
        px, pw = rng.uniform(x0 + 0.15 * w, x1 - 0.15 * w), rng.uniform(0.05, 0.1) * w
        cmds.append(("rect", (px, -10.0), (px + pw, float(height + 10)), wood))
    elif kind == 2:  # bush over the legs
        leaf = jitter_colour(rng, (60, 100, 45), 0.25)
        cx, cy = rng.uniform(x0, x1), y1 - rng.uniform(0.0, 0.2) * h
        for _ in range(int(rng.integers(6, 14))):
            c = (cx + rng.uniform(-0.18, 0.18) * w, cy + rng.uniform(-0.15, 0.1) * h)
            cmds.append(("circle", c, rng.uniform(0.06, 0.12) * w, tuple(float(v) for v in jitter_colour(rng, leaf, 0.15))))
    else:  # branch from above
        bark = tuple(float(v) for v in jitter_colour(rng, (70, 55, 45), 0.25))
        a = (rng.uniform(x0, x1), y0 - 0.3 * h)
        b = (a[0] + rng.uniform(-0.3, 0.3) * w, y0 + rng.uniform(0.2, 0.45) * h)
        cmds.append(("line", a, b, max(int(0.04 * h), 3), bark))
        leaf = jitter_colour(rng, (70, 110, 50), 0.25)
        for _ in range(int(rng.integers(4, 9))):
            t = rng.uniform(0.3, 1.0)
            c = (a[0] + t * (b[0] - a[0]) + rng.uniform(-0.05, 0.05) * w, a[1] + t * (b[1] - a[1]))
            cmds.append(("circle", c, rng.uniform(0.03, 0.06) * w, tuple(float(v) for v in jitter_colour(rng, leaf, 0.2))))
    return cmds


def draw_occluder(image: np.ndarray, label: np.ndarray, cmds: list[tuple], dx: float = 0.0, dy: float = 0.0) -> None:
    """Paint occluder commands (shifted by ``dx, dy``) into ``image`` and mark them in ``label``."""
    mask = np.zeros(label.shape, np.uint8)
    layer = np.zeros_like(image)
    for cmd in cmds:
        kind = cmd[0]
        if kind == "line":
            _, a, b, width, colour = cmd
            pa = (int(round((a[0] + dx) * 16)), int(round((a[1] + dy) * 16)))
            pb = (int(round((b[0] + dx) * 16)), int(round((b[1] + dy) * 16)))
            cv2.line(layer, pa, pb, colour, width, cv2.LINE_AA, 4)
            cv2.line(mask, pa, pb, 255, width, cv2.LINE_AA, 4)
        elif kind == "rect":
            _, a, b, colour = cmd
            pa, pb = (int(a[0] + dx), int(a[1] + dy)), (int(b[0] + dx), int(b[1] + dy))
            cv2.rectangle(layer, pa, pb, colour, -1)
            cv2.rectangle(mask, pa, pb, 255, -1)
        else:
            _, c, r, colour = cmd
            pc = (int(round((c[0] + dx) * 16)), int(round((c[1] + dy) * 16)))
            cv2.circle(layer, pc, int(r * 16), colour, -1, cv2.LINE_AA, 4)
            cv2.circle(mask, pc, int(r * 16), 255, -1, cv2.LINE_AA, 4)
    alpha = (mask.astype(np.float32) / 255.0)[..., None]
    # the layer is premultiplied by coverage where shapes overlap the same colour; re-normalise
    layer = np.where(alpha > 0, layer / np.maximum(alpha, 1e-3), 0)
    image *= 1 - alpha
    image += alpha * np.clip(layer, 0, 255)
    label[mask >= 128] = OCCLUDER


def ground_shadow(image: np.ndarray, centre: tuple[float, float], axes: tuple[float, float], opacity: float) -> None:
    """Darken a soft ellipse on the ground (a cast shadow) in place."""
    if opacity <= 0:
        return
    h, w = image.shape[:2]
    mask = np.zeros((h, w), np.float32)
    half = (max(int(axes[0]), 1), max(int(axes[1]), 1))
    cv2.ellipse(mask, (int(centre[0]), int(centre[1])), half, 0, 0, 360, 1.0, -1, cv2.LINE_AA)
    mask = cv2.GaussianBlur(mask, (0, 0), max(axes[1] * 0.6, 1.0))
    image *= (1 - opacity * mask)[..., None]
