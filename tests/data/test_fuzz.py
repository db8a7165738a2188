"""Property-based fuzzing of everything that reads user files: loaders, manifests, config, checkpoints.

The one property: whatever bytes, arrays or trees a file holds, reading it either succeeds or
raises one of the project's own errors (a :class:`~da_pose.errors.DaPoseError` subclass, which
the CLI prints as one line). Any other exception escaping is a bug. Warnings (a skipped sample)
are allowed. Inputs are small and the example counts bounded, so the file runs in seconds.
"""

from __future__ import annotations

import copy
import io
import json
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from da_pose import checkpoint
from da_pose.config import Config, flatten, load_config
from da_pose.data import coco, manifest, synthetic, tigdog
from da_pose.data.codec import HeatmapCodec
from da_pose.data.dataset import PoseDataset
from da_pose.data.records import PoseRecord
from da_pose.errors import DaPoseError

# 40 examples per property in the suite; DA_POSE_FUZZ_EXAMPLES=1000 for a deeper hunt. The file
# factories of tests/data/conftest.py are stateless, so sharing them across examples is safe.
FUZZ = settings(max_examples=int(os.environ.get("DA_POSE_FUZZ_EXAMPLES", "40")), deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# ------------------------------------------------------------------------------- strategies
json_scalars = (st.none() | st.booleans() | st.integers(-(2**70), 2**70)
                | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=6))
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)
small_arrays = hnp.arrays(
    dtype=st.sampled_from([np.float64, np.float32, np.int64, np.int32, np.uint8, np.bool_, np.complex64]),
    shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5),
    elements=None,
)


