"""The pseudo-label mechanism study: what each CC-SSL term does to label quality, without training.

One fixed model labels the target train split under each labeller variant (CC-SSL's own
labeller, :mod:`da_pose.adapt.ccssl`, with terms switched on and off) and each confidence rule.
At matched kept fractions (CC-SSL's curriculum rule: pool all joints' confidences, keep the top
fraction) the kept labels are scored against the target train labels (PCK@0.05, crop
normaliser), with bootstrap intervals over images (or videos), and every variant is compared
with ``identity`` at the same fraction with a PAIRED interval (the same resample for both).

End-of-training PCK mixes a term's effect on the labels with everything training adds (noise,
schedule, seed); here the model is fixed, so a difference is the term's effect on the labels.

Variants (each a ``dataclasses.replace`` of the config's ``ccssl`` section):

* ``identity``: one view, no augmentation (plain pseudo-labels).
* ``equivariance``: + T random scale/rotation views (T_alpha), warped back and averaged.
* ``invariance``: + T random appearance views (T_beta) of the identity geometry.
* ``flip``: + T views that are each mirrored with probability 0.5 and otherwise the identity
  (the labeller's flip draw with scale and rotation switched off): flip's effect alone.
* ``temporal``: the identity labels refined by optical flow along each video (T_Delta).
* ``all``: equivariance, invariance, flip and temporal together.

Confidence rules: ``max`` (published) and ``agreement`` (the max scaled down by the spread of the
views' peaks). With one view (``identity``, ``temporal``) there is no spread and ``agreement``
equals ``max`` exactly. Every view set uses the same random seed, so variants that share a
draw (``equivariance`` and ``all``: the same scales and rotations) are compared on the same views.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from da_pose.adapt.ccssl import aggregate, iter_views, temporal_refine
from da_pose.adapt.pseudo_labels import curriculum_mask
from da_pose.config import CCSSLConfig, Config, flatten
from da_pose.data.loaders import make_codec, make_dataset
from da_pose.data.records import PoseRecord
from da_pose.data.transforms import apply_affine, invert_affine
from da_pose.errors import ConfigError
from da_pose.eval import report
from da_pose.eval.pck import crop_normalizer, joint_hits
from da_pose.eval.stats import DRAWS, paired_ratio_difference, ratio_interval
from da_pose.fileio import write_bytes_atomic
from da_pose.run import shift_tag
from da_pose.tracking import MlflowTracker, check_reachable

_OFF = {"equivariance": False, "invariance": False, "flip": False, "temporal": False}
VARIANTS: dict[str, dict] = {
    "identity": dict(_OFF),
    "equivariance": {**_OFF, "equivariance": True},
    "invariance": {**_OFF, "invariance": True},
    # the flip draw lives in the geometric transforms: with scale and rotation off it is a pure flip
    "flip": {**_OFF, "equivariance": True, "flip": True, "scale_sigma": 0.0, "rotate_sigma": 0.0},
    "temporal": {**_OFF, "temporal": True},
    "all": {"equivariance": True, "invariance": True, "flip": True, "temporal": True},
}
RULES = ("max", "agreement")
FRACTIONS = (20.0, 40.0, 60.0, 80.0)
REFERENCE = "identity"
THRESHOLD = 0.05  # PCK@0.05, crop normaliser
UNITS = ("image", "video")
COLUMNS = ("variant", "rule", "views", "kept %", "accuracy", "lo", "hi", "kept joints", "scored joints",
           "diff vs identity", "diff lo", "diff hi", "excludes 0")


@dataclass(frozen=True)
class StudySettings:
    """What ``da-pose study pseudo-labels`` was asked for (the CLI's options, checked)."""

    spec: str
    split: str = "train"
    variants: tuple[str, ...] = tuple(VARIANTS)
    rules: tuple[str, ...] = RULES
    fractions: tuple[float, ...] = FRACTIONS  # percent of all joints kept
    draws: int = DRAWS
    seed: int = 0
    unit: str = "image"  # what the bootstrap resamples
    experiment: str = "pseudo-label-study"
    name: str = ""


@dataclass
class VariantLabels:
    """One variant's labels of every record. Shape: keypoints (N, K, 2) original px, confidence (N, K)."""

    keypoints: np.ndarray
    confidence: np.ndarray
    views: int
    temporal_replaced: int = 0


# ---------------------------------------------------------------------------------- options
def _names(text: str | Sequence[str], valid: Sequence[str], what: str) -> tuple[str, ...]:
    items = text.split(",") if isinstance(text, str) else list(text)
    out = []
    for item in (i.strip().lstrip("+") for i in items if i.strip()):
        if item not in valid:
            raise ConfigError(f"unknown {what} '{item}'; valid: {', '.join(valid)}")
        if item not in out:
            out.append(item)
    if not out:
        raise ConfigError(f"no {what} given; valid: {', '.join(valid)}")
    return tuple(out)


def parse_variants(text: str | Sequence[str]) -> tuple[str, ...]:
    """``"identity,+flip"`` -> ``("identity", "flip")`` (a leading ``+`` is allowed); identity,
    the reference of every paired difference, is always included and comes first."""
    names = _names(text, tuple(VARIANTS), "variant")
    return (REFERENCE,) + tuple(n for n in names if n != REFERENCE)


def parse_rules(text: str | Sequence[str]) -> tuple[str, ...]:
    return _names(text, RULES, "confidence rule")


def parse_fractions(text: str | Sequence[float]) -> tuple[float, ...]:
    """``"20,40"`` -> ``(20.0, 40.0)``: kept fractions in percent, each in (0, 100]."""
    items = text.split(",") if isinstance(text, str) else list(text)
    out = []
    for item in items:
        try:
            value = float(item)
        except (TypeError, ValueError):
            raise ConfigError(f"--fractions: '{item}' is not a number (percent of joints kept, in (0, 100])") from None
        if not 0.0 < value <= 100.0:
            raise ConfigError(f"--fractions: {value:g} is outside (0, 100] (percent of joints kept)")
        out.append(value)
    if not out:
        raise ConfigError("--fractions: give at least one kept fraction in (0, 100]")
    return tuple(sorted(set(out)))


def check_settings(s: StudySettings) -> StudySettings:
    if s.draws < 1:
        raise ConfigError(f"--draws must be >= 1, got {s.draws}")
    if s.unit not in UNITS:
        raise ConfigError(f"--unit: unknown '{s.unit}'; valid: {', '.join(UNITS)}")
    return dataclasses.replace(s, variants=parse_variants(s.variants), rules=parse_rules(s.rules),
                               fractions=parse_fractions(s.fractions))


def study_config(checkpoint_path: str | os.PathLike, overrides: Sequence[str] = ()) -> Config:
    """The checkpoint's config with ``overrides``; a missing checkpoint is a one-line error (exit 2)."""
    from da_pose.jobs import config_from_checkpoint

    if not Path(checkpoint_path).is_file():
        raise ConfigError(f"--checkpoint {checkpoint_path}: no such file")
    return config_from_checkpoint(checkpoint_path, overrides)


def variant_config(base: CCSSLConfig, variant: str, rule: str) -> CCSSLConfig:
    """The labeller settings of one variant and confidence rule; the rest of ``base`` is kept."""
    return dataclasses.replace(base, **VARIANTS[variant], confidence=rule)


# ---------------------------------------------------------------------------------- labelling
def _view_pass(model, dataset, codec, cfg: CCSSLConfig, rules: Sequence[str], device, seed: int,
               progress: bool) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], int]:
    """One pass of the labeller's views over ``dataset``, aggregated under every rule.

    Returns ``{rule: (keypoints (N, K, 2) original px, confidence (N, K))}`` and views per image.
    """
    n, k = len(dataset), codec.num_joints
    out = {r: (np.zeros((n, k, 2), np.float32), np.zeros((n, k), np.float32)) for r in rules}
    views_per_image = 1
    for batch, views in iter_views(model, dataset, codec, cfg, device, seed, progress=progress):
        views_per_image = views.shape[0]
        idx = batch["index"].numpy()
        back = invert_affine(batch["affine"].to(device, torch.float64))
        for rule in rules:
            xy, conf = aggregate(views, codec, rule)  # same locations under every rule
            out[rule][0][idx] = apply_affine(back, xy.double()).float().cpu().numpy()
            out[rule][1][idx] = conf.float().cpu().numpy()
    return out, views_per_image


