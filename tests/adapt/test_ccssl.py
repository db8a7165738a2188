import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from da_pose.adapt.ccssl import aggregate, predict_views, temporal_refine, video_links
from da_pose.adapt.pseudo_labels import PseudoLabels, curriculum_mask, keep_fraction, label_accuracy
from da_pose.config import CCSSLConfig
from da_pose.data.codec import HeatmapCodec
from da_pose.data.records import PoseRecord
from da_pose.errors import CheckpointError
from da_pose.models.layers import PoseOutput


def record(path="x.jpg", video=-1, frame=-1, kpts=None, side=100.0):
    kpts = np.zeros((18, 3), np.float32) if kpts is None else kpts
    return PoseRecord(str(path), kpts, np.array([50, 50], np.float32), side, np.array([0, 0, 100, 100], np.float32),
                      video=video, frame=frame)


def test_curriculum_keeps_the_scheduled_fraction():
    cfg = CCSSLConfig()
    rng = np.random.default_rng(0)
    conf = rng.random((200, 18))
    fractions = [keep_fraction(cfg, r) for r in range(8)]
    assert fractions == [0.2, 0.4, 0.6, 0.8, 0.8, 0.8, 0.8, 0.8]
    for f in fractions:
        kept = curriculum_mask(conf, f)
        assert kept.mean() == pytest.approx(f, abs=1 / conf.size)
        # the kept ones are the most confident
        assert conf[kept].min() >= conf[~kept].max()


def test_curriculum_ignores_invalid_entries():
    conf = np.array([[0.9, 0.8, 0.1, 0.2]])
    valid = np.array([[True, False, True, True]])
    kept = curriculum_mask(conf, 0.34, valid)
    assert kept.tolist() == [[True, False, False, False]]


def test_video_links_never_cross_videos():
    # video 1: frames 10..12; video 2 continues the global numbering at 13..15; a gap in video 3
    recs = [record(video=2, frame=14), record(video=1, frame=11), record(video=1, frame=10),
            record(video=2, frame=13), record(video=1, frame=12), record(video=2, frame=15),
            record(video=3, frame=20), record(video=3, frame=22), record(video=-1, frame=1), record(video=-1, frame=2)]
    links = video_links(recs)
    assert all(recs[a].video == recs[b].video >= 0 and recs[b].frame == recs[a].frame + 1 for a, b in links)
    pairs = {(recs[a].frame, recs[b].frame) for a, b in links}
    assert pairs == {(10, 11), (11, 12), (13, 14), (14, 15)}


class BlobModel(nn.Module):
    """A 'pose model' whose heatmaps are the first image channel pooled to heatmap resolution:
    perfectly equivariant, so every view warped back must agree with the identity."""

    def __init__(self, stride=4, k=18):
        super().__init__()
        self.stride, self.k = stride, k

    def forward(self, x):
        hm = F.avg_pool2d(x[:, :1], self.stride).repeat(1, self.k, 1, 1)
        return PoseOutput([hm], hm)


def blob_images(centres, size=64, sigma=3.0):
    ys, xs = np.mgrid[0:size, 0:size]
    imgs = [np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * sigma**2)) for cx, cy in centres]
    return torch.tensor(np.stack(imgs), dtype=torch.float32)[:, None].repeat(1, 3, 1, 1)


def test_geometric_views_warp_back_exactly():
    codec = HeatmapCodec(64, 16, sigma=1.0, decode="dark")
    cfg = CCSSLConfig(num_transforms=6, invariance=False, equivariance=True, flip=True)
    centres = [(30.0, 28.0), (36.5, 33.0)]
    images = blob_images(centres)
    mean = torch.zeros(1, 3, 1, 1)
    std = torch.ones(1, 3, 1, 1)
    gen = torch.Generator().manual_seed(3)
    views, flipped = predict_views(BlobModel(), images, codec, cfg, mean, std, gen)
    assert views.shape == (7, 2, 18, 16, 16)
    assert flipped[1:].any() and not flipped[0].any()
    each, _ = codec.decode(views.reshape(14, 18, 16, 16))
    each = each.view(7, 2, 18, 2)
    # every view's peak lands where the identity's does (input pixels; 1/4 heatmap px = 1 px)
    assert (each - each[0:1]).abs().max() < 1.0
    xy, conf = aggregate(views, codec)
    assert torch.allclose(xy[:, 0], torch.tensor(centres), atol=1.0)


