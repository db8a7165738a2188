"""Comparing methods from MLflow: collect an experiment's runs, summarise them over seeds per
(method, backbone), and write the tables, the bar chart and a summary run (``da-pose compare``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from da_pose.data.skeleton import GROUPS, JOINTS
from da_pose.errors import DaPoseError
from da_pose.eval import criteria, report, stats
from da_pose.eval.target import read_per_image
from da_pose.tracking import MlflowTracker, check_reachable, metric_name, mlflow_key


def selection_label(tags: dict) -> str:
    """The checkpoint a run reports: ``last`` or ``target_val`` (its selection), plus the network
    when it is not the student (``last, teacher``: a mean-teacher run reporting its EMA teacher).
    Runs logged before the ``reported_network`` tag existed reported their student."""
    selection = tags.get("selection", "last")
    network = tags.get("reported_network", "student")
    return selection if network == "student" else f"{selection}, {network}"


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
    check_reachable(tracking_uri, must_exist=True)
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
        # an evaluation of a trained model on a shifted target (the benchmark's source_only row of
        # every shift but the one it was trained on) stands for its method; other evaluations do not
        shifted_eval = tags.get("command") == "evaluate" and "shift" in tags and "method" in tags
        if tags.get("command") in ("compare", "evaluate") and not shifted_eval:
            continue
        pre = "eval/" if shifted_eval else prefix
        metrics = {metric_name(k)[len(pre):]: v for k, v in run.data.metrics.items() if metric_name(k).startswith(pre)}
        item = {"run_id": run.info.run_id, "name": tags.get("mlflow.runName", run.info.run_name),
                # a diagnostic run (it read target labels a method never reads) is a row of its own
                "method": tags.get("method", "?") + (f" [{tags['diagnostic']}]" if tags.get("diagnostic") else ""),
                "backbone": tags.get("backbone", "?"),
                "seed": tags.get("seed", "?"), "shift": tags.get("shift", ""),
                # semi-supervised runs (data.target_labels): their labelled subset, a row of its own
                "labels": tags.get("target_labels", ""), "labels_fraction": tags.get("target_labels_fraction", ""),
                "selection": selection_label(tags), "settings": tags.get("settings", "defaults"),
                "status": run.info.status, "metrics": metrics, "all_metrics": sorted(map(metric_name, run.data.metrics))}
        if run.info.status == "FINISHED" and "pck@0.05_crop/mean" in metrics:
            done.append(item)
        else:
            other.append(item)
    return done, other


def summarize_runs(runs: list[dict]) -> list[dict]:
    """Group runs by (method, backbone, shift, labelled subset): per metric mean, std (over seeds,
    ddof=1), count.

    Adds ``gap_recovered`` = (method - source_only) / (oracle - source_only) on the mean PCK where
    both references exist for the backbone and shift. Each row keeps its ``runs``.
    """
    groups: dict[tuple[str, str, str, str], list[dict]] = {}
    for r in runs:
        groups.setdefault((r["method"], r["backbone"], r.get("shift", ""), r.get("labels", "")), []).append(r)
    order = {m: i for i, m in enumerate(method_order())}
    rows = []
    for (method, backbone, shift, labels), items in sorted(
            groups.items(), key=lambda kv: (kv[0][2], kv[0][1], order.get(kv[0][0], 50), kv[0][0],
                                            _fraction(kv[1][0]))):
        keys = sorted({k for r in items for k in r["metrics"]})
        mean, std = {}, {}
        for k in keys:
            vals = np.array([r["metrics"][k] for r in items if k in r["metrics"]], dtype=np.float64)
            mean[k] = float(vals.mean())
            std[k] = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
        rows.append({"method": method, "backbone": backbone, "shift": shift, "labels": labels,
                     "labels_fraction": _fraction(items[0]), "n": len(items), "mean": mean,
                     "std": std, "seeds": sorted(r["seed"] for r in items), "runs": items,
                     "selection": "/".join(sorted({r.get("selection", "last") for r in items}))})
    key = "pck@0.05_crop/mean"
    for row in rows:
        ref = {r["method"]: r["mean"].get(key) for r in rows
               if r["backbone"] == row["backbone"] and r["shift"] == row["shift"] and not r["labels"]}
        src, orc = ref.get("source_only"), ref.get("oracle")
        row["gap_recovered"] = (float((row["mean"][key] - src) / (orc - src))
                                if src is not None and orc is not None and orc != src else float("nan"))
    return rows


def _fraction(run: dict) -> float:
    """The labelled share of the target train split a run used: its tag; else all for the runs
    trained on every target label (oracle, CC-SSL-R), none for the others."""
    if run.get("labels_fraction", "") not in ("", None):
        return float(run["labels_fraction"])
    return 1.0 if run.get("method") in ("oracle", "ccssl_r") else 0.0


def row_name(row: dict) -> str:
    """A row's method, with its labelled subset when it has one (``ccssl @ 0.05 labels``)."""
    return f"{row['method']} @ {row['labels']} labels" if row.get("labels") else row["method"]


