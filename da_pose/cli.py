"""The ``da-pose`` command line: parses, loads the config, calls a job. No logic here."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import click

from da_pose import __version__
from da_pose.errors import run_script


def _config_overrides(sets, tracking_uri, seed, device, resume) -> list[str]:
    out = list(sets)
    if tracking_uri:
        out.append(f"tracking_uri={tracking_uri}")
    if seed is not None:
        out.append(f"seed={seed}")
    if device:
        out.append(f"device={device}")
    if resume:
        out.append(f"resume={resume}")
    return out


def run_options(fn):
    """The options every training command shares."""
    fn = click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
                      help="Override a config value, e.g. --set train.lr=1e-3 (repeatable).")(fn)
    fn = click.option("--tracking-uri", default=None, help="MLflow tracking URI (default sqlite:///mlruns.db).")(fn)
    fn = click.option("--seed", type=int, default=None, help="Random seed.")(fn)
    fn = click.option("--device", default=None, help="auto | cpu | cuda | cuda:N")(fn)
    fn = click.option("--resume", default=None, help="'auto' continues the run folder's last checkpoint.")(fn)
    return fn


def _load(config, sets, tracking_uri, seed, device, resume):
    import da_pose.adapt  # noqa: F401  (the methods' config sections)
    from da_pose.config import load_config

    return load_config(config, _config_overrides(sets, tracking_uri, seed, device, resume))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="da-pose")
@click.option("--threads", type=int, default=None, envvar="DA_POSE_THREADS", show_envvar=True,
              help="CPU threads for torch and OpenCV (default: torch's choice, one per core).")
def cli(threads):
    """Animal pose estimation across domains: pretrain, adapt (CC-SSL, WS-CDA, ...), evaluate, compare."""
    if threads is not None:
        from da_pose.train.trainer import set_threads

        set_threads(threads)


# ---------------------------------------------------------------------------------------- data
@cli.group()
def data():
    """Generate the embedded benchmark and look at datasets."""


@data.command("generate")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--preset", default="demo", show_default=True, help="demo | benchmark")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--workers", type=int, default=2, show_default=True, help="Processes used for rendering.")
@click.option("--shift", default="all", show_default=True,
              help="The target's shift: appearance, context, pose, shape, occlusion, video or all; a comma "
                   "list combines them (docs/shifts.md). The source is the same whatever the shift.")
@click.option("--source-from", default=None, type=click.Path(file_okay=False),
              help="A folder generated with the same preset and seed (any shift): its source and other "
                   "domains are hard-linked instead of rendered again.")
def data_generate(out, preset, seed, workers, shift, source_from):
    """Write the embedded synthetic->real benchmark in the real datasets' formats."""
    import time

    from da_pose.data.toy import generate

    t0 = time.perf_counter()
    manifest = generate(out, preset=preset, seed=seed, workers=workers, shift=shift, source_from=source_from)
    counts = ", ".join(f"{k}: {v.get('count')}" for k, v in manifest["domains"].items())
    shifts = ",".join(manifest["gap"]["shifts"])
    click.echo(f"wrote {out} (shift {shifts}; {counts}) in {time.perf_counter() - t0:.1f} s")


@data.command("show")
@click.option("--data", "spec", required=True,
              help="DIR#domain (a benchmark folder), tigdog:ROOT, synthetic:ROOT, ap10k:ANN.json, "
                   "animalpose:ANN.json or coco:ANN.json (each COCO kind takes @IMAGEDIR).")
@click.option("--joint-map", "joint_map", default=None, metavar="NAME|FILE.yaml",
              help="For coco:ANN.json: a built-in map (ap10k, animalpose, coco_person) or a joint-map file "
                   "(datasets/README.md).")
@click.option("--animal", default=None, help="Animal / species for tigdog: and synthetic: roots.")
@click.option("--split", default="all", show_default=True)
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="PNG file to write.")
@click.option("-n", "count", type=int, default=16, show_default=True)
@click.option("--seed", type=int, default=0)
@click.option("--strict/--no-strict", default=False, show_default=True,
              help="Refuse a dataset with any unreadable sample instead of skipping it with a warning.")
