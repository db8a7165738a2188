"""The target test split of a run: evaluated at epoch ends for the record (never to select a
checkpoint) and once at the end for the report (tables, chart, prediction grid, MLflow)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

from da_pose.data.loaders import domain_records, eval_loader, make_dataset
from da_pose.eval import report
from da_pose.eval.evaluate import evaluate, pck_metrics, predict
from da_pose.viz import draw_prediction_grid

PREFIX = "target_test/"
REPORTED = ("per_joint.csv", "per_joint.md", "per_group.csv", "per_group.md", "per_joint.png", "predictions.png")


def evaluate_split(model, *, loader, records, codec, ctx, prefix: str) -> dict:
    """PCK of ``model`` on one split's loader, keys ``{prefix}pck@0.05_<norm>/<name>``."""
    return evaluate(model, loader, records, codec, ctx.device, flip_test=ctx.cfg.codec.flip_test, prefix=prefix,
                    progress=False)


@dataclass
class TargetTest:
    """The target test split of a run (``ctx``: a :class:`da_pose.run.RunContext`)."""

    ctx: Any
    codec: Any
    dataset: Any

    @classmethod
    def load(cls, ctx, codec) -> "TargetTest":
        return cls(ctx, codec, make_dataset(ctx.cfg, domain_records(ctx.cfg, "target", "test"), codec, train=False))

    @property
    def records(self):
        return self.dataset.records  # unreadable images were dropped by the dataset

    def evaluator(self):
        """``evaluate(model) -> metrics`` for the trainer's epoch ends (never with ``select``)."""
        return partial(evaluate_split, loader=eval_loader(self.ctx.cfg, self.dataset), records=self.records,
                       codec=self.codec, ctx=self.ctx, prefix=PREFIX)

    def report(self, model, step: int, title: str) -> dict[str, float]:
        """Evaluate the final model; log metrics, tables, chart, prediction grid and the last
        checkpoint; print the per-group table."""
        ctx = self.ctx
        preds = predict(model, eval_loader(ctx.cfg, self.dataset), self.codec, ctx.device,
                        flip_test=ctx.cfg.codec.flip_test)
        metrics = {f"{PREFIX}{k}": v for k, v in pck_metrics(preds.coords, self.records, preds.indices).items()}
        out = ctx.run_dir / "eval"
        report.write_pck_tables(metrics, out, PREFIX, f"{ctx.cfg.name}: {PREFIX.rstrip('/')}")
        draw_prediction_grid(self.records, preds.coords, preds.indices, out / "predictions.png")
        ctx.tracker.log_metrics(metrics, step=step)
        for name in REPORTED:
            if (out / name).is_file():
                ctx.tracker.log_artifact(out / name, "eval")
        if (ctx.run_dir / "last.pt").is_file():
            ctx.tracker.log_artifact(ctx.run_dir / "last.pt", "checkpoint")
        report.print_pck_table(metrics, PREFIX, title)
        return metrics
