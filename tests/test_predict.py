"""``da-pose predict`` on image files, a folder and a video: overlays, predictions.json, errors."""

import json

import cv2
import numpy as np
import pytest

from da_pose import checkpoint, run
from da_pose.cli import main
from da_pose.config import dump_yaml, load_config
from da_pose.data.skeleton import JOINTS
from da_pose.models.factory import build_model
from tests.conftest import tiny_overrides


@pytest.fixture
def ckpt(tiny_benchmark, tmp_path):
    """An untrained tiny model saved as a checkpoint (seeded: the test needs no training)."""
    import torch

    torch.manual_seed(0)
    cfg = load_config(None, tiny_overrides(tiny_benchmark, tmp_path, "predict"))
    path = tmp_path / "model.pt"
    checkpoint.save(path, {"model": build_model(cfg.model, len(JOINTS)).state_dict(), "arch": run.arch_of(cfg),
                           "config": dump_yaml(cfg)})
    return path


def image(h, w, seed):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def predict(ckpt, out, *inputs):
    main(["predict", "--checkpoint", str(ckpt), *map(str, inputs), "--out", str(out)])
    return json.loads((out / "predictions.json").read_text())


def check_predictions(data, sizes):
    """sizes: {image name: (h, w)}, in output order."""
    assert data["joints"] == list(JOINTS) and len(JOINTS) == 18
    assert [p["image"] for p in data["predictions"]] == list(sizes)
    for p in data["predictions"]:
        kp = np.asarray(p["keypoints"])
        h, w = sizes[p["image"]]
        assert kp.shape == (18, 3) and np.isfinite(kp).all()
        # whole-frame crop of side max(h, w): decoded points lie inside that square, around the frame
        side = max(h, w)
        assert (kp[:, 0] > (w - side) / 2 - 2).all() and (kp[:, 0] < (w + side) / 2 + 2).all()
        assert (kp[:, 1] > (h - side) / 2 - 2).all() and (kp[:, 1] < (h + side) / 2 + 2).all()


def test_two_image_files(ckpt, tmp_path, capsys):
    sizes = {"wide": (60, 120), "tall": (90, 40)}
    paths = []
    for i, (name, (h, w)) in enumerate(sizes.items()):
        paths.append(tmp_path / f"{name}.jpg")
        cv2.imwrite(str(paths[-1]), image(h, w, i))
    out = tmp_path / "out"
    data = predict(ckpt, out, *paths)
    assert "wrote 2 labelled frames" in capsys.readouterr().out
    check_predictions(data, sizes)
    assert sorted(p.name for p in out.glob("*.png")) == ["tall.png", "wide.png"]
    # an overlay has the original frame's size
    assert cv2.imread(str(out / "wide.png")).shape == (60, 120, 3)


def test_folder_of_images_skips_other_files(ckpt, tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, name in enumerate(["b.png", "a.jpg", "c.bmp"]):
        cv2.imwrite(str(folder / name), image(48, 64, i))
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    data = predict(ckpt, out, folder)
    check_predictions(data, {"a": (48, 64), "b": (48, 64), "c": (48, 64)})
    assert sorted(p.name for p in out.glob("*.png")) == ["a.png", "b.png", "c.png"]


def test_video_file_one_overlay_per_frame_with_frames(ckpt, tmp_path):
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5, (80, 64))
    if not writer.isOpened():
        pytest.skip("OpenCV cannot write an MJPG .avi on this machine")
    for i in range(5):
        writer.write(image(64, 80, i))
    writer.release()
    out = tmp_path / "out"
    data = predict(ckpt, out, video, "--frames")
    names = [f"clip_{i:06d}" for i in range(5)]
    check_predictions(data, {n: (64, 80) for n in names})
    assert sorted(p.name for p in out.glob("*.png")) == [f"{n}.png" for n in names]


def test_keypoints_are_in_original_pixels(ckpt, tmp_path):
    # the same smooth picture at twice the resolution gives the same crop, so the same heatmaps:
    # its keypoints must be the first's mapped by x -> 2x + 0.5 (pixel centres)
    yy, xx = np.mgrid[0:60, 0:120]
    img = np.stack([128 + 100 * np.sin(xx / 9.0), 128 + 100 * np.cos(yy / 7.0),
                    128 + 100 * np.sin((xx + yy) / 11.0)], -1).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "small.png"), img)
    cv2.imwrite(str(tmp_path / "large.png"), cv2.resize(img, (240, 120), interpolation=cv2.INTER_CUBIC))
    data = predict(ckpt, tmp_path / "out", tmp_path / "small.png", tmp_path / "large.png")
    small, large = (np.asarray(p["keypoints"]) for p in data["predictions"])
    assert np.ptp(small[:, 0]) > 10  # not all joints on one point: the check below means something
    np.testing.assert_allclose(large[:, :2], 2 * small[:, :2] + 0.5, atol=0.5)


def test_missing_input_is_one_line_error(ckpt, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["predict", "--checkpoint", str(ckpt), str(tmp_path / "nope.jpg"), "--out", str(tmp_path / "out")])
    assert exc.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err == f"error: input not found: {tmp_path / 'nope.jpg'}"


def test_unreadable_image_is_one_line_error(ckpt, tmp_path, capsys):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"these bytes are not a JPEG")
    with pytest.raises(SystemExit) as exc:
        main(["predict", "--checkpoint", str(ckpt), str(bad), "--out", str(tmp_path / "out")])
    assert exc.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {bad}: not a readable image") and "\n" not in err
