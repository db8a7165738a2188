"""Affine helpers, warp_batch vs OpenCV, heatmap_affine, random_geometric, appearance."""

import math

import cv2
import numpy as np
import pytest
import torch

from da_pose.data import skeleton
from da_pose.data.codec import HeatmapCodec
from da_pose.data.transforms import (
    adjust_brightness_colour,
    adjust_contrast,
    add_gaussian_noise,
    appearance_augment,
    apply_affine,
    compose,
    crop_affine,
    flip_affine,
    flip_keypoints,
    gaussian_blur,
    heatmap_affine,
    invert_affine,
    random_appearance,
    random_geometric,
    warp_batch,
)

S = 64
IDENTITY = np.array([[1.0, 0, 0], [0, 1.0, 0]])


def smooth_image(seed, h, w, c=3):
    """Random image in [0, 1] smooth enough for interpolation to agree closely."""
    rng = np.random.default_rng(seed)
    img = rng.uniform(0, 1, size=(h, w, c)).astype(np.float32)
    return cv2.GaussianBlur(img, (0, 0), 2.0)


def test_crop_affine_maps_centre_and_side():
    center, side = (70.3, 41.9), 37.0
    a = crop_affine(center, side, S)
    assert a.shape == (2, 3) and a.dtype == np.float64
    mid = (S - 1) / 2
    np.testing.assert_allclose(apply_affine(a, np.array(center)), [mid, mid], atol=1e-9)
    # the crop's outer edges land on the input's outer edges (-0.5 and S - 0.5)
    edges = np.array([[center[0] - side / 2, center[1] - side / 2], [center[0] + side / 2, center[1] + side / 2]])
    np.testing.assert_allclose(apply_affine(a, edges), [[-0.5, -0.5], [S - 0.5, S - 0.5]], atol=1e-9)
    # scale 2 zooms out: the square twice as large fills the input
    a2 = crop_affine(center, side, S, scale=2.0)
    np.testing.assert_allclose(apply_affine(a2, edges[1] + side / 2), [S - 0.5, S - 0.5], atol=1e-9)
    # shift moves the window by a fraction of the (scaled) side
    a3 = crop_affine(center, side, S, scale=2.0, shift=(0.25, -0.1))
    moved = np.array(center) + np.array([0.25, -0.1]) * side * 2.0
    np.testing.assert_allclose(apply_affine(a3, moved), [mid, mid], atol=1e-9)


def test_crop_affine_rotation_and_flip_follow_opencv():
    c = (S - 1) / 2
    a = crop_affine((c, c), S, S, rotation=30.0)
    np.testing.assert_allclose(a, cv2.getRotationMatrix2D((c, c), 30.0, 1.0), atol=1e-12)
    af = crop_affine((50.0, 20.0), 30.0, S, rotation=-20.0, flip=True, scale=1.3)
    plain = crop_affine((50.0, 20.0), 30.0, S, rotation=-20.0, scale=1.3)
    np.testing.assert_allclose(af, compose(flip_affine(S), plain))
    np.testing.assert_allclose(apply_affine(flip_affine(S), np.array([0.0, 5.0])), [S - 1, 5.0])


def test_invert_and_compose_exact_numpy_and_torch():
    rng = np.random.default_rng(0)
    a = crop_affine((33.0, 12.0), 20.0, S, scale=0.8, rotation=17.0, flip=True)
    b = crop_affine((5.0, 60.0), 90.0, S, scale=1.2, rotation=-70.0, shift=(0.1, 0.0))
    pts = rng.uniform(-50, 100, size=(7, 2))
    np.testing.assert_allclose(compose(a, invert_affine(a)), IDENTITY, atol=1e-12)
    np.testing.assert_allclose(compose(invert_affine(a), a), IDENTITY, atol=1e-12)
    np.testing.assert_allclose(apply_affine(compose(a, b), pts), apply_affine(a, apply_affine(b, pts)), atol=1e-9)
    np.testing.assert_allclose(apply_affine(invert_affine(a), apply_affine(a, pts)), pts, atol=1e-9)
    # batched torch gives the same numbers
    ab = torch.from_numpy(np.stack([a, b]))
    tp = torch.from_numpy(np.stack([pts, pts]))
    out = apply_affine(compose(ab, invert_affine(ab)), tp)
    torch.testing.assert_close(out, tp, atol=1e-9, rtol=0)
    torch.testing.assert_close(compose(ab, torch.from_numpy(b))[0], torch.from_numpy(compose(a, b)))


