"""Synthetic-animal loader: round trip, published visibility rule, crop box, split, bad input."""

from __future__ import annotations

import glob
import os
import warnings

import cv2
import numpy as np
import pytest

from da_pose.data import synthetic
from da_pose.errors import ConfigError, DataError

W, H = 64, 48


def test_write_sample_layout(tmp_path):
    img = np.zeros((H, W, 3), np.uint8)
    img[..., 0] = 200  # red in RGB
    kpts = np.arange(12, dtype=float).reshape(4, 3)
    ip, kp = synthetic.write_sample(tmp_path, "0001", img, kpts)
    assert ip.name == "0001_img.png" and kp.name == "0001_kpts.npy"
    assert cv2.imread(str(ip))[0, 0].tolist() == [0, 0, 200]  # stored as a normal RGB PNG
    np.testing.assert_array_equal(np.load(kp), kpts)
    assert synthetic.png_size(ip) == (W, H)
    assert not list(tmp_path.glob("*.tmp"))


def test_round_trip_published_rules(tmp_path, make_synthetic):
    truth = make_synthetic(tmp_path, n=5)
    records = synthetic.load_synthetic(tmp_path, "toyhorse", split="all")
    assert len(records) == 5
    for i, rec in enumerate(records):
        kpts = truth["kpts"][i]
        joints = kpts[truth["ids"]]
        x, y = joints[:, 0], joints[:, 1]
        inside = (x >= -0.5) & (x < W - 0.5) & (y >= -0.5) & (y < H - 0.5)
        assert 0 < inside.sum() < 18  # the fixture puts some joints outside
        # "Train with occlusion": every joint inside the image is visible; outside ones zeroed.
        np.testing.assert_allclose(rec.keypoints[inside, :2], joints[inside, :2], rtol=1e-6)
        assert (rec.keypoints[inside, 2] == 1).all()
        assert (rec.keypoints[~inside] == 0).all()
        # Box of all vertices clipped to the image; side = longer side x 1.25.
        vx, vy = np.clip(kpts[:, 0], 0, W - 1), np.clip(kpts[:, 1], 0, H - 1)
        w, h = vx.max() - vx.min(), vy.max() - vy.min()
        assert rec.side == pytest.approx(1.25 * max(w, h))
        np.testing.assert_allclose(rec.center, [(vx.max() + vx.min()) / 2, (vy.max() + vy.min()) / 2], rtol=1e-6)
        assert rec.frame == i and rec.video == -1 and rec.species == "toyhorse"
        assert rec.image_path.endswith(f"{i:05d}_img.png")


def test_use_visibility_reads_the_flags(tmp_path, make_synthetic):
    truth = make_synthetic(tmp_path, n=2)
    rec = synthetic.load_synthetic(tmp_path, "toyhorse", split="all", use_visibility=True)[0]
    joints = truth["kpts"][0][truth["ids"]]
    x, y = joints[:, 0], joints[:, 1]
    inside = (x >= -0.5) & (x < W - 0.5) & (y >= -0.5) & (y < H - 0.5)
    np.testing.assert_array_equal(rec.keypoints[:, 2], (inside & (joints[:, 2] > 0)).astype(np.float32))


def test_split_by_sorted_name(tmp_path, make_synthetic):
    make_synthetic(tmp_path, n=10)
    train = synthetic.load_synthetic(tmp_path, "toyhorse", "train")
    val = synthetic.load_synthetic(tmp_path, "toyhorse", "val")
    assert [r.frame for r in train] == list(range(8)) and [r.frame for r in val] == [8, 9]
    assert len(synthetic.load_synthetic(tmp_path, "toyhorse", "train", train_count=3)) == 3
    with pytest.raises(ConfigError, match="train_count 11"):
        synthetic.load_synthetic(tmp_path, "toyhorse", "train", train_count=11)
    with pytest.raises(ConfigError, match="'train', 'val' or 'all'"):
        synthetic.load_synthetic(tmp_path, "toyhorse", "test")


