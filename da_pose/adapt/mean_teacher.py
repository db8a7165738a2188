"""Mean teacher: an EMA teacher labels a weak view of each target image, the student learns
them on a strong view (Tarvainen & Valpola 2017; as UniFrame, Kim et al. ECCV 2022, runs it for
animal pose: FACTS section 8.2; UDA-Animal's teacher term: FACTS section 8.1).

Every step, for a batch of source images (labelled) and one of target images (labels hidden):

1. **Two views** of each target crop, each with its own random affine about the crop centre
   (rotation, shear along x, integer translation, scale; UniFrame's defaults, FACTS 8.2): the
   teacher's weak view, and the student's strong view, which also gets the appearance
   augmentation of CC-SSL's T_beta (:func:`~da_pose.data.transforms.random_appearance`).
2. **Teacher targets**: the teacher (no gradient) predicts on its view; its heatmaps are mapped
   into the student's view with the exact affine between the two views
   (:func:`~da_pose.data.transforms.warp_heatmaps`, the warp CC-SSL's equivariance uses). A
   joint's confidence is the maximum of that map; ``rectify`` replaces the map by a peak-1
   Gaussian (the codec's sigma) at its argmax (UniFrame).
3. **Filter**: ``median`` keeps joints above the batch-wide ``mask_ratio`` quantile of the
   confidences (UniFrame: the median), ``threshold`` those above a fixed value, ``topk`` the most
   confident ``topk`` fraction of each image's joints.
4. **Loss** = source joints MSE + ``weight`` x the consistency MSE on kept joints (UniFrame's
   L_c: the joints MSE without its 0.5 factor, so the ratio to L_s is the published one).
5. **EMA** after each optimizer step (a trainer callback): teacher parameters
   ``t = alpha t + (1 - alpha) s``, alpha fixed (UniFrame, 0.999) or the ramp
   ``min(1 - 1/(n + 1), alpha)`` of UDA-Animal (``ema_ramp``; n = 1 at the first update).

BatchNorm: only parameters are averaged; the teacher runs in train mode, so its normalisation
uses the statistics of its own batch and its running buffers follow its own forwards (as both
published codes do). The teacher is a state module: saved and resumed with the student.

The run evaluates, selects and reports the teacher (``report: teacher``, as UniFrame,
UDA-Animal and ScarceNet evaluate theirs; ``student`` reports the student), through the method
interface's ``reported`` hook (:func:`reported_teacher`). The label accuracy of kept teacher joints is a diagnostic callback that alone reads the
target train labels (``pseudo/acc_kept``, ``pseudo/acc_rejected``), never training or selection.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from torch import Tensor, nn

from da_pose.adapt.method import AdaptJob, Method, RoundPlan, register
from da_pose.data.codec import gaussian_targets_torch, heatmap_argmax
from da_pose.data.skeleton import NUM_JOINTS
from da_pose.data.transforms import (apply_affine, compose, invert_affine, random_appearance, warp_batch,
                                     warp_heatmaps)
from da_pose.errors import ConfigError
from da_pose.eval.pck import crop_normalizer, joint_hits
from da_pose.models.factory import build_model
from da_pose.train.losses import MSE_FACTOR, joints_mse
from da_pose.train.trainer import Callback, epoch_seed

FILTERS = ("median", "threshold", "topk")


@dataclass(frozen=True)
class MeanTeacherConfig:
    """Mean teacher (FACTS 8.2 = UniFrame ``train_animal.py``; 8.1 = UDA-Animal)."""

    alpha: float = 0.999  # EMA momentum, fixed (UniFrame OldWeightEMA, FACTS 8.2)
    ema_ramp: bool = False  # alpha_n = min(1 - 1/(n + 1), alpha) (UDA-Animal U L34-39, FACTS 8.1)
    weight: float = 1.0  # L = L_src + weight * L_cons (UniFrame A L459)
    filter: str = "median"  # median (UniFrame) | threshold | topk
    mask_ratio: float = 0.5  # median: joints at or below this batch quantile are dropped (--mask-ratio 0.5)
    threshold: float = 0.5  # threshold: keep confidence > threshold
    topk: float = 0.5  # topk: fraction of each image's joints kept
    rectify: bool = True  # target = peak-1 Gaussian at the teacher's argmax (UniFrame U L77-109)
    rotate: float = 60.0  # degrees, uniform +- (UniFrame Tk L397-412)
    shear: float = 30.0  # degrees along x, uniform +-
    translate: float = 0.05  # fraction of the input side, uniform +-, rounded to whole pixels
    scale: tuple[float, ...] = (0.6, 1.3)  # content magnification, uniform (> 1 zooms in)
    teacher_affine: bool = True  # False: the teacher sees the plain crop (UDA-Animal's x_t)
    appearance: bool = True  # strong view: noise / blur / contrast / colour (not in UniFrame)
    appearance_prob: float = 0.5  # probability of each appearance step
    base_aug: bool = False  # views of the augmented target crop (False: the plain crop, UniFrame)
    steps_per_epoch: int = 0  # 0 = one pass over the larger of source and target
    diagnostics: bool = True  # log the label accuracy of kept teacher joints (target train labels)
    report: str = "teacher"  # the network evaluated and reported: teacher (published) | student

    def check(self) -> None:
        check_report("mean_teacher", self.report)
        if self.filter not in FILTERS:
            raise ConfigError(f"mean_teacher.filter: unknown value '{self.filter}'; valid: {', '.join(FILTERS)}")
        if not 0.0 <= self.alpha < 1.0:
            raise ConfigError(f"mean_teacher.alpha must be in [0, 1), got {self.alpha}")
        if not 0.0 <= self.mask_ratio < 1.0 or not 0.0 < self.topk <= 1.0:
            raise ConfigError(f"mean_teacher: mask_ratio must be in [0, 1) and topk in (0, 1], got "
                              f"{self.mask_ratio}, {self.topk}")
        if len(self.scale) != 2 or not 0 < self.scale[0] <= self.scale[1]:
            raise ConfigError(f"mean_teacher.scale: expected [min, max] with 0 < min <= max, got {list(self.scale)}")
        for key in ("weight", "rotate", "shear", "translate", "appearance_prob", "steps_per_epoch"):
            if getattr(self, key) < 0:
                raise ConfigError(f"mean_teacher.{key} must be >= 0, got {getattr(self, key)}")


REPORTS = ("teacher", "student")


def check_report(section: str, value: str) -> None:
    if value not in REPORTS:
        raise ConfigError(f"{section}.report: unknown value '{value}'; valid: {', '.join(REPORTS)}")


def reported_teacher(job) -> str | None:
    """The method interface's ``reported`` hook of the mean-teacher family: the EMA teacher when
    the section's ``report`` is ``teacher`` and the run has one (UDA-Animal without its mean
    teacher has none), else None (the student)."""
    return "teacher" if job.section.report == "teacher" and "teacher" in job.state_modules else None


# ---------------------------------------------------------------------------------- the teacher
class EMATeacher(nn.Module):
    """A copy of the student whose parameters follow the student's by an exponential moving
    average; ``updates`` (a buffer, so it is checkpointed) counts the averaging steps."""

    def __init__(self, model: nn.Module, alpha: float = 0.999, ramp: bool = False):
        super().__init__()
        self.model = model
        self.alpha = float(alpha)
        self.ramp = bool(ramp)
        self.register_buffer("updates", torch.zeros((), dtype=torch.int64))

    def forward(self, x: Tensor):
        return self.model(x)

    def momentum(self) -> float:
        """The alpha of the next update: fixed, or ``min(1 - 1/(n + 1), alpha)`` for update n >= 1."""
        if not self.ramp:
            return self.alpha
        n = int(self.updates) + 1
        return min(1.0 - 1.0 / (n + 1), self.alpha)

    @torch.no_grad()
    def copy_from(self, student: nn.Module) -> None:
        """Teacher = student (parameters and buffers); the update count restarts."""
        self.model.load_state_dict(student.state_dict())
        self.updates.zero_()

    @torch.no_grad()
    def update(self, student: nn.Module) -> float:
        """``t = alpha t + (1 - alpha) s`` for every parameter (buffers untouched). Returns alpha."""
        alpha = self.momentum()
        mine = dict(self.model.named_parameters())
        for name, p in student.named_parameters():
            mine[name].mul_(alpha).add_(p.detach().to(mine[name].dtype), alpha=1.0 - alpha)
        self.updates += 1
        return alpha


# ---------------------------------------------------------------------------------- views
def view_affines(batch: int, cfg: MeanTeacherConfig, size: int, device=None) -> Tensor:
    """Random input -> input affines about the crop centre ``c``: ``p' = c + t + s R(r) Sh(h) (p - c)``.

    r uniform in +- ``rotate`` degrees (positive turns the content counter-clockwise on screen, as
    :func:`~da_pose.data.transforms.crop_affine`), Sh a shear ``x += tan(h) y`` with h uniform in
    +- ``shear``, t uniform in +- ``translate`` x size per axis rounded to whole pixels, s uniform
    in ``scale`` (> 1 zooms in). Draws from torch's global generator, which the trainer reseeds
    at every epoch from ``(seed, epoch)``: a resumed run draws the same views.

    Shape:
        -> float64 (B, 2, 3)
    """
    u = torch.rand(batch, 5, dtype=torch.float64)
    rot = torch.deg2rad((2 * u[:, 0] - 1) * cfg.rotate)
    shear = torch.tan(torch.deg2rad((2 * u[:, 1] - 1) * cfg.shear))
    shift = torch.round((2 * u[:, 2:4] - 1) * cfg.translate * size)  # B, 2
    scale = cfg.scale[0] + (cfg.scale[1] - cfg.scale[0]) * u[:, 4]
    cos, sin = torch.cos(rot), torch.sin(rot)
    rotation = torch.stack((torch.stack((cos, sin), -1), torch.stack((-sin, cos), -1)), -2)  # B, 2, 2
    shearing = torch.eye(2, dtype=torch.float64).repeat(batch, 1, 1)
    shearing[:, 0, 1] = shear
    lin = scale[:, None, None] * rotation @ shearing  # B, 2, 2
    mid = torch.full((batch, 2, 1), (size - 1) / 2.0, dtype=torch.float64)
    t = mid[..., 0] + shift - (lin @ mid)[..., 0]  # B, 2
    return torch.cat((lin, t[..., None]), dim=-1).to(device)


def identity_affines(batch: int, device=None) -> Tensor:
    return torch.eye(2, 3, dtype=torch.float64, device=device).repeat(batch, 1, 1)


def strong_view(images: Tensor, a: Tensor, cfg: MeanTeacherConfig, mean: Tensor, std: Tensor) -> Tensor:
    """The student's view: the affine, then (on [0, 1] pixels) the appearance augmentation.

    Shape:
        images: (B, 3, S, S) normalised; a: (B, 2, 3) -> (B, 3, S, S) normalised
    """
    x = warp_batch(images, a, images.shape[-1])
    if cfg.appearance and cfg.appearance_prob > 0:
        raw = (x * std + mean).clamp(0, 1)
        x = (random_appearance(raw, None, p=cfg.appearance_prob) - mean) / std
    return x


# ---------------------------------------------------------------------------------- targets
def confidence_mask(confidence: Tensor, cfg: MeanTeacherConfig) -> Tensor:
    """Which teacher joints the consistency term keeps (``cfg.filter``).

    ``median``: confidence > the batch-wide ``mask_ratio`` quantile (the k-th smallest of all
    B x K values, k = int(mask_ratio B K), as UniFrame's kthvalue); ``threshold``: confidence >
    ``threshold``; ``topk``: the round(topk K) (at least 1) most confident joints of each image.

    Shape:
        confidence: (B, K) -> bool (B, K)
    """
    b, k = confidence.shape
    if cfg.filter == "threshold":
        return confidence > cfg.threshold
    if cfg.filter == "topk":
        n = min(k, max(1, round(cfg.topk * k)))
        idx = confidence.topk(n, dim=1).indices  # B, n
        return torch.zeros_like(confidence, dtype=torch.bool).scatter_(1, idx, True)
    rank = int(cfg.mask_ratio * b * k)
    if rank < 1:
        return torch.ones_like(confidence, dtype=torch.bool)
    cut = confidence.flatten().float().kthvalue(rank).values
    return confidence > cut


@torch.no_grad()
def teacher_targets(teacher_heatmaps: Tensor, a_ts: Tensor, codec, cfg: MeanTeacherConfig):
    """The teacher's heatmaps in the student's view, their confidences and the kept joints.

    Args:
        teacher_heatmaps: predicted on the teacher's view.
        a_ts: teacher-view input pixels -> student-view input pixels.
    Returns:
        target (B, K, h, w) (rectified or warped), confidence (B, K) (max of the warped map),
        kept bool (B, K), peak (B, K, 2) the target's integer argmax in heatmap pixels.
    """
    warped = warp_heatmaps(teacher_heatmaps.float(), a_ts, codec.input_size)  # B, K, h, w
    peak, confidence = heatmap_argmax(warped)
    target = gaussian_targets_torch(peak.float(), warped.shape[-1], codec.sigma) if cfg.rectify else warped
    return target, confidence, confidence_mask(confidence, cfg), peak


def consistency_mse(heatmaps, target: Tensor, kept: Tensor) -> Tensor:
    """UniFrame's L_c (FACTS 8.2, Lo L119-132): mean over b, k, h, w of m_bk (S - T)^2, summed over
    stacks; :func:`joints_mse` with the kept mask as weight, without its 0.5 factor."""
    return joints_mse(heatmaps, target, kept.to(target.dtype)) / MSE_FACTOR


# ---------------------------------------------------------------------------------- the step
def two_views(base: Tensor, cfg: MeanTeacherConfig, mean: Tensor, std: Tensor):
    """The teacher's weak and the student's strong view of each target crop, with their affines
    (crop input pixels -> view input pixels): ``(a_t, a_s, x_t, x_s)``.

    Shape:
        base: (B, 3, S, S) -> a_t, a_s: (B, 2, 3); x_t, x_s: (B, 3, S, S)
    """
    b, s, dev = base.shape[0], base.shape[-1], base.device
    a_t = view_affines(b, cfg, s, dev) if cfg.teacher_affine else identity_affines(b, dev)
    a_s = view_affines(b, cfg, s, dev)
    x_t = warp_batch(base, a_t, s) if cfg.teacher_affine else base
    return a_t, a_s, x_t, strong_view(base, a_s, cfg, mean, std)


def mean_teacher_step(model, batch: dict, teacher: EMATeacher, codec, mean: Tensor, std: Tensor,
                      cfg: MeanTeacherConfig) -> dict[str, Tensor]:
    """L = L_src + weight L_cons, pure (the EMA update is :class:`EMACallback`'s).

    Source and student views go through the student in one forward pass (one BatchNorm
    statistic, as the pseudo-label step); the teacher runs without gradient in train mode.

    Shape:
        batch["source"]: labelled items; batch["target"]["image"]: (B, 3, S, S) (labels unused)
    """
    src = batch["source"]
    a_t, a_s, x_t, x_s = two_views(batch["target"]["image"], cfg, mean, std)
    teacher.train()
    with torch.no_grad():
        t_hm = teacher(x_t).heatmaps[-1]  # B, K, h, w in the teacher's view
    target, conf, kept, peak = teacher_targets(t_hm, compose(a_s, invert_affine(a_t)), codec, cfg)
    n = src["image"].size(0)
    out = model(torch.cat([src["image"], x_s]))
    loss_src = joints_mse([h[:n] for h in out.heatmaps], src["target"], src["target_weight"])
    loss_cons = consistency_mse([h[n:] for h in out.heatmaps], target, kept)
    # the labels the student learns, back in the (un-viewed) target crop's input pixels
    label_xy = apply_affine(invert_affine(a_s), codec.to_input_coords(peak.double()))
    return {"loss": loss_src + cfg.weight * loss_cons, "loss/src": loss_src.detach(), "loss/cons": loss_cons.detach(),
            "pseudo/kept_fraction": kept.float().mean(), "pseudo/mean_confidence": conf.float().mean(),
            "_label_xy": label_xy, "_kept": kept}


# ---------------------------------------------------------------------------------- callbacks
class EMACallback(Callback):
    """After every optimizer step: the teacher's EMA update from the (unwrapped) student."""

    def __init__(self, teacher: EMATeacher):
        self.teacher = teacher

    def on_step_end(self, trainer, batch, out):
        return {"ema/alpha": self.teacher.update(trainer.model)}


class TeacherLabelAccuracy(Callback):
    """DIAGNOSTIC ONLY: PCK@0.05 (crop normaliser, percent) of the teacher labels the student was
    trained on this step, kept and rejected, against the target train labels. The only reader of
    those labels; its numbers are logged, never used by the loss or any selection."""

    def __init__(self, records, thr: float = 0.05):
        self.gt = np.stack([r.keypoints for r in records]).astype(np.float64)  # N, K, 3 original px
        self.norm = crop_normalizer([r.side for r in records])
        self.thr = thr

    def on_step_end(self, trainer, batch, out):
        tgt = batch["target"]
        idx = tgt["index"].cpu().numpy()
        back = invert_affine(tgt["affine"].double())  # crop input px -> original px
        xy = apply_affine(back.to(out["_label_xy"].device), out["_label_xy"]).cpu().numpy()
        kept = out["_kept"].cpu().numpy()
        gt = self.gt[idx]
        hits, counted = joint_hits(xy, gt, gt[..., 2] > 0, self.norm[idx], self.thr)
        stats = {}
        for name, mask in (("kept", kept & counted), ("rejected", ~kept & counted)):
            stats[f"pseudo/acc_{name}"] = float(100.0 * hits[mask].mean()) if mask.any() else math.nan
        return stats


# ---------------------------------------------------------------------------------- the method
def _setup(job: AdaptJob) -> None:
    """The teacher (a model of the run's architecture; the student's weights arrive in
    ``on_build``) and the target images its views are cut from."""
    c = job.section
    plain = job.hidden_labels(job.data["target_eval"])  # labels zeroed: nothing of them is seen
    job.state["target_base"] = job.data["target"] if c.base_aug else plain
    job.check_batchable({"source": job.data["source"], "target": job.state["target_base"]})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(epoch_seed(job.cfg.seed, 515_151))
        model = build_model(job.cfg.model, NUM_JOINTS)
    job.state_modules["teacher"] = EMATeacher(model, c.alpha, c.ema_ramp)


def _on_build(job: AdaptJob) -> None:
    """A new run's teacher starts as the student (the init checkpoint); a resumed one keeps its own."""
    if not job.resumed:
        job.state_modules["teacher"].copy_from(job.model)


def round_parts(job: AdaptJob, step_fn, **extra):
    """``(step, batches)`` of a mean-teacher round: ``step_fn`` with the teacher, the codec and the
    target's normalisation bound, over mixed source and target batches."""
    c, ds = job.section, job.state["target_base"]
    data = {"source": job.data["source"], "target": ds}
    steps = job.steps_per_epoch(max(len(d) for d in data.values()), c.steps_per_epoch)
    mean = torch.tensor(ds.mean, dtype=torch.float32, device=job.ctx.device).view(1, 3, 1, 1)
    std = torch.tensor(ds.std, dtype=torch.float32, device=job.ctx.device).view(1, 3, 1, 1)
    step = partial(step_fn, teacher=job.state_modules["teacher"], codec=job.codec, mean=mean, std=std, cfg=c, **extra)
    return step, job.mixed(data, steps)


def _plan_round(job: AdaptJob, r: int) -> RoundPlan:
    return RoundPlan(*round_parts(job, mean_teacher_step), desc="mean teacher")


def _callbacks(job: AdaptJob) -> list[Callback]:
    out: list[Callback] = [EMACallback(job.state_modules["teacher"])]
    if job.section.diagnostics:
        out.append(TeacherLabelAccuracy(job.data["target_eval"].records))
    return out


def _tags(job: AdaptJob) -> dict:
    c = job.section
    return {"mean_teacher_filter": c.filter, "ema": "ramp" if c.ema_ramp else "fixed"}


MEAN_TEACHER = register(Method(
    "mean_teacher", "mean teacher (EMA teacher, weak/strong views, confidence filter)", section="mean_teacher",
    config=MeanTeacherConfig, needs=("source", "target"), setup=_setup, on_build=_on_build, plan_round=_plan_round,
    callbacks=_callbacks, tags=_tags, reported=reported_teacher))
