"""Flip test: heatmaps averaged with the flipped image's, flipped back."""

import math

import pytest
import torch

from da_pose.config import load_config
from da_pose.data import loaders
from da_pose.eval.evaluate import evaluate, predict_heatmaps
from da_pose.models.factory import build_model
from tests.conftest import tiny_overrides


@pytest.fixture
def setup(tiny_benchmark, tmp_path):
    cfg = load_config(None, tiny_overrides(tiny_benchmark, tmp_path))
    torch.manual_seed(0)
    model = build_model(cfg.model, 18).eval()
    return cfg, model, loaders.make_codec(cfg)


@torch.no_grad()
def test_flip_test_is_the_mean_with_the_flipped_back_maps(setup):
    cfg, model, codec = setup
    x = torch.randn(2, 3, 64, 64)
    hm = model(x).heatmaps[-1]
    hm_flipped = model(torch.flip(x, dims=[3])).heatmaps[-1]
    expected = 0.5 * (hm + codec.flip_back(hm_flipped))
    got = predict_heatmaps(model, x, codec, flip_test=True)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(predict_heatmaps(model, x, codec, flip_test=False), hm, rtol=0, atol=0)
    assert (got - hm).abs().max() > 1e-4  # the flipped pass changes something


@torch.no_grad()
def test_flip_test_of_a_symmetric_image(setup):
    _, model, codec = setup
    half = torch.randn(1, 3, 64, 32)
    x = torch.cat([half, torch.flip(half, dims=[3])], dim=3)  # left-right symmetric
    assert torch.equal(x, torch.flip(x, dims=[3]))
    hm = model(x).heatmaps[-1]
    got = predict_heatmaps(model, x, codec, flip_test=True)
    torch.testing.assert_close(got, 0.5 * (hm + codec.flip_back(hm)), rtol=0, atol=1e-6)
    # the result is itself mirror-symmetric: flipping it back (mirror + swap sides) changes nothing
    torch.testing.assert_close(codec.flip_back(got), got, rtol=0, atol=1e-6)


@torch.no_grad()
def test_flip_test_is_flip_equivariant_for_any_model(setup):
    _, model, codec = setup
    x = torch.randn(2, 3, 64, 64)
    a = predict_heatmaps(model, x, codec, flip_test=True)
    b = predict_heatmaps(model, torch.flip(x, dims=[3]), codec, flip_test=True)
    torch.testing.assert_close(b, codec.flip_back(a), rtol=0, atol=1e-6)


def test_evaluate_with_flip_test_has_the_same_keys(setup):
    cfg, model, codec = setup
    records = loaders.domain_records(cfg, "source", "val")
    loader = loaders.eval_loader(cfg, loaders.make_dataset(cfg, records, codec, train=False))
    plain = evaluate(model, loader, records, codec, torch.device("cpu"), flip_test=False, prefix="v/", progress=False)
    flipped = evaluate(model, loader, records, codec, torch.device("cpu"), flip_test=True, prefix="v/", progress=False)
    assert plain and set(flipped) == set(plain) and all(k.startswith("v/") for k in plain)
    mean_keys = [k for k in plain if k.endswith("/mean")]
    assert mean_keys
    for k in mean_keys:
        assert math.isfinite(flipped[k]) and 0.0 <= flipped[k] <= 100.0
    # a joint's value is finite with the flip test exactly where it is without it (same labels counted)
    assert {k for k, v in flipped.items() if math.isfinite(v)} == {k for k, v in plain.items() if math.isfinite(v)}
