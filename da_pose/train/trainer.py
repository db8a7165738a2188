"""One short Trainer: device, optimizer, schedule, AMP, DDP, checkpoints, logging, resume.

Method-specific logic lives in step functions: ``step_fn(model, batch) -> {"loss": ...,
"loss/src": ...}``, pure (no backward, no optimizer step). The trainer backpropagates ``loss``,
steps the optimizer and logs every key; keys starting with ``_`` are handed to the callbacks and
never logged. Callbacks (:class:`Callback`) run outside autocast after every step and epoch: the
homes of an EMA teacher update, a GRL coefficient schedule or a discriminator's own step.

Determinism: every epoch re-seeds all random generators from ``(seed, epoch)`` and checkpoints
are written at epoch ends, so a run resumed from a checkpoint replays exactly the same epochs as
an uninterrupted one (on CPU with ``deterministic``).
"""

from __future__ import annotations

import math
import random
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from da_pose import checkpoint
from da_pose.config import TrainConfig
from da_pose.errors import ConfigError, TrainingError
from da_pose.train import dist
from da_pose.tracking import NullTracker

StepFn = Callable[[nn.Module, Any], Mapping[str, torch.Tensor]]


class Callback:
    """Hooks the trainer calls around a step function; override the ones needed.

    ``on_step_end`` runs after the optimizer step, outside autocast and with gradients enabled,
    with the step function's output (``_``-keys included); it may return more metrics to log.
    """

    def on_step_end(self, trainer: "Trainer", batch, out: Mapping[str, Any]) -> Mapping[str, Any] | None:
        return None

    def on_epoch_end(self, trainer: "Trainer") -> None:
        return None


def seed_all(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    seed = int(seed) % (2**31 - 1)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int) -> int:
    return (int(seed) * 1_000_003 + int(epoch) * 7_919 + 17) % (2**31 - 1)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}' requested but CUDA is not available; use --device cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device '{name}'; valid: auto, cpu, cuda, cuda:N") from None


def set_threads(n: int) -> None:
    """Use ``n`` CPU threads for torch's intra-op work and OpenCV (``n`` >= 1).

    On a shared or small machine one thread per process is often faster than the default (one per
    core): threads that wait on each other lose more than they gain when cores are contended.
    """
    if n < 1:
        raise ConfigError(f"--threads {n}: expected a positive number of CPU threads")
    torch.set_num_threads(n)
    try:
        import cv2

        cv2.setNumThreads(n)
    except ImportError:  # pragma: no cover - OpenCV is a dependency
        pass


def to_memory_format(model: nn.Module, channels_last: bool) -> nn.Module:
    """``model`` with its 4-d weights in channels_last order when asked (CPU and CUDA alike:
    1.39x inference and 1.13x training for the demo hourglass on one CPU thread,
    ``scripts/bench/cpu_levers.py``). Outputs agree with the contiguous model to float rounding."""
    return model.to(memory_format=torch.channels_last) if channels_last else model


def to_device(batch, device: torch.device, channels_last: bool = False):
    """Move every tensor of a (nested) batch to ``device``; images optionally channels_last."""
    if isinstance(batch, torch.Tensor):
        batch = batch.to(device, non_blocking=True)
        if channels_last and batch.dim() == 4 and batch.size(1) == 3:
            batch = batch.contiguous(memory_format=torch.channels_last)
        return batch
    if isinstance(batch, Mapping):
        return {k: to_device(v, device, channels_last) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device, channels_last) for v in batch)
    return batch


def batch_size_of(batch) -> int:
    if isinstance(batch, torch.Tensor):
        return batch.size(0)
    if isinstance(batch, Mapping):
        batch = list(batch.values())
    if isinstance(batch, (list, tuple)):
        for item in batch:
            n = batch_size_of(item)
            if n:
                return n
    return 0


def build_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    optimizers = {
        "rmsprop": lambda: torch.optim.RMSprop(params, lr=cfg.lr, momentum=cfg.momentum,
                                               weight_decay=cfg.weight_decay),
        "adam": lambda: torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay),
        "sgd": lambda: torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum or 0.9,
                                       weight_decay=cfg.weight_decay),
    }
    if cfg.optimizer not in optimizers:
        raise ConfigError(f"unknown optimizer '{cfg.optimizer}'; valid: {', '.join(optimizers)}")
    return optimizers[cfg.optimizer]()


