"""Bootstrap confidence intervals for PCK figures, as pure functions on per-image arrays.

Every PCK the project reports is a ratio of sums over images (correct joints over counted
joints, per joint, then averaged over joints). Resampling test images with replacement is
then a matrix product: draw a (B, N) matrix of multinomial counts (how often each image is in
each resample) and multiply it into the (N, K) hit and count arrays. Seeds are resampled the
same way one level up. All intervals are percentile intervals (Efron & Tibshirani 1993,
ch. 13) at ``level`` (0.95 by default).

A paired comparison draws ONE image resample and ONE seed resample per bootstrap draw and
applies it to both methods, so the noise that the methods share (which images are hard, which
source model a seed produced) cancels in the difference.
"""

from __future__ import annotations

import numpy as np

DRAWS = 2000


def resample_counts(n: int, draws: int, rng: np.random.Generator) -> np.ndarray:
    """How often each of ``n`` items appears in each of ``draws`` resamples with replacement.

    Shape:
        returns: (draws, n) float64, every row sums to n.
    """
    if n < 1:
        raise ValueError("resample_counts: need at least one item")
    return rng.multinomial(n, np.full(n, 1.0 / n), size=draws).astype(np.float64)


def percentile_interval(samples, level: float = 0.95) -> tuple[float, float]:
    """The central ``level`` interval of bootstrap ``samples`` (NaN draws ignored)."""
    samples = np.asarray(samples, dtype=np.float64)
    samples = samples[np.isfinite(samples)]
    if not len(samples):
        return float("nan"), float("nan")
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(samples, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def ratio_interval(correct, counted, draws: int = DRAWS, seed: int = 0,
                   level: float = 0.95) -> tuple[float, float, float]:
    """A pooled accuracy ``sum(correct) / sum(counted)`` in percent with its bootstrap interval
    over items (images): ``(estimate, lo, hi)``.

    Shape:
        correct, counted: (N,) per-item numbers of correct and of counted instances.
    """
    correct = np.asarray(correct, dtype=np.float64)
    counted = np.asarray(counted, dtype=np.float64)
    if correct.shape != counted.shape or correct.ndim != 1:
        raise ValueError(f"ratio_interval: expected two (N,) arrays, got {correct.shape} and {counted.shape}")
    estimate = float(_ratio(correct.sum(), counted.sum()) * 100.0)
    w = resample_counts(len(correct), draws, np.random.default_rng(seed))  # B, N
    lo, hi = percentile_interval(_ratio(w @ correct, w @ counted) * 100.0, level)
    return estimate, lo, hi


def paired_ratio_difference(correct_a, counted_a, correct_b, counted_b, draws: int = DRAWS, seed: int = 0,
                            level: float = 0.95) -> tuple[float, float, float]:
    """``ratio(a) - ratio(b)`` of two pooled accuracies on the SAME items, in percentage points,
    with a paired bootstrap interval: each draw resamples the items once and applies that
    resample to both, so what a and b share (which items are hard) cancels in the difference.
    Returns ``(estimate, lo, hi)``; identical a and b give exactly ``(0, 0, 0)``. With the same
    ``seed`` the draws are those of :func:`ratio_interval`.

    Shape:
        correct_a, counted_a, correct_b, counted_b: (N,) per-item numbers of a and of b.
    """
    ca, na, cb, nb = (np.asarray(x, dtype=np.float64) for x in (correct_a, counted_a, correct_b, counted_b))
    if ca.ndim != 1 or not ca.shape == na.shape == cb.shape == nb.shape:
        raise ValueError(f"paired_ratio_difference: expected four (N,) arrays, got "
                         f"{ca.shape}, {na.shape}, {cb.shape} and {nb.shape}")
    estimate = float((_ratio(ca.sum(), na.sum()) - _ratio(cb.sum(), nb.sum())) * 100.0)
    w = resample_counts(len(ca), draws, np.random.default_rng(seed))  # B, N
    diff = (_ratio(w @ ca, w @ na) - _ratio(w @ cb, w @ nb)) * 100.0  # B
    lo, hi = percentile_interval(diff, level)
    return estimate, lo, hi


def mean_pck(hits: np.ndarray, valid: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """``pck@.../mean`` (mean over joints of per-joint PCK, percent) under image weights.

    Shape:
        hits, valid: (N, K) 0/1 correct and counted.
        weights: (B, N) image counts per resample; None = every image once.
        returns: (B,) (or () without weights); NaN where no joint is counted.
    """
    hits = np.asarray(hits, dtype=np.float64)
    valid = np.asarray(valid, dtype=np.float64)
    w = np.ones((1, hits.shape[0])) if weights is None else np.asarray(weights, dtype=np.float64)
    per_joint = _ratio(w @ hits, w @ valid)  # B, K
    with np.errstate(invalid="ignore"), _quiet():
        out = np.nanmean(per_joint, axis=1) * 100.0  # B
    return out[0] if weights is None else out


class _quiet:
    """Silence numpy's 'mean of empty slice' for rows with no counted joint (they are NaN)."""

    def __enter__(self):
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)


def cluster_counts(clusters, draws: int, rng: np.random.Generator) -> np.ndarray:
    """Image counts of a bootstrap that resamples whole clusters (the videos of a test split):
    each image appears as often as its cluster was drawn.

    Shape:
        clusters: (N,) cluster label per image -> (draws, N) float64.
    """
    _, index = np.unique(np.asarray(clusters), return_inverse=True)
    return resample_counts(int(index.max()) + 1, draws, rng)[:, index]


def seed_image_bootstrap(groups: dict[str, list[tuple[np.ndarray, np.ndarray]]], draws: int = DRAWS,
                         seed: int = 0, clusters=None) -> dict[str, np.ndarray]:
    """Paired bootstrap of the seed-averaged mean PCK of several methods.

    ``groups[name]`` holds one ``(hits, counted)`` pair per seed, in the SAME seed order for
    every name, over the SAME images in the same order. Each draw resamples the images once and
    the seeds once (both with replacement) and applies that resample to every name, so
    differences between names are paired by image and by seed. With ``clusters`` (N,) the
    images are resampled by cluster (whole videos: frames of one shot are not independent).

    Shape:
        hits, counted: (N, K) per seed.
        returns: name -> (draws,) percent, the mean over the drawn seeds of ``mean_pck``.
    """
    names = list(groups)
    n_seeds = len(groups[names[0]])
    n_images = groups[names[0]][0][0].shape[0]
    for name in names:
        if len(groups[name]) != n_seeds or any(h.shape[0] != n_images for h, _ in groups[name]):
            raise ValueError(f"seed_image_bootstrap: '{name}' has other seeds or images than '{names[0]}'")
    rng = np.random.default_rng(seed)
    images = resample_counts(n_images, draws, rng) if clusters is None else cluster_counts(clusters, draws, rng)
    seeds = resample_counts(n_seeds, draws, rng)  # B, S
    out = {}
    for name in names:
        per_seed = np.stack([mean_pck(h, c, images) for h, c in groups[name]], axis=1)  # B, S
        out[name] = (np.where(seeds > 0, per_seed, 0.0) * seeds).sum(axis=1) / n_seeds  # NaN x 0 would be NaN
    return out


def interval(estimate: float, samples, level: float = 0.95) -> dict[str, float]:
    """``{"est", "lo", "hi", "excludes_zero"}`` of a point estimate and its bootstrap samples."""
    lo, hi = percentile_interval(samples, level)
    return {"est": float(estimate), "lo": lo, "hi": hi, "excludes_zero": bool(lo > 0 or hi < 0)}
