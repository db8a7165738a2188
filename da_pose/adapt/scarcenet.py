"""ScarceNet (Li & Lee, "ScarceNet: Animal Pose Estimation with Scarce Annotations", CVPR 2023;
FACTS section 8.4): its additions on the mean teacher, mapped onto our models and data.

1. **Initial pseudo-labels**, made once by CC-SSL's labeller (:mod:`da_pose.adapt.ccssl`) from the
   init checkpoint at UDA-Animal's settings (:func:`~da_pose.adapt.uda_animal.label_settings`): 5
   views, no temporal check, joints above the 40th confidence percentile kept (top 60 %).
2. **Small-loss selection** every step: of the student's per-joint MSEs against the initial labels
   (on the student view), the ``floor(r N_visible)`` smallest across the whole batch are learnt,
   ``r(e) = clip(0.5 (1 + cos(pi min(e, 30) / 30)), 0.8, 1)``.
3. **Agreement check and re-labelling**: the student (no gradient) predicts on a weak view v2 and
   on the un-augmented crop; a joint agrees when v2's argmax lies within ``dist_thre`` heatmap
   pixels of the un-augmented argmax mapped into v2 by the exact affine. Agreeing joints that are
   not small-loss (initially rejected ones included) learn a Gaussian at the un-augmented
   prediction mapped into the student's view.
4. **Consistency** with an EMA teacher on the un-augmented crop: a Gaussian at the teacher's argmax
   mapped into the student's view, weights = the initial visibility, coefficient
   ``consistency exp(-5 (1 - min(e, 10) / 10)^2)`` (published 2); EMA ``min(1 - 1/(t + 1), 0.999)``
   with t from 0, so the teacher equals the student after the first step.
5. **Strong student view**: scale, rotation, flip, then RandAugmentMC and six grey cutouts
   (:mod:`da_pose.data.randaugment`).

**Labelled target images** come from the semi-supervised protocol (``data.target_labels``,
:mod:`da_pose.adapt.semi`). With ``labels: mixed`` (published) they stay in the target split's
batches at their natural ratio, their ground truth replaces the pseudo-labels, and the supervised
term weighs them by ``true_label_w`` (published 2, multiplying the heatmaps as the published loss
does, i.e. x4 on the squared error); the shared ``semi`` term is then not added on top.
``labels: shared`` leaves them to the shared term (``semi.weight``, a separate batch every step)
and treats every target image here as unlabelled. Without labels ScarceNet is pure pseudo-label
plus consistency learning; with ``source_weight`` > 0 (default 1) the source joints MSE is added,
our setting's labelled domain (the published one has no synthetic source).

"Epochs" of the published schedules are schedule epochs: the run's steps map linearly onto
``schedule_epochs`` (published 150) with :class:`~da_pose.adapt.uda_animal.Clock`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from torch import Tensor

from da_pose.adapt.mean_teacher import EMACallback, EMATeacher, check_report, reported_teacher
from da_pose.adapt.method import AdaptJob, Method, RoundPlan, register
from da_pose.adapt.pseudo_labels import PseudoLabels
from da_pose.adapt.uda_animal import Clock, consistency_weight, flip_rotate_affines
from da_pose.adapt.uda_animal import initial_labels as uda_initial_labels
from da_pose.data import labelled as labelled_mod
from da_pose.data.codec import heatmap_argmax
from da_pose.data.randaugment import draw_plan, rand_augment, random_cutout
from da_pose.data.skeleton import NUM_JOINTS
from da_pose.data.transforms import apply_affine, compose, warp_batch
from da_pose.errors import ConfigError
from da_pose.models.factory import build_model
from da_pose.train.losses import joints_mse
from da_pose.train.trainer import Callback, epoch_seed

LABEL_MODES = ("mixed", "shared")


@dataclass(frozen=True)
class ScarceNetConfig:
    """ScarceNet (FACTS 8.4; TM = tools/train_mt_part.py, F1 = lib/core/function1.py, DS =
    kpt_2d_base_mt_pseudol_v3.py, UT = lib/utils/utils.py)."""

    # initial pseudo-labels, generated once (TM L290-323; consistency.py; DS L86-109)
    label_views: int = 5  # --num_transforms
    label_flip: bool = False  # CC-SSL's random view flip (published flip-averages every view)
    temporal: bool = False  # no optical-flow check
    keep: float = 0.6  # --percentage 0.4: above the 40th percentile
    # small-loss selection (loss.py L46-62; UT L252-261)
    min_rate: float = 0.8  # --minrate
    rate_rampdown: float = 30.0  # --topkrampdown (epochs)
    # agreement check and re-labelling (F1 L61-117)
    relabel: bool = True
    dist_thre: float = 0.6  # --dist_thre, heatmap pixels
    # labelled target images (data.target_labels)
    labels: str = "mixed"  # mixed (published: in the target batch, true_label_w) | shared (the semi term)
    true_label_w: float = 2.0  # --true_label_w (multiplies the heatmaps)
    # consistency with the EMA teacher (TM L90-91; UT L209-249)
    consistency: float = 2.0  # --const_weight
    consistency_rampup: float = 10.0  # --consistency_rampup (epochs)
    alpha: float = 0.999  # reached by the ramp min(1 - 1/(t + 1), alpha), t from 0
    # student view (DS L320-460): scale clip(1 + 0.5 N, 0.5, 1.5), rotation clip(40 N, +-80) p 0.6, flip
    scale: float = 0.5
    scale_clamp: float = 0.5
    rotate: float = 40.0
    rotate_clamp: float = 80.0
    rotate_prob: float = 0.6
    flip_prob: float = 0.5
    # weak view v2 (DS L388-397): scale clip(1 + 0.1 N, 0.9, 1.1), rotation clip(20 N, +-40) p 0.6, flip
    weak_scale: float = 0.1
    weak_rotate: float = 20.0
    weak_rotate_clamp: float = 40.0
    # RandAugmentMC + cutout (augmentation_pool.py; TM --n 2 --m 10 --nholes 6 --length 32)
    rand_augment: bool = True
    ra_ops: int = 2
    ra_magnitude: int = 10  # magnitudes 1 .. m - 1
    ra_prob: float = 0.5
    cutout_prob: float = 0.5
    cutout_holes: int = 6
    cutout_size: int = 32  # at 256 px input; scaled with data.input_size
    # our setting
    source_weight: float = 1.0  # source joints MSE (0: the published semi-supervised recipe)
    schedule_epochs: float = 150.0  # --epochs: the run's steps map onto this many published epochs
    steps_per_epoch: int = 0  # 0 = one pass over the larger of source and target

    report: str = "teacher"  # the network evaluated and reported: teacher (published) | student

    def check(self) -> None:
        check_report("scarcenet", self.report)
        if self.labels not in LABEL_MODES:
            raise ConfigError(f"scarcenet.labels: unknown value '{self.labels}'; valid: {', '.join(LABEL_MODES)}")
        if not 0.0 < self.keep <= 1.0 or self.label_views < 1:
            raise ConfigError(f"scarcenet: keep must be in (0, 1] and label_views >= 1, got {self.keep}, "
                              f"{self.label_views}")
        if not 0.0 <= self.min_rate <= 1.0 or not 0.0 <= self.alpha < 1.0 or self.schedule_epochs <= 0:
            raise ConfigError("scarcenet: min_rate must be in [0, 1], alpha in [0, 1), schedule_epochs > 0")
        if not 0.0 <= self.scale_clamp < 1.0 or self.ra_magnitude < 2 or self.ra_ops < 0:
            raise ConfigError("scarcenet: scale_clamp must be in [0, 1), ra_magnitude >= 2 and ra_ops >= 0")
        for key in ("rate_rampdown", "dist_thre", "true_label_w", "consistency", "consistency_rampup", "scale",
                    "weak_scale", "rotate", "weak_rotate", "cutout_holes", "cutout_size", "source_weight",
                    "steps_per_epoch"):
            if getattr(self, key) < 0:
                raise ConfigError(f"scarcenet.{key} must be >= 0, got {getattr(self, key)}")


# ---------------------------------------------------------------------------------- schedules
def small_loss_rate(epoch: float, cfg: ScarceNetConfig) -> float:
    """r(e) = clip(0.5 (1 + cos(pi min(e, R) / R)), min_rate, 1) (UT L252-261)."""
    if cfg.rate_rampdown <= 0:
        return float(max(cfg.min_rate, 0.0))
    e = min(max(float(epoch), 0.0), cfg.rate_rampdown)
    r = 0.5 * (1.0 + math.cos(math.pi * e / cfg.rate_rampdown))
    return float(min(max(r, cfg.min_rate), 1.0))


class RampTeacher(EMATeacher):
    """The EMA teacher with ScarceNet's ramp ``alpha_t = min(1 - 1/(t + 1), alpha)`` for t = 0, 1,
    ...: the first update (alpha 0) copies the student's parameters (UT L209-214; F1 L168)."""

    def momentum(self) -> float:
        return min(1.0 - 1.0 / (int(self.updates) + 1), self.alpha)


