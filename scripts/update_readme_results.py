"""Paste the comparison table of an MLflow experiment into README.md, between markers.

    python scripts/update_readme_results.py --experiment toy-demo --block demo
    python scripts/update_readme_results.py --experiment toy-demo --block demo --check   # exit 1 if stale

The block is exactly what ``da-pose compare`` prints (``da_pose.eval.compare.compare_markdown``), plus the
commands that reproduce it; numbers are never typed by hand.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from pathlib import Path

import tempfile

from da_pose.eval.compare import compare_markdown, fetch_per_image, paired_interval, summarize_experiment
from da_pose.adapt.study import study_summary
from da_pose.eval.labels_curve import write_labels
from da_pose.errors import DaPoseError, run_script
from da_pose.tracking import check_reachable

REPRODUCE = {
    "shift-calibration": "Reproduce: `python scripts/benchmark.py --matrix calibration --preset demo --seeds 0 "
                         "--shifts appearance context pose shape occlusion video all --jobs 1 --threads 1 --data "
                         "data/shifts --tracking-uri sqlite:///calib.db --experiment shifts-calib`, the same with "
                         "`--shifts pose all --methods plain_pl ccssl source_only_ext` (the adaptation rows), then `python "
                         "scripts/update_readme_results.py --experiment shifts-calib --tracking-uri sqlite:///calib.db "
                         "--block shift-calibration --by shift --reference oracle`.",
    "shift-benchmark": (
        'Reproduce: `make benchmark` (the default matrix: `pose`, `context`, `appearance`, `all`, 3 seeds) '
        'in a fresh clone; `occlusion` and `video` with the same methods: `python scripts/benchmark.py '
        '--shifts occlusion video --methods source_only oracle source_only_ext plain_pl ccssl mean_teacher`; '
        'the calibration rows of `shape`: `python scripts/benchmark.py --matrix calibration --shifts shape`; '
        'the newer methods on `video`, then on `occlusion` and `context`, then on `appearance` and `shape`: '
        '`python scripts/benchmark.py --shifts video --methods uniframe uda_animal scarcenet regda` (and '
        '`--shifts occlusion context`, `--shifts appearance shape`); the other methods on `shape`: `python '
        'scripts/benchmark.py --shifts shape --methods source_only_ext plain_pl ccssl mean_teacher`; then `python '
        'scripts/update_readme_results.py '
        '--experiment toy-demo-shifts --block shift-benchmark --by shift`.'
    ),
    "occlusion-diagnosis": (
        "Reproduce (beside the `toy-demo-shifts` experiment of `make benchmark`): for S in 0 1 2, `da-pose adapt "
        "plain_pl experiments/toy/plain_pl_hg.yaml --seed S --set name=plain_pl_plain_occlusion_sS --set "
        "init=runs/toy-demo-shifts/pretrain_hg_sS/last.pt --set data.root=data/demo-shifts/occlusion --set "
        "experiment=occlusion-diagnosis`, and the same with `--set name=plain_pl_vis_occlusion_sS --set "
        "ccssl.diagnostic_visible_only=true`; then `python scripts/update_readme_results.py --readme "
        "docs/results.md --experiment occlusion-diagnosis --block occlusion-diagnosis --by shift`."
    ),
    # session 9's run of the block (README until session 11; its store is gone)
    "shift-benchmark-v2": (
        'Reproduce (at commit c2c3ee3, before the fourth calibration round): `make benchmark` (the default '
        'matrix: `pose`, `context`, `appearance`, `all`, 3 seeds) in a fresh clone; the calibration rows of '
        '`shape` and `occlusion`: `python scripts/benchmark.py --matrix calibration --shifts all shape '
        'occlusion --jobs 1`; WS-CDA, PPLO and the newer methods on `all`: `python scripts/benchmark.py '
        '--shifts all --methods wscda wscda_pplo uniframe uda_animal scarcenet regda`; then `python '
        'scripts/update_readme_results.py --readme docs/history.md --experiment toy-demo-shifts --block '
        'shift-benchmark-v2 --by shift`.'
    ),
    # the same block before session 9's low sun changed `all` (kept as a record; its store is gone)
    "shift-benchmark-v1": (
        'Reproduce (at commit 124e740, before the low sun): `make benchmark` (the default matrix: `pose`, '
        '`context`, `all`, 3 seeds); the calibration rows of `shape` and `occlusion`: `python '
        'scripts/benchmark.py --matrix calibration --shifts all shape occlusion`; the newer methods on '
        '`all`: `python scripts/benchmark.py --shifts all --methods uniframe uda_animal regda scarcenet`; '
        'the ResNet-18 rows: `python scripts/benchmark.py --backbone resnet18 --shifts all --methods '
        'source_only oracle source_only_ext plain_pl ccssl` (its settings: docs/results.md); then `python '
        'scripts/update_readme_results.py --readme docs/history.md --experiment toy-demo-shifts --block '
        'shift-benchmark-v1 --by shift`.'
    ),
    "methods-per-shift": (
        "Reproduce (one experiment, store `methods.db`, run in this order): `python scripts/benchmark.py "
        "--experiment toy-demo-methods --tracking-uri sqlite:///methods.db --shifts all pose context --methods "
        "source_only oracle source_only_ext plain_pl`; the same with `--shifts all --methods wscda wscda_pplo`; "
        "with `--shifts pose context --methods uniframe uda_animal scarcenet regda`; with `--shifts pose context "
        "--methods ccssl mean_teacher`; the ResNet-18 rows (seed 0): with `--backbone resnet18 --shifts all --seeds 0 "
        "--methods source_only oracle source_only_ext plain_pl mean_teacher uniframe uda_animal scarcenet regda` "
        "(the rows that finished); then `python scripts/update_readme_results.py --experiment toy-demo-methods "
        "--tracking-uri sqlite:///methods.db --block methods-per-shift --by shift`."
    ),
    "r18-all": (
        "Reproduce (a fresh clone, store and data folder): `python scripts/benchmark.py --backbone resnet18 "
        "--shifts all --experiment toy-demo-r18 --methods source_only oracle source_only_ext plain_pl ccssl "
        "mean_teacher scarcenet uda_animal uniframe regda wscda wscda_pplo --tracking-uri sqlite:///mlruns.db` (each "
        "method on its `experiments/toy/<method>_r18.yaml`, chosen on target val: docs/results.md; WS-CDA and PPLO, "
        "which have none, on the fallback), then `python scripts/update_readme_results.py --experiment toy-demo-r18 "
        "--block r18-all --by shift`."
    ),
    # session 10's run of the block, before session 12's target-val ScarceNet rows (frozen in docs/history.md)
    "r18-all-v1": (
        "Reproduce (a fresh clone of 94ebe14, store and data folder): `python scripts/benchmark.py --backbone "
        "resnet18 --shifts all --experiment toy-demo-r18 --methods source_only oracle source_only_ext plain_pl ccssl "
        "mean_teacher scarcenet uda_animal uniframe regda --tracking-uri sqlite:///mlruns.db`, then `python "
        "scripts/update_readme_results.py --readme docs/history.md --experiment toy-demo-r18 --block r18-all-v1 "
        "--by shift` (before session 12 replaced the ScarceNet rows)."
    ),
    "labels": "Reproduce: `python scripts/benchmark.py --matrix labels --tracking-uri sqlite:///labels.db` (a "
              "fresh clone, data folder and store), then `python scripts/update_readme_results.py --experiment "
              "toy-demo-shifts --tracking-uri sqlite:///labels.db --block labels --by labels --plot "
              "docs/img/labels_pose.png`.",
    "labels-source-init": "Reproduce: `python scripts/benchmark.py --matrix labels --labels-init source "
                          "--tracking-uri sqlite:///labels-source.db`, then `python scripts/update_readme_results.py "
                          "--experiment toy-demo-shifts --tracking-uri sqlite:///labels-source.db --block "
                          "labels-source-init --by labels`.",
    "calibration-g1": "Reproduce: `python scripts/benchmark.py --matrix calibration --data-seed 1 --seeds 0 --shifts "
                      "appearance context pose shape occlusion video all --data data/demo-shifts-g1 --experiment "
                      "calib-g1`, then `python "
                      "scripts/update_readme_results.py --readme docs/shifts.md --experiment calib-g1 --block "
                      "calibration-g1 --by shift`.",
    "calibration-video": "Reproduce: `python scripts/benchmark.py --matrix calibration --shifts video --experiment "
                         "calib-video`, then `python scripts/update_readme_results.py --readme docs/shifts.md "
                         "--experiment calib-video --block calibration-video --by shift`.",
    "study": "Reproduce: for each shift S in appearance, context, pose, shape, occlusion, video, all: `da-pose --threads 1 "
             "study pseudo-labels "
             "--checkpoint runs/toy-demo-shifts/pretrain_hg_s0/last.pt --data \"data/demo-shifts/S#target\" --unit "
             "video --out runs/study/S` (the source model and data of `make benchmark`), then `python "
             "scripts/update_readme_results.py --experiment pseudo-label-study --block study --by study`.",
    "study-r18": "Reproduce: `da-pose --threads 1 study pseudo-labels --checkpoint "
                 "runs/toy-demo-r18/pretrain_r18_s0/last.pt --data \"data/demo-shifts/all#target\" --unit video --out "
                 "runs/study-r18/all --experiment pseudo-label-study-r18` (the seed-0 ResNet-18 source model of the "
                 "block above), then `python scripts/update_readme_results.py --experiment pseudo-label-study-r18 "
                 "--block study-r18 --by study`.",
    "demo": "Reproduce: `make demo` (or `bash scripts/demo.sh`), then "
            "`python scripts/update_readme_results.py --experiment toy-demo --block demo`.",
    "benchmark": "Reproduce: `make benchmark`, then "
                 "`python scripts/update_readme_results.py --experiment toy-benchmark --block benchmark`.",
    "demo-3seeds": "Reproduce: `make benchmark BENCHMARK_ARGS=\"--preset demo --data data/demo --experiment "
                   "toy-demo-3seeds\"` (the hourglass rows), `python scripts/benchmark.py --preset demo --data "
                   "data/demo --experiment toy-demo-3seeds --backbone resnet18 --seeds 0 --methods source_only oracle "
                   "ccssl wscda wscda_pplo source_only_ext` (the resnet18 rows), then `python "
                   "scripts/update_readme_results.py --readme docs/history.md --experiment toy-demo-3seeds --block "
                   "demo-3seeds`.",
}


def render_study(experiment: str, tracking_uri: str) -> str:
    """The pseudo-label study runs of ``experiment`` (``da-pose study pseudo-labels``), one row
    group per shift tag (the newest FINISHED run of each), as one table."""
    from mlflow.tracking import MlflowClient

    check_reachable(tracking_uri, must_exist=True)
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise DaPoseError(f"no MLflow experiment '{experiment}' in {tracking_uri}")
    newest = {}
    for run in client.search_runs([exp.experiment_id], "attributes.status = 'FINISHED'",
                                  order_by=["attributes.start_time DESC"], max_results=1000):
        newest.setdefault(run.data.tags.get("shift", run.data.tags.get("data", "?")), run)
    if not newest:
        raise DaPoseError(f"experiment '{experiment}' has no finished study run")
    runs = [(label, newest[label].data.metrics) for label in sorted(newest)]
    first = next(iter(newest.values())).data
    header = (f"Kept-label accuracy of one source model's pseudo-labels on target train (PCK@0.05 crop, %) "
              f"under each labeller variant, paired against the identity labeller at matched kept fractions; "
              f"MLflow experiment `{experiment}`; 95 % intervals over {first.params.get('study.unit', '?')}s "
              f"({first.params.get('study.draws', '?')} draws); * = the interval excludes zero. Checkpoint: "
              f"`{first.tags.get('checkpoint', '?')}`.\n\n")
    return header + study_summary(runs)


def render(experiment: str, tracking_uri: str, block: str, reference: str = "plain_pl", by: str | None = None,
           unit: str = "video", plot: Path | None = None) -> str:
    """The block's markdown; with ``by="labels"`` and ``plot``, the first labels-vs-PCK plot is
    copied there (the picture the README shows beside the block)."""
    if by == "study":
        return render_study(experiment, tracking_uri) + "\n" + REPRODUCE.get(block, "") + "\n"
    with tempfile.TemporaryDirectory() as cache:
        rows, other = summarize_experiment(experiment, tracking_uri, Path(cache), reference=reference, unit=unit)
        text = compare_markdown(experiment, rows, other, reference, by, unit)
        if by == "labels":  # the labels-vs-PCK table paired to the supervised-only floor (plot: compare --by labels)
            fetch = lambda run: fetch_per_image(run, tracking_uri, Path(cache))  # noqa: E731
            body, files = write_labels(rows, Path(cache), lambda a, b: paired_interval(a, b, fetch, unit=unit),
                                       unit, experiment)
            text += "\n" + body
            pngs = [f for f in files if f.endswith(".png")]
            if plot is not None and pngs:
                plot.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(Path(cache) / pngs[0], plot)
    return text + "\n" + REPRODUCE.get(block, "") + "\n"


def replace_block(readme: str, block: str, body: str) -> str:
    pattern = re.compile(rf"(<!-- results:{block} start -->\n)(.*?)(<!-- results:{block} end -->)", re.S)
    if not pattern.search(readme):
        raise DaPoseError(f"README has no '<!-- results:{block} start/end -->' markers")
    return pattern.sub(lambda m: m.group(1) + body + m.group(3), readme)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiment", required=True)
    ap.add_argument("--tracking-uri", default="sqlite:///mlruns.db")
    ap.add_argument("--readme", default="README.md")
    ap.add_argument("--block", default="demo")
    ap.add_argument("--check", action="store_true", help="exit 1 when the README block differs")
    ap.add_argument("--reference", default="plain_pl", help="the method every other is paired against")
    ap.add_argument("--by", choices=["shift", "labels", "study"], default=None,
                    help="shift: one table per shift and a gap summary; labels: PCK against the labelled fraction; "
                         "study: the pseudo-label study runs of the experiment, one per shift")
    ap.add_argument("--unit", choices=["video", "image"], default="video", help="what the bootstrap resamples")
    ap.add_argument("--plot", type=Path, default=None, help="with --by labels: copy the labels-vs-PCK plot here")
    args = ap.parse_args(argv)
    path = Path(args.readme)
    old = path.read_text()
    if args.plot is not None and args.by != "labels":
        ap.error("--plot needs --by labels")
    body = render(args.experiment, args.tracking_uri, args.block, args.reference, args.by, args.unit,
                  None if args.check else args.plot)
    new = replace_block(old, args.block, body)
    if args.check:
        if new != old:
            print(f"{path}: results block '{args.block}' is out of date", file=sys.stderr)
            return 1
        return 0
    path.write_text(new)
    print(f"updated block '{args.block}' of {path}")
    return 0


if __name__ == "__main__":
    sys.exit(run_script(main))
