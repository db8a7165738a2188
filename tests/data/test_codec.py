"""HeatmapCodec: round trips, encode/encode_batch agreement, weights, flip test convention."""

import math

import numpy as np
import pytest
import torch

from da_pose.config import CodecConfig, DataConfig
from da_pose.data import skeleton
from da_pose.data.codec import HeatmapCodec, to_heatmap_coords, to_input_coords
from da_pose.data.transforms import flip_keypoints
from da_pose.errors import ConfigError

S, H = 64, 16  # input and heatmap sides: stride 4
K = skeleton.NUM_JOINTS


def random_keypoints(rng, n, lo=10.0, hi=54.0, visible=1.0):
    kp = np.zeros((n, K, 3), np.float32)
    kp[..., :2] = rng.uniform(lo, hi, size=(n, K, 2))
    kp[..., 2] = visible
    return kp


def test_convention_values_and_inverse():
    assert to_heatmap_coords(1.5, 4.0) == 0.0  # input pixels 0..3 average to heatmap pixel 0
    assert to_input_coords(0.0, 4.0) == 1.5
    assert to_heatmap_coords(-0.5, 4.0) == -0.5  # outer edges coincide
    assert to_heatmap_coords(S - 0.5, 4.0) == H - 0.5
    xy = np.random.default_rng(0).uniform(-5, 70, size=(10, 2))
    np.testing.assert_allclose(to_input_coords(to_heatmap_coords(xy, 4.0), 4.0), xy, atol=1e-12)


@pytest.mark.parametrize("method,tol", [("dark", 0.05), ("quarter", 0.25 + 1e-4), ("argmax", 0.5 + 1e-4)])
def test_round_trip(method, tol):
    codec = HeatmapCodec(S, H, sigma=1.0, decode=method)
    kp = random_keypoints(np.random.default_rng(1), 8)
    target, weight = codec.encode_batch(torch.from_numpy(kp))
    assert weight.min() == 1
    coords, maxvals = codec.decode(target)
    assert coords.shape == (8, K, 2) and maxvals.shape == (8, K)
    err_hm = (coords - torch.from_numpy(kp[..., :2])).abs().max().item() / codec.stride
    assert err_hm <= tol


def test_dark_beats_quarter_and_pixel_centres_are_exact():
    rng = np.random.default_rng(2)
    kp = random_keypoints(rng, 8)
    errs = {}
    for method in ("dark", "quarter"):
        codec = HeatmapCodec(S, H, decode=method)
        coords, _ = codec.decode(codec.encode_batch(torch.from_numpy(kp))[0])
        errs[method] = (coords - torch.from_numpy(kp[..., :2])).norm(dim=-1).mean().item()
    assert errs["dark"] < 0.2 * errs["quarter"]
    # a keypoint exactly on a heatmap pixel centre is decoded exactly by every method
    codec = HeatmapCodec(S, H)
    on_grid = np.zeros((1, K, 3), np.float32)
    on_grid[0, :, 0] = to_input_coords(np.arange(K) % 12 + 2.0, codec.stride)
    on_grid[0, :, 1] = to_input_coords(7.0, codec.stride)
    on_grid[0, :, 2] = 1
    target = codec.encode_batch(torch.from_numpy(on_grid))[0]
    for method in ("dark", "quarter", "argmax"):
        coords, maxvals = codec.decode(target, method=method)
        torch.testing.assert_close(coords, torch.from_numpy(on_grid[..., :2]), atol=0.01, rtol=0)
        torch.testing.assert_close(maxvals, torch.ones(1, K))


def test_gaussian_values_peak_and_truncation():
    codec = HeatmapCodec(S, H, sigma=1.0)
    kp = np.zeros((K, 3), np.float32)
    kp[:, :2] = 30.0
    kp[:, 2] = 1.0
    kp[0, :2] = (21.7, 33.1)  # heatmap (5.8, 8.4)
    target, weight = codec.encode(kp)
    assert target.dtype == np.float32 and target.shape == (K, H, H) and weight.shape == (K,)
    mx, my = to_heatmap_coords(21.7, 4.0), to_heatmap_coords(33.1, 4.0)
    for y, x in [(8, 6), (8, 5), (9, 7), (5, 3)]:
        expected = math.exp(-((x - mx) ** 2 + (y - my) ** 2) / 2.0)
        assert target[0, y, x] == pytest.approx(expected, rel=1e-5)
    # outside the 3 sigma window: exactly 0 (x = 9 is 3.2 pixels from 5.8)
    assert target[0, 8, 9] == 0.0 and target[0, 12, 6] == 0.0
    assert target[0].max() <= 1.0 and target[0].max() > 0.9