# ---------------------------------------------------------------------------------- geometry
def view_affines(batch: int, size: int, scale: float, scale_clamp: float, rotate: float, clamp: float,
                 rotate_prob: float, flip_prob: float, device=None) -> Tensor:
    """Input -> input maps about the crop centre: flip, rotation clip(rotate N, +-clamp) with
    ``rotate_prob``, then a zoom by ``1 / clip(1 + scale N, 1 - scale_clamp, 1 + scale_clamp)``
    (published: the box grows by that factor, so the content shrinks). float64 (B, 2, 3)."""
    fr = flip_rotate_affines(batch, size, rotate, clamp, rotate_prob, flip_prob)
    box = (1.0 + scale * torch.randn(batch, dtype=torch.float64)).clamp(1.0 - scale_clamp, 1.0 + scale_clamp)
    mid = (size - 1) / 2.0
    zoom = torch.zeros(batch, 2, 3, dtype=torch.float64)
    zoom[:, 0, 0] = zoom[:, 1, 1] = 1.0 / box
    zoom[:, :, 2] = (mid - mid / box)[:, None]
    return compose(zoom, fr).to(device)


def joint_order(a: Tensor, flip_index) -> Tensor:
    """Channel k of a view made by ``a`` holds joint ``order[b, k]`` of the original crop: the
    flip permutation where ``a`` mirrors, else the identity. long (B, K)."""
    flip = torch.as_tensor(np.asarray(flip_index), device=a.device)
    same = torch.arange(flip.numel(), device=a.device)
    mirrored = torch.linalg.det(a[:, :, :2].double()) < 0
    return torch.where(mirrored[:, None], flip[None], same[None])


