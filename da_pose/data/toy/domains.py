"""One sample of each domain: a source image, a target video shot, an other-species image.

Each function takes its own ``numpy.random.Generator`` (seeded per sample by the caller) and
a :class:`~da_pose.data.toy.presets.Style`, and returns pixels and labels; writing files is
``generate.py``'s job.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import cv2
import numpy as np

from da_pose.data.skeleton import NUM_JOINTS
from da_pose.data.toy import body, paint, render
from da_pose.data.toy.body import View
from da_pose.data.toy.presets import Style

SOURCE_SIZE = (640, 480)  # width, height of the published synthetic-animal images
NUM_LANDMARKS = 19  # TigDog landmark files: the 18 joints and the tail tip
# Texture windows on the camera plane: top-left (u0, v0) and side in body units.
QUAD_TEXTURE = (-1.8, 2.4, 3.8)
BIPED_TEXTURE = (-0.75, 1.25, 1.5)


def _uniform(rng: np.random.Generator, bounds) -> float:
    lo, hi = bounds
    return float(rng.uniform(lo, hi)) if hi > lo else float(lo)


# ------------------------------------------------------------------------------------ sampling


def sample_shape(rng: np.random.Generator, style: Style) -> body.QuadShape:
    """Body proportions drawn from the style's ranges."""
    return body.QuadShape(
        leg=_uniform(rng, style.leg),
        neck=_uniform(rng, style.neck),
        head=_uniform(rng, style.head),
        thickness=_uniform(rng, style.thickness),
        limb=_uniform(rng, style.limb),
        tail=_uniform(rng, style.tail),
    )


@dataclass(frozen=True)
class QuadMotion:
    """Pose parameters of a shot; :meth:`pose` evaluates them at a frame (smooth in time)."""

    gait: str
    phase0: float
    speed: float  # gait cycles per frame
    stride: float
    neck_pitch: float
    head_pitch: float
    head_yaw: float
    tail_lift: float
    jitter: tuple[float, ...]  # 12 static joint offsets, degrees
    wobble: tuple[float, ...]  # amplitudes of slow head and joint variation, degrees
    wobble_phase: float
    pitch: float = 0.0  # rearing: forehand raised, degrees
    fold: tuple[float, float] = (0.0, 0.0)  # front, back leg fold (rearing, lying)
    in_step: bool = False  # far legs in step behind the near ones

    def pose(self, frame: int = 0, frames: int = 1) -> body.QuadPose:
        t = 2 * math.pi * (frame / max(frames, 1)) + self.wobble_phase
        j = np.asarray(self.jitter) + self.wobble[3] * np.sin(t * 1.3 + np.arange(12))
        return body.QuadPose(
            gait=self.gait,
            phase=(self.phase0 + self.speed * frame) % 1.0,
            stride=self.stride,
            neck_pitch=self.neck_pitch + self.wobble[0] * math.sin(t),
            head_pitch=self.head_pitch + self.wobble[1] * math.sin(0.7 * t + 1.0),
            head_yaw=self.head_yaw + self.wobble[2] * math.sin(0.5 * t + 2.0),
            tail_lift=self.tail_lift,
            jitter=tuple(float(v) for v in j),
            pitch=self.pitch,
            fold=self.fold,
            in_step=self.in_step,
        )


def sample_posture(rng: np.random.Generator, style: Style) -> dict:
    """Rearing, lying and in-step legs, drawn only for the knobs that are on (a style with all
    three at 0, the source's, draws nothing: its samples stay what they were before these knobs)."""
    out = {}
    if style.rear + style.lie > 0:
        u = float(rng.random())
        if u < style.rear:  # forehand up 30-55 degrees, forelegs tucked
            out = {"pitch": float(rng.uniform(30, 55)), "fold": (float(rng.uniform(0.6, 1.0)), 0.0)}
        elif u < style.rear + style.lie:  # all four legs folded under the body
            out = {"fold": (float(rng.uniform(0.85, 1.0)), float(rng.uniform(0.85, 1.0)))}
    if style.in_step > 0 and rng.random() < style.in_step:
        out["in_step"] = True
    return out


