"""The method interface: what an adaptation method is, the registry, and the one job that runs any.

A method is a :class:`Method` in :data:`METHODS`: the config section it reads, the data it
needs, the modules it adds (optimized ones such as a discriminator, state-only ones such as an
EMA teacher), its step function and its hooks. :func:`run_adaptation` owns everything else:
the init checkpoint, the datasets, the target-test evaluation (reported at epoch ends, never
used to select), the rounds, the final report and MLflow.

Training is a sequence of rounds (one for most methods). Round ``r`` spans
``round_epochs(job, r)`` trainer epochs; ``plan_round(job, r)`` is called when round ``r``
starts (or is resumed): the place to make pseudo-labels. A resumed run skips the rounds whose
epochs are done, so it continues exactly where the checkpoint was written.

The smallest method is a section and a step function::

    @dataclass(frozen=True)
    class EntropyConfig:
        weight: float = 1.0

    def entropy_step(model, batch, cfg):  # batch["source"], batch["target"] (unlabelled)
        ...
        return {"loss": loss, "loss/entropy": ent.detach()}

    register(Method("entropy", "entropy minimisation on the target", section="entropy",
                    config=EntropyConfig, step=entropy_step))

See docs/adding_a_method.md.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import torch
from torch import nn

from da_pose import checkpoint
from da_pose import config as config_mod
from da_pose.adapt import semi
from da_pose.config import Config
from da_pose.data.loaders import domain_records, eval_loader, make_codec, make_dataset, mixed_batches
from da_pose.data.skeleton import NUM_JOINTS
from da_pose.errors import ConfigError
from da_pose.eval.criteria import criteria_evaluator
from da_pose.eval.target import TargetTest, evaluate_split, merge_evaluators
from da_pose.run import RunContext, build, open_run
from da_pose.train.trainer import Callback

DATA_ROLES = ("source", "target", "other")


@dataclass(frozen=True)
class RoundPlan:
    """What one round trains on: ``step(model, batch) -> {"loss": ...}`` over ``batches(epoch)``."""

    step: Callable[[nn.Module, Any], Mapping[str, torch.Tensor]]
    batches: Callable[[int], Iterable]
    desc: str = ""
    callbacks: tuple[Callback, ...] = ()


@dataclass(frozen=True)
class Method:
    """An adaptation method.

    Args:
        name: the name on the command line (``da-pose adapt NAME``) and the run's ``method`` tag.
        summary: one line for ``da-pose adapt --help`` and the final table's title.
        section: the config section it reads (``cfg.section(section)``).
        config: the section's frozen dataclass; registered as a config section unless built in.
        needs: data roles loaded for it: ``source`` (labelled source train), ``target``
            (unlabelled target train: ``job.data["target"]`` with its labels hidden and
            ``job.data["target_eval"]`` without augmentation), ``other`` (another body plan).
            With ``data.target_labels`` the target records carry only the labelled subset's labels
            and every round's steps gain its supervised term (:mod:`da_pose.adapt.semi`).
        step: ``step(model, batch, section) -> {"loss": ...}`` for the default round plan (one
            batch of every needed role per step, ``batch[role]``).
        rounds: number of rounds from the section (default 1).
        round_epochs: epochs of round r (default ``train.epochs``).
        setup: ``setup(job)`` before the model is built: datasets of its own, ``job.modules``
            (optimized with the model) and ``job.state_modules`` (saved, never optimized).
        on_build: ``on_build(job)`` after the model and trainer exist (and the checkpoint is
            restored): e.g. copy the student into a new teacher.
        plan_round: ``plan_round(job, r) -> RoundPlan`` when round r starts (default: ``step``
            over mixed batches of ``needs``).
        callbacks: ``callbacks(job) -> [Callback]`` for every round (EMA update, schedules).
        fixed: section values the name implies (applied over the config: ``plain_pl`` is CC-SSL
            without its three consistency terms).
        check: ``check(cfg)`` raises ConfigError for settings the method cannot run with.
        tags: ``tags(job) -> {name: value}`` extra MLflow tags.
        reported: ``reported(job) -> name | None``: a state module of the student's architecture
            (e.g. ``"teacher"``, an :class:`~da_pose.adapt.mean_teacher.EMATeacher`) that is
            evaluated at epoch ends, selected and reported instead of the student; None (or no
            hook) reports the student. Its weights are written as the run's ``reported.pt``,
            which ``evaluate``, ``predict`` and the logged MLflow model then read.
    """

    name: str
    summary: str
    section: str
    config: type | None = None
    needs: tuple[str, ...] = ("source", "target")
    step: Callable | None = None
    rounds: Callable[[Any], int] = lambda section: 1
    round_epochs: Callable[["AdaptJob", int], int] | None = None
    setup: Callable[["AdaptJob"], None] | None = None
    on_build: Callable[["AdaptJob"], None] | None = None
    plan_round: Callable[["AdaptJob", int], RoundPlan] | None = None
    callbacks: Callable[["AdaptJob"], list] | None = None
    fixed: Mapping[str, Any] = field(default_factory=dict)
    check: Callable[[Config], None] | None = None
    tags: Callable[["AdaptJob"], dict] | None = None
    reported: Callable[["AdaptJob"], str | None] | None = None


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add ``method`` to :data:`METHODS` (and its section to the config). Returns it."""
    if method.name in config_mod.BASELINES:
        raise ValueError(f"'{method.name}' is a baseline name, not a method")
    unknown = set(method.needs) - set(DATA_ROLES)
    if unknown:
        raise ValueError(f"method {method.name}: unknown data roles {sorted(unknown)}; valid: {', '.join(DATA_ROLES)}")
    if method.step is None and method.plan_round is None:
        raise ValueError(f"method {method.name}: give a step function or a plan_round hook")
    if method.config is not None:
        config_mod.register_section(method.section, method.config)
    METHODS[method.name] = method
    return method


