"""Trainer: gradient clipping, callbacks and ``_``-keys, state-only modules in checkpoints."""

import dataclasses

import torch
from torch import nn

from da_pose import checkpoint
from da_pose.config import TrainConfig
from da_pose.train.trainer import Callback, Trainer

CPU = torch.device("cpu")


class Tracker:
    """Collects what the trainer logs."""

    def __init__(self):
        self.logged = []

    def log_metrics(self, metrics, step=None):
        self.logged.append((step, dict(metrics)))

    def keys(self):
        return {k for _, m in self.logged for k in m}


def config(**kw):
    # SGD on its first step updates by lr * grad (the momentum buffer starts at the gradient)
    return dataclasses.replace(TrainConfig(), optimizer="sgd", lr=0.1, weight_decay=0.0, lr_milestones=(),
                               log_every=1, amp=False, channels_last=False, **kw)


def batches(n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [{"x": torch.randn(4, 3, generator=g), "y": torch.randn(4, 2, generator=g)} for _ in range(n)]


def huge_step(model, batch):
    err = model(batch["x"]) - batch["y"]
    loss = 1e6 * (err ** 2).mean()
    return {"loss": loss, "loss/part": loss.detach() / 2, "_private": err.detach()}


def make_model(seed=0):
    torch.manual_seed(seed)
    return nn.Linear(3, 2)


def test_grad_clip_bounds_the_update_to_clip_grad_norm(tmp_path):
    batch = batches(1)[0]
    expected = {}
    for clip in (0.0, 0.5):
        ref = make_model()
        ref.zero_grad()
        huge_step(ref, batch)["loss"].backward()
        norm = torch.cat([p.grad.flatten() for p in ref.parameters()]).norm()
        assert norm > 100  # a huge loss: clipping matters
        if clip:
            nn.utils.clip_grad_norm_(list(ref.parameters()), clip)
        expected[clip] = {k: 0.1 * p.grad.clone() for k, p in ref.named_parameters()}

        model = make_model()
        before = {k: p.detach().clone() for k, p in model.named_parameters()}
        trainer = Trainer(model, config(grad_clip=clip), device=CPU, run_dir=tmp_path, show_progress=False)
        trainer.train_epoch(huge_step, [batch])
        update = {k: before[k] - p.detach() for k, p in model.named_parameters()}
        for k in update:
            torch.testing.assert_close(update[k], expected[clip][k], rtol=1e-5, atol=1e-7)
        total = torch.cat([u.flatten() for u in update.values()]).norm()
        if clip:
            torch.testing.assert_close(total, torch.tensor(0.1 * clip), rtol=1e-4, atol=0)
        else:
            assert total > 10  # unclipped: the full huge step


class Recorder(Callback):
    def __init__(self):
        self.outs = []
        self.epochs = 0

    def on_step_end(self, trainer, batch, out):
        assert torch.is_grad_enabled()
        self.outs.append((trainer.step, sorted(out), out["_private"].shape))
        return {"extra/metric": 3.0, "_hidden_more": 1.0}

    def on_epoch_end(self, trainer):
        self.epochs += 1


def test_callbacks_see_private_keys_that_are_never_logged(tmp_path):
    tracker, rec = Tracker(), Recorder()
    trainer = Trainer(make_model(), config(), device=CPU, run_dir=tmp_path, tracker=tracker, show_progress=False)
    means = trainer.fit(lambda m, b: {k: v / 1e6 if k == "loss" else v for k, v in huge_step(m, b).items()},
                        lambda epoch: batches(3, epoch), end_epoch=2, callbacks=[rec])
    assert means == {}  # no evaluate
    assert [s for s, _, _ in rec.outs] == [1, 2, 3, 4, 5, 6]  # once per step, after the optimizer step
    assert all(keys == ["_private", "loss", "loss/part"] and shape == (4, 2) for _, keys, shape in rec.outs)
    assert rec.epochs == 2
    keys = tracker.keys()
    assert {"train/loss", "train/loss/part", "train/extra/metric", "train/lr", "epoch/loss", "epoch/extra/metric"} <= keys
    assert not any("_private" in k or "_hidden" in k for k in keys)
    steps = [s for s, m in tracker.logged if "train/loss" in m]
    assert steps == [1, 2, 3, 4, 5, 6]  # log_every=1


def test_state_modules_are_checkpointed_but_never_optimized(tmp_path):
    teacher = make_model(seed=1)
    trainer = Trainer(make_model(), config(), device=CPU, run_dir=tmp_path, state_modules={"teacher": teacher},
                      show_progress=False)
    assert all(not p.requires_grad for p in teacher.parameters())
    optimized = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert not optimized & {id(p) for p in teacher.parameters()}
    assert optimized == {id(p) for p in trainer.model.parameters()}

    class Ema(Callback):  # a teacher updated by hand after each step, like mean teacher
        def on_step_end(self, trainer, batch, out):
            with torch.no_grad():
                for t, s in zip(teacher.parameters(), trainer.model.parameters()):
                    t.mul_(0.5).add_(0.5 * s)

    def step(model, batch):
        out = huge_step(model, batch)
        # the teacher's output joins the loss: it still must get no gradient
        out["loss"] = out["loss"] / 1e6 + teacher(batch["x"]).sum() * 0.0
        return out

    trainer.train_epoch(step, batches(2), callbacks=[Ema()])
    assert all(p.grad is None for p in teacher.parameters())
    trainer.epoch = 1
    path = trainer.save("last.pt")
    ckpt = checkpoint.load(path)
    saved = ckpt["state_modules"]["teacher"]
    for k, v in teacher.state_dict().items():
        assert torch.equal(saved[k], v)

    fresh_teacher = make_model(seed=2)
    assert not torch.equal(fresh_teacher.weight, teacher.weight)
    resumed = Trainer(make_model(seed=3), config(), device=CPU, run_dir=tmp_path,
                      state_modules={"teacher": fresh_teacher}, show_progress=False)
    resumed.restore(ckpt, path)
    for k, v in teacher.state_dict().items():
        assert torch.equal(fresh_teacher.state_dict()[k], v)
    for k, v in trainer.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[k], v)
    assert resumed.step == 2 and resumed.epoch == 1
    assert all(not p.requires_grad for p in fresh_teacher.parameters())
