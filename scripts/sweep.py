"""A small grid sweep whose best point is chosen on the labelled target VAL split, never on test.

    python scripts/sweep.py experiments/toy/ccssl_hg.yaml --command "adapt ccssl" \\
        --grid train.lr=0.0005,0.002 --grid ccssl.gamma=1,10 \\
        --set data.root=data/demo --set init=runs/toy-demo/pretrain_hg/last.pt \\
        --experiment sweep-ccssl-hg --write experiments/toy/tuned/ccssl_hg.yaml

Every grid point is one ``da-pose`` run (``<sweep>_p<i>``) in one MLflow experiment, tagged by its
settings through its params; a point already FINISHED is not run again (resumable). The score of
a point is the last logged ``target_val/pck@0.05_crop/mean`` of its run (the reported model's); of
points with the same best score, the first in grid order is chosen.
The table printed and written to ``<out>/sweep.md`` shows the val score only: the test split is
not looked at. ``--write`` saves the chosen point as a YAML of the base config's keys plus the
chosen values and ``settings: target_val`` (and ``train.selection`` as given), with a header
that says how it was chosen.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

import da_pose.adapt  # noqa: F401  (registers the methods' config sections that the points' configs name)
from da_pose.config import load_config
from da_pose.errors import ConfigError, run_script

SCORE = "target_val/pck@0.05_crop/mean"


def parse_grid(items: list[str]) -> dict[str, list]:
    """``["train.lr=1e-4,1e-3", ...]`` -> ``{"train.lr": [0.0001, 0.001]}`` (values read as YAML).

    Values holding commas (lists) are separated by ``;`` instead:
    ``ccssl.keep_schedule=[0.2,0.2];[0.2,0.4]``.
    """
    grid = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not key or not values:
            raise ConfigError(f"--grid {item!r}: expected KEY=V1,V2,... (e.g. train.lr=1e-4,1e-3)")
        grid[key.strip()] = [_value(v) for v in values.split(";" if ";" in values else ",")]
    return grid


def _value(text: str):
    """A grid value: an int, a float (``1e-4`` too, which YAML 1.1 reads as a string), else YAML."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return yaml.safe_load(text)


def points(grid: dict[str, list]) -> list[dict]:
    """Every combination of the grid's values, in a fixed order."""
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


def finished_runs(uri: str, experiment: str) -> dict[str, object]:
    """Run name -> MLflow run of the experiment's FINISHED runs."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return {}
    runs = client.search_runs([exp.experiment_id], "attributes.status = 'FINISHED'", max_results=10000)
    return {r.info.run_name: r for r in runs}


def score_of(run) -> float | None:
    value = run.data.metrics.get(SCORE.replace("@", "_at_"), run.data.metrics.get(SCORE))
    return None if value is None else float(value)


def overrides_for(args, point: dict, name: str) -> list[str]:
    """The ``key=value`` overrides of one grid point's run."""
    return [*args.set, f"experiment={args.experiment}", f"name={name}", f"train.selection={args.selection}",
            *(f"{k}={json.dumps(v) if isinstance(v, (list, dict)) else v}" for k, v in point.items())]


def check_points(args, plan: list[tuple[str, dict]]) -> None:
    """Load every point's config before any run starts, so that a mistyped key or a bad value
    is one error now rather than a failed run per point.

    Raises:
        ConfigError: the base YAML or a point's overrides do not make a valid config.
    """
    for name, point in plan:
        try:
            load_config(Path(args.config), overrides_for(args, point, name))
        except ConfigError as exc:
            raise ConfigError(f"sweep point {name} {point}: {exc}") from None


def command_for(args, point: dict, name: str) -> list[str]:
    cmd = [sys.executable, "-m", "da_pose", "--threads", str(args.threads), *args.command.split(), args.config,
           "--resume", "auto", "--tracking-uri", args.tracking_uri]
    for item in overrides_for(args, point, name):
        cmd += ["--set", item]
    return cmd


def run_point(name: str, point: dict, cmd: list[str], logs: Path | None) -> bool:
    """Run one grid point; with ``logs`` (parallel points) its output goes to ``<logs>/<name>.log``."""
    # one write per line: points run side by side print from several threads
    print(f"running {name}: {point}" + (f" (log: {logs / (name + '.log')})" if logs else "") + "\n", end="",
          flush=True)
    if logs is None:
        ok = subprocess.run(cmd).returncode == 0
    else:
        with open(logs / f"{name}.log", "w") as log:
            ok = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode == 0
    print(f"{name} {'finished' if ok else 'failed; the sweep continues without it'}\n", end="", flush=True,
          file=sys.stdout if ok else sys.stderr)
    return ok


