"""Presets of the embedded benchmark: sizes and the knobs of the synthetic-to-real gap.

A :class:`Preset` holds the sizes of the three domains and one :class:`Style` per domain.
The domain gap is the difference between ``source`` and ``target`` styles; ``gap`` scales it
(``target`` knobs are interpolated toward the source's: 0 draws the target like the source,
1 is the full gap of the preset, values above 1 extrapolate numeric knobs).

Calibration intent (DESIGN section 3): mostly an appearance and context gap (coat realism,
fur, light, shadows, clutter, blur, noise, JPEG, occluders) plus a moderate shape and pose
shift, so a source-only model stays well above chance and its most confident target
predictions are usually right. The values below are a first calibration; a harder or easier
target is a ``dataclasses.replace`` away.

Style knobs (ranges ``(lo, hi)`` are sampled uniformly per animal, or per shot for the target)

=================== ================= ================= ================= =====================================
knob                source            target            other (biped)     meaning
=================== ================= ================= ================= =====================================
leg                 (0.95, 1.1)       (0.72, 0.9)       (0.9, 1.1)        leg length multiplier
neck                (0.9, 1.05)       (1.1, 1.4)        (0.9, 1.1)        neck length multiplier
head                (0.9, 1.05)       (1.05, 1.3)       (0.9, 1.15)       head size multiplier
thickness           (0.9, 1.05)       (1.1, 1.4)        (0.85, 1.2)       torso depth and width multiplier
limb                (0.9, 1.1)        (1.1, 1.45)       (0.85, 1.2)       limb radius multiplier
tail                (0.8, 1.2)        (0.6, 1.5)        -                 tail length multiplier
gaits               walk, trot        walk, trot        -                 gait cycles sampled
stride              (10, 24)          (14, 30)          (5, 30)           leg swing amplitude, degrees
joint_jitter        6                 9                 8                 s.d. of per-joint angle noise, deg
neck_pitch          (30, 60)          (15, 55)          -                 neck above horizontal, degrees
head_pitch          (-75, -40)        (-95, -45)        (-15, 15)         head angle (muzzle down < 0), deg
head_yaw            (-25, 25)         (-45, 45)         (-60, 60)         head turn, degrees
body_yaw            (0, 25)           (0, 35)           (0, 90)           off-profile turn (random sign), deg
elevation           (0, 15)           (0, 22)           (-5, 15)          camera above the subject, degrees
roll                (-15, 15)         (-8, 8)           (-10, 10)         in-plane rotation, degrees
size                (0.22, 0.36)      (0.34, 0.46)      (0.55, 0.85)      torso length (biped: height) / H
natural_colour      0.5               1.0               -                 probability of a natural coat colour
patterns            flat, two_tone,   flat, patches,    flat, stripes,    coat patterns sampled
                    stripes, checker, dapple, two_tone  checker, two_tone
                    spots
fur                 0.0               1.0               0.3               fur grain strength
pattern_soft        0.0               1.5               0.5               blur of pattern edges, texture px
shading             0.15              0.7               0.3               top-lit gradient on the body
far_shade           0.7               0.62              0.75              brightness of far-side limbs
near_shade          1.08              1.05              1.05              brightness of near-side limbs
shadow              0.0               0.45              0.2               ground shadow opacity
cast_shadow         0.0               1.0               0.0               P(a low sun behind the animal casts
                                                                          its long shadow toward the camera)
background          simple            scene             mixed             simple / scene / indoor / mixed
clutter             (2, 10)           (10, 24)          (3, 10)           background objects
limb_like           0.05              0.6               0.2               share of limb-like clutter
occlusion           0.0               0.35              0.15              probability of a foreground occluder
light               0.0               0.6               0.3               global light ramp and vignette
gain                0.0               0.08              0.05              s.d. of per-channel white balance
blur                (0.0, 0.0)        (0.4, 1.4)        (0.0, 0.8)        Gaussian blur sigma, pixels
noise               (0.0, 0.0)        (2.0, 7.0)         (0.0, 4.0)        sensor noise s.d., grey levels
jpeg_quality        (95, 95)          (55, 85)          (70, 92)          JPEG quality (JPEG domains only)
rear                0.0               0.2               0.0               P(shot shows the animal rearing)
lie                 0.0               0.15              0.0               P(shot shows the animal lying down)
in_step             0.0               0.5               0.0               P(far legs move in step, behind near)
truncation          0.0               0.35 (1.0*)       0.0               P(shot cut by a frame edge)
shake               0.0               2.5               0.0               camera shake s.d., pixels per frame
blur_burst          0.0               0.35              0.0               P(a frame starts a motion-blur burst)
burst_length        (0, 0)            (7, 17)           (0, 0)            motion-blur length in a burst, px
passers             0.0               0.6               0.0               P(a transient occluder crosses a shot)
frame_drop          0.0               0.08              0.0               P(a frame is dropped: motion skips)
frame_repeat        0.0               0.08              0.0               P(a frame is a duplicate)
companions          0.0               0 (0.6*)          0.0               P(another animal of the herd walks
                                                                          behind the labelled one)
shutter             (0, 0)            0 ((2, 5)*)       (0, 0)            frames of motion a burst frame's
                                                                          shutter integrates (ghosted legs)
skew                (0, 0)            0 ((0.3, 0.6)*)   (0, 0)            rolling-shutter skew in a burst, px
                                                                          along the pan per px down
=================== ================= ================= ================= =====================================

The knobs from ``rear`` down, and ``cast_shadow``, are "off" at their source values (0): the
source and the other domain never draw for them, so adding them left both domains' bytes
unchanged.

Video knobs of the target (:class:`Preset`): ``phase_speed`` gait cycles per frame, ``drift``
animal motion across the frame in pixels per frame, ``pan`` camera pan in pixels per frame
(these three make a target shot a video under every shift), ``zoom`` relative scale change over
a shot (a knob of the ``video`` shift; ``(0, 0)`` without it).

Named shifts (``SHIFTS``; DESIGN section 3, docs/shifts.md): each names the knobs it takes from
the target side; every other knob keeps its source value, so a shift isolates one phenomenon.
``Preset.shifts`` selects them (``("all",)``, every knob, is the default target). A named shift
takes its knobs from ``SHIFT_TARGET``: the target column, except the values starred, which are
that shift's strength alone (``all`` keeps the unstarred ones; see ``SHIFT_TARGET``). The
knobs from ``companions`` down are off in ``all``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from da_pose.data.toy.paint import PATTERNS
from da_pose.errors import ConfigError


@dataclass(frozen=True)
class Style:
    """Look, shape and pose distribution of one domain (see the module table)."""

    leg: tuple[float, float] = (0.95, 1.1)
    neck: tuple[float, float] = (0.9, 1.05)
    head: tuple[float, float] = (0.9, 1.05)
    thickness: tuple[float, float] = (0.9, 1.05)
    limb: tuple[float, float] = (0.9, 1.1)
    tail: tuple[float, float] = (0.8, 1.2)
    gaits: tuple[str, ...] = ("walk", "trot")
    stride: tuple[float, float] = (10.0, 24.0)
    joint_jitter: float = 6.0
    neck_pitch: tuple[float, float] = (30.0, 60.0)
    head_pitch: tuple[float, float] = (-75.0, -40.0)
    head_yaw: tuple[float, float] = (-25.0, 25.0)
    body_yaw: tuple[float, float] = (0.0, 25.0)
    elevation: tuple[float, float] = (0.0, 15.0)
    roll: tuple[float, float] = (-15.0, 15.0)
    size: tuple[float, float] = (0.22, 0.36)
    natural_colour: float = 0.5
    patterns: tuple[str, ...] = ("flat", "two_tone", "stripes", "checker", "spots")
    fur: float = 0.0
    pattern_soft: float = 0.0
    shading: float = 0.15
    far_shade: float = 0.7
    near_shade: float = 1.08
    shadow: float = 0.0
    background: str = "simple"
    clutter: tuple[int, int] = (2, 10)
    limb_like: float = 0.05
    occlusion: float = 0.0
    light: float = 0.0
    gain: float = 0.0
    blur: tuple[float, float] = (0.0, 0.0)
    noise: tuple[float, float] = (0.0, 0.0)
    jpeg_quality: tuple[int, int] = (95, 95)
    rear: float = 0.0
    lie: float = 0.0
    in_step: float = 0.0
    truncation: float = 0.0
    shake: float = 0.0
    blur_burst: float = 0.0
    burst_length: tuple[float, float] = (0.0, 0.0)
    passers: float = 0.0
    frame_drop: float = 0.0
    frame_repeat: float = 0.0
    cast_shadow: float = 0.0
    companions: float = 0.0
    shutter: tuple[float, float] = (0.0, 0.0)
    skew: tuple[float, float] = (0.0, 0.0)


SOURCE = Style()

TARGET = Style(
    # shape: stronger than the first calibration's (0.85-1.0, 1.0-1.25, 1.0-1.15, 1.0-1.25,
    # 1.0-1.25, 0.8-1.4), which barely showed beside the source (docs/shifts.md)
    leg=(0.72, 0.9),
    neck=(1.1, 1.4),
    head=(1.05, 1.3),
    thickness=(1.1, 1.4),
    limb=(1.1, 1.45),
    tail=(0.6, 1.5),
    stride=(14.0, 30.0),
    joint_jitter=9.0,
    neck_pitch=(15.0, 55.0),
    head_pitch=(-95.0, -45.0),
    head_yaw=(-45.0, 45.0),
    body_yaw=(0.0, 35.0),
    elevation=(0.0, 22.0),
    roll=(-8.0, 8.0),
    size=(0.34, 0.46),
    natural_colour=1.0,
    patterns=("flat", "flat", "patches", "dapple", "two_tone"),
    fur=1.0,
    pattern_soft=1.5,
    shading=0.7,
    far_shade=0.62,
    near_shade=1.05,
    shadow=0.45,
    background="scene",
    # context: more and more limb-like clutter than the first calibration's (6, 16) and 0.35,
    # which left source-only 73.7 on the demo test split (now 69.3; docs/shifts.md)
    clutter=(10, 24),
    limb_like=0.6,
    # occlusion: the first calibration's values; stronger ones cost the oracle as much as the
    # source-only model and drop many frames (docs/shifts.md)
    occlusion=0.35,
    light=0.6,
    gain=0.08,
    # appearance: the first calibration's values; stronger blur, noise and JPEG cost the oracle
    # as much as the source-only model (docs/shifts.md)
    blur=(0.4, 1.4),
    noise=(2.0, 7.0),
    jpeg_quality=(55, 85),
    rear=0.2,
    lie=0.15,
    in_step=0.5,
    truncation=0.35,
    shake=2.5,
    # video: the first calibration's values; longer bursts cost the oracle nearly as much as the
    # source-only model (docs/shifts.md)
    blur_burst=0.35,
    burst_length=(7.0, 17.0),
    passers=0.6,
    frame_drop=0.08,
    frame_repeat=0.08,
    # appearance, third calibration round: shot against a low sun, the legs' shadows run down from
    # the hooves like dark second legs; the look alone left no gap (docs/shifts.md)
    cast_shadow=1.0,
)

# The named shifts' own strengths (fourth calibration round, session 11; docs/shifts.md): where a
# single shift missed the rule at TARGET's values, the phenomenon is stronger when the shift is
# named alone (or in a comma list): a second animal of the herd behind the labelled one
# (context), every shot cut by a frame edge (occlusion), the shutter open over the swinging legs
# and a rolling shutter's skew in a motion burst (video). ``all`` stays TARGET: with these
# strengths together its oracle fell to 26 % and source-only to 15 % (seed 0), a target on which
# no method can be told apart.
SHIFT_TARGET = dataclasses.replace(TARGET, companions=0.6, truncation=1.0, shutter=(2.0, 5.0), skew=(0.3, 0.6))

OTHER = Style(
    leg=(0.9, 1.1),
    neck=(0.9, 1.1),
    head=(0.9, 1.15),
    thickness=(0.85, 1.2),
    limb=(0.85, 1.2),
    stride=(5.0, 30.0),
    joint_jitter=8.0,
    head_pitch=(-15.0, 15.0),
    head_yaw=(-60.0, 60.0),
    body_yaw=(0.0, 90.0),
    elevation=(-5.0, 15.0),
    roll=(-10.0, 10.0),
    size=(0.55, 0.85),
    patterns=("flat", "flat", "stripes", "checker", "two_tone"),
    fur=0.3,
    pattern_soft=0.5,
    shading=0.3,
    far_shade=0.75,
    near_shade=1.05,
    shadow=0.2,
    background="mixed",
    clutter=(3, 10),
    limb_like=0.2,
    occlusion=0.15,
    light=0.3,
    gain=0.05,
    blur=(0.0, 0.8),
    noise=(0.0, 4.0),
    jpeg_quality=(70, 92),
)


@dataclass(frozen=True)
class Preset:
    """Sizes of the three domains and their styles.

    ``source_train + source_val`` synthetic images (640 x 480 PNG); ``target_videos`` shots of
    ``target_frames`` frames (``target_size`` = width, height; JPEG), of which
    ``target_test_fraction`` of the shots go to the test split; ``other_train + other_val``
    biped images (``other_size``; JPEG). ``gap`` scales the source-to-target style difference;
    ``shifts`` names the parts of it the target carries (``SHIFTS``; ``all`` is every knob).
    """

    name: str = "demo"
    source_train: int = 1000
    source_val: int = 200
    target_videos: int = 30
    target_frames: int = 20
    target_test_fraction: float = 0.2
    target_size: tuple[int, int] = (480, 360)
    other_train: int = 700
    other_val: int = 100
    other_size: tuple[int, int] = (384, 288)
    gap: float = 1.0
    phase_speed: tuple[float, float] = (0.025, 0.06)
    drift: tuple[float, float] = (0.0, 2.0)
    pan: tuple[float, float] = (0.0, 3.0)
    zoom: tuple[float, float] = (-0.12, 0.12)
    source: Style = field(default=SOURCE)
    target: Style = field(default=TARGET)
    shift_target: Style = field(default=SHIFT_TARGET)
    other: Style = field(default=OTHER)
    shifts: tuple[str, ...] = ("all",)


PRESETS: dict[str, Preset] = {
    # 40 shots of 15 frames, 16 of them test (240 frames): the paired intervals of the benchmark
    # resample test shots, so their width is set by the number of test shots (docs/shifts.md)
    "demo": Preset(target_videos=40, target_frames=15, target_test_fraction=0.4),
    "benchmark": Preset(
        name="benchmark",
        source_train=5000,
        source_val=1000,
        target_videos=120,
        target_frames=25,
        other_train=2700,
        other_val=300,
    ),
    # A few samples of each domain: unit tests and smoke runs.
    "tiny": Preset(
        name="tiny",
        source_train=4,
        source_val=2,
        target_videos=2,
        target_frames=4,
        other_train=3,
        other_val=1,
    ),
}


# The named shifts: the knobs each one takes from the target side (Style fields, and the
# Preset's ``zoom``). Together they cover every Style field once, so ``all`` is the full target.
SHIFTS: dict[str, tuple[str, ...]] = {
    # fur texture and colour, lighting, shadows, sensor noise, JPEG
    "appearance": ("natural_colour", "patterns", "fur", "pattern_soft", "shading", "far_shade", "near_shade",
                   "shadow", "cast_shadow", "light", "gain", "blur", "noise", "jpeg_quality"),
    # cluttered scenes with limb-like distractors instead of simple backdrops
    "context": ("background", "clutter", "limb_like", "companions"),
    # gait, joint angles, head pose, viewpoint and distance, rearing and lying
    "pose": ("gaits", "stride", "joint_jitter", "neck_pitch", "head_pitch", "head_yaw", "body_yaw", "elevation",
             "roll", "size", "rear", "lie"),
    # body proportions
    "shape": ("leg", "neck", "head", "thickness", "limb", "tail"),
    # static occluders, far legs hidden behind near ones, truncation at the frame edge
    "occlusion": ("occlusion", "in_step", "truncation"),
    # within-shot change: zoom, camera shake, motion-blur bursts, passing occluders, bad frames
    "video": ("zoom", "shake", "blur_burst", "burst_length", "shutter", "skew", "passers", "frame_drop", "frame_repeat"),
}
SHIFT_NAMES = (*SHIFTS, "all")
PRESET_KNOBS = ("zoom",)  # shift knobs that live on the Preset (the target's video), not the Style
STEADY_ZOOM = (0.0, 0.0)  # the Preset's zoom without the video shift: a steady camera distance


def parse_shifts(spec: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """``"pose"``, ``"pose,shape"`` or a sequence of names -> sorted unique names; ``all`` alone
    when it is named (ConfigError listing the valid names for an unknown one)."""
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    names = [n.strip() for n in names if n.strip()]
    bad = [n for n in names if n not in SHIFT_NAMES]
    if bad or not names:
        raise ConfigError(f"unknown shift {', '.join(bad) or repr(spec)}; valid: {', '.join(SHIFT_NAMES)} "
                          "(a comma list combines them)")
    if "all" in names:
        return ("all",)
    return tuple(n for n in SHIFTS if n in names)


def shift_knobs(shifts: tuple[str, ...]) -> tuple[str, ...]:
    """The knobs the shifts take from the target side, in SHIFTS order."""
    names = tuple(SHIFTS) if "all" in shifts else shifts
    return tuple(k for n in names for k in SHIFTS[n])


def shifted_style(source: Style, target: Style, shifts: tuple[str, ...]) -> Style:
    """``source`` with the shifts' Style knobs taken from ``target``."""
    knobs = [k for k in shift_knobs(shifts) if k not in PRESET_KNOBS]
    return dataclasses.replace(source, **{k: getattr(target, k) for k in knobs})


