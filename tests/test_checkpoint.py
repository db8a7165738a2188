
import pytest
import torch

from da_pose import checkpoint
from da_pose.errors import CheckpointError


def test_atomic_save_and_load(tmp_path):
    p = tmp_path / "a" / "last.pt"
    state = {"model": {"w": torch.arange(3.0)}, "step": 4, "config": "x: 1\n"}
    checkpoint.save(p, state)
    got = checkpoint.load(p)
    assert got["step"] == 4 and torch.equal(got["model"]["w"], torch.arange(3.0))
    assert [f.name for f in p.parent.iterdir()] == ["last.pt"]  # no temporary file left


def test_failed_write_keeps_previous(tmp_path):
    p = tmp_path / "last.pt"
    checkpoint.save(p, {"step": 1})

    class Boom:
        def __reduce__(self):
            raise OSError(28, "No space left on device")

    with pytest.raises(CheckpointError, match="previous file is unchanged"):
        checkpoint.save(p, {"step": 2, "bad": Boom()})
    assert checkpoint.load(p)["step"] == 1
    assert [f.name for f in tmp_path.iterdir()] == ["last.pt"]


def test_unwritable_folder(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        import os

        if os.access(ro, os.W_OK):  # running as root: permissions are not enforced
            pytest.skip("root ignores folder permissions")
        with pytest.raises(CheckpointError, match="cannot write"):
            checkpoint.save(ro / "x.pt", {"a": 1})
    finally:
        ro.chmod(0o700)


def test_truncated_and_missing(tmp_path):
    p = tmp_path / "t.pt"
    checkpoint.save(p, {"model": {"w": torch.randn(100, 100)}})
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        checkpoint.load(p)
    with pytest.raises(CheckpointError, match="not found"):
        checkpoint.load(tmp_path / "none.pt")


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickle_with_code_is_refused(tmp_path):
    p = tmp_path / "evil.pt"
    torch.save({"model": Evil()}, p)
    with pytest.raises(CheckpointError, match="refused"):
        checkpoint.load(p)


def test_arch_and_shape_mismatch():
    checkpoint.check_arch({"arch": {"backbone": "hourglass", "num_joints": 18}}, {"backbone": "hourglass", "num_joints": 18})
    with pytest.raises(CheckpointError, match="num_joints: checkpoint 17 vs config 18"):
        checkpoint.check_arch({"arch": {"backbone": "hourglass", "num_joints": 17}}, {"backbone": "hourglass", "num_joints": 18})
    model = torch.nn.Linear(3, 2)
    with pytest.raises(CheckpointError, match="another shape"):
        checkpoint.load_model_weights(model, {"model": {"weight": torch.zeros(4, 3), "bias": torch.zeros(2)}})
    with pytest.raises(CheckpointError, match="missing"):
        checkpoint.load_model_weights(model, {"model": {"weight": torch.zeros(2, 3)}})
    checkpoint.load_model_weights(model, {"model": {"module.weight": torch.ones(2, 3), "module.bias": torch.zeros(2)}})
    assert torch.equal(model.weight, torch.ones(2, 3))


# ------------------------------------------------------------------------ published checkpoints


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: one thread is faster than many on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _tiny_hourglass(stacks=2):
    from da_pose.config import ModelConfig
    from da_pose.models.factory import build_model

    torch.manual_seed(0)
    return build_model(ModelConfig(backbone="hourglass", stacks=stacks, blocks=1, depth=2, features=16), 18)


def _published(model, path, best_acc=None):
    """A file in the published CC-SSL / pytorch-pose layout (DataParallel prefix, optimizer)."""
    import copy

    other = copy.deepcopy(model)  # the optimizer state of a trained run, without moving model's weights
    opt = torch.optim.RMSprop(other.parameters(), lr=2.5e-4)
    other(torch.randn(1, 3, 64, 64)).heatmaps[-1].sum().backward()
    opt.step()
    torch.save({"epoch": 60, "arch": "hg", "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()},
                "best_acc": torch.tensor(0.7077) if best_acc is None else best_acc,
                "optimizer": opt.state_dict()}, path)
    return path


def _records(tmp_path, n=5):
    import cv2
    import numpy as np

    from da_pose.data.records import PoseRecord

    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        img = tmp_path / f"{i}.png"
        cv2.imwrite(str(img), rng.integers(0, 255, (80, 100, 3), dtype=np.uint8))
        kp = np.concatenate([rng.uniform(20, 70, (18, 2)), np.ones((18, 1))], 1).astype(np.float32)
        out.append(PoseRecord(str(img), kp, np.array([50, 40], np.float32), 70.0, np.array([20, 20, 50, 50], np.float32)))
    return out


def test_published_checkpoint_gives_the_same_predictions_as_our_own_file(tmp_path):
    import numpy as np
    from torch.utils.data import DataLoader

    from da_pose.data.codec import HeatmapCodec
    from da_pose.data.dataset import PoseDataset
    from da_pose.eval.evaluate import predict
    from da_pose.eval.metrics import dataset_metrics

    trained = _tiny_hourglass()
    arch = {"backbone": "hourglass", "num_joints": 18, "stacks": 2, "blocks": 1, "depth": 2, "features": 16}
    ours = checkpoint.save(tmp_path / "ours.pt", {"model": trained.state_dict(), "arch": arch})
    theirs = _published(trained, tmp_path / "model_best.pth.tar")
    codec = HeatmapCodec(64, 16, sigma=1.0)
    ds = PoseDataset(_records(tmp_path), codec, 64, train=False, cache=False)
    results = []
    for path in (ours, theirs):
        ckpt = checkpoint.load(path)
        model = _tiny_hourglass()
        for p in model.parameters():  # a different start, so loading has to do the work
            torch.nn.init.zeros_(p)
        checkpoint.check_arch(ckpt, arch, path)
        checkpoint.load_model_weights(model, ckpt, path)
        preds = predict(model, DataLoader(ds, batch_size=2), codec, torch.device("cpu"), progress=False)
        results.append((preds, dataset_metrics(preds, ds.records)))
    (p1, m1), (p2, m2) = results
    np.testing.assert_array_equal(p1.coords, p2.coords)
    np.testing.assert_array_equal(p1.legacy_pred, p2.legacy_pred)
    assert m1.keys() == m2.keys() and any(k.startswith("pck@0.05_legacy/") for k in m1)
    np.testing.assert_array_equal(np.array(list(m1.values())), np.array(list(m2.values())))
    assert checkpoint.is_published(checkpoint.load(theirs)) and not checkpoint.is_published(checkpoint.load(ours))
    assert checkpoint.published_overrides(checkpoint.load(theirs)) == [
        "model.backbone=hourglass", "model.stacks=2", "model.features=16"]


def test_published_checkpoint_of_another_architecture_is_refused(tmp_path):
    path = _published(_tiny_hourglass(stacks=2), tmp_path / "hg2.pth.tar")
    ckpt = checkpoint.load(path)
    one_stack = {"backbone": "hourglass", "num_joints": 18, "stacks": 1, "blocks": 1, "depth": 2, "features": 16}
    with pytest.raises(CheckpointError, match=r"published checkpoint \(arch 'hg'\) of another model \(stacks: "
                                              r"checkpoint 2 vs config 1\); its model is --set model.backbone=hourglass "
                                              r"--set model.stacks=2 --set model.features=16"):
        checkpoint.check_arch(ckpt, one_stack, path)
    with pytest.raises(CheckpointError, match="backbone: checkpoint 'hourglass' vs config 'resnet50'"):
        checkpoint.check_arch(ckpt, {"backbone": "resnet50", "num_joints": 18}, path)
    # keys that do not fit (another depth, which the heads do not show) still give one line
    from da_pose.config import ModelConfig
    from da_pose.models.factory import build_model

    deeper = build_model(ModelConfig(backbone="hourglass", stacks=2, blocks=1, depth=3, features=16), 18)
    with pytest.raises(CheckpointError, match="does not fit the model: .* missing"):
        checkpoint.load_model_weights(deeper, ckpt, path)


def test_published_checkpoint_with_a_numpy_best_acc_loads(tmp_path):
    import numpy as np

    path = _published(_tiny_hourglass(), tmp_path / "np.pth.tar", best_acc=np.float64(0.7077))
    ckpt = checkpoint.load(path)
    assert float(ckpt["best_acc"]) == pytest.approx(0.7077)
    torch.save({"state_dict": {}, "x": Evil()}, tmp_path / "evil.pth.tar")  # code is still refused
    with pytest.raises(CheckpointError, match="refused"):
        checkpoint.load(tmp_path / "evil.pth.tar")


def test_save_goes_through_the_shared_atomic_writer(tmp_path, monkeypatch):
    from da_pose import fileio

    calls = []
    real = fileio.write_bytes_atomic
    monkeypatch.setattr(checkpoint, "write_bytes_atomic", lambda p, d: calls.append(p) or real(p, d))
    checkpoint.save(tmp_path / "x.pt", {"step": 3})
    assert calls == [tmp_path / "x.pt"] and checkpoint.load(tmp_path / "x.pt")["step"] == 3
    (tmp_path / "file").write_text("")
    with pytest.raises(CheckpointError, match="cannot write to"):
        checkpoint.save(tmp_path / "file" / "x.pt", {"step": 1})


def test_a_file_that_is_not_a_checkpoint_is_not_called_unsafe(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        checkpoint.load(tmp_path / "junk.pt")