def sample_motion(rng: np.random.Generator, style: Style, speed: tuple[float, float] = (0.0, 0.0)) -> QuadMotion:
    """Gait, stride, head pose and joint perturbation drawn from the style (then rearing, lying
    and in-step legs where the style turns them on)."""
    gait = style.gaits[int(rng.integers(len(style.gaits)))]
    motion = QuadMotion(
        gait=gait,
        phase0=float(rng.uniform()),
        speed=_uniform(rng, speed) * (1.3 if gait == "trot" else 1.0),
        stride=_uniform(rng, style.stride),
        neck_pitch=_uniform(rng, style.neck_pitch),
        head_pitch=_uniform(rng, style.head_pitch),
        head_yaw=_uniform(rng, style.head_yaw),
        tail_lift=float(rng.uniform(-15, 25)),
        jitter=tuple(float(v) for v in rng.normal(0, style.joint_jitter, size=12)),
        wobble=(float(rng.uniform(0, 8)), float(rng.uniform(0, 10)), float(rng.uniform(0, 12)), float(rng.uniform(0, 3))),
        wobble_phase=float(rng.uniform(0, 2 * math.pi)),
    )
    posture = sample_posture(rng, style)
    return dataclasses.replace(motion, **posture) if posture else motion


def sample_view(rng: np.random.Generator, style: Style, scale: float) -> View:
    """Facing (left or right, or any direction for a wide ``body_yaw``), elevation, roll."""
    facing = 0.0 if rng.random() < 0.5 else 180.0
    turn = _uniform(rng, style.body_yaw) * (1 if rng.random() < 0.5 else -1)
    return View(
        yaw=facing + turn,
        elevation=_uniform(rng, style.elevation),
        roll=_uniform(rng, style.roll),
        scale=scale,
    )


def extent(figure: body.Figure, view: View) -> np.ndarray:
    """Image box (x0, y0, x1, y1) of the figure's points and surface samples under ``view``."""
    samples, _ = body.surface_samples(figure)
    xy, _ = body.project(np.concatenate([figure.points, samples]), view)
    return np.array([xy[:, 0].min(), xy[:, 1].min(), xy[:, 0].max(), xy[:, 1].max()])


def place(rng: np.random.Generator, box: np.ndarray, width: int, height: int, margin: float) -> tuple[float, float]:
    """A random translation that puts ``box`` (at translation 0) inside the frame with ``margin``;
    centred on an axis where it does not fit."""
    out = []
    for lo, hi, size in ((box[0], box[2], width), (box[1], box[3], height)):
        a, b = margin - lo, size - 1 - margin - hi
        out.append(float(rng.uniform(a, b)) if b > a else float((a + b) / 2))
    return out[0], out[1]


def background(rng: np.random.Generator, style: Style, height: int, width: int) -> np.ndarray:
    """The style's background kind (``mixed`` picks one of the three per image)."""
    kind = style.background
    if kind == "mixed":
        kind = ("simple", "scene", "indoor")[int(rng.integers(3))]
    clutter = int(rng.integers(style.clutter[0], style.clutter[1] + 1))
    if kind == "simple":
        return paint.simple_background(rng, height, width, clutter, style.limb_like)
    if kind == "indoor":
        return paint.indoor_background(rng, height, width, clutter)
    return paint.scene_background(rng, height, width, clutter, style.limb_like)[0]


def quad_materials(rng: np.random.Generator, style: Style, size: int) -> dict[str, render.Material]:
    """Coat, legs, mane, hooves and eyes of a toy horse, as camera-plane textures."""
    colours = paint.horse_colours(rng, bool(rng.random() < style.natural_colour))
    u0, v0, side = QUAD_TEXTURE
    u, v, ppu = paint.texture_grid(u0, v0, side, size)
    pattern = style.patterns[int(rng.integers(len(style.patterns)))]

    def tex(pattern_, base, fur, shading):
        t = paint.coat_texture(rng, pattern_, base, colours["second"], (u, v), fur, shading, style.pattern_soft)
        return render.Material(colour=tuple(base), texture=t, u0=u0, v0=v0, ppu=ppu)

    coat = tex(pattern, colours["body"], style.fur, style.shading)
    if style.fur > 0:  # fur grain on the legs and a coarser one on mane and tail
        lower = tex("flat", colours["lower"], style.fur, style.shading)
        mane = tex("flat", colours["mane"], 1.5 * style.fur, 0.0)
    else:
        lower, mane = render.Material(tuple(colours["lower"])), render.Material(tuple(colours["mane"]))
    eye = paint.jitter_colour(rng, (20, 16, 14), 0.3)
    return {
        "body": coat,
        "head": coat,
        "lower": lower,
        "mane": mane,
        "hoof": render.Material(tuple(colours["hoof"])),
        "eye": render.Material(tuple(eye)),
    }


