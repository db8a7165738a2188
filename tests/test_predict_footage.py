"""``da-pose predict`` on footage: a generated video where the toy animal walks across a large frame.

The video pastes a toy source animal, 150 px wide, onto a 480 x 360 background along a known
path, so every joint is known in frame pixels. Boxes, output files and errors are checked with an
untrained model. The accuracy test (slow) trains a tiny model (about a minute on one busy core) on
crops of the toy source images, at scales from a tight crop to one three times wider, as a
top-down model is: on the whole frame it sees the animal at a quarter of its input (few heatmap
pixels per limb); the two-pass crop and the tracked crop show it the animal at the scale it
knows, and the test asserts the error at least halves."""

import csv
import json

import cv2
import numpy as np
import pytest
import torch

from da_pose import checkpoint, run
from da_pose.boxes import crop_of_box
from da_pose.config import dump_yaml, load_config
from da_pose.data.loaders import domain_records, input_normalisation, make_codec
from da_pose.data.skeleton import JOINTS
from da_pose.data.transforms import apply_affine, crop_affine
from da_pose.models.factory import build_model
from tests.conftest import call, tiny_overrides

FRAME_W, FRAME_H, FRAMES, FPS, PATCH = 480, 360, 12, 8, 150
STEPS = 400  # training steps of the tiny model (~40 s on one busy core)


def _training_crops(records, size, rng, n):
    """n random crops (scale 0.9 .. 3.2 of the record's side, small shifts) and their keypoints."""
    images = [cv2.imread(r.image_path) for r in records]
    xs, kps = [], []
    for _ in range(n):
        i = int(rng.integers(len(records)))
        rec = records[i]
        scale = float(np.exp(rng.uniform(np.log(0.9), np.log(3.2))))
        a = crop_affine(rec.center, rec.side, size, scale=scale, shift=rng.uniform(-0.08, 0.08, 2))
        xs.append(cv2.warpAffine(images[i], a, (size, size), flags=cv2.INTER_LINEAR))
        kp = rec.keypoints.copy()
        kp[:, :2] = apply_affine(a, kp[:, :2])
        kps.append(kp)
    return xs, kps


def _config(root, tmp):
    return load_config(None, tiny_overrides(root, tmp, "footage") + ["model.features=24"])


@pytest.fixture(scope="session")
def records(tiny_benchmark, tmp_path_factory):
    """The toy source records with most joints visible (the animal of the video, the training set)."""
    cfg = _config(tiny_benchmark, tmp_path_factory.mktemp("records"))
    return [r for r in domain_records(cfg, "source", "train") if (r.keypoints[:, 2] > 0).sum() >= 12]


@pytest.fixture(scope="session")
def untrained(tiny_benchmark, tmp_path_factory):
    """A seeded, untrained checkpoint: enough where only the crops, files and errors matter."""
    tmp = tmp_path_factory.mktemp("untrained")
    cfg = _config(tiny_benchmark, tmp)
    torch.manual_seed(0)
    path = tmp / "model.pt"
    checkpoint.save(path, {"model": build_model(cfg.model, len(JOINTS)).state_dict(), "arch": run.arch_of(cfg),
                           "config": dump_yaml(cfg)})
    return path


@pytest.fixture(scope="session")
def trained(tiny_benchmark, records, tmp_path_factory):
    """A tiny model trained on source crops (about a minute on one busy core)."""
    tmp = tmp_path_factory.mktemp("predict_model")
    cfg = _config(tiny_benchmark, tmp)
    codec, size = make_codec(cfg), cfg.data.input_size
    mean, std = (np.asarray(v, np.float32) for v in input_normalisation(cfg))
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: one thread is several times faster on a shared machine
    model = build_model(cfg.model, len(JOINTS))
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    rng = np.random.default_rng(0)
    for _ in range(STEPS):
        crops, kps = _training_crops(records, size, rng, 12)
        x = np.stack([((cv2.cvtColor(c, cv2.COLOR_BGR2RGB) / 255.0 - mean) / std).transpose(2, 0, 1) for c in crops])
        targets, weights = zip(*(codec.encode(k) for k in kps))
        target, weight = torch.from_numpy(np.stack(targets)), torch.from_numpy(np.stack(weights))
        out = model(torch.from_numpy(x).float())
        loss = sum(((hm - target) ** 2 * weight[..., None, None]).mean() for hm in out.heatmaps)
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.set_num_threads(threads)
    path = tmp / "model.pt"
    checkpoint.save(path, {"model": model.state_dict(), "arch": run.arch_of(cfg), "config": dump_yaml(cfg)})
    return path


