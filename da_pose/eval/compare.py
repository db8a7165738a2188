"""Comparing methods from MLflow: collect an experiment's runs, summarise them over seeds per
(method, backbone), and write the tables, the bar chart and a summary run (``da-pose compare``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from da_pose.data.skeleton import GROUPS, JOINTS
from da_pose.errors import DaPoseError
from da_pose.eval import report
from da_pose.tracking import MlflowTracker, check_reachable, metric_name


def method_order() -> list[str]:
    """Rows in this order: the source-only baselines, every registered method, then the methods
    that use target labels."""
    from da_pose.adapt import METHODS

    return ["source_only", "source_only_ext", *METHODS, "ccssl_r", "oracle"]


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
    order = {m: i for i, m in enumerate(method_order())}
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