def biped_materials(rng: np.random.Generator, style: Style, size: int) -> dict[str, render.Material]:
    """Skin, hair, clothes (patterned shirt) and eyes of the toy person."""
    colours = paint.biped_colours(rng)
    u0, v0, side = BIPED_TEXTURE
    u, v, ppu = paint.texture_grid(u0, v0, side, size)
    pattern = style.patterns[int(rng.integers(len(style.patterns)))]
    shirt = paint.coat_texture(
        rng, pattern, colours["shirt"], colours["second"], (u, v), style.fur, style.shading, style.pattern_soft
    )
    mats = {k: render.Material(tuple(colours[k])) for k in ("skin", "hair", "pants", "shoe")}
    mats["shirt"] = render.Material(tuple(colours["shirt"]), shirt, u0, v0, ppu)
    mats["eye"] = render.Material((25.0, 20.0, 18.0))
    return mats


def _camera(rng: np.random.Generator, style: Style) -> dict:
    """Per-image (or per-shot) camera effects drawn from the style."""
    return {
        "blur": _uniform(rng, style.blur),
        "noise": _uniform(rng, style.noise),
        "gain": 1 + style.gain * rng.standard_normal(3),
        # clamped: a preset's gap above 1 extrapolates the knobs
        "quality": int(np.clip(rng.integers(style.jpeg_quality[0], style.jpeg_quality[1] + 1), 5, 100)),
    }


def _vertex_layout(figure: body.Figure) -> tuple[np.ndarray, list[tuple[str, ...]]]:
    """All "mesh vertices": the named points then the surface samples, with their owners."""
    samples, owners = body.surface_samples(figure)
    return np.concatenate([figure.points, samples]), body.point_owners(figure) + [(o,) for o in owners]


def _owner_ranks(owners: list[tuple[str, ...]], ranks: dict[str, int]) -> np.ndarray:
    return np.array([max((ranks.get(o, 0) for o in own), default=0) for own in owners], dtype=np.int64)


# A fixed shuffle of the toy horse's vertices, so the 18 joints sit at scattered vertex ids
# as in the published meshes (the loader must use the id table, not the first 18 rows).
def _vertex_permutation() -> np.ndarray:
    figure = body.quadruped(body.QuadShape(), body.QuadPose())
    n = len(_vertex_layout(figure)[0])
    return np.random.default_rng(20200101).permutation(n)


VERTEX_ORDER = _vertex_permutation()  # row r of a kpts file holds layout vertex VERTEX_ORDER[r]
NUM_VERTICES = len(VERTEX_ORDER)
VERTEX_IDS: tuple[int, ...] = tuple(int(np.flatnonzero(VERTEX_ORDER == j)[0]) for j in range(NUM_JOINTS))


# ------------------------------------------------------------------------------------ source


def source_sample(rng: np.random.Generator, style: Style) -> tuple[np.ndarray, np.ndarray, dict]:
    """One synthetic-animal image and its vertex file.

    Vertex visibility is 1 when the vertex is inside the image and not covered by a primitive
    drawn in front of its own (and, for the eyes, when the eye faces the camera).

    Shape:
        returns image (480, 640, 3) uint8 RGB, kpts (V, 3) float64 x, y, visible, info dict.
    """
    width, height = SOURCE_SIZE
    figure = body.quadruped(sample_shape(rng, style), sample_motion(rng, style).pose())
    view = sample_view(rng, style, _uniform(rng, style.size) * height)
    tx, ty = place(rng, extent(figure, view), width, height, margin=4.0)
    view = View(view.yaw, view.elevation, view.roll, view.scale, tx, ty)

    image = background(rng, style, height, width)
    materials = quad_materials(rng, style, 256)
    _shadow(image, figure, view, style.shadow)
    label, ranks = render.draw_figure(image, figure, view, materials, style.far_shade, style.near_shade)
    cam = _camera(rng, style)
    light = render.light_gradient(rng, height, width, style.light)
    pixels = render.finish(image, rng, cam["blur"], cam["noise"], cam["gain"], light)

    xyz, owners = _vertex_layout(figure)
    xy, _ = body.project(xyz, view)
    hidden = render.hidden_by_label(xy, _owner_ranks(owners, ranks), label)
    visible = render.inside(xy, width, height) & ~hidden
    kpts = np.concatenate([xy, visible[:, None].astype(np.float64)], axis=1)[VERTEX_ORDER]
    return pixels, kpts, {"facing_right": bool(math.cos(math.radians(view.yaw)) > 0), "view": view}


