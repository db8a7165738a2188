"""Benchmark manifests: validation, dispatch to the three loaders, CLI data specs, path escapes."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from da_pose.data import splits, manifest, tigdog
from da_pose.errors import ConfigError, DataError


@pytest.fixture
def bench(tmp_path, make_synthetic, make_tigdog, make_coco):
    """A benchmark folder in the generator's layout: source, target, other."""
    src = make_synthetic(tmp_path / "synthetic_animal", species="toyhorse", n=6)
    make_tigdog(tmp_path / "behaviorDiscovery2.0", animal="toyhorse", shots=tuple((s, 2) for s in range(1, 7)))
    everything = tigdog.load_tigdog(tmp_path / "behaviorDiscovery2.0", "toyhorse", "all")
    train, test = splits.split_by_video(everything, 0.34, seed=0)
    tigdog.write_split_files(tmp_path / "splits" / "toyhorse", train, test)
    make_coco(tmp_path / "other", ann_name="annotations/train.json", n_images=2, per_image=1, seed=1)
    make_coco(tmp_path / "other", ann_name="annotations/val.json", n_images=1, per_image=1, seed=2)
    doc = {
        "format_version": 1, "generator": "tests", "preset": "tiny", "seed": 0, "num_joints": 18,
        "gap": {},
        "domains": {
            "source": {"format": "synthetic", "root": "synthetic_animal", "species": "toyhorse",
                       "vertex_ids": [int(i) for i in src["ids"]], "count": 6,
                       "split": {"train": 4, "val": 2}, "crop_factor": 1.25},
            "target": {"format": "tigdog", "root": "behaviorDiscovery2.0", "species": "toyhorse",
                       "count": 12, "videos": 6, "split": {"train": len(train), "test": len(test)},
                       "split_files": {"train": "splits/toyhorse/train_idxs_by_video.npy",
                                       "test": "splits/toyhorse/valid_idxs_by_video.npy"},
                       "crop_factor": 1.5},
            "other": {"format": "coco", "root": "other", "species": "animal",
                      "annotations": {"train": "other/annotations/train.json", "val": "other/annotations/val.json"},
                      "images": "other/images", "joint_map": [[0, 0], [1, 1], [6, 7]], "count": 3,
                      "split": {"train": 2, "val": 1}, "crop_factor": 1.25},
        },
    }
    (tmp_path / "manifest.json").write_text(json.dumps(doc))
    return tmp_path, doc, (train, test)


def _rewrite(root, doc, **changes):
    doc = json.loads(json.dumps(doc))
    for path, value in changes.items():
        *keys, last = path.split("__")
        node = doc
        for k in keys:
            node = node[k]
        if value is None:
            del node[last]
        else:
            node[last] = value
    (root / "manifest.json").write_text(json.dumps(doc))


def test_load_every_domain_and_split(bench):
    root, doc, (train_pos, test_pos) = bench
    assert manifest.read_manifest(root)["domains"].keys() == {"source", "target", "other"}
    counts = {
        ("source", "train"): 4, ("source", "val"): 2, ("source", "all"): 6,
        # 4 train shots: one (2 frames) is the val split (written before val: no count warning)
        ("target", "train"): len(train_pos) - 2, ("target", "val"): 2, ("target", "test"): len(test_pos),
        ("target", "all"): 12,
        ("other", "train"): 2, ("other", "val"): 1, ("other", "all"): 3,
    }
    for (domain, split), n in counts.items():
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the counts agree with the manifest: no warning
            records = manifest.load_domain(root, domain, split)
        assert len(records) == n, (domain, split)
        assert all(r.keypoints.shape == (18, 3) for r in records)
    test = manifest.load_domain(root, "target", "test")
    assert [r.extra["position"] for r in test] == test_pos.tolist()
    assert all(r.side == pytest.approx(1.5 * max(r.bbox[2], r.bbox[3])) for r in test)
    other = manifest.load_domain(root, "other", "train")
    assert all(r.keypoints[2:7].sum() == 0 for r in other)  # unmapped joints


def test_count_mismatch_warns(bench):
    root, doc, _ = bench
    _rewrite(root, doc, domains__source__split={"train": 4, "val": 3})
    with pytest.warns(UserWarning, match="split 'val' has 2 samples, the manifest says 3"):
        manifest.load_domain(root, "source", "val")
    with pytest.warns(UserWarning, match="split 'all' has 6 samples, the manifest says 7"):
        manifest.load_domain(root, "source", "all")


def test_split_names_follow_the_format(bench):
    root, _, _ = bench
    with pytest.raises(ConfigError, match="no split 'test'.*'train', 'val', 'all'"):
        manifest.load_domain(root, "source", "test")
    with pytest.raises(ConfigError, match="no split 'valid'.*'train', 'val', 'test', 'all'"):
        manifest.load_domain(root, "target", "valid")
    with pytest.raises(ConfigError, match="no domain 'nope'"):
        manifest.load_domain(root, "nope", "train")


