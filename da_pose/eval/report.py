"""Tables (markdown, CSV, JSON) and plots (PNG) of PCK metrics, for ``evaluate`` and ``compare``.

Inputs are the flat metric dicts of ``da_pose.eval.pck`` (``{"pck@0.05_crop/left_eye": 87.5,
...}``, values in percent) keyed by a method or run name. Results tables are produced here,
never typed by hand. Plots use matplotlib's Agg canvas directly (no pyplot global state), so
they work on headless machines and in threads.
"""

from __future__ import annotations

import csv
import io
import json
import math
import numbers
import os
from typing import Mapping, Sequence

import numpy as np

from da_pose.fileio import write_bytes_atomic
from da_pose.data import skeleton
from da_pose.errors import ConfigError

KINDS = ("joint", "group")


# ----------------------------------------------------------------------------------------------
# Rows
# ----------------------------------------------------------------------------------------------


def _value(metrics: Mapping[str, float], key: str) -> float:
    """A metric as a float; NaN where absent (a run that did not log that joint)."""
    value = metrics.get(key)
    return math.nan if value is None else float(value)


def per_joint_rows(
    metrics: Mapping[str, float],
    prefix: str = "pck@0.05_crop",
    joints: Sequence[str] = skeleton.JOINTS,
    groups: Mapping[str, Sequence[int]] = skeleton.GROUPS,
) -> list[dict]:
    """One row per joint: ``{"joint": name, "group": group name, "value": percent or NaN}``."""
    group_of = {j: g for g, members in groups.items() for j in members}
    return [
        {"joint": name, "group": group_of.get(i, ""), "value": _value(metrics, f"{prefix}/{name}")}
        for i, name in enumerate(joints)
    ]


def per_group_rows(
    metrics: Mapping[str, float],
    prefix: str = "pck@0.05_crop",
    groups: Mapping[str, Sequence[int]] = skeleton.GROUPS,
) -> list[dict]:
    """One row per group: ``{"group": name, "value": percent or NaN}``."""
    return [{"group": name, "value": _value(metrics, f"{prefix}/{name}")} for name in groups]


def _row_names(kind: str, joints: Sequence[str], groups: Mapping[str, Sequence[int]]):
    if kind not in KINDS:
        raise ConfigError(f"unknown table kind {kind!r}; expected one of {list(KINDS)}")
    return list(joints) if kind == "joint" else list(groups)


def metrics_table(
    metrics_by_name: Mapping[str, Mapping[str, float]],
    prefix: str = "pck@0.05_crop",
    kind: str = "joint",
    joints: Sequence[str] = skeleton.JOINTS,
    groups: Mapping[str, Sequence[int]] = skeleton.GROUPS,
) -> tuple[list[str], list[list]]:
    """A comparison table: one column per name (method or run), one row per joint or group.

    The last row is ``mean`` (``<prefix>/mean``, the mean over joints) for both kinds.

    Returns:
        headers: ``[kind, *names]``; rows: ``[[row name, value per name...], ...]``, NaN where a
        name lacks a metric.
    """
    names = list(metrics_by_name)
    rows = [
        [row] + [_value(metrics_by_name[n], f"{prefix}/{row}") for n in names]
        for row in _row_names(kind, joints, groups) + ["mean"]
    ]
    return [kind] + names, rows


def pck_table(metrics: Mapping[str, float], prefix: str, kind: str = "group") -> tuple[list[str], list[list]]:
    """One run's table: rows of (joint or group, PCK@0.05 crop, PCK@0.05 bbox) from the metrics
    ``{prefix}pck@0.05_<norm>/<name>``; the group table ends with ``mean``."""
    names = _row_names(kind, skeleton.JOINTS, skeleton.GROUPS) + (["mean"] if kind == "group" else [])
    norms = ["crop", "bbox"] + (["legacy"] if any(k.startswith(f"{prefix}pck@0.05_legacy/") for k in metrics) else [])
    headers = [kind] + [f"PCK@0.05 {norm}" for norm in norms]
    rows = [[n] + [_value(metrics, f"{prefix}pck@0.05_{norm}/{n}") for norm in norms] for n in names]
    if "legacy" in norms and kind == "group":  # the published headline: the mean over batches
        rows.append(["batch mean (published)", math.nan, math.nan, _value(metrics, f"{prefix}pck@0.05_legacy/batch_mean")])
    return headers, rows


def oks_table(metrics: Mapping[str, float], prefix: str) -> tuple[list[str], list[list]]:
    """COCO keypoint AP/AR rows (``{prefix}oks/<stat>``, 0-1 scale); empty without OKS metrics."""
    stats = [(k[len(prefix) + 4:], v) for k, v in metrics.items() if k.startswith(f"{prefix}oks/")]
    return ["OKS", "value"], [[name, float(v)] for name, v in stats]