def _shadow(image: np.ndarray, figure: body.Figure, view: View, opacity: float) -> None:
    if opacity <= 0:
        return
    hooves = [body.Q[n] for n in ("left_front_hoof", "right_front_hoof", "left_back_hoof", "right_back_hoof")]
    xy, _ = body.project(figure.points[hooves], view)
    cx, cy = xy[:, 0].mean(), xy[:, 1].max()
    span = (xy[:, 0].max() - xy[:, 0].min()) / 2 + 0.25 * view.scale
    paint.ground_shadow(image, (cx, cy), (span, 0.07 * view.scale), opacity)


# ------------------------------------------------------------------------------------ target


@dataclass(frozen=True)
class Shot:
    """A rendered target shot: frames and TigDog landmarks (unlabelled points at 0)."""

    frames: list  # F arrays (H, W, 3) uint8 RGB
    coords: np.ndarray  # F, 19, 2
    visibility: np.ndarray  # F, 19
    quality: int  # JPEG quality
    facing_right: bool


def target_shot(
    rng: np.random.Generator,
    style: Style,
    frames: int,
    size: tuple[int, int],
    phase_speed=(0.025, 0.06),
    drift=(0.0, 2.0),
    pan=(0.0, 3.0),
    zoom=(-0.1, 0.1),
) -> Shot:
    """A shot of consecutive frames with smooth motion: the gait advances, the animal drifts
    across the frame, the camera pans and zooms slowly, the head moves a little. The style's
    video knobs add within-shot change (dropped and repeated frames, camera shake, motion-blur
    bursts, an occluder passing), its ``truncation`` a shot cut by a frame edge.

    Landmark visibility: inside the frame, not behind a foreground occluder, and, for the eyes,
    facing the camera (the far eye is hidden in profile). Points hidden only by the animal's
    own body stay labelled, as TigDog's annotators labelled them.
    """
    width, height = size
    shape = sample_shape(rng, style)
    motion = sample_motion(rng, style, phase_speed)
    view0 = sample_view(rng, style, _uniform(rng, style.size) * height)
    facing = 1.0 if math.cos(math.radians(view0.yaw)) > 0 else -1.0
    zoom_total = _uniform(rng, zoom)
    yaw_drift, roll_drift = rng.uniform(-6, 6), rng.uniform(-4, 4)
    rel_speed = facing * _uniform(rng, drift)  # animal across the frame, px per frame
    pan_speed = facing * _uniform(rng, pan)  # background scrolls against the heading
    times = _frame_times(rng, style, frames)  # the instant each frame shows (drops skip one)

    def view_at(time: float, tx: float = 0.0, ty: float = 0.0) -> View:
        t = time / max(frames - 1, 1)
        return View(
            yaw=view0.yaw + yaw_drift * t,
            elevation=view0.elevation,
            roll=view0.roll + roll_drift * t,
            scale=view0.scale * (1 + zoom_total * t),
            tx=tx + rel_speed * time,
            ty=ty,
        )

    def frame_view(f: int, tx: float = 0.0, ty: float = 0.0) -> View:
        return view_at(times[f], tx, ty)

    figures = [body.quadruped(shape, motion.pose(times[f], frames)) for f in range(frames)]
    boxes = np.stack([extent(fig, frame_view(f)) for f, fig in enumerate(figures)])
    union = np.array([boxes[:, 0].min(), boxes[:, 1].min(), boxes[:, 2].max(), boxes[:, 3].max()])
    tx, ty = place(rng, union, width, height, margin=3.0)
    if style.truncation > 0 and rng.random() < style.truncation:
        tx, ty = _truncate(rng, union, width, height, tx, ty)

    span = int(math.ceil(abs(pan_speed) * (times[-1] + 1))) + 2
    scene = background(rng, style, height, width + span)
    # the camera follows the animal: scene content slides against the heading (crop start
    # grows for a right-facing animal)
    offsets = [(1 + pan_speed * t) if pan_speed >= 0 else (span - 1 + pan_speed * t) for t in times]
    occluder = []
    if rng.random() < style.occlusion:
        box0 = union + np.array([tx, ty, tx, ty])
        occluder = paint.make_occluder(rng, box0 + np.array([offsets[0], 0, offsets[0], 0]), height)
    materials = quad_materials(rng, style, 512)
    cam = _camera(rng, style)
    light = render.light_gradient(rng, height, width, style.light)
    sun = _low_sun(rng, style)
    fx = _video_effects(rng, style, frames, union + np.array([tx, ty, tx, ty]), width, height, motion.gait, facing)
    mate = _companion(rng, style, phase_speed, union)
    posed = {times[f]: fig for f, fig in enumerate(figures)}  # the frames' own instants, built above

    def paint_animals(image: np.ndarray, time: float) -> np.ndarray:
        """The companion (behind), the shadows and the animal at ``time``; the animal's label."""
        view = view_at(time, tx, ty)
        figure = posed.get(time) or body.quadruped(shape, motion.pose(time, frames))
        if mate:
            mview = dataclasses.replace(view_at(time, tx + mate["dx"], ty + mate["dy"]), yaw=view.yaw + mate["turn"],
                                        scale=view.scale * mate["scale"])
            mfigure = body.quadruped(mate["shape"], mate["motion"].pose(time, frames))
            _shadow(image, mfigure, mview, style.shadow)
            render.draw_figure(image, mfigure, mview, mate["materials"], style.far_shade, style.near_shade)
        _shadow(image, figure, view, style.shadow)
        if sun:
            render.cast_shadow(image, figure, view, *sun)
        return render.draw_figure(image, figure, view, materials, style.far_shade, style.near_shade)[0]

    coords = np.zeros((frames, NUM_LANDMARKS, 2))
    vis = np.zeros((frames, NUM_LANDMARKS))
    images = []
    lm = list(range(NUM_JOINTS)) + [body.TAIL_TIP]
    for f, figure in enumerate(figures):
        if f > 0 and times[f] == times[f - 1]:  # a duplicated frame: the same picture again
            images.append(images[-1])
            coords[f], vis[f] = coords[f - 1], vis[f - 1]
            continue
        view = frame_view(f, tx, ty)
        off = offsets[f]
        x0 = int(math.floor(off))
        frac = off - x0
        # sub-pixel pan: blend two neighbouring integer crops of the scene
        image = (1 - frac) * scene[:, x0: x0 + width] + frac * scene[:, x0 + 1: x0 + 1 + width]
        image = np.ascontiguousarray(image, dtype=np.float32)
        label = _expose(image, paint_animals, times[f], fx["shutter"][f])
        if occluder:
            paint.draw_occluder(image, label, occluder, dx=-off)
        if fx["passer"]:
            paint.draw_occluder(image, label, fx["passer"], dx=fx["passer_dx"][f])
        image = _frame_effects(image, fx["shake"][f], fx["kernel"][f], fx["skew"][f])
        images.append(render.finish(image, rng, cam["blur"] * rng.uniform(0.85, 1.15), cam["noise"], cam["gain"], light))

        xy, _ = body.project(figure.points[lm], view)
        h_lab, w_lab = label.shape
        xi = np.clip(np.round(xy[:, 0]).astype(int), 0, w_lab - 1)
        yi = np.clip(np.round(xy[:, 1]).astype(int), 0, h_lab - 1)
        occluded = label[yi, xi] == render.OCCLUDER
        faces = body.facing_visible(figure, view)
        eyes_ok = np.array([faces.get(i, True) for i in lm])
        xy = _camera_warp(xy, fx["shake"][f], fx["skew"][f], height)  # the whole frame moved with the camera
        # TigDog stores unlabelled points at 0, so a visible point needs x, y > 0
        ok = render.inside(xy, width, height, margin=1.0) & ~occluded & eyes_ok
        coords[f][ok] = xy[ok]
        vis[f][ok] = 1.0
    return Shot(images, coords, vis, cam["quality"], facing > 0)


