"""UniFrame (Kim et al., ECCV 2022; FACTS section 8.2): the mean teacher of
:mod:`da_pose.adapt.mean_teacher` plus two input-level parts.

1. **Style transfer in both directions** (A L373-381). Every step, independently with
   probability ``style_prob`` (0.5) each: the source batch is restyled by the teacher's target
   views, and the teacher's target views are restyled by the source batch, each direction with
   one ``alpha ~ U(0, 1)`` for the whole batch. Backends (``style``):

   - ``adain`` (published): a VGG-19 encoder up to relu4_1 and a decoder (Huang & Belongie,
     ICCV 2017), ``t = alpha AdaIN(f_c, f_s) + (1 - alpha) f_c``, decoded; weights from the files
     the user gives (``adain_encoder``, ``adain_decoder``).
   - ``fourier`` (weight-free; for the embedded benchmark): FDA (Yang & Soatto, CVPR 2020), the
     low-frequency amplitude spectrum of the content moved towards the style's by ``alpha``,
     the content's phase kept.
   - ``none``: no style transfer.

   Style transfer works on [0, 1] pixels: the batch's normalisation is undone before and redone
   after, and the result is clamped to the valid range (UniFrame clamps to ``[-mean, 1 - mean]``).
2. **Keypoint occlusion of the student's input** (A L401-437). For each target sample with at
   least one teacher joint of confidence >= ``occlude_thresh`` (0.9), with probability
   ``occlude_rate`` (0.5): one such joint is picked and a square of +- ``occlude_size`` px at the
   published 256-px scale (scaled by ``data.input_size / 256``) around the teacher's location,
   mapped into the student's view by the exact affine, is overwritten by a random patch of the
   same (student-view) image. The occluded joint stays in the consistency term (the student
   learns to place it from context) unless ``occlude_keep`` is false.

Everything else is :mod:`~da_pose.adapt.mean_teacher` (its views, targets, filter, loss, EMA
callback, teacher state and diagnostics), with UniFrame's values as defaults.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from da_pose.adapt.mean_teacher import (MEAN_TEACHER, MeanTeacherConfig, consistency_mse, round_parts, teacher_targets,
                                        two_views)
from da_pose.adapt.method import AdaptJob, RoundPlan, register, variant
from da_pose.data.codec import heatmap_argmax
from da_pose.data.transforms import apply_affine, compose, invert_affine
from da_pose.errors import ConfigError
from da_pose.train.losses import joints_mse

STYLES = ("adain", "fourier", "none")
PUBLISHED_SIZE = 256  # the input side UniFrame's pixel sizes refer to


@dataclass(frozen=True)
class UniFrameConfig(MeanTeacherConfig):
    """UniFrame (FACTS 8.2, ``train_animal.py`` = A): the mean-teacher keys plus its own."""

    appearance: bool = False  # train_animal.py applies no colour / blur augmentation (FACTS 8.2)
    style: str = "adain"  # adain (published, needs weight files) | fourier | none
    style_prob: float = 0.5  # probability of each direction per step (A L373-381)
    adain_encoder: str = ""  # vgg_normalised.pth (A L122-131): VGG-19, first 31 modules used
    adain_decoder: str = ""  # decoder_animal_0_1.pth.tar (A L122-131)
    # the published nets see mean-subtracted pixels (Normalize(mean, std 1), A L52; the decoder
    # was trained on them, adain/train/train_animal.py): subtracted before, added after
    adain_offset: tuple[float, ...] = (0.3999, 0.3909, 0.3871)
    fourier_beta: float = 0.05  # FDA: frequencies |k| <= round(beta min(H, W)) swapped (FDA uses 0.01-0.09)
    occlude_rate: float = 0.5  # --occlude-rate (A L401-437)
    occlude_thresh: float = 0.9  # --occlude-thresh: teacher confidence of an occludable joint
    occlude_size: float = 10.0  # --occlude-size: half side in px at 256 px input, scaled to ours
    occlude_keep: bool = True  # the occluded joint stays in L_cons (published); false drops it

    def check(self) -> None:
        super().check()
        if self.style not in STYLES:
            raise ConfigError(f"uniframe.style: unknown value '{self.style}'; valid: {', '.join(STYLES)}")
        for key in ("style_prob", "occlude_rate", "occlude_thresh"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ConfigError(f"uniframe.{key} must be in [0, 1], got {getattr(self, key)}")
        if len(self.adain_offset) != 3:
            raise ConfigError(f"uniframe.adain_offset: expected 3 values (RGB), got {list(self.adain_offset)}")
        if not 0.0 < self.fourier_beta <= 0.5 or self.occlude_size < 0:
            raise ConfigError(f"uniframe: fourier_beta must be in (0, 0.5] and occlude_size >= 0, got "
                              f"{self.fourier_beta}, {self.occlude_size}")


# ---------------------------------------------------------------------------------- Fourier (FDA)
def low_frequency_mask(h: int, w: int, beta: float, device=None) -> Tensor:
    """The centred square of frequencies ``|k_y|, |k_x| <= round(beta min(h, w))`` (side about
    ``2 beta min(h, w)``; FDA's square), in unshifted ``fft2`` layout. Symmetric about 0, so a
    real image stays real after its amplitudes are changed there.

    Shape:
        -> bool (h, w)
    """
    b = round(beta * min(h, w))
    ky = (torch.fft.fftfreq(h, device=device) * h).round().abs()
    kx = (torch.fft.fftfreq(w, device=device) * w).round().abs()
    return (ky[:, None] <= b) & (kx[None, :] <= b)


def fourier_mix(content: Tensor, style: Tensor, alpha: float, beta: float) -> Tensor:
    """FDA (Yang & Soatto, CVPR 2020): the content's amplitude spectrum in the low-frequency
    square becomes ``(1 - alpha) |F(content)| + alpha |F(style)|``; its phase is kept. No clamp.

    Shape:
        content, style: (B, C, H, W) -> (B, C, H, W)
    """
    fc, fs = torch.fft.fft2(content.float()), torch.fft.fft2(style.float())
    amp = fc.abs()
    low = low_frequency_mask(*content.shape[-2:], beta, device=content.device)
    amp = torch.where(low, (1.0 - alpha) * amp + alpha * fs.abs(), amp)
    return torch.fft.ifft2(torch.polar(amp, fc.angle())).real


# ---------------------------------------------------------------------------------- AdaIN
def vgg_encoder() -> nn.Sequential:
    """VGG-19 up to relu4_1 in the layout of AdaIN's ``vgg_normalised.pth``: a 1x1 colour conv,
    then reflection-padded 3x3 convs with ReLUs and ceil-mode max pools. Its 31 modules carry the
    file's indices, so the first 31 of the file's state-dict entries load as they are.

    Shape:
        (B, 3, H, W) [0, 1] RGB -> (B, 512, ceil(H / 8), ceil(W / 8))
    """
    layers: list[nn.Module] = [nn.Conv2d(3, 3, 1)]
    c = 3
    for v in (64, 64, "pool", 128, 128, "pool", 256, 256, 256, 256, "pool", 512):
        if v == "pool":
            layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
            continue
        layers += [nn.ReflectionPad2d(1), nn.Conv2d(c, v, 3), nn.ReLU()]
        c = v
    return nn.Sequential(*layers)


def adain_decoder() -> nn.Sequential:
    """The AdaIN decoder: the encoder mirrored, nearest upsampling for the pools, no final ReLU.

    Shape:
        (B, 512, h, w) -> (B, 3, 8h, 8w)
    """
    plan = (256, "up", 256, 256, 256, 128, "up", 128, 64, "up", 64, 3)
    layers: list[nn.Module] = []
    c = 512
    for i, v in enumerate(plan):
        if v == "up":
            layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
            continue
        layers += [nn.ReflectionPad2d(1), nn.Conv2d(c, v, 3)] + ([nn.ReLU()] if i < len(plan) - 1 else [])
        c = v
    return nn.Sequential(*layers)


def adain(content: Tensor, style: Tensor, eps: float = 1e-5) -> Tensor:
    """Adaptive instance normalisation (Huang & Belongie 2017): each channel of ``content``
    renormalised to the mean and standard deviation (over H, W) of ``style``'s.

    Shape:
        content: (B, C, h, w), style: (B, C, h', w') -> (B, C, h, w)
    """
    mc, sc = content.mean((2, 3), keepdim=True), (content.var((2, 3), keepdim=True) + eps).sqrt()
    ms, ss = style.mean((2, 3), keepdim=True), (style.var((2, 3), keepdim=True) + eps).sqrt()
    return (content - mc) / sc * ss + ms


def load_weights(module: nn.Module, path: str, key: str) -> nn.Module:
    """Load a state dict saved with ``torch.save`` (plain, or under ``state_dict``; ``module.``
    prefixes dropped; entries the module lacks ignored) with ``weights_only=True``.

    Raises:
        ConfigError: missing file, not a weights file, or tensors missing or of the wrong shape.
    """
    where = f"uniframe.{key}: '{path}'"
    if not path or not Path(path).is_file():
        raise ConfigError(f"uniframe.{key}: no such file '{path}' (the AdaIN weights: see docs/uniframe.md, "
                          "or set uniframe.style=fourier)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  (any unreadable file is the same user error)
        raise ConfigError(f"{where} is not a readable torch weights file ({type(e).__name__})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ConfigError(f"{where} holds a {type(state).__name__}, not a state dict")
    state = {str(k).removeprefix("module."): v for k, v in state.items()}
    own = module.state_dict()
    missing = [k for k in own if not isinstance(state.get(k), Tensor)]
    wrong = [k for k in own if k not in missing and state[k].shape != own[k].shape]
    if missing or wrong:
        bad = missing[0] if missing else f"{wrong[0]} {tuple(state[wrong[0]].shape)} != {tuple(own[wrong[0]].shape)}"
        raise ConfigError(f"{where} is not the {key.removeprefix('adain_')} of AdaIN: {len(missing)} tensors "
                          f"missing, {len(wrong)} of the wrong shape (first: {bad})")
    module.load_state_dict({k: state[k] for k in own})
    return module


class AdaINStyle(nn.Module):
    """``decoder(alpha AdaIN(enc(c), enc(s)) + (1 - alpha) enc(c))`` on [0, 1] RGB: the nets see
    ``pixels - offset`` (the input the published decoder was trained on) and the offset is added
    back; resized to the content's size when the side is not a multiple of 8. Frozen."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module, offset=(0.0, 0.0, 0.0)):
        super().__init__()
        self.encoder, self.decoder = encoder, decoder
        self.register_buffer("offset", torch.tensor(offset, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)

    @classmethod
    def from_files(cls, encoder_path: str, decoder_path: str, offset=(0.0, 0.0, 0.0)) -> "AdaINStyle":
        return cls(load_weights(vgg_encoder(), encoder_path, "adain_encoder"),
                   load_weights(adain_decoder(), decoder_path, "adain_decoder"), offset)

    @torch.no_grad()
    def forward(self, content: Tensor, style: Tensor, alpha: float) -> Tensor:
        fc, fs = self.encoder(content - self.offset), self.encoder(style - self.offset)
        out = self.decoder(alpha * adain(fc, fs) + (1.0 - alpha) * fc)
        if out.shape[-2:] != content.shape[-2:]:
            out = F.interpolate(out, size=content.shape[-2:], mode="bilinear", align_corners=False)
        return out + self.offset


# ---------------------------------------------------------------------------------- both directions
@torch.no_grad()
def restyle(images: Tensor, style: Tensor, transfer, alpha: float, mean: Tensor, std: Tensor) -> Tensor:
    """``images`` (normalised) in the style of ``style`` (normalised; sample i styled by sample
    i mod len(style)): de-normalise, transfer on [0, 1] pixels in float32 without autocast,
    clamp to [0, 1], normalise again. Pixel values change, geometry does not: labels stay valid.

    Shape:
        images: (B, 3, H, W), style: (B', 3, H, W) -> (B, 3, H, W)
    """
    pair = style[torch.arange(images.shape[0], device=style.device) % style.shape[0]]
    with torch.autocast(images.device.type, enabled=False):
        raw_c = (images.float() * std + mean).clamp(0, 1)
        raw_s = (pair.float() * std + mean).clamp(0, 1)
        out = transfer(raw_c, raw_s, alpha).float().clamp(0, 1)
    return ((out - mean) / std).to(images.dtype)


def restyle_both(source: Tensor, teacher_view: Tensor, transfer, cfg: UniFrameConfig, mean: Tensor,
                 std: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """UniFrame's two independent directions (A L373-381): with probability ``style_prob`` the
    source batch takes the style of the (un-restyled) teacher views, and with probability
    ``style_prob`` the teacher views take the style of the (un-restyled) source batch; one
    ``alpha ~ U(0, 1)`` per direction and batch. Four uniforms are drawn every step from the
    global generator (whatever happens), so a resumed run draws the same."""
    u = torch.rand(4, dtype=torch.float64).tolist()
    new_src, new_tgt = source, teacher_view
    if transfer is not None and u[0] < cfg.style_prob:
        new_src = restyle(source, teacher_view, transfer, u[1], mean, std)
    if transfer is not None and u[2] < cfg.style_prob:
        new_tgt = restyle(teacher_view, source, transfer, u[3], mean, std)
    flags = {"style/source": float(new_src is not source), "style/target": float(new_tgt is not teacher_view)}
    return new_src, new_tgt, {k: torch.tensor(v) for k, v in flags.items()}


# ---------------------------------------------------------------------------------- occlusion
@torch.no_grad()
def teacher_locations(teacher_heatmaps: Tensor, a_ts: Tensor, codec) -> tuple[Tensor, Tensor]:
    """Each joint's argmax in the teacher's view mapped into the student's view by the exact
    affine, and its peak value there (unchanged by any warp, as UniFrame's nearest-neighbour
    warp keeps it): where and whether to occlude.

    Shape:
        teacher_heatmaps: (B, K, h, w); a_ts: (B, 2, 3) teacher -> student input pixels
        -> xy (B, K, 2) student-view input pixels, confidence (B, K)
    """
    peak, confidence = heatmap_argmax(teacher_heatmaps.float())
    return apply_affine(a_ts.double(), codec.to_input_coords(peak.double())), confidence


def occlusion_half(cfg: UniFrameConfig, input_size: int) -> int:
    """Half side of the occluding square at our input size: ``occlude_size`` at 256 px, scaled."""
    return round(cfg.occlude_size * input_size / PUBLISHED_SIZE)


@torch.no_grad()
def occlude_keypoints(images: Tensor, confidence: Tensor, xy: Tensor, cfg: UniFrameConfig,
                      half: int) -> tuple[Tensor, Tensor, Tensor]:
    """UniFrame's keypoint occlusion (A L401-437), in the student's view.

    For each sample with a joint of ``confidence >= occlude_thresh`` whose location lies in the
    image, with probability ``occlude_rate``: one such joint (uniformly), rows and columns
    ``[round(p) - half, round(p) + half)`` around its location ``p`` (clipped to the image)
    overwritten by a patch of that size from a uniformly random place of the same image. Four
    uniforms per sample are drawn from the global generator every call.

    Args:
        confidence: the teacher's peak values in its own view (:func:`teacher_locations`).
        xy: the teacher's joint locations in the student view's input pixels.
    Returns:
        images (a copy), hidden bool (B, K): joints whose rounded location lies in a pasted
        square, occluded bool (B,).
    Shape:
        images: (B, C, S, S); confidence: (B, K); xy: (B, K, 2)
    """
    b, _, h, w = images.shape
    u = torch.rand(b, 4, dtype=torch.float64).tolist()
    out = images.clone()
    pos = torch.floor(xy.float() + 0.5).long().cpu()  # B, K, 2 rounded input pixels
    hidden = torch.zeros(confidence.shape, dtype=torch.bool)
    inside = ((pos >= 0) & (pos < torch.tensor([w, h]))).all(-1)  # B, K
    for i in range(b):
        eligible = ((confidence[i].cpu() >= cfg.occlude_thresh) & inside[i]).nonzero().flatten()
        if len(eligible) == 0 or u[i][0] >= cfg.occlude_rate or half <= 0:
            continue
        k = int(eligible[min(int(u[i][1] * len(eligible)), len(eligible) - 1)])
        x0, x1 = max(int(pos[i, k, 0]) - half, 0), min(int(pos[i, k, 0]) + half, w)
        y0, y1 = max(int(pos[i, k, 1]) - half, 0), min(int(pos[i, k, 1]) + half, h)
        if x1 <= x0 or y1 <= y0:
            continue
        sx, sy = int(u[i][2] * (w - (x1 - x0) + 1)), int(u[i][3] * (h - (y1 - y0) + 1))
        out[i, :, y0:y1, x0:x1] = images[i, :, sy:sy + y1 - y0, sx:sx + x1 - x0]
        px, py = pos[i, :, 0], pos[i, :, 1]
        hidden[i] = (px >= x0) & (px < x1) & (py >= y0) & (py < y1)
    hidden = hidden.to(confidence.device)
    return out, hidden, hidden.any(dim=1)


# ---------------------------------------------------------------------------------- the step
def uniframe_step(model, batch: dict, teacher, codec, mean: Tensor, std: Tensor, cfg: UniFrameConfig,
                  transfer=None) -> dict[str, Tensor]:
    """The mean-teacher step (:func:`~da_pose.adapt.mean_teacher.mean_teacher_step`) with the
    style transfer of source and teacher views before the teacher runs, and the occlusion of the
    student's view from the teacher's confident joints before the student runs. Pure.

    Shape:
        batch["source"]: labelled items; batch["target"]["image"]: (B, 3, S, S) (labels unused)
    """
    src, base = batch["source"], batch["target"]["image"]
    s = base.shape[-1]
    a_t, a_s, x_t, x_s = two_views(base, cfg, mean, std)
    src_img, x_t, style_stats = restyle_both(src["image"], x_t, transfer, cfg, mean, std)
    teacher.train()
    with torch.no_grad():
        t_hm = teacher(x_t).heatmaps[-1]  # B, K, h, w in the teacher's view
    a_ts = compose(a_s, invert_affine(a_t))  # teacher-view -> student-view input pixels
    target, conf, kept, peak = teacher_targets(t_hm, a_ts, codec, cfg)
    where, sure = teacher_locations(t_hm, a_ts, codec)
    x_s, hidden, occluded = occlude_keypoints(x_s, sure, where, cfg, occlusion_half(cfg, s))
    if not cfg.occlude_keep:
        kept = kept & ~hidden
    n = src_img.size(0)
    out = model(torch.cat([src_img, x_s]))
    loss_src = joints_mse([h[:n] for h in out.heatmaps], src["target"], src["target_weight"])
    loss_cons = consistency_mse([h[n:] for h in out.heatmaps], target, kept)
    return {"loss": loss_src + cfg.weight * loss_cons, "loss/src": loss_src.detach(), "loss/cons": loss_cons.detach(),
            "pseudo/kept_fraction": kept.float().mean(), "pseudo/mean_confidence": conf.float().mean(),
            "occlude/fraction": occluded.float().mean(), **style_stats,
            "_label_xy": apply_affine(invert_affine(a_s), codec.to_input_coords(peak.double())), "_kept": kept}


# ---------------------------------------------------------------------------------- the method
def style_transfer(cfg: UniFrameConfig, device) -> object | None:
    """The ``transfer(content, style, alpha)`` callable of ``cfg.style`` (None for ``none``)."""
    if cfg.style == "adain":
        return AdaINStyle.from_files(cfg.adain_encoder, cfg.adain_decoder, cfg.adain_offset).to(device).eval()
    if cfg.style == "fourier":
        return partial(fourier_mix, beta=cfg.fourier_beta)
    return None


def _check(cfg) -> None:
    """AdaIN needs its two weight files: refused before the run opens when either is missing."""
    c = cfg.section("uniframe")
    if c.style != "adain":
        return
    for key in ("adain_encoder", "adain_decoder"):
        path = getattr(c, key)
        if not path or not Path(path).is_file():
            raise ConfigError(f"uniframe.{key}: no such file '{path}' (style adain needs the published AdaIN "
                              "weights, see docs/uniframe.md; or set uniframe.style=fourier)")


def _setup(job: AdaptJob) -> None:
    MEAN_TEACHER.setup(job)  # the teacher and the target images its views are cut from
    job.state["style"] = style_transfer(job.section, job.ctx.device)


def _plan_round(job: AdaptJob, r: int) -> RoundPlan:
    return RoundPlan(*round_parts(job, uniframe_step, transfer=job.state["style"]),
                     desc=f"uniframe ({job.section.style})")


def _tags(job: AdaptJob) -> dict:
    return {**MEAN_TEACHER.tags(job), "style": job.section.style}


UNIFRAME = register(variant(
    MEAN_TEACHER, "uniframe", "UniFrame (mean teacher, style transfer, keypoint occlusion)", section="uniframe",
    config=UniFrameConfig, setup=_setup, plan_round=_plan_round, check=_check, tags=_tags))
