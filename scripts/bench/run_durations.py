"""Per-config run durations of a benchmark experiment, from MLflow, and the wall time they imply.

    python scripts/bench/run_durations.py --experiment toy-demo-shifts --tracking-uri sqlite:///bench.db

A run's config is its name without the seed and shift parts (``ccssl_hg_pose_s1`` -> ``ccssl_hg``).
For each config it prints how many finished runs there are and the shortest, median and longest
duration (end - start of the MLflow run). Runs made on a busy machine are slower, so the shortest
duration is the nearest to an idle machine's. The implied wall time spreads every run's duration
(at the shortest, and at the median, of its config) over ``--jobs`` slots: a lower bound that
ignores the waits of the dependency graph and the data generation.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
from collections import defaultdict

SEED_AND_SHIFT = re.compile(r"(_(appearance|context|pose|shape|occlusion|video|all)([+][a-z]+)*)?_s\d+$")


def config_of(run_name: str) -> str:
    """``ccssl_hg_pose_s1`` -> ``ccssl_hg``; ``pretrain_r18_s0`` -> ``pretrain_r18``."""
    return SEED_AND_SHIFT.sub("", run_name)


def durations(experiment: str, tracking_uri: str) -> dict[str, list[float]]:
    """Config -> durations in seconds of the experiment's FINISHED runs (``compare`` runs left out)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise SystemExit(f"no experiment '{experiment}' at {tracking_uri}")
    out: dict[str, list[float]] = defaultdict(list)
    for run in client.search_runs([exp.experiment_id], "attributes.status = 'FINISHED'", max_results=10000):
        if run.data.tags.get("command") == "compare" or not run.info.end_time:
            continue
        out[config_of(run.info.run_name)].append((run.info.end_time - run.info.start_time) / 1000.0)
    return dict(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiment", required=True)
    ap.add_argument("--tracking-uri", default="sqlite:///mlruns.db")
    ap.add_argument("--jobs", type=int, default=2, help="runs at a time (the benchmark's --jobs)")
    ap.add_argument("--only", default="", help="a regular expression the configs must match (e.g. '_hg$')")
    args = ap.parse_args(argv)
    found = {k: v for k, v in durations(args.experiment, args.tracking_uri).items() if re.search(args.only, k)}
    if not found:
        raise SystemExit("no finished run matches")
    print("| config | runs | shortest s | median s | longest s |\n|---|---|---|---|---|")
    for config, d in sorted(found.items()):
        print(f"| {config} | {len(d)} | {min(d):.0f} | {statistics.median(d):.0f} | {max(d):.0f} |")
    runs = sum(len(d) for d in found.values())
    fast = sum(min(d) * len(d) for d in found.values()) / args.jobs / 60
    mid = sum(statistics.median(d) * len(d) for d in found.values()) / args.jobs / 60
    print(f"\n{runs} runs on {args.jobs} slots: {fast:.0f} min at each config's shortest duration, "
          f"{mid:.0f} min at its median (runs only: no data generation, no dependency waits)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
