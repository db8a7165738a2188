"""The supervised jobs and checkpoint evaluation: ``pretrain`` (source), ``finetune`` (target:
oracle, CC-SSL-R), ``evaluate``. Adaptation methods run through :func:`da_pose.adapt.run_adaptation`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from da_pose import checkpoint
from da_pose.adapt.semi import finetune_batches, select_labelled
from da_pose.config import BASELINES, Config
from da_pose.data.loaders import domain_records, eval_loader, make_codec, make_dataset, make_loader
from da_pose.data.records import PoseRecord
from da_pose.data.skeleton import JOINTS
from da_pose.errors import ConfigError
from da_pose.eval import report
from da_pose.eval.evaluate import predict
from da_pose.eval.metrics import dataset_metrics
from da_pose.eval.target import TargetTest, evaluate_split, merge_evaluators, per_image_hits, write_per_image
from da_pose.run import build, load_model, open_run, shift_tag
from da_pose.tracking import MlflowTracker
from da_pose.train.steps import supervised_step
from da_pose.train.trainer import resolve_device
from da_pose.viz import draw_prediction_grid

SELECT_KEY = "source_val/pck@0.05_crop/mean"


def run_supervised(cfg: Config, command: str, domain: str, train_split: str, val_split: str | None) -> dict:
    """Supervised training on one labelled domain, then the target test report.

    ``pretrain``: source train, selection on source val. ``oracle``/``finetune``: target train,
    no selection (the target test split is never used to choose a checkpoint).
    """
    if cfg.method not in BASELINES:
        raise ConfigError(f"{command}: method '{cfg.method}' is not a baseline (valid: {', '.join(BASELINES)}); "
                          "adaptation methods run with da-pose adapt NAME CONFIG")
    with open_run(cfg, command) as ctx:
        codec = make_codec(cfg)
        model, trainer = build(cfg, ctx)
        records = domain_records(cfg, domain, train_split)
        # data.target_labels: the supervised-only floor trains on the labelled subset alone
        chosen = select_labelled(ctx, records)[1] if domain == "target" else []
        train_ds = make_dataset(cfg, chosen or records, codec, train=True)
        batches = finetune_batches(cfg, ctx, train_ds, len(records)) if chosen else (
            lambda epoch: make_loader(cfg, train_ds, cfg.train.batch_size, shuffle=True, epoch=epoch, info=ctx.dist,
                                      drop_last=True))
        target = TargetTest.load(ctx, codec)
        source_val = None
        if val_split is not None:
            val_ds = make_dataset(cfg, domain_records(cfg, domain, val_split), codec, train=False)
            source_val = lambda m: evaluate_split(m, loader=eval_loader(cfg, val_ds), records=val_ds.records,  # noqa: E731
                                                  codec=codec, ctx=ctx, prefix="source_val/")
        elif cfg.train.selection == "source_val":
            raise ConfigError(f"{command}: train.selection=source_val, but {command} has no source val split")
        # epoch ends: source val and target val (cheap); the target test only in the final report
        evaluate_fn = merge_evaluators(source_val, target.val.evaluator() if target.val else None)
        # pretraining keeps best.pt by source val even when it reports the last checkpoint
        select = target.select_key() or (SELECT_KEY if source_val else None)
        trainer.fit(supervised_step, batches, cfg.train.epochs, evaluate=evaluate_fn, select=select)
        if ctx.is_main:
            selection = target.restore_selected(model, trainer)
            ctx.tracker.set_tags({"selection": selection, "settings": cfg.settings})
            return target.report(model, trainer.step, f"{cfg.name}: target test, checkpoint: {selection}")
        return {}


def run_pretrain(cfg: Config) -> dict:
    return run_supervised(cfg, "pretrain", "source", "train", "val")


def run_finetune(cfg: Config) -> dict:
    """Supervised training on the labelled target train split (oracle from scratch, CC-SSL-R from init)."""
    return run_supervised(cfg, "finetune", "target", "train", None)


def run_evaluate(checkpoint_path: str, cfg: Config, records: Sequence[PoseRecord], out_dir: Path,
                 log: bool = False, title: str = "", checkpoint_ref: str = "") -> dict:
    """Evaluate a checkpoint on ``records``; tables to ``out_dir`` (and to MLflow when ``log``).
    ``checkpoint_ref``: how the user named it (an MLflow URI downloaded to ``checkpoint_path``)."""
    device = resolve_device(cfg.device)
    model = load_model(checkpoint_path, cfg, device)
    codec = make_codec(cfg)
    ds = make_dataset(cfg, records, codec, train=False)
    records = ds.records
    preds = predict(model, eval_loader(cfg, ds), codec, device, flip_test=cfg.codec.flip_test)
    metrics = dataset_metrics(preds, records)  # PCK crop/bbox, legacy PCK, OKS AP (COCO-format sets)
    out_dir.mkdir(parents=True, exist_ok=True)
    md = report.write_pck_tables({f"eval/{k}": v for k, v in metrics.items()}, out_dir, "eval/", title or "evaluate")
    report.write_json(out_dir / "metrics.json", metrics)
    report.write_json(out_dir / "predictions.json", {
        "joints": list(JOINTS),
        "images": [str(records[int(i)].image_path) for i in preds.indices],
        "keypoints": preds.keypoints().round(3).tolist(),
    })
    draw_prediction_grid(records, preds.coords, preds.indices, out_dir / "predictions.png")
    if any(r.keypoints[:, 2].any() for r in records):  # labelled: the per-image results compare pairs
        write_per_image(out_dir / "per_image.npz", per_image_hits(preds.coords, records, preds.indices))
    print(md)
    if log:
        tracker = MlflowTracker(cfg.tracking_uri, cfg.experiment, cfg.name or "evaluate",
                                tags={"command": "evaluate", "checkpoint": checkpoint_ref or str(checkpoint_path),
                                      "method": cfg.method, "backbone": cfg.model.backbone,
                                      # the checkpoint's training seed; the evaluated data's shift
                                      "seed": str(cfg.seed), **shift_tag(cfg.data.root)})
        try:
            tracker.log_metrics({f"eval/{k}": v for k, v in metrics.items()})
            for name in sorted(os.listdir(out_dir)):
                tracker.log_artifact(out_dir / name, "eval")
        finally:
            tracker.end("FINISHED")
    return metrics


def _upgrade_config_text(text: str) -> str:
    """A config written by an earlier version, in today's keys (``data.target_labelled`` is now
    ``wscda.target_labelled``)."""
    import yaml

    tree = yaml.safe_load(text) or {}
    if isinstance(tree, dict) and isinstance(tree.get("data"), dict) and "target_labelled" in tree["data"]:
        tree.setdefault("wscda", {})["target_labelled"] = tree["data"].pop("target_labelled")
        return yaml.safe_dump(tree, sort_keys=False)
    return text


def config_from_checkpoint(path: str | Path, overrides: Sequence[str] = ()) -> Config:
    """The config a checkpoint was trained with (its model/data/codec), with overrides applied."""
    import tempfile

    from da_pose.config import load_config

    ckpt = checkpoint.load(path)
    text = ckpt.get("config") or ""
    if not text and checkpoint.is_published(ckpt):
        # a published checkpoint carries no config: the defaults with its model, then the user's values
        return load_config(None, checkpoint.published_overrides(ckpt) + list(overrides) + ["resume=no"])
    if not text:
        raise ConfigError(f"{path} carries no config (a bare state dict?); evaluate and predict need a checkpoint "
                          "written by da-pose pretrain, finetune or adapt as --checkpoint")
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as fh:
        fh.write(_upgrade_config_text(text))
    try:
        return load_config(fh.name, list(overrides) + ["resume=no"])
    finally:
        os.unlink(fh.name)