# the low sun's shadows (style.cast_shadow): how far down they run per px of height above the
# ground, and how dark they are; the final values of the third calibration round (docs/shifts.md;
# (0.4, 1.0) and (0.5, 0.8) before them left the appearance gap at 10.3 points)
LEAN_DOWN, OPACITY = (0.5, 1.1), (0.6, 0.9)


def _low_sun(rng: np.random.Generator, style: Style):
    """A low sun behind the animal, with probability ``style.cast_shadow``: the shadows fall
    toward the camera, so in the image each leg's shadow runs down from its hoof like a second,
    darker leg. Returns the lean (0.2-1.0 px sideways, either way, and ``LEAN_DOWN`` px down per
    px of height above the ground) and the opacity (``OPACITY``), or None. No draw when the knob
    is off."""
    if style.cast_shadow <= 0 or rng.random() >= style.cast_shadow:
        return None
    lean = (float(rng.choice([-1.0, 1.0]) * rng.uniform(0.2, 1.0)), float(rng.uniform(LEAN_DOWN[0], LEAN_DOWN[1])))
    return lean, float(rng.uniform(OPACITY[0], OPACITY[1]))


# sub-frames of an open shutter: odd, so that the middle one is the frame's own instant (the labels')
SHUTTER_SAMPLES = 7