def test_agreement_confidence_penalises_disagreement():
    codec = HeatmapCodec(64, 16, sigma=1.0)
    t1, _ = codec.encode_batch(torch.tensor([[[20.0, 20.0, 1.0]] * 18]))
    t2, _ = codec.encode_batch(torch.tensor([[[44.0, 44.0, 1.0]] * 18]))
    agree = torch.stack([t1, t1])
    disagree = torch.stack([t1, t2])
    _, c_agree = aggregate(agree, codec, "agreement")
    _, c_dis = aggregate(disagree, codec, "agreement")
    assert (c_agree > c_dis).all()


def test_temporal_tracks_within_videos_only(tmp_path):
    rng = np.random.default_rng(0)
    texture = (rng.random((40, 40)) * 255).astype(np.uint8)
    texture = cv2.GaussianBlur(texture, (5, 5), 1.0)
    recs = []
    positions = [(40, 50), (44, 50), (48, 51)]  # top-left of a textured patch moving right
    for f, (x, y) in enumerate(positions):
        img = np.full((120, 160), 90, np.uint8)
        img[y:y + 40, x:x + 40] = texture
        path = tmp_path / f"{f:08d}.jpg"
        cv2.imwrite(str(path), img, [cv2.IMWRITE_JPEG_QUALITY, 98])
        recs.append(record(path, video=7, frame=100 + f))
    # frame 3 is the first frame of another video, at the next global frame number
    cv2.imwrite(str(tmp_path / "other.jpg"), np.full((120, 160), 90, np.uint8))
    recs.append(record(tmp_path / "other.jpg", video=8, frame=103))
    kp = np.zeros((4, 18, 2), np.float32)
    kp[0] = (60.0, 70.0)  # the patch centre in frame 0
    kp[1] = (5.0, 5.0)  # frame 1: wrong and unconfident
    kp[2] = (68.0, 71.0)  # frame 2: right and confident
    kp[3] = (5.0, 5.0)
    conf = np.array([[0.9] * 18, [0.2] * 18, [0.95] * 18, [0.1] * 18], np.float32)
    cfg = CCSSLConfig()
    new_kp, new_conf, replaced = temporal_refine(recs, kp, conf, cfg)
    assert replaced == 18
    assert np.abs(new_kp[1] - (64.0, 70.0)).max() < 1.5  # tracked by 4 px to the right
    assert np.allclose(new_conf[1], 0.9 * 0.9)
    assert np.array_equal(new_kp[2], kp[2]) and np.array_equal(new_kp[3], kp[3])  # other video untouched
    assert np.allclose(new_conf[3], 0.1)


def test_temporal_motion_limit(tmp_path):
    imgs = [np.zeros((60, 60), np.uint8), np.zeros((60, 60), np.uint8)]
    imgs[0][10:30, 10:30] = 255
    imgs[1][10:30, 40:60] = 255  # jumped by 30 px: flow of more than 15 px is not trusted
    recs = []
    for f, img in enumerate(imgs):
        cv2.imwrite(str(tmp_path / f"{f}.png"), img)
        recs.append(record(tmp_path / f"{f}.png", video=1, frame=f))
    kp = np.full((2, 18, 2), 20.0, np.float32)
    conf = np.array([[0.9] * 18, [0.0] * 18], np.float32)
    new_kp, new_conf, _ = temporal_refine(recs, kp, conf, CCSSLConfig(flow_max_motion=15.0))
    assert (new_conf[1] <= 0.9 * 0.9).all()
    # no label follows a jump of more than 15 px (LK may or may not find the far corner)
    assert (np.linalg.norm(new_kp[1] - kp[1], axis=-1) <= 15.0 + 1e-3).all()
    # with a generous limit the same flow may be followed
    far_kp, _, _ = temporal_refine(recs, kp, conf, CCSSLConfig(flow_max_motion=1000.0))
    assert np.linalg.norm(far_kp[1] - kp[1], axis=-1).max() >= np.linalg.norm(new_kp[1] - kp[1], axis=-1).max()


