"""WS-CDA: weakly- and semi-supervised cross-domain adaptation (Cao et al., ICCV 2019).

Three data sources are mixed in every step (FACTS section 5):

- a large labelled set of **another body plan** (humans in the paper; the embedded benchmark's
  biped): only the joints its ``joint_map`` carries onto the TigDog skeleton are supervised
  (unmapped joints have visible 0, hence target weight 0);
- **labelled animals**: the synthetic source, plus optionally a few labelled target images;
- **unlabelled target animals**: their labels are never used (the dataset's keypoints are zeroed).

A domain discriminator on the pose model's features (``PoseOutput.features``) has two logits:
y^ = "animal vs other body plan" and z^ = "target species vs not", the latter counted on animal
samples only. Losses (Cao et al. Eq. 1-3):

    L_DDL  = w1 * BCE(y^, y) + y * BCE(z^, z)
    L_pose = w2 * L_animal + L_other               (joints MSE on heatmaps)
    L      = alpha * L_DDL + beta * L_pose,        alpha = -1, beta = 500

The discriminator minimises L_DDL while the feature extractor maximises it (alpha = -1). The
paper writes sums over the batch; here each term is the mean over the samples it is defined on
(BCE(y^) and the other-body-plan pose loss over their samples, BCE(z^) and the animal pose loss
over the animal samples). The sub-batch sizes are fixed, so this only rescales w1, w2 and beta by
constants and makes the loss independent of the batch size.

Two ways to optimise the min-max (``wscda.mode``):

- ``grl``: a gradient reversal layer (Ganin & Lempitsky 2015) between the features and the
  discriminator, so one backward pass of ``L = beta * L_pose + L_DDL`` trains the discriminator
  to minimise L_DDL and hands the extractor ``-lam * dL_DDL/dfeatures``. With
  ``lam = -alpha * lambda(p)`` and the warm-up ``lambda(p) = grl_max * (2 / (1 + exp(-grl_warmup
  * p)) - 1)`` (p = progress 0..1), alpha = -1 is the published sign, reached smoothly: early,
  the discriminator's noisy gradient does not disturb the pretrained extractor. alpha = 0 trains
  the discriminator without any adversarial pressure (an ablation).
- ``minmax``: the published alternating optimisation. The extractor is trained on ``beta *
  L_pose + alpha * L_DDL`` with the discriminator held fixed, then (a trainer callback, outside
  autocast) the discriminator takes one step on L_DDL of the same batch's *detached* features
  with its own optimizer (Adam, ``disc_lr``). The published code updates the discriminator
  first; here it learns from the batch right after the extractor did (a deviation of one step).
  Note that maximising a cross-entropy is unbounded below in loss value (the gradients stay
  bounded: |sigmoid - label| <= 1); the GRL mode with warm-up is the gentler choice.

After the adversarial phase, PPLO (Progressive Pseudo-label-based Optimization) retrains on the
unlabelled target with pseudo-labels whose kept share rises over the rounds. It reuses CC-SSL's
pseudo-labeller and curriculum (:mod:`da_pose.adapt.ccssl`) with ``keep_schedule = pplo_keep``.
"""

from __future__ import annotations

import dataclasses
import math
from functools import partial
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call
from torch.utils.data import ConcatDataset, Dataset

from da_pose.adapt.ccssl import generate_pseudo_labels
from da_pose.adapt.method import AdaptJob, Method, RoundPlan, register, variant
from da_pose.adapt.pseudo_labels import pseudo_label_round
from da_pose.config import WSCDA_MODES, CCSSLConfig, WSCDAConfig
from da_pose.errors import ConfigError
from da_pose.models.discriminator import ConvDomainDiscriminator, DomainDiscriminator
from da_pose.models.factory import feature_channels
from da_pose.models.layers import grad_reverse
from da_pose.train.losses import joints_mse
from da_pose.train.trainer import Callback, epoch_seed

MODES = WSCDA_MODES

# the names are the config's WSCDA_DISCRIMINATORS (checked there, once)
DISCRIMINATORS: dict[str, Callable[..., nn.Module]] = {
    "mlp": DomainDiscriminator,
    "conv": ConvDomainDiscriminator,
}