def _expose(image: np.ndarray, paint_animals, time: float, exposure: float) -> np.ndarray:
    """Paint the animals into ``image`` at ``time``; with ``exposure`` > 0 the shutter stays open
    for that many frames of motion, centred on ``time``: the picture is the mean of
    ``SHUTTER_SAMPLES`` renders over it, so the swinging legs smear into ghosts while the body,
    which moves little, stays nearly sharp. Returns the label buffer at ``time`` itself."""
    if exposure <= 0:
        return paint_animals(image, time)
    background = image.copy()
    total = np.zeros_like(image)
    label = None
    for k, s in enumerate(np.linspace(-0.5, 0.5, SHUTTER_SAMPLES) * exposure):
        sub = background.copy()
        lab = paint_animals(sub, time + float(s))
        if k == SHUTTER_SAMPLES // 2:
            label = lab
        total += sub
    image[...] = total / SHUTTER_SAMPLES
    return label


def _companion(rng: np.random.Generator, style: Style, phase_speed, box: np.ndarray) -> dict | None:
    """Another animal of the herd walking beside and behind the labelled one, with probability
    ``style.companions``: its own shape, gait and coat; 75-100 % of the animal's size, 30-75 % of
    the shot's box width to either side and a little higher (farther back). Never labelled;
    drawn before the animal, so it hides none of the animal's joints. No draw when the knob is
    off."""
    if style.companions <= 0 or rng.random() >= style.companions:
        return None
    w, h = box[2] - box[0], box[3] - box[1]
    return {
        "shape": sample_shape(rng, style),
        "motion": sample_motion(rng, style, phase_speed),
        "materials": quad_materials(rng, style, 512),
        "scale": float(rng.uniform(0.75, 1.0)),
        "dx": float(rng.choice([-1.0, 1.0]) * rng.uniform(0.3, 0.75) * w),
        "dy": -float(rng.uniform(0.05, 0.25) * h),
        "turn": float(rng.uniform(-15, 15)),
    }


def _frame_times(rng: np.random.Generator, style: Style, frames: int) -> list[int]:
    """The time step each frame shows: consecutive, except a dropped frame (the motion skips a
    step) or a repeated one (the same step twice). No draw when both knobs are off."""
    if style.frame_drop + style.frame_repeat <= 0:
        return list(range(frames))
    times = [0]
    for u in rng.random(frames - 1):
        step = 2 if u < style.frame_drop else 0 if u < style.frame_drop + style.frame_repeat else 1
        times.append(times[-1] + step)
    return times


def _truncate(rng: np.random.Generator, box: np.ndarray, width: int, height: int, tx: float, ty: float):
    """Move the shot's box (at translation 0) so that 15-40 % of it lies past the left, right or
    bottom edge of the frame."""
    cut = float(rng.uniform(0.15, 0.4))
    edge = int(rng.integers(3))
    w, h = box[2] - box[0], box[3] - box[1]
    if edge == 0:
        return -box[0] - cut * w, ty
    if edge == 1:
        return width - 1 - box[2] + cut * w, ty
    return tx, height - 1 - box[3] + cut * h