def test_listing_is_the_published_one_hidden_files_left_out(tmp_path, make_synthetic):
    # Published split files index the folder listed as CC-SSL does: glob '*img.png', sorted
    # (pose/datasets/synthetic_animal.py L43-44 at 24288a5); a glob '*' skips hidden names. A
    # copy unpacked on macOS holds '._X_img.png' AppleDouble files, which sort first.
    made = make_synthetic(tmp_path, n=6)
    folder = made["folder"]
    for stem in ("00000", "00004"):
        (folder / f"._{stem}_img.png").write_bytes(b"\x00\x05\x16\x07" + bytes(4092))
        (folder / f"._{stem}_kpts.npy").write_bytes(b"\x00\x05\x16\x07" + bytes(4092))
    published = [os.path.basename(p) for p in sorted(glob.glob(os.path.join(folder, "*img.png")))]
    assert published == [f"{i:05d}_img.png" for i in range(6)]
    np.save(folder / "train_idxs.npy", np.array([5, 0, 2, 4]))
    np.save(folder / "valid_idxs.npy", np.array([3, 1]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no hidden file read as a bad sample
        everything = synthetic.load_synthetic(tmp_path, "toyhorse", "all", strict=True)
        val = synthetic.load_synthetic(tmp_path, "toyhorse", "val", strict=True)
    assert [os.path.basename(r.image_path) for r in everything] == published
    assert [os.path.basename(r.image_path) for r in val] == [published[3], published[1]]
    assert [r.frame for r in val] == [3, 1]
    np.testing.assert_allclose(val[0].keypoints[:, :2][val[0].keypoints[:, 2] > 0],
                               made["kpts"][3][made["ids"]][val[0].keypoints[:, 2] > 0, :2], rtol=1e-6)


def test_species_tables(tmp_path, make_synthetic):
    assert len(synthetic.VERTEX_IDS["horse"]) == 18 and synthetic.VERTEX_IDS["horse"][0] == 1718
    assert synthetic.VERTEX_IDS["tiger"][-1] == 129
    with pytest.raises(ConfigError, match="unknown synthetic species 'zebra'"):
        synthetic.species_vertex_ids("zebra")
    with pytest.raises(ConfigError, match="18 non-negative integers"):
        synthetic.register_species("zebra", [1, 2, 3])
    truth = make_synthetic(tmp_path, species="other", n=2)
    ids = list(reversed(truth["ids"]))  # passed directly, overriding the table
    rec = synthetic.load_synthetic(tmp_path, "other", "all", vertex_ids=ids)[0]
    joints = truth["kpts"][0][ids]
    shown = rec.keypoints[:, 2] > 0
    np.testing.assert_allclose(rec.keypoints[shown, :2], joints[shown, :2], rtol=1e-6)


def test_published_horse_mesh_ids_fit_a_3299_vertex_sample(tmp_path):
    rng = np.random.default_rng(0)
    kpts = np.column_stack([rng.uniform(100, 500, 3299), rng.uniform(50, 400, 3299), np.ones(3299)])
    synthetic.write_sample(synthetic.species_folder(tmp_path, "horse"), "0000", np.zeros((480, 640, 3), np.uint8), kpts)
    (rec,) = synthetic.load_synthetic(tmp_path, "horse", "all")
    np.testing.assert_allclose(rec.keypoints[:, :2], kpts[list(synthetic.VERTEX_IDS["horse"]), :2], rtol=1e-6)


# ----------------------------------------------------------------------------------- bad input


def test_missing_root_and_folder(tmp_path):
    with pytest.raises(DataError, match="synthetic-animal root not found"):
        synthetic.load_synthetic(tmp_path / "nope", "horse")
    with pytest.raises(DataError, match="horse_combineds5r5_texture: species folder not found"):
        synthetic.load_synthetic(tmp_path, "horse")
    synthetic.species_folder(tmp_path, "horse").mkdir()
    with pytest.raises(DataError, match="no \\*_img.png images"):
        synthetic.load_synthetic(tmp_path, "horse")


def _bad_npy(path, kind):
    if kind == "shape":
        np.save(path, np.zeros((40, 2)))
    elif kind == "nan":
        arr = np.load(path)
        arr[3, 0] = np.nan
        np.save(path, arr)
    elif kind == "truncated":
        path.write_bytes(path.read_bytes()[:50])
    elif kind == "missing":
        path.unlink()
    elif kind == "few_vertices":
        np.save(path, np.load(path)[:5])


@pytest.mark.parametrize("kind", ["shape", "nan", "truncated", "missing", "few_vertices"])
def test_one_bad_npy_warns_and_skips_or_fails_strict(tmp_path, make_synthetic, kind):
    truth = make_synthetic(tmp_path, n=4)
    _bad_npy(truth["folder"] / "00002_kpts.npy", kind)
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable sample.*00002_kpts\.npy"):
        records = synthetic.load_synthetic(tmp_path, "toyhorse", "all")
    assert [r.frame for r in records] == [0, 1, 3]
    with pytest.raises(DataError, match=r"00002_kpts\.npy: ") as err:
        synthetic.load_synthetic(tmp_path, "toyhorse", "all", strict=True)
    assert "\n" not in str(err.value)


def test_every_sample_bad_is_an_error(tmp_path, make_synthetic):
    make_synthetic(tmp_path, n=2)
    with pytest.raises(DataError, match="all 2 samples"):
        synthetic.load_synthetic(tmp_path, "toyhorse", "all", vertex_ids=[100] * 18)
