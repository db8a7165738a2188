"""The target splits of a run: ``test`` (evaluated at epoch ends for the record, never to select
a checkpoint, and once at the end for the report) and ``val`` (small, labelled, disjoint from
train and test by video; it may select a checkpoint when ``train.selection=target_val``).

The report also writes each test image's per-joint correctness (``eval/per_image.npz``), the
array behind every PCK figure, so that ``da-pose compare`` can compute paired bootstrap
intervals between methods (:mod:`da_pose.eval.stats`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable

import numpy as np

from da_pose import checkpoint
from da_pose.data.loaders import domain_records, eval_loader, make_dataset
from da_pose.errors import DaPoseError
from da_pose.eval import report
from da_pose.eval.evaluate import evaluate, ground_truth, pck_metrics, predict
from da_pose.eval.pck import crop_normalizer, joint_hits
from da_pose.viz import draw_prediction_grid

PREFIX = "target_test/"
VAL_PREFIX = "target_val/"
REPORTED = ("per_joint.csv", "per_joint.md", "per_group.csv", "per_group.md", "per_joint.png", "predictions.png",
            "per_image.npz")
# the metric each selection maximises over epoch ends (``train.selection``); ``last`` selects nothing
SELECT_KEYS = {"source_val": "source_val/pck@0.05_crop/mean", "target_val": f"{VAL_PREFIX}pck@0.05_crop/mean"}


def evaluate_split(model, *, loader, records, codec, ctx, prefix: str) -> dict:
    """PCK of ``model`` on one split's loader, keys ``{prefix}pck@0.05_<norm>/<name>``."""
    return evaluate(model, loader, records, codec, ctx.device, flip_test=ctx.cfg.codec.flip_test, prefix=prefix,
                    progress=False)


def merge_evaluators(*fns: Callable | None) -> Callable | None:
    """One ``evaluate(model) -> metrics`` running every given evaluator (None ones skipped)."""
    parts = [f for f in fns if f is not None]
    return (lambda model: {k: v for f in parts for k, v in f(model).items()}) if parts else None


def record_id(record) -> str:
    """A stable name of a test image across runs: ``video:frame`` for video frames, else the file name."""
    return f"{record.video}:{record.frame}" if record.video >= 0 else Path(record.image_path).name


def per_image_hits(pred_xy: np.ndarray, records, indices: np.ndarray) -> dict[str, np.ndarray]:
    """Per-image, per-joint PCK@0.05 (crop) correctness of a prediction, in record order.

    Shape:
        pred_xy: (N, K, 2) original px, row i for record ``indices[i]``.
        returns: ``hits`` (N, K) bool, ``counted`` (N, K) bool, ``ids`` (N,) str.
    """
    order = np.argsort(indices, kind="stable")
    gt, sides, _ = ground_truth(records, indices[order])
    hits, counted = joint_hits(pred_xy[order], gt[..., :2], gt[..., 2] > 0, crop_normalizer(sides))
    return {"hits": hits, "counted": counted, "ids": np.array([record_id(records[i]) for i in indices[order]])}