def make_video(records, path, fourcc="MJPG"):
    """The animal of records[0] (its crop, PATCH px) walking left to right across a textured
    background; returns the true joints (FRAMES, K, 3) in frame pixels (visible flag kept)."""
    rng = np.random.default_rng(1)
    small = rng.integers(60, 200, (9, 12, 3)).astype(np.uint8)
    background = cv2.resize(small, (FRAME_W, FRAME_H), interpolation=cv2.INTER_CUBIC)
    rec = records[0]
    a = crop_affine(rec.center, rec.side * 1.1, PATCH)
    patch = cv2.warpAffine(cv2.imread(rec.image_path), a, (PATCH, PATCH), flags=cv2.INTER_AREA)
    kp = rec.keypoints.copy()
    kp[:, :2] = apply_affine(a, kp[:, :2])
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), FPS, (FRAME_W, FRAME_H))
    if not writer.isOpened():
        pytest.skip(f"OpenCV cannot write a {fourcc} video on this machine")
    truth = []
    for t in range(FRAMES):
        x0 = int(10 + t * (FRAME_W - PATCH - 20) / (FRAMES - 1))
        y0 = int(FRAME_H / 2 - PATCH / 2 + 60 * np.sin(t / 3.0))
        frame = background.copy()
        frame[y0:y0 + PATCH, x0:x0 + PATCH] = patch
        writer.write(frame)
        truth.append(kp + np.array([x0, y0, 0], np.float32))
    writer.release()
    return np.stack(truth)


@pytest.fixture(scope="session")
def footage(records, tmp_path_factory):
    path = tmp_path_factory.mktemp("footage") / "walk.avi"
    return path, make_video(records, path)


def _predict(ckpt, video, out, capsys, *extra):
    code, _, err = call(["predict", "--checkpoint", str(ckpt), str(video), "--out", str(out), *extra], capsys)
    assert code == 0, err
    return json.loads((out / "predictions.json").read_text())


def mean_error(data, truth):
    pred = np.stack([np.asarray(p["keypoints"])[:, :2] for p in data["predictions"]])
    vis = truth[..., 2] > 0
    return float(np.linalg.norm(pred - truth[..., :2], axis=-1)[vis].mean())


@pytest.mark.slow
def test_two_pass_crop_and_tracking_beat_the_whole_frame(trained, footage, tmp_path, capsys):
    video, truth = footage
    whole = _predict(trained, video, tmp_path / "whole", capsys, "--crop", "whole")
    auto = _predict(trained, video, tmp_path / "auto", capsys)
    e_whole, e_auto = mean_error(whole, truth), mean_error(auto, truth)
    hows = [p["how"] for p in auto["predictions"]]
    print(f"\nmean joint error (frame px): whole frame {e_whole:.1f}, two-pass + tracking {e_auto:.1f}; "
          f"crops: {hows}")
    assert hows[0] == "two-pass" and hows.count("track") >= FRAMES // 2  # it did track
    assert e_auto < 0.5 * e_whole  # the crop at least halves the error (measured: 61 -> 11 px)
    # the tracked crops follow the animal: each one holds the true joints' centre
    for p, t in zip(auto["predictions"], truth):
        x0, y0, side = p["crop"]
        cx, cy = t[t[:, 2] > 0, :2].mean(axis=0)
        assert x0 < cx < x0 + side and y0 < cy < y0 + side


def test_labelled_video_and_tables(untrained, footage, tmp_path, capsys):
    video, truth = footage
    out = tmp_path / "out"
    data = _predict(untrained, video, out, capsys)
    cap = cv2.VideoCapture(str(out / "walk.mp4"))
    assert cap.isOpened()
    assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(FPS)
    assert (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))) == (FRAME_W, FRAME_H)
    n = 0
    while cap.read()[0]:
        n += 1
    assert n == FRAMES
    assert data["videos"]["walk.avi"] == {"video": "walk.mp4", "fps": FPS, "width": FRAME_W, "height": FRAME_H,
                                          "frames": FRAMES}
    assert not list(out.glob("*.png"))  # PNGs per frame only with --frames
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    assert len(rows) == FRAMES * len(JOINTS)
    assert [(int(r["frame"]), r["joint"]) for r in rows] == [(f, j) for f in range(FRAMES) for j in JOINTS]
    first = np.asarray(data["predictions"][0]["keypoints"])
    got = np.array([[float(r["x"]), float(r["y"]), float(r["confidence"])] for r in rows[:len(JOINTS)]])
    np.testing.assert_allclose(got, first, atol=0.01)


