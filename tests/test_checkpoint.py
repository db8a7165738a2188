
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
