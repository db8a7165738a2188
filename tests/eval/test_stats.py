"""Bootstrap intervals: checked against a direct computation that repeats images explicitly."""

from __future__ import annotations

import numpy as np
import pytest

from da_pose.eval import stats


def _runs(rng, n=30, k=5, p=0.6):
    counted = rng.random((n, k)) < 0.8
    hits = (rng.random((n, k)) < p) & counted
    return hits, counted


def _direct_mean_pck(hits, counted, picks):
    """Mean over joints of per-joint PCK on the images listed in ``picks`` (repeats allowed)."""
    h, c = hits[picks], counted[picks]
    per_joint = [h[:, j].sum() / c[:, j].sum() for j in range(h.shape[1]) if c[:, j].sum() > 0]
    return 100.0 * float(np.mean(per_joint))


def test_mean_pck_matches_the_pck_summary_definition():
    rng = np.random.default_rng(0)
    hits, counted = _runs(rng)
    assert stats.mean_pck(hits, counted) == pytest.approx(_direct_mean_pck(hits, counted, np.arange(30)))


def test_seed_image_bootstrap_equals_a_direct_computation():
    rng = np.random.default_rng(1)
    groups = {"a": [_runs(rng, p=0.5) for _ in range(3)], "b": [_runs(rng, p=0.7) for _ in range(3)]}
    draws = 50
    samples = stats.seed_image_bootstrap(groups, draws=draws, seed=7)
    # the same draws, made independently: images first, then seeds, as multinomial counts
    r = np.random.default_rng(7)
    images = r.multinomial(30, np.full(30, 1 / 30), size=draws)
    seeds = r.multinomial(3, np.full(3, 1 / 3), size=draws)
    for name in groups:
        direct = []
        for b in range(draws):
            picks = np.repeat(np.arange(30), images[b])  # each image as often as it was drawn
            per_seed = [_direct_mean_pck(*groups[name][s], picks) for s in range(3)]
            direct.append(np.sum(np.repeat(per_seed, seeds[b])) / 3)
        np.testing.assert_allclose(samples[name], direct, rtol=1e-12)


def test_paired_interval_of_identical_runs_is_zero_and_of_a_clear_gain_excludes_zero():
    rng = np.random.default_rng(2)
    base = [_runs(rng, n=80, p=0.5) for _ in range(3)]
    same = stats.seed_image_bootstrap({"a": base, "b": base}, draws=200)
    iv = stats.interval(0.0, same["a"] - same["b"])
    assert (iv["lo"], iv["hi"], iv["excludes_zero"]) == (0.0, 0.0, False)
    # b: a's hits plus every third miss turned into a hit -> always better, never worse
    better = []
    for hits, counted in base:
        flip = counted & ~hits & (np.arange(hits.size).reshape(hits.shape) % 3 == 0)
        better.append((hits | flip, counted))
    s = stats.seed_image_bootstrap({"a": base, "b": better}, draws=200)
    iv = stats.interval(1.0, s["b"] - s["a"])
    assert iv["lo"] > 0 and iv["excludes_zero"]


def test_ratio_interval_brackets_the_estimate_and_narrows_with_more_images():
    rng = np.random.default_rng(3)
    small = rng.random(40) < 0.6
    large = rng.random(4000) < 0.6
    est, lo, hi = stats.ratio_interval(small.astype(float), np.ones(40))
    assert lo <= est <= hi and est == pytest.approx(100 * small.mean())
    _, lo2, hi2 = stats.ratio_interval(large.astype(float), np.ones(4000))
    assert hi2 - lo2 < (hi - lo) / 4


def test_mismatched_groups_are_refused():
    rng = np.random.default_rng(4)
    with pytest.raises(ValueError, match="other seeds or images"):
        stats.seed_image_bootstrap({"a": [_runs(rng)], "b": [_runs(rng), _runs(rng)]})


def test_cluster_bootstrap_draws_whole_clusters():
    rng = np.random.default_rng(5)
    clusters = np.array([3, 3, 7, 7, 7, 9])
    counts = stats.cluster_counts(clusters, draws=200, rng=rng)
    # every image of a cluster appears as often as the cluster was drawn; 3 clusters drawn per row
    assert (counts[:, 0] == counts[:, 1]).all() and (counts[:, 2] == counts[:, 4]).all()
    assert (counts[:, [0, 2, 5]].sum(axis=1) == 3).all()
    again = stats.cluster_counts(clusters, draws=200, rng=np.random.default_rng(5))
    direct = np.random.default_rng(5).multinomial(3, np.full(3, 1 / 3), size=200)[:, [0, 0, 1, 1, 1, 2]]
    np.testing.assert_array_equal(again, direct)
