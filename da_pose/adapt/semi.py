"""The semi-supervised protocol in the method framework: a few labelled target images for every
adaptation method, implemented once.

With ``data.target_labels`` set (:mod:`da_pose.data.labelled`), :func:`load_target` picks the
run's labelled subset of the target train split, writes it to the run folder and MLflow, and drops
every other target label before any dataset is built. :func:`supervised_plan` then wraps each
round's :class:`~da_pose.adapt.method.RoundPlan`: every batch gains a ``target_labelled`` batch
of the subset, and the step's loss gains ``semi.weight`` times the joints MSE on it (logged as
``loss/target_labelled``). The method's own step never sees that batch, so CC-SSL, plain_pl,
WS-CDA, the mean teacher, RegDA and any later method get the term without a line of their own.

Section ``semi`` (``--set semi.supervised=false`` turns the term off, e.g. to measure what the
labels add through the selection alone).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Mapping, Sequence

from da_pose import config as config_mod
from da_pose.config import Config
from da_pose.data import labelled
from da_pose.data.records import PoseRecord
from da_pose.errors import ConfigError
from da_pose.train.losses import joints_mse


@dataclass(frozen=True)
class SemiConfig:
    """The supervised term on the labelled target subset (on whenever ``data.target_labels`` is set)."""

    supervised: bool = True  # add the joints MSE on the labelled target images to every method's loss
    weight: float = 1.0  # its weight against the method's own loss

    def check(self) -> None:
        if self.weight < 0:
            raise ConfigError(f"semi.weight must be >= 0, got {self.weight}")


config_mod.register_section("semi", SemiConfig)


def label_spec(cfg: Config) -> labelled.LabelSpec:
    """``data.target_labels`` parsed and checked against the config (ConfigError otherwise)."""
    spec = labelled.parse_spec(cfg.data.target_labels)
    if spec.active and cfg.wscda.target_labelled and cfg.method in ("wscda", "wscda_pplo"):
        raise ConfigError("wscda.target_labelled and data.target_labels both name labelled target images; use "
                          "data.target_labels (the protocol every method shares) and set wscda.target_labelled=0")
    return spec


def select_labelled(ctx, records: Sequence[PoseRecord]) -> tuple[list[PoseRecord], list[PoseRecord]]:
    """``(records with only the chosen labels, the chosen records)`` for the run of ``ctx``; the
    choice is written to the run folder and MLflow. Without ``data.target_labels``: ``(records, [])``."""
    spec = label_spec(ctx.cfg)
    if not spec.active:
        return list(records), []
    chosen = labelled.select(records, spec, ctx.cfg.seed)
    labelled.write_selection(ctx, records, chosen, spec)
    print(f"semi-supervised: {len(chosen)} of {len(records)} target train images labelled "
          f"(data.target_labels={spec.text}, seed {ctx.cfg.seed})")
    return labelled.strip_unlabelled(records, chosen), [records[i] for i in chosen.tolist()]


def load_target(job, records: Sequence[PoseRecord]) -> list[PoseRecord]:
    """The adaptation job's target train records, stripped to the labelled subset's labels; the
    subset's own (augmented) dataset goes to ``job.data["target_labelled"]``."""
    stripped, chosen = select_labelled(job.ctx, records)
    if chosen:
        job.data[labelled.ROLE] = job.dataset(chosen, train=True)
        if not len(job.data[labelled.ROLE]):
            raise ConfigError(f"data.target_labels={job.cfg.data.target_labels}: no labelled image is readable")
    return stripped


def _supervised_step(model, batch: Mapping, inner, weight: float) -> dict:
    """The method's step on the batch without the labelled role, plus ``weight`` x the joints MSE
    on ``batch["target_labelled"]``.

    Shape:
        batch["target_labelled"]["image"]: (B, 3, S, S); ["target"]: (B, K, h, w); ["target_weight"]: (B, K)
    """
    lab = batch[labelled.ROLE]
    out = dict(inner(model, {k: v for k, v in batch.items() if k != labelled.ROLE}))
    sup = joints_mse(model(lab["image"]).heatmaps, lab["target"], lab["target_weight"])
    out["loss"] = out["loss"] + weight * sup
    out["loss/target_labelled"] = sup.detach()
    return out


class WithLabelled:
    """The round's batches, each with one batch of the labelled subset under ``target_labelled``."""

    def __init__(self, batches, loader):
        self.batches = batches
        self.loader = loader

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        labelled_batches = iter(labelled.Cycled(self.loader, 1 << 62))
        for batch in self.batches:
            if not isinstance(batch, Mapping):
                raise TypeError("the semi-supervised term needs a round plan whose batches are dicts of roles")
            yield {**batch, labelled.ROLE: next(labelled_batches)}


def supervised_plan(job, plan):
    """``plan`` with the supervised term on the labelled subset, when there is one and
    ``semi.supervised`` is on; else ``plan`` unchanged."""
    ds = job.data.get(labelled.ROLE)
    semi = job.cfg.section("semi")
    if ds is None or not semi.supervised:
        return plan
    step = lambda model, batch: _supervised_step(model, batch, plan.step, semi.weight)  # noqa: E731
    batches = lambda epoch: WithLabelled(plan.batches(epoch),  # noqa: E731
                                         labelled.labelled_loader(job.cfg, ds, epoch, job.ctx.dist))
    return dataclasses.replace(plan, step=step, batches=batches, desc=f"{plan.desc} + {len(ds)} labelled")


def finetune_batches(cfg: Config, ctx, train_ds, total: int):
    """The supervised-only floor: ``batches(epoch)`` over the labelled subset ``train_ds`` for as
    many steps as one pass over the ``total`` images of the whole train split (the oracle's
    schedule), so the floor differs from the oracle in its labels only."""
    steps = max(1, total // (cfg.train.batch_size * ctx.dist.world_size))
    return lambda epoch: labelled.Cycled(labelled.labelled_loader(cfg, train_ds, epoch, ctx.dist, offset=0), steps)