def data_show(spec, joint_map, animal, split, out, count, seed, strict):
    """Draw a grid of samples with their skeletons."""
    from da_pose.data.manifest import parse_data_spec
    from da_pose.viz import records_grid

    records = parse_data_spec(spec, animal=animal, split=split, joint_map=joint_map, strict=strict)
    path = records_grid(records, out, n=count, seed=seed)
    click.echo(f"wrote {path} ({min(count, len(records))} of {len(records)} samples)")
    if records and records[0].extra.get("split_source"):
        click.echo(f"split: {records[0].extra['split_source']}")


# ---------------------------------------------------------------------------------------- train
@cli.command()
@click.argument("config", type=click.Path(dir_okay=False))
@run_options
def pretrain(config, sets, tracking_uri, seed, device, resume):
    """Supervised training on the source (synthetic) domain."""
    from da_pose.jobs import run_pretrain

    run_pretrain(_load(config, sets, tracking_uri, seed, device, resume))


@cli.command()
@click.argument("config", type=click.Path(dir_okay=False))
@run_options
def finetune(config, sets, tracking_uri, seed, device, resume):
    """Supervised training on the labelled target train split (oracle; CC-SSL-R with --set init=...)."""
    from da_pose.jobs import run_finetune

    run_finetune(_load(config, sets, tracking_uri, seed, device, resume))


class _AdaptCommand(click.Command):
    """``da-pose adapt NAME CONFIG``: the help lists every registered method."""

    def format_help_text(self, ctx, formatter):
        super().format_help_text(ctx, formatter)
        from da_pose.adapt import METHODS

        with formatter.section("Methods (NAME)"):
            formatter.write_dl([(name, m.summary) for name, m in METHODS.items()])


@cli.command(cls=_AdaptCommand)
@click.argument("name")
@click.argument("config", type=click.Path(dir_okay=False))
@run_options
def adapt(name, config, sets, tracking_uri, seed, device, resume):
    """Domain adaptation from a pretrained checkpoint (--set init=PATH) with the method NAME."""
    from da_pose.adapt import get_method, run_adaptation

    method = get_method(name)  # an unknown name lists the valid ones (exit 2)
    run_adaptation(_load(config, sets, tracking_uri, seed, device, resume), method)


# ---------------------------------------------------------------------------------------- eval
CHECKPOINT_HELP = ("A checkpoint file, or an MLflow URI read from --tracking-uri: runs:/RUN_ID/checkpoint/last.pt, "
                   "runs:/RUN_ID/model, models:/NAME/VERSION.")


def _default_out(ckpt: str, folder: str) -> Path:
    """Beside a checkpoint file; ``runs/<folder>/<the URI as a name>`` for an MLflow URI."""
    from da_pose.checkpoint import is_mlflow_uri

    if is_mlflow_uri(ckpt):
        return Path("runs") / folder / "".join(c if c.isalnum() or c in "-_." else "_" for c in ckpt).strip("_")
    return Path(ckpt).parent / folder


@cli.command()
@click.option("--checkpoint", "ckpt", required=True, type=click.Path(dir_okay=False), help=CHECKPOINT_HELP)
@click.option("--data", "spec", default=None,
              help="DIR#domain, tigdog:ROOT, synthetic:ROOT, ap10k:ANN.json, animalpose:ANN.json or "
                   "coco:ANN.json[@IMAGEDIR] (default: the run's target).")
@click.option("--joint-map", "joint_map", default=None, metavar="NAME|FILE.yaml",
              help="For coco:ANN.json: a built-in map (ap10k, animalpose, coco_person) or a joint-map file.")
@click.option("--animal", default=None)
@click.option("--split", default="test", show_default=True)
@click.option("--out", default=None, type=click.Path(file_okay=False), help="Folder for tables (default: beside the checkpoint).")
@click.option("--flip-test/--no-flip-test", default=None)
@click.option("--log/--no-log", default=False, help="Also log the evaluation as an MLflow run.")
@click.option("--tracking-uri", default=None)
@click.option("--device", default=None)
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE")
def evaluate(ckpt, spec, joint_map, animal, split, out, flip_test, log, tracking_uri, device, sets):
    """Per-joint and per-group PCK@0.05 of a checkpoint (a file or an MLflow URI)."""
    from da_pose.checkpoint import fetched

    with fetched(ckpt, tracking_uri) as path:
        _evaluate(ckpt, str(path), spec, joint_map, animal, split, out, flip_test, log, tracking_uri, device, sets)


