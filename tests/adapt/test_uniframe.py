"""UniFrame: the Fourier and AdaIN style transfers, the AdaIN weight files, the keypoint occlusion
in the student's view, the step, and an end-to-end run with an exact resume on the tiny benchmark."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from torch import nn

from da_pose import checkpoint
from da_pose.adapt import METHODS, run_adaptation
from da_pose.adapt.mean_teacher import EMATeacher, view_affines
from da_pose.adapt.method import method_config
from da_pose.adapt.uniframe import (AdaINStyle, UniFrameConfig, adain, adain_decoder, fourier_mix,
                                    low_frequency_mask, occlude_keypoints, occlusion_half, restyle, teacher_locations,
                                    uniframe_step, vgg_encoder)
from da_pose.config import load_config
from da_pose.data.codec import HeatmapCodec
from da_pose.data.skeleton import NUM_JOINTS
from da_pose.data.transforms import apply_affine, compose, invert_affine
from da_pose.errors import ConfigError
from da_pose.models.factory import build_model
from tests.conftest import fresh_store, tiny_overrides


# ---------------------------------------------------------------------------------- Fourier
def images(seed: int, b: int = 2, s: int = 16) -> torch.Tensor:
    return torch.rand(b, 3, s, s, generator=torch.Generator().manual_seed(seed))


def test_fourier_with_alpha_zero_changes_nothing():
    c, s = images(0), images(1)
    assert torch.allclose(fourier_mix(c, s, alpha=0.0, beta=0.1), c, atol=1e-5)


def test_fourier_over_the_whole_spectrum_takes_the_style_amplitude_and_keeps_the_phase():
    c, s = images(2), images(3)
    out = fourier_mix(c, s, alpha=1.0, beta=0.5)  # |k| <= 8 on 16 x 16: every frequency
    fo, fc, fs = torch.fft.fft2(out), torch.fft.fft2(c), torch.fft.fft2(s)
    assert torch.allclose(fo.abs(), fs.abs(), atol=1e-4)
    unit_o, unit_c = fo / fo.abs().clamp_min(1e-12), fc / fc.abs().clamp_min(1e-12)
    big = (fc.abs() > 1e-3) & (fs.abs() > 1e-3)
    assert torch.allclose(unit_o[big], unit_c[big], atol=1e-3)


def test_fourier_low_band_is_a_symmetric_centred_square():
    low = low_frequency_mask(32, 32, 0.05)  # b = round(1.6) = 2: |k| <= 2, a 5 x 5 square
    assert low.sum() == 25 and low[0, 0] and low[2, -2] and not low[3, 0]
    c, s = images(4, s=32), images(5, s=32)
    out = fourier_mix(c, s, alpha=0.7, beta=0.05)
    fo, fc, fs = torch.fft.fft2(out), torch.fft.fft2(c), torch.fft.fft2(s)
    assert torch.allclose(fo.abs()[..., ~low], fc.abs()[..., ~low], atol=1e-4)  # high band untouched
    mixed = 0.3 * fc.abs() + 0.7 * fs.abs()
    assert torch.allclose(fo.abs()[..., low], mixed[..., low], atol=1e-4)


def test_restyle_is_a_geometric_no_op():
    """A bright blob stays where it was (the labels of a restyled image stay valid), and the
    output is normalised pixels of the valid range."""
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    blob = torch.exp(-((xx - 40) ** 2 + (yy - 21) ** 2) / 18.0)
    content = (0.15 + 0.7 * blob).expand(1, 3, 64, 64)
    mean, std = torch.tensor([0.4, 0.45, 0.5]).view(1, 3, 1, 1), torch.tensor([0.2, 0.25, 0.3]).view(1, 3, 1, 1)
    style = (images(6, b=1, s=64) - mean) / std
    out = restyle((content - mean) / std, style, lambda c, s, a: fourier_mix(c, s, a, 0.05), 1.0, mean, std)
    raw = out * std + mean
    assert raw.min() >= -1e-6 and raw.max() <= 1 + 1e-6
    assert not torch.allclose(raw, content, atol=1e-2)  # restyled
    for ch in range(3):  # the low band adds smooth shading: the peak moves by at most one pixel
        y, x = divmod(int(raw[0, ch].argmax()), 64)
        assert abs(y - 21) <= 1 and abs(x - 40) <= 1


# ---------------------------------------------------------------------------------- AdaIN
def test_adain_matches_the_formula_on_constructed_features():
    g = torch.Generator().manual_seed(0)
    fc = 3.0 + 2.0 * torch.randn(2, 3, 5, 6, generator=g)  # 3 channels: images through identity "nets"
    fs = -1.0 + 0.5 * torch.randn(2, 3, 7, 3, generator=g)
    c, s = fc.numpy().astype(np.float64), fs.numpy().astype(np.float64)
    mc, sc = c.mean((2, 3), keepdims=True), np.sqrt(c.var((2, 3), ddof=1, keepdims=True) + 1e-5)
    ms, ss = s.mean((2, 3), keepdims=True), np.sqrt(s.var((2, 3), ddof=1, keepdims=True) + 1e-5)
    hand = (c - mc) / sc * ss + ms
    assert np.allclose(adain(fc, fs).numpy(), hand, atol=1e-5)
    # t = a AdaIN(f_c, f_s) + (1 - a) f_c, decoded (identity encoder and decoder expose t)
    t = AdaINStyle(nn.Identity(), nn.Identity())(fc, fs, 0.3)
    assert np.allclose(t.numpy(), 0.3 * hand + 0.7 * c, atol=1e-5)
    assert torch.allclose(AdaINStyle(nn.Identity(), nn.Identity())(fc, fs, 0.0), fc)
    # the offset (the published nets' mean-subtracted input) is taken off before and put back after
    shifted = AdaINStyle(nn.Identity(), nn.Identity(), offset=(0.4, 0.4, 0.4))
    assert torch.allclose(shifted(fc, fs, 0.0), fc, atol=1e-6)
    assert torch.allclose(shifted(fc, fs, 1.0), adain(fc, fs), atol=1e-5)


@pytest.fixture
def adain_files(tmp_path):
    """Random-weight encoder and decoder files in the published layouts: the encoder file is the
    whole VGG-19 (53 modules; only the first 31 are used), the decoder file a wrapped, DataParallel
    state dict."""
    torch.manual_seed(0)
    enc, dec = vgg_encoder(), adain_decoder()
    full = dict(enc.state_dict())
    full.update({"33.weight": torch.randn(512, 512, 3, 3), "33.bias": torch.randn(512)})
    torch.save(full, tmp_path / "vgg_normalised.pth")
    torch.save({"state_dict": {f"module.{k}": v for k, v in dec.state_dict().items()}},
               tmp_path / "decoder_animal_0_1.pth.tar")
    return tmp_path / "vgg_normalised.pth", tmp_path / "decoder_animal_0_1.pth.tar", enc, dec


def test_adain_weights_load_and_run(adain_files):
    enc_path, dec_path, enc, dec = adain_files
    net = AdaINStyle.from_files(str(enc_path), str(dec_path))
    for mine, theirs in ((net.encoder, enc), (net.decoder, dec)):
        for k, v in theirs.state_dict().items():
            assert torch.equal(mine.state_dict()[k], v), k
    assert not any(p.requires_grad for p in net.parameters())
    x, y = images(7, s=40), images(8, s=40)  # 40 is not a multiple of 8: resized back
    assert net(x, y, 0.5).shape == (2, 3, 40, 40)
    assert net.encoder(x).shape == (2, 512, 5, 5)


def test_adain_refuses_wrong_or_missing_files(adain_files, tmp_path):
    enc_path, dec_path, _, _ = adain_files
    with pytest.raises(ConfigError, match="adain_encoder: .* not the encoder of AdaIN: 16 tensors missing, 4 of the wrong"):
        AdaINStyle.from_files(str(dec_path), str(dec_path))
    with pytest.raises(ConfigError, match="adain_decoder: .* not the decoder of AdaIN: .*wrong shape"):
        AdaINStyle.from_files(str(enc_path), str(enc_path))
    with pytest.raises(ConfigError, match="uniframe.adain_decoder: no such file 'nowhere.pth'"):
        AdaINStyle.from_files(str(enc_path), "nowhere.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="not a readable torch weights file"):
        AdaINStyle.from_files(str(tmp_path / "junk.pth"), str(dec_path))
    torch.save({"args": argparse.Namespace(lr=1e-4)}, tmp_path / "pickled.pth")
    with pytest.raises(ConfigError, match="not a readable torch weights file"):  # weights_only refuses objects
        AdaINStyle.from_files(str(tmp_path / "pickled.pth"), str(dec_path))


def test_adain_paths_are_checked_before_a_run_opens(adain_files):
    with pytest.raises(ConfigError, match="uniframe.adain_encoder: no such file ''"):
        method_config(load_config(None, []), METHODS["uniframe"])
    enc_path, dec_path, _, _ = adain_files
    ok = load_config(None, [f"uniframe.adain_encoder={enc_path}", f"uniframe.adain_decoder={dec_path}"])
    assert method_config(ok, METHODS["uniframe"]).method == "uniframe"
    assert method_config(load_config(None, ["uniframe.style=fourier"]), METHODS["uniframe"]).method == "uniframe"


def test_config_checks():
    with pytest.raises(ConfigError, match="valid: adain, fourier, none"):
        load_config(None, ["uniframe.style=cyclegan"])
    with pytest.raises(ConfigError, match="occlude_rate"):
        load_config(None, ["uniframe.occlude_rate=1.5"])
    with pytest.raises(ConfigError, match="fourier_beta"):
        load_config(None, ["uniframe.fourier_beta=0"])
    c = load_config(None, []).section("uniframe")
    assert (c.alpha, c.filter, c.style_prob, c.occlude_thresh, c.occlude_size, c.appearance) == \
        (0.999, "median", 0.5, 0.9, 10.0, False)


# ---------------------------------------------------------------------------------- occlusion
def test_occlusion_lands_on_the_mapped_joint_and_only_there():
    codec = HeatmapCodec(64, 16, sigma=1.0)
    cfg = UniFrameConfig(rotate=30.0, shear=10.0, scale=(0.9, 1.1), occlude_rate=1.0, occlude_size=20.0,
                         occlude_thresh=0.8)
    torch.manual_seed(3)
    a_t, a_s = view_affines(4, cfg, 64), view_affines(4, cfg, 64)
    base = torch.tensor([[30.0, 26.0], [33.0, 35.5], [28.0, 31.0], [35.0, 29.0]], dtype=torch.float64)[:, None]
    kp = torch.zeros(4, NUM_JOINTS, 3)
    kp[:, 5, :2], kp[:, 5, 2] = apply_affine(a_t, base)[:, 0].float(), 1.0  # one confident joint (5)
    heatmaps, _ = codec.encode_batch(kp)  # the others' maps are zero: confidence 0
    xy, conf = teacher_locations(heatmaps, compose(a_s, invert_affine(a_t)), codec)
    assert (conf[:, 5] > 0.8).all() and conf[:, :5].eq(0).all()  # sub-pixel peaks: below 1
    x = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    half = occlusion_half(cfg, 64)
    assert half == 5  # 20 px at 256 px -> 5 px at 64 px
    out, hidden, occluded = occlude_keypoints(x, conf, xy, cfg, half)
    expected = apply_affine(a_s, base)[:, 0]  # B, 2: the joint in the student view
    assert occluded.all() and hidden[:, 5].all() and not hidden[:, :5].any() and not hidden[:, 6:].any()
    for i in range(4):
        changed = (out[i] != x[i]).any(0)  # S, S
        ys, xs = changed.nonzero(as_tuple=True)
        assert xs.min() >= expected[i, 0] - half - 2.5 and xs.max() <= expected[i, 0] + half + 2.5
        assert ys.min() >= expected[i, 1] - half - 2.5 and ys.max() <= expected[i, 1] + half + 2.5
        assert changed.sum() > 0.9 * (2 * half) ** 2 and changed.sum() <= (2 * half) ** 2
    # nothing happens below the confidence threshold, at rate 0, or for a joint outside the view
    assert torch.equal(occlude_keypoints(x, conf, xy + 100.0, cfg, half)[0], x)
    assert torch.equal(occlude_keypoints(x, conf * 0.8, xy, cfg, half)[0], x)
    assert torch.equal(occlude_keypoints(x, conf, xy, dataclasses.replace(cfg, occlude_rate=0.0), half)[0], x)


# ---------------------------------------------------------------------------------- the step
class Spy(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model, self.seen = model, None

    def forward(self, x):
        self.seen = x.detach().clone()
        return self.model(x)


def step_parts(**cfg_values):
    mcfg = load_config(None, ["model.backbone=hourglass", "model.stacks=1", "model.depth=2",
                              "model.features=16"]).model
    torch.manual_seed(0)
    student = Spy(build_model(mcfg, NUM_JOINTS))
    teacher = EMATeacher(build_model(mcfg, NUM_JOINTS))
    codec = HeatmapCodec(64, 16, sigma=1.0)
    g = torch.Generator().manual_seed(1)
    batch = {"source": {"image": torch.randn(3, 3, 64, 64, generator=g), "target": torch.rand(3, NUM_JOINTS, 16, 16),
                        "target_weight": torch.ones(3, NUM_JOINTS, 1)},
             "target": {"image": torch.randn(3, 3, 64, 64, generator=g)}}
    mean, std = torch.full((1, 3, 1, 1), 0.45), torch.full((1, 3, 1, 1), 0.25)
    return student, batch, dict(teacher=teacher, codec=codec, mean=mean, std=std, cfg=UniFrameConfig(**cfg_values))


def test_step_occludes_only_the_student_view_and_can_drop_the_hidden_joint():
    student, batch, kw = step_parts(style="none", occlude_rate=1.0, occlude_thresh=0.0, filter="threshold",
                                    threshold=-1.0)
    torch.manual_seed(5)
    out = uniframe_step(student, batch, **kw)
    assert torch.equal(student.seen[:3], batch["source"]["image"])  # labelled source never occluded
    assert out["occlude/fraction"] == 1.0 and out["style/source"] == 0.0 and out["_kept"].all()
    torch.manual_seed(5)
    drop = uniframe_step(student, batch, **{**kw, "cfg": dataclasses.replace(kw["cfg"], occlude_keep=False)})
    assert 3 <= (~drop["_kept"]).sum() < NUM_JOINTS  # at least the picked joint of each sample
    assert torch.isfinite(drop["loss"])


def test_step_restyles_the_source_and_the_teacher_view():
    student, batch, kw = step_parts(style="fourier", style_prob=1.0, occlude_rate=0.0)
    transfer = lambda c, s, a: fourier_mix(c, s, a, 0.25)  # noqa: E731
    torch.manual_seed(5)
    out = uniframe_step(student, batch, **kw, transfer=transfer)
    assert out["style/source"] == 1.0 and out["style/target"] == 1.0 and out["occlude/fraction"] == 0.0
    assert not torch.allclose(student.seen[:3], batch["source"]["image"], atol=1e-3)
    out["loss"].backward()
    assert all(p.grad is None for p in kw["teacher"].parameters())  # the teacher gets no gradient


# ---------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def store(tmp_path_factory, mlflow_template):
    return fresh_store(mlflow_template, tmp_path_factory.mktemp("uf_store") / "mlruns.db")


@pytest.fixture(scope="module")
def pretrained(tiny_source):
    return tiny_source


@pytest.mark.slow
def test_uniframe_runs_logs_and_resumes_exactly(tiny_benchmark, tmp_path, store, pretrained, adain_files):
    enc_path, dec_path, _, _ = adain_files

    def config(name, *extra):
        return load_config(None, tiny_overrides(tiny_benchmark, tmp_path, name, uri=store) + [
            f"init={pretrained}", "train.epochs=2", "train.criteria=false", "uniframe.steps_per_epoch=2",
            "uniframe.alpha=0.9", f"uniframe.adain_encoder={enc_path}", f"uniframe.adain_decoder={dec_path}",
            "uniframe.style_prob=1.0", "uniframe.occlude_thresh=0.0", "uniframe.occlude_rate=1.0", *extra])

    full = config("full")
    assert "target_test/pck@0.05_crop/mean" in run_adaptation(full, "uniframe")
    run_adaptation(config("half", "train.epochs=1"), "uniframe")
    run_adaptation(config("half", "resume=auto"), "uniframe")
    runs = Path(full.out_dir) / "tests"
    a, b = checkpoint.load(runs / "full" / "last.pt"), checkpoint.load(runs / "half" / "last.pt")
    assert a["step"] == b["step"] == 4
    for sa, sb in ((a["model"], b["model"]), (a["state_modules"]["teacher"], b["state_modules"]["teacher"])):
        for k, v in sa.items():
            assert torch.equal(v, sb[k]), k
    assert not any("encoder" in k or "decoder" in k for k in a["state_modules"])  # style nets are not state
    client = MlflowClient(store)
    exp = client.get_experiment_by_name("tests")
    run = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}["full"]
    assert run.info.status == "FINISHED" and run.data.tags["method"] == "uniframe"
    assert run.data.tags["style"] == "adain" and run.data.tags["mean_teacher_filter"] == "median"
    for key in ("train/loss/cons", "train/style/source", "train/style/target", "train/occlude/fraction",
                "train/pseudo/acc_kept", "train/ema/alpha"):
        assert len(client.get_metric_history(run.info.run_id, key)) == 4, key
    assert run.data.metrics["train/style/target"] == 1.0
