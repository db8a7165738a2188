"""Per-epoch histories of logged metrics for named runs, from MLflow: the diagnostics behind a reading.

    python scripts/bench/run_history.py --experiment toy-demo-methods --tracking-uri sqlite:///methods.db \
        --runs 'uniframe_hg_pose_s[0-2]' plain_pl_hg_pose_s0 --metrics epoch/pseudo/acc_kept ccssl/acc_kept

``--runs`` are regular expressions matched against the whole run name; ``--metrics`` are metric keys
as logged (``@`` may be written for MLflow's ``_at_``). Each FINISHED run that matches prints one
line per metric it logged: the values in step order, rounded to ``--digits``. A metric a run did
not log is left out; nothing matching is a one-line error.
"""

from __future__ import annotations

import argparse
import re
import sys


def histories(experiment: str, tracking_uri: str, runs: list[str], metrics: list[str]) -> dict[str, dict[str, list]]:
    """Run name -> metric key -> values in step order, for the FINISHED runs whose name matches."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise SystemExit(f"no experiment '{experiment}' at {tracking_uri}")
    patterns = [re.compile(p) for p in runs]
    out: dict[str, dict[str, list]] = {}
    for run in client.search_runs([exp.experiment_id], "attributes.status = 'FINISHED'", max_results=10000):
        name = run.info.run_name or ""
        if not any(p.fullmatch(name) for p in patterns):
            continue
        found = {}
        for key in metrics:
            logged = key.replace("@", "_at_")
            if logged in run.data.metrics:
                points = sorted(client.get_metric_history(run.info.run_id, logged), key=lambda m: (m.step, m.timestamp))
                found[key] = [m.value for m in points]
        out[name] = found
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiment", required=True)
    ap.add_argument("--tracking-uri", default="sqlite:///mlruns.db")
    ap.add_argument("--runs", nargs="+", required=True, help="regular expressions for whole run names")
    ap.add_argument("--metrics", nargs="+", required=True, help="metric keys as logged")
    ap.add_argument("--digits", type=int, default=1)
    args = ap.parse_args(argv)
    found = histories(args.experiment, args.tracking_uri, args.runs, args.metrics)
    if not any(found.values()):
        raise SystemExit("no finished run matches with any of those metrics")
    for name in sorted(found):
        for key, values in found[name].items():
            print(f"{name}  {key}  " + " ".join(f"{v:.{args.digits}f}" for v in values))
    return 0


if __name__ == "__main__":
    sys.exit(main())
