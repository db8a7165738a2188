"""The life of a run: its folder, its MLflow run, its tags, resume, and the model and trainer
built for it.

``open_run`` creates or resumes ``out_dir/experiment/name`` and its MLflow run, and marks the run
FAILED (or KILLED) when the job raises; ``build`` makes the model and its Trainer and loads
``resume`` / ``init``. The MLflow extras of the ``mlflow`` config section (dataset inputs, system
metrics, the final model as an MLflow model) are logged here too; a failure of one is a warning,
never a lost run or checkpoint.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch

from da_pose import checkpoint
from da_pose.config import Config, dump_yaml, flatten
from da_pose.data.inputs import run_inputs
from da_pose.data.skeleton import NUM_JOINTS
from da_pose.errors import ConfigError, DaPoseError
from da_pose.models.factory import build_model
from da_pose.models.served import HeatmapModel
from da_pose.tracking import MlflowTracker, NullTracker, check_reachable
from da_pose.train import dist
from da_pose.train.trainer import Trainer, resolve_device, to_memory_format


@dataclass
class RunContext:
    """Everything a job shares: config, run folder, tracker, device, DDP info, resume point."""

    cfg: Config
    run_dir: Path
    tracker: object
    device: torch.device
    dist: dist.DistInfo
    resume_from: Path | None = None
    notes: dict = field(default_factory=dict)

    @property
    def is_main(self) -> bool:
        return self.dist.is_main


def arch_of(cfg: Config) -> dict:
    """What a checkpoint must match to be loaded into this config's model."""
    m = cfg.model
    arch = {"backbone": m.backbone, "num_joints": NUM_JOINTS}
    if m.backbone == "hourglass":
        arch.update(stacks=m.stacks, blocks=m.blocks, depth=m.depth, features=m.features)
    else:
        arch.update(deconv_layers=m.deconv_layers, deconv_filters=m.deconv_filters)
    return arch


