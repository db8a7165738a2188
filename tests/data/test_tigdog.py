"""TigDog loader: round trip, tiger remap, visibility filter, crop box, splits, bad input."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from da_pose.data import splits, tigdog
from da_pose.data.skeleton import TIGDOG_LANDMARK_ORDER
from da_pose.errors import ConfigError, DataError

SPLITS_DIR = Path(__file__).resolve().parents[3] / "shared" / "reference" / "tigdog_splits"
REPO = Path(__file__).resolve().parents[2]


def expected_keypoints(coords, vis, animal):
    """Independent statement of the rule: file landmark order[j]-1 is model joint j."""
    order = np.array(TIGDOG_LANDMARK_ORDER.get(animal, TIGDOG_LANDMARK_ORDER["horse"])) - 1
    xy = coords[order]
    v = (vis[order] > 0) & (xy[:, 0] > 0) & (xy[:, 1] > 0)
    return np.concatenate([xy, v[:, None]], axis=1)


def test_landmark_file_reads_positionally_as_published(tmp_path):
    coords = np.arange(2 * 19 * 2, dtype=float).reshape(2, 19, 2)
    vis = np.ones((2, 19))
    tigdog.write_landmarks(tmp_path / "1.mat", coords, vis)
    cell = scipy.io.loadmat(tmp_path / "1.mat")["landmarks"]
    assert cell.shape == (2, 1)
    np.testing.assert_array_equal(cell[1][0][0][0][0], coords[1])
    assert cell[1][0][0][0][1].shape == (19, 1)


@pytest.mark.parametrize("animal", ["horse", "tiger"])
def test_round_trip(tmp_path, make_tigdog, animal):
    truth = make_tigdog(tmp_path, animal=animal)
    records = tigdog.load_tigdog(tmp_path, animal, split="all")
    assert len(records) == 9
    i = 0
    for shot, start, end in truth["ranges"]:
        for f in range(end - start + 1):
            rec = records[i]
            assert (rec.video, rec.frame, rec.species) == (shot, start + f, animal)
            assert Path(rec.image_path) == (tmp_path / animal / f"{start + f:08d}.jpg").resolve()
            assert rec.keypoints.dtype == np.float32 and rec.keypoints.shape == (18, 3)
            want = expected_keypoints(truth["coords"][shot][f], truth["vis"][shot][f], animal)
            np.testing.assert_array_equal(rec.keypoints, want)
            assert rec.extra["position"] == i
            i += 1


def test_tiger_remap_moves_leg_groups(tmp_path):
    coords = np.zeros((1, 19, 2))
    coords[0, :, 0] = np.arange(1, 20)  # x = 1-based landmark index
    coords[0, :, 1] = 5
    tigdog.write_landmarks(tmp_path / "landmarks/tiger/7.mat", coords, np.ones((1, 19)))
    tigdog.write_ranges(tigdog.ranges_path(tmp_path, "tiger"), [[7, 1, 1]])
    tigdog.write_frame(tmp_path, "tiger", 1, np.zeros((48, 64, 3), np.uint8))
    (record,) = tigdog.load_tigdog(tmp_path, "tiger", split="all", strict=True)
    x = record.keypoints[:, 0]
    assert x.tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 15, 16, 17, 18, 13, 14, 9, 10, 11, 12]
    horse = tigdog.frame_keypoints(coords[0].astype(np.float32), np.ones(19, np.float32), "horse")
    assert horse[:, 0].tolist() == list(range(1, 19))


def test_visibility_needs_flag_and_positive_coordinates():
    coords = np.full((19, 2), 10.0, dtype=np.float32)
    vis = np.ones(19, dtype=np.float32)
    coords[3] = (0, 12)  # x = 0: unlabelled even though flagged visible
    coords[4] = (12, 0)
    vis[5] = 0  # flagged invisible although it has coordinates
    kp = tigdog.frame_keypoints(coords, vis, "horse")
    assert kp[:, 2].tolist() == [1, 1, 1, 0, 0, 0] + [1] * 12


def test_min_visible_filter(tmp_path, make_tigdog):
    # Frame f of every shot has 8 + f visible joints: 8, 9 dropped; 10, 11 kept (published > 9).
    make_tigdog(tmp_path, shots=((1, 4), (2, 4)), n_visible=lambda s, f: 8 + f)
    records = tigdog.load_tigdog(tmp_path, "horse", split="all")
    assert [int(r.keypoints[:, 2].sum()) for r in records] == [10, 11, 10, 11]
    assert [r.frame for r in records] == [3, 4, 7, 8]
    # Positions count every frame before the filter (the published split-file numbering).
    assert [r.extra["position"] for r in records] == [2, 3, 6, 7]
    assert tigdog.count_positions(tmp_path, "horse") == 8
    loose = tigdog.load_tigdog(tmp_path, "horse", split="all", min_visible=9)
    assert len(loose) == 6


def test_crop_box_uses_all_positive_coordinates():
    kp = np.zeros((18, 3), dtype=np.float32)
    kp[:12] = [[10 + i, 20 + 2 * i, 1] for i in range(12)]
    kp[12] = [40, 5, 0]  # invisible but labelled with coordinates: still in the box (published)
    kp[13] = [0, 30, 0]  # x = 0 (unlabelled) ignored for x, y still counts
    center, side, box = tigdog.crop_box(kp, 1.5)
    x0, x1, y0, y1 = 10, 40, 5, 42
    np.testing.assert_allclose(box, [x0, y0, x1 - x0, y1 - y0])
    np.testing.assert_allclose(center, [(x0 + x1) / 2, (y0 + y1) / 2])
    assert side == pytest.approx(1.5 * max(x1 - x0, y1 - y0))


def test_loaded_crop_follows_the_rule(tmp_path, make_tigdog):
    make_tigdog(tmp_path, shots=((3, 2),))
    for rec in tigdog.load_tigdog(tmp_path, "horse", split="all", crop_factor=1.5):
        pts = rec.keypoints
        xs, ys = pts[pts[:, 0] > 0, 0], pts[pts[:, 1] > 0, 1]
        w, h = xs.max() - xs.min(), ys.max() - ys.min()
        assert rec.side == pytest.approx(1.5 * max(w, h))
        np.testing.assert_allclose(rec.center, [(xs.max() + xs.min()) / 2, (ys.max() + ys.min()) / 2])


def test_split_by_video_keeps_shots_whole_and_is_seeded():
    videos = np.repeat(np.arange(20), np.arange(1, 21))  # 20 shots of 1..20 frames
    for seed in range(5):
        train, test = splits.split_by_video(videos, 0.2, seed)
        assert len(np.intersect1d(train, test)) == 0
        np.testing.assert_array_equal(np.sort(np.concatenate([train, test])), np.arange(len(videos)))
        assert not set(videos[train]) & set(videos[test])
        assert len(set(videos[test])) == 4
        again = splits.split_by_video(videos, 0.2, seed)
        np.testing.assert_array_equal(again[1], test)
    picks = {tuple(np.unique(videos[splits.split_by_video(videos, 0.2, s)[1]])) for s in range(5)}
    assert len(picks) > 1  # the seed matters


def test_split_by_video_on_records(tmp_path, make_tigdog):
    make_tigdog(tmp_path, shots=tuple((s, 2 + s % 3) for s in range(1, 11)))
    train = tigdog.load_tigdog(tmp_path, "horse", split="train", seed=3)
    val = tigdog.load_tigdog(tmp_path, "horse", split="val", seed=3)
    test = tigdog.load_tigdog(tmp_path, "horse", split="test", seed=3)
    assert len(train) + len(val) + len(test) == len(tigdog.load_tigdog(tmp_path, "horse", split="all"))
    shots = [{r.video for r in part} for part in (train, val, test)]
    assert not (shots[0] & shots[1]) and not (shots[0] & shots[2]) and not (shots[1] & shots[2])
    assert len(shots[2]) == 2 and len(shots[1]) == 1  # 10 % of the 8 train shots, rounded, at least one


def test_split_files_round_trip(tmp_path, make_tigdog):
    # Every third frame fails the filter, so positions and list indices differ.
    make_tigdog(tmp_path, shots=tuple((s, 3) for s in range(1, 8)), n_visible=lambda s, f: 9 if f == 1 else 12)
    everything = tigdog.load_tigdog(tmp_path, "horse", split="all")
    assert len(everything) == 14 and tigdog.count_positions(tmp_path, "horse") == 21
    train_pos, test_pos = splits.split_by_video(everything, 0.3, seed=1)
    assert np.isin(test_pos, [r.extra["position"] for r in everything]).all()
    tr, va = tigdog.write_split_files(tmp_path / "splits", train_pos, test_pos)
    assert tr.name == "train_idxs_by_video.npy" and va.name == "valid_idxs_by_video.npy"
    by_position = {r.extra["position"]: r for r in everything}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        by_file = tigdog.load_tigdog(tmp_path, "horse", split="test", split_files={"train": tr, "test": va})
        complement = tigdog.load_tigdog(tmp_path, "horse", split="test", split_file=tr)
        train = tigdog.load_tigdog(tmp_path, "horse", split="train", split_file=tr, val_fraction=0)
    assert [r.frame for r in by_file] == [by_position[p].frame for p in test_pos]
    assert [r.frame for r in complement] == [r.frame for r in by_file]
    assert [r.extra["position"] for r in train] == train_pos.tolist()
    seeded = tigdog.load_tigdog(tmp_path, "horse", split="test", seed=1, test_fraction=0.3)
    assert [r.frame for r in seeded] == [r.frame for r in by_file]
    with pytest.raises(ConfigError):
        tigdog.load_tigdog(tmp_path, "horse", split_file=tr, split_files={"test": va})


def test_overlapping_split_files_refused(tmp_path):
    tr, va = tigdog.write_split_files(tmp_path, [0, 1, 2], [2, 3])
    with pytest.raises(DataError, match="overlap"):
        splits.split_positions(4, "train", split_files={"train": tr, "test": va})


def test_split_file_out_of_range_is_a_clear_error(tmp_path):
    tr, _ = tigdog.write_split_files(tmp_path, [0, 5, 9], [1])
    assert splits.read_split_file(tr, 10).tolist() == [0, 5, 9]
    with pytest.raises(DataError, match=r"train_idxs_by_video.npy: position 9 out of range for 9"):
        splits.read_split_file(tr, 9)
    np.save(tmp_path / "bad.npy", np.zeros((2, 2)))
    with pytest.raises(DataError, match="bad.npy"):
        splits.read_split_file(tmp_path / "bad.npy", 10)


@pytest.mark.skipif(not SPLITS_DIR.is_dir(), reason="../shared/reference/tigdog_splits not present")
@pytest.mark.parametrize("animal, counts, largest", [("horse", (8380, 1772), 13409), ("tiger", (6523, 1765), 16516)])
def test_published_split_files(animal, counts, largest):
    # The published files index the frame list BEFORE the visibility filter (positions up to
    # 13,409 for 10,152 horse frames), so the numbering is at least largest + 1 long.
    files = {
        "train": SPLITS_DIR / animal / "train_idxs_by_video.npy",
        "test": SPLITS_DIR / animal / "valid_idxs_by_video.npy",
    }
    n = largest + 1
    train = splits.split_positions(n, "train", split_files=files)
    test = splits.split_positions(n, "test", split_files=files)
    assert (len(train), len(test)) == counts
    assert max(train.max(), test.max()) == largest
    assert not np.intersect1d(train, test).size
    # Given only the train file, test is the complement: published test + filtered-out frames.
    complement = splits.split_positions(n, "test", split_file=files["train"])
    assert np.isin(test, complement).all() and len(complement) == n - counts[0]
    with pytest.raises(DataError, match=f"position {largest} out of range for {largest} frames"):
        splits.split_positions(largest, "train", split_files=files)


# ----------------------------------------------------------------------------------- bad input


def test_missing_root(tmp_path):
    with pytest.raises(DataError, match="TigDog root not found"):
        tigdog.load_tigdog(tmp_path / "nope", "horse")


def test_missing_ranges(tmp_path):
    (tmp_path / "landmarks").mkdir()
    with pytest.raises(DataError, match=r"ranges\.mat: file not found"):
        tigdog.load_tigdog(tmp_path, "horse")


@pytest.mark.parametrize("content", [b"", b"MATLAB 5.0 MAT-file garbage", None])
def test_truncated_or_malformed_ranges(tmp_path, content):
    path = tigdog.ranges_path(tmp_path, "horse")
    tigdog.write_ranges(path, [[1, 1, 3], [2, 4, 9]])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if content is None else content)
    with pytest.raises(DataError, match=r"ranges\.mat: ") as err:
        tigdog.load_tigdog(tmp_path, "horse")
    assert "\n" not in str(err.value)


def test_ranges_of_wrong_shape(tmp_path):
    path = tigdog.ranges_path(tmp_path, "horse")
    path.parent.mkdir(parents=True)
    scipy.io.savemat(path, {"ranges": np.ones((2, 4))})
    with pytest.raises(DataError, match=r"expected variable 'ranges', an \(N, 3\)"):
        tigdog.load_tigdog(tmp_path, "horse")


def _corrupt_shot(root, shot, kind):
    path = tigdog.landmarks_path(root, "horse", shot)
    if kind == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "cell":  # coordinates of the wrong shape: (18, 2)
        dtype = [("coords", object), ("visibility", object)]
        cell = np.empty((3, 1), dtype=object)
        for f in range(3):
            s = np.empty((1, 1), dtype=dtype)
            s[0, 0]["coords"], s[0, 0]["visibility"] = np.ones((18, 2)), np.ones((18, 1))
            cell[f, 0] = s
        scipy.io.savemat(path, {"landmarks": cell})
    elif kind == "numeric":  # a plain matrix instead of a cell array
        scipy.io.savemat(path, {"landmarks": np.ones((3, 19))})
    elif kind == "frames":  # 2 frames where ranges say 3
        tigdog.write_landmarks(path, np.ones((2, 19, 2)), np.ones((2, 19)))


@pytest.mark.parametrize("kind", ["truncated", "cell", "numeric", "frames"])
def test_one_bad_shot_warns_and_skips_or_fails_strict(tmp_path, make_tigdog, kind):
    make_tigdog(tmp_path)  # shots 1 (3 frames), 2 (4), 5 (2)
    _corrupt_shot(tmp_path, 1, kind)
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable shot file.*1\.mat"):
        records = tigdog.load_tigdog(tmp_path, "horse", split="all")
    assert {r.video for r in records} == {2, 5}
    with pytest.raises(DataError, match=r"landmarks/horse/1\.mat: ") as err:
        tigdog.load_tigdog(tmp_path, "horse", split="all", strict=True)
    assert "\n" not in str(err.value)
    # The bad shot keeps its positions: shots 2 and 5 keep theirs (3..6 and 7..8).
    assert [r.extra["position"] for r in records] == list(range(3, 9))
    tr, _ = tigdog.write_split_files(tmp_path / "s", [1, 4, 5], [2])
    with pytest.warns(UserWarning) as caught:
        train = tigdog.load_tigdog(tmp_path, "horse", split="train", split_file=tr, val_fraction=0)
    messages = [str(w.message) for w in caught]
    assert any("skipped 1 unreadable shot" in m for m in messages)
    assert any("1 of 3 positions point at frames dropped" in m for m in messages)
    assert [r.extra["position"] for r in train] == [4, 5]


def test_shot_without_landmarks_is_skipped_silently(tmp_path, make_tigdog):
    make_tigdog(tmp_path)
    tigdog.landmarks_path(tmp_path, "horse", 2).unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        records = tigdog.load_tigdog(tmp_path, "horse", split="all")
    assert [r.video for r in records] == [1, 1, 1, 5, 5]


def test_missing_image_warns_or_fails_strict(tmp_path, make_tigdog):
    make_tigdog(tmp_path)
    (tmp_path / "horse" / "00000002.jpg").unlink()
    with pytest.warns(UserWarning, match="1 of 9 frame images missing"):
        records = tigdog.load_tigdog(tmp_path, "horse", split="all")
    assert 2 not in [r.frame for r in records] and len(records) == 8
    with pytest.raises(DataError, match="00000002.jpg: image not found"):
        tigdog.load_tigdog(tmp_path, "horse", split="all", strict=True)


def test_bad_split_name(tmp_path, make_tigdog):
    make_tigdog(tmp_path)
    with pytest.raises(ConfigError, match="'train', 'val', 'test' or 'all'"):
        tigdog.load_tigdog(tmp_path, "horse", split="valid")


# ----------------------------------------------------------------------------------- prepare.py


def test_prepare_script_crops_and_writes_splits(tmp_path, make_tigdog):
    make_tigdog(tmp_path / "bd", shots=tuple((s, 2) for s in range(1, 6)))
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, str(REPO / "datasets/tigdog/prepare.py"), "--root", str(tmp_path / "bd"),
         "--animal", "horse", "--out", str(out), "--size", "32", "--seed", "2"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    train = np.load(out / "train_idxs_by_video.npy")
    valid = np.load(out / "valid_idxs_by_video.npy")
    assert len(train) + len(valid) == 10 and not set(train) & set(valid)
    crops = sorted((out / "crops").glob("*.jpg"))
    assert len(crops) == 10
    import cv2

    assert cv2.imread(str(crops[0])).shape == (32, 32, 3)
    bad = subprocess.run(
        [sys.executable, str(REPO / "datasets/tigdog/prepare.py"), "--root", str(tmp_path / "nope"),
         "--animal", "horse", "--out", str(out)],
        capture_output=True, text=True, timeout=120,
    )
    assert bad.returncode != 0 and "TigDog root not found" in bad.stderr
