"""``da-pose compare --by labels``: the methods against the labelled share of the target train split
(the semi-supervised protocol, :mod:`da_pose.data.labelled`).

Rows of :func:`da_pose.eval.compare.summarize_runs` are laid out per method (rows) and labelled
fraction (columns, from each run's ``target_labels_fraction`` tag; runs without it used no target
label, or every one for the oracle and CC-SSL-R). The supervised-only line is the floor a
semi-supervised method must beat: the source-only model at 0 labels, the oracle command run on
the same labelled subset (``da-pose finetune`` with ``data.target_labels``) at every other
fraction, the oracle on all labels at "all". Each method's cell is paired against that floor
(same seeds, same test images) with a 95 % bootstrap interval.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from da_pose.eval import report

KEY = "pck@0.05_crop/mean"
FLOOR = "supervised only"


def fraction_label(f: float) -> str:
    """Column name of a labelled fraction: ``0 %``, ``5 %``, ``all``."""
    return "all" if f >= 1.0 else "0 %" if f <= 0 else f"{100 * f:.3g} %"


def _line(row: dict) -> str:
    """The line a row belongs to: its method, or the supervised-only floor."""
    if row["method"] == "source_only" and not row.get("labels"):
        return FLOOR
    if row["method"] == "oracle":
        return FLOOR
    return row["method"]


def curves(rows: list[dict]) -> dict[tuple[str, str], dict[str, dict[float, dict]]]:
    """``(backbone, shift) -> line -> fraction -> row``; the floor line is :data:`FLOOR`."""
    out: dict[tuple[str, str], dict[str, dict[float, dict]]] = {}
    for row in rows:
        lines = out.setdefault((row["backbone"], row["shift"]), {})
        lines.setdefault(_line(row), {})[float(row["labels_fraction"])] = row
    return out


def _mean(row: dict) -> str:
    m, s = row["mean"][KEY], row["std"][KEY]
    return f"{m:.1f} ± {s:.1f}" if row["n"] > 1 else f"{m:.1f}"


def _ordered(lines: dict) -> list[str]:
    return [FLOOR, *sorted(name for name in lines if name != FLOOR)] if FLOOR in lines else sorted(lines)


def _interval(iv: dict | None) -> str:
    return "-" if iv is None else f"{iv['est']:+.1f} [{iv['lo']:+.1f}, {iv['hi']:+.1f}]"


def labels_tables(rows: list[dict], pair):
    """Per ``(backbone, shift)``: ``(headers, mean table, paired-vs-floor table, fractions, lines)``.
    ``pair(row, ref)``: the paired difference ``row - ref`` (an interval dict) or None."""
    out = []
    for (backbone, shift), lines in sorted(curves(rows).items()):
        fractions = sorted({f for line in lines.values() for f in line})
        headers = ["method", *(fraction_label(f) for f in fractions)]
        means, deltas = [], []
        for name in _ordered(lines):
            line = lines[name]
            means.append([name, *(_mean(line[f]) if f in line else "-" for f in fractions)])
            if name == FLOOR:
                continue
            floor = lines.get(FLOOR, {})
            deltas.append([name, *(_interval(pair(line[f], floor[f]))
                                   if f in line and f in floor else "-" for f in fractions)])
        out.append(((backbone, shift), headers, means, deltas, fractions, lines))
    return out


def matching_fraction(lines: dict, pair) -> str:
    """The sentence: the smallest labelled fraction at which the best semi-supervised method
    matches the oracle trained on all target labels (its paired interval reaches zero; without
    per-image results, its mean)."""
    oracle = lines.get(FLOOR, {}).get(1.0)
    if oracle is None or oracle["method"] != "oracle":
        return "No oracle run on all target labels: nothing to match."
    methods = {n: line for n, line in lines.items() if n not in (FLOOR, "ccssl_r", "source_only_ext")}
    for f in sorted({f for line in methods.values() for f in line if f < 1.0}):
        best = max((line[f] for line in methods.values() if f in line), key=lambda r: r["mean"][KEY])
        iv = pair(best, oracle)
        if (iv["hi"] >= 0) if iv is not None else best["mean"][KEY] >= oracle["mean"][KEY]:
            how = (f"{iv['est']:+.1f} [{iv['lo']:+.1f}, {iv['hi']:+.1f}] points" if iv is not None
                   else f"{best['mean'][KEY] - oracle['mean'][KEY]:+.1f} points, no interval")
            return (f"At {fraction_label(f)} of the target labels, {best['method']} matches the oracle trained on "
                    f"all target labels ({how}).")
    return "No semi-supervised method matches the oracle trained on all target labels at any fraction run."


def labels_plot(lines: dict, fractions: list[float], path: Path, title: str = "") -> str:
    """PCK against the labelled fraction: one line per method (± std over seeds), the
    supervised-only floor dashed, the oracle on all labels dotted."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.0, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    x_of = {f: i for i, f in enumerate(fractions)}  # evenly spaced: 0, 1 %, 5 %, 10 %, all
    for i, name in enumerate(_ordered(lines)):
        pts = sorted(lines[name].items())
        xs = [x_of[f] for f, _ in pts]
        ys = np.array([r["mean"][KEY] for _, r in pts])
        err = np.array([r["std"][KEY] for _, r in pts])
        style = dict(color="black", linestyle="--", linewidth=2) if name == FLOOR else dict(color=f"C{i % 10}")
        ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=name, **style)
    oracle = lines.get(FLOOR, {}).get(1.0)
    if oracle is not None:
        ax.axhline(oracle["mean"][KEY], color="grey", linestyle=":", label="oracle (all target labels)")
    ax.set_xticks(range(len(fractions)))
    ax.set_xticklabels([fraction_label(f) for f in fractions])
    ax.set_xlabel("labelled share of the target train split")
    ax.set_ylabel("target test PCK@0.05 crop (%)")
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=120)
    return str(path)