def diagnostic_tags(cfg: Config) -> dict[str, str]:
    """``diagnostic: target_visibility`` when the run asked the CC-SSL labeller (CC-SSL, plain
    pseudo-labels, PPLO and UDA-Animal label with it) to read the target labels' visibility."""
    return {"diagnostic": "target_visibility"} if cfg.ccssl.diagnostic_visible_only else {}


def variant(base: Method, name: str, summary: str, **changes) -> Method:
    """A method that is ``base`` under another name, e.g. with some section values fixed."""
    return dataclasses.replace(base, name=name, summary=summary, **changes)


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ConfigError(f"unknown method '{name}'; valid: {', '.join(METHODS)}")
    return METHODS[name]


def method_config(cfg: Config, method: Method) -> Config:
    """The run's config: tagged with the method's name, its fixed values applied, checked.

    A config whose ``method`` names another method is refused (so a YAML file written for one
    method cannot be run, and tagged, as another by mistake).
    """
    if cfg.method not in ("source_only", method.name):
        hint = f"run it with da-pose adapt {cfg.method}" if cfg.method in METHODS else f"valid: {', '.join(METHODS)}"
        raise ConfigError(f"the config names method '{cfg.method}' but the command runs '{method.name}'; {hint} "
                          f"(or --set method={method.name})")
    cfg = dataclasses.replace(cfg, method=method.name)
    if method.fixed:
        cfg = config_mod.replace(cfg, **{method.section: dict(method.fixed)})
    if method.check is not None:
        method.check(cfg)
    return cfg


