"""Articulated 2.5D bodies of the embedded benchmark: a quadruped ("toyhorse") and a biped.

A body is a set of named 3D points computed by forward kinematics from a shape (proportions)
and a pose (gait phase, joint angles, head pose), plus a list of drawing primitives (tapered
capsule chains and polygons) that reference those points. Rendering (``render.py``) projects
the points with a :class:`View` and paints the primitives back to front.

Body frame: x forward (the way the animal faces), y up, z to the animal's LEFT; one body unit
is the quadruped's torso length (tail root to shoulder) or the biped's standing height.

View convention, which fixes left and right in every image: ``yaw = 0`` shows the quadruped
in profile facing image-right, and then its RIGHT side faces the viewer (the animal's left,
+z, points into the screen). ``yaw = 180`` faces image-left and shows the left side. A
primitive on the far side is drawn behind the body and darker, one on the near side in front
and lighter; the far eye is hidden in profile and both eyes show in a three-quarter head view
(an eye is visible when its outward normal does not point away from the camera).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from da_pose.data.skeleton import JOINTS

# ------------------------------------------------------------------------------------ figures


@dataclass(frozen=True)
class Prim:
    """One drawing primitive.

    ``kind`` is ``capsule`` (a chain of round-ended, linearly tapered segments through
    ``points`` with one radius per point) or ``polygon`` (a filled outline). ``side`` is +1 for
    the animal's left, -1 for its right, 0 for the midline: sided primitives go to the far
    layer or the near layer depending on the view; ``layer`` orders midline primitives (and
    primitives within a side). ``material`` names the texture it is painted with.
    """

    name: str
    kind: str
    points: tuple[int, ...]
    radii: tuple[float, ...] = ()
    material: str = "body"
    side: int = 0
    layer: float = 1.0


@dataclass(frozen=True)
class Figure:
    """A posed body.

    Attributes:
        points: float64 (P, 3) x forward, y up, z left, in body units.
        names: P point names; the first ones are the domain's keypoints in order.
        prims: drawing primitives, in no particular order (rendering sorts them).
        normals: point index -> outward unit normal (3,) for points whose visibility depends on
            facing (eyes, ears, nose): hidden when the normal points away from the camera, and
            a single-point primitive on such a point (an eye) is then not drawn.
    """

    points: np.ndarray
    names: tuple[str, ...]
    prims: tuple[Prim, ...]
    normals: dict


def _direction(angle_deg: float) -> np.ndarray:
    """Unit vector in the x-y plane, ``angle`` from straight down, positive toward forward."""
    a = math.radians(angle_deg)
    return np.array([math.sin(a), -math.cos(a), 0.0])


def _heading(angle_deg: float) -> np.ndarray:
    """Unit vector in the x-y plane, ``angle`` above the forward horizontal."""
    a = math.radians(angle_deg)
    return np.array([math.cos(a), math.sin(a), 0.0])


def _yaw_about(points: np.ndarray, pivot: np.ndarray, yaw_deg: float) -> np.ndarray:
    """Rotate (N, 3) points about the vertical axis through ``pivot``; +yaw turns toward +z (left)."""
    a = math.radians(yaw_deg)
    c, s = math.cos(a), math.sin(a)
    rel = points - pivot
    x = rel[..., 0] * c - rel[..., 2] * s
    z = rel[..., 0] * s + rel[..., 2] * c
    return np.stack([x, rel[..., 1], z], axis=-1) + pivot


# ------------------------------------------------------------------------------------ quadruped


@dataclass(frozen=True)
class QuadShape:
    """Quadruped proportions as multipliers of the nominal horse-like body (1.0 = nominal)."""

    leg: float = 1.0  # leg segment lengths
    neck: float = 1.0
    head: float = 1.0
    thickness: float = 1.0  # torso depth (top line to belly) and lateral width
    limb: float = 1.0  # limb radii
    tail: float = 1.0


@dataclass(frozen=True)
class QuadPose:
    """Quadruped pose.

    ``phase`` is the gait cycle position in [0, 1); ``stride`` the leg swing amplitude in
    degrees; ``neck_pitch`` the neck's angle above the horizontal; ``head_pitch`` the head's
    absolute angle (negative = muzzle down); ``head_yaw`` turns the head toward the animal's
    left (+) or right (-); ``jitter`` (12,) degrees added to the three segment angles of the
    legs LF, RF, LB, RB (random joint perturbation). Postures outside a gait: ``pitch`` raises
    the forehand by that many degrees about the hind legs (rearing; the hind legs keep their
    angles to the ground); ``fold`` (front, back) in [0, 1] folds the legs toward a tucked
    posture (1: front legs tucked as in rearing or lying, back legs folded under the body as in
    lying); ``in_step`` puts each right leg in the phase of its left partner, so in profile the
    far legs move behind the near ones (and are hidden by them).
    """

    gait: str = "walk"
    phase: float = 0.0
    stride: float = 18.0
    neck_pitch: float = 45.0
    head_pitch: float = -55.0
    head_yaw: float = 0.0
    tail_lift: float = 0.0
    jitter: tuple[float, ...] = (0.0,) * 12
    pitch: float = 0.0
    fold: tuple[float, float] = (0.0, 0.0)
    in_step: bool = False


# Phase offsets per leg (LF, RF, LB, RB): a lateral-sequence walk (LB, LF, RB, RF a quarter
# cycle apart) and a trot (diagonal pairs together).
GAITS: dict[str, tuple[float, float, float, float]] = {
    "walk": (0.25, 0.75, 0.0, 0.5),
    "trot": (0.0, 0.5, 0.5, 0.0),
}

TORSO_POINTS = 24  # outline points of the torso polygon
QUAD_EXTRA = (
    "tail_tip", "tail_1", "tail_2", "withers", "poll", "muzzle", "throat",
    "left_hip_socket", "right_hip_socket", "left_ear", "right_ear",
    "left_ear_tip", "right_ear_tip", "head_mid",
    "neck_top_0", "neck_top_1", "neck_bot_0", "neck_bot_1", "mane_0", "mane_1",
    "left_front_toe", "right_front_toe", "left_back_toe", "right_back_toe",
)
QUAD_NAMES: tuple[str, ...] = (
    JOINTS + QUAD_EXTRA + tuple(f"torso_{i}" for i in range(TORSO_POINTS))
)
Q = {name: i for i, name in enumerate(QUAD_NAMES)}
TAIL_TIP = Q["tail_tip"]  # the 19th TigDog landmark of the embedded benchmark

# Leg chains: (side, root point, upper joint, lower joint, hoof, toe) with TigDog names.
_QUAD_LEGS = (
    ("lf", +1, "left_shoulder", "left_front_elbow", "left_front_knee", "left_front_hoof", "left_front_toe"),
    ("rf", -1, "right_shoulder", "right_front_elbow", "right_front_knee", "right_front_hoof", "right_front_toe"),
    ("lb", +1, "left_hip_socket", "left_back_elbow", "left_back_knee", "left_back_hoof", "left_back_toe"),
    ("rb", -1, "right_hip_socket", "right_back_elbow", "right_back_knee", "right_back_hoof", "right_back_toe"),
)


def _leg_angles(front: bool, psi: float, stride: float, jitter) -> tuple[float, float, float]:
    """Absolute segment angles (degrees from straight down, + forward) of one leg.

    A cartoon of a horse's stride: the leg swings sinusoidally about its rest posture; while it
    moves forward (the swing phase, cos psi > 0) the lower joints flex to lift the hoof.
    """
    s = stride * math.sin(psi)
    flex = max(0.0, math.cos(psi)) * stride / 20.0
    if front:  # shoulder -> elbow points down-back, forearm and cannon near vertical
        a1 = -25.0 + 0.5 * s
        a2 = 2.0 + s + 25.0 * flex
        a3 = a2 - 65.0 * flex
    else:  # hip socket -> stifle points down-forward, gaskin down-back, cannon near vertical
        a1 = 28.0 + 0.6 * s + 15.0 * flex
        a2 = -30.0 + 0.6 * s - 10.0 * flex
        a3 = 4.0 + s + 10.0 * flex
    return a1 + jitter[0], a2 + jitter[1], a3 + jitter[2]


# Segment angles (from straight down, + forward) of fully folded legs: the forearm forward and
# level, the cannon tucked back under it (front); stifle forward, hock back and up, cannon
# forward under the belly (back): a horse lying on its sternum, or the forelegs of a rearing one.
FOLDED = {"front": (-20.0, 80.0, -105.0), "back": (65.0, -115.0, 75.0)}


def _posture(angles: tuple[float, float, float], front: bool, pose: QuadPose) -> tuple[float, float, float]:
    """Gait angles moved toward the folded posture, and for rearing the hind legs counter-rotated
    so they keep their angle to the ground once the body is pitched up."""
    fold = pose.fold[0 if front else 1]
    if fold > 0:
        folded = FOLDED["front" if front else "back"]
        angles = tuple(a + fold * (f - a) for a, f in zip(angles, folded))
    if pose.pitch and not front:
        angles = tuple(a - pose.pitch for a in angles)
    return angles


def _pitch_about(points: np.ndarray, pivot: np.ndarray, pitch_deg: float) -> np.ndarray:
    """Rotate (N, 3) points in the x-y plane about ``pivot``; + raises the front (x forward)."""
    a = math.radians(pitch_deg)
    c, s = math.cos(a), math.sin(a)
    rel = points - pivot
    x = rel[..., 0] * c - rel[..., 1] * s
    y = rel[..., 0] * s + rel[..., 1] * c
    return np.stack([x, y, rel[..., 2]], axis=-1) + pivot


def quadruped(shape: QuadShape, pose: QuadPose) -> Figure:
    """Pose the toy horse.

    Nominal proportions follow a horse in side view: torso length 1, torso depth 0.46, legs
    about as long as the torso, a neck of 0.55 and a head of 0.5. The figure is shifted so the
    lowest hoof touches the ground (y = 0).
    """
    p = np.zeros((len(QUAD_NAMES), 3))
    depth = 0.46 * shape.thickness
    half_w = 0.12 * shape.thickness  # lateral offset of the legs
    b = depth / 2

    # torso: a superellipse, slightly boxy like a barrel
    t = np.linspace(0, 2 * np.pi, TORSO_POINTS, endpoint=False)
    ex = 2 / 2.6
    cx, sx = np.cos(t), np.sin(t)
    p[Q["torso_0"]: Q["torso_0"] + TORSO_POINTS, 0] = 0.6 * np.sign(cx) * np.abs(cx) ** ex
    p[Q["torso_0"]: Q["torso_0"] + TORSO_POINTS, 1] = b * np.sign(sx) * np.abs(sx) ** ex

    p[Q["hip"]] = (-0.5, 0.82 * b, 0.0)
    p[Q["withers"]] = (0.38, b + 0.03, 0.0)
    for side, z in (("left", half_w), ("right", -half_w)):
        p[Q[f"{side}_shoulder"]] = (0.45, 0.0, z)
        p[Q[f"{side}_hip_socket"]] = (-0.36, 0.08, z)

    legs = GAITS.get(pose.gait, GAITS["walk"])
    if pose.in_step:  # right legs in their left partner's phase: (LF, LF, LB, LB)
        legs = (legs[0], legs[0], legs[2], legs[2])
    lengths_front = np.array([0.26, 0.34, 0.36]) * shape.leg
    lengths_back = np.array([0.32, 0.36, 0.38]) * shape.leg
    for k, (_, _, root, upper, lower, hoof, toe) in enumerate(_QUAD_LEGS):
        front = k < 2
        psi = 2 * math.pi * (pose.phase + legs[k])
        angles = _leg_angles(front, psi, pose.stride, pose.jitter[3 * k: 3 * k + 3])
        if pose.pitch or pose.fold[0 if front else 1] > 0:
            angles = _posture(angles, front, pose)
        lengths = lengths_front if front else lengths_back
        p[Q[upper]] = p[Q[root]] + lengths[0] * _direction(angles[0])
        p[Q[lower]] = p[Q[upper]] + lengths[1] * _direction(angles[1])
        p[Q[hoof]] = p[Q[lower]] + lengths[2] * _direction(angles[2])
        p[Q[toe]] = p[Q[hoof]] + 0.07 * _direction(angles[2] + 90.0)

    # neck: from the front of the withers up and forward to the poll
    base = np.array([0.47, 0.12, 0.0])
    neck_dir = _heading(pose.neck_pitch)
    neck_up = np.array([-neck_dir[1], neck_dir[0], 0.0])
    neck_len = 0.55 * shape.neck
    p[Q["poll"]] = base + neck_len * neck_dir
    p[Q["neck_top_0"]] = base + 0.21 * shape.thickness * neck_up
    p[Q["neck_top_1"]] = p[Q["poll"]] + 0.06 * neck_up
    p[Q["mane_0"]] = p[Q["neck_top_0"]] - 0.02 * neck_up - 0.04 * neck_dir
    p[Q["mane_1"]] = p[Q["neck_top_1"]] - 0.015 * neck_up
    p[Q["neck_bot_0"]] = base - 0.24 * shape.thickness * neck_up + 0.05 * neck_dir
    p[Q["neck_bot_1"]] = p[Q["poll"]] - 0.08 * neck_up

    # head: from the poll toward the muzzle; "face" is the side toward the forehead
    head_dir = _heading(pose.head_pitch)
    face = np.array([-head_dir[1], head_dir[0], 0.0])
    if face[0] < 0:  # keep the face pointing forward for steep head angles
        face = -face
    hl = 0.5 * shape.head
    poll = p[Q["poll"]]
    head_pts = {
        "head_mid": poll + 0.45 * hl * head_dir,
        "muzzle": poll + hl * head_dir,
        "throat": poll + 0.18 * hl * head_dir - 0.09 * face,
        "left_eye": poll + 0.27 * hl * head_dir + 0.035 * face + np.array([0, 0, 0.075]),
        "right_eye": poll + 0.27 * hl * head_dir + 0.035 * face + np.array([0, 0, -0.075]),
        "chin": poll + 0.78 * hl * head_dir - 0.06 * face,
        "left_ear": poll - 0.02 * head_dir + np.array([0, 0, 0.045]),
        "right_ear": poll - 0.02 * head_dir + np.array([0, 0, -0.045]),
        "left_ear_tip": poll - 0.16 * head_dir + 0.05 * face + np.array([0, 0, 0.06]),
        "right_ear_tip": poll - 0.16 * head_dir + 0.05 * face + np.array([0, 0, -0.06]),
    }
    names = list(head_pts)
    turned = _yaw_about(np.stack([head_pts[n] for n in names]), poll, pose.head_yaw)
    for n, xyz in zip(names, turned):
        p[Q[n]] = xyz
    # Eyes sit on the sides of the head and look 35 degrees forward of sideways (kept level
    # whatever the head pitch): the far eye shows once head and body together turn about
    # 60 degrees toward the camera, a three-quarter view.
    eye_normals = {
        side: _yaw_about(np.array([[0.57, 0.0, 0.82 * sign]]), np.zeros(3), pose.head_yaw)[0]
        for side, sign in (("left_eye", 1.0), ("right_eye", -1.0))
    }

    # tail: three segments hanging down and back from the tail root
    tl = 0.62 * shape.tail / 3
    angle = -25.0 + pose.tail_lift
    prev = p[Q["hip"]]
    for name in ("tail_1", "tail_2", "tail_tip"):
        a = math.radians(angle)
        p[Q[name]] = prev + tl * np.array([-math.cos(a), math.sin(a), 0.0])
        prev = p[Q[name]]
        angle -= 28.0

    if pose.pitch:  # rearing: the whole body turns up about the hip sockets
        p = _pitch_about(p, np.array([-0.36, 0.08, 0.0]), pose.pitch)
        eye_normals = {k: _pitch_about(v[None], np.zeros(3), pose.pitch)[0] for k, v in eye_normals.items()}
    hooves = [Q[h] for *_, h, _ in _QUAD_LEGS]
    p[:, 1] -= p[hooves, 1].min()

    r = 0.01 * shape.limb  # limb radii in hundredths of a body unit
    prims = [
        Prim("torso", "polygon", tuple(range(Q["torso_0"], Q["torso_0"] + TORSO_POINTS)), layer=1.0),
        Prim(
            "neck", "polygon",
            (Q["neck_top_0"], Q["neck_top_1"], Q["neck_bot_1"], Q["neck_bot_0"]), layer=1.1,
        ),
        Prim("mane", "capsule", (Q["mane_0"], Q["mane_1"]), (3.5 * r, 2.5 * r), "mane", 0, 1.15),
        Prim("head", "capsule", (Q["poll"], Q["head_mid"], Q["muzzle"]), (10 * r, 8.5 * r, 6 * r), "head", 0, 1.2),
        Prim("jaw", "capsule", (Q["throat"], Q["chin"]), (7 * r, 4.5 * r), "head", 0, 1.21),
        Prim(
            "tail", "capsule", (Q["hip"], Q["tail_1"], Q["tail_2"], Q["tail_tip"]),
            (3 * r, 4 * r, 5 * r, 5.5 * r), "mane", 0, 0.9,
        ),
    ]
    for side, sign in (("left", +1), ("right", -1)):
        ear = (Q[f"{side}_ear"], Q[f"{side}_ear_tip"], Q["poll"])
        prims.append(Prim(f"{side}_ear", "polygon", ear, (), "head", sign, 0.3))
        prims.append(Prim(f"{side}_eye", "capsule", (Q[f"{side}_eye"],), (2.8 * r,), "eye", sign, 1.5))
    for k, (key, sign, root, upper, lower, hoof, toe) in enumerate(_QUAD_LEGS):
        front = k < 2
        top = (10 * r, 6.5 * r) if front else (14 * r, 8 * r)
        chain = (Q[root], Q[upper], Q[lower])
        prims.append(Prim(f"{key}_upper", "capsule", chain, (top[0], top[1], 4.5 * r), "body", sign, 0.5))
        prims.append(Prim(f"{key}_lower", "capsule", (Q[lower], Q[hoof]), (4.5 * r, 3.8 * r), "lower", sign, 0.6))
        prims.append(Prim(f"{key}_hoof", "capsule", (Q[hoof], Q[toe]), (4.2 * r, 3.5 * r), "hoof", sign, 0.7))
    normals = {Q[name]: eye_normals[name] for name in ("left_eye", "right_eye")}
    return Figure(p, QUAD_NAMES, tuple(prims), normals)


# ------------------------------------------------------------------------------------ biped

# COCO person keypoints, in COCO order (the "other" domain's annotation order).
COCO_KEYPOINTS: tuple[str, ...] = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
    "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
)
# COCO's skeleton, 1-based pairs (the COCO convention).
COCO_SKELETON: tuple[tuple[int, int], ...] = (
    (16, 14), (14, 12), (17, 15), (15, 13), (12, 13), (6, 12), (7, 13), (6, 7), (6, 8),
    (7, 9), (8, 10), (9, 11), (2, 3), (1, 2), (1, 3), (2, 4), (3, 5), (4, 6), (5, 7),
)
BIPED_NAMES: tuple[str, ...] = COCO_KEYPOINTS + (
    "neck", "head", "hair", "pelvis", "chest", "left_toe", "right_toe", "left_hand", "right_hand",
)
B = {name: i for i, name in enumerate(BIPED_NAMES)}


@dataclass(frozen=True)
class BipedPose:
    """Biped pose: walking ``phase`` and ``stride`` (degrees), arm raise and spread (degrees,
    per arm L, R), elbow bend (per arm), head yaw and pitch, torso lean, ``jitter`` (8,)
    degrees on thigh, shin (L, R) and upper arm, forearm (L, R)."""

    phase: float = 0.0
    stride: float = 20.0
    arm_raise: tuple[float, float] = (0.0, 0.0)
    arm_spread: tuple[float, float] = (8.0, 8.0)
    elbow: tuple[float, float] = (15.0, 15.0)
    head_yaw: float = 0.0
    head_pitch: float = 0.0
    lean: float = 0.0
    jitter: tuple[float, ...] = (0.0,) * 8


def biped(shape: QuadShape, pose: BipedPose) -> Figure:
    """Pose the toy biped (a stick person with COCO keypoints), 1 body unit tall nominally.

    ``shape`` reuses the quadruped's multipliers: ``leg`` (leg lengths), ``neck``, ``head``
    (head size), ``thickness`` (shoulder, hip and torso width), ``limb`` (limb radii).
    """
    p = np.zeros((len(BIPED_NAMES), 3))
    leg = shape.leg
    thigh, shin = 0.245 * leg, 0.245 * leg
    hip_y = thigh + shin + 0.04
    p[B["pelvis"]] = (0.0, hip_y, 0.0)
    lean = _direction(180.0 + pose.lean)  # unit vector up, tilted forward by ``lean``
    torso_len = 0.30
    p[B["chest"]] = p[B["pelvis"]] + 0.6 * torso_len * lean
    p[B["neck"]] = p[B["pelvis"]] + torso_len * lean
    hw = 0.085 * shape.thickness
    sw = 0.175 * shape.thickness
    for side, z in (("left", 1.0), ("right", -1.0)):
        p[B[f"{side}_hip"]] = p[B["pelvis"]] + (0, 0, z * hw)
        p[B[f"{side}_shoulder"]] = p[B["neck"]] + (0, -0.035, z * sw)

    for k, (side, sign, offset) in enumerate((("left", 1.0, 0.0), ("right", -1.0, 0.5))):
        psi = 2 * math.pi * (pose.phase + offset)
        swing = pose.stride * math.sin(psi)
        flex = max(0.0, math.cos(psi)) * pose.stride / 20.0
        a_thigh = swing + pose.jitter[2 * k]
        a_shin = a_thigh - 45.0 * flex - 3.0 + pose.jitter[2 * k + 1]
        p[B[f"{side}_knee"]] = p[B[f"{side}_hip"]] + thigh * _direction(a_thigh)
        p[B[f"{side}_ankle"]] = p[B[f"{side}_knee"]] + shin * _direction(a_shin)
        p[B[f"{side}_toe"]] = p[B[f"{side}_ankle"]] + 0.08 * _direction(a_shin + 80.0)
        # arms swing against the legs; raise lifts the upper arm forward, spread moves it out
        a_upper = -0.8 * swing + pose.arm_raise[k] + pose.jitter[4 + 2 * k]
        a_fore = a_upper + pose.elbow[k] + pose.jitter[5 + 2 * k]
        spread = math.radians(pose.arm_spread[k])
        up = _direction(a_upper) * math.cos(spread) + np.array([0, 0, sign * math.sin(spread)])
        fore = _direction(a_fore) * math.cos(spread * 0.6) + np.array([0, 0, sign * math.sin(spread * 0.6)])
        p[B[f"{side}_elbow"]] = p[B[f"{side}_shoulder"]] + 0.165 * leg * up
        p[B[f"{side}_wrist"]] = p[B[f"{side}_elbow"]] + 0.15 * leg * fore
        p[B[f"{side}_hand"]] = p[B[f"{side}_wrist"]] + 0.05 * fore

    hr = 0.062 * shape.head
    head = p[B["neck"]] + (0.045 * shape.neck + hr) * lean
    p[B["head"]] = head
    fwd = _heading(pose.head_pitch)
    up = np.array([-fwd[1], fwd[0], 0.0])
    face = {
        "nose": head + 1.05 * hr * fwd - 0.15 * hr * up,
        "left_eye": head + 0.85 * hr * fwd + 0.25 * hr * up + np.array([0, 0, 0.45 * hr]),
        "right_eye": head + 0.85 * hr * fwd + 0.25 * hr * up + np.array([0, 0, -0.45 * hr]),
        "left_ear": head - 0.05 * hr * fwd + np.array([0, 0, 1.0 * hr]),
        "right_ear": head - 0.05 * hr * fwd + np.array([0, 0, -1.0 * hr]),
        "hair": head - 0.35 * hr * fwd + 0.25 * hr * up,
    }
    names = list(face)
    turned = _yaw_about(np.stack([face[n] for n in names]), head, pose.head_yaw)
    for n, xyz in zip(names, turned):
        p[B[n]] = xyz
    normal_dirs = {
        "nose": fwd,
        "left_eye": 0.85 * fwd + np.array([0, 0, 0.5]),
        "right_eye": 0.85 * fwd + np.array([0, 0, -0.5]),
        "left_ear": np.array([0, 0, 1.0]),
        "right_ear": np.array([0, 0, -1.0]),
    }
    normals = {
        B[n]: _yaw_about((v / np.linalg.norm(v))[None], np.zeros(3), pose.head_yaw)[0]
        for n, v in normal_dirs.items()
    }
    p[:, 1] -= p[[B["left_ankle"], B["right_ankle"], B["left_toe"], B["right_toe"]], 1].min() - 0.015

    r = 0.01 * shape.limb
    prims = [
        Prim(
            "torso", "polygon",
            (B["left_shoulder"], B["right_shoulder"], B["right_hip"], B["left_hip"]), (), "shirt", 0, 1.0,
        ),
        Prim("trunk", "capsule", (B["pelvis"], B["chest"], B["neck"]), (9 * r, 10 * r, 7 * r), "shirt", 0, 1.01),
        Prim("neck", "capsule", (B["neck"], B["head"]), (3.5 * r, 3.5 * r), "skin", 0, 1.05),
        Prim("head", "capsule", (B["head"],), (hr,), "skin", 0, 1.1),
        Prim("hair", "capsule", (B["hair"],), (0.9 * hr,), "hair", 0, 1.1),
    ]
    for side, sign in (("left", +1), ("right", -1)):
        def pair(a: str, b: str) -> tuple[int, int]:
            return B[f"{side}_{a}"], B[f"{side}_{b}"]

        prims += [
            Prim(f"{side}_thigh", "capsule", pair("hip", "knee"), (7 * r, 5.5 * r), "pants", sign, 0.5),
            Prim(f"{side}_shin", "capsule", pair("knee", "ankle"), (5.5 * r, 4 * r), "pants", sign, 0.55),
            Prim(f"{side}_foot", "capsule", pair("ankle", "toe"), (3.5 * r, 3 * r), "shoe", sign, 0.6),
            Prim(f"{side}_upper_arm", "capsule", pair("shoulder", "elbow"), (5 * r, 4 * r), "shirt", sign, 0.7),
            Prim(f"{side}_forearm", "capsule", pair("elbow", "wrist"), (4 * r, 3.2 * r), "skin", sign, 0.75),
            Prim(f"{side}_hand", "capsule", (B[f"{side}_hand"],), (3.8 * r,), "skin", sign, 0.8),
            Prim(f"{side}_eye", "capsule", (B[f"{side}_eye"],), (0.16 * hr,), "eye", sign, 1.5),
            Prim(f"{side}_ear", "capsule", (B[f"{side}_ear"],), (0.3 * hr,), "skin", sign, 1.4),
        ]
    prims.append(Prim("nose", "capsule", (B["nose"],), (0.22 * hr,), "skin", 0, 1.12))
    return Figure(p, BIPED_NAMES, tuple(prims), normals)


# ------------------------------------------------------------------------------------ views


@dataclass(frozen=True)
class View:
    """Orthographic camera: ``yaw`` about the vertical (0 = profile facing image-right),
    ``elevation`` (camera above, looking down), ``roll`` (in-plane rotation), all degrees;
    ``scale`` pixels per body unit; ``tx, ty`` the image position of the body origin."""

    yaw: float = 0.0
    elevation: float = 0.0
    roll: float = 0.0
    scale: float = 100.0
    tx: float = 0.0
    ty: float = 0.0


def camera_coords(xyz: np.ndarray, view: View) -> np.ndarray:
    """Rotate body-frame vectors into camera axes (right, up, depth away from the viewer).

    Shape:
        xyz: (..., 3); returns (..., 3).
    """
    a = math.radians(view.yaw)
    c, s = math.cos(a), math.sin(a)
    x = xyz[..., 0] * c - xyz[..., 2] * s
    d = xyz[..., 0] * s + xyz[..., 2] * c  # yaw 0: +z (the animal's left) points away
    e = math.radians(view.elevation)
    y = xyz[..., 1] * math.cos(e) + d * math.sin(e)  # far points rise when looking down
    d = d * math.cos(e) - xyz[..., 1] * math.sin(e)
    return np.stack([x, y, d], axis=-1)


def similarity(view: View) -> np.ndarray:
    """2x3 affine from the camera plane (right, up) in body units to image pixels (y down)."""
    a = math.radians(view.roll)
    c, s = math.cos(a), math.sin(a)
    k = view.scale
    return np.array([[k * c, k * s, view.tx], [k * s, -k * c, view.ty]])


def project(xyz: np.ndarray, view: View) -> tuple[np.ndarray, np.ndarray]:
    """Image coordinates and depths of body-frame points.

    Shape:
        xyz: (P, 3); returns xy (P, 2) pixels, depth (P,) body units (larger = farther).
    """
    cam = camera_coords(xyz, view)
    m = similarity(view)
    xy = cam[:, :2] @ m[:, :2].T + m[:, 2]
    return xy, cam[:, 2]


def facing_visible(figure: Figure, view: View, threshold: float = 0.2) -> dict:
    """Point index -> whether its outward normal faces the camera (depth component < threshold)."""
    out = {}
    for idx, normal in figure.normals.items():
        out[idx] = bool(camera_coords(np.asarray(normal, float), view)[2] < threshold)
    return out


def side_depth(view: View) -> float:
    """Depth component of the animal's left direction (+z): > 0 when the left side is far."""
    return float(camera_coords(np.array([0.0, 0.0, 1.0]), view)[2])