def write_per_image(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    """``per_image.npz`` (compressed; booleans stay one byte each)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    return path


def read_per_image(path: str | Path) -> dict[str, np.ndarray]:
    """Read a ``per_image.npz``; DaPoseError naming the file when it is not one."""
    try:
        with np.load(path, allow_pickle=False) as z:
            out = {k: z[k] for k in ("hits", "counted", "ids")}
    except (OSError, ValueError, KeyError) as exc:
        raise DaPoseError(f"{path}: not a per-image result file ({str(exc).splitlines()[0][:120]}); "
                          "expected hits, counted and ids arrays") from None
    if out["hits"].shape != out["counted"].shape or out["hits"].shape[0] != len(out["ids"]):
        raise DaPoseError(f"{path}: hits {out['hits'].shape}, counted {out['counted'].shape} and "
                          f"{len(out['ids'])} ids disagree")
    return out


@dataclass
class TargetSplit:
    """One labelled split of the target (``ctx``: a :class:`da_pose.run.RunContext`)."""

    ctx: Any
    codec: Any
    dataset: Any
    prefix: str

    @classmethod
    def load(cls, ctx, codec, split: str = "test") -> "TargetSplit":
        return cls(ctx, codec, make_dataset(ctx.cfg, domain_records(ctx.cfg, "target", split), codec, train=False),
                   PREFIX if split == "test" else f"target_{split}/")

    @property
    def records(self):
        return self.dataset.records  # unreadable images were dropped by the dataset

    def evaluator(self) -> Callable:
        """``evaluate(model) -> metrics`` on this split."""
        return partial(evaluate_split, loader=eval_loader(self.ctx.cfg, self.dataset), records=self.records,
                       codec=self.codec, ctx=self.ctx, prefix=self.prefix)


def load_val(ctx, codec, test: TargetSplit) -> TargetSplit | None:
    """The target val split, or None when the dataset has none (a COCO set with one file, say).

    A val split that shares an image with the test split is not one (a format whose held-out
    split is called ``val``): it is refused here so that nothing is ever selected on test.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            val = TargetSplit.load(ctx, codec, "val")
    except DaPoseError:
        return None
    if {r.image_path for r in val.records} & {r.image_path for r in test.records}:
        return None
    return val


@dataclass
class TargetTest:
    """The target test split, and the val split beside it when the dataset has one."""

    test: TargetSplit
    val: TargetSplit | None

    @classmethod
    def load(cls, ctx, codec) -> "TargetTest":
        test = TargetSplit.load(ctx, codec, "test")
        target = cls(test, load_val(ctx, codec, test))
        if ctx.cfg.train.selection == "target_val" and target.val is None:
            raise DaPoseError(f"{ctx.cfg.data.root}: train.selection=target_val but the target has no val split "
                              "disjoint from test")
        return target

    @property
    def records(self):
        return self.test.records

    def evaluator(self, extra: Callable | None = None) -> Callable:
        """``evaluate(model) -> metrics`` for the trainer's epoch ends: test (recorded, never
        selecting), val when present, and ``extra`` (the source val of pretraining, say)."""
        return merge_evaluators(self.test.evaluator(), self.val.evaluator() if self.val else None, extra)

    def select_key(self) -> str | None:
        return SELECT_KEYS.get(self.test.ctx.cfg.train.selection)

    def restore_selected(self, model, trainer) -> str:
        """Load the selected checkpoint's weights into ``model``; returns the ``selection`` tag."""
        selection = self.test.ctx.cfg.train.selection
        best = trainer.run_dir / "best.pt"
        if selection != "last" and best.is_file():
            checkpoint.load_model_weights(model, checkpoint.load(best), best)
        elif selection != "last":
            raise DaPoseError(f"{best}: no checkpoint was selected on {selection} (was it ever evaluated?)")
        return selection

    def report(self, model, step: int, title: str) -> dict[str, float]:
        """Evaluate the reported model on test (and val); log metrics, tables, chart, prediction
        grid, per-image results and the last checkpoint; print the per-group table."""
        ctx = self.test.ctx
        preds = predict(model, eval_loader(ctx.cfg, self.test.dataset), self.test.codec, ctx.device,
                        flip_test=ctx.cfg.codec.flip_test)
        metrics = {f"{PREFIX}{k}": v for k, v in pck_metrics(preds.coords, self.records, preds.indices).items()}
        out = ctx.run_dir / "eval"
        report.write_pck_tables(metrics, out, PREFIX, f"{ctx.cfg.name}: {PREFIX.rstrip('/')}")
        draw_prediction_grid(self.records, preds.coords, preds.indices, out / "predictions.png")
        write_per_image(out / "per_image.npz", per_image_hits(preds.coords, self.records, preds.indices))
        logged = dict(metrics)
        if self.val is not None:
            logged.update(self.val.evaluator()(model))
        ctx.tracker.log_metrics(logged, step=step)
        for name in REPORTED:
            if (out / name).is_file():
                ctx.tracker.log_artifact(out / name, "eval")
        if (ctx.run_dir / "last.pt").is_file():
            ctx.tracker.log_artifact(ctx.run_dir / "last.pt", "checkpoint")
        report.print_pck_table(metrics, PREFIX, title)
        return metrics