def get_preset(preset: str | Preset) -> Preset:
    """A preset by name (ConfigError listing the valid names) or a Preset passed through."""
    if isinstance(preset, Preset):
        return check_preset(preset)
    if preset not in PRESETS:
        raise ConfigError(f"unknown generator preset {preset!r}; valid: {', '.join(PRESETS)}")
    return check_preset(PRESETS[preset])


def check_preset(p: Preset) -> Preset:
    """Range checks that a hand-made preset can get wrong (ConfigError naming the field)."""
    counts = {
        "source_train": p.source_train, "source_val": p.source_val, "target_videos": p.target_videos,
        "target_frames": p.target_frames, "other_train": p.other_train, "other_val": p.other_val,
    }
    for key, value in counts.items():
        if not isinstance(value, int) or value < 0:
            raise ConfigError(f"preset {p.name!r}: {key} = {value!r}, expected a non-negative integer")
    if p.source_train + p.source_val < 1 or p.target_videos < 1 or p.target_frames < 1:
        raise ConfigError(f"preset {p.name!r}: needs at least one source image and one target frame")
    if not 0.0 <= p.target_test_fraction < 1.0:
        raise ConfigError(f"preset {p.name!r}: target_test_fraction {p.target_test_fraction}, expected [0, 1)")
    for key in ("target_size", "other_size"):
        w, h = getattr(p, key)
        if w < 32 or h < 32:
            raise ConfigError(f"preset {p.name!r}: {key} {(w, h)} too small, expected at least 32 x 32")
    if p.gap < 0:
        raise ConfigError(f"preset {p.name!r}: gap {p.gap} must be >= 0")
    if parse_shifts(p.shifts) != tuple(p.shifts):
        raise ConfigError(f"preset {p.name!r}: shifts {p.shifts}, expected {parse_shifts(p.shifts)}")
    for domain in ("source", "target", "shift_target", "other"):
        style = getattr(p, domain)
        if style.background not in ("simple", "scene", "indoor", "mixed"):
            raise ConfigError(
                f"preset {p.name!r}: {domain}.background {style.background!r}; valid: simple, scene, indoor, mixed"
            )
        bad = [g for g in style.gaits if g not in ("walk", "trot")]
        if bad or not style.gaits:
            raise ConfigError(f"preset {p.name!r}: {domain}.gaits {style.gaits}; valid: walk, trot")
        bad = [q for q in style.patterns if q not in PATTERNS]
        if bad or not style.patterns:
            raise ConfigError(f"preset {p.name!r}: {domain}.patterns {style.patterns}; valid: {', '.join(PATTERNS)}")
    return p