def test_flip_keypoints_mirrors_and_swaps():
    k = skeleton.NUM_JOINTS
    kp = np.zeros((k, 3), np.float32)
    kp[:, 0] = np.arange(k)
    kp[:, 1] = 2 * np.arange(k)
    kp[:, 2] = 1.0
    f = flip_keypoints(kp, S, skeleton.FLIP_INDEX)
    le, re = skeleton.JOINTS.index("left_eye"), skeleton.JOINTS.index("right_eye")
    assert f[re, 0] == S - 1 - kp[le, 0] and f[re, 1] == kp[le, 1]
    chin = skeleton.JOINTS.index("chin")
    assert f[chin, 0] == S - 1 - kp[chin, 0]
    np.testing.assert_array_equal(flip_keypoints(f, S, skeleton.FLIP_INDEX), kp)
    assert kp[0, 0] == 0  # input untouched


@pytest.mark.parametrize("out_size", [(40, 52), 48])
def test_warp_batch_agrees_with_cv2(out_size):
    img = smooth_image(1, 37, 45)
    mats = [
        crop_affine((22.0, 18.0), 30.0, 48, rotation=25.0, scale=1.1),
        crop_affine((10.0, 30.0), 50.0, 48, rotation=-40.0, flip=True, shift=(0.1, 0.05)),
        np.array([[1.0, 0.0, 3.0], [0.0, 1.0, -2.0]]),  # pure integer shift
    ]
    oh, ow = (out_size, out_size) if isinstance(out_size, int) else out_size
    x = torch.from_numpy(img).permute(2, 0, 1)[None].repeat(len(mats), 1, 1, 1)
    out = warp_batch(x, torch.from_numpy(np.stack(mats)), out_size)
    assert out.shape == (len(mats), 3, oh, ow)
    for i, m in enumerate(mats):
        ref = cv2.warpAffine(img, m, (ow, oh), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        got = out[i].permute(1, 2, 0).numpy()
        # OpenCV interpolates with 1/32-pixel fixed-point weights
        assert np.abs(got - ref).max() < 0.02
        assert np.abs(got - ref).mean() < 2e-3
    # an integer shift is exact
    ref = cv2.warpAffine(img, mats[2], (ow, oh))
    np.testing.assert_allclose(out[2].permute(1, 2, 0).numpy()[:, :40], ref[:, :40], atol=1e-5)


def test_heatmap_affine_consistency():
    codec = HeatmapCodec(S, 16, sigma=1.0, decode="dark")
    rng = np.random.default_rng(5)
    kp = np.zeros((skeleton.NUM_JOINTS, 3), np.float32)
    kp[:, :2] = rng.uniform(22, 42, size=(skeleton.NUM_JOINTS, 2))
    kp[:, 2] = 1
    gen = torch.Generator().manual_seed(3)
    a_in = random_geometric(4, gen, flip_prob=0.5, size=S).double()  # input -> input, B, 2, 3
    a_hm = heatmap_affine(a_in, codec.stride)
    # the heatmap-pixel map is the input-pixel map seen through the block-centre convention
    pts = torch.from_numpy(rng.uniform(0, 16, size=(4, 5, 2)))
    torch.testing.assert_close(
        codec.to_heatmap_coords(apply_affine(a_in, codec.to_input_coords(pts))), apply_affine(a_hm, pts)
    )
    hm = torch.from_numpy(codec.encode(kp)[0])[None].repeat(4, 1, 1, 1)
    warped = warp_batch(hm, a_hm, 16)
    moved = np.stack([np.concatenate([apply_affine(a_in[b].numpy(), kp[:, :2]), kp[:, 2:]], 1) for b in range(4)])
    expected = codec.encode_batch(torch.from_numpy(moved).float())[0]
    got_xy, got_max = codec.decode(warped)
    exp_xy, exp_max = codec.decode(expected)
    # peaks coincide; the shape differs (a scaled Gaussian, and bilinear resampling of a
    # sigma-1 peak lowers its maximum by up to about a quarter)
    assert ((got_xy - exp_xy).abs() / codec.stride).max() < 0.1  # heatmap pixels
    assert (got_max > 0.6).all() and (got_max < exp_max + 0.05).all()


def test_random_geometric_distribution_and_form():
    gen = torch.Generator().manual_seed(0)
    a = random_geometric(256, gen, 0.25, 0.25, 30.0, 60.0, flip_prob=0.0, size=S).double()
    assert a.shape == (256, 2, 3) and a.dtype == torch.float64
    mid = torch.full((256, 1, 2), (S - 1) / 2, dtype=torch.float64)
    torch.testing.assert_close(apply_affine(a, mid), mid)  # about the image centre
    det = torch.linalg.det(a[:, :, :2])
    scale = 1 / det.sqrt()
    assert scale.min() >= 0.75 - 1e-5 and scale.max() <= 1.25 + 1e-5
    assert ((scale - 1.25).abs() < 1e-5).sum() > 1 and ((scale - 0.75).abs() < 1e-5).sum() > 1  # clamped
    rot = torch.rad2deg(torch.atan2(a[:, 0, 1], a[:, 0, 0]))
    assert rot.abs().max() <= 60 + 1e-3 and 20 < rot.std() < 35
    for b in range(3):  # same matrix as crop_affine with the recovered parameters
        ref = crop_affine(((S - 1) / 2, (S - 1) / 2), S, S, scale=scale[b].item(), rotation=rot[b].item())
        np.testing.assert_allclose(a[b].numpy(), ref, atol=1e-5)
    same = random_geometric(256, torch.Generator().manual_seed(0), 0.25, 0.25, 30.0, 60.0, size=S)
    torch.testing.assert_close(same.double(), a)
    ident = random_geometric(3, gen, 0.0, 0.25, 0.0, 60.0, flip_prob=0.0, size=S)
    torch.testing.assert_close(ident, torch.tensor(IDENTITY, dtype=torch.float32).expand(3, 2, 3))
    flipped = random_geometric(3, gen, 0.0, 0.25, 0.0, 60.0, flip_prob=1.0, size=S)
    torch.testing.assert_close(flipped, torch.from_numpy(flip_affine(S)).float().expand(3, 2, 3))


# ---- appearance


def batch(seed=0, b=4, h=24, w=20):
    return torch.from_numpy(np.stack([smooth_image(seed + i, h, w) for i in range(b)])).permute(0, 3, 1, 2)


def test_gaussian_blur_matches_opencv():
    x = batch(b=1)
    out = gaussian_blur(x, torch.Generator().manual_seed(0), sigma=(1.3, 1.3))
    ref = cv2.GaussianBlur(x[0].permute(1, 2, 0).numpy(), (0, 0), 1.3, borderType=cv2.BORDER_REFLECT_101)
    np.testing.assert_allclose(out[0].permute(1, 2, 0).numpy(), ref, atol=2e-3)
    const = torch.full((2, 3, 9, 9), 0.3)
    torch.testing.assert_close(gaussian_blur(const, None, sigma=(0.5, 3.0)), const)  # r > size: replicate


def test_noise_contrast_colour_magnitudes():
    grey = torch.full((2, 3, 64, 64), 0.5)
    gen = torch.Generator().manual_seed(0)
    noisy = add_gaussian_noise(grey, gen, sigma=(0.1, 0.1), per_channel=0.0)
    assert abs((noisy - 0.5).std().item() - 0.1) < 0.01
    torch.testing.assert_close(noisy[:, 0], noisy[:, 1])  # one noise image for all channels
    per = add_gaussian_noise(grey, gen, sigma=(0.1, 0.1), per_channel=1.0)
    assert (per[:, 0] - per[:, 1]).abs().mean() > 0.05
    x = batch()
    pivot = 128 / 255
    torch.testing.assert_close(adjust_contrast(x, gen, (2.0, 2.0)), (pivot + 2 * (x - pivot)).clamp(0, 1))
    bright = adjust_brightness_colour(x, gen, brightness=0.3, colour=0.0)
    ratio = bright / x
    assert ratio.std(dim=(1, 2, 3)).max() < 1e-4  # one gain per image
    assert (ratio.mean(dim=(1, 2, 3)) - 1).abs().max() <= 0.3 + 1e-5


def test_random_appearance_probability_strength_and_determinism():
    x = batch()
    torch.testing.assert_close(random_appearance(x, torch.Generator().manual_seed(0), p=0.0), x)
    torch.testing.assert_close(random_appearance(x, torch.Generator().manual_seed(0), p=1.0, strength=0.0), x)
    a = random_appearance(x, torch.Generator().manual_seed(7), p=1.0)
    b = random_appearance(x, torch.Generator().manual_seed(7), p=1.0)
    torch.testing.assert_close(a, b)
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= 1
    assert (a - x).abs().mean() > 0.01


def test_appearance_augment_numpy():
    img = (smooth_image(3, 32, 32) * 255).astype(np.uint8)
    out = appearance_augment(img, np.random.default_rng(0), p=0.0)
    np.testing.assert_array_equal(out, img)
    a = appearance_augment(img, np.random.default_rng(1), p=1.0)
    b = appearance_augment(img, np.random.default_rng(1), p=1.0)
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.uint8 and a.shape == img.shape
    assert np.abs(a.astype(float) - img).mean() > 1.0
    # the published magnitudes run too (noise 0.5 x 255 is extreme but valid)
    strong = appearance_augment(img, np.random.default_rng(2), p=1.0, noise_sigma=(0.5, 0.5))
    assert strong.std() > img.std()
    assert math.isfinite(float(strong.mean()))