CAPTION = ("Target test PCK@0.05 (crop, %) against the labelled share of the target train split "
           "(`data.target_labels`, the same seeded subset for every method of a seed), mean ± std over seeds. "
           "Supervised only: the source model at 0 labels, fine-tuned on the labelled subset alone (the oracle "
           "command) at every other fraction, on all labels at `all`. Δ: paired difference to that floor in points "
           "(same seeds and test images) with a 95 % bootstrap interval over test {unit}s and seeds.")


def write_labels(rows: list[dict], out: Path, pair, unit: str = "video",
                 experiment: str = "") -> tuple[str, list[str]]:
    """``compare_labels.md``/``.csv`` and one ``compare_labels[_<backbone>_<shift>].png`` per
    table into ``out``; ``pair`` as in :func:`labels_tables`. Returns the markdown and the file
    names written."""
    parts, csv_rows, files = [CAPTION.format(unit=unit), ""], [], ["compare_labels.md", "compare_labels.csv"]
    tables = labels_tables(rows, pair)
    for i, ((backbone, shift), headers, means, deltas, fractions, lines) in enumerate(tables):
        where = f"{backbone}{', shift ' + shift if shift else ''}"
        parts += [f"**PCK against labels ({where})**", "", report.markdown_table(headers, means).rstrip(), "",
                  "Δ supervised only [95 % CI]:", "", report.markdown_table(headers, deltas).rstrip(), "",
                  matching_fraction(lines, pair), ""]
        csv_rows += [[backbone, shift, n, f, r["mean"][KEY], r["std"][KEY], r["n"]]
                     for n in _ordered(lines) for f, r in sorted(lines[n].items())]
        name = "compare_labels.png" if i == 0 else f"compare_labels_{backbone}_{shift or 'none'}.png"
        labels_plot(lines, fractions, out / name, f"{experiment} ({where})" if experiment else where)
        files.append(name)
    text = "\n".join(parts).rstrip() + "\n"
    (out / "compare_labels.md").write_text(text)
    report.write_csv(out / "compare_labels.csv", ["backbone", "shift", "line", "labelled_fraction", "pck_mean",
                                                  "pck_std", "runs"], csv_rows)
    return text, files