# ------------------------------------------------------------------------------ paired intervals


def fetch_per_image(run: dict, tracking_uri: str, cache: Path) -> dict | None:
    """A run's ``eval/per_image.npz`` (downloaded once into ``cache/<run_id>/``), or None for a
    run logged before per-image results existed."""
    path = cache / run["run_id"] / "per_image.npz"
    if not path.is_file():
        import mlflow.artifacts

        try:
            got = mlflow.artifacts.download_artifacts(run_id=run["run_id"], artifact_path="eval/per_image.npz",
                                                      dst_path=str(cache / run["run_id"]), tracking_uri=tracking_uri)
        except Exception:  # noqa: BLE001  (no such artifact: an older run)
            return None
        path = Path(got)
    return read_per_image(path)


def aligned_groups(rows: list[dict], fetch) -> tuple[dict[str, list], np.ndarray] | None:
    """Per row (keyed by method), one ``(hits, counted)`` per seed that every row has, over the
    test images that every run has, in one order (sorted ids, returned too); None when a run
    lacks per-image results or the rows share no seed."""
    seeds = sorted(set.intersection(*[{r["seed"] for r in row["runs"]} for row in rows]))
    if not seeds:
        return None
    results = {}
    for row in rows:
        by_seed = {r["seed"]: r for r in row["runs"]}
        for seed in seeds:
            res = fetch(by_seed[seed])
            if res is None:
                return None
            results[row["method"], seed] = res
    common = set.intersection(*[set(res["ids"].tolist()) for res in results.values()])
    if not common:
        return None
    order = sorted(common)
    groups: dict[str, list] = {}
    for (method, _), res in results.items():
        index = {name: i for i, name in enumerate(res["ids"].tolist())}
        rows_ = np.array([index[name] for name in order])
        groups.setdefault(method, []).append((res["hits"][rows_], res["counted"][rows_]))
    return groups, np.array(order)


def clusters_of(ids: np.ndarray, unit: str) -> np.ndarray | None:
    """The resampling unit of each test image: its video (``video:frame`` ids) or itself."""
    if unit == "image":
        return None
    return np.array([i.split(":", 1)[0] if ":" in i else i for i in ids.tolist()])


def _point(groups, name) -> float:
    return float(np.mean([stats.mean_pck(h, c) for h, c in groups[name]]))


def paired_interval(row: dict, ref: dict, fetch, draws: int = stats.DRAWS, seed: int = 0,
                    unit: str = "video") -> dict | None:
    """``row - ref`` in mean PCK points, paired by seed and image, with its bootstrap interval
    (test images resampled by ``unit``: whole videos, or single images)."""
    aligned = aligned_groups([row, ref], fetch)
    if aligned is None:
        return None
    groups, ids = aligned
    samples = stats.seed_image_bootstrap(groups, draws, seed, clusters_of(ids, unit))
    m, r = row["method"], ref["method"]
    return stats.interval(_point(groups, m) - _point(groups, r), samples[m] - samples[r]) | {"seeds": len(groups[m])}


def gap_interval(row: dict, src: dict, orc: dict, fetch, draws: int = stats.DRAWS, seed: int = 0,
                 unit: str = "video") -> dict | None:
    """Gap recovered ``(row - source_only) / (oracle - source_only)`` with its paired interval."""
    aligned = aligned_groups([row, src, orc], fetch)
    if aligned is None:
        return None
    groups, ids = aligned
    samples = stats.seed_image_bootstrap(groups, draws, seed, clusters_of(ids, unit))
    m, s, o = row["method"], src["method"], orc["method"]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = (samples[m] - samples[s]) / (samples[o] - samples[s])
    est = (_point(groups, m) - _point(groups, s)) / (_point(groups, o) - _point(groups, s))
    return stats.interval(est, ratio)


