"""The embedded benchmark generator: determinism, formats, round trip through the loaders,
left/right and visibility conventions."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from da_pose.data import manifest, synthetic, tigdog
from da_pose.data.skeleton import JOINTS, NUM_JOINTS
from da_pose.data.toy import PRESETS, body, domains, generate, get_preset, render
from da_pose.data.toy.generate import _write_target_index, sample_rng, visible_positions
from da_pose.data.toy.presets import SOURCE, TARGET, Preset, check_preset, gap_knobs, mix_styles
from da_pose.errors import ConfigError

TINY = dataclasses.replace(
    PRESETS["demo"], name="tiny-test", source_train=4, source_val=2, target_videos=2, target_frames=4,
    other_train=3, other_val=1,
)


MAT_HEADER_TEXT = 116  # scipy.io.savemat writes "Created on: <time>" into this text field


def _hashes(root: Path) -> dict[str, str]:
    """sha256 of every file; for .mat files, of everything after the header's text field
    (the writer's creation time is the only part of a MAT file that a seed cannot fix)."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            data = p.read_bytes()
            data = data[MAT_HEADER_TEXT:] if p.suffix == ".mat" else data
            out[str(p.relative_to(root))] = hashlib.sha256(data).hexdigest()
    return out


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """The tiny benchmark generated three times: seed 0 inline, seed 0 on 2 workers, seed 1."""
    base = tmp_path_factory.mktemp("toy")
    out = {}
    for key, seed, workers in (("inline", 0, 1), ("pool", 0, 2), ("seed1", 1, 1)):
        root = base / key
        out[key] = (root, generate(root, TINY, seed=seed, workers=workers, progress=False))
    return out


# ------------------------------------------------------------------------------------ determinism


def test_same_seed_same_bytes_regardless_of_workers(bench):
    a, b = _hashes(bench["inline"][0]), _hashes(bench["pool"][0])
    assert a == b
    # 6 png + 6 npy, 8 jpg + 2 landmark mats + ranges + 2 splits, 4 jpg + 2 json, manifest
    assert len(a) == 12 + 8 + 2 + 1 + 2 + 4 + 2 + 1


def test_different_seed_gives_different_images(bench):
    a, c = _hashes(bench["inline"][0]), _hashes(bench["seed1"][0])
    images = [k for k in a if k.endswith((".png", ".jpg"))]
    assert images and all(a[k] != c[k] for k in images)


def test_sample_functions_are_pure_in_their_generator():
    one = domains.source_sample(sample_rng(3, "source", 5), SOURCE)
    two = domains.source_sample(sample_rng(3, "source", 5), SOURCE)
    assert np.array_equal(one[0], two[0]) and np.array_equal(one[1], two[1])


# ------------------------------------------------------------------------------------ manifest


def test_manifest_matches_schema(bench):
    root, m = bench["inline"]
    assert m == json.loads((root / "manifest.json").read_text())
    assert manifest.read_manifest(root) == m  # the loader's validation accepts it
    assert set(m) == {"format_version", "generator", "preset", "seed", "num_joints", "gap", "domains"}
    assert (m["format_version"], m["generator"], m["preset"], m["seed"], m["num_joints"]) == (
        1, "da_pose.data.toy", "tiny-test", 0, 18,
    )
    src, tgt, oth = (m["domains"][k] for k in ("source", "target", "other"))
    assert set(src) == {"format", "root", "species", "vertex_ids", "count", "split", "crop_factor"}
    assert (src["format"], src["root"], src["species"]) == ("synthetic", "synthetic_animal", "toyhorse")
    assert src["crop_factor"] == 1.25
    assert src["count"] == 6 and src["split"] == {"train": 4, "val": 2}
    assert len(set(src["vertex_ids"])) == 18 and max(src["vertex_ids"]) < domains.NUM_VERTICES
    assert set(tgt) == {"format", "root", "species", "count", "videos", "split", "split_files", "crop_factor",
                        "val_shots"}
    assert (tgt["format"], tgt["root"], tgt["videos"], tgt["crop_factor"]) == ("tigdog", "behaviorDiscovery2.0", 2, 1.5)
    assert tgt["split"]["train"] + tgt["split"]["val"] + tgt["split"]["test"] == tgt["count"] <= 8
    assert tgt["split_files"] == {
        "train": "behaviorDiscovery2.0/splits/toyhorse/train_idxs_by_video.npy",
        "test": "behaviorDiscovery2.0/splits/toyhorse/valid_idxs_by_video.npy",
    }
    assert set(oth) == {"format", "root", "species", "annotations", "images", "joint_map", "count", "split", "crop_factor"}
    assert oth["annotations"] == {"train": "other/annotations/train.json", "val": "other/annotations/val.json"}
    assert oth["count"] == 4 and oth["split"] == {"train": 3, "val": 1}
    for rel in [*tgt["split_files"].values(), *oth["annotations"].values(), oth["images"], src["root"], tgt["root"]]:
        assert (root / rel).exists(), rel
    assert m["gap"]["target"] == json.loads(json.dumps(gap_knobs(TINY)))["target"]


def test_unknown_preset_names_the_valid_ones():
    with pytest.raises(ConfigError, match="demo, benchmark"):
        get_preset("huge")


@pytest.mark.parametrize(
    "change", [{"source_train": -1}, {"target_frames": 0}, {"target_test_fraction": 1.0}, {"gap": -0.5},
               {"target": dataclasses.replace(TARGET, background="moon")},
               {"shift_target": dataclasses.replace(TARGET, gaits=("gallop",))}],
)
def test_bad_preset_is_config_error(change):
    with pytest.raises(ConfigError):
        check_preset(dataclasses.replace(TINY, **change))


def test_gap_zero_draws_target_like_source():
    mixed = mix_styles(SOURCE, TARGET, 0.0)
    assert mixed == SOURCE
    half = mix_styles(SOURCE, TARGET, 0.5)
    assert half.fur == pytest.approx(0.5 * (SOURCE.fur + TARGET.fur))
    assert half.background == TARGET.background


def test_refuses_foreign_folder_and_regenerates_own(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty"):
        generate(tmp_path, TINY, workers=1, progress=False)
    small = dataclasses.replace(
        TINY, source_train=2, source_val=1, target_videos=1, target_frames=2, other_train=1, other_val=0
    )
    out = tmp_path / "bench"
    generate(out, TINY, workers=1, progress=False)
    generate(out, small, workers=1, progress=False)  # no files of the larger run may remain
    folder = synthetic.species_folder(out / "synthetic_animal", "toyhorse")
    assert sorted(p.name for p in folder.glob("*_img.png")) == ["00000_img.png", "00001_img.png", "00002_img.png"]
    assert len(list((out / "behaviorDiscovery2.0" / "toyhorse").glob("*.jpg"))) == 2


# ------------------------------------------------------------------------------------ formats


def test_images_have_the_published_sizes(bench):
    root, m = bench["inline"]
    png = synthetic.species_folder(root / "synthetic_animal", "toyhorse") / "00000_img.png"
    assert synthetic.png_size(png) == (640, 480)
    assert cv2.imread(str(png), cv2.IMREAD_UNCHANGED).shape == (480, 640, 3)
    jpg = tigdog.frame_path(root / "behaviorDiscovery2.0", "toyhorse", 1)
    assert cv2.imread(str(jpg)).shape == (360, 480, 3)
    assert cv2.imread(str(root / "other" / "images" / "000001.jpg")).shape == (288, 384, 3)
    ranges = tigdog.read_ranges(tigdog.ranges_path(root / "behaviorDiscovery2.0", "toyhorse"))
    assert ranges.tolist() == [[1, 1, 4], [2, 5, 8]]


def test_source_round_trip(bench):
    root, m = bench["inline"]
    ids = np.asarray(m["domains"]["source"]["vertex_ids"])
    records = manifest.load_domain(root, "source", "train") + manifest.load_domain(root, "source", "val")
    assert [r.frame for r in records] == list(range(6))
    for i, rec in enumerate(records):
        _, kpts, _ = domains.source_sample(sample_rng(0, "source", i), TINY.source)
        on_disk = synthetic.read_kpts(Path(rec.image_path).with_name(f"{i:05d}_kpts.npy"))
        assert on_disk.shape == (domains.NUM_VERTICES, 3)
        assert np.array_equal(on_disk, kpts)
        joints = kpts[ids]
        inside = render.inside(joints[:, :2], 640, 480)
        # published rule: every joint inside the image counts as visible
        np.testing.assert_allclose(rec.keypoints[inside, :2], joints[inside, :2], atol=1e-4)
        assert (rec.keypoints[:, 2] == inside).all()


def test_target_round_trip_and_split_positions(bench):
    root, m = bench["inline"]
    entry = m["domains"]["target"]
    shots = {}
    for shot in (1, 2):
        s = domains.target_shot(
            sample_rng(0, "target", shot), TINY.target, TINY.target_frames, TINY.target_size,
            TINY.phase_speed, TINY.drift, TINY.pan, TINY.zoom,
        )
        coords, vis = tigdog.read_landmarks(tigdog.landmarks_path(root / "behaviorDiscovery2.0", "toyhorse", shot))
        np.testing.assert_allclose(coords, s.coords, atol=1e-4)
        assert np.array_equal(vis, s.visibility)
        shots[shot] = (s.coords, s.visibility)
    everything = manifest.load_domain(root, "target", "all")
    kept = visible_positions(shots)
    assert len(everything) == entry["count"] == len(kept)
    for rec, (shot, f, position) in zip(everything, kept):
        assert (rec.video, rec.frame) == (shot, 1 + (shot - 1) * TINY.target_frames + f)
        assert rec.extra["position"] == position
        np.testing.assert_allclose(rec.keypoints[:, :2], shots[shot][0][f, :NUM_JOINTS], atol=1e-4)
        assert np.array_equal(rec.keypoints[:, 2], shots[shot][1][f, :NUM_JOINTS])
    train = manifest.load_domain(root, "target", "train")
    test = manifest.load_domain(root, "target", "test")
    assert (len(train), len(test)) == (entry["split"]["train"], entry["split"]["test"])
    assert not {r.video for r in train} & {r.video for r in test}  # split by video
    assert len({r.video for r in test}) == 1  # one of two shots (about a fifth, at least one)


def test_split_positions_list_kept_frames_in_the_unfiltered_numbering(tmp_path):
    """Frames with fewer than 10 visible joints are dropped by the loader; the split files
    list only kept frames, by their place in the unfiltered list (the published numbering),
    and the loader must find exactly the generated split."""
    preset = dataclasses.replace(TINY, target_videos=3, target_frames=3, target_test_fraction=0.34)
    root = tmp_path / "behaviorDiscovery2.0"
    rng = np.random.default_rng(0)
    shots = {}
    for shot in (1, 2, 3):
        coords = rng.uniform(5, 300, size=(3, 19, 2))
        vis = np.ones((3, 19))
        vis[shot % 3, :9] = 0  # one frame per shot keeps only 9 of the 18 joints
        coords[vis == 0] = 0
        tigdog.write_landmarks(tigdog.landmarks_path(root, "toyhorse", shot), coords, vis)
        for f in range(3):
            tigdog.write_frame(root, "toyhorse", 1 + (shot - 1) * 3 + f, np.zeros((8, 8, 3), np.uint8))
        shots[shot] = (coords, vis)
    entry = _write_target_index(tmp_path, preset, 0, shots)
    files = {k: tmp_path / v for k, v in entry["split_files"].items()}
    train = tigdog.load_tigdog(root, "toyhorse", "train", split_files=files)
    test = tigdog.load_tigdog(root, "toyhorse", "test", split_files=files)
    assert entry["count"] == 6 and (len(train), len(test)) == (entry["split"]["train"], entry["split"]["test"])
    assert len(test) == 2 and len({r.video for r in test}) == 1  # one whole shot of three
    assert not {r.video for r in train} & {r.video for r in test}
    for rec in train + test:  # every loaded frame is a kept frame of its shot, labels intact
        f = rec.frame - 1 - (rec.video - 1) * 3
        assert f != rec.video % 3 and rec.extra["position"] == rec.frame - 1
        np.testing.assert_allclose(rec.keypoints[:, :2], shots[rec.video][0][f, :18], atol=1e-4)
    positions = np.concatenate([np.load(f) for f in files.values()])
    assert sorted(positions.tolist()) == [0, 2, 3, 4, 7, 8]  # positions 1, 5, 6 dropped: not listed


def test_other_round_trip(bench):
    root, m = bench["inline"]
    entry = m["domains"]["other"]
    records = manifest.load_domain(root, "other", "train") + manifest.load_domain(root, "other", "val")
    assert len(records) == 4
    pairs = np.asarray(entry["joint_map"])
    for i, rec in enumerate(records):
        _, kp, bbox, _ = domains.other_sample(sample_rng(0, "other", i), TINY.other, TINY.other_size)
        assert rec.frame == i + 1 and rec.species == "toybiped"
        expected = np.zeros((NUM_JOINTS, 3), np.float32)
        labelled = kp[pairs[:, 0], 2] > 0
        expected[pairs[labelled, 1], :2] = kp[pairs[labelled, 0], :2]
        expected[pairs[labelled, 1], 2] = 1
        np.testing.assert_allclose(rec.keypoints, expected, atol=1e-4)
        np.testing.assert_allclose(rec.extra["object_bbox"], bbox, atol=1e-4)
    doc = json.loads((root / "other/annotations/train.json").read_text())
    assert doc["categories"][0]["keypoints"] == list(body.COCO_KEYPOINTS)


def test_joint_map_is_anatomical():
    names = dict((body.COCO_KEYPOINTS[a], JOINTS[b]) for a, b in domains.OTHER_JOINT_MAP)
    assert names["left_eye"] == "left_eye" and names["right_shoulder"] == "right_shoulder"
    assert names["left_wrist"] == "left_front_knee" and names["right_ankle"] == "right_back_knee"
    assert all(k.split("_")[0] == v.split("_")[0] for k, v in names.items())  # sides preserved


# ------------------------------------------------------------------------------------ conventions


def test_visibility_flags_are_sane(bench):
    root, _ = bench["inline"]
    for shot in (1, 2):
        coords, vis = tigdog.read_landmarks(tigdog.landmarks_path(root / "behaviorDiscovery2.0", "toyhorse", shot))
        assert set(np.unique(vis)) <= {0.0, 1.0}
        assert (coords[vis == 0] == 0).all()  # unlabelled points at 0 (TigDog convention)
        xy = coords[vis == 1]
        assert (xy > 0).all() and (xy[:, 0] < 480).all() and (xy[:, 1] < 360).all()
        assert (vis[:, :NUM_JOINTS].sum(axis=1) >= 10).mean() > 0.5
    for path in synthetic.species_folder(root / "synthetic_animal", "toyhorse").glob("*_kpts.npy"):
        kpts = synthetic.read_kpts(path)
        assert set(np.unique(kpts[:, 2])) <= {0.0, 1.0}
        assert not kpts[~render.inside(kpts[:, :2], 640, 480), 2].any()
        assert 0.3 < kpts[:, 2].mean() < 1.0  # some vertices are hidden behind the body
    doc = json.loads((root / "other/annotations/train.json").read_text())
    for ann in doc["annotations"]:
        kp = np.asarray(ann["keypoints"]).reshape(-1, 3)
        assert (kp[kp[:, 2] == 0, :2] == 0).all() and (kp[:, 2] == 2).sum() >= 5


def _profile_view(yaw: float) -> body.View:
    return body.View(yaw=yaw, scale=200.0, tx=320.0, ty=420.0)


@pytest.mark.parametrize("yaw, near", [(0.0, "right"), (180.0, "left")])
def test_near_side_legs_drawn_in_front_and_lighter(yaw, near):
    # trot at phase 0.25: left front and right back swing forward, the others back, so the
    # four lower legs are apart in profile
    figure = body.quadruped(body.QuadShape(), body.QuadPose(gait="trot", phase=0.25, stride=25.0))
    view = _profile_view(yaw)
    grey = render.Material((200.0, 200.0, 200.0))
    materials = {k: grey for k in ("body", "head", "lower", "mane", "hoof", "eye")}
    image = np.zeros((480, 640, 3), np.float32)
    label, ranks = render.draw_figure(image, figure, view, materials, far_shade=0.5, near_shade=1.0)
    far = "left" if near == "right" else "right"
    for leg in ("f", "b"):
        assert ranks[f"{near[0]}{leg}_upper"] > ranks["torso"] > ranks[f"{far[0]}{leg}_upper"]
    # the middle of each lower leg: near legs full grey, far legs half
    xy, _ = body.project(figure.points, view)
    for side, value in ((near, 200), (far, 100)):
        for knee, hoof in (("front_knee", "front_hoof"), ("back_knee", "back_hoof")):
            mid = (xy[body.Q[f"{side}_{knee}"]] + xy[body.Q[f"{side}_{hoof}"]]) / 2
            assert image[int(round(mid[1])), int(round(mid[0]))] == pytest.approx([value] * 3, abs=1)
    # left is the animal's left: facing right (yaw 0) puts the left legs behind, into the screen
    assert (body.side_depth(view) > 0) == (near == "right")


def test_cast_shadow_runs_down_from_the_hooves_like_a_second_leg():
    """A low sun behind the animal: each leg's shadow starts at its hoof and runs down (toward
    the camera) by lean * height; nothing above the ground line darkens; opacity 0 is a no-op."""
    figure = body.quadruped(body.QuadShape(), body.QuadPose(gait="trot", phase=0.25, stride=25.0))
    view = _profile_view(0.0)
    view = dataclasses.replace(view, ty=250.0)  # room below the hooves for the shadow
    xy, _ = body.project(figure.points, view)
    feet = [i for i, n in enumerate(figure.names) if n.endswith(("hoof", "toe"))]
    ground = xy[feet, 1].max()
    plain = np.full((480, 640, 3), 200.0, np.float32)
    image = plain.copy()
    render.cast_shadow(image, figure, view, lean=(0.0, 1.0), opacity=0.6)
    darker = image[..., 0] < 199.0
    reach = 0.05 * view.scale + 5  # a limb's shadow is as thick as the limb (radius <= 0.05), blurred
    assert darker.any() and not darker[: int(ground - reach)].any()  # on the ground, not on the animal
    # straight down (lean 0, 1): a knee's shadow is its mirror image in the ground line
    knee = xy[body.Q["right_front_knee"]]
    mirror = (int(round(knee[0])), int(round(2 * ground - knee[1])))
    assert image[mirror[1], mirror[0], 0] == pytest.approx(200.0 * 0.4, abs=2)
    assert image[int(round(knee[1])), int(round(knee[0])), 0] == 200.0  # the knee itself is untouched
    same = plain.copy()
    render.cast_shadow(same, figure, view, lean=(0.5, 0.8), opacity=0.0)
    assert np.array_equal(same, plain)


def test_low_sun_draws_nothing_when_off():
    rng = np.random.default_rng(3)
    state = rng.bit_generator.state
    assert domains._low_sun(rng, SOURCE) is None and rng.bit_generator.state == state
    lean, opacity = domains._low_sun(np.random.default_rng(3), dataclasses.replace(TARGET, cast_shadow=1.0))
    assert 0.2 <= abs(lean[0]) <= 1.0 and 0.4 <= lean[1] <= 1.0 and 0.5 <= opacity <= 0.8


def test_far_eye_hidden_in_profile_both_eyes_in_three_quarter_view():
    figure = body.quadruped(body.QuadShape(), body.QuadPose())
    left, right = body.Q["left_eye"], body.Q["right_eye"]
    facing = body.facing_visible(figure, _profile_view(0.0))
    assert facing[right] and not facing[left]
    facing = body.facing_visible(figure, _profile_view(180.0))
    assert facing[left] and not facing[right]
    # facing right, head turned toward the viewer (the animal's right, negative yaw)
    turned = body.quadruped(body.QuadShape(), body.QuadPose(head_yaw=-60.0))
    facing = body.facing_visible(turned, _profile_view(-20.0))
    assert facing[left] and facing[right]
    # the hidden eye is not drawn
    names = [p.name for p in render.draw_order(figure, _profile_view(0.0))]
    assert "right_eye" in names and "left_eye" not in names


def test_target_shot_moves_smoothly():
    s = domains.target_shot(sample_rng(7, "target", 1), TARGET, 5, (480, 360))
    both = (s.visibility[1:, :NUM_JOINTS] > 0) & (s.visibility[:-1, :NUM_JOINTS] > 0)
    step = np.linalg.norm(s.coords[1:, :NUM_JOINTS] - s.coords[:-1, :NUM_JOINTS], axis=-1)[both]
    assert len(step) and np.median(step) < 15  # CC-SSL's optical flow gives up beyond 15 px
    frame_diff = np.abs(s.frames[1].astype(int) - s.frames[0].astype(int)).mean()
    assert 0 < frame_diff < 40


def test_preset_is_a_frozen_dataclass():
    assert isinstance(PRESETS["benchmark"], Preset)
    with pytest.raises(dataclasses.FrozenInstanceError):
        PRESETS["demo"].source_train = 3  # type: ignore[misc]
