"""RegDA: regressive domain adaptation for keypoint detection (Jiang et al., CVPR 2021).

Published parameters: Transfer-Learning-Library (FACTS section 8.3; files R = ``examples/.../
keypoint_detection/regda.py``, RA = ``tllib/alignment/regda.py``, GL = ``tllib/modules/gl.py``,
KL = ``tllib/vision/models/keypoint_detection/loss.py``). See docs/regda.md.

Two heads read the same features: the **main head** and a fresh **adversarial head** (3x3 conv
+ BN + ReLU + 1x1 conv, weights N(0, 0.001), RA L197-225) whose input passes a warm-start
gradient layer (identity forward, gradient x lambda backward, *not* reversed; lambda =
``2 (hi - lo) / (1 + exp(-alpha i / N)) - (hi - lo) + lo`` = 0.2 / (1 + exp(-i / 1000)) - 0.1 at
the published values, GL L12-73). The main head is our model's own, pretrained head; the
features are the map it reads at heatmap resolution:

- hourglass: the last stack's features (``forward_features``), main head ``score[-1]``;
- PoseResNet: the deconvolution head's output before its final 1x1 conv (published RegDA's
  feature extractor is backbone + upsampling, R L145-149), main head ``head.final_layer``.

The **feature extractor** is every model parameter but the main head's (the hourglass's
intermediate score heads feed later stacks, so they belong to it).

From the detached main-head prediction y, GT(y) puts a peak-1 Gaussian (sigma 2, truncated at
3 sigma) at each joint's argmax and GF(y)_k = clip(sum_{j != k} GT(y)_j, 0, 1) (RA L34-102).
Every iteration runs three steps (R L314-339), all with the trainer's optimizer (its state is per
parameter, so one optimizer whose other gradients are None is three optimizers over disjoint
parameter sets, as published):

- A (the step function, the trainer's own step; all parameters):
  ``KL(y_s, g_s) + margin * trade_off * KL(y_s_adv, GT(y_s))`` on the source;
- B (:class:`RegDACallback`; adversarial head only): ``trade_off * KL(y_t_adv, GF(y_t))``: the
  adversarial head learns to put its mass where the main head says the joint is *not*, i.e. to
  maximise its disparity with the main head;
- C (:class:`RegDACallback`; feature extractor only): ``trade_off * KL(y_t_adv, GT(y_t))``: the
  features are moved (through the warm-start layer, x lambda) so that the adversarial head
  agrees with the main head again, i.e. to minimise the disparity.

Then the warm-start counter advances (``model.step()``, R L339). The counter is the adversarial
head's extra state, so it is checkpointed and a resumed run continues exactly.
"""

from __future__ import annotations

import dataclasses
import math
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from da_pose.adapt.method import AdaptJob, Method, RoundPlan, register
from da_pose.adapt.wscda import average_gradients_over_ranks
from da_pose.data.skeleton import NUM_JOINTS
from da_pose.errors import ConfigError, TrainingError
from da_pose.models.factory import build_model
from da_pose.models.layers import scale_grad
from da_pose.models.hourglass import HourglassNet
from da_pose.models.pose_resnet import PoseResNet
from da_pose.train.losses import joints_mse
from da_pose.train.trainer import Callback, epoch_seed

SOURCE_LOSSES = ("kl", "mse")


