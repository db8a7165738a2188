"""Report tables and plots on tiny metric dicts."""

import csv
import json
import math

import numpy as np
import pytest

from da_pose.data import skeleton
from da_pose.errors import ConfigError
from da_pose.eval import pck, report

JOINTS = ("a", "b", "c")
GROUPS = {"front": (0, 1), "back": (2,)}
P = "pck@0.05_crop"


def metrics(a, b, c, front, back, mean, prefix=P):
    return {
        f"{prefix}/a": a, f"{prefix}/b": b, f"{prefix}/c": c,
        f"{prefix}/front": front, f"{prefix}/back": back, f"{prefix}/mean": mean,
    }


RUNS = {
    "source_only": metrics(50.0, 62.54, math.nan, 56.0, math.nan, 56.27),
    "ccssl": metrics(75.0, 80.0, 10.0, 77.5, 10.0, 55.0),
}


def test_rows():
    rows = report.per_joint_rows(RUNS["ccssl"], P, joints=JOINTS, groups=GROUPS)
    assert rows == [
        {"joint": "a", "group": "front", "value": 75.0},
        {"joint": "b", "group": "front", "value": 80.0},
        {"joint": "c", "group": "back", "value": 10.0},
    ]
    groups = report.per_group_rows(RUNS["ccssl"], P, groups=GROUPS)
    assert groups == [{"group": "front", "value": 77.5}, {"group": "back", "value": 10.0}]
    # A metric the run did not log reads as NaN.
    assert math.isnan(report.per_joint_rows({}, P, joints=JOINTS, groups=GROUPS)[0]["value"])
    # Default: the 18 TigDog joints with their published groups.
    default = report.per_joint_rows({}, P)
    assert [r["joint"] for r in default] == list(skeleton.JOINTS)
    assert default[7]["group"] == "hip"


def test_metrics_table_and_exact_markdown():
    headers, rows = report.metrics_table(RUNS, P, kind="joint", joints=JOINTS, groups=GROUPS)
    assert headers == ["joint", "source_only", "ccssl"]
    assert [r[0] for r in rows] == ["a", "b", "c", "mean"]
    assert rows[1][1:] == [62.54, 80.0]
    assert math.isnan(rows[2][1])
    text = report.markdown_table(headers, rows)
    assert text == (
        "| joint | source_only | ccssl |\n"
        "|:---|---:|---:|\n"
        "| a | 50.0 | 75.0 |\n"
        "| b | 62.5 | 80.0 |\n"
        "| c | - | 10.0 |\n"
        "| mean | 56.3 | 55.0 |\n"
    )
    headers, rows = report.metrics_table(RUNS, P, kind="group", joints=JOINTS, groups=GROUPS)
    assert headers[0] == "group" and [r[0] for r in rows] == ["front", "back", "mean"]
    with pytest.raises(ConfigError, match="joint"):
        report.metrics_table(RUNS, P, kind="limb", joints=JOINTS, groups=GROUPS)


def test_markdown_cells():
    rows = [["x|y", 3, np.float32(0.04)], ["z", np.int64(12), float("nan")]]
    text = report.markdown_table(["name", "n", "v"], rows)
    assert text.splitlines()[2:] == ["| x\\|y | 3 | 0.0 |", "| z | 12 | - |"]
    with pytest.raises(ValueError):
        report.markdown_table(["a", "b"], [[1]])


def test_csv_reads_back(tmp_path):
    headers, rows = report.metrics_table(RUNS, P, joints=JOINTS, groups=GROUPS)
    path = report.write_csv(tmp_path / "sub" / "table.csv", headers, rows)
    with open(path, newline="") as f:
        back = list(csv.reader(f))
    assert back[0] == headers
    assert [r[0] for r in back[1:]] == ["a", "b", "c", "mean"]
    values = np.array([[float(v) for v in r[1:]] for r in back[1:]])
    np.testing.assert_array_equal(values, np.array([r[1:] for r in rows], dtype=float))
    # No temp file left behind.
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["table.csv"]


def test_json_is_strict_and_atomic(tmp_path):
    obj = {"metrics": RUNS["source_only"], "counts": np.array([3, 0]), "n": np.int64(5)}
    path = report.write_json(tmp_path / "m.json", obj)
    text = open(path).read()
    assert "NaN" not in text
    back = json.loads(text)
    assert back["metrics"][f"{P}/c"] is None
    assert back["metrics"][f"{P}/b"] == 62.54
    assert back["counts"] == [3, 0] and back["n"] == 5
    report.write_json(path, {"again": 1})  # overwrite in place
    assert json.loads(open(path).read()) == {"again": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


def test_bar_chart_writes_png(tmp_path):
    errors = {"ccssl": metrics(2.0, 1.5, math.nan, 1.0, 0.5, 1.2)}
    for kind in ("joint", "group"):
        path = report.bar_chart(
            RUNS, P, tmp_path / f"{kind}.png", kind=kind, title="toy", errors=errors,
            joints=JOINTS, groups=GROUPS,
        )
        data = open(path, "rb").read()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["group.png", "joint.png"]


def test_summary_to_table_end_to_end(tmp_path):
    rng = np.random.default_rng(1)
    gt = rng.uniform(0, 256, (8, 18, 2))
    visible = np.ones((8, 18), bool)
    runs = {
        "perfect": pck.pck_summary(gt, gt, visible, np.full(8, 256.0)),
        "off": pck.pck_summary(gt + 20.0, gt, visible, np.full(8, 256.0)),  # 28.3 px > 12.8 px
    }
    headers, rows = report.metrics_table(runs, "pck@0.05_crop", kind="group")
    assert [r[1:] for r in rows] == [[100.0, 0.0]] * (len(skeleton.GROUPS) + 1)
    path = report.bar_chart(runs, "pck@0.05_crop", tmp_path / "bars.png")
    assert open(path, "rb").read(4) == b"\x89PNG"