CONTROL = "source_only_ext"  # source-only trained for as many more steps as adaptation adds


def add_paired(rows: list[dict], fetch, reference: str = "plain_pl", draws: int = stats.DRAWS,
               unit: str = "video") -> None:
    """``row["paired"]``: vs source_only, vs ``reference`` and gap recovered, each an interval
    dict or None (no reference row, no common seed, or no per-image results)."""
    by_key = {(r["method"], r["backbone"], r["shift"], r.get("labels", "")): r for r in rows}
    for row in rows:
        key = lambda m, labels="": by_key.get((m, row["backbone"], row["shift"], labels))  # noqa: E731
        # the references without labels; the reference method on the row's own labelled subset
        src, ref, orc = key("source_only"), key(reference, row.get("labels", "")), key("oracle")
        ctl = key(CONTROL)
        same = lambda other: other is not None and other is not row and other["method"] == row["method"]  # noqa: E731
        row["paired"] = {
            "vs_source": paired_interval(row, src, fetch, draws, unit=unit) if src and src is not row
            and not same(src) else None,
            "vs_reference": paired_interval(row, ref, fetch, draws, unit=unit) if ref and ref is not row else None,
            "vs_control": paired_interval(row, ctl, fetch, draws, unit=unit) if ctl and ctl is not row
            and not same(ctl) and row["method"] not in ("source_only", "oracle", "ccssl_r") else None,
            "gap": gap_interval(row, src, orc, fetch, draws, unit=unit) if src and orc and row is not src
            and not same(orc) and not same(src) else None,
        }