def chosen_yaml(base: Path, point: dict, selection: str, header: str, name: str | None = None) -> str:
    """The base YAML with the chosen values set and ``settings: target_val``; ``name`` (the
    written file's stem) replaces the base's run name, so the file does not run under another's."""
    tree = yaml.safe_load(base.read_text()) or {}
    if name:
        tree["name"] = name
    for key, value in {**point, "train.selection": selection}.items():
        node = tree
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    tree["settings"] = "target_val"
    return header + yaml.safe_dump(tree, sort_keys=False)


def table(rows: list[tuple[str, dict, float | None]], best: str | None) -> str:
    keys = list(rows[0][1]) if rows else []
    lines = ["| run | " + " | ".join(keys) + f" | {SCORE} |", "|" + "---|" * (len(keys) + 2)]
    for name, point, score in rows:
        mark = " (chosen)" if name == best else ""
        value = "-" if score is None else f"{score:.1f}"
        lines.append(f"| {name}{mark} | " + " | ".join(str(point[k]) for k in keys) + f" | {value} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", help="the base YAML")
    ap.add_argument("--command", required=True, help='the da-pose command: "pretrain", "finetune", "adapt ccssl", ...')
    ap.add_argument("--grid", action="append", default=[],
                    help="KEY=V1,V2,... (repeatable; separate list values with ';': KEY=[1,2];[3,4])")
    ap.add_argument("--set", action="append", default=[], help="KEY=VALUE for every point (repeatable)")
    ap.add_argument("--experiment", required=True)
    ap.add_argument("--name", default=None, help="run-name prefix (default: the experiment)")
    ap.add_argument("--tracking-uri", default="sqlite:///mlruns.db")
    ap.add_argument("--selection", default="last", choices=["last", "target_val"],
                    help="the checkpoint each point reports (target_val: its best epoch on target val)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads of each point")
    ap.add_argument("--jobs", type=int, default=1,
                    help="points run at once (each with --threads; on 2 cores, --jobs 2 --threads 1 is faster)")
    ap.add_argument("--out", default=None, help="folder for sweep.md / sweep.json (default runs/<experiment>/sweep)")
    ap.add_argument("--write", default=None, help="write the chosen point as this YAML")
    ap.add_argument("--dry-run", action="store_true", help="print the commands only")
    args = ap.parse_args(argv)
    grid = parse_grid(args.grid)
    if not grid:
        raise ConfigError("no --grid given: nothing to sweep")
    prefix = args.name or args.experiment
    plan = [(f"{prefix}_p{i}", p) for i, p in enumerate(points(grid))]
    check_points(args, plan)
    done = {} if args.dry_run else finished_runs(args.tracking_uri, args.experiment)
    out = Path(args.out or Path("runs") / args.experiment / "sweep")
    todo = []
    for name, point in plan:
        cmd = command_for(args, point, name)
        if args.dry_run or name in done:
            print(("finished: " if name in done else "") + " ".join(cmd))
        else:
            todo.append((name, point, cmd))
    if args.dry_run:
        return 0
    if todo:
        out.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max(args.jobs, 1)) as pool:
        for _ in pool.map(lambda item: run_point(*item, out if args.jobs > 1 else None), todo):
            pass
    done = finished_runs(args.tracking_uri, args.experiment)
    rows = [(name, point, score_of(done[name]) if name in done else None) for name, point in plan]
    scored = [r for r in rows if r[2] is not None]
    if not scored:
        print(f"no point logged {SCORE}: does the target have a val split?", file=sys.stderr)
        return 1
    best_name, best_point, best_score = max(scored, key=lambda r: r[2])
    text = table(rows, best_name)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.md").write_text(text)
    (out / "sweep.json").write_text(json.dumps({"score": SCORE, "chosen": best_name, "points": [
        {"name": n, "settings": p, "score": s} for n, p, s in rows]}, indent=1))
    print(text)
    if args.write:
        header = (f"# Chosen by scripts/sweep.py on {SCORE} (target val, never test): run {best_name}, "
                  f"{best_score:.1f}\n# grid: {' '.join(args.grid)}\n# experiment: {args.experiment}\n"
                  + (f"# every point: {' '.join(args.set)}\n" if args.set else ""))
        Path(args.write).parent.mkdir(parents=True, exist_ok=True)
        Path(args.write).write_text(chosen_yaml(Path(args.config), best_point, args.selection, header,
                                                Path(args.write).stem))
        print(f"wrote {args.write}")
    return 0


if __name__ == "__main__":
    sys.exit(run_script(main))