def _video_effects(rng, style: Style, frames: int, box: np.ndarray, width: int, height: int, gait: str,
                   facing: float) -> dict:
    """Per-frame camera shake (dx, dy), motion-blur bursts of 2-4 frames (the camera's: a line
    kernel of ``burst_length`` pixels, longer at the trot; the subject's: a ``shutter`` open for
    that many frames of motion; the sensor's: a rolling shutter's ``skew`` along the pan) and an
    occluder passing in front of the animal; nothing is drawn for knobs that are off.

    Shape:
        returns shake (F, 2) pixels, kernel: F entries (k, k) float32 or None, shutter (F,) frames
        of motion each frame integrates (0: sharp), skew (F,) rolling-shutter shear, px along the
        pan per px below the middle row (0: none), passer: occluder commands (or []), passer_dx
        (F,) their horizontal offset per frame.
    """
    shake = np.zeros((frames, 2))
    if style.shake > 0:
        shake = rng.normal(0.0, style.shake, size=(frames, 2))
    kernels = [None] * frames
    shutter, skew = np.zeros(frames), np.zeros(frames)
    if style.blur_burst > 0:
        f = 0
        while f < frames:
            if rng.random() < style.blur_burst:
                n = int(rng.integers(2, 5))
                length = _uniform(rng, style.burst_length) * (1.3 if gait == "trot" else 1.0)
                angle = float(rng.uniform(-20, 20))  # along the heading, roughly horizontal
                exposure = _uniform(rng, style.shutter) if style.shutter[1] > 0 else 0.0
                lean = facing * _uniform(rng, style.skew) if style.skew[1] > 0 else 0.0
                for g in range(f, min(f + n, frames)):
                    kernels[g] = _line_kernel(length * float(rng.uniform(0.7, 1.0)), angle) if length > 0 else None
                    shutter[g] = exposure
                    skew[g] = lean
                f += n
            else:
                f += 1
    passer, passer_dx = [], np.zeros(frames)
    if style.passers > 0 and rng.random() < style.passers:
        passer = paint.make_occluder(rng, box, height)
        # crosses the animal mid-shot, coming from either side, a frame width in one shot
        direction = 1.0 if rng.random() < 0.5 else -1.0
        centre = float(rng.uniform(0.3, 0.7)) * max(frames - 1, 1)
        passer_dx = direction * (np.arange(frames) - centre) * (1.2 * width / max(frames, 2))
    return {"shake": shake, "kernel": kernels, "shutter": shutter, "skew": skew, "passer": passer,
            "passer_dx": passer_dx}


def _line_kernel(length: float, angle_deg: float) -> np.ndarray:
    """A normalised motion-blur kernel: a line of ``length`` pixels at ``angle`` degrees."""
    k = int(math.ceil(length)) | 1
    kernel = np.zeros((k, k), np.float32)
    c = (k - 1) / 2
    a = math.radians(angle_deg)
    dx, dy = 0.5 * (length - 1) * math.cos(a), 0.5 * (length - 1) * math.sin(a)
    cv2.line(kernel, (int(round((c - dx) * 16)), int(round((c - dy) * 16))),
             (int(round((c + dx) * 16)), int(round((c + dy) * 16))), 1.0, 1, cv2.LINE_AA, 4)
    return kernel / max(float(kernel.sum()), 1e-6)


def _camera_matrix(shake: np.ndarray, skew: float, height: int) -> np.ndarray:
    """The frame's 2 x 3 warp: a rolling shutter's skew during a fast pan (rows read later are
    shifted further along the pan, ``skew`` px per px below the middle row) then the shake."""
    return np.array([[1.0, skew, shake[0] - skew * (height - 1) / 2], [0.0, 1.0, shake[1]]])


def _camera_warp(xy: np.ndarray, shake: np.ndarray, skew: float, height: int) -> np.ndarray:
    """Image points carried by :func:`_camera_matrix`."""
    m = _camera_matrix(shake, skew, height)
    return xy @ m[:, :2].T + m[:, 2]


def _frame_effects(image: np.ndarray, shake: np.ndarray, kernel: np.ndarray | None, skew: float = 0.0) -> np.ndarray:
    """The whole frame moved by the camera (shake, rolling-shutter skew), then blurred by a
    motion-blur kernel."""
    if np.any(shake) or skew:
        m = _camera_matrix(shake, skew, image.shape[0])
        image = cv2.warpAffine(image, m, (image.shape[1], image.shape[0]), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_REFLECT)
    if kernel is not None:
        image = cv2.filter2D(image, -1, kernel, borderType=cv2.BORDER_REFLECT)
    return image


# ------------------------------------------------------------------------------------ other


