"""The tiger joint reordering, end to end: TigDog-format tiger files -> ``da-pose evaluate``.

The tiger's landmark files store the leg groups in another order than the horse's (FACTS section
1). This test writes a tiny tiger set in the real on-disk format (ranges.mat, landmarks/<shot>.mat
with 19 landmarks, %08d.jpg) and evaluates, through the real CLI, a checkpoint whose predictions
are known: a real stacked hourglass whose weights make it a bright-spot detector, every joint's
heatmap peaking at the one white disc drawn in each frame. The disc sits on a different file
landmark in each frame, so the per-joint PCK that ``evaluate`` reports is the share of frames whose
disc sits on that joint's landmark, which the test computes from the .mat contents by joint name
(the mapping is written out here from FACTS, not taken from the loader). Each affected landmark
holds the disc in a different number of frames, so reading the tiger files in horse order, or
swapping left and right, changes the reported table.
"""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from da_pose import checkpoint
from da_pose.cli import main
from da_pose.config import dump_yaml, load_config
from da_pose.data import tigdog
from da_pose.data.manifest import parse_data_spec
from da_pose.models.factory import build_model
from da_pose.run import arch_of

# Model joint name -> 1-based landmark index in a TIGER landmark file (FACTS section 1).
TIGER_LANDMARK = {
    "left_eye": 1, "right_eye": 2, "chin": 3,
    "left_front_hoof": 4, "right_front_hoof": 5, "left_back_hoof": 6, "right_back_hoof": 7,
    "hip": 8,
    "left_front_knee": 15, "right_front_knee": 16, "left_back_knee": 17, "right_back_knee": 18,
    "left_shoulder": 13, "right_shoulder": 14,
    "left_front_elbow": 9, "right_front_elbow": 10, "left_back_elbow": 11, "right_back_elbow": 12,
}
# The horse files store the joints in model order: what a loader that ignored the animal would read.
HORSE_LANDMARK = {name: i + 1 for i, name in enumerate(TIGER_LANDMARK)}

# Landmark (1-based) carrying the white disc -> number of frames. Distinct counts on the knee
# landmarks 15-18 tell the four knees apart (and from the elbows); 10 is an elbow in the tiger
# file and a knee in horse order; 3 (chin) is read alike by both; 19 is dropped by the loader.
DISC_FRAMES = {15: 1, 16: 2, 17: 3, 18: 4, 10: 1, 3: 2, 19: 1}
W, H = 160, 130
GRID = [(x, y) for y in (20, 50, 80, 110) for x in (20, 50, 80, 110, 140)]  # 30 px apart
SMALL = ["data.input_size=128", "data.heatmap_size=32", "model.stacks=1", "model.depth=2",
         "model.features=16", "model.blocks=1", "codec.flip_test=false", "device=cpu"]


def write_tiger(root: Path) -> dict[int, tuple[np.ndarray, int]]:
    """Two shots of tiger frames; returns {global frame: (coords (19, 2), disc landmark 1-based)}."""
    rng = np.random.default_rng(0)
    discs = [lm for lm, n in DISC_FRAMES.items() for _ in range(n)]
    rng.shuffle(discs)
    truth, rows, frame = {}, [], 1
    for shot, count in ((4, 6), (9, len(discs) - 6)):
        coords = np.zeros((count, 19, 2))
        for f in range(count):
            spots = rng.permutation(len(GRID))[:19]  # each landmark on its own grid spot
            coords[f] = np.array(GRID, dtype=float)[spots]
            lm = discs.pop()
            image = np.zeros((H, W, 3), np.uint8)
            cv2.circle(image, tuple(int(v) for v in coords[f, lm - 1]), 4, (255, 255, 255), -1)
            tigdog.write_frame(root, "tiger", frame + f, image, quality=95)
            truth[frame + f] = (coords[f], lm)
        tigdog.write_landmarks(tigdog.landmarks_path(root, "tiger", shot), coords, np.ones((count, 19)))
        rows.append((shot, frame, frame + count - 1))
        frame += count
    tigdog.write_ranges(tigdog.ranges_path(root, "tiger"), rows)
    return truth


