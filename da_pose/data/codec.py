"""One heatmap codec: training targets, decoding, flip test and pseudo-labels.

The dataset (targets), the evaluator (decoding, flip test) and the CC-SSL pseudo-labeller
(decoding, targets on the fly) all call the same :class:`HeatmapCodec`, so that the coordinate
convention cannot drift between them; a round-trip test guards it.

Coordinate convention ("block centre"): pixel centres are integers in both the input image and
the heatmap; with stride ``s = input_size / heatmap_size`` heatmap pixel ``j`` covers input
pixels ``[j s - 0.5, (j + 1) s - 0.5]``, so

    x_hm = (x_in + 0.5) / s - 0.5        x_in = (x_hm + 0.5) * s - 0.5

A horizontal flip of the input (``x_in -> W_in - 1 - x_in``) is then exactly a horizontal flip of
the heatmap (``x_hm -> W_hm - 1 - x_hm``): the flip test needs no pixel shift.

Targets are unnormalised Gaussians with peak 1 and sigma 1 heatmap pixel (CC-SSL, Mu et al.
CVPR 2020, following Newell et al. ECCV 2016), centred at the exact sub-pixel location rather
than at the rounded pixel (the published code rounds, which costs up to half a heatmap pixel of
label noise).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from da_pose.data import skeleton
from da_pose.errors import ConfigError

DECODE_METHODS = ("quarter", "dark", "argmax")


def to_heatmap_coords(xy, stride: float):
    """Input pixels -> heatmap pixels (block-centre convention). numpy or torch, any shape."""
    return (xy + 0.5) / stride - 0.5


def to_input_coords(xy, stride: float):
    """Heatmap pixels -> input pixels (block-centre convention). numpy or torch, any shape."""
    return (xy + 0.5) * stride - 0.5


def _inside(mu, size: int):
    """True where a heatmap location lies on the map: within the area its pixels cover.

    Pixel ``j`` covers ``[j - 0.5, j + 0.5)``, so the map covers ``[-0.5, size - 0.5)``.
    """
    return (mu >= -0.5) & (mu < size - 0.5)


def gaussian_targets_np(mu: np.ndarray, size: int, sigma: float) -> np.ndarray:
    """Truncated unnormalised Gaussians on a square map.

    Args:
        mu: float (K, 2) centres in heatmap pixels.
    Returns:
        float32 (K, size, size), peak value 1 at ``mu`` (exp(0)), exactly 0 where
        ``|x - mu_x| > 3 sigma`` or ``|y - mu_y| > 3 sigma`` (the published 6 sigma + 1 window).
    """
    grid = np.arange(size, dtype=np.float32)
    mu = mu.astype(np.float32)
    d = grid[None, None, :] - mu[:, :, None]  # K, 2, size
    g = np.exp(-(d * d) / np.float32(2.0 * sigma * sigma))
    g = np.where(np.abs(d) <= 3.0 * sigma, g, np.float32(0.0))
    # exp(-(dx^2 + dy^2) / 2s^2) = exp(-dx^2 / 2s^2) * exp(-dy^2 / 2s^2): separable
    return (g[:, 1, :, None] * g[:, 0, None, :]).astype(np.float32)  # K, H, W


def gaussian_targets_torch(mu: torch.Tensor, size: int, sigma: float) -> torch.Tensor:
    """Batched torch version of :func:`gaussian_targets_np`.

    Shape:
        mu: (..., 2) -> (..., size, size), float32, on ``mu``'s device.
    """
    grid = torch.arange(size, dtype=torch.float32, device=mu.device)
    d = grid - mu.to(torch.float32)[..., None]  # ..., 2, size
    g = torch.exp(-(d * d) / (2.0 * sigma * sigma))
    g = torch.where(d.abs() <= 3.0 * sigma, g, torch.zeros((), device=mu.device))
    return g[..., 1, :, None] * g[..., 0, None, :]  # ..., H, W


def gaussian_kernel1d(sigma: float, radius: int | None = None) -> torch.Tensor:
    """Normalised 1-D Gaussian, float32 (2 r + 1,), r = ceil(3 sigma) unless given."""
    if radius is None:
        radius = max(1, math.ceil(3.0 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-(x * x) / (2.0 * sigma * sigma))
    return k / k.sum()


def smooth_heatmaps(heatmaps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian-smooth every channel (zero padding), rescaled to keep each channel's maximum.

    DARK (Zhang et al. CVPR 2020, Sec. 3.2, "distribution modulation"): the network's heatmaps are
    not Gaussian; smoothing with the training kernel makes their log closer to a quadratic so the
    Taylor step is accurate, and the rescale keeps the maximum (the confidence) unchanged.

    Shape:
        heatmaps: (B, K, H, W) -> (B, K, H, W)
    """
    b, k, h, w = heatmaps.shape
    ker = gaussian_kernel1d(sigma).to(heatmaps.device, heatmaps.dtype)
    r = (ker.numel() - 1) // 2
    x = heatmaps.reshape(b * k, 1, h, w)
    x = F.conv2d(x, ker.view(1, 1, 1, -1), padding=(0, r))
    x = F.conv2d(x, ker.view(1, 1, -1, 1), padding=(r, 0))
    x = x.reshape(b, k, h, w)
    old_max = heatmaps.amax(dim=(2, 3), keepdim=True)
    new_max = x.amax(dim=(2, 3), keepdim=True)
    scale = torch.where(new_max > 0, old_max / new_max.clamp_min(1e-12), torch.ones_like(new_max))
    return x * scale


