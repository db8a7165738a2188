"""How a pseudo-label run's labels change over its rounds: a diagnostic that reads target labels.

    python scripts/label_rounds.py --data "data/demo-shifts/occlusion#target" \\
        --runs runs/toy-demo-shifts/plain_pl_hg_occlusion_s0 runs/toy-demo-shifts/plain_pl_hg_occlusion_s1

Each run folder holds the labels of every round (``pseudo_labels/round_XX.pt``, written by CC-SSL,
plain pseudo-labels, WS-CDA's PPLO and UDA-Animal's labeller). They are scored against the target
train labels (PCK@0.05, crop normaliser, visible joints), per round:

* the accuracy of all labels and of the kept ones (the run's own ``acc_all`` / ``acc_kept``);
* the accuracy by how far the joint lies from the frame edge, in crop sides (``--bands``): a shot
  cut by a frame edge puts joints next to it;
* between the first and the last round: the share of the first round's wrong labels that the last
  round gets right (fixed), and of its right labels that the last round gets wrong (broken).

Figures are means over the runs given (seeds), each run weighted alike. Nothing here is a method:
the target train labels are read only to score.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np

from da_pose.data.records import PoseRecord
from da_pose.errors import DataError, run_script

THRESHOLD = 0.05


def round_files(run_dir: Path) -> list[Path]:
    """A run's round files in round order (one-line DataError when there are none)."""
    files = sorted((run_dir / "pseudo_labels").glob("round_*.pt"),
                   key=lambda p: int(re.sub(r"\D", "", p.stem) or 0))
    if not files:
        raise DataError(f"{run_dir}: no pseudo_labels/round_XX.pt (expected the folder of a pseudo-label run)")
    return files


def target_truth(records: list[PoseRecord]) -> dict[str, np.ndarray]:
    """The target train labels, once for every run and round: ``gt`` (N, K, 3), ``visible`` (N, K),
    ``norm`` (N,) crop sides (the study's :func:`~da_pose.adapt.study.ground_truth`), and ``edges``
    (N, K): each joint's distance to the nearest edge of its frame, in crop sides."""
    from PIL import Image

    from da_pose.adapt.study import ground_truth

    gt, visible, norm = ground_truth(records)
    sizes = {}
    for r in records:
        if r.image_path not in sizes:
            with Image.open(r.image_path) as im:
                sizes[r.image_path] = im.size
    wh = np.array([sizes[r.image_path] for r in records], dtype=np.float64)[:, None, :]  # (N, 1, 2)
    xy = gt[..., :2]
    edges = np.minimum(xy, wh - xy).min(-1) / np.asarray(norm, dtype=np.float64)[:, None]
    return {"gt": gt, "visible": visible, "norm": norm, "edges": edges}


def _pct(num, den) -> float:
    return 100.0 * float(num) / float(den) if den else float("nan")


def run_rounds(run_dir: Path, truth: dict[str, np.ndarray], bands: list[float]) -> dict:
    """One run: per round ``acc_all``, ``acc_kept`` and ``acc_band`` (one per band), and the
    first-to-last ``fixed`` and ``broken`` shares, all in %."""
    from da_pose.adapt.pseudo_labels import PseudoLabels
    from da_pose.eval.pck import joint_hits

    limits = [0.0, *bands, np.inf]
    n = len(truth["gt"])
    per_round, hits, counted = [], [], None
    for path in round_files(run_dir):
        labels = PseudoLabels.load(path)
        if len(labels.keypoints) != n:
            raise DataError(f"{path}: {len(labels.keypoints)} labelled images, but --data has {n} "
                            "target train images (expected the data the run was trained on)")
        h, counted = joint_hits(labels.keypoints, truth["gt"], truth["visible"], truth["norm"], THRESHOLD)
        hits.append(h)
        bands_mask = [counted & (truth["edges"] >= lo) & (truth["edges"] < hi) for lo, hi in zip(limits, limits[1:])]
        per_round.append({
            "acc_all": _pct((h & counted).sum(), counted.sum()),
            "acc_kept": _pct((h & counted & labels.kept).sum(), (counted & labels.kept).sum()),
            "acc_band": [_pct((h & m).sum(), m.sum()) for m in bands_mask]})
    wrong, right = counted & ~hits[0], counted & hits[0]
    return {"rounds": per_round, "fixed": _pct((wrong & hits[-1]).sum(), wrong.sum()),
            "broken": _pct((right & ~hits[-1]).sum(), right.sum()),
            "band_share": [_pct(m.sum(), counted.sum()) for m in bands_mask]}


def band_names(bands: list[float]) -> list[str]:
    limits = [0.0, *bands]
    return [f"{lo:g}-{hi:g}" for lo, hi in zip(limits, bands)] + [f">= {bands[-1]:g}"]


def markdown(results: list[dict], bands: list[float], label: str) -> str:
    """The runs' mean per round (rounds every run has), then the fixed/broken line."""
    from da_pose.eval.report import markdown_table

    names = band_names(bands)
    n_rounds = min(len(r["rounds"]) for r in results)
    headers = ["round", "all labels", "kept labels", *(f"edge {n} crop sides" for n in names)]
    body = []
    for i in range(n_rounds):
        rows = [r["rounds"][i] for r in results]
        body.append([str(i), f"{np.mean([x['acc_all'] for x in rows]):.1f}",
                     f"{np.mean([x['acc_kept'] for x in rows]):.1f}",
                     *(f"{np.nanmean([x['acc_band'][b] for x in rows]):.1f}" for b in range(len(names)))])
    share = " · ".join(f"{n}: {np.mean([r['band_share'][b] for r in results]):.0f} %" for b, n in enumerate(names))
    return (f"**{label}** ({len(results)} runs): label accuracy on target train, % (PCK@0.05 crop)\n\n"
            f"{markdown_table(headers, body)}\n"
            f"Visible joints by distance to the frame edge: {share}. From round 0 to round {n_rounds - 1}: "
            f"{np.mean([r['fixed'] for r in results]):.0f} % of the wrong labels fixed, "
            f"{np.mean([r['broken'] for r in results]):.0f} % of the right ones broken.\n")


def main(argv=None) -> int:
    from da_pose.data.manifest import parse_data_spec

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="the runs' target: ROOT#DOMAIN (its train split is scored)")
    ap.add_argument("--runs", nargs="+", required=True, help="run folders with pseudo_labels/round_XX.pt")
    ap.add_argument("--bands", default="0.1,0.2,0.4", help="edge-distance band limits in crop sides")
    ap.add_argument("--label", default=None, help="the table's title (default: --data)")
    args = ap.parse_args(argv)
    try:
        bands = sorted(float(b) for b in args.bands.split(",") if b.strip())
    except ValueError:
        raise DataError(f"--bands {args.bands!r}: expected numbers such as 0.1,0.2,0.4") from None
    if not bands or bands[0] <= 0:
        raise DataError(f"--bands {args.bands!r}: expected positive limits such as 0.1,0.2,0.4")
    truth = target_truth(parse_data_spec(args.data, split="train"))
    results = [run_rounds(Path(d), truth, bands) for d in args.runs]
    print(markdown(results, bands, args.label or args.data))
    return 0


if __name__ == "__main__":
    sys.exit(run_script(main))