def reorder(x: Tensor, order: Tensor) -> Tensor:
    """``x[b, order[b, k]]`` for per-joint values. x: (B, K, ...) -> (B, K, ...)."""
    idx = order.view(*order.shape, *([1] * (x.dim() - 2))).expand(*order.shape, *x.shape[2:])
    return x.gather(1, idx)


def map_keypoints(kp: Tensor, a: Tensor, flip_index) -> Tensor:
    """Keypoints (input px, visibility) of the crop, seen in the view made by ``a``: positions
    mapped exactly, left/right channels swapped where the view mirrors. (B, K, 3) -> (B, K, 3)."""
    xy = apply_affine(a.double(), kp[..., :2].double()).to(kp.dtype)
    return reorder(torch.cat((xy, kp[..., 2:3]), dim=-1), joint_order(a, flip_index))


def peaks_in_input(heatmaps: Tensor, codec) -> Tensor:
    """Integer argmax of each map, in input pixels (float64 (B, K, 2))."""
    xy, _ = heatmap_argmax(heatmaps.detach().float())
    return codec.to_input_coords(xy.double())


# ---------------------------------------------------------------------------------- selection
def small_loss_mask(pred: Tensor, target: Tensor, weight: Tensor, rate: float) -> Tensor:
    """The ``floor(rate N)`` joints of smallest MSE among the N with weight > 0, across the whole
    batch (loss.py L46-62). pred, target: (B, K, h, w); weight: (B, K) -> bool (B, K)."""
    w = weight.reshape(*weight.shape[:2], 1).float()
    per = (pred.detach().float().flatten(2) * w - target.float().flatten(2) * w).pow(2).mean(-1)  # B, K
    visible = weight > 0
    n = math.floor(rate * int(visible.sum()) + 1e-9)
    mask = torch.zeros_like(visible)
    if n <= 0:
        return mask
    key = torch.where(visible, per, torch.full_like(per, math.inf)).flatten()
    mask.view(-1)[key.topk(n, largest=False).indices] = True
    return mask


