"""The published CC-SSL data files (../shared/reference/real/ccssl): synthetic split files
(train_idxs.npy / valid_idxs.npy) and normalisation files (mean.pth.tar, mean_by_video.pth.tar)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from da_pose import cli
from da_pose.data import manifest, normalise, synthetic
from da_pose.errors import ConfigError, DataError

CCSSL = Path(__file__).resolve().parents[2].parent / "shared" / "reference" / "real" / "ccssl"
needs_real = pytest.mark.skipif(not CCSSL.is_dir(), reason=f"{CCSSL} absent (real reference files not mounted)")
SPECIES = ("horse", "tiger", "elephant", "hound", "sheep")


@needs_real
@pytest.mark.parametrize("species", SPECIES)
def test_published_split_files_read(species):
    folder = CCSSL / "synthetic_animal" / f"{species}_combineds5r5_texture"
    train, text = synthetic.synthetic_split(folder, 10_000, "train")
    val, _ = synthetic.synthetic_split(folder, 10_000, "val")
    assert len(train) == 8000 and len(val) == 2000
    assert len(np.intersect1d(train, val)) == 0 and len(np.union1d(train, val)) == 10_000
    assert "published split files" in text and "8000 train / 2000 val" in text
    # not "the first 8,000": random positions, and val keeps the file's own order
    assert set(train.tolist()) != set(range(8000))
    np.testing.assert_array_equal(val, np.load(folder / "valid_idxs.npy"))
    with pytest.raises(DataError, match="outside the 9000 images"):
        synthetic.synthetic_split(folder, 9000, "train")


@needs_real
def test_published_means_read_as_published():
    expected = {  # FACTS section 3, RGB 0-1
        "synthetic_animal/horse_combineds5r5_texture/mean.pth.tar": (0.4038, 0.3956, 0.3925),
        "synthetic_animal/tiger_combineds5r5_texture/mean.pth.tar": (0.3959, 0.3861, 0.3818),
        "real_animal/horse/mean_by_video.pth.tar": (0.5319, 0.5107, 0.4206),
        "real_animal/tiger/mean_by_video.pth.tar": (0.4248, 0.3866, 0.2593),
    }
    for rel, mean in expected.items():
        got_mean, got_std = normalise.read_mean_file(CCSSL / rel)
        np.testing.assert_allclose(got_mean, mean, atol=5e-5)
        assert all(0.1 < s < 0.3 for s in got_std)
        # published: subtract the mean, divide by nothing
        m, s = normalise.normalisation("published", CCSSL / rel)
        assert m == got_mean and s == (1.0, 1.0, 1.0)
    # a folder finds its file: mean.pth.tar (synthetic) or mean_by_video.pth.tar (real)
    assert normalise.find_mean_file(CCSSL / "real_animal" / "horse").name == "mean_by_video.pth.tar"
    m, _ = normalise.normalisation("published", CCSSL / "synthetic_animal" / "horse_combineds5r5_texture")
    np.testing.assert_allclose(m, expected["synthetic_animal/horse_combineds5r5_texture/mean.pth.tar"], atol=5e-5)


def test_imagenet_is_the_default_and_bad_modes():
    assert normalise.normalisation() == (normalise.IMAGENET_MEAN, normalise.IMAGENET_STD)
    assert normalise.normalisation("imagenet", mean=(0.5, 0.5, 0.5), std=(1, 1, 1)) == ((0.5, 0.5, 0.5), (1, 1, 1))
    with pytest.raises(ConfigError, match="data.normalise 'caffe': expected one of imagenet, published"):
        normalise.normalisation("caffe")
    with pytest.raises(ConfigError, match="needs data.mean_file"):
        normalise.normalisation("published")


class _Code:
    def __reduce__(self):
        return (print, ("pwned",))


@pytest.mark.parametrize("content, message", [
    ({"mean": torch.tensor([0.4, 0.4, 0.4])}, r"holds \['mean'\]; expected a dict of 'mean' and 'std'"),
    ({"mean": torch.tensor([0.4, 0.4]), "std": torch.ones(3) * 0.2}, r"'mean' is \[0.4"),
    ({"mean": _Code(), "std": torch.ones(3)}, "refused, the file needs pickle"),
    (torch.zeros(3), "holds Tensor; expected"),
])
def test_bad_mean_files(tmp_path, content, message):
    path = tmp_path / "mean.pth.tar"
    torch.save(content, path)
    with pytest.raises(DataError, match=message) as exc:
        normalise.read_mean_file(path)
    assert str(path) in str(exc.value) and "\n" not in str(exc.value)
    (tmp_path / "junk.pth.tar").write_bytes(b"not a torch file")
    with pytest.raises(DataError, match="not a readable torch file"):
        normalise.read_mean_file(tmp_path / "junk.pth.tar")
    with pytest.raises(DataError, match="no mean.pth.tar or mean_by_video.pth.tar"):
        normalise.find_mean_file(tmp_path / "nowhere")


def test_published_normalisation_in_the_dataset(tmp_path, make_synthetic):
    from da_pose.data.codec import HeatmapCodec
    from da_pose.data.dataset import PoseDataset, read_image, warp_crop
    from da_pose.data.transforms import crop_affine

    made = make_synthetic(tmp_path, n=2)
    torch.save({"mean": torch.tensor([0.4, 0.3, 0.2]), "std": torch.tensor([0.25, 0.25, 0.25])},
               made["folder"] / "mean.pth.tar")
    mean, std = normalise.normalisation("published", made["folder"])
    records = synthetic.load_synthetic(made["root"], "toyhorse", "all")
    ds = PoseDataset(records, HeatmapCodec(64, 16), 64, train=False, mean=mean, std=std, cache=False)
    r = records[0]
    crop = warp_crop(read_image(r.image_path), crop_affine(r.center, r.side, 64), 64).astype(np.float32)
    np.testing.assert_allclose(ds[0]["image"].numpy().transpose(1, 2, 0), crop / 255.0 - [0.4, 0.3, 0.2], atol=1e-6)


# ----------------------------------------------------------------------------------- synthetic loader


def test_load_synthetic_reads_split_files_in_the_folder(tmp_path, make_synthetic, capsys):
    made = make_synthetic(tmp_path, n=5)
    default = synthetic.load_synthetic(made["root"], "toyhorse", "train")
    assert [r.frame for r in default] == [0, 1, 2, 3] and "first 4 of 5" in default[0].extra["split_source"]
    np.save(made["folder"] / "train_idxs.npy", np.array([0, 2, 4]))
    np.save(made["folder"] / "valid_idxs.npy", np.array([3, 1]))
    train = synthetic.load_synthetic(made["root"], "toyhorse", "train")
    val = synthetic.load_synthetic(made["root"], "toyhorse", "val")
    assert [r.frame for r in train] == [0, 2, 4] and [r.frame for r in val] == [3, 1]
    assert "published split files in the folder" in val[0].extra["split_source"]
    # given files win; one file alone makes the other split the rest
    np.save(tmp_path / "mine.npy", np.array([1]))
    mine = synthetic.load_synthetic(made["root"], "toyhorse", "val", split_files={"train": tmp_path / "mine.npy"})
    assert [r.frame for r in mine] == [0, 2, 3, 4] and "given split files" in mine[0].extra["split_source"]
    # the CLI says which split it used
    cli.main(["data", "show", "--data", f"synthetic:{made['root']}", "--animal", "toyhorse", "--split", "val",
              "--out", str(tmp_path / "s.png")])
    assert "split: published split files in the folder (train train_idxs.npy, val valid_idxs.npy): 3 train / 2 val of 5" \
        in capsys.readouterr().out


@pytest.mark.parametrize("train, val, message", [
    (np.array([0, 7]), np.array([1]), "position 7 outside the 5 images"),
    (np.array([0, 1]), np.array([1, 2]), "position 1 is also in"),
    (np.array([0.0, 1.0]), np.array([2]), "float64 array of shape"),
    (np.array([0, 0]), np.array([2]), "a position appears twice"),
    (np.array([[0, 1]]), np.array([2]), "of shape \\(1, 2\\)"),
])
def test_bad_split_files(tmp_path, make_synthetic, train, val, message):
    made = make_synthetic(tmp_path, n=5)
    np.save(made["folder"] / "train_idxs.npy", train)
    np.save(made["folder"] / "valid_idxs.npy", val)
    with pytest.raises(DataError, match=message) as exc:
        synthetic.load_synthetic(made["root"], "toyhorse", "train")
    assert "_idxs.npy" in str(exc.value) and "\n" not in str(exc.value)


def test_pickled_split_file_is_refused(tmp_path, make_synthetic):
    made = make_synthetic(tmp_path, n=5)
    np.save(made["folder"] / "train_idxs.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="train_idxs.npy: unreadable split file"):
        synthetic.load_synthetic(made["root"], "toyhorse", "train")


def test_manifest_synthetic_split_files(tmp_path, make_synthetic):
    made = make_synthetic(tmp_path / "bench" / "synthetic_animal", n=5)
    root = tmp_path / "bench"
    np.save(root / "val.npy", np.array([4, 0]))
    import json

    (root / "manifest.json").write_text(json.dumps({"format_version": 1, "domains": {"source": {
        "format": "synthetic", "root": "synthetic_animal", "species": "toyhorse", "vertex_ids": made["ids"].tolist(),
        "split_files": {"val": "val.npy"}}}}))
    val = manifest.load_domain(root, "source", "val")
    assert [r.frame for r in val] == [4, 0]