def test_data_specs(bench):
    root, _, (_, test_pos) = bench
    assert len(manifest.parse_data_spec(f"{root}#target")) == len(test_pos)
    assert len(manifest.parse_data_spec(f"{root}#source")) == 2  # test -> val for synthetic
    assert len(manifest.parse_data_spec(f"{root}#other", split="train")) == 2
    tig = manifest.parse_data_spec(f"tigdog:{root / 'behaviorDiscovery2.0'}", animal="toyhorse", split="all")
    assert len(tig) == 12
    syn = manifest.parse_data_spec(f"synthetic:{root / 'synthetic_animal'}", animal="toyhorse", split="train")
    assert len(syn) == 5  # default 80 % when no manifest says otherwise
    ann = root / "other" / "annotations" / "val.json"
    # images/ beside the annotation folder (other/annotations/val.json -> other/images/), as documented
    assert len(manifest.parse_data_spec(f"coco:{ann}", joint_map="animal_pose", strict=True)) == 1
    with pytest.raises(DataError, match="image not found"):  # an @IMAGEDIR without the images
        manifest.parse_data_spec(f"coco:{ann}@{root / 'other'}", joint_map="animal_pose", strict=True)
    assert len(manifest.parse_data_spec(f"coco:{ann}@{root / 'other' / 'images'}", joint_map="animal_pose")) == 1
    with pytest.raises(ConfigError, match="needs --animal"):
        manifest.parse_data_spec(f"tigdog:{root}")
    with pytest.raises(ConfigError, match="expected DIR#domain"):
        manifest.parse_data_spec(str(root / "nowhere"))
    with pytest.raises(ConfigError, match="domain ''"):
        manifest.parse_data_spec(str(root))


@pytest.mark.parametrize(
    "field, value",
    [
        ("domains__target__root", "../elsewhere"),
        ("domains__target__root", "/etc"),
        ("domains__source__root", "synthetic_animal/../../x"),
        ("domains__target__split_files", {"train": "../train.npy"}),
        ("domains__other__annotations", {"train": "/tmp/train.json"}),
        ("domains__other__images", ".."),
    ],
)
def test_paths_escaping_the_root_are_refused(bench, field, value):
    root, doc, _ = bench
    _rewrite(root, doc, **{field: value})
    with pytest.raises(DataError, match="escapes the benchmark folder"):
        manifest.read_manifest(root)


def test_inner_dotdot_that_stays_inside_is_fine(bench):
    root, doc, _ = bench
    _rewrite(root, doc, domains__target__root="splits/../behaviorDiscovery2.0")
    assert len(manifest.load_domain(root, "target", "all")) == 12


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("format_version", 2, "format_version 2, expected 1"),
        ("format_version", None, "missing field 'format_version'"),
        ("domains", None, "missing field 'domains'"),
        ("num_joints", 17, "num_joints 17"),
        ("domains__source__format", "hdf5", "format 'hdf5'"),
        ("domains__source__species", None, "domain 'source': missing field 'species'"),
        ("domains__source__vertex_ids", [1, 2], "vertex_ids must be 18"),
        ("domains__target__split_files", {"valid": "x.npy"}, "split_files keys"),
        ("domains__target__split", {"train": -1}, "non-negative integer"),
        ("domains__other__annotations", None, "missing field 'annotations'"),
        ("domains__other__joint_map", [[0]], "joint_map must be a list"),
        ("domains__other__crop_factor", "big", "field 'crop_factor' is str"),
    ],
)
def test_invalid_manifest_fields(bench, field, value, message):
    root, doc, _ = bench
    _rewrite(root, doc, **{field: value})
    with pytest.raises(DataError, match=message) as err:
        manifest.read_manifest(root)
    assert "manifest.json" in str(err.value) and "\n" not in str(err.value)


def test_missing_or_broken_manifest(tmp_path):
    with pytest.raises(DataError, match="benchmark folder not found"):
        manifest.read_manifest(tmp_path / "nope")
    with pytest.raises(DataError, match="manifest.json: not found"):
        manifest.read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("[1, 2")
    with pytest.raises(DataError, match="manifest.json: not valid JSON"):
        manifest.read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("[1, 2]")
    with pytest.raises(DataError, match="top level is list"):
        manifest.read_manifest(tmp_path)


def test_resolve_inside():
    assert str(manifest.resolve_inside("/r", "a/b")) == "/r/a/b"
    assert np.all([str(manifest.resolve_inside("/r", p)) == "/r/a" for p in ("a/", "./a", "b/../a")])
    for bad in ("", "..", "../a", "/a", "a/../../b"):
        with pytest.raises(DataError):
            manifest.resolve_inside("/r", bad)