def spot_detector(cfg) -> torch.nn.Module:
    """A real hourglass (stacks=1) whose every heatmap is the input's brightness, pooled.

    Stem conv: one channel = mean of R, G, B at the kernel centre (ImageNet-normalised black is
    negative, so after the ReLU only bright pixels stay); every residual branch is zero (the
    residuals pass their input on, via 1x1 projections that carry channel 0 where widths change);
    the head copies channel 0 into all 18 heatmaps. Batch norms keep their identity defaults.
    """
    model = build_model(cfg.model, 18)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.fill_(1.0)
        model.conv1.weight[0, :, 3, 3] = 1.0 / 3
        for name, m in model.named_modules():
            if name.endswith("downsample.0"):
                m.weight[0, 0, 0, 0] = 1.0
        model.fc[0][0].weight[:, 0, 0, 0] = 1.0
        model.score[0].weight[:, 0, 0, 0] = 1.0
    return model


def test_tiger_reordering_end_to_end_through_evaluate(tmp_path, capsys):
    root = tmp_path / "behaviorDiscovery2.0"
    truth = write_tiger(root)
    n = len(truth)

    # 1. The records the CLI evaluates: every joint at the coordinates its landmark has in the file.
    records = parse_data_spec(f"tigdog:{root}", animal="tiger", split="all", strict=True)
    assert sorted(r.frame for r in records) == sorted(truth)
    for rec in records:
        coords, _ = truth[rec.frame]
        for j, name in enumerate(TIGER_LANDMARK):
            np.testing.assert_array_equal(rec.keypoints[j, :2], coords[TIGER_LANDMARK[name] - 1], err_msg=name)
        assert rec.keypoints[:, 2].all()

    # 2. evaluate, the real command, with a checkpoint whose predictions are known.
    cfg = load_config(None, SMALL)
    ckpt = tmp_path / "spot.pt"
    checkpoint.save(ckpt, {"model": spot_detector(cfg).state_dict(), "arch": arch_of(cfg), "config": dump_yaml(cfg)})
    out = tmp_path / "eval"
    main(["evaluate", "--checkpoint", str(ckpt), "--data", f"tigdog:{root}", "--animal", "tiger",
          "--split", "all", "--out", str(out)])
    metrics = json.loads((out / "metrics.json").read_text())

    # The model is what the test says it is: every joint predicted on the frame's disc.
    preds = json.loads((out / "predictions.json").read_text())
    assert len(preds["images"]) == n
    for image, kpts in zip(preds["images"], preds["keypoints"]):
        coords, lm = truth[int(Path(image).stem)]
        side = 1.5 * np.ptp(coords[:18], axis=0).max()
        err = np.linalg.norm(np.asarray(kpts)[:, :2] - coords[lm - 1], axis=1)
        assert err.max() < 0.05 * side, (image, err.max())

    def expected(order):  # per-joint PCK: the share of frames whose disc is on the joint's landmark
        return {name: 100.0 * sum(lm == order[name] for _, lm in truth.values()) / n for name in order}

    want, horse = expected(TIGER_LANDMARK), expected(HORSE_LANDMARK)
    got = {name: metrics[f"pck@0.05_crop/{name}"] for name in TIGER_LANDMARK}
    assert got == pytest.approx(want)
    assert {name: metrics[f"pck@0.05_bbox/{name}"] for name in TIGER_LANDMARK} == pytest.approx(want)
    # The fixture can tell the orders apart (and left from right): a horse-order reading fails.
    assert horse != pytest.approx(want)
    assert want["left_back_knee"] == pytest.approx(300 / n) and want["left_back_elbow"] == 0.0
    assert len({want[k] for k in ("left_front_knee", "right_front_knee", "left_back_knee", "right_back_knee")}) == 4
    # The legacy PCK (integer peaks of the predicted and the target maps, per-batch means) hits
    # on the same joints; its values depend on the batching, so only where it is non-zero is checked.
    legacy = {name for name in TIGER_LANDMARK if metrics[f"pck@0.05_legacy/{name}"] > 0}
    assert legacy == {name for name, v in want.items() if v > 0}
    # The per-joint table written beside metrics.json shows the same numbers on the same rows.
    rows = {line.split("|")[1].strip(): line.split("|")[2].strip()
            for line in (out / "per_joint.md").read_text().splitlines() if line.startswith("| ")}
    assert {name: float(rows[name]) for name in TIGER_LANDMARK} == pytest.approx(want, abs=0.051)
