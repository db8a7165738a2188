"""PoseDataset on tiny images written by the test: geometry, flips, cache, labels, bad files."""

import os
import warnings

import cv2
import numpy as np
import pytest
import torch

from da_pose.config import AugConfig
from da_pose.data import skeleton
from da_pose.data.codec import HeatmapCodec
from da_pose.data.dataset import PoseDataset, augmentation_extent, sample_augmentation
from da_pose.data.records import PoseRecord
from da_pose.data.transforms import apply_affine, crop_affine, invert_affine
from da_pose.errors import DataError

S, HM = 64, 16
K = skeleton.NUM_JOINTS
LE, RE = skeleton.JOINTS.index("left_eye"), skeleton.JOINTS.index("right_eye")
RED, GREEN = (255, 0, 0), (0, 255, 0)
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
NO_APPEARANCE = dict(appearance=False)


def make_image(h=160, w=200):
    """RGB uint8: a smooth blue-ish gradient, a red dot (left eye) and a green dot (right eye)."""
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 2] = (60 + 100 * xx / w).astype(np.uint8)
    img[..., 1] = (40 * yy / h).astype(np.uint8)
    cv2.circle(img, (90, 70), 4, RED, -1)
    cv2.circle(img, (120, 74), 4, GREEN, -1)
    return img


def make_keypoints(rng):
    kp = np.zeros((K, 3), np.float32)
    kp[:, 0] = rng.uniform(85, 135, size=K)
    kp[:, 1] = rng.uniform(65, 105, size=K)
    kp[:, 2] = 1.0
    kp[LE, :2] = (90, 70)
    kp[RE, :2] = (120, 74)
    kp[7, 2] = 0.0  # one unlabelled joint
    return kp


def write(path, rgb):
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return str(path)