def sample_biped_pose(rng: np.random.Generator, style: Style) -> body.BipedPose:
    """Walking, with arms hanging, swinging or raised, head turned."""
    raise_ = [float(rng.uniform(-10, 20)) for _ in range(2)]
    for k in range(2):
        if rng.random() < 0.25:
            raise_[k] = float(rng.uniform(40, 160))  # a raised arm
    return body.BipedPose(
        phase=float(rng.uniform()),
        stride=_uniform(rng, style.stride),
        arm_raise=(raise_[0], raise_[1]),
        arm_spread=(float(rng.uniform(3, 35)), float(rng.uniform(3, 35))),
        elbow=(float(rng.uniform(0, 100)), float(rng.uniform(0, 100))),
        head_yaw=_uniform(rng, style.head_yaw),
        head_pitch=_uniform(rng, style.head_pitch),
        lean=float(rng.uniform(-8, 12)),
        jitter=tuple(float(v) for v in rng.normal(0, style.joint_jitter, size=8)),
    )


def other_sample(
    rng: np.random.Generator, style: Style, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, list[float], int]:
    """One toy-person image with COCO keypoints.

    COCO flags: 2 visible, 1 inside the image but hidden (behind the body, an occluder, or a
    face point turned away), 0 outside the image (coordinates 0).

    Shape:
        returns image (H, W, 3) uint8 RGB, keypoints (17, 3), bbox [x, y, w, h] of the drawn
        figure, JPEG quality.
    """
    width, height = size
    figure = body.biped(sample_shape(rng, style), sample_biped_pose(rng, style))
    view = sample_view(rng, style, _uniform(rng, style.size) * height)
    tx, ty = place(rng, extent(figure, view), width, height, margin=2.0)
    view = View(view.yaw, view.elevation, view.roll, view.scale, tx, ty)

    image = background(rng, style, height, width)
    if style.shadow > 0:
        feet = body.project(figure.points[[body.B["left_ankle"], body.B["right_ankle"]]], view)[0]
        centre = (feet[:, 0].mean(), feet[:, 1].max())
        paint.ground_shadow(image, centre, (0.15 * view.scale, 0.03 * view.scale), style.shadow)
    materials = biped_materials(rng, style, 256)
    label, ranks = render.draw_figure(image, figure, view, materials, style.far_shade, style.near_shade)
    ys, xs = np.nonzero(label)
    bbox = [0.0, 0.0, 0.0, 0.0]  # the drawn figure's tight box, x, y, w, h
    if len(xs):
        bbox = [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]
    if rng.random() < style.occlusion:
        occ = paint.make_occluder(rng, np.array([bbox[0], bbox[1], bbox[0] + bbox[2], bbox[1] + bbox[3]]), height)
        paint.draw_occluder(image, label, occ)
    cam = _camera(rng, style)
    light = render.light_gradient(rng, height, width, style.light)
    pixels = render.finish(image, rng, cam["blur"], cam["noise"], cam["gain"], light)

    k = len(body.COCO_KEYPOINTS)
    xy, _ = body.project(figure.points[:k], view)
    owners = body.point_owners(figure)[:k]
    hidden = render.hidden_by_label(xy, _owner_ranks(owners, ranks), label)
    faces = body.facing_visible(figure, view)
    turned = np.array([not faces.get(i, True) for i in range(k)])
    inside = render.inside(xy, width, height, margin=1.0)
    flags = np.where(inside, np.where(hidden | turned, 1, 2), 0)
    kp = np.zeros((k, 3))
    kp[inside, :2] = xy[inside]
    kp[:, 2] = flags
    return pixels, kp, bbox, cam["quality"]


# The other domain's keypoints carried onto the TigDog skeleton (WS-CDA's "other species"
# source), by anatomical homology: eyes -> eyes; shoulders -> shoulders; elbows -> front
# elbows; wrists -> front knees (a horse's "front knee" is its carpus, the wrist); knees ->
# back elbows (TigDog's "back elbow" is the stifle, the knee); ankles -> back knees (the
# hock is the ankle). Nose, ears and hips have no TigDog counterpart (TigDog's hip is the
# tail root); chin and hooves stay unlabelled.
OTHER_JOINT_MAP: tuple[tuple[int, int], ...] = (
    (1, 0), (2, 1),  # eyes
    (5, 12), (6, 13),  # shoulders
    (7, 14), (8, 15),  # elbows -> front elbows
    (9, 8), (10, 9),  # wrists -> front knees
    (13, 16), (14, 17),  # knees -> back elbows
    (15, 10), (16, 11),  # ankles -> back knees
)