def add_criteria(rows: list[dict], tracking_uri: str) -> None:
    """``row["criteria"]``: per label-free criterion, the mean over the row's runs of Spearman's
    correlation between the criterion and the target val PCK across each run's checkpoints
    (:func:`da_pose.eval.criteria.rank_agreement`); absent for rows whose runs logged none."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    names = (criteria.REFERENCE, *criteria.CRITERIA)
    for row in rows:
        per_run = []
        for run in row["runs"]:
            if not any(k.startswith("criteria/") for k in run.get("all_metrics", ())):
                continue
            hist = {n: {m.step: m.value for m in client.get_metric_history(run["run_id"], mlflow_key(n))} for n in names}
            per_run.append(criteria.rank_agreement(hist))
        if per_run:
            with np.errstate(all="ignore"):
                row["criteria"] = {n: float(np.nanmean([r[n] for r in per_run])) if any(
                    r[n] == r[n] for r in per_run) else float("nan") for n in criteria.CRITERIA}


def criteria_table(rows: list[dict]) -> tuple[list[str], list[list]]:
    """Method rows, one column per criterion: mean Spearman correlation with target val PCK."""
    names = list(criteria.CRITERIA)
    return (["method", "backbone", "shift", "runs", *names],
            [[row_name(r), r["backbone"], r["shift"] or "-", r["n"], *(r["criteria"][n] for n in names)]
             for r in rows if "criteria" in r])


def _cell(iv: dict | None, percent: bool = False) -> str:
    if iv is None:
        return "-"
    f = (lambda v: f"{100 * v:+.0f} %") if percent else (lambda v: f"{v:+.1f}")
    return f"{f(iv['est'])} [{f(iv['lo'])}, {f(iv['hi'])}]"


def _separates(iv: dict | None) -> str:
    return "-" if iv is None else ("yes" if iv["excludes_zero"] else "no")


def paired_table(rows: list[dict], reference: str) -> tuple[list[str], list[list]]:
    """Columns: method, backbone, runs, selection, mean ± std, the paired differences with their
    95 % intervals and whether each excludes zero, gap recovered with its interval."""
    headers = ["method", "backbone", "runs", "selection", "mean", "Δ source_only [95 % CI]", "≠ 0",
               f"Δ {reference} [95 % CI]", "≠ 0", "gap recovered [95 % CI]"]
    table = []
    for row in rows:
        k = "pck@0.05_crop/mean"
        mean = f"{row['mean'][k]:.1f} ± {row['std'][k]:.1f}" if row["n"] > 1 else f"{row['mean'][k]:.1f}"
        p = row.get("paired", {})
        table.append([row_name(row), row["backbone"], row["n"], row["selection"], mean,
                      _cell(p.get("vs_source")), _separates(p.get("vs_source")),
                      _cell(p.get("vs_reference")), _separates(p.get("vs_reference")),
                      _cell(p.get("gap"), percent=True)])
    return headers, table


def compare_tables(rows: list[dict], kind: str = "group") -> tuple[list[str], list[list]]:
    """Columns: method, backbone, runs, one per group (or joint), mean, gap recovered."""
    names = list(GROUPS) if kind == "group" else list(JOINTS)
    headers = ["method", "backbone", "runs"] + names + ["mean", "gap recovered"]
    table = []
    for row in rows:
        cells = [row_name(row), row["backbone"], row["n"]]
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


def shift_summary(rows: list[dict]) -> tuple[list[str], list[list]]:
    """Gap recovered (with its interval) per method and backbone (rows) and shift (columns)."""
    shifts = sorted({r["shift"] for r in rows})
    cells: dict[tuple[str, str], dict] = {}
    for r in rows:
        p = r.get("paired", {}).get("gap")
        cells.setdefault((row_name(r), r["backbone"]), {})[r["shift"]] = (
            _cell(p, percent=True) if p else "-" if r["gap_recovered"] != r["gap_recovered"]
            else f"{100 * r['gap_recovered'] + 0.0:.0f} %")  # + 0.0: no "-0 %"
    return ["method", "backbone", *(s or "-" for s in shifts)], [
        [m, b, *(v.get(s, "") for s in shifts)] for (m, b), v in cells.items()]


def control_summary(rows: list[dict]) -> tuple[list[str], list[list]]:
    """The paired difference against the control (``source_only_ext``: source-only trained for as
    many more steps) per method and backbone (rows) and shift (columns), ``yes`` marking an
    interval above zero; only the rows that have one (the adaptation methods)."""
    shifts = sorted({r["shift"] for r in rows})
    cells: dict[tuple[str, str], dict] = {}
    for r in rows:
        p = r.get("paired", {}).get("vs_control")
        if p is not None:
            mark = " (above)" if p["lo"] > 0 else " (below)" if p["hi"] < 0 else ""
            cells.setdefault((row_name(r), r["backbone"]), {})[r["shift"]] = _cell(p) + mark
    return ["method", "backbone", *(s or "-" for s in shifts)], [
        [m, b, *(v.get(s, "") for s in shifts)] for (m, b), v in cells.items()]


CAPTION = ("Target test PCK@0.05 (crop normaliser, %), mean ± std over seeds; MLflow experiment `{experiment}`. "
           "Δ: paired difference in points (same seed's source model, same test images) with a 95 % bootstrap "
           "interval over test {unit}s and seeds; ≠ 0: the interval excludes zero. Gap recovered = (method - "
           "source_only) / (oracle - source_only). Selection: the checkpoint reported (last, or the best epoch on "
           "target_val); never the target test split.")


def compare_markdown(experiment: str, rows: list[dict], other: list[dict], reference: str = "plain_pl",
                     by: str | None = None, unit: str = "video") -> str:
    """The paired table (per shift with ``by="shift"``, plus the gap summary), the per-group
    table and the unfinished runs."""
    parts = [CAPTION.format(experiment=experiment, unit=unit), ""]
    shifts = sorted({r["shift"] for r in rows}) if by == "shift" else [None]
    for shift in shifts:
        part = [r for r in rows if shift is None or r["shift"] == shift]
        if shift is not None:
            parts += [f"**Shift `{shift or '-'}`**", ""]
        parts += [report.markdown_table(*paired_table(part, reference)).rstrip(), ""]
    if by == "shift":
        parts += ["**Gap recovered per shift** [95 % CI]", "", report.markdown_table(*shift_summary(rows)).rstrip(), ""]
        headers, table = control_summary(rows)
        if table:
            parts += [f"**Δ {CONTROL} per shift** [95 % CI], points: each method against the control trained "
                      "for as many more steps on the source alone (above / below: the interval excludes zero)", "",
                      report.markdown_table(headers, table).rstrip(), ""]
    else:
        headers, table = compare_tables(rows, "group")
        parts += ["Per joint group (mean ± std over seeds):", "", report.markdown_table(headers, table).rstrip()]
    headers, table = criteria_table(rows)
    if table:
        parts += ["", "Label-free checkpoint criteria: Spearman correlation with the target val PCK over each run's "
                  "evaluated checkpoints, mean over seeds (1 = ranks checkpoints as target val does):", "",
                  report.markdown_table(headers, table).rstrip()]
    if other:
        parts += ["", "Not averaged (unfinished, failed or without target metrics):", ""]
        parts += [f"- {r['name']} ({r['method']}, {r['backbone']}, seed {r['seed']}): {r['status']}" for r in other]
    return "\n".join(parts).rstrip() + "\n"


def summarize_experiment(experiment: str, tracking_uri: str, cache: Path, prefix: str = "target_test/",
                         reference: str = "plain_pl", draws: int = stats.DRAWS,
                         unit: str = "video") -> tuple[list[dict], list[dict]]:
    """Collected, summarised and paired rows of one experiment, and its unfinished runs."""
    done, other = collect_runs(experiment, tracking_uri, prefix)
    if not done:
        raise DaPoseError(f"experiment '{experiment}' has no finished run with {prefix}pck@0.05_crop/mean yet")
    rows = summarize_runs(done)
    add_paired(rows, lambda run: fetch_per_image(run, tracking_uri, cache), reference, draws, unit)
    add_criteria(rows, tracking_uri)
    return rows, other


def _json_rows(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "runs"} | {"run_ids": [x["run_id"] for x in r["runs"]]} for r in rows]


def run_compare(experiment: str, tracking_uri: str, out: Path, prefix: str = "target_test/",
                log: bool = True, reference: str = "plain_pl", by: str | None = None,
                draws: int = stats.DRAWS, unit: str = "video") -> str:
    """Tables (markdown, CSV), a grouped bar chart and a summary MLflow run for one experiment;
    with ``by="labels"`` also the labels-vs-PCK table and plot (:mod:`da_pose.eval.labels_curve`)."""
    out.mkdir(parents=True, exist_ok=True)
    rows, other = summarize_experiment(experiment, tracking_uri, out / "per_image", prefix, reference, draws, unit)
    for kind in ("group", "joint"):
        headers, table = compare_tables(rows, kind)
        (out / f"compare_{kind}.md").write_text(report.markdown_table(headers, table))
        report.write_csv(out / f"compare_{kind}.csv", headers, table)
    report.write_csv(out / "compare_paired.csv", *paired_table(rows, reference))
    text = compare_markdown(experiment, rows, other, reference, by, unit)
    extra: list[str] = []
    if by == "labels":  # PCK against the labelled target fraction: its table, paired to the floor, and plot
        from da_pose.eval.labels_curve import write_labels

        fetch = lambda run: fetch_per_image(run, tracking_uri, out / "per_image")  # noqa: E731  (cached)
        pair = lambda row, ref: paired_interval(row, ref, fetch, draws, unit=unit)  # noqa: E731
        labels_text, extra = write_labels(rows, out, pair, unit, experiment)
        text += "\n" + labels_text
    (out / "compare.md").write_text(text)
    label = lambda r: f"{row_name(r)} ({r['backbone']}{', ' + r['shift'] if r['shift'] else ''})"  # noqa: E731
    report.bar_chart({label(r): r["mean"] for r in rows}, "pck@0.05_crop", out / "compare.png", kind="group",
                     title=experiment, errors={label(r): r["std"] for r in rows})
    report.write_json(out / "compare.json", _json_rows(rows))
    if log:
        tracker = MlflowTracker(tracking_uri, experiment, "compare", tags={"command": "compare"})
        try:
            for name in ("compare.md", "compare_paired.csv", "compare_group.csv", "compare_joint.csv", "compare.png",
                         "compare.json", *extra):
                tracker.log_artifact(out / name, "compare")
        finally:
            tracker.end("FINISHED")
    print(text)
    return text