def write_pck_tables(metrics: Mapping[str, float], out, prefix: str, title: str) -> str:
    """``per_joint`` and ``per_group`` tables (markdown and CSV) and the per-joint bar chart of
    one run in folder ``out``; returns the group table (markdown)."""
    os.makedirs(out, exist_ok=True)
    shown = ""
    for kind in KINDS:
        headers, rows = pck_table(metrics, prefix, kind)
        shown = markdown_table(headers, rows)
        _atomic_write(os.path.join(out, f"per_{kind}.md"), (shown + "\n").encode())
        write_csv(os.path.join(out, f"per_{kind}.csv"), headers, rows)
    headers, rows = oks_table(metrics, prefix)
    if rows:
        shown += "\n\n" + markdown_table(headers, rows)
        _atomic_write(os.path.join(out, "oks.md"), (markdown_table(headers, rows) + "\n").encode())
        write_csv(os.path.join(out, "oks.csv"), headers, rows)
    named = {title: {k[len(prefix):]: v for k, v in metrics.items() if k.startswith(prefix)}}
    bar_chart(named, "pck@0.05_crop", os.path.join(out, "per_joint.png"), kind="joint", title=title)
    return shown


def print_pck_table(metrics: Mapping[str, float], prefix: str, title: str) -> None:
    headers, rows = pck_table(metrics, prefix, "group")
    print(f"\n{title} (PCK@0.05 in %)\n")
    print(markdown_table(headers, rows))


# ----------------------------------------------------------------------------------------------
# Text formats
# ----------------------------------------------------------------------------------------------


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _cell(value) -> str:
    """Markdown cell: floats with one decimal, NaN as "-", integers as they are."""
    if _is_real(value) and not isinstance(value, numbers.Integral):
        return "-" if math.isnan(value) else f"{float(value):.1f}"
    return str(value).replace("|", "\\|")


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence]) -> str:
    """A GitHub markdown table; the first column left-aligned, the others right-aligned.

    Floats are written with one decimal, NaN as ``-``, integers and strings as they are (``|``
    escaped). The string ends with a newline.
    """
    for row in rows:
        if len(row) != len(headers):
            raise ValueError(f"markdown_table: row {list(row)!r} has not {len(headers)} cells")
    lines = [
        "| " + " | ".join(_cell(h) for h in headers) + " |",
        "|" + "|".join([":---"] + ["---:"] * (len(headers) - 1)) + "|",
    ]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"



def _atomic_write(path, data: bytes) -> str:
    return os.fspath(write_bytes_atomic(path, data))


def _csv_cell(value):
    # Full precision (repr of the float), "nan" for NaN, so the file reads back exactly.
    if _is_real(value) and not isinstance(value, numbers.Integral):
        return repr(float(value))
    return value


def write_csv(path, headers: Sequence[str], rows: Sequence[Sequence]) -> str:
    """Write a table as CSV (atomic); floats at full precision, NaN as ``nan``. Returns the path."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(list(headers))
    writer.writerows([[_csv_cell(v) for v in row] for row in rows])
    return _atomic_write(path, buf.getvalue().encode("utf-8"))


def _jsonable(obj):
    """Plain JSON values: numpy scalars and arrays unwrapped, NaN and infinities as null."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return _jsonable(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return obj


def write_json(path, obj) -> str:
    """Write ``obj`` as strict JSON, atomically: NaN becomes null, numpy is unwrapped.

    Returns the path.
    """
    text = json.dumps(_jsonable(obj), indent=2, allow_nan=False) + "\n"
    return _atomic_write(path, text.encode("utf-8"))


# ----------------------------------------------------------------------------------------------
# Plot
# ----------------------------------------------------------------------------------------------


def bar_chart(
    metrics_by_name: Mapping[str, Mapping[str, float]],
    prefix: str,
    path,
    kind: str = "joint",
    title: str = "",
    errors: Mapping[str, Mapping[str, float]] | None = None,
    joints: Sequence[str] = skeleton.JOINTS,
    groups: Mapping[str, Sequence[int]] = skeleton.GROUPS,
) -> str:
    """Grouped bar chart saved as PNG: one cluster per joint (or group) plus ``mean``, one colour
    per name. ``errors`` (same layout as ``metrics_by_name``, e.g. the std over seeds) adds error
    bars; a missing or NaN error draws none. A NaN value draws no bar. Returns the path.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    headers, rows = metrics_table(metrics_by_name, prefix, kind, joints, groups)
    names = headers[1:]
    labels = [row[0] for row in rows]
    values = np.array([row[1:] for row in rows], dtype=np.float64).reshape(len(rows), len(names))
    x = np.arange(len(labels))
    width = 0.8 / max(len(names), 1)

    fig = Figure(figsize=(max(6.0, 0.55 * len(labels) * max(1, len(names)) ** 0.5 + 2), 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    colours = [f"C{i % 10}" for i in range(len(names))]
    for i, name in enumerate(names):
        heights = values[:, i]
        yerr = None
        if errors is not None and name in errors:
            err = np.array([_value(errors[name], f"{prefix}/{r}") for r in labels])
            # No whisker where the error or the bar itself is missing.
            yerr = np.where(np.isnan(err) | np.isnan(heights), 0.0, err)
        ax.bar(
            x - 0.4 + width * (i + 0.5),
            np.where(np.isnan(heights), 0.0, heights),
            width,
            yerr=yerr,
            capsize=2 if yerr is not None else 0,
            label=name,
            color=colours[i],
        )
    ax.set_xticks(x)
    if kind == "joint":
        ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=8)
    else:
        ax.set_xticklabels(labels, fontsize=8)
    ax.set_ylabel(f"{prefix} (%)")
    ax.set_ylim(0, 100)
    ax.grid(axis="y", alpha=0.3)
    if title:
        ax.set_title(title)
    if names:
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    return _atomic_write(path, buf.getvalue())