# ------------------------------------------------------------------------------------ vertices


def _capsule_samples(points: np.ndarray, radii: np.ndarray, per_segment: int) -> np.ndarray:
    """Points along and beside a capsule chain: interior centre points and both outline sides.

    Shape:
        points: (N, 3); radii (N,); returns (3 * per_segment * (N - 1), 3).
    """
    out = []
    for a, b, ra, rb in zip(points[:-1], points[1:], radii[:-1], radii[1:]):
        d = b - a
        n = np.array([-d[1], d[0], 0.0])
        n /= max(np.linalg.norm(n), 1e-9)
        for t in (np.arange(per_segment) + 1) / (per_segment + 1):
            c = a + t * d
            r = ra + t * (rb - ra)
            out += [c, c + 0.8 * r * n, c - 0.8 * r * n]
    return np.asarray(out).reshape(-1, 3)


def surface_samples(figure: Figure) -> tuple[np.ndarray, list[str]]:
    """Sample points over every primitive (the toy "mesh" vertices beyond the named points).

    Capsule chains give 3 points per sample position (centre and two sides) at 3 positions
    per segment; single-point capsules give 4 points on their circle; polygons give the
    midpoints of their edges. Every sample carries the name of its primitive (for the
    occlusion test).

    Shape:
        returns xyz (S, 3) and S primitive names.
    """
    xyz, owner = [], []
    for prim in figure.prims:
        pts = figure.points[list(prim.points)]
        if prim.kind == "capsule" and len(pts) > 1:
            s = _capsule_samples(pts, np.asarray(prim.radii), 3)
        elif prim.kind == "capsule":
            r = prim.radii[0] * 0.7
            s = pts[0] + np.array([[r, 0, 0], [-r, 0, 0], [0, r, 0], [0, -r, 0]])
        else:
            s = 0.5 * (pts + np.roll(pts, -1, axis=0))
        xyz.append(s)
        owner += [prim.name] * len(s)
    return np.concatenate(xyz), owner


def point_owners(figure: Figure) -> list[tuple[str, ...]]:
    """For each named point, the primitives it belongs to (empty: an internal landmark)."""
    owners: list[list[str]] = [[] for _ in figure.names]
    for prim in figure.prims:
        for i in prim.points:
            owners[i].append(prim.name)
    return [tuple(o) for o in owners]
