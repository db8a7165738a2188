"""MixedBatches / mixed_batches: one batch of every loader per step, cycling, seeded by (seed, epoch)."""

import pytest
import torch

from da_pose.config import load_config
from da_pose.data import loaders
from da_pose.train.trainer import epoch_seed, seed_all
from tests.conftest import tiny_overrides


@pytest.fixture
def setup(tiny_benchmark, tmp_path):
    cfg = load_config(None, tiny_overrides(tiny_benchmark, tmp_path))  # batch_size 4
    codec = loaders.make_codec(cfg)

    def ds(domain, train=False):
        return loaders.make_dataset(cfg, loaders.domain_records(cfg, domain, "train"), codec, train=train)

    return cfg, ds


def order(batches, key):
    return [b[key]["index"].tolist() for b in batches]


def test_yields_steps_batches_with_every_key_and_cycles(setup):
    cfg, ds = setup
    src, tgt = ds("source"), ds("target")
    assert (len(src), len(tgt)) == (12, 12)  # 3 batches of 4 a pass each (drop_last; target less val)
    mixed = loaders.mixed_batches(cfg, {"source": src, "target": tgt}, steps=7, epoch=0)
    assert len(mixed) == 7
    batches = list(mixed)
    assert len(batches) == 7
    for b in batches:
        assert set(b) == {"source", "target"}
        for part in b.values():
            assert {"image", "target", "target_weight", "index"} <= set(part)
            assert part["image"].shape == (4, 3, 64, 64)
    src_order = order(batches, "source")
    # the 12-image source is shorter than 7 steps: it starts over after 3 batches, and every
    # pass (the 3rd one cut short) shows each image at most once, each full pass all 12 once
    for start in (0, 3):
        assert sorted(sum(src_order[start:start + 3], [])) == list(range(12))
    assert len(set(sum(src_order[6:], []))) == 4
    tgt_order = order(batches, "target")
    assert sorted(sum(tgt_order[:3], [])) == list(range(12))


def test_a_pass_after_the_restart_is_the_same_as_a_fresh_loaders_next_pass(setup):
    cfg, ds = setup
    src = ds("source")
    long = order(loaders.mixed_batches(cfg, {"source": src}, steps=6, epoch=3), "source")
    loader = loaders.make_loader(cfg, src, 4, shuffle=True, epoch=3, drop_last=True)
    by_hand = [b["index"].tolist() for b in loader] + [b["index"].tolist() for b in loader]
    assert long == by_hand


def test_same_seed_and_epoch_give_identical_batches(setup):
    cfg, ds = setup
    # augmented datasets: augmentation draws from the global generators, which the trainer
    # re-seeds from (seed, epoch) before each epoch
    data = {"source": ds("source", train=True), "target": ds("target", train=True)}
    runs = []
    for _ in range(2):
        seed_all(epoch_seed(cfg.seed, 5))
        runs.append(list(loaders.mixed_batches(cfg, data, steps=4, epoch=5)))
    for a, b in zip(*runs):
        for k in data:
            assert torch.equal(a[k]["index"], b[k]["index"])
            assert torch.equal(a[k]["image"], b[k]["image"])
            assert torch.equal(a[k]["target"], b[k]["target"])
    other_epoch = order(loaders.mixed_batches(cfg, data, steps=4, epoch=6), "source")
    assert other_epoch != order(runs[0], "source")


def test_role_offsets_give_different_orders(setup):
    cfg, ds = setup
    src = ds("source")
    # one dataset in two roles: with the default offsets the streams differ ...
    mixed = list(loaders.mixed_batches(cfg, {"source": src, "other": src}, steps=3, epoch=0))
    assert order(mixed, "source") != order(mixed, "other")
    # ... with equal offsets they are the same stream
    same = list(loaders.mixed_batches(cfg, {"source": src, "other": src}, steps=3, epoch=0,
                                      offsets={"source": 0, "other": 0}))
    assert order(same, "source") == order(same, "other") == order(mixed, "source")
    # the role offset is an epoch offset: role "target" at epoch 0 is role "source" at epoch 100000
    tgt = list(loaders.mixed_batches(cfg, {"target": src}, steps=3, epoch=0))
    shifted = list(loaders.mixed_batches(cfg, {"source": src}, steps=3, epoch=loaders.ROLE_OFFSETS["target"]))
    assert order(tgt, "target") == order(shifted, "source")