# ---------------------------------------------------------------------------------- schedule
def grl_lambda(progress: float, max_lambda: float = 1.0, warmup: float = 10.0) -> float:
    """Gradient-reversal warm-up (Ganin & Lempitsky 2015, Sec. 5):
    ``max_lambda * (2 / (1 + exp(-warmup * p)) - 1)``, p clamped to [0, 1].

    0 at the start, ``max_lambda * tanh(warmup / 2)`` at the end (0.9999 x max for warmup 10).
    """
    p = min(max(float(progress), 0.0), 1.0)
    return float(max_lambda) * (2.0 / (1.0 + math.exp(-float(warmup) * p)) - 1.0)


# ---------------------------------------------------------------------------------- losses
def ddl_loss(logits: Tensor, y: Tensor, z: Tensor, w1: float = 1.0, balance_y: bool = False) -> dict[str, Tensor]:
    """Domain discriminator loss L_DDL (Cao et al. ICCV 2019, Eq. 1).

    ``w1 * BCE(y^, y)`` averaged over all samples plus ``BCE(z^, z)`` averaged over the animal
    samples (y = 1) only: whether an image of the other body plan shows the target species is
    meaningless. Logits, not probabilities (``binary_cross_entropy_with_logits``: stable).

    ``balance_y``: the y term is the mean of the two classes' mean BCEs instead of the mean over
    all samples. A WS-CDA batch is two thirds animals, so the plain mean lets the y head sit at
    the prior (every sample "animal", balanced accuracy 0.5) for long; balanced, a head that
    cannot tell the domains apart costs log 2 and its balanced accuracy shows what it learnt.

    Args:
        logits: column 0 = y^ (animal vs other), column 1 = z^ (target vs not).
        y: 1 for animal samples, 0 for the other body plan.
        z: 1 for target-domain samples, 0 otherwise.

    Shape:
        logits: (B, 2); y, z: (B,) -> {"ddl", "ddl_y", "ddl_z"} scalars
    """
    if logits.dim() != 2 or logits.shape[1] != 2:
        raise ValueError(f"ddl_loss: expected logits (B, 2) [y, z], got {tuple(logits.shape)}")
    logits = logits.float()
    y = y.to(logits)
    z = z.to(logits)
    per_y = F.binary_cross_entropy_with_logits(logits[:, 0], y, reduction="none")  # B
    animal = y > 0.5
    if balance_y and animal.any() and (~animal).any():
        loss_y = 0.5 * (per_y[animal].mean() + per_y[~animal].mean())
    else:
        loss_y = per_y.mean()
    per_z = F.binary_cross_entropy_with_logits(logits[:, 1], z, reduction="none")  # B
    loss_z = (y * per_z).sum() / y.sum().clamp(min=1.0)
    return {"ddl": w1 * loss_y + loss_z, "ddl_y": loss_y, "ddl_z": loss_z}


def pose_loss(per_sample: Tensor, y: Tensor, w2: float = 1.0) -> dict[str, Tensor]:
    """Keypoint loss L_pose (Cao et al. Eq. 2): ``w2 * L_animal + L_other``.

    Each part is the mean of the per-sample heatmap losses over its own samples. Joints without
    a label (the other body plan's unmapped joints, unlabelled or off-map joints) already carry
    target weight 0 in ``per_sample`` (``joints_mse(..., reduction="none")``).

    Shape:
        per_sample: (B,); y: (B,) 1 animal / 0 other body plan -> {"pose", "pose_animal",
        "pose_other"} scalars
    """
    y = y.to(per_sample)
    animal = (y * per_sample).sum() / y.sum().clamp(min=1.0)
    other = ((1 - y) * per_sample).sum() / (1 - y).sum().clamp(min=1.0)
    return {"pose": w2 * animal + other, "pose_animal": animal, "pose_other": other}


