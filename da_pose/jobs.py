"""The wiring of every command: config -> run -> data, model, trainer -> metrics and artifacts.

No algorithm lives here: models, codec, datasets, step functions, pseudo-labelling and metrics
are built elsewhere and passed in.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler

from da_pose import checkpoint
from da_pose.config import Config, dump_yaml, flatten
from da_pose.data import manifest
from da_pose.data.codec import HeatmapCodec
from da_pose.data.dataset import PoseDataset
from da_pose.data.records import PoseRecord
from da_pose.data.skeleton import GROUPS, JOINTS, NUM_JOINTS
from da_pose.errors import ConfigError, DaPoseError
from da_pose.eval import report
from da_pose.eval.evaluate import evaluate, predict
from da_pose.models.factory import build_model
from da_pose.tracking import MlflowTracker, NullTracker, check_reachable, metric_name
from da_pose.train import dist
from da_pose.train.steps import supervised_step
from da_pose.train.trainer import Trainer, epoch_seed, resolve_device

SELECT_KEY = "source_val/pck@0.05_crop/mean"


# ------------------------------------------------------------------------------------ runs
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


def run_tags(cfg: Config, command: str) -> dict[str, str]:
    return {
        "command": command,
        "method": cfg.method,
        "backbone": cfg.model.backbone,
        "source": f"{cfg.data.root}#{cfg.data.source}",
        "target": f"{cfg.data.root}#{cfg.data.target}",
        "seed": str(cfg.seed),
        "mlflow.runName": cfg.name,
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


# ------------------------------------------------------------------------------------ data
def make_codec(cfg: Config) -> HeatmapCodec:
    return HeatmapCodec.from_config(cfg.data, cfg.codec)


def domain_records(cfg: Config, domain: str, split: str) -> list[PoseRecord]:
    """Records of the manifest domain named by ``cfg.data.<domain>`` (source/target/other)."""
    name = getattr(cfg.data, domain)
    records = manifest.load_domain(cfg.data.root, name, split, strict=cfg.data.strict)
    if not records:
        raise DaPoseError(f"{cfg.data.root}: domain '{name}' split '{split}' has no samples")
    return records


def make_dataset(cfg: Config, records: Sequence[PoseRecord], codec: HeatmapCodec, train: bool) -> PoseDataset:
    ds = PoseDataset(list(records), codec, cfg.data.input_size, train=train, aug=cfg.aug if train else None,
                     mean=cfg.data.mean, std=cfg.data.std, cache=cfg.data.cache, strict=cfg.data.strict)
    if cfg.data.cache:
        ds.prefetch(progress=False)
    return ds


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)


def make_loader(cfg: Config, ds, batch_size: int, *, shuffle: bool, epoch: int = 0,
                info: dist.DistInfo | None = None, drop_last: bool = False) -> DataLoader:
    """A DataLoader whose order and augmentation are fixed by ``(seed, epoch)``; DDP-sharded."""
    info = info or dist.DistInfo()
    gen = torch.Generator()
    gen.manual_seed(epoch_seed(cfg.seed, epoch))
    sampler = None
    if info.enabled:
        sampler = DistributedSampler(ds, num_replicas=info.world_size, rank=info.rank, shuffle=shuffle,
                                     seed=cfg.seed, drop_last=drop_last)
        sampler.set_epoch(epoch)
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
                      generator=gen, num_workers=cfg.data.workers, drop_last=drop_last,
                      pin_memory=torch.cuda.is_available(), worker_init_fn=_seed_worker)


# ------------------------------------------------------------------------------------ reports
def report_target(ctx: RunContext, model, codec: HeatmapCodec, records: Sequence[PoseRecord], ds=None,
                  prefix: str = "target_test/", title: str = "", step: int = 0) -> dict[str, float]:
    """Evaluate on the target test split; log metrics, tables, chart and prediction grid."""
    cfg = ctx.cfg
    ds = ds if ds is not None else make_dataset(cfg, records, codec, train=False)
    records = ds.records  # unreadable images were dropped by the dataset
    loader = make_loader(cfg, ds, cfg.ccssl.batch_size, shuffle=False)
    preds = predict(model, loader, codec, ctx.device, flip_test=cfg.codec.flip_test)
    from da_pose.eval.evaluate import pck_metrics

    metrics = {f"{prefix}{k}": v for k, v in pck_metrics(preds.coords, records, preds.indices).items()}
    out = ctx.run_dir / "eval"
    write_metric_tables(metrics, out, prefix, title or f"{cfg.name}: {prefix.rstrip('/')}")
    grid = out / "predictions.png"
    draw_prediction_grid(records, preds, grid)
    ctx.tracker.log_metrics(metrics, step=step)
    for name in ("per_joint.csv", "per_joint.md", "per_group.csv", "per_group.md", "per_joint.png", "predictions.png"):
        if (out / name).is_file():
            ctx.tracker.log_artifact(out / name, "eval")
    return metrics


def pck_rows(metrics: dict, prefix: str, kind: str) -> tuple[list[str], list[list]]:
    """Rows of (joint or group, PCK crop, PCK bbox) from ``{prefix}pck@0.05_<norm>/<name>`` metrics."""
    names = list(JOINTS) if kind == "joint" else list(GROUPS) + ["mean"]
    headers = [kind, "PCK@0.05 crop", "PCK@0.05 bbox"]
    rows = [[n] + [metrics.get(f"{prefix}pck@0.05_{norm}/{n}", float("nan")) for norm in ("crop", "bbox")]
            for n in names]
    return headers, rows


def write_metric_tables(metrics: dict, out: Path, prefix: str, title: str) -> str:
    """Per-joint and per-group markdown/CSV tables and a bar chart; returns the group table."""
    out.mkdir(parents=True, exist_ok=True)
    shown = ""
    for kind in ("joint", "group"):
        headers, rows = pck_rows(metrics, prefix, kind)
        md = report.markdown_table(headers, rows)
        (out / f"per_{kind}.md").write_text(md + "\n")
        report.write_csv(out / f"per_{kind}.csv", headers, rows)
        shown = md
    named = {title: {k[len(prefix):]: v for k, v in metrics.items() if k.startswith(prefix)}}
    report.bar_chart(named, "pck@0.05_crop", out / "per_joint.png", kind="joint", title=title)
    return shown


def draw_prediction_grid(records: Sequence[PoseRecord], preds, path: Path, n: int = 12) -> None:
    import cv2

    from da_pose.viz import crop_matrix, prediction_grid

    if len(preds.indices) == 0:
        return
    pick = np.linspace(0, len(preds.indices) - 1, min(n, len(preds.indices))).astype(int)
    crops, pk, gk = [], [], []
    size = 192
    for row in pick:
        rec = records[int(preds.indices[row])]
        img = cv2.imread(str(rec.image_path), cv2.IMREAD_COLOR)
        if img is None:
            continue
        affine = crop_matrix(rec.center, rec.side, size)
        crops.append(cv2.warpAffine(img, affine, (size, size), flags=cv2.INTER_LINEAR))
        pts = np.concatenate([preds.coords[row], np.ones((NUM_JOINTS, 1), np.float32)], axis=1)
        pts[:, :2] = pts[:, :2] @ affine[:, :2].T + affine[:, 2]
        gt = rec.keypoints.copy()
        gt[:, :2] = gt[:, :2] @ affine[:, :2].T + affine[:, 2]
        pk.append(pts)
        gk.append(gt)
    if crops:
        prediction_grid(crops, np.stack(pk), np.stack(gk), path, cols=4)


# ------------------------------------------------------------------------------------ model
def build(cfg: Config, ctx: RunContext, extra_modules=None) -> tuple[torch.nn.Module, Trainer]:
    torch.manual_seed(cfg.seed)  # same seed, same initial weights, whatever ran before
    model = build_model(cfg.model, NUM_JOINTS)
    trainer = Trainer(model, cfg.train, device=ctx.device, run_dir=ctx.run_dir, seed=cfg.seed, tracker=ctx.tracker,
                      arch=arch_of(cfg), config_yaml=dump_yaml(cfg), dist_info=ctx.dist, extra_modules=extra_modules)
    if ctx.resume_from is not None:
        trainer.restore(checkpoint.load(ctx.resume_from), ctx.resume_from)
    elif cfg.init:
        trainer.restore(checkpoint.load(cfg.init), cfg.init, weights_only=True)
    return model, trainer


def print_table(metrics: dict, prefix: str, title: str) -> None:
    headers, rows = pck_rows(metrics, prefix, "group")
    print(f"\n{title} (PCK@0.05 in %)\n")
    print(report.markdown_table(headers, rows))


# ------------------------------------------------------------------------------------ jobs
def run_supervised(cfg: Config, command: str, domain: str, train_split: str, val_split: str | None) -> dict:
    """Supervised training on one labelled domain, then the target test report.

    ``pretrain``: source train, selection on source val. ``oracle``/``finetune``: target train,
    no selection (the target test split is never used to choose a checkpoint).
    """
    with open_run(cfg, command) as ctx:
        codec = make_codec(cfg)
        model, trainer = build(cfg, ctx)
        train_ds = make_dataset(cfg, domain_records(cfg, domain, train_split), codec, train=True)
        batches = lambda epoch: make_loader(cfg, train_ds, cfg.train.batch_size, shuffle=True, epoch=epoch,  # noqa: E731
                                            info=ctx.dist, drop_last=True)
        evaluate_fn, select = None, None
        if val_split is not None:
            val_ds = make_dataset(cfg, domain_records(cfg, domain, val_split), codec, train=False)
            val_records = val_ds.records
            val_loader = make_loader(cfg, val_ds, cfg.ccssl.batch_size, shuffle=False)
            evaluate_fn = partial(_evaluate_on, loader=val_loader, records=val_records, codec=codec, ctx=ctx,
                                  prefix="source_val/")
            select = SELECT_KEY
        trainer.fit(supervised_step, batches, cfg.train.epochs, evaluate=evaluate_fn, select=select)
        if ctx.is_main:
            ctx.tracker.set_tags({"selection": f"best.pt by {select} (reported: last.pt)" if select else "last.pt"})
            metrics = report_target(ctx, model, codec, domain_records(cfg, "target", "test"), step=trainer.step)
            ctx.tracker.log_artifact(ctx.run_dir / "last.pt", "checkpoint")
            print_table(metrics, "target_test/", f"{cfg.name}: target test, last checkpoint")
            return metrics
        return {}


def _evaluate_on(model, *, loader, records, codec, ctx: RunContext, prefix: str) -> dict:
    return evaluate(model, loader, records, codec, ctx.device, flip_test=ctx.cfg.codec.flip_test, prefix=prefix,
                    progress=False)


def run_pretrain(cfg: Config) -> dict:
    return run_supervised(cfg, "pretrain", "source", "train", "val")


def run_finetune(cfg: Config) -> dict:
    """Supervised training on the labelled target train split (oracle from scratch, CC-SSL-R from init)."""
    return run_supervised(cfg, "finetune", "target", "train", None)


def run_evaluate(checkpoint_path: str, cfg: Config, records: Sequence[PoseRecord], out_dir: Path,
                 log: bool = False, title: str = "") -> dict:
    """Evaluate a checkpoint on ``records``; tables to ``out_dir`` (and to MLflow when ``log``)."""
    device = resolve_device(cfg.device)
    ckpt = checkpoint.load(checkpoint_path)
    model = build_model(cfg.model, NUM_JOINTS)
    checkpoint.check_arch(ckpt, arch_of(cfg), checkpoint_path)
    checkpoint.load_model_weights(model, ckpt, checkpoint_path)
    model.to(device)
    codec = make_codec(cfg)
    ds = make_dataset(cfg, records, codec, train=False)
    records = ds.records
    loader = make_loader(cfg, ds, cfg.ccssl.batch_size, shuffle=False)
    preds = predict(model, loader, codec, device, flip_test=cfg.codec.flip_test)
    from da_pose.eval.evaluate import pck_metrics

    metrics = pck_metrics(preds.coords, records, preds.indices)
    out_dir.mkdir(parents=True, exist_ok=True)
    md = write_metric_tables({f"eval/{k}": v for k, v in metrics.items()}, out_dir, "eval/", title or "evaluate")
    report.write_json(out_dir / "metrics.json", metrics)
    report.write_json(out_dir / "predictions.json", {
        "joints": list(JOINTS),
        "images": [str(records[int(i)].image_path) for i in preds.indices],
        "keypoints": preds.keypoints().round(3).tolist(),
    })
    draw_prediction_grid(records, preds, out_dir / "predictions.png")
    print(md)
    if log:
        tracker = MlflowTracker(cfg.tracking_uri, cfg.experiment, cfg.name or "evaluate",
                                tags={"command": "evaluate", "checkpoint": str(checkpoint_path),
                                      "method": cfg.method, "backbone": cfg.model.backbone})
        try:
            tracker.log_metrics({f"eval/{k}": v for k, v in metrics.items()})
            for name in sorted(os.listdir(out_dir)):
                tracker.log_artifact(out_dir / name, "eval")
        finally:
            tracker.end("FINISHED")
    return metrics


def config_from_checkpoint(path: str | Path, overrides: Sequence[str] = ()) -> Config:
    """The config a checkpoint was trained with (its model/data/codec), with overrides applied."""
    import tempfile

    from da_pose.config import load_config

    ckpt = checkpoint.load(path)
    text = ckpt.get("config") or ""
    if not text:
        raise ConfigError(f"{path} carries no config (a bare state dict?); evaluate and predict need a checkpoint "
                          "written by da-pose pretrain, finetune or adapt as --checkpoint")
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as fh:
        fh.write(text)
    try:
        return load_config(fh.name, list(overrides) + ["resume=no"])
    finally:
        os.unlink(fh.name)


# ------------------------------------------------------------------------------------ CC-SSL
class MixedBatches:
    """``steps`` batches of ``{"source": ..., "target": ...}``, cycling each loader as needed."""

    def __init__(self, loaders: dict[str, DataLoader], steps: int):
        self.loaders = loaders
        self.steps = steps

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        iters = {k: iter(v) for k, v in self.loaders.items()}
        for _ in range(self.steps):
            batch = {}
            for k, it in iters.items():
                try:
                    batch[k] = next(it)
                except StopIteration:
                    iters[k] = iter(self.loaders[k])
                    batch[k] = next(iters[k])
            yield batch


def _config_hash(*parts) -> str:
    import hashlib

    return hashlib.sha1(repr(parts).encode()).hexdigest()[:16]


def _plot_confidence(labels, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    bins = np.linspace(0, max(1.0, float(labels.confidence.max(initial=0))), 41)
    ax.hist(labels.confidence[labels.kept], bins=bins, alpha=0.7, label="kept", color="tab:green")
    ax.hist(labels.confidence[~labels.kept], bins=bins, alpha=0.7, label="rejected", color="tab:red")
    ax.set_xlabel("confidence")
    ax.set_ylabel("joints")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _draw_pseudo_labels(records, labels, path: Path, n: int = 8) -> None:
    """Kept pseudo-labels in the prediction colours, rejected ones as ground truth would be drawn."""
    from da_pose.eval.evaluate import Predictions

    pick = np.linspace(0, len(records) - 1, min(n, len(records))).astype(int)
    kept_only = Predictions(np.where(labels.kept[pick, :, None], labels.keypoints[pick], -1000.0),
                            labels.confidence[pick], pick)
    draw_prediction_grid(records, kept_only, path, n=n)


def load_or_generate_labels(ctx: RunContext, model, codec, dataset, records, round_index: int):
    """The round's pseudo-labels: from the run folder's cache when they were made from the same
    weights and settings, else generated (batched) and written atomically."""
    from da_pose.adapt.ccssl import PseudoLabels, generate_pseudo_labels, state_hash

    cfg = ctx.cfg
    path = ctx.run_dir / "pseudo_labels" / f"round_{round_index:02d}.pt"
    key = {"model": state_hash(model), "config": _config_hash(cfg.ccssl, cfg.data, cfg.seed, len(records)),
           "round": round_index}
    if path.is_file():
        try:
            cached = PseudoLabels.load(path)
            if all(cached.meta.get(k) == v for k, v in key.items()):
                return cached, True
        except DaPoseError:
            pass  # unreadable cache: regenerate (the file is replaced atomically below)
    gather = None
    if ctx.dist.enabled:
        info = ctx.dist

        class _Gather:
            rank, world_size = info.rank, info.world_size

            def __call__(self, obj):
                return dist.all_gather_objects(obj, info)

        gather = _Gather()
    labels = generate_pseudo_labels(model, dataset, records, codec, cfg.ccssl, ctx.device, cfg.seed, round_index,
                                    progress=ctx.is_main, gather=gather)
    labels.meta.update(key)
    if ctx.is_main:
        labels.save(path)
    dist.barrier(ctx.dist)
    return labels, False


def log_pseudo_label_round(ctx: RunContext, labels, cached: bool, records, r: int, prefix: str,
                           title: str) -> dict:
    """Log one pseudo-label round (CC-SSL or PPLO): kept share, confidence, diagnostic accuracy
    of kept vs rejected labels against the target train labels, histogram and picture."""
    from da_pose.adapt.ccssl import label_accuracy

    stats = {f"{prefix}/round": r, f"{prefix}/kept_fraction": float(labels.kept.mean()),
             f"{prefix}/mean_confidence": float(labels.confidence.mean()),
             f"{prefix}/temporal_replaced": float(labels.meta.get("temporal_replaced", 0)),
             f"{prefix}/cached": float(cached)}
    stats.update({f"{prefix}/{k.split('/', 1)[1]}": v for k, v in label_accuracy(labels, records).items()})
    ctx.tracker.log_metrics(stats, step=r)
    if ctx.is_main:
        vis = ctx.run_dir / "pseudo_labels"
        _plot_confidence(labels, vis / f"confidence_round_{r:02d}.png", f"{title} {r}: confidence of pseudo-labels")
        _draw_pseudo_labels(records, labels, vis / f"kept_round_{r:02d}.png")
        for name in (f"confidence_round_{r:02d}.png", f"kept_round_{r:02d}.png"):
            if (vis / name).is_file():
                ctx.tracker.log_artifact(vis / name, "pseudo_labels")
        print(f"{title} {r}: kept {stats[f'{prefix}/kept_fraction']:.0%} of joints; pseudo-label accuracy "
              f"kept {stats[f'{prefix}/acc_kept']:.1f} / rejected {stats[f'{prefix}/acc_rejected']:.1f}"
              f" (diagnostic, target train labels)")
    return stats


def run_ccssl(cfg: Config) -> dict:
    """CC-SSL rounds: pseudo-label the target train split, select, train on source + target."""
    from da_pose.train.steps import ccssl_step

    with open_run(cfg, "adapt ccssl") as ctx:
        if not cfg.init and ctx.resume_from is None:
            raise ConfigError("adapt ccssl starts from a pretrained checkpoint: pass --set init=PATH")
        codec = make_codec(cfg)
        model, trainer = build(cfg, ctx)
        source_ds = make_dataset(cfg, domain_records(cfg, "source", "train"), codec, train=True)
        target_eval_ds = make_dataset(cfg, domain_records(cfg, "target", "train"), codec, train=False)
        target_records = target_eval_ds.records  # readable frames only
        target_train_ds = make_dataset(cfg, target_records, codec, train=True)
        test_ds = make_dataset(cfg, domain_records(cfg, "target", "test"), codec, train=False)
        test_records = test_ds.records
        test_loader = make_loader(cfg, test_ds, cfg.ccssl.batch_size, shuffle=False)
        evaluate_fn = partial(_evaluate_on, loader=test_loader, records=test_records, codec=codec, ctx=ctx,
                              prefix="target_test/")
        c = cfg.ccssl
        epochs_per_round = 1 if c.steps_per_round else max(1, c.epochs_per_round)
        bs = cfg.train.batch_size
        steps = c.steps_per_round or max(1, len(target_records) // (bs * ctx.dist.world_size))
        step_fn = partial(ccssl_step, gamma=c.gamma)
        ctx.tracker.set_tags({"selection": "none: last checkpoint of the last round is reported"})
        for r in range(trainer.epoch // epochs_per_round, c.rounds):
            labels, cached = load_or_generate_labels(ctx, model, codec, target_eval_ds, target_records, r)
            log_pseudo_label_round(ctx, labels, cached, target_records, r, "ccssl", "round")
            labelled = target_train_ds.with_keypoints(labels.as_labels())

            def batches(epoch, labelled=labelled):
                return MixedBatches({
                    "source": make_loader(cfg, source_ds, bs, shuffle=True, epoch=epoch, info=ctx.dist, drop_last=True),
                    "target": make_loader(cfg, labelled, bs, shuffle=True, epoch=epoch + 100_000, info=ctx.dist,
                                          drop_last=True)}, steps)

            trainer.round = r
            trainer.fit(step_fn, batches, (r + 1) * epochs_per_round, evaluate=evaluate_fn, select=None,
                        desc=f"round {r + 1}/{c.rounds}")
        if ctx.is_main:
            metrics = report_target(ctx, model, codec, test_records, test_ds, step=trainer.step)
            ctx.tracker.log_artifact(ctx.run_dir / "last.pt", "checkpoint")
            print_table(metrics, "target_test/", f"{cfg.name}: target test after {c.rounds} CC-SSL rounds")
            return metrics
        return {}


# ------------------------------------------------------------------------------------ compare
METHOD_ORDER = ("source_only", "source_only_ext", "plain_pl", "ccssl_no_invariance", "ccssl_no_equivariance",
                "ccssl_no_temporal", "ccssl_no_curriculum", "ccssl", "ccssl_r", "wscda", "wscda_pplo", "oracle")


def collect_runs(experiment: str, tracking_uri: str, prefix: str = "target_test/") -> tuple[list[dict], list[dict]]:
    """Finished runs with target metrics, and the others (running, failed, killed, no metrics).

    Each run: ``{"run_id", "name", "method", "backbone", "seed", "status", "metrics": {name: value}}``
    with metric names as the project writes them (``pck@0.05_crop/...``, prefix removed).
    """
    check_reachable(tracking_uri)
    from mlflow.tracking import MlflowClient

    try:
        client = MlflowClient(tracking_uri=tracking_uri)
        exp = client.get_experiment_by_name(experiment)
    except Exception as exc:  # noqa: BLE001
        raise DaPoseError(f"MLflow store {tracking_uri} is not usable: {str(exc).splitlines()[0][:200]}") from None
    if exp is None:
        raise DaPoseError(f"no MLflow experiment '{experiment}' in {tracking_uri}")
    done, other = [], []
    for run in client.search_runs([exp.experiment_id], max_results=10000):
        tags = run.data.tags
        if tags.get("command") in ("compare", "evaluate"):
            continue
        metrics = {metric_name(k)[len(prefix):]: v for k, v in run.data.metrics.items()
                   if metric_name(k).startswith(prefix)}
        item = {"run_id": run.info.run_id, "name": tags.get("mlflow.runName", run.info.run_name),
                "method": tags.get("method", "?"), "backbone": tags.get("backbone", "?"),
                "seed": tags.get("seed", "?"), "status": run.info.status, "metrics": metrics}
        if run.info.status == "FINISHED" and "pck@0.05_crop/mean" in metrics:
            done.append(item)
        else:
            other.append(item)
    return done, other


def summarize_runs(runs: list[dict]) -> list[dict]:
    """Group runs by (method, backbone): per metric mean, std (over seeds, ddof=1) and count.

    Adds ``gap_recovered`` = (method - source_only) / (oracle - source_only) on the mean PCK where
    both references exist for the backbone.
    """
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in runs:
        groups.setdefault((r["method"], r["backbone"]), []).append(r)
    order = {m: i for i, m in enumerate(METHOD_ORDER)}
    rows = []
    for (method, backbone), items in sorted(groups.items(), key=lambda kv: (kv[0][1], order.get(kv[0][0], 50), kv[0][0])):
        keys = sorted({k for r in items for k in r["metrics"]})
        mean, std = {}, {}
        for k in keys:
            vals = np.array([r["metrics"][k] for r in items if k in r["metrics"]], dtype=np.float64)
            mean[k] = float(vals.mean())
            std[k] = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
        rows.append({"method": method, "backbone": backbone, "n": len(items), "mean": mean, "std": std,
                     "seeds": sorted(r["seed"] for r in items)})
    key = "pck@0.05_crop/mean"
    for row in rows:
        ref = {r["method"]: r["mean"].get(key) for r in rows if r["backbone"] == row["backbone"]}
        src, orc = ref.get("source_only"), ref.get("oracle")
        row["gap_recovered"] = (float((row["mean"][key] - src) / (orc - src))
                                if src is not None and orc is not None and orc != src else float("nan"))
    return rows


def compare_tables(rows: list[dict], kind: str = "group") -> tuple[list[str], list[list]]:
    """Columns: method, backbone, runs, one per group (or joint), mean, gap recovered."""
    names = list(GROUPS) if kind == "group" else list(JOINTS)
    headers = ["method", "backbone", "runs"] + names + ["mean", "gap recovered"]
    table = []
    for row in rows:
        cells = [row["method"], row["backbone"], row["n"]]
        for n in names + ["mean"]:
            k = f"pck@0.05_crop/{n}"
            if k in row["mean"]:
                cells.append(f"{row['mean'][k]:.1f} ± {row['std'][k]:.1f}" if row["n"] > 1 else f"{row['mean'][k]:.1f}")
            else:
                cells.append("-")
        g = row["gap_recovered"]
        cells.append("-" if g != g else f"{100 * g:.0f} %")
        table.append(cells)
    return headers, table


def compare_markdown(experiment: str, rows: list[dict], other: list[dict]) -> str:
    """The per-group comparison table with the unfinished runs listed below it."""
    headers, table = compare_tables(rows, "group")
    parts = [f"Target test PCK@0.05 (crop normaliser, %), mean ± std over seeds; MLflow experiment "
             f"`{experiment}`; gap recovered = (method - source_only) / (oracle - source_only).", "",
             report.markdown_table(headers, table).rstrip()]
    if other:
        parts += ["", "Not averaged (unfinished, failed or without target metrics):", ""]
        parts += [f"- {r['name']} ({r['method']}, {r['backbone']}, seed {r['seed']}): {r['status']}" for r in other]
    return "\n".join(parts).rstrip() + "\n"


def run_compare(experiment: str, tracking_uri: str, out: Path, prefix: str = "target_test/",
                log: bool = True) -> str:
    """Tables (markdown, CSV), a grouped bar chart and a summary MLflow run for one experiment."""
    done, other = collect_runs(experiment, tracking_uri, prefix)
    if not done:
        raise DaPoseError(f"experiment '{experiment}' has no finished run with {prefix}pck@0.05_crop/mean yet")
    rows = summarize_runs(done)
    out.mkdir(parents=True, exist_ok=True)
    for kind in ("group", "joint"):
        headers, table = compare_tables(rows, kind)
        (out / f"compare_{kind}.md").write_text(report.markdown_table(headers, table))
        report.write_csv(out / f"compare_{kind}.csv", headers, table)
    text = compare_markdown(experiment, rows, other)
    (out / "compare.md").write_text(text)
    named = {f"{r['method']} ({r['backbone']})": r["mean"] for r in rows}
    errors = {f"{r['method']} ({r['backbone']})": r["std"] for r in rows}
    report.bar_chart(named, "pck@0.05_crop", out / "compare.png", kind="group", title=experiment, errors=errors)
    report.write_json(out / "compare.json", rows)
    if log:
        tracker = MlflowTracker(tracking_uri, experiment, "compare", tags={"command": "compare"})
        try:
            for name in ("compare.md", "compare_group.csv", "compare_joint.csv", "compare.png", "compare.json"):
                tracker.log_artifact(out / name, "compare")
        finally:
            tracker.end("FINISHED")
    print(text)
    return text


# ------------------------------------------------------------------------------------ predict
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")


def _iter_frames(inputs: Sequence[str]):
    """(name, BGR image) for image files, folders of images and video files."""
    import cv2

    for item in inputs:
        p = Path(item)
        if p.is_dir():
            for f in sorted(x for x in p.iterdir() if x.suffix.lower() in IMAGE_SUFFIXES):
                yield from _iter_frames([str(f)])
        elif p.suffix.lower() in VIDEO_SUFFIXES and p.is_file():
            cap = cv2.VideoCapture(str(p))
            if not cap.isOpened():
                raise DaPoseError(f"{p}: cannot open video")
            i = 0
            while True:
                ok, frame = cap.read()
                if not ok:
                    break
                yield f"{p.stem}_{i:06d}", frame
                i += 1
            cap.release()
        elif p.is_file():
            img = cv2.imread(str(p), cv2.IMREAD_COLOR)
            if img is None:
                raise DaPoseError(f"{p}: not a readable image (expected {', '.join(IMAGE_SUFFIXES)})")
            yield p.stem, img
        else:
            raise DaPoseError(f"input not found: {p}")


@torch.no_grad()
def run_predict(checkpoint_path: str, cfg: Config, inputs: Sequence[str], out: Path, batch_size: int = 16) -> int:
    """Whole-frame predictions (the animal is assumed to fill the frame, as in a tracker's crop):
    skeleton overlays as PNG and all keypoints in ``predictions.json`` (original pixels)."""
    import cv2

    from da_pose.data.transforms import crop_affine
    from da_pose.eval.evaluate import apply_affines, invert_affines, predict_heatmaps
    from da_pose.viz import draw_skeleton

    device = resolve_device(cfg.device)
    ckpt = checkpoint.load(checkpoint_path)
    model = build_model(cfg.model, NUM_JOINTS)
    checkpoint.check_arch(ckpt, arch_of(cfg), checkpoint_path)
    checkpoint.load_model_weights(model, ckpt, checkpoint_path)
    model.to(device).eval()
    codec = make_codec(cfg)
    size = cfg.data.input_size
    mean = np.asarray(cfg.data.mean, np.float32)
    std = np.asarray(cfg.data.std, np.float32)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    pending: list[tuple[str, np.ndarray, np.ndarray]] = []

    def flush():
        if not pending:
            return
        crops = []
        for _, img, a in pending:
            rgb = cv2.cvtColor(cv2.warpAffine(img, a, (size, size), flags=cv2.INTER_LINEAR), cv2.COLOR_BGR2RGB)
            crops.append(((rgb.astype(np.float32) / 255.0 - mean) / std).transpose(2, 0, 1))
        x = torch.from_numpy(np.stack(crops)).to(device)
        hm = predict_heatmaps(model, x, codec, cfg.codec.flip_test)
        xy, conf = codec.decode(hm)
        affines = torch.from_numpy(np.stack([a for _, _, a in pending])).to(xy.device, torch.float64)
        xy = apply_affines(invert_affines(affines), xy.double()).float().cpu().numpy()
        conf = conf.float().cpu().numpy()
        for (name, img, _), pts, c in zip(pending, xy, conf):
            kp = np.concatenate([pts, c[:, None]], axis=1)
            vis = kp.copy()
            vis[:, 2] = (c > 0.1).astype(np.float32)
            cv2.imwrite(str(out / f"{name}.png"), draw_skeleton(img.copy(), vis))
            results.append({"image": name, "keypoints": kp.round(3).tolist()})
        pending.clear()

    for name, img in _iter_frames(inputs):
        h, w = img.shape[:2]
        a = crop_affine(((w - 1) / 2.0, (h - 1) / 2.0), float(max(w, h)), size)
        pending.append((name, img, a))
        if len(pending) >= batch_size:
            flush()
    flush()
    report.write_json(out / "predictions.json", {"joints": list(JOINTS), "checkpoint": str(checkpoint_path),
                                                 "predictions": results})
    return len(results)


# ------------------------------------------------------------------------------------ WS-CDA
WSCDA_OFFSETS = {"animal": 0, "target": 100_000, "other": 200_000}  # per-source loader seeds


def _feature_channels(cfg: Config) -> int:
    """C of ``PoseOutput.features`` for this config's model (built on the meta device: no memory)."""
    import dataclasses

    with torch.device("meta"):
        return int(build_model(dataclasses.replace(cfg.model, pretrained=""), NUM_JOINTS).feature_channels)


def _check_batchable(cfg: Config, ctx: RunContext, sources: dict) -> None:
    need = cfg.train.batch_size * ctx.dist.world_size
    for name, ds in sources.items():
        if len(ds) < need:
            raise DaPoseError(f"{cfg.data.root}: WS-CDA source '{name}' has {len(ds)} training images, fewer than one "
                              f"batch ({need}); lower train.batch_size")


def run_wscda(cfg: Config) -> dict:
    """WS-CDA (Cao et al. ICCV 2019): adversarial training with a domain discriminator on three
    data sources (other body plan, labelled animals, unlabelled target), then ``wscda.pplo_rounds``
    PPLO rounds of progressive pseudo-labels on the unlabelled target (CC-SSL's pseudo-labeller).

    Epochs ``0 .. train.epochs - 1`` are the adversarial phase, epoch ``train.epochs + r`` is PPLO
    round r; checkpoints at every epoch end, so ``resume=auto`` continues at the next epoch or
    round. The target test split is evaluated for the record only, never for selection.
    """
    import dataclasses

    from torch.utils.data import ConcatDataset

    from da_pose.adapt import wscda
    from da_pose.train.steps import ccssl_step, wscda_step

    w = wscda.check_config(cfg.wscda)
    if cfg.method in ("", "source_only"):  # the default tag: name the method from the config
        cfg = dataclasses.replace(cfg, method="wscda_pplo" if w.pplo_rounds else "wscda")
    with open_run(cfg, "adapt wscda") as ctx:
        if not cfg.init and ctx.resume_from is None:
            raise ConfigError("adapt wscda starts from a pretrained checkpoint: pass --set init=PATH")
        codec = make_codec(cfg)
        bs, world = cfg.train.batch_size, ctx.dist.world_size
        # the three sources of Cao et al. Sec. 3.1, each item tagged with its domain [y, z]
        other_ds = make_dataset(cfg, domain_records(cfg, "other", "train"), codec, train=True)
        source_ds = make_dataset(cfg, domain_records(cfg, "source", "train"), codec, train=True)
        target_eval_ds = make_dataset(cfg, domain_records(cfg, "target", "train"), codec, train=False)
        target_records = target_eval_ds.records  # readable frames only
        pick = wscda.labelled_subset(len(target_records), cfg.data.target_labelled, cfg.seed)
        unlabelled_records = [target_records[i] for i in np.setdiff1d(np.arange(len(target_records)), pick)]
        animal_parts = [wscda.DomainTagged(source_ds, 1, 0)]
        if pick.size:
            labelled_target = make_dataset(cfg, [target_records[i] for i in pick], codec, train=True)
            animal_parts.append(wscda.DomainTagged(labelled_target, 1, 1))
        animal_ds = ConcatDataset(animal_parts)
        target_train_ds = make_dataset(cfg, unlabelled_records, codec, train=True)
        # the unlabelled target's labels are never used: zeroed, so all its joints have weight 0
        hidden = target_train_ds.with_keypoints(np.zeros((len(target_train_ds.records), NUM_JOINTS, 3), np.float32))
        sources = {"other": wscda.DomainTagged(other_ds, 0, 0), "animal": animal_ds,
                   "target": wscda.DomainTagged(hidden, 1, 1)}
        _check_batchable(cfg, ctx, sources)
        test_ds = make_dataset(cfg, domain_records(cfg, "target", "test"), codec, train=False)
        test_records = test_ds.records
        test_loader = make_loader(cfg, test_ds, cfg.ccssl.batch_size, shuffle=False)
        evaluate_fn = partial(_evaluate_on, loader=test_loader, records=test_records, codec=codec, ctx=ctx,
                              prefix="target_test/")

        epochs = cfg.train.epochs
        steps = w.steps_per_epoch or max(1, len(animal_ds) // (bs * world))
        total = epochs * steps if not cfg.train.max_steps else min(epochs * steps, cfg.train.max_steps)
        with torch.random.fork_rng(devices=[]):  # the discriminator's initial weights depend on the seed only
            torch.manual_seed(epoch_seed(cfg.seed, 424_242))
            adversary = wscda.build_adversary(w, _feature_channels(cfg), total)
        model, trainer = build(cfg, ctx, extra_modules={"domain_adversary": adversary})
        if ctx.dist.enabled:  # the trainer wraps only the pose model in DDP
            wscda.average_gradients_over_ranks(adversary.disc)
        ctx.tracker.set_tags({"selection": "none: the last checkpoint is reported", "wscda_mode": w.mode,
                              "target_labelled": str(len(pick))})

        def batches(epoch):
            return MixedBatches({k: make_loader(cfg, ds, bs, shuffle=True, epoch=epoch + WSCDA_OFFSETS[k],
                                                info=ctx.dist, drop_last=True) for k, ds in sources.items()}, steps)

        if trainer.epoch < epochs:
            trainer.fit(partial(wscda_step, adversary=adversary, cfg=w), batches, epochs, evaluate=evaluate_fn,
                        select=None, desc=f"WS-CDA ({w.mode})")

        if w.pplo_rounds:
            # PPLO reuses CC-SSL's pseudo-labeller and curriculum with the rising pplo_keep share
            pctx = dataclasses.replace(ctx, cfg=dataclasses.replace(cfg, ccssl=wscda.pplo_ccssl_config(cfg.ccssl, w)))
            pl_ds = target_eval_ds if not pick.size else make_dataset(cfg, unlabelled_records, codec, train=False)
            pl_records = pl_ds.records
            pl_steps = w.pplo_steps or max(1, len(pl_records) // (bs * world))
            for r in range(max(0, trainer.epoch - epochs), w.pplo_rounds):
                labels, cached = load_or_generate_labels(pctx, model, codec, pl_ds, pl_records, r)
                log_pseudo_label_round(ctx, labels, cached, pl_records, r, "pplo", "PPLO round")
                labelled = target_train_ds.with_keypoints(labels.as_labels())

                def pplo_batches(epoch, labelled=labelled):
                    return MixedBatches({
                        "source": make_loader(cfg, animal_ds, bs, shuffle=True, epoch=epoch, info=ctx.dist,
                                              drop_last=True),
                        "target": make_loader(cfg, labelled, bs, shuffle=True, epoch=epoch + 100_000, info=ctx.dist,
                                              drop_last=True)}, pl_steps)

                trainer.round = r
                trainer.fit(partial(ccssl_step, gamma=cfg.ccssl.gamma), pplo_batches, epochs + r + 1,
                            evaluate=evaluate_fn, select=None, desc=f"PPLO round {r + 1}/{w.pplo_rounds}")
        if ctx.is_main:
            metrics = report_target(ctx, model, codec, test_records, test_ds, step=trainer.step)
            ctx.tracker.log_artifact(ctx.run_dir / "last.pt", "checkpoint")
            after = f" + {w.pplo_rounds} PPLO rounds" if w.pplo_rounds else ""
            print_table(metrics, "target_test/", f"{cfg.name}: target test after WS-CDA ({w.mode}){after}")
            return metrics
        return {}