def agreement(v2_heatmaps: Tensor, plain_xy: Tensor, a_v: Tensor, codec, thre: float) -> Tensor:
    """Joints (in the crop's joint order) whose argmax on the weak view v2 lies within ``thre``
    heatmap pixels of the un-augmented prediction ``plain_xy`` (input px) mapped into v2 by ``a_v``
    (F1 L61-96; exact affines, no +0.5 offset, joints matched through v2's flip).

    Shape:
        v2_heatmaps: (B, K, h, w); plain_xy: (B, K, 2); a_v: (B, 2, 3) -> bool (B, K)
    """
    order = joint_order(a_v, codec.flip_index)  # v2 channel k = crop joint order[k]; an involution
    v2_xy, _ = heatmap_argmax(v2_heatmaps.detach().float())
    v2_of_joint = reorder(v2_xy.double(), order)  # B, K, 2: v2's prediction of crop joint j
    mapped = codec.to_heatmap_coords(apply_affine(a_v.double(), plain_xy.double()))
    return (v2_of_joint - mapped).norm(dim=-1) < thre


def supervision(init_t: Tensor, init_w: Tensor, small: Tensor, relabel: Tensor | None, labelled: Tensor,
                cfg: ScarceNetConfig) -> tuple[Tensor, Tensor]:
    """L_sup's target and weight (F1 L98-117): labelled images learn their labels at
    ``true_label_w``; unlabelled joints learn the initial label if small-loss, the re-label
    ``relabel = (target, mask)`` if they agree and are not small-loss, else nothing.

    Shape:
        init_t: (B, K, h, w); init_w, small: (B, K); labelled: bool (B,) -> (B, K, h, w), (B, K)
    """
    target, weight = init_t, small.to(init_w.dtype)
    if relabel is not None:
        re_t, re_w = relabel
        re = (re_w > 0) & ~small
        target = torch.where(re[..., None, None], re_t, init_t)
        weight = weight + re.to(init_w.dtype)
    lab = labelled.view(-1, 1).to(init_w.device)
    target = torch.where(lab[..., None, None], init_t, target)
    weight = torch.where(lab, cfg.true_label_w * init_w, weight)
    return target, weight


# ---------------------------------------------------------------------------------- the step
@dataclass
class Parts:
    """What the step needs besides the model and the batch (built once per run)."""

    teacher: EMATeacher
    clock: Clock
    codec: object
    mean: Tensor
    std: Tensor
    labelled: Tensor  # bool (N,) over the target dataset's records


def student_view(base: Tensor, a_s: Tensor, parts: Parts, cfg: ScarceNetConfig) -> Tensor:
    """The affine view, then RandAugmentMC, then (p ``cutout_prob``) grey cutouts (DS; TM)."""
    s = base.shape[-1]
    x = warp_batch(base, a_s, s)
    if cfg.rand_augment and cfg.ra_ops > 0:
        x = rand_augment(x, parts.mean, parts.std, draw_plan(x.shape[0], cfg.ra_ops, cfg.ra_magnitude, cfg.ra_prob))
    if cfg.cutout_prob > 0 and cfg.cutout_holes > 0:
        size = max(1, round(cfg.cutout_size * s / 256))
        x = random_cutout(x, parts.mean, parts.std, cfg.cutout_holes, size, cfg.cutout_prob)
    return x


@torch.no_grad()
def relabel_targets(model, base: Tensor, a_s: Tensor, small: Tensor, parts: Parts,
                    cfg: ScarceNetConfig) -> tuple[Tensor, Tensor, Tensor]:
    """The agreement check and the re-labels in the student's view (F1 L61-117): the student,
    without gradient (train mode, as published), on a weak view v2 and on the plain crop.

    Returns the re-label target (B, K, h, w), its weight (B, K) (agreeing, not small-loss, on the
    map) and the agreement (B, K) in the student's joint order."""
    b, s, codec = base.shape[0], base.shape[-1], parts.codec
    a_v = view_affines(b, s, cfg.weak_scale, cfg.weak_scale, cfg.weak_rotate, cfg.weak_rotate_clamp,
                       cfg.rotate_prob, cfg.flip_prob, base.device)
    v2 = model(warp_batch(base, a_v, s)).heatmaps[-1]
    plain_xy = peaks_in_input(model(base).heatmaps[-1], codec)  # B, K, 2 crop joints
    agree = reorder(agreement(v2, plain_xy, a_v, codec, cfg.dist_thre), joint_order(a_s, codec.flip_index))
    kp = map_keypoints(torch.cat((plain_xy, torch.ones_like(plain_xy[..., :1])), -1), a_s, codec.flip_index)
    kp[..., 2] = (agree & ~small).to(kp.dtype)
    target, weight = codec.encode_batch(kp)
    return target, weight, agree


