"""`compare` on a real SQLite MLflow store holding a few hand-made runs."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from da_pose.eval import compare as jobs
from da_pose.data.skeleton import GROUPS, JOINTS
from da_pose.tracking import MlflowTracker


def log_run(uri, name, method, seed, mean, status="FINISHED"):
    tr = MlflowTracker(uri, "cmp", name, tags={"method": method, "backbone": "hourglass", "seed": str(seed)})
    if mean is not None:
        metrics = {f"target_test/pck@0.05_crop/{n}": mean for n in list(JOINTS) + list(GROUPS)}
        metrics["target_test/pck@0.05_crop/mean"] = mean
        metrics["target_test/pck@0.05_crop/eye"] = mean + 1.0
        tr.log_metrics(metrics, step=5)
    tr.end(status)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    d = tmp_path_factory.mktemp("cmp")
    uri = f"sqlite:///{d}/mlruns.db"
    log_run(uri, "src0", "source_only", 0, 40.0)
    log_run(uri, "src1", "source_only", 1, 44.0)
    log_run(uri, "cc0", "ccssl", 0, 50.0)
    log_run(uri, "cc1", "ccssl", 1, 54.0)
    log_run(uri, "orc0", "oracle", 0, 62.0)
    log_run(uri, "ws-broken", "wscda", 0, 99.0, status="FAILED")
    log_run(uri, "ws-nometrics", "wscda", 1, None)
    return d, uri


def test_summary_mean_std_and_gap(store):
    _, uri = store
    done, other = jobs.collect_runs("cmp", uri)
    assert sorted(r["name"] for r in done) == ["cc0", "cc1", "orc0", "src0", "src1"]
    assert sorted((r["name"], r["status"]) for r in other) == [("ws-broken", "FAILED"), ("ws-nometrics", "FINISHED")]
    rows = {r["method"]: r for r in jobs.summarize_runs(done)}
    assert list(rows) == ["source_only", "ccssl", "oracle"]
    cc = rows["ccssl"]
    assert cc["n"] == 2 and cc["mean"]["pck@0.05_crop/mean"] == pytest.approx(52.0)
    assert cc["std"]["pck@0.05_crop/mean"] == pytest.approx(np.std([50.0, 54.0], ddof=1))
    # gap recovered = (52 - 42) / (62 - 42)
    assert cc["gap_recovered"] == pytest.approx(0.5)
    assert rows["oracle"]["gap_recovered"] == pytest.approx(1.0)
    assert rows["source_only"]["gap_recovered"] == pytest.approx(0.0)


def test_markdown_table_and_files(store, capsys):
    d, uri = store
    text = jobs.run_compare("cmp", uri, d / "out", log=True)
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("| method"))
    assert header.split("|")[1:4] == [" method ", " backbone ", " runs "]
    group_lines = lines[lines.index("Per joint group (mean ± std over seeds):"):]
    cc = next(line for line in group_lines if line.startswith("| ccssl"))
    assert "| 53.0 ± 2.8 |" in cc  # eye = mean + 1, std of (51, 55)
    assert cc.rstrip().endswith("| 50 % |")
    assert "ws-broken (wscda, hourglass, seed 0): FAILED" in text
    for name in ("compare.md", "compare_group.csv", "compare_joint.csv", "compare.png", "compare.json"):
        assert (d / "out" / name).stat().st_size > 0
    # the summary run is not itself compared
    done, _ = jobs.collect_runs("cmp", uri)
    assert len(done) == 5


def test_readme_block_is_what_the_script_generates(store, tmp_path):
    _, uri = store
    spec = importlib.util.spec_from_file_location("update_readme", Path(__file__).parents[1] / "scripts" / "update_readme_results.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- results:demo start -->\nold\n<!-- results:demo end -->\nrest\n")
    assert mod.main(["--experiment", "cmp", "--tracking-uri", uri, "--readme", str(readme), "--check"]) == 1
    assert mod.main(["--experiment", "cmp", "--tracking-uri", uri, "--readme", str(readme)]) == 0
    assert mod.main(["--experiment", "cmp", "--tracking-uri", uri, "--readme", str(readme), "--check"]) == 0
    body = readme.read_text()
    assert body.startswith("intro\n") and body.endswith("rest\n")
    assert jobs.compare_markdown("cmp", jobs.summarize_runs(jobs.collect_runs("cmp", uri)[0]),
                                 jobs.collect_runs("cmp", uri)[1]) in body


def test_missing_experiment_is_a_clear_error(store):
    _, uri = store
    from da_pose.errors import DaPoseError

    with pytest.raises(DaPoseError, match="no MLflow experiment 'nope'"):
        jobs.collect_runs("nope", uri)


def test_a_missing_store_is_an_error_and_is_not_created(tmp_path):
    from da_pose.errors import TrackingError

    uri = f"sqlite:///{tmp_path / 'typo.db'}"
    with pytest.raises(TrackingError, match=r"no MLflow store at .*typo.db"):
        jobs.collect_runs("any", uri)
    assert not (tmp_path / "typo.db").exists()


# ------------------------------------------------------------------------ paired intervals


def log_per_image_run(uri, tmp, name, method, seed, hits, counted, ids, shift=""):
    from da_pose.eval.target import write_per_image

    tags = {"method": method, "backbone": "hourglass", "seed": str(seed), "selection": "last"}
    if shift:
        tags["shift"] = shift
    tr = MlflowTracker(uri, "paired", name, tags=tags)
    from da_pose.eval import stats

    tr.log_metrics({"target_test/pck@0.05_crop/mean": float(stats.mean_pck(hits, counted))}, step=1)
    tr.log_artifact(write_per_image(tmp / name / "per_image.npz", {"hits": hits, "counted": counted, "ids": ids}),
                    "eval")
    tr.end("FINISHED")


@pytest.fixture(scope="module")
def paired_store(tmp_path_factory):
    d = tmp_path_factory.mktemp("paired")
    uri = f"sqlite:///{d}/mlruns.db"
    rng = np.random.default_rng(0)
    n, k = 60, 18
    ids = np.array([f"{i // 10}:{i:03d}" for i in range(n)])  # 6 videos; id order = row order (compare sorts)
    counted = rng.random((n, k)) < 0.8
    runs = {}
    for seed in range(3):
        base = (rng.random((n, k)) < 0.4) & counted
        better = base | ((rng.random((n, k)) < 0.4) & counted)
        best = better | ((rng.random((n, k)) < 0.5) & counted)
        for method, hits in (("source_only", base), ("plain_pl", better), ("oracle", best)):
            # the plain_pl run stores its images in another order: compare must align them by id
            perm = rng.permutation(n) if method == "plain_pl" else np.arange(n)
            log_per_image_run(uri, d, f"{method}_s{seed}", method, seed, hits[perm], counted[perm], ids[perm])
            runs[method, seed] = (hits, counted)
    return d, uri, runs


def test_paired_intervals_equal_a_direct_computation(paired_store):
    from da_pose.eval import stats

    d, uri, runs = paired_store
    rows, _ = jobs.summarize_experiment("paired", uri, d / "cache", draws=300, unit="image")
    row = {r["method"]: r for r in rows}["plain_pl"]
    groups = {m: [runs[m, s] for s in range(3)] for m in ("plain_pl", "source_only", "oracle")}
    samples = stats.seed_image_bootstrap(groups, draws=300, seed=0)
    point = {m: np.mean([stats.mean_pck(*runs[m, s]) for s in range(3)]) for m in groups}
    lo, hi = stats.percentile_interval(samples["plain_pl"] - samples["source_only"])
    vs = row["paired"]["vs_source"]
    assert vs["est"] == pytest.approx(point["plain_pl"] - point["source_only"])
    assert (vs["lo"], vs["hi"]) == (pytest.approx(lo), pytest.approx(hi))
    assert vs["excludes_zero"] and vs["seeds"] == 3
    # gap recovered uses its own draw over the three methods
    s3 = stats.seed_image_bootstrap({m: groups[m] for m in ("plain_pl", "source_only", "oracle")}, draws=300)
    ratio = (s3["plain_pl"] - s3["source_only"]) / (s3["oracle"] - s3["source_only"])
    gap = row["paired"]["gap"]
    assert (gap["lo"], gap["hi"]) == (pytest.approx(np.quantile(ratio, 0.025)), pytest.approx(np.quantile(ratio, 0.975)))
    assert gap["est"] == pytest.approx((point["plain_pl"] - point["source_only"]) / (point["oracle"] - point["source_only"]))
    assert row["paired"]["vs_reference"] is None  # plain_pl is the reference itself


def test_paired_table_columns_and_a_run_without_per_image_results(paired_store, tmp_path):
    d, uri, _ = paired_store
    text = jobs.run_compare("paired", uri, tmp_path / "out", log=False, draws=200, unit="image")
    header = next(line for line in text.splitlines() if line.startswith("| method"))
    assert "Δ source_only [95 % CI]" in header and "Δ plain_pl [95 % CI]" in header and "gap recovered" in header
    orc = next(line for line in text.splitlines() if line.startswith("| oracle"))
    cells = [c.strip() for c in orc.split("|")[1:-1]]
    assert cells[3] == "last" and cells[6] == "yes" and cells[8] == "yes"  # oracle separates from both
    # the older store's runs carry no per-image results: their paired cells are "-", not an error
    old_d = d / "old"
    old_d.mkdir(exist_ok=True)
    uri_old = f"sqlite:///{old_d}/mlruns.db"
    log_run(uri_old, "src0", "source_only", 0, 40.0)
    log_run(uri_old, "cc0", "ccssl", 0, 50.0)
    rows, _ = jobs.summarize_experiment("cmp", uri_old, old_d / "cache", draws=100)
    assert {r["method"]: r["paired"]["vs_source"] for r in rows}["ccssl"] is None


def test_criteria_rank_agreement_from_metric_histories(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlruns.db"
    for seed, sign in ((0, 1.0), (1, -1.0)):
        tr = MlflowTracker(uri, "crit", f"cc{seed}", tags={"method": "ccssl", "backbone": "hourglass",
                                                           "seed": str(seed)})
        for step, val in ((10, 50.0), (20, 55.0), (30, 52.0), (40, 60.0)):
            tr.log_metrics({"target_val/pck@0.05_crop/mean": val, "criteria/confidence": sign * val,
                            "criteria/flip_agreement": 1.0}, step=step)
        tr.log_metrics({"target_test/pck@0.05_crop/mean": 50.0}, step=40)
        tr.end("FINISHED")
    rows, _ = jobs.summarize_experiment("crit", uri, tmp_path / "cache", draws=100)
    got = rows[0]["criteria"]
    assert got["criteria/confidence"] == pytest.approx(0.0)  # +1 and -1 over the two seeds
    assert np.isnan(got["criteria/flip_agreement"])  # constant: no ranking
    text = jobs.compare_markdown("crit", rows, [])
    assert "Label-free checkpoint criteria" in text and "| ccssl | hourglass | - | 2 | 0.0 | - | - |" in text


def test_video_bootstrap_resamples_whole_videos(paired_store):
    from da_pose.eval import stats

    d, uri, runs = paired_store
    rows, _ = jobs.summarize_experiment("paired", uri, d / "cache", draws=300, unit="video")
    vs = {r["method"]: r for r in rows}["plain_pl"]["paired"]["vs_source"]
    groups = {m: [runs[m, s] for s in range(3)] for m in ("plain_pl", "source_only")}
    videos = np.arange(60) // 10
    samples = stats.seed_image_bootstrap(groups, draws=300, seed=0, clusters=videos)
    lo, hi = stats.percentile_interval(samples["plain_pl"] - samples["source_only"])
    assert (vs["lo"], vs["hi"]) == (pytest.approx(lo), pytest.approx(hi))
    image = {r["method"]: r for r in jobs.summarize_experiment("paired", uri, d / "cache", draws=300,
                                                                unit="image")[0]}["plain_pl"]["paired"]["vs_source"]
    assert vs["est"] == pytest.approx(image["est"])  # same point estimate, another interval


def test_selection_column_names_a_reported_teacher():
    from da_pose.eval.compare import selection_label

    assert selection_label({}) == "last"  # runs from before the tag: their student
    assert selection_label({"selection": "target_val", "reported_network": "student"}) == "target_val"
    assert selection_label({"selection": "last", "reported_network": "teacher"}) == "last, teacher"


def test_every_method_is_paired_with_the_control_per_shift(tmp_path):
    from da_pose.eval import stats
    from da_pose.eval.compare import compare_markdown, control_summary

    uri = f"sqlite:///{tmp_path}/mlruns.db"
    rng = np.random.default_rng(1)
    n, k = 40, 18
    ids = np.array([f"{i // 8}:{i:03d}" for i in range(n)])
    counted = rng.random((n, k)) < 0.8
    runs = {}
    for seed in range(2):
        base = (rng.random((n, k)) < 0.4) & counted
        ext = base | ((rng.random((n, k)) < 0.05) & counted)
        better = base | ((rng.random((n, k)) < 0.4) & counted)
        for method, hits in (("source_only", base), ("source_only_ext", ext), ("plain_pl", better)):
            log_per_image_run(uri, tmp_path, f"{method}_s{seed}", method, seed, hits, counted, ids, shift="pose")
            runs[method, seed] = (hits, counted)
    rows, _ = jobs.summarize_experiment("paired", uri, tmp_path / "cache", draws=300, unit="image")
    by = {r["method"]: r for r in rows}
    groups = {m: [runs[m, s] for s in range(2)] for m in ("plain_pl", "source_only_ext")}
    samples = stats.seed_image_bootstrap(groups, draws=300, seed=0)
    lo, hi = stats.percentile_interval(samples["plain_pl"] - samples["source_only_ext"])
    vs = by["plain_pl"]["paired"]["vs_control"]
    assert (vs["lo"], vs["hi"]) == (pytest.approx(lo), pytest.approx(hi)) and vs["lo"] > 0
    # the baselines are not paired with the control: only the adaptation methods are
    assert by["source_only"]["paired"]["vs_control"] is None and by["source_only_ext"]["paired"]["vs_control"] is None
    headers, table = control_summary(rows)
    assert headers == ["method", "backbone", "pose"] and [r[0] for r in table] == ["plain_pl"]
    assert table[0][2] == f"{vs['est']:+.1f} [{lo:+.1f}, {hi:+.1f}] (above)"
    assert "**Δ source_only_ext per shift**" in compare_markdown("paired", rows, [], by="shift", unit="image")


def test_a_diagnostic_run_is_a_row_of_its_own(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlruns.db"
    log_run(uri, "pl0", "plain_pl", 0, 50.0)
    tr = MlflowTracker(uri, "cmp", "pl0-vis", tags={"method": "plain_pl", "backbone": "hourglass", "seed": "0",
                                                   "diagnostic": "target_visibility"})
    tr.log_metrics({"target_test/pck@0.05_crop/mean": 55.0}, step=1)
    tr.end("FINISHED")
    rows = jobs.summarize_runs(jobs.collect_runs("cmp", uri)[0])
    assert {r["method"]: r["mean"]["pck@0.05_crop/mean"] for r in rows} == {
        "plain_pl": 50.0, "plain_pl [target_visibility]": 55.0}
