"""`compare --by labels` on a real SQLite MLflow store of hand-made semi-supervised runs."""

import numpy as np
import pytest

from da_pose.eval import compare, labels_curve
from da_pose.eval.target import write_per_image
from da_pose.tracking import MlflowTracker
from tests.conftest import call

N, K = 40, 18
# (method, data.target_labels, labelled fraction, share of joints hit)
RUNS = [("source_only", "", "", 0.30), ("oracle", "", "", 0.70),
        ("oracle", "0.05", "0.05", 0.40), ("oracle", "0.1", "0.1", 0.50),
        ("ccssl", "", "", 0.45), ("ccssl", "0.05", "0.05", 0.60), ("ccssl", "0.1", "0.1", 0.75),
        ("mean_teacher", "0.05", "0.05", 0.55)]


def log_labels_run(uri, tmp, method, labels, fraction, share, seed):
    rng = np.random.default_rng(seed)
    counted = np.ones((N, K), bool)
    hits = rng.random((N, K)) < share
    tags = {"method": method, "backbone": "hourglass", "seed": str(seed), "shift": "pose"}
    if labels:
        tags |= {"target_labels": labels, "target_labels_fraction": fraction, "target_labels_count": "3"}
    name = f"{method}_{labels or 'none'}_s{seed}"
    tr = MlflowTracker(uri, "labels", name, tags=tags)
    tr.log_metrics({"target_test/pck@0.05_crop/mean": float(100 * hits.mean())}, step=1)
    ids = np.array([f"{i // 8}:{i:03d}" for i in range(N)])
    tr.log_artifact(write_per_image(tmp / name / "per_image.npz", {"hits": hits, "counted": counted, "ids": ids}),
                    "eval")
    tr.end("FINISHED")


@pytest.fixture(scope="module")
def labels_store(tmp_path_factory):
    d = tmp_path_factory.mktemp("labels")
    uri = f"sqlite:///{d}/mlruns.db"
    for seed in (0, 1):
        for method, labels, fraction, share in RUNS:
            log_labels_run(uri, d, method, labels, fraction, share, seed)
    return d, uri


def test_runs_of_other_labelled_subsets_are_rows_of_their_own(labels_store):
    _, uri = labels_store
    rows = compare.summarize_runs(compare.collect_runs("labels", uri)[0])
    names = [compare.row_name(r) for r in rows]
    assert len(names) == len(set(names)) == len(RUNS) and all(r["n"] == 2 for r in rows)
    by = {compare.row_name(r): r for r in rows}
    assert by["ccssl @ 0.05 labels"]["labels_fraction"] == 0.05 and by["ccssl"]["labels_fraction"] == 0.0
    assert by["oracle"]["labels_fraction"] == 1.0  # the oracle without a subset used every label
    # gap recovered is measured against the references without labels
    assert by["ccssl"]["gap_recovered"] == pytest.approx(
        (by["ccssl"]["mean"]["pck@0.05_crop/mean"] - by["source_only"]["mean"]["pck@0.05_crop/mean"])
        / (by["oracle"]["mean"]["pck@0.05_crop/mean"] - by["source_only"]["mean"]["pck@0.05_crop/mean"]))


def test_labels_table_plot_and_floor(labels_store, capsys):
    d, uri = labels_store
    out = d / "out"
    code, stdout, err = call(["compare", "--experiment", "labels", "--tracking-uri", uri, "--out", str(out),
                              "--by", "labels", "--draws", "200"], capsys)
    assert code == 0, err
    for name in ("compare_labels.md", "compare_labels.csv", "compare_labels.png", "compare.md"):
        assert (out / name).stat().st_size > 0
    text = (out / "compare_labels.md").read_text()
    header = next(line for line in text.splitlines() if line.startswith("| method"))
    assert [c.strip() for c in header.strip("|").split("|")] == ["method", "0 %", "5 %", "10 %", "all"]
    lines = {line.split("|")[1].strip(): [c.strip() for c in line.strip().strip("|").split("|")[1:]]
             for line in text.split("Δ supervised only")[0].splitlines()
             if line.startswith("| ") and not line.startswith("| method")}
    rows = compare.summarize_runs(compare.collect_runs("labels", uri)[0])
    mean = {compare.row_name(r): r["mean"]["pck@0.05_crop/mean"] for r in rows}
    # the floor: source-only at 0, the oracle on the subset at 5 and 10 %, the oracle on all labels at "all"
    floor = next(v for k, v in lines.items() if k == labels_curve.FLOOR)
    assert floor[0].startswith(f"{mean['source_only']:.1f}") and floor[1].startswith(f"{mean['oracle @ 0.05 labels']:.1f}")
    assert floor[3].startswith(f"{mean['oracle']:.1f}")
    assert lines["ccssl"][2].startswith(f"{mean['ccssl @ 0.1 labels']:.1f}") and lines["mean_teacher"][0] == "-"
    # paired to the floor: ccssl at 5 % is clearly above the oracle trained on the same 5 %
    delta = text.split("Δ supervised only")[1]
    cc = next(line for line in delta.splitlines() if line.startswith("| ccssl"))
    est = float(cc.split("|")[3].split()[0])
    assert est == pytest.approx(mean["ccssl @ 0.05 labels"] - mean["oracle @ 0.05 labels"], abs=0.05)
    assert "At 10 % of the target labels, ccssl matches the oracle" in text
    assert "ccssl @ 0.05 labels" in (out / "compare.md").read_text()
    assert "PCK against labels" in stdout


def test_readme_labels_block_is_generated(labels_store, tmp_path):
    import importlib.util
    from pathlib import Path

    _, uri = labels_store
    path = Path(__file__).parents[1] / "scripts" / "update_readme_results.py"
    spec = importlib.util.spec_from_file_location("update_readme_labels", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    readme = tmp_path / "README.md"
    readme.write_text("<!-- results:labels start -->\n<!-- results:labels end -->\n")
    assert mod.main(["--experiment", "labels", "--tracking-uri", uri, "--readme", str(readme), "--block", "labels",
                     "--by", "labels", "--plot", str(tmp_path / "img" / "labels.png")]) == 0
    assert (tmp_path / "img" / "labels.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    body = readme.read_text()
    assert "**PCK against labels (hourglass, shift pose)**" in body and "| supervised only |" in body
    assert "matches the oracle" in body and "--matrix labels" in body