def test_pseudo_labels_save_load_and_accuracy(tmp_path):
    n = 3
    kp = np.tile(np.array([50.0, 50.0], np.float32), (n, 18, 1))
    gt = np.concatenate([kp.copy(), np.ones((n, 18, 1), np.float32)], axis=-1)
    gt[:, :9, 0] += 20  # half the joints are off by 20 px on a 100 px crop
    recs = [record(kpts=gt[i]) for i in range(n)]
    kept = np.zeros((n, 18), bool)
    kept[:, 9:] = True
    labels = PseudoLabels(kp, np.ones((n, 18), np.float32), kept, kp.copy(), np.ones((n, 18), np.float32),
                          meta={"round": 2, "model": "abc"})
    acc = label_accuracy(labels, recs)
    assert acc["pseudo/acc_kept"] == 100.0 and acc["pseudo/acc_rejected"] == 0.0 and acc["pseudo/acc_all"] == 50.0
    path = labels.save(tmp_path / "round_02.pt")
    back = PseudoLabels.load(path)
    assert back.meta == {"round": 2, "model": "abc"}
    assert np.array_equal(back.kept, kept) and np.array_equal(back.keypoints, kp)
    assert back.as_labels()[..., 2].sum() == kept.sum()
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError):
        PseudoLabels.load(path)


def test_the_visibility_diagnostic_drops_exactly_the_kept_labels_on_invisible_joints(tiny_benchmark, tmp_path):
    import dataclasses

    from da_pose.adapt.ccssl import generate_pseudo_labels
    from da_pose.config import load_config
    from da_pose.data import loaders
    from da_pose.models.factory import build_model
    from tests.conftest import tiny_overrides

    cfg = load_config(None, tiny_overrides(tiny_benchmark, tmp_path) + ["ccssl.num_transforms=1"])
    codec = loaders.make_codec(cfg)
    ds = loaders.make_dataset(cfg, loaders.domain_records(cfg, "target", "train"), codec, train=False)
    visible = np.stack([r.keypoints[:, 2] > 0 for r in ds.records])
    assert 0 < visible.sum() < visible.size  # the tiny target has hidden joints to drop
    torch.manual_seed(0)
    model = build_model(cfg.model, 18)
    label = dict(dataset=ds, records=ds.records, codec=codec, device=torch.device("cpu"), seed=0, round_index=3,
                 progress=False)
    plain = generate_pseudo_labels(model, cfg=cfg.ccssl, **label)
    diag = generate_pseudo_labels(model, cfg=dataclasses.replace(cfg.ccssl, diagnostic_visible_only=True), **label)
    assert plain.kept[~visible].any()  # the method keeps some labels on joints the image does not show
    assert np.array_equal(diag.kept, plain.kept & visible)
    assert np.array_equal(diag.keypoints, plain.keypoints)  # the labels themselves are the method's
    # any method that labels with CC-SSL's labeller (PPLO, UDA-Animal too) is tagged when asked for it
    from da_pose.adapt.method import diagnostic_tags

    assert diagnostic_tags(cfg) == {}
    asked = load_config(None, tiny_overrides(tiny_benchmark, tmp_path) + ["method=wscda_pplo",
                                                                         "ccssl.diagnostic_visible_only=true"])
    assert diagnostic_tags(asked) == {"diagnostic": "target_visibility"}