@dataclass
class AdaptJob:
    """What a method's hooks see: the run, its data, its model, its trainer, its own state."""

    cfg: Config
    ctx: RunContext
    method: Method
    codec: Any
    data: dict = field(default_factory=dict)  # role -> dataset (see Method.needs)
    test: TargetTest | None = None
    modules: dict = field(default_factory=dict)  # optimized with the model
    state_modules: dict = field(default_factory=dict)  # saved and resumed, never optimized
    model: nn.Module | None = None
    trainer: Any = None
    state: dict = field(default_factory=dict)  # anything else a method keeps between hooks

    @property
    def section(self):
        return self.cfg.section(self.method.section)

    @property
    def resumed(self) -> bool:
        return self.ctx.resume_from is not None

    def dataset(self, records, train: bool):
        return make_dataset(self.cfg, records, self.codec, train=train)

    def hidden_labels(self, ds):
        """``ds`` with every label zeroed: all joints weigh 0, nothing of the labels is seen."""
        return ds.with_keypoints(np.zeros((len(ds.records), NUM_JOINTS, 3), np.float32))

    def steps_per_epoch(self, size: int, configured: int = 0) -> int:
        """``configured`` steps, or one pass over ``size`` images at the global batch size."""
        return configured or max(1, size // (self.cfg.train.batch_size * self.ctx.dist.world_size))

    def mixed(self, datasets: dict, steps: int) -> Callable[[int], Iterable]:
        """``batches(epoch)``: one seeded loader per named dataset, mixed for ``steps`` steps."""
        return lambda epoch: mixed_batches(self.cfg, datasets, steps, epoch, info=self.ctx.dist)

    def check_batchable(self, datasets: dict) -> None:
        need = self.cfg.train.batch_size * self.ctx.dist.world_size
        for name, ds in datasets.items():
            if len(ds) < need:
                raise ConfigError(f"{self.cfg.data.root}: {self.method.name} source '{name}' has {len(ds)} training "
                                  f"images, fewer than one batch ({need}); lower train.batch_size")


def load_data(job: AdaptJob) -> None:
    """The datasets of ``job.method.needs`` and the target test split."""
    cfg, needs = job.cfg, job.method.needs
    if "other" in needs:
        job.data["other"] = job.dataset(domain_records(cfg, "other", "train"), train=True)
    if "source" in needs:
        job.data["source"] = job.dataset(domain_records(cfg, "source", "train"), train=True)
    if "target" in needs:
        # data.target_labels: the labelled subset's labels only (semi.py); else every label, hidden below
        records = semi.load_target(job, domain_records(cfg, "target", "train"))
        job.data["target_eval"] = job.dataset(records, train=False)
        # readable frames only (the eval dataset dropped unreadable ones); labels never used
        job.data["target"] = job.hidden_labels(job.dataset(job.data["target_eval"].records, train=True))
    job.test = TargetTest.load(job.ctx, job.codec)
    if cfg.train.criteria:
        # label-free checkpoint criteria at epoch ends: recorded, never used to select here
        job.data["source_val"] = job.dataset(domain_records(cfg, "source", "val"), train=False) \
            if "source" in needs else None
        job.state["criteria"] = epoch_criteria(job)


def epoch_criteria(job: AdaptJob) -> Callable[[nn.Module], dict] | None:
    """The label-free criteria (on target train images) and, for methods with a source, the
    source val PCK: :mod:`da_pose.eval.criteria`."""
    target = job.data.get("target_eval")
    source_val = job.data.get("source_val")
    return merge_evaluators(
        criteria_evaluator(job.cfg, target.records, job.codec, job.ctx.device) if target is not None else None,
        partial(evaluate_split, loader=eval_loader(job.cfg, source_val), records=source_val.records,
                codec=job.codec, ctx=job.ctx, prefix="source_val/") if source_val is not None else None)


def default_plan(job: AdaptJob, r: int) -> RoundPlan:
    """``method.step`` on one batch of every needed role per step; steps from the section's
    ``steps_per_epoch`` (when it has one) or one pass over the largest needed dataset."""
    roles = {k: job.data[k] for k in job.method.needs}
    steps = job.steps_per_epoch(max(len(ds) for ds in roles.values()), getattr(job.section, "steps_per_epoch", 0))
    return RoundPlan(partial(job.method.step, cfg=job.section), job.mixed(roles, steps), desc=job.method.name)


def run_adaptation(cfg: Config, method: Method | str) -> dict:
    """Run ``method`` from ``cfg.init``: data, modules, rounds, target-test report, MLflow."""
    method = get_method(method) if isinstance(method, str) else method
    cfg = method_config(cfg, method)
    semi.label_spec(cfg)  # a malformed data.target_labels fails before the run opens
    if cfg.train.selection == "source_val":
        raise ConfigError(f"adapt {method.name}: train.selection=source_val is for pretraining; adaptation selects "
                          "on target_val or reports the last checkpoint")
    with open_run(cfg, f"adapt {method.name}", roles=method.needs) as ctx:
        if not cfg.init and ctx.resume_from is None:
            raise ConfigError(f"adapt {method.name} starts from a pretrained checkpoint: pass --set init=PATH")
        job = AdaptJob(cfg, ctx, method, make_codec(cfg))
        load_data(job)
        if method.setup is not None:
            method.setup(job)
        job.model, job.trainer = build(cfg, ctx, extra_modules=job.modules, state_modules=job.state_modules)
        if method.on_build is not None:
            method.on_build(job)
        reported = method.reported(job) if method.reported else None
        net = reported_network(job, reported)
        ctx.tracker.set_tags({"selection": cfg.train.selection, "settings": cfg.settings,
                              "reported_network": reported or "student", **(method.tags(job) if method.tags else {}),
                              **diagnostic_tags(cfg)})
        evaluate = job.test.evaluator(job.state.get("criteria"))
        if reported:  # the epoch-end evaluation (and target_val selection) looks at that network
            evaluate = partial(_evaluate_other, evaluate, net)
        callbacks = list(method.callbacks(job)) if method.callbacks else []
        plan_round = method.plan_round or default_plan
        trainer, start = job.trainer, 0
        rounds = method.rounds(job.section)
        for r in range(rounds):
            end = start + (method.round_epochs(job, r) if method.round_epochs else cfg.train.epochs)
            if trainer.epoch < end:
                plan = semi.supervised_plan(job, plan_round(job, r))  # + the labelled target term
                trainer.round = r
                trainer.fit(plan.step, plan.batches, end, evaluate=evaluate, select=job.test.select_key(),
                            desc=plan.desc, callbacks=callbacks + list(plan.callbacks))
            start = end
        if not ctx.is_main:
            return {}
        selection = job.test.restore_selected(job.model, trainer)
        write_reported(job, reported, selection)
        who = f", {reported}" if reported else ""
        title = f"{cfg.name}: target test after {method.summary} (checkpoint: {selection}{who})"
        return job.test.report(net, trainer.step, title)


def reported_network(job: AdaptJob, name: str | None) -> nn.Module:
    """The network a run evaluates and reports: the student, or the state module ``name`` (the
    module it wraps when it has one, e.g. the EMA teacher's ``model``)."""
    if not name:
        return job.model
    if name not in job.state_modules:
        raise ConfigError(f"adapt {job.method.name}: reports '{name}', which this run does not have")
    module = job.state_modules[name]
    return getattr(module, "model", module)


def _evaluate_other(evaluate: Callable, net: nn.Module, _student: nn.Module) -> dict:
    return evaluate(net)


def write_reported(job: AdaptJob, name: str | None, selection: str) -> None:
    """``reported.pt``: the reported state module's network as a model checkpoint (taken from
    ``best.pt`` when the run selects on a val split), so that the run's final checkpoint is the
    network its metrics describe. A student-reporting run has none (a stale one is removed)."""
    path = job.trainer.run_dir / "reported.pt"
    if not name:
        path.unlink(missing_ok=True)
        return
    trainer = job.trainer
    when = {"step": trainer.step, "epoch": trainer.epoch}
    if selection != "last":  # restore_selected loaded the student of best.pt; the module too
        best = checkpoint.load(trainer.run_dir / "best.pt")
        job.state_modules[name].load_state_dict(best["state_modules"][name])
        when = {"step": best["step"], "epoch": best["epoch"]}
    net = reported_network(job, name)
    checkpoint.save(path, {"model": net.state_dict(), "arch": trainer.arch, "config": trainer.config_yaml,
                           **when, "reported": name, "selection": selection})
