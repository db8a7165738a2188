"""The life of a run: its folder, its MLflow run, its tags, resume, and the model and trainer
built for it.

``open_run`` creates or resumes ``out_dir/experiment/name`` and its MLflow run, and marks the run
FAILED (or KILLED) when the job raises; ``build`` makes the model and its Trainer and loads
``resume`` / ``init``.
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
from da_pose.data.skeleton import NUM_JOINTS
from da_pose.errors import ConfigError, DaPoseError
from da_pose.models.factory import build_model
from da_pose.tracking import MlflowTracker, NullTracker, check_reachable
from da_pose.train import dist
from da_pose.train.trainer import Trainer, resolve_device


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


@contextmanager
def open_run(cfg: Config, command: str) -> Iterator[RunContext]:
    """Create or resume the run folder and its MLflow run; mark the run FAILED on any error.

    A run folder that already holds a checkpoint is continued with ``resume=auto`` and refused
    otherwise, so an earlier run's checkpoint is never overwritten by a new run.
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
        yield ctx
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
    return model.to(device)
