"""UDA-Animal-Pose (Li & Lee, "From Synthetic to Real: Unsupervised Domain Adaptation for Animal
Pose Estimation", CVPR 2021; FACTS section 8.1), mapped onto our single-head pose models.

1. **Initial pseudo-labels**, made once by CC-SSL's labeller (:mod:`da_pose.adapt.ccssl`) from the
   init checkpoint: 5 views, the optical-flow check, the top 40 % of the target split's joints.
2. **Curriculum**: the student learns them with ``gamma(e) * CL_k``, the mean of each image's k
   smallest per-joint losses; k shrinks 18 -> 9 and gamma 15 -> 8 over the first epochs.
3. **Mean teacher**: an EMA teacher (ramp ``min(1 - 1/(t+1), 0.999)``) predicts on a flipped,
   colour-jittered view x_t; its map, warped into the student's rotated view x_s, is the target
   of the student's second head with weight ``w_c(e) = 90 exp(-5 (1 - min(e, 10)/10)^2)``.
4. **Two heads**: ``dual_head`` adds a copy of the last score head on the same features (published
   hm2, initialised from the trained head), which learns the teacher; the main head (hm1) learns
   the pseudo-labels; ``0.01 * 0.5 * mean((hm1 - hm2)^2)`` ties them. Self-distillation
   (published: coarse deconv output <- stopgrad refine output) runs between every earlier
   hourglass stack and the last one; a one-stack model has none (docs/uda_animal.md).
5. **Mixup** of the pseudo-label inputs: cross-domain with p = 0.5, else within the target batch.
6. **Domain classifier** behind a gradient reversal layer on ``PoseOutput.features`` (published:
   on the refine block's multi-scale concat, which our models lack).

Every term is a switch of the ``uda_animal`` section; published "epochs" are schedule epochs (the
run's steps mapped onto ``schedule_epochs``, 80). Only CC-SSL's diagnostic reads target labels.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from da_pose.adapt.ccssl import generate_pseudo_labels
from da_pose.adapt.mean_teacher import EMACallback, EMATeacher, check_report, reported_teacher
from da_pose.adapt.method import AdaptJob, Method, RoundPlan, register
from da_pose.adapt.pseudo_labels import PseudoLabels, load_or_generate_labels, log_round
from da_pose.adapt.wscda import average_gradients_over_ranks, grl_lambda
from da_pose.data.skeleton import NUM_JOINTS
from da_pose.data.transforms import adjust_brightness_colour, adjust_contrast, compose, invert_affine, warp_batch, \
    warp_heatmaps
from da_pose.errors import ConfigError
from da_pose.models.discriminator import StridedDomainClassifier
from da_pose.models.factory import build_model
from da_pose.models.layers import grad_reverse
from da_pose.run import load_model
from da_pose.train.losses import MSE_FACTOR, joints_mse
from da_pose.train.trainer import Callback, epoch_seed

TEACHER_INITS = ("random", "student")


@dataclass(frozen=True)
class UDAAnimalConfig:
    """UDA-Animal (FACTS 8.1; T = train_refinenet_mt.py, U = utils_mt.py, Ls = jointsmseloss.py)."""

    # initial pseudo-labels (CC-SSL labeller, generated once: T L162-190, C, D L16-33)
    pseudo_labels: bool = True  # the term gamma(e) CL_k(student, initial labels)
    label_views: int = 5  # identity + 4 random views (C L32-72)
    label_flip: bool = False  # CC-SSL's random view flip (published flip-averages every view)
    temporal: bool = True  # optical-flow check (C L87-114)
    keep: float = 0.4  # top 40 % = above the 60th percentile (--percentage 0.6)
    # curriculum (Ls L36-64; T L151-152; U L29-31)
    curriculum: bool = True  # False: k = K (plain weighted MSE) and gamma fixed at `gamma`
    k_min: int = 9  # --min_kpts
    k_start: int = 2  # --start_mine_epoch
    k_interval: int = 1  # --reduce_interval
    gamma: float = 15.0  # --gamma_
    gamma_min: float = 8.0  # --min_gamma
    gamma_rampdown: float = 15.0  # --gamma_rampdown (epochs)
    # mean teacher (U L8-39; T L284-304)
    mean_teacher: bool = True
    alpha: float = 0.999  # --ema-decay, reached by the ramp min(1 - 1/(t + 1), alpha)
    teacher_init: str = "random"  # random (published: the teacher is not loaded) | student
    report: str = "teacher"  # the network evaluated and reported: teacher (published) | student
    consistency: float = 90.0  # --consistency
    consistency_rampup: float = 10.0  # --consistency-rampup (epochs)
    rotate: float = 45.0  # x_s rotation clip(45 N, +-90) with p 0.6 (--rot-factor; D L169-170, L184)
    rotate_clamp: float = 90.0
    rotate_prob: float = 0.6
    flip_prob: float = 0.5  # independent flips of x_s and x_t
    colour_prob: float = 0.5  # contrast U(0.8, 1.2) + brightness +-0.2 together, per view
    # two-head terms (T L275-281)
    dual_head: bool = True  # hm2: a copy of the last score head; it learns the teacher
    agreement: float = 0.01  # --logit-distance-cost (0: no head-agreement term)
    self_distill: bool = True  # earlier stacks <- stopgrad last stack (needs >= 2 stacks)
    # mixup (--mixup_dual, T L230-236, L399-425)
    mixup: bool = True
    mixup_beta: float = 0.8
    mixup_cross_prob: float = 0.5
    # domain classifier (M L142-171; T L214-215, L255-258)
    domain: bool = True
    domain_weight: float = 0.0005  # --adv_w
    disc_width: int = 64  # channels of the first convolution (ndf)
    grl_warmup: float = 10.0  # lambda = 2 / (1 + exp(-10 p)) - 1
    # schedule (T L464; misc.py L57-66)
    schedule_epochs: float = 80.0  # the run's steps map onto this many published epochs
    poly_lr: bool = True  # lr = train.lr (1 - e / poly_epochs)^poly_power, e = schedule epoch
    poly_epochs: float = 100.0  # --max_epoch
    poly_power: float = 0.9  # --power
    steps_per_epoch: int = 0  # 0 = one pass over the larger of source and target

    def check(self) -> None:
        check_report("uda_animal", self.report)
        if self.teacher_init not in TEACHER_INITS:
            raise ConfigError(f"uda_animal.teacher_init: unknown value '{self.teacher_init}'; "
                              f"valid: {', '.join(TEACHER_INITS)}")
        if not 0.0 < self.keep <= 1.0 or self.label_views < 1:
            raise ConfigError(f"uda_animal: keep must be in (0, 1] and label_views >= 1, got {self.keep}, "
                              f"{self.label_views}")
        if not 0.0 <= self.alpha < 1.0 or self.mixup_beta <= 0 or self.schedule_epochs <= 0:
            raise ConfigError("uda_animal: alpha must be in [0, 1), mixup_beta and schedule_epochs > 0")
        if not 1 <= self.k_min <= NUM_JOINTS or self.k_interval < 1:
            raise ConfigError(f"uda_animal: k_min must be in [1, {NUM_JOINTS}] and k_interval >= 1")
        for key in ("gamma", "gamma_min", "consistency", "agreement", "domain_weight", "steps_per_epoch",
                    "poly_epochs", "disc_width"):
            if getattr(self, key) < 0:
                raise ConfigError(f"uda_animal.{key} must be >= 0, got {getattr(self, key)}")


# ---------------------------------------------------------------------------------- schedules
def topk_joints(epoch: int, cfg: UDAAnimalConfig, num_joints: int = NUM_JOINTS) -> int:
    """k = max(K - max(e - k_start, 0) // k_interval, k_min) (T L151-152); K without curriculum."""
    if not cfg.curriculum:
        return num_joints
    return int(max(num_joints - max(epoch - cfg.k_start, 0) // cfg.k_interval, min(cfg.k_min, num_joints)))


def target_weight(epoch: float, cfg: UDAAnimalConfig) -> float:
    """gamma(e) = clip(gamma 0.5 (1 + cos(pi min(e, R) / R)), gamma_min, gamma) (U L29-31)."""
    if not cfg.curriculum or cfg.gamma_rampdown <= 0:
        return float(cfg.gamma)
    e = min(max(float(epoch), 0.0), cfg.gamma_rampdown)
    w = cfg.gamma * 0.5 * (1.0 + math.cos(math.pi * e / cfg.gamma_rampdown))
    return float(min(max(w, cfg.gamma_min), cfg.gamma))


def consistency_weight(epoch: float, cfg: UDAAnimalConfig) -> float:
    """w_c(e) = consistency exp(-5 (1 - min(e, R) / R)^2), the sigmoid ramp-up (U L8-26)."""
    if cfg.consistency_rampup <= 0:
        return float(cfg.consistency)
    phase = 1.0 - min(max(float(epoch), 0.0), cfg.consistency_rampup) / cfg.consistency_rampup
    return float(cfg.consistency * math.exp(-5.0 * phase * phase))


class Clock:
    """The step count that the schedules read: ``epoch()`` is the published epoch index the
    current step maps to (``floor(step E / total)``), ``progress()`` the GRL's p in [0, 1]."""

    def __init__(self, total_steps: int, epochs: float):
        self.total = max(1, int(total_steps))
        self.epochs = float(epochs)
        self.step = 0

    def progress(self) -> float:
        return min(1.0, self.step / self.total)

    def epoch(self) -> int:
        return int(math.floor(min(self.step, self.total - 1) * self.epochs / self.total + 1e-9))


# ---------------------------------------------------------------------------------- losses
def curriculum_loss(heatmaps, target: Tensor, weight: Tensor, k: int) -> Tensor:
    """CL_k (Ls L36-64): per image, the k smallest per-joint losses ``0.5 mean_hw((w p - w g)^2)``
    among joints with weight > 0 (a joint of weight 0 is picked only when fewer than k have
    weight, and then adds 0), summed and divided by k B; summed over stacks.

    Shape:
        heatmaps: (B, K, h, w) or a list of them; target: (B, K, h, w); weight: (B, K) -> ()
    """
    stacks = [heatmaps] if isinstance(heatmaps, Tensor) else list(heatmaps)
    b, kk = target.shape[:2]
    w = weight.reshape(b, kk, 1).float()
    total = target.new_zeros((), dtype=torch.float32)
    for pred in stacks:
        per = MSE_FACTOR * (pred.float().flatten(2) * w - target.float().flatten(2) * w).pow(2).mean(-1)  # B, K
        key = torch.where(w[..., 0] > 0, per.detach(), torch.full_like(per, 1e8))
        idx = key.topk(min(k, kk), dim=1, largest=False).indices  # B, k
        total = total + per.gather(1, idx).sum() / (min(k, kk) * b)
    return total


def domain_loss(classifier: nn.Module, features: Tensor, n_source: int, lam: float, weight: float):
    """``weight (BCE(d_s, 1) + BCE(d_t, 0)) / 2`` (T L255-258) on features behind a gradient
    reversal layer: the classifier minimises it, the extractor receives ``-lam`` x its gradient.

    Shape:
        features: (B, C, h, w), the first ``n_source`` from the source -> loss (), accuracy ()
    """
    logits = classifier(grad_reverse(features, lam)).float()  # B
    labels = torch.zeros_like(logits)
    labels[:n_source] = 1.0
    src = F.binary_cross_entropy_with_logits(logits[:n_source], labels[:n_source])
    tgt = F.binary_cross_entropy_with_logits(logits[n_source:], labels[n_source:])
    acc = ((logits > 0) == (labels > 0.5)).float().mean()
    return weight * (src + tgt) / 2.0, acc.detach()


# ---------------------------------------------------------------------------------- mixup
def mixup_cross(src: dict, tgt: dict, beta: float) -> tuple[dict, dict, Tensor]:
    """Cross-domain mixup (T L399-412): lambda ~ Beta(beta, beta) per pair, lambda = max(lambda,
    1 - lambda); source and target images and heatmaps mixed both ways; both weights = the max.
    Returns the mixed source, mixed target and lambda (B,)."""
    b = src["image"].shape[0]
    dist = torch.distributions.Beta(torch.tensor(float(beta)), torch.tensor(float(beta)))
    lam = dist.sample((b,))
    lam = torch.maximum(lam, 1.0 - lam).to(src["image"].device)
    m = lam.view(b, 1, 1, 1)
    w = torch.maximum(src["target_weight"], tgt["target_weight"])
    mixed_src = {"image": m * src["image"] + (1 - m) * tgt["image"],
                 "target": m * src["target"] + (1 - m) * tgt["target"], "target_weight": w}
    mixed_tgt = {"image": m * tgt["image"] + (1 - m) * src["image"],
                 "target": m * tgt["target"] + (1 - m) * src["target"], "target_weight": w}
    return mixed_src, mixed_tgt, lam


def mixup_within(tgt: dict, beta: float) -> tuple[dict, Tensor]:
    """Mixup inside the target batch with a random permutation (T L415-425); lambda ~ Beta(beta,
    beta) as drawn (not folded above 0.5, as published); weights = max of the pair."""
    b = tgt["image"].shape[0]
    dist = torch.distributions.Beta(torch.tensor(float(beta)), torch.tensor(float(beta)))
    lam = dist.sample((b,)).to(tgt["image"].device)
    perm = torch.randperm(b).to(tgt["image"].device)
    m = lam.view(b, 1, 1, 1)
    out = {"image": m * tgt["image"] + (1 - m) * tgt["image"][perm],
           "target": m * tgt["target"] + (1 - m) * tgt["target"][perm],
           "target_weight": torch.maximum(tgt["target_weight"], tgt["target_weight"][perm])}
    return out, lam


# ---------------------------------------------------------------------------------- views
def flip_rotate_affines(batch: int, size: int, rotate: float, clamp: float, rotate_prob: float,
                        flip_prob: float, device=None) -> Tensor:
    """Input -> input maps about the crop centre: a horizontal flip with ``flip_prob``, then a
    rotation clip(rotate N, +-clamp) degrees with ``rotate_prob`` (D L169-170). float64 (B, 2, 3)."""
    z = torch.randn(batch, dtype=torch.float64)
    u = torch.rand(batch, 2, dtype=torch.float64)
    theta = torch.deg2rad((rotate * z).clamp(-clamp, clamp)) * (u[:, 0] < rotate_prob)
    sign = torch.where(u[:, 1] < flip_prob, -1.0, 1.0).to(torch.float64)
    cos, sin = torch.cos(theta), torch.sin(theta)
    lin = torch.stack((torch.stack((sign * cos, sin), -1), torch.stack((-sign * sin, cos), -1)), -2)  # R diag(s, 1)
    mid = torch.full((batch, 2, 1), (size - 1) / 2.0, dtype=torch.float64)
    t = mid - lin @ mid
    return torch.cat((lin, t), dim=-1).to(device)


def colour_jitter(images: Tensor, p: float, mean: Tensor, std: Tensor) -> Tensor:
    """With probability ``p`` per image: contrast U(0.8, 1.2) and brightness +-0.2 together (D)."""
    pick = torch.rand(images.shape[0]) < p
    if p <= 0 or not pick.any():
        return images
    pick = pick.to(images.device)
    raw = (images[pick] * std + mean).clamp(0, 1)
    raw = adjust_brightness_colour(adjust_contrast(raw, None, (0.8, 1.2)), None, 0.2, 0.0)
    out = images.clone()
    out[pick] = (raw - mean) / std
    return out


@torch.no_grad()
def teacher_in_student_view(heatmaps: Tensor, a_ts: Tensor, input_size: int, flip_index) -> Tensor:
    """The teacher's heatmaps warped by ``a_ts`` (teacher input px -> student input px); where
    the map mirrors, left and right channels are swapped (``flip_back``, T L284-292)."""
    warped = warp_heatmaps(heatmaps.float(), a_ts, input_size)
    mirrored = torch.linalg.det(a_ts[:, :, :2].double()) < 0
    if mirrored.any():
        idx = torch.as_tensor(flip_index, device=warped.device)
        warped[mirrored] = warped[mirrored][:, idx]
    return warped


# ---------------------------------------------------------------------------------- the step
@dataclass
class Parts:
    """What the step needs besides the model and the batch (built once per run)."""

    teacher: EMATeacher | None
    aux_head: nn.Module | None
    classifier: nn.Module | None
    clock: Clock
    codec: object
    mean: Tensor
    std: Tensor
    stacks: int = 1


def _mix(batch: dict, cfg: UDAAnimalConfig) -> tuple[dict, dict, dict]:
    """The pseudo-label inputs after mixup (if on): source, target, logged values."""
    src, tgt = batch["source"], batch["target"]
    if not cfg.mixup:
        return src, tgt, {}
    if float(torch.rand(())) < cfg.mixup_cross_prob:
        src, tgt, lam = mixup_cross(src, tgt, cfg.mixup_beta)
        return src, tgt, {"mixup/cross": torch.tensor(1.0), "mixup/lambda": lam.mean()}
    tgt, lam = mixup_within(tgt, cfg.mixup_beta)
    return src, tgt, {"mixup/cross": torch.tensor(0.0), "mixup/lambda": lam.mean()}


def _views(base: Tensor, parts: Parts, cfg: UDAAnimalConfig) -> tuple[Tensor, Tensor, Tensor]:
    """x_t (flip + colour), x_s (flip, rotation + colour) of the target crops, and the map from
    the teacher's input pixels to the student's."""
    b, s, dev = base.shape[0], base.shape[-1], base.device
    a_t = flip_rotate_affines(b, s, 0.0, 0.0, 0.0, cfg.flip_prob, dev)
    a_s = flip_rotate_affines(b, s, cfg.rotate, cfg.rotate_clamp, cfg.rotate_prob, cfg.flip_prob, dev)
    x_t = colour_jitter(warp_batch(base, a_t, s), cfg.colour_prob, parts.mean, parts.std)
    x_s = colour_jitter(warp_batch(base, a_s, s), cfg.colour_prob, parts.mean, parts.std)
    return x_t, x_s, compose(a_s, invert_affine(a_t))


def _view_terms(out, n2: int, x_t: Tensor, a_ts: Tensor, parts: Parts, cfg: UDAAnimalConfig, k: int,
                w_c: float) -> dict[str, Tensor]:
    """The terms on the student's view x_s (rows ``n2:`` of the forward pass): mean teacher,
    head agreement, self-distillation (T L265-295)."""
    stacks = [h[n2:] for h in out.heatmaps]
    hm1 = stacks[-1]
    hm2 = parts.aux_head(out.features[n2:]) if parts.aux_head is not None else None
    ones = torch.ones(hm1.shape[:2], device=hm1.device)
    terms: dict[str, Tensor] = {}
    if cfg.mean_teacher:
        parts.teacher.train()  # its BatchNorm normalises with its batch and its buffers follow (T L265-270)
        with torch.no_grad():
            t_hm = parts.teacher(x_t).heatmaps[-1]
        target = teacher_in_student_view(t_hm, a_ts, parts.codec.input_size, parts.codec.flip_index)
        terms["cons"] = w_c * joints_mse(hm2 if hm2 is not None else stacks, target, ones)
    if hm2 is not None and cfg.agreement > 0:
        terms["agree"] = cfg.agreement * MSE_FACTOR * (hm1.float() - hm2.float()).pow(2).mean()
    if cfg.self_distill and len(stacks) > 1:
        terms["distill"] = w_c * curriculum_loss(stacks[:-1], hm1.detach(), ones, k)
    return terms


def uda_animal_step(model, batch: dict, parts: Parts, cfg: UDAAnimalConfig) -> dict[str, Tensor]:
    """One step of every switched-on term (FACTS 8.1's loss table), pure: the EMA update and the
    schedules' clock are callbacks. Source, pseudo-label inputs and the student view x_s go
    through the student in one forward pass (one BatchNorm statistic).

    Shape:
        batch["source"], batch["target"]: items with image (B, 3, S, S), target (B, K, h, w),
        target_weight (B, K); the target's are the kept initial pseudo-labels.
    """
    e = parts.clock.epoch()
    k, gamma, w_c = topk_joints(e, cfg), target_weight(e, cfg), consistency_weight(e, cfg)
    base = batch["target"]["image"]
    src, tgt, logged = _mix(batch, cfg)
    n = src["image"].shape[0]
    views = cfg.mean_teacher or parts.aux_head is not None or (cfg.self_distill and parts.stacks > 1)
    x_t = a_ts = None
    images = [src["image"], tgt["image"]]
    if views:
        x_t, x_s, a_ts = _views(base, parts, cfg)
        images.append(x_s)
    out = model(torch.cat(images))
    terms = {"src": joints_mse([h[:n] for h in out.heatmaps], src["target"], src["target_weight"])}
    if cfg.pseudo_labels:
        terms["pl"] = gamma * curriculum_loss([h[n:2 * n] for h in out.heatmaps], tgt["target"],
                                              tgt["target_weight"], k)
    if cfg.domain and parts.classifier is not None:
        lam = grl_lambda(parts.clock.progress(), 1.0, cfg.grl_warmup)
        terms["domain"], acc = domain_loss(parts.classifier, out.features[:2 * n], n, lam, cfg.domain_weight)
        logged.update({"grl/lambda": torch.tensor(lam), "disc/acc": acc})
    if views:
        terms.update(_view_terms(out, 2 * n, x_t, a_ts, parts, cfg, k, w_c))
    loss = sum(terms.values())
    logged.update({f"loss/{name}": v.detach() for name, v in terms.items()})
    logged.update({"sched/k": torch.tensor(float(k)), "sched/gamma": torch.tensor(gamma),
                   "sched/w_c": torch.tensor(w_c), "sched/epoch": torch.tensor(float(e))})
    return {"loss": loss, **logged}


# ---------------------------------------------------------------------------------- callbacks
class ScheduleCallback(Callback):
    """After every step: the clock follows the trainer, and (``poly_lr``) the learning rate of the
    next step is ``initial_lr (1 - e / poly_epochs)^power`` for the schedule epoch e (misc.py)."""

    def __init__(self, clock: Clock, cfg: UDAAnimalConfig):
        self.clock = clock
        self.cfg = cfg

    def on_step_end(self, trainer, batch, out):
        self.clock.step = int(trainer.step)
        if self.cfg.poly_lr and self.cfg.poly_epochs > 0:
            factor = max(0.0, 1.0 - self.clock.epoch() / self.cfg.poly_epochs) ** self.cfg.poly_power
            for group in trainer.optimizer.param_groups:
                group["lr"] = group.get("initial_lr", group["lr"]) * factor
        return None


# ---------------------------------------------------------------------------------- the method
def score_head(model: nn.Module) -> nn.Module:
    """The module ``forward_head`` applies: the hourglass's last score conv, PoseResNet's head."""
    return model.score[-1] if hasattr(model, "score") else model.head


def feature_shape(cfg) -> tuple[int, int]:
    """(C, side) of ``PoseOutput.features`` for the run's model and input size (meta device)."""
    with torch.device("meta"):
        model = build_model(dataclasses.replace(cfg.model, pretrained=""), NUM_JOINTS)
        f = model.forward_features(torch.empty(1, 3, cfg.data.input_size, cfg.data.input_size))
    return int(f.shape[1]), int(f.shape[-1])


def label_settings(job: AdaptJob):
    """CC-SSL's labeller at UDA-Animal's settings: T_alpha views only (no appearance), one round
    keeping the top ``keep`` share; flow and view ranges from the ``ccssl`` section (defaults =
    the published values of C)."""
    c = job.section
    return dataclasses.replace(job.cfg.ccssl, rounds=1, num_transforms=c.label_views - 1, equivariance=True,
                               invariance=False, temporal=c.temporal, curriculum=True, keep_schedule=(c.keep,),
                               flip=c.label_flip)


def _setup(job: AdaptJob) -> None:
    """Teacher (state module), second head and domain classifier (optimised with the model)."""
    cfg, c = job.cfg, job.section
    job.check_batchable({"source": job.data["source"], "target": job.data["target"]})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(epoch_seed(cfg.seed, 616_161))
        model = build_model(cfg.model, NUM_JOINTS)
        if c.mean_teacher:
            job.state_modules["teacher"] = EMATeacher(model, c.alpha, ramp=True)
        if c.dual_head:
            job.modules["aux_head"] = copy.deepcopy(score_head(model))
        if c.domain:
            channels, side = feature_shape(cfg)
            job.modules["domain_classifier"] = StridedDomainClassifier(channels, side, c.disc_width)
    steps = job.steps_per_epoch(max(len(job.data["source"]), len(job.data["target"])), c.steps_per_epoch)
    total = cfg.train.epochs * steps if not cfg.train.max_steps else min(cfg.train.epochs * steps, cfg.train.max_steps)
    job.state.update(steps=steps, clock=Clock(total, c.schedule_epochs))


def _on_build(job: AdaptJob) -> None:
    """A new run: hm2 starts as the trained head (M L313-325); the teacher stays random (T
    L107-112) unless ``teacher_init: student``. A resumed run keeps its own."""
    c = job.section
    if not job.resumed:
        if "aux_head" in job.modules:
            job.modules["aux_head"].load_state_dict(score_head(job.model).state_dict())
        if c.mean_teacher and c.teacher_init == "student":
            job.state_modules["teacher"].copy_from(job.model)
    if job.ctx.dist.enabled:  # the trainer wraps only the pose model in DDP
        for name in ("aux_head", "domain_classifier"):
            if name in job.modules:
                average_gradients_over_ranks(job.modules[name])


def initial_labels(job: AdaptJob, prefix: str = "uda_animal", title: str = "UDA-Animal pseudo-labels") -> PseudoLabels:
    """The pseudo-labels made once from the init weights (UDA-Animal, ScarceNet). A resumed run
    reads the file of its start (or, if it is gone, makes it again from the init checkpoint),
    never labels with the weights it has trained since."""
    ctx, label_ds = job.ctx, job.data["target_eval"]
    path = ctx.run_dir / "pseudo_labels" / "round_00.pt"
    if job.resumed and path.is_file():
        labels, cached = PseudoLabels.load(path), True
    else:
        labeller = load_model(job.cfg.init, job.cfg, ctx.device) if job.resumed else job.model
        labels, cached = load_or_generate_labels(ctx, labeller, job.codec, label_ds, label_ds.records, 0,
                                                 label_settings(job), generate_pseudo_labels)
    log_round(ctx, labels, cached, label_ds.records, 0, prefix, title)
    return labels


def _plan_round(job: AdaptJob, r: int) -> RoundPlan:
    """The initial pseudo-labels (once, from the init weights), then the training plan. A resumed
    run reads the labels it made at its start (or, if that file is gone, makes them again from
    the init checkpoint), never from the weights it has trained since."""
    c, ctx = job.section, job.ctx
    target = job.data["target"]
    if c.pseudo_labels:
        target = target.with_keypoints(initial_labels(job).as_labels())
    clock = job.state["clock"]
    clock.step = int(job.trainer.step)
    mean = torch.tensor(target.mean, dtype=torch.float32, device=ctx.device).view(1, 3, 1, 1)
    std = torch.tensor(target.std, dtype=torch.float32, device=ctx.device).view(1, 3, 1, 1)
    stacks = job.cfg.model.stacks if job.cfg.model.backbone == "hourglass" else 1
    parts = Parts(job.state_modules.get("teacher"), job.modules.get("aux_head"), job.modules.get("domain_classifier"),
                  clock, job.codec, mean, std, stacks)
    batches = job.mixed({"source": job.data["source"], "target": target}, job.state["steps"])
    return RoundPlan(partial(uda_animal_step, parts=parts, cfg=c), batches, desc="UDA-Animal")


def _callbacks(job: AdaptJob) -> list[Callback]:
    out: list[Callback] = [ScheduleCallback(job.state["clock"], job.section)]
    if "teacher" in job.state_modules:
        out.append(EMACallback(job.state_modules["teacher"]))
    return out


def _tags(job: AdaptJob) -> dict:
    c = job.section
    on = [t for t in ("pseudo_labels", "curriculum", "mean_teacher", "dual_head", "self_distill", "mixup", "domain")
          if getattr(c, t)]
    return {"uda_animal_terms": ",".join(on) or "none", "teacher_init": c.teacher_init}


UDA_ANIMAL = register(Method(
    "uda_animal", "UDA-Animal (CC-SSL labels, curriculum, mean teacher, mixup, domain classifier)",
    section="uda_animal", config=UDAAnimalConfig, needs=("source", "target"), setup=_setup, on_build=_on_build,
    plan_round=_plan_round, callbacks=_callbacks, tags=_tags, reported=reported_teacher))