def balanced_accuracy(logits: Tensor, labels: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean over the classes present of the per-class accuracy of ``logits > 0``.

    Chance is 0.5 whatever the batch composition (a third of a WS-CDA batch is the other body
    plan), so a discriminator fooled by aligned features reads about 0.5. NaN when ``mask``
    selects nothing.

    Shape:
        logits, labels, mask: (B,) -> ()
    """
    labels = labels > 0.5
    mask = torch.ones_like(labels) if mask is None else mask.bool()
    correct = ((logits > 0) == labels).float()
    accs = [correct[mask & (labels == c)].mean() for c in (False, True) if (mask & (labels == c)).any()]
    return torch.stack(accs).mean() if accs else torch.tensor(float("nan"))


def domain_accuracy(logits: Tensor, y: Tensor, z: Tensor) -> dict[str, Tensor]:
    """Balanced accuracy of the y head (all samples) and of the z head (animal samples only).

    Shape:
        logits: (B, 2); y, z: (B,) -> {"acc_y", "acc_z"} scalars
    """
    logits = logits.detach().float()
    return {"acc_y": balanced_accuracy(logits[:, 0], y),
            "acc_z": balanced_accuracy(logits[:, 1], z, mask=y > 0.5)}


# ---------------------------------------------------------------------------------- the adversary
class DomainAdversary(nn.Module):
    """The domain discriminator with what its optimisation needs between steps.

    A Trainer ``extra_module``: its parameters join the trainer's optimizer and its state the
    checkpoint. The step counter (progress of the GRL warm-up) and, in ``minmax`` mode, the
    discriminator's own optimizer are kept as the module's extra state
    (``get_extra_state``), so a resumed run continues both exactly.

    In ``minmax`` mode the trainer's optimizer never sees a gradient for the discriminator: it
    is updated only by :meth:`update` (its own optimizer), and the extractor's loss reads it
    through detached weights (:meth:`fixed_logits`).

    Args:
        disc: a discriminator with 2 outputs (y, z), e.g. ``DomainDiscriminator(C, num_domains=2)``.
        mode: ``grl`` or ``minmax``.
        total_steps: length of the adversarial phase (the warm-up's p = step / total_steps).
        alpha: weight of L_DDL for the extractor (published -1).
        grl_max, grl_warmup: the warm-up of :func:`grl_lambda`.
        disc_lr: learning rate of the discriminator's Adam in ``minmax`` mode.

    Shape:
        features: (B, C, h, w) -> logits (B, 2)
    """

    def __init__(self, disc: nn.Module, mode: str = "grl", total_steps: int = 1, alpha: float = -1.0,
                 grl_max: float = 1.0, grl_warmup: float = 10.0, disc_lr: float = 1e-3):
        super().__init__()
        if mode not in MODES:
            raise ConfigError(f"wscda.mode: unknown value '{mode}'; valid: {', '.join(MODES)}")
        self.disc = disc
        self.mode = mode
        self.total_steps = max(1, int(total_steps))
        self.alpha = float(alpha)
        self.grl_max = float(grl_max)
        self.grl_warmup = float(grl_warmup)
        self.step = 0
        self.optimizer = torch.optim.Adam(disc.parameters(), lr=disc_lr) if mode == "minmax" else None

    # ---- schedule
    def progress(self) -> float:
        return min(1.0, self.step / self.total_steps)

    def lam(self) -> float:
        """Gradient-reversal coefficient: ``-alpha * lambda(p)`` (alpha = -1: the warm-up itself)."""
        return -self.alpha * grl_lambda(self.progress(), self.grl_max, self.grl_warmup)

    def advance(self) -> None:
        self.step += 1

    # ---- the three ways of reading the features
    def forward(self, features: Tensor) -> Tensor:
        return self.disc(features)

    def reversed_logits(self, features: Tensor) -> Tensor:
        """``grl`` mode: identity forward, ``-lam`` x the gradient into the features backward."""
        return self.disc(grad_reverse(features, self.lam()))

    def fixed_logits(self, features: Tensor) -> Tensor:
        """The discriminator with its current weights held fixed: gradient reaches the features
        only (``minmax`` extractor step)."""
        params = {k: v.detach() for k, v in self.disc.named_parameters()}
        params.update(dict(self.disc.named_buffers()))
        return functional_call(self.disc, params, (features,))

    def update(self, features: Tensor, y: Tensor, z: Tensor, w1: float = 1.0,
               balance_y: bool = False) -> tuple[Tensor, dict[str, Tensor]]:
        """``minmax`` mode: one discriminator step minimising L_DDL on detached features.

        Returns the logits and losses *before* the update (what the discriminator knew when it
        saw this batch), detached.

        Shape:
            features: (B, C, h, w); y, z: (B,) -> logits (B, 2), {"ddl", "ddl_y", "ddl_z"}
        """
        if self.optimizer is None:
            raise ConfigError("DomainAdversary.update needs mode='minmax' (grl mode trains the "
                              "discriminator through the trainer's optimizer)")
        logits = self.disc(features.detach())
        losses = ddl_loss(logits, y, z, w1, balance_y)
        self.optimizer.zero_grad(set_to_none=True)
        losses["ddl"].backward()
        self.optimizer.step()
        return logits.detach(), {k: v.detach() for k, v in losses.items()}

    # ---- checkpoint
    def get_extra_state(self) -> dict:
        return {"step": int(self.step), "optimizer": self.optimizer.state_dict() if self.optimizer else {}}

    def set_extra_state(self, state) -> None:
        self.step = int(state.get("step", 0))
        if self.optimizer is not None and state.get("optimizer"):
            self.optimizer.load_state_dict(state["optimizer"])

    def extra_repr(self) -> str:
        return f"mode={self.mode}, alpha={self.alpha:g}, total_steps={self.total_steps}"


def build_adversary(cfg: WSCDAConfig, feature_channels: int, total_steps: int) -> DomainAdversary:
    """The discriminator named by ``cfg.disc`` with two heads (y, z) inside a DomainAdversary."""
    disc = DISCRIMINATORS[cfg.disc](feature_channels, hidden=cfg.disc_hidden, num_domains=2)
    return DomainAdversary(disc, cfg.mode, total_steps, alpha=cfg.alpha, grl_max=cfg.grl_max,
                           grl_warmup=cfg.grl_warmup, disc_lr=cfg.disc_lr)


def average_gradients_over_ranks(module: nn.Module, group=None) -> list:
    """Data-parallel training for a module the trainer does not wrap in DDP (torchrun): each
    parameter's gradient is averaged over the ranks as soon as backward has accumulated it.

    The collectives run on a process group of their own, so they never interleave with the
    buckets DDP all-reduces for the pose model. Call it on every rank; returns the hook handles.
    """
    import torch.distributed as tdist

    group = group if group is not None else tdist.new_group()
    world = tdist.get_world_size(group)

    def hook(p: Tensor) -> None:
        tdist.all_reduce(p.grad, group=group)
        p.grad.div_(world)

    return [p.register_post_accumulate_grad_hook(hook) for p in module.parameters()]


# ---------------------------------------------------------------------------------- data
class DomainTagged(Dataset):
    """A dataset whose items also carry ``domain`` = float32 (2,) ``[y, z]``.

    y = 1 animal / 0 other body plan; z = 1 target species / 0 not (Cao et al. Eq. 1).
    """

    def __init__(self, dataset: Dataset, y: float, z: float):
        self.dataset = dataset
        self.domain = torch.tensor([float(y), float(z)], dtype=torch.float32)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        item = dict(self.dataset[i])
        item["domain"] = self.domain.clone()
        return item


def labelled_subset(n: int, count: int, seed: int) -> np.ndarray:
    """Positions of the ``count`` labelled target images: the first ``count`` of a seeded
    permutation of ``n``, so the 10-image set is part of the 50-image one. Sorted.

    Raises:
        ConfigError: more labelled images asked for than the target train split has.
    """
    if count < 0 or count > n:
        raise ConfigError(f"wscda.target_labelled={count}: expected 0..{n} (the target train split has {n} images)")
    perm = np.random.default_rng(int(seed) + 7_777).permutation(n)
    return np.sort(perm[:count])


# ---------------------------------------------------------------------------------- PPLO
def pplo_ccssl_config(ccssl: CCSSLConfig, cfg: WSCDAConfig) -> CCSSLConfig:
    """CC-SSL's pseudo-labelling settings for PPLO: the ``ccssl`` section's transforms, confidence
    and batch size, with the curriculum on, ``keep_schedule = pplo_keep`` (rising kept share per
    round) and the temporal term only when ``pplo_temporal``."""
    return dataclasses.replace(ccssl, rounds=cfg.pplo_rounds, keep_schedule=tuple(cfg.pplo_keep), curriculum=True,
                               temporal=cfg.pplo_temporal)


# ---------------------------------------------------------------------------------- the step
def wscda_step(model, batch: dict, adversary: DomainAdversary, cfg: WSCDAConfig) -> dict[str, Tensor]:
    """WS-CDA training step (Cao et al. ICCV 2019, Eq. 1-3), pure: no optimizer step inside.

    ``batch`` holds three batches: ``other`` (the other body plan; only its mapped joints have
    weight), ``animal`` (source, plus any labelled target images) and ``target`` (unlabelled
    target: never in the pose loss). Each item carries ``domain`` = [y, z]. All images go through
    the model in one forward pass (one BatchNorm statistic, as the pseudo-label step); the
    discriminator reads ``PoseOutput.features``.

    ``grl``: ``loss = beta * L_pose + L_DDL`` through a gradient reversal layer of coefficient
    ``adversary.lam()``. ``minmax``: ``loss = beta * L_pose + alpha * L_DDL`` with the
    discriminator fixed; its own step follows in :class:`AdversaryCallback` (from ``_features``).

    Shape:
        batch[part]["image"]: (B_part, 3, S, S); ["target"]: (B_part, K, h, w);
        ["target_weight"]: (B_part, K); ["domain"]: (B_part, 2)
    """
    parts = [batch["other"], batch["animal"], batch["target"]]
    n_lab = parts[0]["image"].size(0) + parts[1]["image"].size(0)  # labelled samples first
    out = model(torch.cat([p["image"] for p in parts]))
    heatmaps = [h[:n_lab] for h in out.heatmaps]  # B_lab, K, h, w per stack
    target = torch.cat([parts[0]["target"], parts[1]["target"]])
    weight = torch.cat([parts[0]["target_weight"], parts[1]["target_weight"]])
    domain = torch.cat([p["domain"] for p in parts]).float()  # B, 2
    y, z = domain[:, 0], domain[:, 1]
    pose = pose_loss(joints_mse(heatmaps, target, weight, reduction="none"), y[:n_lab], cfg.w2)
    features = out.features  # B, C, h', w'
    logged: dict[str, Tensor] = {}
    if cfg.mode == "grl":
        logits = adversary.reversed_logits(features)
        ddl = ddl_loss(logits, y, z, cfg.w1, cfg.balance_y)
        loss = cfg.beta * pose["pose"] + ddl["ddl"]
        logged["grl/lambda"] = torch.tensor(adversary.lam())
    else:
        with torch.no_grad():
            logits = adversary(features.detach())
            ddl = ddl_loss(logits, y, z, cfg.w1, cfg.balance_y)
        adversarial = ddl_loss(adversary.fixed_logits(features), y, z, cfg.w1, cfg.balance_y)
        loss = cfg.beta * pose["pose"] + cfg.alpha * adversarial["ddl"]
        logged["loss/ddl_extractor"] = adversarial["ddl"].detach()
        logged.update({"_features": features.detach(), "_y": y, "_z": z})
    acc = domain_accuracy(logits, y, z)
    logged.update({
        "loss": loss,
        "loss/pose": pose["pose"].detach(),
        "loss/pose_animal": pose["pose_animal"].detach(),
        "loss/pose_other": pose["pose_other"].detach(),
        "loss/ddl": ddl["ddl"].detach(),
        "loss/ddl_y": ddl["ddl_y"].detach(),
        "loss/ddl_z": ddl["ddl_z"].detach(),
        "disc/acc_y": acc["acc_y"],
        "disc/acc_z": acc["acc_z"],
    })
    return logged


class AdversaryCallback(Callback):
    """After every step, outside autocast: ``minmax``'s discriminator step on the step's detached
    features, then the warm-up schedule's clock (``grl``'s coefficient) advances."""

    def __init__(self, adversary: DomainAdversary, cfg: WSCDAConfig):
        self.adversary = adversary
        self.cfg = cfg

    def on_step_end(self, trainer, batch, out):
        if self.cfg.mode == "minmax":
            self.adversary.update(out["_features"].float(), out["_y"], out["_z"], self.cfg.w1, self.cfg.balance_y)
        self.adversary.advance()
        return None


# ---------------------------------------------------------------------------------- the methods
def _setup(job: AdaptJob) -> None:
    """The three sources of Cao et al. Sec. 3.1, each item tagged with its domain [y, z], and
    the discriminator (its initial weights depend on the seed only)."""
    cfg, w = job.cfg, job.section
    target_records = job.data["target_eval"].records  # readable frames only
    pick = labelled_subset(len(target_records), w.target_labelled, cfg.seed)
    animal_parts = [DomainTagged(job.data["source"], 1, 0)]
    target_train = job.data["target"]
    if pick.size:
        labelled = [target_records[i] for i in pick]
        animal_parts.append(DomainTagged(job.dataset(labelled, train=True), 1, 1))
        unlabelled = [target_records[i] for i in np.setdiff1d(np.arange(len(target_records)), pick)]
        target_train = job.hidden_labels(job.dataset(unlabelled, train=True))
        job.data["target_eval"] = job.dataset(unlabelled, train=False)  # PPLO labels these
        job.data["target"] = target_train
    job.data["animal"] = ConcatDataset(animal_parts)
    job.state["sources"] = {"other": DomainTagged(job.data["other"], 0, 0), "animal": job.data["animal"],
                            "target": DomainTagged(target_train, 1, 1)}
    job.state["labelled"] = int(pick.size)
    job.check_batchable(job.state["sources"])
    steps = job.steps_per_epoch(len(job.data["animal"]), w.steps_per_epoch)
    job.state["steps"] = steps
    epochs = cfg.train.epochs
    total = epochs * steps if not cfg.train.max_steps else min(epochs * steps, cfg.train.max_steps)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(epoch_seed(cfg.seed, 424_242))
        job.modules["domain_adversary"] = build_adversary(w, feature_channels(cfg.model), total)


def _on_build(job: AdaptJob) -> None:
    if job.ctx.dist.enabled:  # the trainer wraps only the pose model in DDP
        average_gradients_over_ranks(job.modules["domain_adversary"].disc)


def _round_epochs(job: AdaptJob, r: int) -> int:
    return job.cfg.train.epochs if r == 0 else 1


def _plan_round(job: AdaptJob, r: int) -> RoundPlan:
    """Round 0: the adversarial phase; round r > 0: PPLO round r - 1 (CC-SSL's pseudo-labeller
    with the rising ``pplo_keep`` share), on the labelled animals and the unlabelled target."""
    w, adversary = job.section, job.modules["domain_adversary"]
    if r == 0:
        return RoundPlan(partial(wscda_step, adversary=adversary, cfg=w), job.mixed(job.state["sources"], job.state["steps"]),
                         desc=f"WS-CDA ({w.mode})", callbacks=(AdversaryCallback(adversary, w),))
    label_ds = job.data["target_eval"]
    steps = job.steps_per_epoch(len(label_ds), w.pplo_steps)
    return pseudo_label_round(job, r - 1, pplo_ccssl_config(job.cfg.ccssl, w), generate_pseudo_labels,
                              job.data["animal"], label_ds, job.data["target"], steps, "pplo", "PPLO round")


def _tags(job: AdaptJob) -> dict:
    return {"wscda_mode": job.section.mode, "target_labelled": str(job.state["labelled"])}


def _check_pplo(cfg) -> None:
    if not cfg.wscda.pplo_rounds:
        raise ConfigError("wscda_pplo needs wscda.pplo_rounds > 0 (run the adversarial phase alone with adapt wscda)")


WSCDA = register(Method(
    "wscda", "WS-CDA (domain discriminators, adversarial training)", section="wscda", config=WSCDAConfig,
    needs=("source", "target", "other"), rounds=lambda w: 1 + w.pplo_rounds, round_epochs=_round_epochs,
    setup=_setup, on_build=_on_build, plan_round=_plan_round, tags=_tags, fixed={"pplo_rounds": 0}))
register(variant(WSCDA, "wscda_pplo", "WS-CDA then PPLO rounds (progressive pseudo-labels)", fixed={},
                 check=_check_pplo))