@dataclass(frozen=True)
class RegDAConfig:
    """RegDA (Jiang et al., CVPR 2021); defaults are TLL's published values (FACTS section 8.3)."""

    margin: float = 4.0  # R: --margin 4, weight of the source disparity term in step A
    trade_off: float = 1.0  # R: --trade-off 1
    sigma: float = 2.0  # GT(y) Gaussian sigma in heatmap pixels (RA PseudoLabelGenerator)
    truncate: float = 3.0  # GT(y) is zero beyond truncate * sigma (in x or y)
    eps: float = 1e-7  # added to the disparity terms' targets before normalising (KL L51-95)
    source_loss: str = "kl"  # kl (published) | mse (the joints MSE our source-only models were trained with)
    head_channels: int = 256  # the adversarial head's 3x3 conv width (RA L197-225); 0 = the feature width
    warm_lo: float = 0.0  # warm-start gradient layer (GL L12-73): lambda goes from lo to hi
    warm_hi: float = 0.1
    warm_alpha: float = 1.0
    warm_iters: int = 1000
    steps_per_epoch: int = 0  # 0 = one pass over the larger of source and target (published 500)

    def check(self) -> None:
        if self.source_loss not in SOURCE_LOSSES:
            raise ConfigError(f"regda.source_loss: unknown value '{self.source_loss}'; "
                              f"valid: {', '.join(SOURCE_LOSSES)}")
        for key in ("margin", "trade_off", "eps", "warm_alpha", "head_channels", "steps_per_epoch"):
            if getattr(self, key) < 0:
                raise ConfigError(f"regda.{key} must be >= 0, got {getattr(self, key)}")
        for key in ("sigma", "truncate", "warm_iters"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"regda.{key} must be positive, got {getattr(self, key)}")


# ---------------------------------------------------------------------------------- losses
def heatmap_kl(pred: Tensor, target: Tensor, weight: Tensor | None = None, eps: float = 0.0) -> Tensor:
    """Pixel-wise KL(target || softmax_HW(pred)) per joint, times ``weight``, mean over B and K.

    The target is shifted by ``eps`` and normalised to sum 1 over the map (TLL JointsKLLoss, KL
    L51-95: eps 0 for the supervised term, 1e-7 for the disparity terms). A map that sums to 0
    (a joint without label, eps 0) counts 0 instead of the published 0/0.

    Shape:
        pred, target: (B, K, H, W); weight: (B, K) or (B, K, 1) -> ()
    """
    b, k = pred.shape[:2]
    log_p = F.log_softmax(pred.float().flatten(2), dim=-1)  # B, K, HW
    t = target.float().flatten(2) + eps  # B, K, HW
    t = t / t.sum(-1, keepdim=True).clamp_min(torch.finfo(t.dtype).tiny)
    kl = (torch.xlogy(t, t) - t * log_p).sum(-1)  # B, K
    if weight is not None:
        kl = kl * weight.reshape(b, k).to(kl)
    return kl.mean()


def source_loss(heatmaps: list[Tensor], target: Tensor, weight: Tensor, kind: str) -> Tensor:
    """The supervised source term, summed over the stacks (intermediate supervision, as the
    joints MSE): KL as published (R L314-321) or our source-only models' joints MSE."""
    if kind == "mse":
        return joints_mse(heatmaps, target, weight)
    return sum(heatmap_kl(h, target, weight) for h in heatmaps)