@torch.no_grad()
def teacher_targets(teacher: EMATeacher, base: Tensor, visible: Tensor, a_s: Tensor, codec) -> tuple[Tensor, Tensor]:
    """L_cons's target: a Gaussian at the teacher's argmax on the plain crop, mapped (and flipped)
    into the student's view; weight = the initial visibility, on the map (F1 L127-157).

    Shape:
        base: (B, 3, S, S); visible: (B, K) crop joint order -> (B, K, h, w), (B, K)
    """
    teacher.train()  # its BatchNorm normalises with its own batch, as published
    xy = peaks_in_input(teacher(base).heatmaps[-1], codec)
    kp = torch.cat((xy, visible[..., None].double()), dim=-1)
    return codec.encode_batch(map_keypoints(kp, a_s, codec.flip_index))


def scarcenet_step(model, batch: dict, parts: Parts, cfg: ScarceNetConfig) -> dict[str, Tensor]:
    """L = source_weight L_src + L_sup + w_c(e) L_cons, pure (EMA and clock are callbacks).

    Source images and the student view x_s go through the student in one forward pass.

    Shape:
        batch["target"]: plain crops image (B, 3, S, S), keypoints (B, K, 3) = the initial labels
        (ground truth for labelled images) in crop input px, index (B,)
    """
    e = parts.clock.epoch()
    rate, w_c = small_loss_rate(e, cfg), consistency_weight(e, cfg)
    tgt, codec = batch["target"], parts.codec
    base, kp0 = tgt["image"], tgt["keypoints"].to(torch.float64)
    b, s, dev = base.shape[0], base.shape[-1], base.device
    labelled = parts.labelled.to(dev)[tgt["index"].to(dev)]
    a_s = view_affines(b, s, cfg.scale, cfg.scale_clamp, cfg.rotate, cfg.rotate_clamp, cfg.rotate_prob,
                       cfg.flip_prob, dev)
    x_s = student_view(base, a_s, parts, cfg)
    init_t, init_w = codec.encode_batch(map_keypoints(kp0, a_s, codec.flip_index))
    src = batch.get("source") if cfg.source_weight > 0 else None
    n = src["image"].shape[0] if src is not None else 0
    out = model(torch.cat([src["image"], x_s]) if src is not None else x_s)
    student = [h[n:] for h in out.heatmaps]
    small = small_loss_mask(student[-1], init_t, init_w, rate)
    relabel, logged = None, {}
    if cfg.relabel:
        re_t, re_w, agree = relabel_targets(model, base, a_s, small, parts, cfg)
        relabel = (re_t, re_w)
        logged = {"sel/agree_fraction": agree.float().mean(), "sel/relabelled_fraction": (re_w > 0).float().mean()}
    sup_t, sup_w = supervision(init_t, init_w, small, relabel, labelled, cfg)
    terms = {"sup": joints_mse(student, sup_t, sup_w)}
    cons_t, cons_w = teacher_targets(parts.teacher, base, (kp0[..., 2] > 0).to(torch.float32), a_s, codec)
    terms["cons"] = w_c * joints_mse(student, cons_t, cons_w)
    if src is not None:
        terms["src"] = cfg.source_weight * joints_mse([h[:n] for h in out.heatmaps], src["target"],
                                                      src["target_weight"])
    visible = init_w > 0
    logged.update({f"loss/{name}": v.detach() for name, v in terms.items()})
    logged.update({"sel/rate": torch.tensor(rate), "sel/small_loss_fraction": small.float().sum() /
                   visible.float().sum().clamp_min(1.0), "sel/labelled_images": labelled.float().sum(),
                   "sched/w_c": torch.tensor(w_c), "sched/epoch": torch.tensor(float(e))})
    return {"loss": sum(terms.values()), **logged}


