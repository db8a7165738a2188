"""scripts/label_rounds.py: per-round label accuracy of a pseudo-label run, against a direct count."""

import numpy as np
import pytest

from da_pose.adapt.pseudo_labels import PseudoLabels
from da_pose.data.manifest import parse_data_spec
from tests.conftest import load_script


def write_round(run_dir, index, keypoints, kept):
    n, k = kept.shape
    conf = np.ones((n, k), np.float32)
    PseudoLabels(keypoints.astype(np.float32), conf, kept, keypoints.astype(np.float32), conf).save(
        run_dir / "pseudo_labels" / f"round_{index:02d}.pt")


def test_rounds_fixed_broken_and_bands_match_a_direct_count(tiny_benchmark, tmp_path, capsys):
    script = load_script("scripts/label_rounds.py")
    spec = f"{tiny_benchmark}#target"
    records = parse_data_spec(spec, split="train")
    gt = np.stack([r.keypoints for r in records]).astype(np.float64)
    visible = gt[..., 2] > 0
    n, k = visible.shape
    far = gt[..., :2] + 1000.0  # certainly wrong
    # round 0: the first half of the images right, the rest wrong; round 1: every label right
    # but the first image's, which breaks
    first = np.where(np.arange(n)[:, None, None] < n // 2, gt[..., :2], far)
    last = gt[..., :2].copy()
    last[0] = far[0]
    kept = np.zeros((n, k), bool)
    kept[: n // 2] = True
    run = tmp_path / "run"
    write_round(run, 0, first, kept)
    write_round(run, 1, last, kept)
    out = script.run_rounds(run, script.target_truth(records), [0.1, 0.2])
    counted = visible.sum(1)
    acc0 = 100.0 * counted[: n // 2].sum() / counted.sum()
    assert out["rounds"][0]["acc_all"] == pytest.approx(acc0)
    assert out["rounds"][0]["acc_kept"] == pytest.approx(100.0)
    assert out["rounds"][1]["acc_all"] == pytest.approx(100.0 * counted[1:].sum() / counted.sum())
    assert out["fixed"] == pytest.approx(100.0)  # every wrong label of round 0 is right in round 1
    assert out["broken"] == pytest.approx(100.0 * counted[0] / counted[: n // 2].sum())
    assert sum(out["band_share"]) == pytest.approx(100.0)
    # the bands split the visible joints by their distance to the frame edge
    # by hand: the distance of each visible joint to the nearest frame edge, in crop sides
    from PIL import Image

    from da_pose.eval.pck import crop_normalizer

    w, h = Image.open(records[0].image_path).size
    side = np.asarray(crop_normalizer([r.side for r in records]))[:, None]
    x, y = gt[..., 0], gt[..., 1]
    edges = np.minimum(np.minimum(x, w - x), np.minimum(y, h - y)) / side
    near = visible & (edges < 0.1)
    assert out["band_share"][0] == pytest.approx(100.0 * near.sum() / visible.sum())
    assert script.main(["--data", spec, "--runs", str(run), str(run), "--bands", "0.1,0.2"]) == 0
    text = capsys.readouterr().out
    assert "(2 runs)" in text and "| 1 |" in text and "edge >= 0.2 crop sides" in text


def test_a_folder_without_rounds_or_of_other_data_is_one_error_line(tiny_benchmark, tmp_path, capsys):
    from da_pose.errors import run_script

    script = load_script("scripts/label_rounds.py")
    spec = f"{tiny_benchmark}#target"
    assert run_script(script.main, ["--data", spec, "--runs", str(tmp_path)]) == 1
    assert "no pseudo_labels/round_XX.pt" in capsys.readouterr().err
    write_round(tmp_path, 0, np.zeros((2, 18, 2)), np.ones((2, 18), bool))
    assert run_script(script.main, ["--data", spec, "--runs", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "2 labelled images, but --data has" in err and err.count("\n") == 1
    assert run_script(script.main, ["--data", spec, "--runs", str(tmp_path), "--bands", "x"]) == 1
    assert "--bands 'x'" in capsys.readouterr().err