class Trainer:
    """Fits a model with a step function; owns everything around the step.

    Args:
        model: the pose model (unwrapped).
        cfg: optimisation settings.
        run_dir: where ``last.pt`` / ``best.pt`` go.
        tracker: an MlflowTracker or NullTracker (non-main DDP ranks always get a null one).
        arch: what a checkpoint must match to be loaded into this model (backbone, joints ...).
        extra_modules: further modules trained with the model (e.g. a domain discriminator);
            their parameters join the optimizer and their weights the checkpoint.
        state_modules: modules that only hold state (e.g. an EMA teacher): saved and resumed
            with the checkpoint, never optimized (their parameters get ``requires_grad=False``).
    """

    def __init__(self, model: nn.Module, cfg: TrainConfig, *, device: torch.device, run_dir: str | Path,
                 seed: int = 0, tracker=None, arch: Mapping[str, Any] | None = None, config_yaml: str = "",
                 dist_info: dist.DistInfo | None = None, extra_modules: Mapping[str, nn.Module] | None = None,
                 state_modules: Mapping[str, nn.Module] | None = None, param_groups: list[dict] | None = None, show_progress: bool = True):
        self.cfg = cfg
        self.device = device
        self.run_dir = Path(run_dir)
        self.seed = seed
        self.dist = dist_info or dist.DistInfo()
        self.tracker = tracker if (tracker is not None and self.dist.is_main) else NullTracker()
        self.arch = dict(arch or {})
        self.config_yaml = config_yaml
        self.cuda = device.type == "cuda"
        self.channels_last = cfg.channels_last
        self.amp = self.cuda and cfg.amp
        self.show_progress = show_progress and self.dist.is_main
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        elif self.cuda:
            torch.backends.cudnn.benchmark = True

        self.model = to_memory_format(model.to(device), self.channels_last)
        self.extra_modules = {k: m.to(device) for k, m in (extra_modules or {}).items()}
        self.state_modules = {k: m.to(device) for k, m in (state_modules or {}).items()}
        clash = set(self.extra_modules) & set(self.state_modules)
        if clash:
            raise ValueError(f"modules both optimized and state-only: {sorted(clash)}")
        for m in self.state_modules.values():
            m.requires_grad_(False)
        groups = [{"params": [p for p in self.model.parameters() if p.requires_grad]}]
        groups += [{"params": list(m.parameters())} for m in self.extra_modules.values()]
        groups += list(param_groups or [])
        self.optimizer = build_optimizer(groups, cfg)
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(
            self.optimizer, milestones=list(cfg.lr_milestones), gamma=cfg.lr_gamma
        )
        self.net = self.model
        if self.dist.enabled:
            ids = [device.index] if self.cuda else None
            self.net = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        self.step = 0
        self.epoch = 0
        self.round = 0
        self.best: float | None = None
        self.last_metrics: dict[str, float] = {}

    # ---------------------------------------------------------------- checkpoints
    def state(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "extra_modules": {k: m.state_dict() for k, m in self.extra_modules.items()},
            "state_modules": {k: m.state_dict() for k, m in self.state_modules.items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "round": self.round,
            "best": self.best,
            "arch": self.arch,
            "config": self.config_yaml,
            "metrics": dict(self.last_metrics),
            "rng": {"torch": torch.get_rng_state()},
        }

    def save(self, name: str = "last.pt") -> Path | None:
        path = self.run_dir / name
        if self.dist.is_main:
            checkpoint.save(path, self.state())
        dist.barrier(self.dist)
        return path

    def restore(self, ckpt: Mapping[str, Any], path: str | Path = "checkpoint", weights_only: bool = False) -> None:
        """Load a checkpoint: the weights always, the optimizer and counters unless ``weights_only``."""
        checkpoint.check_arch(ckpt, self.arch, path)
        checkpoint.load_model_weights(self.model, ckpt, path)
        if weights_only:
            return
        for group, modules in (("extra_modules", self.extra_modules), ("state_modules", self.state_modules)):
            for k, m in modules.items():
                if k in ckpt.get(group, {}):
                    m.load_state_dict(ckpt[group][k])
        if "optimizer" in ckpt:
            self.optimizer.load_state_dict(ckpt["optimizer"])
        if "scheduler" in ckpt:
            self.scheduler.load_state_dict(ckpt["scheduler"])
        self.step = int(ckpt.get("step", 0))
        self.epoch = int(ckpt.get("epoch", 0))
        self.round = int(ckpt.get("round", 0))
        self.best = ckpt.get("best")

    # ---------------------------------------------------------------- training
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def train_epoch(self, step_fn: StepFn, batches: Iterable, desc: str = "",
                    callbacks: Iterable[Callback] = ()) -> dict[str, float]:
        """One pass over ``batches``; returns the epoch's mean of every logged key."""
        callbacks = list(callbacks)
        self.net.train()
        for m in self.extra_modules.values():
            m.train()
        sums: dict[str, float] = {}
        count = 0
        window: dict[str, float] = {}
        window_n = 0
        window_images = 0
        t0 = time.perf_counter()
        total = len(batches) if hasattr(batches, "__len__") else None
        bar = tqdm(batches, total=total, desc=desc or f"epoch {self.epoch + 1}", leave=False,
                   disable=not self.show_progress, file=sys.stderr, dynamic_ncols=True,
                   mininterval=0.5 if sys.stderr.isatty() else 30)
        for batch in bar:
            if self.cfg.max_steps and self.step >= self.cfg.max_steps:
                break
            n_images = batch_size_of(batch)
            batch = to_device(batch, self.device, self.channels_last)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                out = step_fn(self.net, batch)
            loss = out["loss"]
            value = float(loss.detach())
            if not math.isfinite(value):
                raise TrainingError(
                    f"loss became {value} at step {self.step} (epoch {self.epoch + 1}); training stopped, "
                    f"the last good checkpoint in {self.run_dir} is kept"
                )
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.cfg.grad_clip > 0:
                params = [p for g in self.optimizer.param_groups for p in g["params"]]
                nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
            self.optimizer.step()
            self.step += 1
            out = {k: v for k, v in out.items()}
            for cb in callbacks:
                more = cb.on_step_end(self, batch, out)
                if more:
                    out.update(more)
            count += 1
            window_n += 1
            window_images += n_images
            for k, v in out.items():
                if k.startswith("_"):
                    continue
                fv = float(v.detach()) if isinstance(v, torch.Tensor) else float(v)
                sums[k] = sums.get(k, 0.0) + fv
                window[k] = window.get(k, 0.0) + fv
            if self.show_progress:
                bar.set_postfix(loss=f"{value:.4g}", refresh=False)
            if self.step % max(1, self.cfg.log_every) == 0:
                elapsed = time.perf_counter() - t0
                metrics = {f"train/{k}": v / window_n for k, v in window.items()}
                metrics["train/lr"] = self.lr()
                metrics["train/images_per_s"] = window_images * self.dist.world_size / max(elapsed, 1e-9)
                self.tracker.log_metrics(metrics, step=self.step)
                window, window_n, window_images, t0 = {}, 0, 0, time.perf_counter()
        bar.close()
        return {k: v / max(count, 1) for k, v in sums.items()}

    def fit(self, step_fn: StepFn, batches: Callable[[int], Iterable], end_epoch: int,
            evaluate: Callable[[nn.Module], dict[str, float]] | None = None, select: str | None = None,
            desc: str = "", callbacks: Iterable[Callback] = ()) -> dict[str, float]:
        """Train epochs ``self.epoch .. end_epoch - 1``; evaluate, select and checkpoint at epoch ends.

        Args:
            batches: ``batches(epoch)`` -> an iterable of batches for that epoch (seeded by epoch).
            evaluate: ``evaluate(model) -> metrics``, run on the main rank every ``eval_every``
                epochs and at the end; never on the target test split when ``select`` is set.
            select: the metric maximised for ``best.pt`` (e.g. source-val PCK); None = no selection.
            callbacks: :class:`Callback` objects called after every step and epoch.
        """
        callbacks = list(callbacks)
        while self.epoch < end_epoch:
            if self.cfg.max_steps and self.step >= self.cfg.max_steps:
                break
            seed_all(epoch_seed(self.seed, self.epoch))
            means = self.train_epoch(step_fn, batches(self.epoch), desc=desc, callbacks=callbacks)
            self.scheduler.step()
            self.epoch += 1
            for cb in callbacks:
                cb.on_epoch_end(self)
            self.tracker.log_metrics({f"epoch/{k}": v for k, v in means.items()}, step=self.step)
            last = self.epoch >= end_epoch or (self.cfg.max_steps and self.step >= self.cfg.max_steps)
            if evaluate is not None and (last or self.epoch % max(1, self.cfg.eval_every) == 0):
                if self.dist.is_main:
                    metrics = evaluate(self.model)
                    self.last_metrics = metrics
                    self.tracker.log_metrics(metrics, step=self.step)
                    if select is not None and metrics.get(select, -math.inf) > (self.best if self.best is not None else -math.inf):
                        self.best = metrics[select]
                        checkpoint.save(self.run_dir / "best.pt", self.state())
                        self.tracker.log_metrics({"selection/best": self.best, "selection/best_epoch": self.epoch},
                                                 step=self.step)
                self.best = dist.broadcast_object(self.best, self.dist)
            if last or self.epoch % max(1, self.cfg.checkpoint_every) == 0:
                self.save("last.pt")
        return self.last_metrics