@pytest.fixture
def records(tmp_path):
    rng = np.random.default_rng(0)
    out = []
    for i in range(4):
        path = write(tmp_path / f"{i:08d}.png", make_image())
        kp = make_keypoints(rng)
        out.append(PoseRecord(path, kp, np.array([110.0 + i, 85.0], np.float32), 70.0,
                              np.array([85, 65, 50, 40], np.float32), video=i // 2, frame=i))
    return out


def codec():
    return HeatmapCodec(S, HM, sigma=1.0, decode="dark")


def dataset(records, train=False, aug=None, **kw):
    return PoseDataset(records, codec(), S, train, aug, MEAN, STD, **kw)


def rgb(item):
    return ((item["image"].permute(1, 2, 0).numpy() * np.array(STD) + np.array(MEAN)) * 255).round()


def colour_at(item, xy):
    x, y = int(round(float(xy[0]))), int(round(float(xy[1])))
    return rgb(item)[y, x]


def test_eval_item_geometry_and_targets(records):
    ds = dataset(records, cache=False)
    item = ds[1]
    assert item["image"].shape == (3, S, S) and item["image"].dtype == torch.float32
    assert item["target"].shape == (K, HM, HM) and item["target_weight"].shape == (K,)
    assert item["keypoints"].shape == (K, 3) and item["affine"].shape == (2, 3)
    assert (item["index"].item(), item["video"].item(), item["frame"].item()) == (1, 0, 1)
    assert item["index"].dtype == torch.int64
    r = records[1]
    a = crop_affine(r.center, r.side, S)
    np.testing.assert_allclose(item["affine"].numpy(), a, atol=1e-5)
    mapped = apply_affine(a, r.keypoints[:, :2])
    np.testing.assert_allclose(item["keypoints"][:, :2].numpy(), mapped, atol=1e-4)
    # target peaks decode to the affine-mapped keypoints
    coords, _ = ds.codec.decode(item["target"][None])
    vis = item["target_weight"].bool()
    assert vis.sum() == K - 1 and not vis[7]
    np.testing.assert_allclose(coords[0][vis].numpy(), mapped[vis.numpy()], atol=0.1)
    # the pixels and the labels agree: the red dot is at the left eye, green at the right eye
    assert np.abs(colour_at(item, item["keypoints"][LE]) - RED).max() < 30
    assert np.abs(colour_at(item, item["keypoints"][RE]) - GREEN).max() < 30
    # the image is the OpenCV crop of the RGB original, normalised with mean and std
    ref = cv2.warpAffine(make_image(), a, (S, S), flags=cv2.INTER_LINEAR)
    assert np.abs(rgb(item) - ref).max() <= 1


def test_joint_outside_the_crop_is_not_visible(records):
    kp = np.stack([r.keypoints for r in records])
    kp[0, 3, :2] = (1.0, 1.0)  # far outside the 70-pixel crop around (110, 85)
    item = dataset(records, cache=False, keypoints=kp)[0]
    assert item["keypoints"][3, 2] == 0 and item["target_weight"][3] == 0
    assert item["target"][3].abs().sum() == 0


def find_items(ds, i, want_flip, tries=40):
    for seed in range(tries):
        torch.manual_seed(seed)
        item = ds[i]
        if bool(torch.linalg.det(item["affine"][:, :2]) < 0) == want_flip:
            return item
    raise AssertionError("no item with the wanted flip")


@pytest.mark.parametrize("cache", [False, True])
def test_train_flip_swaps_left_and_right(records, cache):
    aug = AugConfig(scale=0.0, rotate=0.0, rotate_prob=0.0, translate=0.0, flip=True, **NO_APPEARANCE)
    ds = dataset(records, train=True, aug=aug, cache=cache)
    plain, flipped = find_items(ds, 2, False), find_items(ds, 2, True)
    # a left-side point ends up in the right channel at the mirrored location
    le = plain["keypoints"][LE]
    np.testing.assert_allclose(flipped["keypoints"][RE, :2].numpy(), [S - 1 - le[0], le[1]], atol=1e-4)
    assert np.abs(colour_at(flipped, flipped["keypoints"][RE]) - RED).max() < 30
    assert np.abs(colour_at(flipped, flipped["keypoints"][LE]) - GREEN).max() < 30
    coords, _ = ds.codec.decode(flipped["target"][None])
    np.testing.assert_allclose(coords[0, RE].numpy(), flipped["keypoints"][RE, :2].numpy(), atol=0.1)
    # and the returned affine maps the original left eye there
    orig_le = records[2].keypoints[LE, :2]
    np.testing.assert_allclose(apply_affine(flipped["affine"].double().numpy(), orig_le),
                               flipped["keypoints"][RE, :2].numpy(), atol=1e-3)
    np.testing.assert_allclose(rgb(flipped), rgb(plain)[:, ::-1], atol=1)


def test_train_augmentation_cache_matches_no_cache(records):
    aug = AugConfig(scale=0.25, rotate=30.0, rotate_prob=1.0, translate=0.05, flip=True, **NO_APPEARANCE)
    cached, direct = dataset(records, train=True, aug=aug), dataset(records, train=True, aug=aug, cache=False)
    for seed in range(6):
        torch.manual_seed(seed)
        a = cached[seed % 4]
        torch.manual_seed(seed)
        b = direct[seed % 4]
        for key in ("keypoints", "affine", "target", "target_weight", "index"):
            torch.testing.assert_close(a[key], b[key])
        # the cached patch has the crop's resolution: resampling twice blurs only slightly
        # (large differences only on the edges of the dots)
        diff = np.abs(rgb(a) - rgb(b))
        assert diff.mean() < 4 and (diff.max(axis=2) > 40).mean() < 0.01
        kp = a["keypoints"]
        flipped = torch.linalg.det(a["affine"][:, :2]) < 0  # channels swapped: LE holds the green dot
        for j, colour in ((LE, GREEN if flipped else RED), (RE, RED if flipped else GREEN)):
            if kp[j, 2] > 0 and (kp[j, :2] > 3).all() and (kp[j, :2] < S - 4).all():
                assert np.abs(colour_at(a, kp[j]) - colour).max() < 60
    torch.manual_seed(0)
    first = cached[0]
    torch.manual_seed(1)
    assert not torch.equal(first["affine"], cached[0]["affine"])  # it is random


@pytest.mark.parametrize("rotate", [10.0, 30.0])
def test_augmentation_extent_covers_every_crop_tightly(rotate):
    aug = AugConfig(scale=0.25, rotate=rotate, rotate_prob=0.6, translate=0.05)
    e = augmentation_extent(aug)
    center, side = np.array([50.0, 40.0]), 20.0
    corners = np.array([[-0.5, -0.5], [S - 0.5, -0.5], [-0.5, S - 0.5], [S - 0.5, S - 0.5]])
    reach = 0.0
    for r in np.linspace(-2 * rotate, 2 * rotate, 9):
        for shift in [(-0.05, -0.05), (0.05, -0.05), (0.05, 0.05), (0.0, 0.0)]:
            a = crop_affine(center, side, S, scale=1.5, rotation=r, shift=shift)
            reach = max(reach, np.abs(apply_affine(invert_affine(a), corners) - center).max())
    assert reach <= side * e / 2 + 1e-9 and reach > 0.99 * side * e / 2
    rng = np.random.default_rng(0)
    draws = [sample_augmentation(aug, rng) for _ in range(400)]
    scales = np.array([d["scale"] for d in draws])
    rots = np.array([d["rotation"] for d in draws])
    assert scales.min() >= 0.5 and scales.max() <= 1.5 and 0.3 < np.mean(rots == 0) < 0.5
    assert np.abs(rots).max() <= 2 * rotate and 0.35 < np.mean([d["flip"] for d in draws]) < 0.65


def test_cache_gives_identical_eval_items(records):
    cached, direct = dataset(records), dataset(records, cache=False)
    for i in range(len(records)):
        for _ in range(2):  # the second read comes from the cache
            a, b = cached[i], direct[i]
            assert a.keys() == b.keys()
            for key in a:
                assert torch.equal(a[key], b[key]), key


def test_pseudo_label_override_shares_cache(records, tmp_path):
    ds = dataset(records)
    assert ds.prefetch(num_threads=2, progress=False) == 0
    for r in records:  # from now on the pixels can only come from the cache
        os.remove(r.image_path)
    pseudo = np.stack([r.keypoints for r in records]) + np.array([3.0, -2.0, 0.0], np.float32)
    ps = ds.with_keypoints(pseudo)
    assert len(ps) == len(ds) and ps.records == ds.records
    for i in range(len(records)):
        item, base = ps[i], ds[i]
        np.testing.assert_allclose(item["keypoints"][:, :2].numpy(),
                                   apply_affine(item["affine"].double().numpy(), pseudo[i, :, :2]), atol=1e-3)
        assert torch.equal(item["image"], base["image"])
        assert not torch.equal(item["target"], base["target"])
    with pytest.raises(DataError, match=r"\(4, 18, 3\)"):
        ds.with_keypoints(pseudo[:2])


def test_unreadable_image_skipped_or_error(records, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 this is not a jpeg" * 10)
    recs = list(records)
    recs.insert(1, PoseRecord(str(bad), records[0].keypoints, records[0].center, 70.0, records[0].bbox, frame=99))
    ds = dataset(recs)
    with pytest.warns(UserWarning, match="broken.jpg.*1 unreadable"):
        item = ds[1]
    assert item["index"].item() == 2  # the next readable record, under its own index
    strict = dataset(recs, strict=True)
    with pytest.raises(DataError, match="broken.jpg"):
        strict[1]
    with pytest.raises(DataError, match="broken.jpg"):
        dataset(recs, strict=True).prefetch(progress=False)
    missing = dataset([PoseRecord(str(tmp_path / "nope.png"), records[0].keypoints, records[0].center, 70.0,
                                  records[0].bbox)], strict=True)
    with pytest.raises(DataError, match="nope.png: file not found"):
        missing[0]
    # prefetch drops unreadable records, with their labels, and reports the count
    ds = dataset(recs)
    with pytest.warns(UserWarning, match="1 unreadable image"):
        assert ds.prefetch(progress=False) == 1
    assert len(ds) == 4 and all("broken" not in r.image_path for r in ds.records)
    assert ds.keypoints.shape == (4, K, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert [ds[i]["frame"].item() for i in range(4)] == [0, 1, 2, 3]


def test_bad_labels_rejected_at_construction(records):
    kp = records[2].keypoints.copy()
    kp[5, 0] = np.nan
    recs = records[:2] + [PoseRecord(records[2].image_path, kp, records[2].center, 70.0, records[2].bbox)]
    with pytest.raises(DataError, match="00000002.png.*NaN"):
        dataset(recs)
    with pytest.raises(DataError, match=r"\(18, 3\)"):
        dataset([PoseRecord(records[0].image_path, kp[:5], records[0].center, 70.0, records[0].bbox)])


def test_rgba_and_grey_images_read_as_rgb(tmp_path, records):
    rgba = np.dstack([make_image(), np.full((160, 200), 7, np.uint8)])
    p1 = tmp_path / "rgba.png"
    cv2.imwrite(str(p1), cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))
    p2 = tmp_path / "grey.png"
    cv2.imwrite(str(p2), np.full((160, 200), 100, np.uint8))
    r0 = records[0]
    recs = [PoseRecord(str(p), r0.keypoints, r0.center, r0.side, r0.bbox) for p in (p1, p2)]
    ds = dataset(recs)
    ref = dataset([r0])[0]
    assert torch.equal(ds[0]["image"], ref["image"])
    assert np.abs(rgb(ds[1])[S // 2, S // 2] - 100).max() <= 1


def test_dataloader_workers_and_appearance(records):
    aug = AugConfig(appearance_prob=1.0)
    ds = dataset(records, train=True, aug=aug)
    torch.manual_seed(0)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2, shuffle=False)
    batches = list(loader)
    assert len(batches) == 2
    b = batches[0]
    assert b["image"].shape == (2, 3, S, S) and b["target"].shape == (2, K, HM, HM)
    assert b["index"].tolist() == [0, 1] and b["index"].dtype == torch.int64
    assert torch.isfinite(b["image"]).all()