def _boxes(truth):
    """A box per frame: the true joints' box, frame 3 moved 40 px right (a box is used as given)."""
    out = []
    for t, kp in enumerate(truth):
        v = kp[kp[:, 2] > 0, :2]
        x0, y0 = v.min(axis=0)
        w, h = v.max(axis=0) - v.min(axis=0)
        out.append([float(x0) + (40 if t == 3 else 0), float(y0), float(w), float(h)])
    return out


def _check_crops_used(data, boxes):
    for p, box in zip(data["predictions"], boxes):
        (cx, cy), side = crop_of_box(box, 1.25)
        assert p["how"] == "boxes"
        np.testing.assert_allclose(p["crop"], [cx - side / 2, cy - side / 2, side], atol=0.01)


def test_boxes_from_csv_are_the_crops(untrained, footage, tmp_path, capsys):
    video, truth = footage
    boxes = _boxes(truth)
    path = tmp_path / "boxes.csv"
    path.write_text("frame,x,y,w,h\n" + "".join(f"{t},{','.join(map(str, b))}\n" for t, b in enumerate(boxes)))
    _check_crops_used(_predict(untrained, video, tmp_path / "out", capsys, "--boxes", str(path)), boxes)


def test_boxes_from_coco_detections_best_score_wins(untrained, footage, tmp_path, capsys):
    video, truth = footage
    boxes = _boxes(truth)
    dets = [{"image_id": t, "category_id": 1, "bbox": b, "score": 0.9} for t, b in enumerate(boxes)]
    dets += [{"image_id": t, "category_id": 1, "bbox": [0, 0, 30, 30], "score": 0.3} for t in range(FRAMES)]
    path = tmp_path / "dets.json"
    path.write_text(json.dumps(dets))
    data = _predict(untrained, video, tmp_path / "out", capsys, "--boxes", str(path))
    _check_crops_used(data, boxes)


def test_frames_without_a_box_find_their_own(untrained, footage, tmp_path, capsys):
    video, truth = footage
    path = tmp_path / "boxes.csv"
    path.write_text("5,100,100,80,60\n")  # no header; one frame only
    data = _predict(untrained, video, tmp_path / "out", capsys, "--boxes", str(path))
    hows = [p["how"] for p in data["predictions"]]
    assert hows[5] == "boxes" and hows.count("boxes") == 1
    assert data["predictions"][5]["crop"] == [140 - 50, 130 - 50, 100]


@pytest.mark.parametrize("content, expected", [
    (None, "error: boxes file not found: {boxes}"),
    ("frame,x,y,w,h\n0,10,10,50,50\n99,10,10,50,50\n", "error: {boxes}: 1 box(es) for frames no input has, e.g. '99' "
                                                       "(walk.avi: frames 0-11)"),
    ("0,10,10,0,50\n", "error: {boxes}: row 1: bbox must be 4 finite numbers [x, y, w, h] with w, h > 0, "
                       "got ['10', '10', '0', '50']"),
])
def test_bad_boxes_are_one_line_errors(untrained, footage, tmp_path, capsys, content, expected):
    boxes = tmp_path / "boxes.csv"
    if content is not None:
        boxes.write_text(content)
    code, _, err = call(["predict", "--checkpoint", str(untrained), str(footage[0]), "--out", str(tmp_path / "o"),
                         "--boxes", str(boxes)], capsys)
    assert code == 1
    assert err.strip() == expected.format(boxes=boxes)


def test_corrupt_video_is_one_line_error(untrained, tmp_path, capsys):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    code, _, err = call(["predict", "--checkpoint", str(untrained), str(bad), "--out", str(tmp_path / "o")], capsys)
    assert code == 1
    err = err.strip()
    assert err.startswith(f"error: {bad}: ") and "\n" not in err and ("cannot open" in err or "no frame" in err)


def test_checkpoint_from_an_mlflow_run(untrained, footage, mlflow_template, tmp_path, capsys):
    """``--checkpoint runs:/<id>/...`` is downloaded from ``--tracking-uri``, as for evaluate."""
    from mlflow.tracking import MlflowClient

    from tests.conftest import fresh_store

    uri = fresh_store(mlflow_template, tmp_path / "mlruns.db")
    client = MlflowClient(uri)
    exp = client.create_experiment("p", artifact_location=(tmp_path / "art").as_uri())
    run_id = client.create_run(exp).info.run_id
    client.log_artifact(run_id, str(untrained), "checkpoint")
    ref = f"runs:/{run_id}/checkpoint/{untrained.name}"
    data = _predict(ref, footage[0], tmp_path / "out", capsys, "--tracking-uri", uri)
    assert data["checkpoint"] == ref and len(data["predictions"]) == FRAMES