# ---------------------------------------------------------------------------------- the method
class ClockCallback(Callback):
    """After every step the schedules' clock follows the trainer."""

    def __init__(self, clock: Clock):
        self.clock = clock

    def on_step_end(self, trainer, batch, out):
        self.clock.step = int(trainer.step)
        return None


def _record_key(r) -> tuple:
    return labelled_mod.image_id(r), int(r.video), int(r.frame)


def _setup(job: AdaptJob) -> None:
    """Teacher, clock, and (``labels: mixed``) the labelled subset taken into the target batches:
    it leaves ``job.data`` so the shared ``semi`` term is not added on top."""
    cfg, c = job.cfg, job.section
    subset = job.data.get(labelled_mod.ROLE)
    ids: set = set()
    if subset is not None and c.labels == "mixed":
        job.data.pop(labelled_mod.ROLE)
        if cfg.section("semi").supervised:  # semi.supervised=false: the labels stay unused
            ids = {_record_key(r) for r in subset.records}
    job.state["labelled_ids"] = ids
    job.check_batchable({"source": job.data["source"], "target": job.data["target_eval"]})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(epoch_seed(cfg.seed, 717_171))
        job.state_modules["teacher"] = RampTeacher(build_model(cfg.model, NUM_JOINTS), c.alpha, ramp=True)
    steps = job.steps_per_epoch(max(len(job.data["source"]), len(job.data["target_eval"])), c.steps_per_epoch)
    total = cfg.train.epochs * steps if not cfg.train.max_steps else min(cfg.train.epochs * steps, cfg.train.max_steps)
    job.state.update(steps=steps, clock=Clock(total, c.schedule_epochs))


def _on_build(job: AdaptJob) -> None:
    """A new run's teacher starts as the student (published: random, but its first update has
    alpha 0, so from the second step on both agree); a resumed run keeps its own."""
    if not job.resumed:
        job.state_modules["teacher"].copy_from(job.model)


def initial_labels(job: AdaptJob) -> PseudoLabels:
    """The initial pseudo-labels, made once from the init weights as UDA-Animal makes them."""
    return uda_initial_labels(job, "scarcenet", "ScarceNet initial pseudo-labels")


def _plan_round(job: AdaptJob, r: int) -> RoundPlan:
    """Plain target crops carrying the initial labels (ground truth for the labelled subset)."""
    ctx, plain = job.ctx, job.data["target_eval"]
    kp = initial_labels(job).as_labels()  # N, K, 3 original px
    ids = job.state["labelled_ids"]
    flags = np.array([_record_key(rec) in ids for rec in plain.records], dtype=bool)
    if flags.any():  # the only target labels read: those of the labelled subset
        truth = plain.keypoints[flags].copy()
        truth[..., 2] = (truth[..., 2] > 0).astype(np.float32)
        kp[flags] = truth
    target = plain.with_keypoints(kp)
    clock = job.state["clock"]
    clock.step = int(job.trainer.step)
    mean = torch.tensor(target.mean, dtype=torch.float32, device=ctx.device).view(1, 3, 1, 1)
    std = torch.tensor(target.std, dtype=torch.float32, device=ctx.device).view(1, 3, 1, 1)
    parts = Parts(job.state_modules["teacher"], clock, job.codec, mean, std, torch.from_numpy(flags))
    batches = job.mixed({"source": job.data["source"], "target": target}, job.state["steps"])
    desc = f"ScarceNet ({int(flags.sum())} labelled)" if flags.any() else "ScarceNet"
    return RoundPlan(partial(scarcenet_step, parts=parts, cfg=job.section), batches, desc=desc)


def _callbacks(job: AdaptJob) -> list[Callback]:
    return [ClockCallback(job.state["clock"]), EMACallback(job.state_modules["teacher"])]


def _tags(job: AdaptJob) -> dict:
    c = job.section
    return {"scarcenet_labels": c.labels, "scarcenet_relabel": str(c.relabel),
            "scarcenet_labelled_images": str(len(job.state.get("labelled_ids", ())))}


SCARCENET = register(Method(
    "scarcenet", "ScarceNet (small-loss selection, agreement re-labelling, mean teacher, RandAugment)",
    section="scarcenet", config=ScarceNetConfig, needs=("source", "target"), setup=_setup, on_build=_on_build,
    plan_round=_plan_round, callbacks=_callbacks, tags=_tags, reported=reported_teacher))