def mix_styles(a: Style, b: Style, t: float) -> Style:
    """``a`` moved a fraction ``t`` of the way to ``b``: numeric knobs interpolate (integers
    round), choices (gaits, patterns, background) are ``b``'s when ``t >= 0.5``."""
    values = {}
    for f in dataclasses.fields(Style):
        va, vb = getattr(a, f.name), getattr(b, f.name)
        if isinstance(va, str) or (isinstance(va, tuple) and va and isinstance(va[0], str)):
            values[f.name] = vb if t >= 0.5 else va
        elif isinstance(va, tuple):
            mixed = tuple(x + t * (y - x) for x, y in zip(va, vb))
            values[f.name] = tuple(int(round(m)) for m in mixed) if isinstance(va[0], int) else mixed
        else:
            values[f.name] = va + t * (vb - va)
    return Style(**values)


def effective_target(p: Preset) -> Style:
    """The target style after applying the preset's ``shifts`` then its ``gap``."""
    target = p.target if p.shifts == ("all",) else shifted_style(p.source, p.shift_target, p.shifts)
    return target if p.gap == 1.0 else mix_styles(p.source, target, p.gap)


def effective_zoom(p: Preset) -> tuple[float, float]:
    """The target shots' zoom range: the preset's under the ``video`` shift, else steady."""
    return p.zoom if "zoom" in shift_knobs(p.shifts) else STEADY_ZOOM


def gap_knobs(p: Preset) -> dict:
    """The manifest's ``gap`` dict: strength, the shifts and their knobs' target values, video
    knobs and every style knob per domain (``target``: the effective, shifted one)."""

    def plain(style: Style) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(style).items()}

    target = plain(effective_target(p))
    zoom = list(effective_zoom(p))
    return {
        "strength": p.gap,
        "shifts": list(p.shifts),
        "shift_knobs": {
            name: {k: (zoom if k == "zoom" else target[k]) for k in SHIFTS[name]}
            for name in (SHIFTS if p.shifts == ("all",) else p.shifts)
        },
        "video": {
            "phase_speed": list(p.phase_speed), "drift": list(p.drift), "pan": list(p.pan), "zoom": zoom,
        },
        "source": plain(p.source),
        "target": target,
        "other": plain(p.other),
    }