def test_encode_equals_encode_batch_including_edge_cases():
    codec = HeatmapCodec(S, H, sigma=1.5)
    kp = random_keypoints(np.random.default_rng(3), 4, lo=-8.0, hi=72.0)
    kp[:, ::3, 2] = 0.0  # some invisible
    kp[0, 1, :2] = (-0.5, 10.0)  # on the outer edge: inside
    kp[0, 2, :2] = (63.49, 63.49)  # inside, last pixel
    kp[0, 4, :2] = (64.0, 10.0)  # just off the map
    kp[0, 5, :2] = (np.nan, 3.0)  # NaN never becomes a target
    batch_t, batch_w = codec.encode_batch(torch.from_numpy(kp))
    for b in range(4):
        t, w = codec.encode(kp[b])
        np.testing.assert_allclose(batch_t[b].numpy(), t, atol=1e-6, rtol=0)
        np.testing.assert_array_equal(batch_w[b].numpy(), w)
    assert batch_w[0, 1] == 1 and batch_w[0, 2] == 1 and batch_w[0, 4] == 0 and batch_w[0, 5] == 0
    assert torch.isfinite(batch_t).all()


def test_weight_zero_for_invisible_and_off_map():
    codec = HeatmapCodec(S, H)
    kp = np.full((K, 3), 30.0, np.float32)
    kp[:, 2] = 1.0
    kp[0, 2] = 0.0  # invisible, on the map
    kp[1, :2] = (70.0, 30.0)  # off the map right
    kp[2, :2] = (30.0, -3.0)  # off the map top
    target, weight = codec.encode(kp)
    assert weight[:3].tolist() == [0.0, 0.0, 0.0]
    assert weight[3:].min() == 1.0
    assert not target[:3].any()
    assert (target[3:].reshape(K - 3, -1).max(axis=1) > 0.5).all()


def test_decode_is_batched_and_handles_borders_and_empty_maps():
    codec = HeatmapCodec(S, H, decode="dark")
    hm = torch.zeros(2, K, H, H)
    hm[0, 0, 0, 0] = 1.0  # corner peak: no neighbours on two sides
    hm[0, 1, 5, 15] = 1.0
    hm[0, 1, 5, 14] = 0.5  # border peak with a higher-left neighbour
    hm[1] = torch.rand(K, H, H, generator=torch.Generator().manual_seed(0))  # noise
    for method in ("dark", "quarter", "argmax"):
        coords, maxvals = codec.decode(hm, method=method)
        assert torch.isfinite(coords).all()
        assert coords[0, 0].tolist() == [1.5, 1.5]  # pixel (0, 0) centre in input pixels
        hm_xy = codec.to_heatmap_coords(coords)
        assert hm_xy[0, 1, 1] == 5.0  # y has equal neighbours (0 and 0): no shift
        assert (hm_xy[0, 1, 0] - 15.0).abs() <= 0.25 + 1e-6
        assert maxvals[0, 2] == 0.0  # an empty map has confidence 0
        # refinement never leaves the argmax pixel's neighbourhood on noise
        argmax_xy = codec.to_heatmap_coords(codec.decode(hm, method="argmax")[0])
        assert (hm_xy - argmax_xy).abs().max() <= 1.0
    # per-sample independence: decoding a batch equals decoding each sample alone
    c_all, m_all = codec.decode(hm)
    c_one, m_one = codec.decode(hm[1:])
    torch.testing.assert_close(c_all[1:], c_one)
    torch.testing.assert_close(m_all[1:], m_one)


def test_flip_back_convention():
    codec = HeatmapCodec(S, H)
    kp = random_keypoints(np.random.default_rng(4), 1)[0]
    target = torch.from_numpy(codec.encode(kp)[0])[None]
    # the heatmap of the mirrored input is exactly the flipped-back heatmap: no pixel shift
    mirrored = torch.from_numpy(codec.encode(flip_keypoints(kp, S, codec.flip_index))[0])[None]
    torch.testing.assert_close(codec.flip_back(mirrored), target, atol=1e-6, rtol=0)
    # flip then flip back is the identity
    hm = torch.rand(2, K, H, H, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(codec.flip_back(codec.flip_back(hm)), hm, atol=0, rtol=0)
    # a left-eye peak lands in the right-eye channel, mirrored
    hm = torch.zeros(1, K, H, H)
    hm[0, skeleton.JOINTS.index("left_eye"), 3, 2] = 1.0
    back = codec.flip_back(hm)
    right = skeleton.JOINTS.index("right_eye")
    assert back[0, right, 3, H - 1 - 2] == 1.0 and back.sum() == 1.0


def test_from_config_and_bad_arguments():
    codec = HeatmapCodec.from_config(DataConfig(input_size=64, heatmap_size=16), CodecConfig(sigma=2.0, decode="dark"))
    assert (codec.input_size, codec.heatmap_size, codec.sigma, codec.method, codec.stride) == (64, 16, 2.0, "dark", 4.0)
    with pytest.raises(ConfigError, match="quarter"):
        HeatmapCodec(S, H, decode="soft-argmax")
    with pytest.raises(ConfigError, match="permutation"):
        HeatmapCodec(S, H, flip_index=[0] * K)
    with pytest.raises(ConfigError, match="argmax"):
        codec.decode(torch.zeros(1, K, H, H), method="nope")