def _evaluate(ref, ckpt, spec, joint_map, animal, split, out, flip_test, log, tracking_uri, device, sets):
    from da_pose.data.manifest import parse_data_spec
    from da_pose.jobs import config_from_checkpoint, run_evaluate

    overrides = list(sets)
    if tracking_uri:
        overrides.append(f"tracking_uri={tracking_uri}")
    if device:
        overrides.append(f"device={device}")
    if flip_test is not None:
        overrides.append(f"codec.flip_test={str(flip_test).lower()}")
    cfg = config_from_checkpoint(ckpt, overrides)
    spec = spec or f"{cfg.data.root}#{cfg.data.target}"
    records = parse_data_spec(spec, animal=animal, split=split, joint_map=joint_map, strict=cfg.data.strict)
    out_dir = Path(out) if out else _default_out(ref, "evaluate")
    title = f"{ref if ref != ckpt else Path(ckpt).name} on {spec} ({split})"
    run_evaluate(ckpt, cfg, records, out_dir, log=log, title=title, checkpoint_ref=ref)
    click.echo(f"tables in {out_dir}")


@cli.command()
@click.option("--experiment", required=True, help="MLflow experiment name.")
@click.option("--tracking-uri", default="sqlite:///mlruns.db", show_default=True)
@click.option("--out", default=None, type=click.Path(file_okay=False), help="Folder for tables and plot.")
@click.option("--metric-prefix", default="target_test/", show_default=True)
@click.option("--reference", default="plain_pl", show_default=True,
              help="Method every other is paired against (besides source_only).")
@click.option("--by", type=click.Choice(["shift", "labels"]), default=None,
              help="shift: one table per shift and a gap summary; labels: PCK against the labelled target fraction.")
@click.option("--draws", type=click.IntRange(min=100), default=2000, show_default=True, help="Bootstrap draws.")
@click.option("--unit", type=click.Choice(["video", "image"]), default="video", show_default=True,
              help="What the bootstrap resamples: whole test videos (frames of a shot are correlated) or images.")
def compare(experiment, tracking_uri, out, metric_prefix, reference, by, draws, unit):
    """Compare methods from MLflow: mean +- std over seeds, paired differences against
    source_only and a reference with 95 % bootstrap intervals (test images x seeds), gap
    recovered; per-group/per-joint tables and a plot."""
    from da_pose.eval.compare import run_compare

    run_compare(experiment, tracking_uri, Path(out) if out else Path("runs") / experiment / "compare", metric_prefix,
                reference=reference, by=by, draws=draws, unit=unit)


@cli.command()
@click.option("--checkpoint", "ckpt", required=True, type=click.Path(dir_okay=False), help=CHECKPOINT_HELP)
@click.argument("inputs", nargs=-1, required=True)
@click.option("--out", required=True, type=click.Path(file_okay=False))
@click.option("--boxes", default=None, type=click.Path(dir_okay=False),
              help="Boxes per frame: a COCO detections JSON [{image_id or file_name, bbox [x,y,w,h], score}] "
                   "or a CSV frame,x,y,w,h (video frames by 0-based index, images by file name). "
                   "Frames without a box find their own.")
@click.option("--crop", type=click.Choice(["auto", "whole"]), default="auto", show_default=True,
              help="auto: whole frame, then the crop around its confident joints, tracked across video "
                   "frames; whole: the whole frame only (footage already cropped to the animal).")
@click.option("--pad", default=2.0, show_default=True, help="Crop side / the confident joints' box side.")
@click.option("--box-pad", default=1.25, show_default=True, help="Crop side / a --boxes box side.")
@click.option("--smooth", default=0.5, show_default=True,
              help="Weight of the newest crop in the tracked crop (1: no smoothing).")
@click.option("--min-conf", default=0.2, show_default=True, help="Confidence of a joint that counts (and is drawn).")
@click.option("--min-joints", default=4, show_default=True,
              help="Confident joints needed for a box; fewer in the tracked crop: back to the whole frame.")
