"""WS-CDA pieces: gradient reversal and its warm-up, L_DDL, L_pose with joint masking, the
discriminator on frozen features, the adversary's checkpointed state, and the step function."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch

from da_pose import checkpoint
from da_pose.adapt import wscda
from da_pose.adapt.wscda import (DomainAdversary, DomainTagged, balanced_accuracy, ddl_loss, domain_accuracy,
                                 grl_lambda, labelled_subset, pose_loss, wscda_step)
from da_pose.config import CCSSLConfig, WSCDAConfig
from da_pose.data import coco
from da_pose.data.codec import HeatmapCodec
from da_pose.data.dataset import PoseDataset
from da_pose.data.skeleton import NUM_JOINTS
from da_pose.data.toy.body import COCO_KEYPOINTS
from da_pose.data.toy.domains import OTHER_JOINT_MAP
from da_pose.errors import ConfigError
from da_pose.models.discriminator import DomainDiscriminator
from da_pose.models.hourglass import HourglassNet
from da_pose.train.losses import joints_mse


def adversary(mode="grl", channels=8, total=10, seed=0, **kw):
    torch.manual_seed(seed)
    return DomainAdversary(DomainDiscriminator(channels, hidden=16, num_domains=2), mode, total, **kw)


def domains(n_other=2, n_source=2, n_target=2):
    """y, z of a batch laid out other | source | target."""
    y = torch.tensor([0.0] * n_other + [1.0] * (n_source + n_target))
    z = torch.tensor([0.0] * (n_other + n_source) + [1.0] * n_target)
    return y, z


# ---------------------------------------------------------------------------------- gradient reversal
@pytest.mark.parametrize("step", [0, 3, 10])
def test_reversal_gives_exactly_minus_lambda_times_the_incoming_gradient(step):
    adv = adversary(total=10)
    adv.step = step
    lam = adv.lam()
    y, z = domains()
    feats = torch.randn(6, 8, 3, 3)

    plain = feats.clone().requires_grad_(True)
    ddl_loss(adv(plain), y, z)["ddl"].backward()
    disc_grads = [p.grad.clone() for p in adv.parameters()]
    adv.zero_grad(set_to_none=True)

    rev = feats.clone().requires_grad_(True)
    logits = adv.reversed_logits(rev)
    assert torch.equal(logits, adv(feats))  # identity forward
    ddl_loss(logits, y, z)["ddl"].backward()
    assert torch.equal(rev.grad, plain.grad * (-lam))
    # the discriminator itself still descends L_DDL: its gradient is not reversed
    for g, p in zip(disc_grads, adv.parameters()):
        assert torch.equal(p.grad, g)
    if step == 0:
        assert lam == 0.0 and torch.count_nonzero(rev.grad) == 0


def test_lambda_schedule():
    assert grl_lambda(0.0) == 0.0
    assert grl_lambda(0.5, 1.0, 10.0) == pytest.approx(2 / (1 + math.exp(-5)) - 1)
    assert grl_lambda(1.0, 2.0, 10.0) == pytest.approx(2 * math.tanh(5))
    assert grl_lambda(-1.0) == 0.0 and grl_lambda(7.0) == grl_lambda(1.0)  # progress clamped
    values = [grl_lambda(p / 20) for p in range(21)]
    assert all(a < b for a, b in zip(values, values[1:]))
    # the adversary: p = step / total_steps, coefficient -alpha * lambda(p)
    adv = adversary(total=4, alpha=-1.0, grl_max=0.5, grl_warmup=4.0)
    seen = []
    for _ in range(6):
        seen.append(adv.lam())
        adv.advance()
    assert seen == pytest.approx([grl_lambda(min(s / 4, 1), 0.5, 4.0) for s in range(6)])
    assert adversary(alpha=0.0).lam() == 0.0
    half = adversary(total=2, alpha=-0.5)
    half.step = 1
    assert half.lam() == pytest.approx(0.5 * grl_lambda(0.5))


def test_minmax_extractor_step_reaches_the_features_only():
    adv = adversary("minmax")
    y, z = domains()
    feats = torch.randn(6, 8, 3, 3)
    plain = feats.clone().requires_grad_(True)
    ddl_loss(adv(plain), y, z)["ddl"].backward()
    adv.zero_grad(set_to_none=True)

    f = feats.clone().requires_grad_(True)
    (-1.0 * ddl_loss(adv.fixed_logits(f), y, z)["ddl"]).backward()
    assert torch.allclose(f.grad, -plain.grad)
    assert all(p.grad is None for p in adv.parameters())


# ---------------------------------------------------------------------------------- losses
def test_ddl_matches_a_hand_computation():
    logits = torch.tensor([[0.5, -1.0], [-2.0, 3.0], [1.5, 0.25], [0.0, -0.75]])
    y = torch.tensor([1.0, 0.0, 1.0, 1.0])
    z = torch.tensor([0.0, 1.0, 1.0, 0.0])
    w1 = 0.7

    def bce(logit, label):
        p = 1 / (1 + math.exp(-logit))
        return -(label * math.log(p) + (1 - label) * math.log(1 - p))

    by = [bce(float(logits[i, 0]), float(y[i])) for i in range(4)]
    bz = [bce(float(logits[i, 1]), float(z[i])) for i in range(4)]
    loss_y = sum(by) / 4
    # z counts on animal samples only (y = 1): samples 0, 2, 3; sample 1's z is ignored
    loss_z = (bz[0] + bz[2] + bz[3]) / 3
    out = ddl_loss(logits, y, z, w1)
    assert float(out["ddl_y"]) == pytest.approx(loss_y, rel=1e-6)
    assert float(out["ddl_z"]) == pytest.approx(loss_z, rel=1e-6)
    assert float(out["ddl"]) == pytest.approx(w1 * loss_y + loss_z, rel=1e-6)
    flipped = logits.clone()
    flipped[1, 1] = -30.0  # the other-body-plan sample's z logit does not matter
    assert torch.equal(ddl_loss(flipped, y, z, w1)["ddl"], out["ddl"])
    with pytest.raises(ValueError, match=r"\(B, 2\)"):
        ddl_loss(logits[:, :1], y, z)
    # balanced y term: the mean of the animal samples' mean (0, 2, 3) and the other sample's (1)
    balanced = ddl_loss(logits, y, z, w1, balance_y=True)
    assert float(balanced["ddl_y"]) == pytest.approx(0.5 * ((by[0] + by[2] + by[3]) / 3 + by[1]), rel=1e-6)
    assert float(balanced["ddl_z"]) == pytest.approx(loss_z, rel=1e-6)
    # one class only: the plain mean
    ones = torch.ones(4)
    assert torch.equal(ddl_loss(logits, ones, z, w1, balance_y=True)["ddl"], ddl_loss(logits, ones, z, w1)["ddl"])


def test_pose_loss_weights_animal_and_other_parts():
    per = torch.tensor([1.0, 3.0, 10.0, 20.0, 30.0])
    y = torch.tensor([0.0, 0.0, 1.0, 1.0, 1.0])
    out = pose_loss(per, y, w2=2.0)
    assert float(out["pose_other"]) == pytest.approx(2.0)
    assert float(out["pose_animal"]) == pytest.approx(20.0)
    assert float(out["pose"]) == pytest.approx(2.0 * 20.0 + 2.0)


def _other_domain_dataset(tmp_path):
    """A two-person COCO file with all 17 keypoints labelled, through the real loader and dataset."""
    w, h = 96, 96
    images, anns = [], []
    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    for i in (1, 2):
        cv2.imwrite(str(tmp_path / "images" / f"{i:06d}.jpg"), np.full((h, w, 3), 60 * i, np.uint8))
        images.append({"id": i, "file_name": f"{i:06d}.jpg", "width": w, "height": h})
        kp = np.zeros((len(COCO_KEYPOINTS), 3))
        kp[:, 0] = rng.uniform(30, 66, len(kp))
        kp[:, 1] = rng.uniform(20, 76, len(kp))
        kp[:, 2] = 2
        anns.append({"id": i, "image_id": i, "keypoints": kp, "bbox": [20.0, 10.0, 56.0, 76.0]})
    coco.write_coco(tmp_path / "train.json", images, anns, list(COCO_KEYPOINTS), [[1, 2]], "person")
    records = coco.load_coco(tmp_path / "train.json", tmp_path / "images", joint_map=OTHER_JOINT_MAP)
    codec = HeatmapCodec(64, 16, sigma=1.0)
    return PoseDataset(records, codec, 64, train=False, cache=False)


def test_other_body_plan_supervises_mapped_joints_only(tmp_path):
    ds = _other_domain_dataset(tmp_path)
    items = [ds[i] for i in range(len(ds))]
    target = torch.stack([it["target"] for it in items])  # B, K, h, w
    weight = torch.stack([it["target_weight"] for it in items])  # B, K
    mapped = sorted(s for _, s in OTHER_JOINT_MAP)
    unmapped = sorted(set(range(NUM_JOINTS)) - set(mapped))
    assert (weight[:, unmapped] == 0).all() and (weight[:, mapped] == 1).all()
    y = torch.zeros(len(items))
    exact = pose_loss(joints_mse(target, target, weight, reduction="none"), y)["pose"]
    assert float(exact) == 0.0
    # any prediction on an unmapped joint (chin, hooves, hip) costs nothing ...
    noisy = target.clone()
    noisy[:, unmapped] = torch.rand_like(noisy[:, unmapped]) * 5
    assert float(pose_loss(joints_mse(noisy, target, weight, reduction="none"), y)["pose"]) == 0.0
    # ... while a mapped joint does
    wrong = target.clone()
    wrong[:, mapped[0]] = 0.0
    assert float(pose_loss(joints_mse(wrong, target, weight, reduction="none"), y)["pose"]) > 0.0


def test_balanced_accuracy_reads_chance_for_a_constant_guess():
    labels = torch.tensor([0.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    always_one = torch.ones(6)
    assert float(balanced_accuracy(always_one, labels)) == pytest.approx(0.5)
    assert float(balanced_accuracy(labels * 2 - 1, labels)) == 1.0
    y, z = domains(1, 2, 3)
    acc = domain_accuracy(torch.stack([y * 2 - 1, -torch.ones(6)], 1), y, z)
    assert float(acc["acc_y"]) == 1.0 and float(acc["acc_z"]) == pytest.approx(0.5)
    assert math.isnan(float(balanced_accuracy(always_one, labels, torch.zeros(6, dtype=torch.bool))))


# ---------------------------------------------------------------------------------- discriminator
def _separable(n, seed):
    """Features of the three sources, each a different mean: separable by y and by z."""
    g = torch.Generator().manual_seed(seed)
    centres = {"other": -1.5, "source": 0.0, "target": 1.5}
    feats, ys, zs = [], [], []
    for name, c in centres.items():
        f = torch.randn(n, 8, 2, 2, generator=g) * 0.5
        f[:, :4] += c
        feats.append(f)
        ys.append(torch.full((n,), 0.0 if name == "other" else 1.0))
        zs.append(torch.full((n,), 1.0 if name == "target" else 0.0))
    return torch.cat(feats), torch.cat(ys), torch.cat(zs)


@pytest.mark.parametrize("mode", ["grl", "minmax"])
def test_discriminator_learns_separable_features_when_the_extractor_is_frozen(mode):
    adv = adversary(mode, total=100, disc_lr=1e-2)
    opt = torch.optim.Adam(adv.parameters(), lr=1e-2) if mode == "grl" else None
    for step in range(150):
        feats, y, z = _separable(16, step)  # frozen extractor: features without gradient
        if mode == "grl":
            loss = ddl_loss(adv.reversed_logits(feats), y, z)["ddl"]
            opt.zero_grad()
            loss.backward()
            opt.step()
        else:
            adv.update(feats, y, z)
        adv.advance()
    feats, y, z = _separable(64, 10_000)
    with torch.no_grad():
        acc = domain_accuracy(adv(feats), y, z)
    assert float(acc["acc_y"]) > 0.95 and float(acc["acc_z"]) > 0.95


def test_adversary_state_round_trips_through_a_checkpoint(tmp_path):
    adv = adversary("minmax")
    feats, y, z = _separable(4, 0)
    for _ in range(3):
        adv.update(feats, y, z)
        adv.advance()
    checkpoint.save(tmp_path / "c.pt", {"extra_modules": {"a": adv.state_dict()}})
    back = adversary("minmax", seed=5)
    back.load_state_dict(checkpoint.load(tmp_path / "c.pt")["extra_modules"]["a"])  # weights_only load
    assert back.step == 3
    for a, b in zip(adv.parameters(), back.parameters()):
        assert torch.equal(a, b)
    # the discriminator's own optimizer continues identically
    adv.update(feats, y, z)
    back.update(feats, y, z)
    for a, b in zip(adv.parameters(), back.parameters()):
        assert torch.equal(a, b)
    with pytest.raises(ConfigError, match="minmax"):
        adversary("grl").update(feats, y, z)


# ---------------------------------------------------------------------------------- the step
def _batch(n, y, z, seed, labelled=True):
    g = torch.Generator().manual_seed(seed)
    target = torch.rand(n, NUM_JOINTS, 8, 8, generator=g)
    return {"image": torch.randn(n, 3, 32, 32, generator=g), "target": target,
            "target_weight": torch.ones(n, NUM_JOINTS) if labelled else torch.zeros(n, NUM_JOINTS),
            "domain": torch.tensor([[y, z]] * n)}


@pytest.mark.parametrize("mode", ["grl", "minmax"])
def test_step_ignores_the_unlabelled_target_labels(mode):
    torch.manual_seed(0)
    model = HourglassNet(NUM_JOINTS, stacks=1, blocks=1, depth=1, features=8).eval()  # eval: fixed BN
    cfg = WSCDAConfig(mode=mode)
    batch = {"other": _batch(2, 0, 0, 1), "animal": _batch(2, 1, 0, 2), "target": _batch(2, 1, 1, 3, labelled=False)}
    adv = adversary(mode, channels=8, total=4)
    adv.step = 2
    out = wscda_step(model, batch, adv, cfg)
    keys = {"loss", "loss/pose", "loss/pose_animal", "loss/pose_other", "loss/ddl", "disc/acc_y", "disc/acc_z"}
    assert keys <= set(out) and torch.isfinite(out["loss"])
    assert ("grl/lambda" in out) == (mode == "grl")
    assert adv.step == 2  # the step is pure: the schedule advances in the trainer callback
    # fill the unlabelled target's labels with anything: nothing changes
    poisoned = dict(batch, target=dict(batch["target"], target=torch.rand(2, NUM_JOINTS, 8, 8),
                                       target_weight=torch.ones(2, NUM_JOINTS)))
    adv2 = adversary(mode, channels=8, total=4)
    adv2.step = 2
    again = wscda_step(model, poisoned, adv2, cfg)
    for k in keys:
        assert torch.allclose(out[k], again[k]), k
    model.zero_grad(set_to_none=True)
    adv.zero_grad(set_to_none=True)
    out["loss"].backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad and p.dim() > 1)
    # grl: the discriminator learns through the trainer's optimizer; minmax: only through its own
    assert all((p.grad is None) == (mode == "minmax") for p in adv.parameters())
    # after the optimizer step, the callback: minmax's discriminator step, then the schedule
    before = [p.detach().clone() for p in adv.parameters()]
    wscda.AdversaryCallback(adv, cfg).on_step_end(None, batch, out)
    assert adv.step == 3
    moved = any(not torch.equal(a, p) for a, p in zip(before, adv.parameters()))
    assert moved == (mode == "minmax")


# ---------------------------------------------------------------------------------- data and config
def test_labelled_subset_is_seeded_and_nested():
    ten = labelled_subset(100, 10, seed=3)
    fifty = labelled_subset(100, 50, seed=3)
    assert len(ten) == 10 and len(set(ten.tolist())) == 10 and set(ten) <= set(fifty)
    assert np.array_equal(ten, labelled_subset(100, 10, seed=3))
    assert not np.array_equal(ten, labelled_subset(100, 10, seed=4))
    assert labelled_subset(5, 0, seed=0).size == 0
    with pytest.raises(ConfigError, match="target_labelled=6"):
        labelled_subset(5, 6, seed=0)


def test_domain_tag_is_added_to_items():
    class Items(torch.utils.data.Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            return {"index": torch.tensor(i)}

    tagged = DomainTagged(Items(), 1, 0)
    assert len(tagged) == 2 and tagged[1]["domain"].tolist() == [1.0, 0.0] and int(tagged[1]["index"]) == 1


def test_config_checks_and_pplo_settings():
    with pytest.raises(ConfigError, match="wscda.disc.*valid: mlp, conv"):
        WSCDAConfig(disc="transformer").check()
    with pytest.raises(ConfigError, match="pplo_keep"):
        WSCDAConfig(pplo_keep=(0.5, 1.5)).check()
    with pytest.raises(ConfigError, match="wscda.beta"):
        WSCDAConfig(beta=-1.0).check()
    pcfg = wscda.pplo_ccssl_config(CCSSLConfig(num_transforms=2), WSCDAConfig(pplo_rounds=2, pplo_keep=(0.3, 0.6)))
    assert pcfg.keep_schedule == (0.3, 0.6) and pcfg.curriculum and not pcfg.temporal
    assert pcfg.num_transforms == 2 and pcfg.rounds == 2
    conv = wscda.build_adversary(WSCDAConfig(disc="conv", disc_hidden=8, mode="minmax"), 8, 10)
    assert conv(torch.randn(2, 8, 4, 4)).shape == (2, 2) and conv.optimizer is not None


def _rank_grads(rank, world, port, out):
    import torch.distributed as tdist

    tdist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)  # the same initial weights on every rank
        disc = DomainDiscriminator(4, hidden=8, num_domains=2)
        wscda.average_gradients_over_ranks(disc)
        g = torch.Generator().manual_seed(100 + rank)  # a different batch on every rank
        feats, y = torch.randn(3, 4, generator=g), torch.tensor([0.0, 1.0, 1.0])
        ddl_loss(disc(feats), y, y)["ddl"].backward()
        torch.save([p.grad for p in disc.parameters()], f"{out}/rank{rank}.pt")
    finally:
        tdist.destroy_process_group()


@pytest.mark.slow
def test_discriminator_gradients_are_averaged_over_ranks(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_rank_grads, args=(2, port, str(tmp_path)), nprocs=2)
    synced = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    # the expected average, computed in this process from the two ranks' batches
    expected = []
    for rank in range(2):
        torch.manual_seed(0)
        disc = DomainDiscriminator(4, hidden=8, num_domains=2)
        g = torch.Generator().manual_seed(100 + rank)
        feats, y = torch.randn(3, 4, generator=g), torch.tensor([0.0, 1.0, 1.0])
        ddl_loss(disc(feats), y, y)["ddl"].backward()
        expected.append([p.grad for p in disc.parameters()])
    for a, b, e0, e1 in zip(*synced, *expected):
        assert torch.equal(a, b)
        assert torch.allclose(a, (e0 + e1) / 2, atol=1e-6)