def label_variants(model, dataset, codec, base: CCSSLConfig, variants: Sequence[str], rules: Sequence[str],
                   device, seed: int, progress: bool = True) -> dict[tuple[str, str], VariantLabels]:
    """Every (variant, rule)'s labels of ``dataset.records`` with one fixed model.

    Variants that see the same views (``identity`` and ``temporal``) share one pass, and each
    pass is aggregated under every rule, so no view is predicted twice.
    """
    passes: dict[CCSSLConfig, tuple[dict, int]] = {}
    out = {}
    for variant in variants:
        cfg = variant_config(base, variant, rules[0])
        key = dataclasses.replace(cfg, temporal=False)  # what the views depend on
        if key not in passes:
            if progress:
                print(f"study: labelling with the views of '{variant}'")
            passes[key] = _view_pass(model, dataset, codec, cfg, rules, device, seed, progress)
        labels, views = passes[key]
        for rule in rules:
            kp, conf = labels[rule]
            replaced = 0
            if cfg.temporal:
                kp, conf, replaced = temporal_refine(dataset.records, kp, conf, variant_config(base, variant, rule))
            out[(variant, rule)] = VariantLabels(kp, conf, views, replaced)
    return out


# ---------------------------------------------------------------------------------- scoring
def ground_truth(records: Sequence[PoseRecord]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Target train labels: keypoints (N, K, 3), visible (N, K) bool, crop side (N,)."""
    gt = np.stack([r.keypoints for r in records]).astype(np.float64)
    return gt, gt[..., 2] > 0, crop_normalizer([r.side for r in records])


def kept_counts(keypoints: np.ndarray, confidence: np.ndarray, gt: np.ndarray, visible: np.ndarray,
                norm: np.ndarray, fraction: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keep the top ``fraction`` (0-1] of all joints by confidence (CC-SSL's curriculum rule) and
    score the kept ones that the ground truth can score (visible).

    Shape:
        keypoints (N, K, 2), confidence (N, K) -> kept (N, K) bool, correct (N,), scored (N,)
        per image.
    """
    kept = curriculum_mask(confidence, fraction)
    hits, counted = joint_hits(keypoints, gt, visible, norm, THRESHOLD)
    return kept, (hits & kept).sum(1), (counted & kept).sum(1)


def resampling_units(records: Sequence[PoseRecord], unit: str) -> np.ndarray:
    """The bootstrap unit of each record: itself (``image``) or its video (``video``; an image
    outside any video is its own unit). Shape: (N,) int in 0..U-1."""
    if unit == "image":
        return np.arange(len(records))
    keys = [(r.species, r.video) if r.video >= 0 else ("", -1 - i) for i, r in enumerate(records)]
    index = {k: i for i, k in enumerate(dict.fromkeys(keys))}
    return np.array([index[k] for k in keys])


def _per_unit(values: np.ndarray, units: np.ndarray) -> np.ndarray:
    out = np.zeros(int(units.max()) + 1 if len(units) else 0)
    np.add.at(out, units, values)
    return out


def study_rows(labels: dict[tuple[str, str], VariantLabels], records: Sequence[PoseRecord],
               s: StudySettings) -> list[dict]:
    """One row per (variant, rule, kept fraction): accuracy of the kept labels with its interval,
    and its paired difference from ``identity`` (same rule, same fraction, same resamples)."""
    gt, visible, norm = ground_truth(records)
    units = resampling_units(records, s.unit)
    total = visible.size
    rows = []
    for rule in s.rules:
        for pct in s.fractions:
            ref = labels[(REFERENCE, rule)]
            _, rc, rn = kept_counts(ref.keypoints, ref.confidence, gt, visible, norm, pct / 100.0)
            rc, rn = _per_unit(rc, units), _per_unit(rn, units)
            for variant in s.variants:
                lab = labels[(variant, rule)]
                kept, c, n = kept_counts(lab.keypoints, lab.confidence, gt, visible, norm, pct / 100.0)
                c, n = _per_unit(c, units), _per_unit(n, units)
                acc, lo, hi = ratio_interval(c, n, s.draws, s.seed)
                d, dlo, dhi = paired_ratio_difference(c, n, rc, rn, s.draws, s.seed)
                rows.append({"variant": variant, "rule": rule, "views": lab.views, "kept %": pct,
                             "accuracy": acc, "lo": lo, "hi": hi, "kept joints": int(kept.sum()),
                             "scored joints": int(n.sum()), "diff vs identity": d, "diff lo": dlo, "diff hi": dhi,
                             "excludes 0": "yes" if excludes_zero(dlo, dhi) else "no",
                             "share kept": float(kept.sum()) / total})
    return rows


def excludes_zero(lo: float, hi: float) -> bool:
    """Whether a difference's interval lies wholly on one side of zero (NaN: no)."""
    return not (math.isnan(lo) or math.isnan(hi)) and (lo > 0 or hi < 0)


# ---------------------------------------------------------------------------------- outputs
def _label(variant: str) -> str:
    return variant if variant == REFERENCE else f"+{variant}"


def table(rows: Sequence[dict]) -> tuple[list[str], list[list]]:
    return list(COLUMNS), [[_label(r[c]) if c == "variant" else r[c] for c in COLUMNS] for r in rows]


def plot_study(rows: Sequence[dict], path, title: str = "") -> Path:
    """Accuracy of the kept labels against the kept fraction, one line per variant with its
    interval band (top), and each variant minus identity with its paired interval (bottom);
    one column per confidence rule."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rules = list(dict.fromkeys(r["rule"] for r in rows))
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    fig = Figure(figsize=(5.0 * len(rules), 7.5))
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, len(rules), squeeze=False, sharex=True)
    for col, rule in enumerate(rules):
        top, bottom = axes[0][col], axes[1][col]
        for i, variant in enumerate(variants):
            rs = [r for r in rows if r["rule"] == rule and r["variant"] == variant]
            x = np.array([r["kept %"] for r in rs])
            for ax, key, lo, hi in ((top, "accuracy", "lo", "hi"), (bottom, "diff vs identity", "diff lo", "diff hi")):
                y = np.array([r[key] for r in rs], dtype=np.float64)
                # markers and dashes tell apart lines that coincide (agreement = max with one view)
                ax.plot(x, y, marker="osv^Dx"[i % 6], ls=("-", "--", ":")[i % 3], color=f"C{i % 10}",
                        label=_label(variant))
                ax.fill_between(x, [r[lo] for r in rs], [r[hi] for r in rs], color=f"C{i % 10}", alpha=0.15)
        top.set_title(f"confidence: {rule}")
        top.set_ylabel("kept-label accuracy, PCK@0.05 crop (%)")
        bottom.axhline(0.0, color="k", lw=0.8)
        bottom.set_ylabel("minus identity (points, paired 95 % CI)")
        bottom.set_xlabel("joints kept, most confident first (%)")
        for ax in (top, bottom):
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8, loc="best")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return write_bytes_atomic(path, buf.getvalue())


def metrics_of(rows: Sequence[dict]) -> dict[str, float]:
    """MLflow metrics ``study/<variant>/<rule>/acc@40`` (with ``acc_lo``, ``acc_hi``, ``diff``,
    ``diff_lo``, ``diff_hi`` at the same fraction)."""
    out = {}
    for r in rows:
        base = f"study/{r['variant']}/{r['rule']}"
        at = f"@{r['kept %']:g}"
        for name, key in (("acc", "accuracy"), ("acc_lo", "lo"), ("acc_hi", "hi"), ("diff", "diff vs identity"),
                          ("diff_lo", "diff lo"), ("diff_hi", "diff hi")):
            out[f"{base}/{name}{at}"] = float(r[key])
    return out


def study_summary(runs: Sequence[tuple[str, dict[str, float]]], rules: Sequence[str] = RULES,
                  variants: Sequence[str] | None = None) -> str:
    """One markdown table over several study runs (``(label, metrics)``, e.g. one per shift):
    identity's kept-label accuracy and each variant's paired difference against it, with its
    interval, at every kept fraction the runs logged (``metrics_of``'s keys)."""
    fractions = sorted({float(k.rsplit("_at_", 1)[1]) for _, m in runs for k in m if "/diff_at_" in k})
    variants = list(variants or [v for v in VARIANTS if v != "identity"])
    headers = ["shift", "rule", "variant", *(f"{f:g} % kept" for f in fractions)]
    body = []

    def at(metrics, name, f):
        return metrics.get(f"{name}_at_{f:g}")

    for label, m in runs:
        for rule in rules:
            if at(m, f"study/identity/{rule}/acc", fractions[0]) is None:
                continue
            body.append([label, rule, "identity (accuracy)",
                         *(f"{at(m, f'study/identity/{rule}/acc', f):.1f}" for f in fractions)])
            for v in variants:
                base = f"study/{v}/{rule}"
                if at(m, f"{base}/diff", fractions[0]) is None:
                    continue
                cells = []
                for f in fractions:
                    d, lo, hi = (at(m, f"{base}/{k}", f) for k in ("diff", "diff_lo", "diff_hi"))
                    mark = " *" if lo > 0 or hi < 0 else ""
                    cells.append(f"{d:+.1f} [{lo:+.1f}, {hi:+.1f}]{mark}")
                body.append([label, rule, f"+{v}" if v != "all" else "all", *cells])
    return report.markdown_table(headers, body)


def write_outputs(rows: Sequence[dict], out: Path, title: str, info: dict) -> tuple[str, list[Path]]:
    """``study.md``, ``study.csv``, ``study.png`` and ``study.json`` in ``out``; returns the
    markdown table and the paths."""
    out.mkdir(parents=True, exist_ok=True)
    headers, body = table(rows)
    md = report.markdown_table(headers, body)
    text = (f"# {title}\n\n{md}\nAccuracy of the kept pseudo-labels against the target labels (PCK@0.05, crop), "
            f"95 % bootstrap intervals over {info['unit']}s ({info['draws']} draws); 'diff vs identity' is paired "
            "(the same resample for both). With one view, 'agreement' equals 'max'.\n")
    paths = [write_bytes_atomic(out / "study.md", text.encode()), Path(report.write_csv(out / "study.csv", headers, body)),
             plot_study(rows, out / "study.png", title), Path(report.write_json(out / "study.json",
                                                                              {**info, "rows": list(rows)}))]
    return md, paths


def write_labels(labels: dict[tuple[str, str], VariantLabels], records: Sequence[PoseRecord], path: Path) -> Path:
    """Every variant's labels as ``labels.npz``: ``<variant>/<rule>/keypoints`` (N, K, 2) original
    px and ``<variant>/<rule>/confidence`` (N, K), rows in the order of ``images`` (N,)."""
    arrays = {"images": np.array([str(r.image_path) for r in records])}
    for (variant, rule), lab in labels.items():
        arrays[f"{variant}/{rule}/keypoints"] = lab.keypoints
        arrays[f"{variant}/{rule}/confidence"] = lab.confidence
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return write_bytes_atomic(path, buf.getvalue())


# ---------------------------------------------------------------------------------- the command
def _log_run(cfg: Config, s: StudySettings, info: dict, rows, paths, tags: dict) -> str:
    tracker = MlflowTracker(cfg.tracking_uri, s.experiment, s.name or "pseudo-labels", tags=tags)
    status = "FAILED"
    try:
        params = {f"study.{k}": v for k, v in info.items() if k not in ("wall_s",)}
        params.update({k: v for k, v in flatten(cfg).items() if k.split(".")[0] in ("ccssl", "model", "data", "codec")})
        tracker.log_params(params)
        replaced = {f"study/{key}/temporal_replaced": float(n) for key, n in info["temporal_replaced"].items()}
        tracker.log_metrics({**metrics_of(rows), **replaced, "study/wall_s": info["wall_s"]})
        for path in paths:
            tracker.log_artifact(path, "study")
        status = "FINISHED"
    finally:
        tracker.end(status)
    return tracker.run_id


def run_study(checkpoint_path: str | os.PathLike, cfg: Config, records: Sequence[PoseRecord], out: Path,
              settings: StudySettings, progress: bool = True) -> list[dict]:
    """Label ``records`` with the checkpoint under every variant and rule, score the kept labels
    at each fraction, write the table, CSV, plot and JSON to ``out`` and log an MLflow run."""
    from da_pose.run import load_model
    from da_pose.train.trainer import resolve_device

    s = check_settings(settings)
    check_reachable(cfg.tracking_uri)  # fail before minutes of labelling, not after
    t0 = time.perf_counter()
    device = resolve_device(cfg.device)
    torch.manual_seed(s.seed)
    model = load_model(checkpoint_path, cfg, device)
    codec = make_codec(cfg)
    dataset = make_dataset(cfg, records, codec, train=False)
    labels = label_variants(model, dataset, codec, cfg.ccssl, s.variants, s.rules, device, s.seed, progress)
    rows = study_rows(labels, dataset.records, s)
    info = {"checkpoint": str(checkpoint_path), "data": s.spec, "split": s.split, "images": len(dataset.records),
            "variants": ",".join(s.variants), "rules": ",".join(s.rules),
            "fractions": ",".join(f"{f:g}" for f in s.fractions), "draws": s.draws, "seed": s.seed, "unit": s.unit,
            "temporal_replaced": {f"{v}/{r}": lab.temporal_replaced for (v, r), lab in labels.items()
                                  if VARIANTS[v]["temporal"]},
            "wall_s": round(time.perf_counter() - t0, 1)}
    title = f"pseudo-label study: {Path(checkpoint_path).name} on {s.spec} ({s.split}, {len(dataset.records)} images)"
    md, paths = write_outputs(rows, out, title, info)
    paths.append(write_labels(labels, dataset.records, out / "labels.npz"))
    tags = {"command": "study pseudo-labels", "checkpoint": str(checkpoint_path), "data": s.spec,
            "method": cfg.method, "backbone": cfg.model.backbone,
            # the shift of the data studied (``ROOT#domain``), not of the checkpoint's own training data
            **shift_tag(str(s.spec).partition("#")[0])}
    run_id = _log_run(cfg, s, info, rows, paths, tags)
    if progress:
        print(f"\n{title}\n\n{md}\nwrote {out} (MLflow run {run_id}, experiment {s.experiment}) "
              f"in {info['wall_s']:.0f} s")
    return rows