def shift_tag(root: str | Path) -> dict[str, str]:
    """``{"shift": "pose"}`` (comma list for combined shifts) from a generated benchmark's
    manifest; empty for data without a shift record (real datasets, older benchmark folders)."""
    try:
        shifts = json.loads((Path(root) / "manifest.json").read_text())["gap"]["shifts"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    return {"shift": ",".join(shifts)} if isinstance(shifts, list) and shifts else {}


def run_tags(cfg: Config, command: str) -> dict[str, str]:
    return {
        "command": command,
        "method": cfg.method,
        "backbone": cfg.model.backbone,
        "source": f"{cfg.data.root}#{cfg.data.source}",
        "target": f"{cfg.data.root}#{cfg.data.target}",
        "seed": str(cfg.seed),
        "mlflow.runName": cfg.name,
        **shift_tag(cfg.data.root),  # runs on a shifted benchmark are compared per shift
    }


# The data roles a command uses when its caller does not say (``open_run(..., roles=...)``).
COMMAND_ROLES = {"pretrain": ("source", "target"), "finetune": ("target",)}


def final_checkpoint(cfg: Config, run_dir: Path) -> Path | None:
    """The checkpoint a run reports: ``reported.pt`` when an adaptation run reports another
    network than its student (an EMA teacher, ``adapt.method.write_reported``), else
    ``TargetTest.restore_selected``'s choice: ``best.pt`` when it selects on a val split, else
    ``last.pt``; None when there is none."""
    reported, best, last = run_dir / "reported.pt", run_dir / "best.pt", run_dir / "last.pt"
    if reported.is_file():
        return reported
    if cfg.train.selection != "last" and best.is_file():
        return best
    return last if last.is_file() else None


def log_final_model(ctx: RunContext) -> None:
    """The reported checkpoint as the run's ``checkpoint/`` artifact and as an MLflow PyTorch
    model ``model`` (images -> heatmaps, ``models.served``), registered under
    ``mlflow.register_model`` when set. Its metadata points back to the checkpoint."""
    cfg, tracker = ctx.cfg, ctx.tracker
    path = final_checkpoint(cfg, ctx.run_dir)
    if path is None:
        return
    if f"checkpoint/{path.name}" not in tracker.artifact_paths("checkpoint"):
        tracker.log_artifact(path, "checkpoint")
    mcfg = cfg.section("mlflow")
    if not mcfg.log_model:
        return
    model = HeatmapModel(load_model(path, cfg, torch.device("cpu"))).eval()
    meta = {"da_pose": {"checkpoint": f"runs:/{tracker.run_id}/checkpoint/{path.name}", "arch": arch_of(cfg),
                        "input_size": cfg.data.input_size, "mean": list(cfg.data.mean), "std": list(cfg.data.std),
                        "normalise": cfg.data.normalise, "selection": cfg.train.selection}}
    info = tracker.log_pytorch_model(model, (3, cfg.data.input_size, cfg.data.input_size),
                                     registered_model_name=mcfg.register_model,
                                     serialization_format=mcfg.model_format, metadata=meta)
    version = getattr(info, "registered_model_version", None)
    if version:
        tracker.set_tags({"registered_model": f"models:/{mcfg.register_model}/{version}"})


def _start_extras(ctx: RunContext, roles) -> None:
    mcfg = ctx.cfg.section("mlflow")
    if mcfg.log_datasets:
        inputs = ctx.tracker.extra("reading the dataset digests", run_inputs, ctx.cfg.data, roles)
        ctx.tracker.extra("logging dataset inputs", ctx.tracker.log_inputs, inputs or [])
    if mcfg.system_metrics:
        ctx.tracker.extra("starting system metrics", ctx.tracker.start_system_metrics, mcfg.system_metrics_interval)


@contextmanager
def open_run(cfg: Config, command: str, roles: tuple[str, ...] | None = None) -> Iterator[RunContext]:
    """Create or resume the run folder and its MLflow run; mark the run FAILED on any error.

    A run folder that already holds a checkpoint is continued with ``resume=auto`` and refused
    otherwise, so an earlier run's checkpoint is never overwritten by a new run. ``roles`` are the
    data roles (source, target, other) logged as the run's MLflow dataset inputs (default: by
    command, :data:`COMMAND_ROLES`, else source and target). A run that ends well logs its final
    model (:func:`log_final_model`).
    """
    device = resolve_device(cfg.device)
    info = dist.init(device.type)
    if device.type == "cuda" and info.enabled:
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    run_dir = Path(cfg.out_dir) / cfg.experiment / cfg.name
    state_file = run_dir / "run.json"
    resume_from = None
    run_id = None
    if cfg.resume == "auto":
        if (run_dir / "last.pt").is_file():
            resume_from = run_dir / "last.pt"
        if state_file.is_file():
            run_id = json.loads(state_file.read_text()).get("run_id")
    elif cfg.resume != "no":
        resume_from = Path(cfg.resume)
    elif (run_dir / "last.pt").is_file():
        raise ConfigError(
            f"{run_dir} already holds a run; continue it with --resume auto or start another with --set name=NEW"
        )
    tracker = NullTracker()
    if info.is_main:
        # the store first (nothing is created when it is unreachable), then the folder (an unusable
        # out_dir must fail before an MLflow run exists), then the run
        check_reachable(cfg.tracking_uri)
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DaPoseError(f"cannot create the run folder {run_dir}: {exc.strerror or exc}") from None
        tracker = MlflowTracker(cfg.tracking_uri, cfg.experiment, cfg.name, run_id=run_id,
                                tags=run_tags(cfg, command))
    ctx = RunContext(cfg, run_dir, tracker, device, info, resume_from)
    status = "FINISHED"
    try:
        if info.is_main:
            state_file.write_text(json.dumps({"run_id": tracker.run_id, "tracking_uri": cfg.tracking_uri,
                                              "command": command}, indent=1))
            (run_dir / "config.yaml").write_text(dump_yaml(cfg))
            tracker.log_params(flatten(cfg))
            tracker.log_artifact(run_dir / "config.yaml")
            _start_extras(ctx, roles or COMMAND_ROLES.get(command, ("source", "target")))
        yield ctx
        if info.is_main:
            tracker.extra("logging the final model", log_final_model, ctx)
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    except BaseException:
        status = "FAILED"
        raise
    finally:
        tracker.end(status)
        dist.shutdown(info)


def build(cfg: Config, ctx: RunContext, extra_modules=None, state_modules=None) -> tuple[torch.nn.Module, Trainer]:
    """The model (seeded by ``cfg.seed`` alone) and its Trainer, restored from ``resume`` or ``init``."""
    torch.manual_seed(cfg.seed)  # same seed, same initial weights, whatever ran before
    model = build_model(cfg.model, NUM_JOINTS)
    trainer = Trainer(model, cfg.train, device=ctx.device, run_dir=ctx.run_dir, seed=cfg.seed, tracker=ctx.tracker,
                      arch=arch_of(cfg), config_yaml=dump_yaml(cfg), dist_info=ctx.dist, extra_modules=extra_modules,
                      state_modules=state_modules)
    if ctx.resume_from is not None:
        trainer.restore(checkpoint.load(ctx.resume_from), ctx.resume_from)
    elif cfg.init:
        trainer.restore(checkpoint.load(cfg.init), cfg.init, weights_only=True)
    return model, trainer


def load_model(checkpoint_path: str | Path, cfg: Config, device: torch.device) -> torch.nn.Module:
    """The model of ``cfg`` with a checkpoint's weights (its architecture checked first), on ``device``."""
    ckpt = checkpoint.load(checkpoint_path)
    model = build_model(cfg.model, NUM_JOINTS)
    checkpoint.check_arch(ckpt, arch_of(cfg), checkpoint_path)
    checkpoint.load_model_weights(model, ckpt, checkpoint_path)
    return to_memory_format(model.to(device), cfg.train.channels_last)