def heatmap_argmax(heatmaps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer location and value of each channel's maximum.

    Shape:
        heatmaps: (B, K, H, W) -> (idx_xy long (B, K, 2), maxvals (B, K))
    """
    b, k, h, w = heatmaps.shape
    maxvals, idx = heatmaps.reshape(b, k, h * w).max(dim=-1)  # B, K
    xy = torch.stack((idx % w, torch.div(idx, w, rounding_mode="floor")), dim=-1)  # B, K, 2
    return xy, maxvals


def _gather_3x3(values: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
    """The 3 x 3 neighbourhood of ``xy`` in every channel; edge pixels are replicated.

    Shape:
        values: (B, K, H, W), xy long (B, K, 2) -> (B, K, 3, 3) indexed [dy + 1, dx + 1]
    """
    b, k, h, w = values.shape
    padded = F.pad(values.reshape(b * k, 1, h, w), (1, 1, 1, 1), mode="replicate")
    padded = padded.reshape(b, k, (h + 2) * (w + 2))
    d = torch.arange(-1, 2, device=values.device)
    ys = (xy[..., 1, None, None] + 1 + d[:, None]).expand(b, k, 3, 3)  # B, K, 3, 3
    xs = (xy[..., 0, None, None] + 1 + d[None, :]).expand(b, k, 3, 3)
    flat = (ys * (w + 2) + xs).reshape(b, k, 9)
    return padded.gather(-1, flat).reshape(b, k, 3, 3)


def refine_quarter(heatmaps: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
    """Shift the integer maximum a quarter pixel toward the higher neighbour, per axis.

    The published refinement (Newell et al. 2016, kept by CC-SSL): it halves the expected
    quantisation error of the argmax. An axis without both neighbours (map border) or with equal
    neighbours is not shifted.

    Shape:
        heatmaps: (B, K, H, W), xy long (B, K, 2) -> float32 (B, K, 2) heatmap pixels
    """
    h, w = heatmaps.shape[-2:]
    n = _gather_3x3(heatmaps.float(), xy)  # B, K, 3, 3
    diff = torch.stack((n[..., 1, 2] - n[..., 1, 0], n[..., 2, 1] - n[..., 0, 1]), dim=-1)
    interior = torch.stack(
        ((xy[..., 0] > 0) & (xy[..., 0] < w - 1), (xy[..., 1] > 0) & (xy[..., 1] < h - 1)), dim=-1
    )
    shift = torch.where(interior, 0.25 * torch.sign(diff), torch.zeros_like(diff))
    return xy.float() + shift


def refine_dark(heatmaps: torch.Tensor, xy: torch.Tensor, sigma: float) -> torch.Tensor:
    """DARK sub-pixel refinement (Zhang et al., "Distribution-Aware Coordinate Representation
    for Human Pose Estimation", CVPR 2020).

    The heatmap is smoothed (:func:`smooth_heatmaps`), and the log of it is expanded to second
    order around the integer maximum m (Eq. 6-7): mu = m - H(m)^-1 g(m), with g and H the
    gradient and Hessian of the log heatmap from central differences. On the log of a Gaussian
    (a quadratic) this is exact. The published code takes second differences over 2 pixels (a
    2-pixel margin); one-pixel differences are equally exact on a quadratic and work one pixel
    closer to the border. Where the neighbourhood leaves the map, where the Hessian is not
    negative definite (no maximum), or where the step would leave the maximum's pixel
    neighbourhood (|offset| > 1, a flat or multi-modal map), the integer location is kept.

    Shape:
        heatmaps: (B, K, H, W), xy long (B, K, 2) -> float32 (B, K, 2) heatmap pixels
    """
    h, w = heatmaps.shape[-2:]
    logh = torch.log(smooth_heatmaps(heatmaps.float(), sigma).clamp_min(1e-10))
    n = _gather_3x3(logh, xy)  # B, K, 3, 3 indexed [dy + 1, dx + 1]
    gx = 0.5 * (n[..., 1, 2] - n[..., 1, 0])
    gy = 0.5 * (n[..., 2, 1] - n[..., 0, 1])
    hxx = n[..., 1, 2] - 2.0 * n[..., 1, 1] + n[..., 1, 0]
    hyy = n[..., 2, 1] - 2.0 * n[..., 1, 1] + n[..., 0, 1]
    hxy = 0.25 * (n[..., 2, 2] - n[..., 0, 2] - n[..., 2, 0] + n[..., 0, 0])
    det = hxx * hyy - hxy * hxy
    safe = torch.where(det.abs() > 1e-12, det, torch.ones_like(det))
    # -H^-1 g with H^-1 = [[hyy, -hxy], [-hxy, hxx]] / det
    ox = -(hyy * gx - hxy * gy) / safe
    oy = -(-hxy * gx + hxx * gy) / safe
    offset = torch.stack((ox, oy), dim=-1)  # B, K, 2
    ok = (
        (xy[..., 0] > 0) & (xy[..., 0] < w - 1) & (xy[..., 1] > 0) & (xy[..., 1] < h - 1)
        & (det > 1e-12) & (hxx < 0)  # negative definite: a maximum
        & (offset.abs() <= 1.0).all(dim=-1)
    )
    return xy.float() + torch.where(ok[..., None], offset, torch.zeros_like(offset))


class HeatmapCodec:
    """Keypoints <-> heatmaps for one input/heatmap geometry.

    Args:
        input_size: side of the square model input, pixels.
        heatmap_size: side of the square heatmaps.
        sigma: Gaussian sigma in heatmap pixels (published: 1).
        decode: ``quarter`` (published), ``dark`` (Zhang et al. 2020) or ``argmax`` (integer).
        num_joints: K.
        flip_index: permutation mapping joint j of a mirrored image to joint ``flip_index[j]``.
    """

    def __init__(
        self,
        input_size: int,
        heatmap_size: int,
        sigma: float = 1.0,
        decode: str = "quarter",
        num_joints: int = skeleton.NUM_JOINTS,
        flip_index=skeleton.FLIP_INDEX,
    ):
        if decode not in DECODE_METHODS:
            raise ConfigError(f"codec.decode: unknown value '{decode}'; valid: {', '.join(DECODE_METHODS)}")
        if input_size <= 0 or heatmap_size <= 0 or sigma <= 0:
            raise ConfigError(
                f"codec: input_size, heatmap_size and sigma must be positive, got "
                f"{input_size}, {heatmap_size}, {sigma}"
            )
        flip_index = np.asarray(flip_index, dtype=np.int64)
        if flip_index.shape != (num_joints,) or sorted(flip_index.tolist()) != list(range(num_joints)):
            raise ConfigError(f"codec: flip_index must be a permutation of {num_joints} joints, got {flip_index}")
        self.input_size = int(input_size)
        self.heatmap_size = int(heatmap_size)
        self.sigma = float(sigma)
        self.method = decode
        self.num_joints = int(num_joints)
        self.flip_index = flip_index
        self.stride = self.input_size / self.heatmap_size

    @classmethod
    def from_config(cls, data_cfg, codec_cfg, num_joints: int = skeleton.NUM_JOINTS,
                    flip_index=skeleton.FLIP_INDEX) -> "HeatmapCodec":
        """Build from :class:`~da_pose.config.DataConfig` and :class:`~da_pose.config.CodecConfig`."""
        return cls(data_cfg.input_size, data_cfg.heatmap_size, sigma=codec_cfg.sigma,
                   decode=codec_cfg.decode, num_joints=num_joints, flip_index=flip_index)

    def __repr__(self) -> str:
        return (f"HeatmapCodec(input_size={self.input_size}, heatmap_size={self.heatmap_size}, "
                f"sigma={self.sigma}, decode={self.method!r}, num_joints={self.num_joints})")

    # ---- conventions

    def to_heatmap_coords(self, xy):
        """Input pixels -> heatmap pixels. numpy or torch (..., 2) (or any shape)."""
        return to_heatmap_coords(xy, self.stride)

    def to_input_coords(self, xy):
        """Heatmap pixels -> input pixels. numpy or torch (..., 2) (or any shape)."""
        return to_input_coords(xy, self.stride)

    # ---- encoding

    def _check_k(self, k: int) -> None:
        if k != self.num_joints:
            raise ValueError(f"keypoints have {k} joints, the codec expects {self.num_joints}")

    def encode(self, keypoints: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Gaussian targets and weights for one sample.

        The weight is 1 only for a visible joint whose Gaussian centre lies on the map: a joint
        off the map has no peak to learn, and its truncated tail on the border would teach the
        model a false maximum at the edge (the published "target weight", visibility x inside
        map). A weight-0 joint gets an all-zero target.

        Shape:
            keypoints: (K, 3) x, y, visible in input pixels ->
            (target float32 (K, h, w), weight float32 (K,))
        """
        kp = np.asarray(keypoints, dtype=np.float32)
        self._check_k(kp.shape[0])
        mu = self.to_heatmap_coords(kp[:, :2])  # K, 2
        weight = (kp[:, 2] > 0) & _inside(mu, self.heatmap_size).all(axis=1)
        target = gaussian_targets_np(np.where(weight[:, None], mu, 0.0), self.heatmap_size, self.sigma)
        target = np.where(weight[:, None, None], target, np.float32(0.0))
        return target.astype(np.float32), weight.astype(np.float32)

    def encode_batch(self, keypoints: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`encode` for a batch, in torch on the keypoints' device (pseudo-labels on the fly).

        Shape:
            keypoints: (B, K, 3) -> (target float32 (B, K, h, w), weight float32 (B, K))
        """
        kp = keypoints.to(torch.float32)
        self._check_k(kp.shape[1])
        mu = self.to_heatmap_coords(kp[..., :2])  # B, K, 2
        weight = (kp[..., 2] > 0) & _inside(mu, self.heatmap_size).all(dim=-1)  # B, K
        mu = torch.where(weight[..., None], mu, torch.zeros_like(mu))
        target = gaussian_targets_torch(mu, self.heatmap_size, self.sigma)  # B, K, h, w
        target = torch.where(weight[..., None, None], target, torch.zeros((), device=kp.device))
        return target, weight.to(torch.float32)

    # ---- decoding

    def decode(self, heatmaps: torch.Tensor, method: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Keypoint locations and confidences from heatmaps, vectorised over B and K.

        Args:
            heatmaps: (B, K, h, w) any float dtype and device.
            method: overrides the codec's decode method (e.g. ``argmax`` for the published
                integer-argmax PCK).
        Returns:
            coords float32 (B, K, 2) in input pixels, maxvals float32 (B, K) (the raw maxima).
        """
        method = method or self.method
        if method not in DECODE_METHODS:
            raise ConfigError(f"codec.decode: unknown value '{method}'; valid: {', '.join(DECODE_METHODS)}")
        if heatmaps.dim() != 4:
            raise ValueError(f"heatmaps must be (B, K, H, W), got shape {tuple(heatmaps.shape)}")
        hm = heatmaps.detach().float()
        xy, maxvals = heatmap_argmax(hm)
        if method == "argmax":
            coords = xy.float()
        elif method == "quarter":
            coords = refine_quarter(hm, xy)
        else:
            coords = refine_dark(hm, xy, self.sigma)
        return self.to_input_coords(coords), maxvals

    # ---- flip test

    def flip_back(self, heatmaps: torch.Tensor) -> torch.Tensor:
        """Heatmaps predicted on a mirrored input -> heatmaps of the original input.

        Mirrors every map horizontally and swaps left/right channels. No pixel shift is needed
        thanks to the block-centre convention (module docstring). Its own inverse.

        Shape:
            heatmaps: (B, K, h, w) -> (B, K, h, w)
        """
        index = torch.as_tensor(self.flip_index, device=heatmaps.device)
        return heatmaps.flip(-1).index_select(1, index)
