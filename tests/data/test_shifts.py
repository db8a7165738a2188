"""Named shifts of the embedded benchmark: each one moves the target away from the source along
its own knobs only; the source (and the other domain) are the same bytes under every shift."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from da_pose.cli import main as cli_main
from da_pose.data.toy import PRESETS, body, domains, generate
from da_pose.data.toy.generate import sample_rng
from da_pose.data.toy.presets import (
    PRESET_KNOBS,
    SHIFT_NAMES,
    SHIFTS,
    SHIFT_TARGET,
    SOURCE,
    STEADY_ZOOM,
    TARGET,
    Style,
    effective_target,
    effective_zoom,
    parse_shifts,
)
from da_pose.errors import ConfigError

TINY = PRESETS["tiny"]
MAT_HEADER_TEXT = 116  # scipy.io.savemat writes its creation time into the header's text field
STYLE_KNOBS = tuple(f.name for f in dataclasses.fields(Style))


def _hashes(root: Path, under: tuple[str, ...] = ()) -> dict[str, str]:
    """sha256 of every file (below the ``under`` folders when given; .mat without the header's time)."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if p.is_file() and (not under or rel.parts[0] in under):
            data = p.read_bytes()
            out[str(rel)] = hashlib.sha256(data[MAT_HEADER_TEXT:] if p.suffix == ".mat" else data).hexdigest()
    return out


@pytest.fixture(scope="module")
def shifted(tmp_path_factory):
    """The tiny benchmark under ``pose`` (twice, once on 2 workers), ``appearance,video`` and ``all``."""
    base = tmp_path_factory.mktemp("shifts")
    out = {}
    for key, shift, workers in (("pose", "pose", 1), ("pose_again", "pose", 2), ("mixed", "appearance,video", 1),
                                ("all", None, 1)):
        out[key] = (base / key, generate(base / key, TINY, seed=0, workers=workers, progress=False, shift=shift))
    return out


# ------------------------------------------------------------------------------------ knobs


def test_shifts_split_the_knobs_between_them():
    knobs = [k for names in SHIFTS.values() for k in names]
    assert len(knobs) == len(set(knobs))  # no knob in two shifts
    assert set(knobs) == set(STYLE_KNOBS) | set(PRESET_KNOBS)  # every style knob in one
    assert SHIFT_NAMES == ("appearance", "context", "pose", "shape", "occlusion", "video", "all")


@pytest.mark.parametrize("shift", list(SHIFTS))
def test_a_shift_moves_only_its_own_knobs(shift):
    p = dataclasses.replace(TINY, shifts=(shift,))
    style = effective_target(p)
    own = set(SHIFTS[shift])
    for knob in STYLE_KNOBS:
        expected = getattr(SHIFT_TARGET, knob) if knob in own else getattr(SOURCE, knob)
        assert getattr(style, knob) == expected, knob
    # it does move the target: every one of its knobs where the two sides differ
    moved = [k for k in own - set(PRESET_KNOBS) if getattr(style, k) != getattr(SOURCE, k)]
    assert moved and set(moved) == {k for k in own - set(PRESET_KNOBS) if getattr(SHIFT_TARGET, k) != getattr(SOURCE, k)}
    assert effective_zoom(p) == (TINY.zoom if shift == "video" else STEADY_ZOOM)


def test_all_is_the_full_target_and_combinations_add_up():
    assert effective_target(TINY) == TARGET and effective_zoom(TINY) == TINY.zoom  # the default
    both = effective_target(dataclasses.replace(TINY, shifts=parse_shifts("shape,pose")))
    for knob in STYLE_KNOBS:
        side = SHIFT_TARGET if knob in SHIFTS["pose"] + SHIFTS["shape"] else SOURCE
        assert getattr(both, knob) == getattr(side, knob), knob
    # a named shift's own strength differs from all's only in the fourth round's knobs
    differ = {k for k in STYLE_KNOBS if getattr(SHIFT_TARGET, k) != getattr(TARGET, k)}
    assert differ == {"companions", "truncation", "shutter", "skew"}
    assert {"companions"} < set(SHIFTS["context"]) and {"shutter", "skew"} < set(SHIFTS["video"])
    assert all(getattr(TARGET, k) in (0.0, (0.0, 0.0)) for k in ("companions", "shutter", "skew"))
    assert parse_shifts("video, pose,video") == ("pose", "video") and parse_shifts("pose,all") == ("all",)


def test_under_pose_alone_the_look_is_the_sources():
    """Textures, backgrounds, camera and JPEG quality are drawn from the source's distributions:
    no noise, no blur, the source's JPEG quality (95) and a simple background."""
    style = effective_target(dataclasses.replace(TINY, shifts=("pose",)))
    assert (style.background, style.fur, style.noise, style.blur, style.jpeg_quality) == (
        "simple", 0.0, (0.0, 0.0), (0.0, 0.0), (95, 95))
    shot = domains.target_shot(sample_rng(0, "target", 1), style, 2, (96, 72))
    assert shot.quality == 95
    appearance = effective_target(dataclasses.replace(TINY, shifts=("appearance",)))
    look = domains.target_shot(sample_rng(0, "target", 1), appearance, 2, (96, 72))
    assert TARGET.jpeg_quality[0] <= look.quality <= TARGET.jpeg_quality[1] < 95


def test_unknown_shift_is_a_config_error_naming_the_valid_ones(tmp_path, capsys):
    with pytest.raises(ConfigError, match="appearance, context, pose, shape, occlusion, video, all"):
        generate(tmp_path / "x", TINY, shift="weather", progress=False)
    assert not (tmp_path / "x").exists()
    with pytest.raises(SystemExit) as exc:
        cli_main(["data", "generate", "--preset", "tiny", "--shift", "pose,weather", "--out", str(tmp_path / "y")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown shift weather" in err and "valid: appearance" in err


# ------------------------------------------------------------------------------------ bytes


def test_source_and_other_bytes_are_the_same_under_every_shift(shifted):
    ref = _hashes(shifted["pose"][0], ("synthetic_animal", "other"))
    assert len(ref) == 12 + 4 + 2  # 6 png + 6 npy, 4 jpg + 2 json
    for key in ("mixed", "all"):
        assert _hashes(shifted[key][0], ("synthetic_animal", "other")) == ref, key
    # while the targets differ
    targets = [_hashes(shifted[k][0], ("behaviorDiscovery2.0",)) for k in ("pose", "mixed", "all")]
    frames = [k for k in targets[0] if k.endswith(".jpg")]
    assert frames and all(targets[0][k] != targets[1][k] != targets[2][k] for k in frames)


def test_same_seed_same_bytes_under_a_shift(shifted):
    assert _hashes(shifted["pose"][0]) == _hashes(shifted["pose_again"][0])


def test_source_is_what_it_was_before_the_shift_knobs():
    """Pinned: source samples 1 and 5 of seed 0 as rendered before the shift knobs existed (the
    new knobs draw nothing at their source value, so the source's random stream is untouched).

    The pixels must match exactly; the vertices to 1e-9 px: their last bits depend on the BLAS
    kernel numpy's OpenBLAS picks for the CPU (an AVX-512 machine, or OPENBLAS_CORETYPE=Prescott,
    gives other raw bits than the machine these were pinned on, and the same rounded ones)."""
    pinned = {1: ("44eb3283dcf56b84c8b542d67b77ec99", "75586f3395b9735b1ab4ffcd06e36638"),
              5: ("179270ee58f14577486c9bab8c062d22", "a326974a3c3b9bf78428b1a1e9404d78")}
    for i, (pixels, kpts) in pinned.items():
        image, vertices, _ = domains.source_sample(sample_rng(0, "source", i), SOURCE)
        assert hashlib.sha256(image.tobytes()).hexdigest()[:32] == pixels
        assert hashlib.sha256(np.round(np.asarray(vertices, np.float64), 9).tobytes()).hexdigest()[:32] == kpts



def test_all_is_what_it_was_before_the_fourth_round():
    """Pinned: target shots 1 and 4 of seed 0 under ``all`` (TARGET), as sessions 9 and 10
    rendered them. The fourth round's knobs are single-shift strengths (SHIFT_TARGET) and draw
    nothing under ``all``, so every result measured on ``all`` before them still stands."""
    pinned = {1: "8e67e8836eabc5d881a051c3315c6fa5", 4: "074f95080c28c060a222435bf1cf238a"}
    for i, pixels in pinned.items():
        shot = domains.target_shot(sample_rng(0, "target", i), TARGET, 3, (480, 360))
        assert hashlib.sha256(b"".join(f.tobytes() for f in shot.frames)).hexdigest()[:32] == pixels

def test_source_from_links_the_same_bytes(shifted, tmp_path):
    out = tmp_path / "video"
    generate(out, TINY, seed=0, workers=1, progress=False, shift="video", source_from=shifted["pose"][0])
    full = tmp_path / "video_full"
    generate(full, TINY, seed=0, workers=1, progress=False, shift="video")
    assert _hashes(out) == _hashes(full)
    with pytest.raises(ConfigError, match="another seed"):
        generate(tmp_path / "seed1", TINY, seed=1, progress=False, source_from=shifted["pose"][0])


# ------------------------------------------------------------------------------------ manifest


def test_manifest_records_the_shift_and_its_knobs(shifted, tmp_path):
    _, m = shifted["pose"]
    gap = m["gap"]
    assert gap["shifts"] == ["pose"] and list(gap["shift_knobs"]) == ["pose"]
    assert gap["shift_knobs"]["pose"]["rear"] == TARGET.rear
    assert gap["shift_knobs"]["pose"]["body_yaw"] == list(TARGET.body_yaw)
    assert gap["target"]["background"] == SOURCE.background and gap["video"]["zoom"] == list(STEADY_ZOOM)
    _, m = shifted["mixed"]
    assert m["gap"]["shifts"] == ["appearance", "video"]
    assert m["gap"]["shift_knobs"]["video"]["zoom"] == list(TINY.zoom)
    _, m = shifted["all"]
    assert m["gap"]["shifts"] == ["all"] and list(m["gap"]["shift_knobs"]) == list(SHIFTS)
    # the command line writes it too, and a run on the folder is tagged with it
    from da_pose.run import shift_tag

    cli_main(["data", "generate", "--preset", "tiny", "--shift", "shape,pose", "--workers", "1",
              "--out", str(tmp_path / "cli")])
    assert json.loads((tmp_path / "cli" / "manifest.json").read_text())["gap"]["shifts"] == ["pose", "shape"]
    assert shift_tag(tmp_path / "cli") == {"shift": "pose,shape"}
    assert shift_tag(tmp_path / "nowhere") == {}


# ------------------------------------------------------------------------------------ new knobs


def test_posture_knobs_rear_lie_and_in_step():
    shape = body.QuadShape()
    stand = body.quadruped(shape, body.QuadPose(stride=0.0))
    q = body.Q
    rear = body.quadruped(shape, body.QuadPose(stride=0.0, pitch=45.0, fold=(1.0, 0.0)))
    assert rear.points[q["withers"], 1] - rear.points[q["hip"], 1] > 0.4  # forehand up
    hind = [q["left_back_hoof"], q["left_back_knee"]]  # hind legs keep their angle to the ground
    np.testing.assert_allclose(np.diff(rear.points[hind, :2], axis=0), np.diff(stand.points[hind, :2], axis=0), atol=1e-9)
    lie = body.quadruped(shape, body.QuadPose(stride=0.0, fold=(1.0, 1.0)))
    assert lie.points[q["withers"], 1] < 0.7 * stand.points[q["withers"], 1]  # body down near the ground
    walk = body.quadruped(shape, body.QuadPose(gait="walk", phase=0.1, stride=20.0, in_step=True))
    for front in ("front", "back"):  # each right leg in its left partner's phase
        left, right = walk.points[q[f"left_{front}_hoof"]], walk.points[q[f"right_{front}_hoof"]]
        assert left[:2] == pytest.approx(right[:2])


def test_video_knobs_drop_repeat_and_shake():
    rng = np.random.default_rng(0)
    assert domains._frame_times(rng, SOURCE, 4) == [0, 1, 2, 3]
    assert domains._frame_times(rng, dataclasses.replace(SOURCE, frame_drop=1.0), 4) == [0, 2, 4, 6]
    assert domains._frame_times(rng, dataclasses.replace(SOURCE, frame_repeat=1.0), 3) == [0, 0, 0]
    style = dataclasses.replace(SOURCE, frame_repeat=1.0)
    shot = domains.target_shot(sample_rng(0, "target", 1), style, 3, (96, 72))
    assert all(np.array_equal(shot.frames[0], f) for f in shot.frames[1:])  # duplicated frames
    steady = domains.target_shot(sample_rng(0, "target", 1), SOURCE, 2, (160, 120))
    shaky = domains.target_shot(sample_rng(0, "target", 1), dataclasses.replace(SOURCE, shake=3.0), 2, (160, 120))
    both = (steady.visibility > 0) & (shaky.visibility > 0)
    assert both.any() and not np.allclose(steady.coords[both], shaky.coords[both])


def _shot(style: Style, index: int = 2, frames: int = 2):
    return domains.target_shot(sample_rng(0, "target", index), style, frames, (240, 180))


def test_companion_behind_changes_the_picture_not_the_labels():
    """Another animal of the herd walks behind (context): drawn first and never labelled, it
    leaves the animal's landmarks and their visibility as they are without it; off, it draws no
    random number."""
    rng = np.random.default_rng(5)
    state = rng.bit_generator.state
    assert domains._companion(rng, SOURCE, (0.0, 0.1), np.zeros(4)) is None
    assert rng.bit_generator.state == state
    alone, herd = _shot(SOURCE), _shot(dataclasses.replace(SOURCE, companions=1.0))
    assert np.array_equal(alone.coords, herd.coords) and np.array_equal(alone.visibility, herd.visibility)
    assert not np.array_equal(alone.frames[0], herd.frames[0])


def test_open_shutter_is_the_mean_over_the_exposure_and_labels_its_middle():
    """A burst frame's shutter open for 3 frames of motion: the mean of 7 renders spread evenly
    over it, and the label buffer of the frame's own instant; closed, one sharp render."""

    def paint_animals(image, time):
        x = int(round(20 + 4 * time))  # a one-pixel "leg" moving 4 px per frame
        image[:, x] += 255.0
        label = np.zeros(image.shape[:2], np.uint8)
        label[:, x] = 1
        return label

    image = np.zeros((4, 64, 3), np.float32)
    label = domains._expose(image, paint_animals, 5.0, 3.0)
    ghosts = [int(round(20 + 4 * (5 + s))) for s in np.linspace(-1.5, 1.5, domains.SHUTTER_SAMPLES)]
    expected = np.zeros(64, np.float32)
    expected[ghosts] = 255.0 / domains.SHUTTER_SAMPLES
    np.testing.assert_allclose(image[0, :, 0], expected, rtol=1e-6)
    assert np.flatnonzero(label[0]).tolist() == [40]
    sharp = np.zeros((4, 64, 3), np.float32)
    domains._expose(sharp, paint_animals, 5.0, 0.0)
    assert np.flatnonzero(sharp[0, :, 0]).tolist() == [40] and sharp[0, 40, 0] == 255.0
    # in a shot: the same labels as with the shutter closed, other pixels
    bursts = dataclasses.replace(SOURCE, blur_burst=1.0)
    closed, open_ = _shot(bursts, frames=3), _shot(dataclasses.replace(bursts, shutter=(3.0, 3.0)), frames=3)
    assert np.array_equal(closed.coords, open_.coords) and np.array_equal(closed.visibility, open_.visibility)
    assert not np.array_equal(closed.frames[1], open_.frames[1])


def test_rolling_shutter_skew_carries_the_labels_with_the_pixels():
    """A burst frame's rolling-shutter skew shears the picture about its middle row, and the
    landmarks go where their pixels went."""
    image = np.zeros((61, 80, 3), np.float32)
    image[50, 30] = 255.0
    warped = domains._frame_effects(image, np.zeros(2), None, skew=0.5)
    y, x = np.unravel_index(np.argmax(warped[..., 0]), warped.shape[:2])
    moved = domains._camera_warp(np.array([[30.0, 50.0]]), np.zeros(2), 0.5, 61)[0]
    assert moved.tolist() == [40.0, 50.0] and (x, y) == (40, 50)  # 20 rows below the middle: 10 px along
    assert domains._camera_warp(np.array([[10.0, 30.0]]), np.array([2.0, -1.0]), 0.5, 61)[0].tolist() == [12.0, 29.0]
    bursts = dataclasses.replace(SOURCE, blur_burst=1.0)
    upright, skewed = _shot(bursts, frames=3), _shot(dataclasses.replace(bursts, skew=(0.4, 0.4)), frames=3)
    both = (upright.visibility > 0) & (skewed.visibility > 0)
    lean = 0.4 if skewed.facing_right else -0.4  # along the pan, which follows the animal
    assert both.any() and np.array_equal(skewed.coords[..., 1][both], upright.coords[..., 1][both])
    np.testing.assert_allclose(skewed.coords[..., 0][both] - upright.coords[..., 0][both],
                               lean * (upright.coords[..., 1][both] - 179 / 2), atol=1e-6)