@click.option("--frames/--no-frames", default=False, help="Also a PNG overlay per video frame.")
@click.option("--tracking-uri", default=None, help="For an MLflow --checkpoint URI.")
@click.option("--device", default=None)
def predict(ckpt, inputs, out, boxes, crop, pad, box_pad, smooth, min_conf, min_joints, frames, tracking_uri, device):
    """Labelled videos, overlays and per-frame keypoint tables (CSV, JSON) for images, folders or videos."""
    from da_pose.checkpoint import fetched
    from da_pose.jobs import config_from_checkpoint
    from da_pose.predict import PredictOptions, run_predict

    opts = PredictOptions(crop=crop, pad=pad, box_pad=box_pad, smooth=smooth, min_conf=min_conf,
                          min_joints=min_joints, frames=frames)
    with fetched(ckpt, tracking_uri) as path:
        cfg = config_from_checkpoint(path, [f"device={device}"] if device else [])
        n = run_predict(str(path), cfg, list(inputs), Path(out), opts, boxes=boxes, checkpoint_ref=ckpt)
    click.echo(f"wrote {n} labelled frames, predictions.csv and predictions.json to {out}")


# ---------------------------------------------------------------------------------------- study
@cli.group()
def study():
    """Mechanism studies with a fixed model (no training)."""


@study.command("pseudo-labels")
@click.option("--checkpoint", "ckpt", required=True, type=click.Path(dir_okay=False))
@click.option("--data", "spec", default=None,
              help="DIR#domain, tigdog:ROOT, ... as for evaluate (default: the run's target).")
@click.option("--animal", default=None)
@click.option("--split", default="train", show_default=True, help="The split labelled (its labels score the kept ones).")
@click.option("--out", default=None, type=click.Path(file_okay=False),
              help="Folder for the table, CSV, plot and JSON (default: beside the checkpoint, study/).")
@click.option("--experiment", default="pseudo-label-study", show_default=True, help="MLflow experiment.")
@click.option("--tracking-uri", default=None, help="MLflow tracking URI (default: the checkpoint's).")
@click.option("--variants", default="identity,equivariance,invariance,flip,temporal,all", show_default=True,
              help="Labeller variants (identity is always included: the reference).")
@click.option("--rules", default="max,agreement", show_default=True, help="Confidence rules.")
@click.option("--fractions", default="20,40,60,80", show_default=True, help="Kept fractions, percent of joints.")
@click.option("--draws", type=int, default=2000, show_default=True, help="Bootstrap draws.")
@click.option("--unit", default="image", show_default=True, help="What the bootstrap resamples: image | video.")
@click.option("--seed", type=int, default=None, help="Seed of the views and the bootstrap (default: the config's).")
@click.option("--device", default=None)
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Config override, e.g. ccssl.num_transforms=8.")
def study_pseudo_labels(ckpt, spec, animal, split, out, experiment, tracking_uri, variants, rules, fractions, draws,
                        unit, seed, device, sets):
    """Accuracy of kept pseudo-labels per labeller variant and confidence rule, at matched kept fractions."""
    from da_pose.adapt.study import StudySettings, check_settings, run_study, study_config
    from da_pose.data.manifest import parse_data_spec

    overrides = list(sets) + [f"{k}={v}" for k, v in (("tracking_uri", tracking_uri), ("device", device)) if v]
    cfg = study_config(ckpt, overrides)
    spec = spec or f"{cfg.data.root}#{cfg.data.target}"
    settings = check_settings(StudySettings(spec, split, variants, rules, fractions, draws,
                                            cfg.seed if seed is None else seed, unit, experiment))
    records = parse_data_spec(spec, animal=animal, split=split, strict=cfg.data.strict)
    run_study(ckpt, cfg, records, Path(out) if out else Path(ckpt).parent / "study", settings)


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    # A skipped sample is one "warning:" line, not Python's two-line file:line format.
    return f"warning: {message}\n"


def _run(argv) -> None:
    def invoke() -> int:
        try:
            cli.main(args=argv, prog_name="da-pose", standalone_mode=False)
        except click.exceptions.Abort:
            click.echo("aborted", err=True)
            return 130
        except click.ClickException as exc:
            exc.show()
            return exc.exit_code
        return 0

    code = run_script(invoke)
    if code:
        sys.exit(code)


def main(argv=None) -> None:
    """Entry point: project errors become one line on stderr and an exit code (2 for config).

    An OSError that reaches this point (disk full, a path that is a file, no permission) is a
    fault of the environment, not of the code: it is reported the same way, exit code 1.
    Warnings (a skipped unreadable sample, say) are one ``warning:`` line each.
    """
    previous = warnings.formatwarning
    warnings.formatwarning = _one_line_warning
    try:
        _run(argv)
    finally:
        warnings.formatwarning = previous