# ---------------------------------------------------------------------------------- pseudo-labels
def argmax_locations(y: Tensor) -> Tensor:
    """Integer (x, y) of each map's maximum; (0, 0) where the maximum is <= 0 (``get_max_preds``).

    Shape:
        y: (B, K, H, W) -> (B, K, 2) long
    """
    flat = y.detach().flatten(2)  # B, K, HW
    value, idx = flat.max(-1)  # B, K
    idx = torch.where(value > 0, idx, torch.zeros_like(idx))
    w = y.shape[-1]
    return torch.stack([idx % w, idx // w], dim=-1)


def ground_truth(y: Tensor, sigma: float = 2.0, truncate: float = 3.0) -> Tensor:
    """GT(y): a peak-1 Gaussian at each joint's argmax of the detached ``y``, zero where
    |dx| or |dy| exceeds ``truncate * sigma`` (a (2*3*sigma+1)^2 square patch, RA L34-102).

    Shape:
        y: (B, K, H, W) -> (B, K, H, W), float32, no gradient
    """
    h, w = y.shape[-2:]
    loc = argmax_locations(y).float()  # B, K, 2
    xs = torch.arange(w, device=y.device, dtype=torch.float32)
    ys = torch.arange(h, device=y.device, dtype=torch.float32)
    dx = xs.view(1, 1, 1, w) - loc[..., 0, None, None]  # B, K, 1, W
    dy = ys.view(1, 1, h, 1) - loc[..., 1, None, None]  # B, K, H, 1
    radius = truncate * sigma
    g = torch.exp(-(dx**2 + dy**2) / (2 * sigma**2))  # B, K, H, W
    inside = (dx.abs() <= radius) & (dy.abs() <= radius)
    return g * inside


def ground_false(gt: Tensor) -> Tensor:
    """GF(y)_k = clip(sum_{j != k} GT(y)_j, 0, 1): every other joint's Gaussian (RA L34-102).

    Shape:
        gt: (B, K, H, W) -> (B, K, H, W)
    """
    k = gt.shape[1]
    others = 1.0 - torch.eye(k, dtype=gt.dtype, device=gt.device)  # j -> k, zero diagonal
    return torch.einsum("bjhw,jk->bkhw", gt, others).clamp(0.0, 1.0)


# ---------------------------------------------------------------------------------- the heads
def warm_start_lambda(i: int, lo: float = 0.0, hi: float = 0.1, alpha: float = 1.0, max_iters: int = 1000) -> float:
    """``2 (hi - lo) / (1 + exp(-alpha i / max_iters)) - (hi - lo) + lo`` (GL L12-73): lo at
    i = 0, rising to hi; 0.2 / (1 + exp(-i / 1000)) - 0.1 at the published values."""
    span = hi - lo
    return float(2.0 * span / (1.0 + math.exp(-alpha * i / max_iters)) - span + lo)


def regression_head(in_channels: int, num_joints: int, hidden: int = 256) -> nn.Sequential:
    """RegDA's head: 3x3 conv + BN + ReLU + 1x1 conv, convs N(0, 0.001) with zero bias (RA L197-225).

    Shape:
        (B, in_channels, H, W) -> (B, num_joints, H, W)
    """
    head = nn.Sequential(nn.Conv2d(in_channels, hidden, 3, padding=1), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
                         nn.Conv2d(hidden, num_joints, 1))
    for m in head.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, std=0.001)
            nn.init.zeros_(m.bias)
    return head


class AdversarialHead(nn.Module):
    """A head behind the warm-start gradient layer, with the layer's iteration counter.

    A trainer ``extra_module``: its weights and (``get_extra_state``) its counter are saved in
    checkpoints, so a resumed run continues the lambda schedule exactly.

    Shape:
        features: (B, C, H, W) -> (B, K, H, W)
    """

    def __init__(self, head: nn.Module, lo: float = 0.0, hi: float = 0.1, alpha: float = 1.0, max_iters: int = 1000):
        super().__init__()
        self.head = head
        self.lo, self.hi, self.alpha, self.max_iters = float(lo), float(hi), float(alpha), int(max_iters)
        self.iteration = 0

    def lam(self) -> float:
        return warm_start_lambda(self.iteration, self.lo, self.hi, self.alpha, self.max_iters)

    def advance(self) -> None:
        self.iteration += 1

    def forward(self, features: Tensor) -> Tensor:
        return self.head(scale_grad(features, self.lam()))

    def get_extra_state(self) -> dict:
        return {"iteration": int(self.iteration)}

    def set_extra_state(self, state) -> None:
        self.iteration = int(state.get("iteration", 0))

    def extra_repr(self) -> str:
        return f"iteration={self.iteration}, lambda {self.lo:g} -> {self.hi:g} over ~{self.max_iters} iterations"


def main_head(model: nn.Module) -> nn.Module:
    """The module that turns the RegDA features into the model's final heatmaps (see the module
    docstring); a DDP wrapper is looked through."""
    model = getattr(model, "module", model)
    if isinstance(model, HourglassNet):
        return model.score[-1]
    if isinstance(model, PoseResNet):
        return model.head.final_layer
    raise ConfigError(f"regda: no main head known for {type(model).__name__}; expected HourglassNet or PoseResNet")


@contextmanager
def head_input(module: nn.Module):
    """Collects what ``module`` is called with (its first argument) while the block runs."""
    seen: list[Tensor] = []
    handle = module.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    try:
        yield seen
    finally:
        handle.remove()


def forward_with_features(net: nn.Module, images: Tensor):
    """``net(images)`` (DDP or not) and the main head's input: (PoseOutput, features B, C, H, W)."""
    with head_input(main_head(net)) as seen:
        out = net(images)
    return out, seen[-1]


# ---------------------------------------------------------------------------------- step A
def regda_step(model, batch: dict, head: AdversarialHead, cfg: RegDAConfig) -> dict[str, Tensor]:
    """Step A (all parameters), pure: ``L_src + margin * trade_off * KL(y_s_adv, GT(y_s))``.

    Shape:
        batch["source"]["image"]: (B, 3, S, S); ["target"]: (B, K, h, w); ["target_weight"]: (B, K)
    """
    src = batch["source"]
    out, features = forward_with_features(model, src["image"])
    loss_src = source_loss(out.heatmaps, src["target"], src["target_weight"], cfg.source_loss)
    y_s = out.heatmaps[-1]  # B, K, h, w: the main head
    y_s_adv = head(features)  # B, K, h, w
    disparity = heatmap_kl(y_s_adv, ground_truth(y_s, cfg.sigma, cfg.truncate), src["target_weight"], cfg.eps)
    return {"loss": loss_src + cfg.margin * cfg.trade_off * disparity, "loss/source": loss_src.detach(),
            "loss/disparity_source": disparity.detach(), "regda/lambda": torch.tensor(head.lam())}


# ---------------------------------------------------------------------------------- steps B and C
def _update(trainer, loss: Tensor, keep: list[nn.Parameter], drop: list[nn.Parameter]) -> None:
    """Backpropagate ``loss`` and step the trainer's optimizer on ``keep`` only: the gradients of
    ``drop`` are set to None, which the optimizers skip (no momentum, no weight decay)."""
    if not math.isfinite(float(loss.detach())):
        raise TrainingError(f"regda: a step B/C loss became {float(loss.detach())} at step {trainer.step}; training "
                            f"stopped, the last good checkpoint in {trainer.run_dir} is kept")
    trainer.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    for p in drop:
        p.grad = None
    if trainer.cfg.grad_clip > 0:
        nn.utils.clip_grad_norm_([p for p in keep if p.grad is not None], trainer.cfg.grad_clip)
    trainer.optimizer.step()


def adversary_step(trainer, images: Tensor, head: AdversarialHead, cfg: RegDAConfig) -> Tensor:
    """Step B: the adversarial head alone minimises ``trade_off * KL(y_t_adv, GF(y_t))``.

    The model runs without gradient (in train mode: its BN statistics follow, as published);
    only the head's parameters receive a gradient. Returns the loss, detached.
    """
    with torch.autocast(trainer.device.type, dtype=torch.bfloat16, enabled=trainer.amp):
        with torch.no_grad():
            out, features = forward_with_features(trainer.net, images)
        gf = ground_false(ground_truth(out.heatmaps[-1], cfg.sigma, cfg.truncate))
        loss = cfg.trade_off * heatmap_kl(head(features.detach()), gf, eps=cfg.eps)
    _update(trainer, loss, list(head.parameters()), [])
    return loss.detach()


def extractor_step(trainer, images: Tensor, head: AdversarialHead, cfg: RegDAConfig) -> Tensor:
    """Step C: the feature extractor alone minimises ``trade_off * KL(y_t_adv, GT(y_t))``; its
    gradient comes through the warm-start layer (x lambda). Returns the loss, detached."""
    with torch.autocast(trainer.device.type, dtype=torch.bfloat16, enabled=trainer.amp):
        out, features = forward_with_features(trainer.net, images)
        gt = ground_truth(out.heatmaps[-1], cfg.sigma, cfg.truncate)
        loss = cfg.trade_off * heatmap_kl(head(features), gt, eps=cfg.eps)
        if trainer.dist.enabled:  # DDP expects every parameter in the graph: the main head's gradient is 0
            loss = loss + 0.0 * sum(h.float().sum() for h in out.heatmaps)
    frozen = list(main_head(trainer.net).parameters()) + list(head.parameters())
    frozen_ids = {id(p) for p in frozen}
    extractor = [p for p in trainer.model.parameters() if p.requires_grad and id(p) not in frozen_ids]
    _update(trainer, loss, extractor, frozen)
    return loss.detach()


class RegDACallback(Callback):
    """After the trainer's step A, outside autocast: steps B and C on the batch's target images,
    then the warm-start counter advances (published ``model.step()``, R L339)."""

    def __init__(self, head: AdversarialHead, cfg: RegDAConfig):
        self.head = head
        self.cfg = cfg

    def on_step_end(self, trainer, batch, out):
        images = batch["target"]["image"]
        loss_gf = adversary_step(trainer, images, self.head, self.cfg)
        loss_gt = extractor_step(trainer, images, self.head, self.cfg)
        self.head.advance()
        return {"loss/ground_false": loss_gf, "loss/ground_truth": loss_gt}


# ---------------------------------------------------------------------------------- the method
def feature_width(job: AdaptJob) -> int:
    """C of the features the heads read (built on the meta device: no memory, no weights read)."""
    with torch.device("meta"):
        model = build_model(dataclasses.replace(job.cfg.model, pretrained=""), NUM_JOINTS)
    return int(main_head(model).in_channels)


def build_adversarial_head(cfg: RegDAConfig, in_channels: int, num_joints: int = NUM_JOINTS) -> AdversarialHead:
    """The published head (``cfg.head_channels`` wide, or as wide as its input) behind the
    warm-start gradient layer of ``cfg``."""
    hidden = cfg.head_channels or in_channels
    return AdversarialHead(regression_head(in_channels, num_joints, hidden), cfg.warm_lo, cfg.warm_hi, cfg.warm_alpha,
                           cfg.warm_iters)


def _setup(job: AdaptJob) -> None:
    """The adversarial head (its initial weights depend on the seed only) and the batchability check."""
    job.check_batchable({"source": job.data["source"], "target": job.data["target"]})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(epoch_seed(job.cfg.seed, 525_252))
        job.modules["regda_adversarial_head"] = build_adversarial_head(job.section, feature_width(job))


def _on_build(job: AdaptJob) -> None:
    if job.ctx.dist.enabled:  # the trainer wraps only the pose model in DDP
        average_gradients_over_ranks(job.modules["regda_adversarial_head"])


def _plan_round(job: AdaptJob, r: int) -> RoundPlan:
    """One round: step A in the trainer's step, steps B and C in :class:`RegDACallback`."""
    cfg, head = job.section, job.modules["regda_adversarial_head"]
    roles = {"source": job.data["source"], "target": job.data["target"]}
    steps = job.steps_per_epoch(max(len(ds) for ds in roles.values()), cfg.steps_per_epoch)
    return RoundPlan(partial(regda_step, head=head, cfg=cfg), job.mixed(roles, steps), desc="RegDA",
                     callbacks=(RegDACallback(head, cfg),))


REGDA = register(Method(
    "regda", "RegDA (adversarial regressor, ground-false disparity)", section="regda", config=RegDAConfig,
    setup=_setup, on_build=_on_build, plan_round=_plan_round,
    tags=lambda job: {"regda_source_loss": job.section.source_loss}))