def _quiet(fn, *args, **kwargs):
    """Call ``fn``; a DaPoseError is an accepted outcome, warnings are silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return fn(*args, **kwargs)
        except DaPoseError as exc:
            assert str(exc), "a project error must carry a message"
            return None


def _tree_paths(node, prefix=()):
    """Every path (tuple of keys / indices) into a JSON tree, the root included."""
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _tree_paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _tree_paths(v, prefix + (i,))


def _mutate(tree, path, delete: bool, value):
    """A copy of ``tree`` with the node at ``path`` replaced by ``value`` (or deleted)."""
    tree = copy.deepcopy(tree)
    if not path:
        return value
    parent = tree
    for key in path[:-1]:
        parent = parent[key]
    if delete:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return tree


def _mutations(data, doc, count=3):
    for _ in range(data.draw(st.integers(1, count), label="mutations")):
        path = data.draw(st.sampled_from(list(_tree_paths(doc))), label="path")
        delete = bool(path) and data.draw(st.booleans(), label="delete")
        doc = _mutate(doc, path, delete, None if delete else data.draw(json_values, label="value"))
    return doc


def _savemat(path: Path, variables: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    scipy.io.savemat(buf, variables)
    path.write_bytes(buf.getvalue())


# ------------------------------------------------------------------------------- TigDog
@FUZZ
@given(blob=st.binary(max_size=300), which=st.sampled_from(["ranges", "landmarks", "split"]), cut=st.integers(0, 400))
def test_tigdog_random_bytes(make_tigdog, blob, which, cut):
    """Random bytes, or a valid file cut short and followed by random bytes."""
    with tempfile.TemporaryDirectory() as d:
        root = Path(d) / "td"
        make_tigdog(root, shots=((1, 2), (2, 2)), images=False)
        if which == "ranges":
            target = tigdog.ranges_path(root, "horse")
        elif which == "landmarks":
            target = tigdog.landmarks_path(root, "horse", 2)
        else:
            target = root / "split.npy"
            np.save(target, np.arange(3, dtype=np.int64))
        target.write_bytes(target.read_bytes()[:cut] + blob)
        kwargs = {"split_file": target} if which == "split" else {}
        _quiet(tigdog.load_tigdog, root, "horse", "train", strict=False, **kwargs)
        _quiet(tigdog.load_tigdog, root, "horse", "all", strict=True)


@FUZZ
@given(arr=small_arrays, name=st.sampled_from(["ranges", "other"]))
def test_tigdog_ranges_arrays(make_tigdog, arr, name):
    with tempfile.TemporaryDirectory() as d:
        root = Path(d) / "td"
        make_tigdog(root, shots=((1, 2),), images=False)
        _savemat(tigdog.ranges_path(root, "horse"), {name: arr})
        _quiet(tigdog.load_tigdog, root, "horse", "all")
        _quiet(tigdog.count_positions, root, "horse")


# a landmark cell entry: a struct of random fields, a bare array, or a string
_field_values = small_arrays | st.text(max_size=4) | st.just(np.zeros((19, 2))) | st.just(np.ones((19, 1)))


@st.composite
def _landmark_entries(draw):
    kind = draw(st.sampled_from(["struct", "array", "text"]))
    if kind == "array":
        return draw(small_arrays)
    if kind == "text":
        return draw(st.text(max_size=5))
    names = draw(st.lists(st.sampled_from(["coords", "visibility", "x", "y"]), min_size=0, max_size=3, unique=True))
    if not names:
        return np.zeros((1, 1))
    struct = np.empty((1, 1), dtype=[(n, object) for n in names])
    for n in names:
        struct[0, 0][n] = draw(_field_values)
    return struct


@FUZZ
@given(entries=st.lists(_landmark_entries(), min_size=0, max_size=3), shape_2d=st.booleans())
def test_tigdog_landmark_cells(make_tigdog, entries, shape_2d):
    with tempfile.TemporaryDirectory() as d:
        root = Path(d) / "td"
        make_tigdog(root, shots=((1, 2), (2, 3)), images=False)
        cell = np.empty((len(entries), 1) if shape_2d else (len(entries),), dtype=object)
        for i, e in enumerate(entries):
            cell[i if not shape_2d else (i, 0)] = e
        try:
            _savemat(tigdog.landmarks_path(root, "horse", 2), {"landmarks": cell})
        except Exception:  # scipy cannot write every object tree; such a file cannot exist
            return
        _quiet(tigdog.load_tigdog, root, "horse", "all")
        _quiet(tigdog.load_tigdog, root, "horse", "all", strict=True)


@FUZZ
@given(arr=small_arrays)
def test_tigdog_split_file_arrays(make_tigdog, arr):
    with tempfile.TemporaryDirectory() as d:
        root = Path(d) / "td"
        make_tigdog(root, shots=((1, 3), (2, 3)), images=False)
        np.save(root / "train.npy", arr)
        _quiet(tigdog.load_tigdog, root, "horse", "test", split_file=root / "train.npy")
        _quiet(tigdog.load_tigdog, root, "horse", "train", split_files={"train": root / "train.npy"}, strict=True)


# ------------------------------------------------------------------------------- synthetic
@FUZZ
@given(arr=small_arrays, pickled=st.booleans(), blob=st.binary(max_size=64), as_bytes=st.booleans())
def test_synthetic_kpts(make_synthetic, arr, pickled, blob, as_bytes):
    with tempfile.TemporaryDirectory() as d:
        info = make_synthetic(Path(d), species="fuzzhorse", n=2, vertices=30)
        target = info["folder"] / "00001_kpts.npy"
        if as_bytes:
            target.write_bytes(blob)
        elif pickled:
            np.save(target, np.array([arr, "x"], dtype=object), allow_pickle=True)
        else:
            np.save(target, arr)
        _quiet(synthetic.load_synthetic, d, "fuzzhorse", "all")
        _quiet(synthetic.load_synthetic, d, "fuzzhorse", "all", strict=True)


@FUZZ
@given(blob=st.binary(max_size=64))
def test_synthetic_image_header(make_synthetic, blob):
    with tempfile.TemporaryDirectory() as d:
        info = make_synthetic(Path(d), species="fuzzhorse", n=2, vertices=30)
        (info["folder"] / "00000_img.png").write_bytes(blob)
        _quiet(synthetic.load_synthetic, d, "fuzzhorse", "all")
        _quiet(synthetic.load_synthetic, d, "fuzzhorse", "all", strict=True)


# ------------------------------------------------------------------------------- COCO
@FUZZ
@given(data=st.data())
def test_coco_mutated_json(make_coco, data):
    """A valid COCO keypoints file with random fields replaced or removed."""
    with tempfile.TemporaryDirectory() as d:
        made = make_coco(Path(d), n_images=2, per_image=1)
        doc = json.loads(made["ann"].read_text())
        doc = _mutations(data, doc)
        made["ann"].write_text(json.dumps(doc))
        joint_map = data.draw(st.sampled_from([None, coco.ANIMAL_POSE_MAP, [(0, 0), (25, 1)]]), label="joint_map")
        _quiet(coco.load_coco, made["ann"], made["images"], joint_map=joint_map)
        _quiet(coco.load_coco, made["ann"], made["images"], joint_map=joint_map, strict=True)


@FUZZ
@given(doc=json_values, blob=st.binary(max_size=80), raw=st.booleans())
def test_coco_random_documents(doc, blob, raw):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "ann.json"
        if raw:
            path.write_bytes(blob)
        else:
            path.write_text(json.dumps(doc))
        _quiet(coco.load_coco, path, d, joint_map=coco.ANIMAL_POSE_MAP)


# ------------------------------------------------------------------------------- manifests
@FUZZ
@given(data=st.data())
def test_manifest_mutations(tiny_benchmark, data):
    """The embedded benchmark's manifest with random fields replaced or removed, read through
    every domain and split the CLI can name."""
    doc = json.loads((tiny_benchmark / manifest.MANIFEST).read_text())
    doc.pop("gap", None)  # large and unread by the loaders: mutations elsewhere find more
    doc = _mutations(data, doc)
    with tempfile.TemporaryDirectory() as d:
        for sub in ("synthetic_animal", "behaviorDiscovery2.0", "other"):
            os.symlink(tiny_benchmark / sub, Path(d) / sub)
        (Path(d) / manifest.MANIFEST).write_text(json.dumps(doc))
        domain = data.draw(st.sampled_from(["source", "target", "other", "nosuch"]), label="domain")
        split = data.draw(st.sampled_from(["train", "val", "test", "all"]), label="split")
        _quiet(manifest.load_domain, d, domain, split)
        _quiet(manifest.parse_data_spec, f"{d}#{domain}", split=split, strict=True)


@FUZZ
@given(blob=st.binary(max_size=200), spec=st.text(max_size=30))
def test_manifest_random_bytes_and_specs(blob, spec):
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / manifest.MANIFEST).write_bytes(blob)
        _quiet(manifest.read_manifest, d)
        _quiet(manifest.parse_data_spec, f"{d}#source")
        _quiet(manifest.parse_data_spec, spec, animal="horse")


# ------------------------------------------------------------------------------- images
@FUZZ
@given(blob=st.binary(max_size=200), strict=st.booleans())
def test_dataset_random_image_bytes(blob, strict):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "frame.jpg"
        path.write_bytes(blob)
        kp = np.zeros((18, 3), np.float32)
        rec = PoseRecord(image_path=str(path), keypoints=kp, center=np.array([8.0, 8.0], np.float32), side=16.0,
                         bbox=np.zeros(4, np.float32), video=-1, frame=0, species="x")
        codec = HeatmapCodec(input_size=16, heatmap_size=8, num_joints=18)
        ds = PoseDataset([rec], codec, 16, train=False, strict=strict)
        _quiet(ds.prefetch, progress=False)
        if len(ds):
            _quiet(ds.__getitem__, 0)


# ------------------------------------------------------------------------------- config
# every real key ("train.lr", "seed") and every section name ("train")
CONFIG_KEYS = sorted(set(flatten(Config())) | {k.split(".")[0] for k in flatten(Config())})
yaml_scalars = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True)
                | st.text(max_size=6))
yaml_keys = st.sampled_from(sorted({k.split(".")[-1] for k in CONFIG_KEYS})) | st.text(max_size=5) | st.integers(-3, 3)


@st.composite
def _config_trees(draw):
    """A config-shaped tree: real section and key names mixed with junk, random values."""
    tree = {}
    for key in draw(st.lists(st.sampled_from(CONFIG_KEYS) | st.text(max_size=5), max_size=5)):
        value = draw(yaml_scalars | st.lists(yaml_scalars, max_size=3)
                     | st.dictionaries(yaml_keys, yaml_scalars | st.lists(yaml_scalars, max_size=3), max_size=3))
        head, _, tail = key.partition(".")
        if tail and isinstance(tree.get(head, {}), dict):
            tree.setdefault(head, {})[tail] = value
        else:
            tree[key] = value
    return tree


@FUZZ
@given(tree=_config_trees())
def test_config_random_trees(tree):
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "c.yaml"
        p.write_text(yaml.safe_dump(tree))
        _quiet(load_config, p)


@FUZZ
@given(text=st.text(max_size=60), blob=st.binary(max_size=60), as_bytes=st.booleans())
def test_config_random_yaml_text(text, blob, as_bytes):
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "c.yaml"
        if as_bytes:
            p.write_bytes(blob)
        else:
            p.write_text(text)
        _quiet(load_config, p)


override_values = st.text(max_size=12) | st.sampled_from(
    ["[1, 2", "{a: 1}", "!!binary aGk=", "2024-01-01", "1e400", "-1", "nan", ".inf", "~", "[[1]]", "&a 1", "*a",
     "!!python/object:os.system", "yes", "0x10", "1_000"])


@FUZZ
@given(overrides=st.lists(
    st.tuples(st.sampled_from(CONFIG_KEYS) | st.text(max_size=8), override_values).map(lambda kv: f"{kv[0]}={kv[1]}")
    | st.text(max_size=12), max_size=4))
def test_config_random_overrides(overrides):
    _quiet(load_config, None, overrides)


# ------------------------------------------------------------------------------- checkpoints
@pytest.fixture(scope="module")
def saved_checkpoint(tmp_path_factory):
    import torch

    path = tmp_path_factory.mktemp("ckpt") / "last.pt"
    checkpoint.save(path, {"model": {"w": torch.arange(40.0), "b": torch.zeros(3)}, "step": 3, "config": "a: 1\n"})
    return path.read_bytes()


@FUZZ
@given(cut=st.integers(0, 4000), flips=st.lists(st.tuples(st.integers(0, 4000), st.integers(1, 255)), max_size=4),
       blob=st.binary(max_size=64))
def test_checkpoint_corruption(saved_checkpoint, cut, flips, blob):
    """A real checkpoint cut short, with bytes flipped, or followed by junk: loads or is refused."""
    data = bytearray(saved_checkpoint[:cut] + blob)
    for pos, xor in flips:
        if pos < len(data):
            data[pos] ^= xor
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "c.pt"
        p.write_bytes(bytes(data))
        _quiet(checkpoint.load, p)
