"""Pseudo-labelling sharded over 2 torchrun processes (gloo) gives the labels of one process."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import tiny_overrides

REPO = Path(__file__).resolve().parents[2]

# builds the seeded tiny model and the target train set, pseudo-labels it, saves the arrays;
# sharded over the ranks (gather) when launched by torchrun, in one process otherwise
SCRIPT = """
import json, sys
import numpy as np
import torch
from da_pose.adapt.ccssl import generate_pseudo_labels
from da_pose.adapt.pseudo_labels import _Gather
from da_pose.config import load_config
from da_pose.data import loaders
from da_pose.models.factory import build_model
from da_pose.train import dist

overrides, out = json.loads(sys.argv[1]), sys.argv[2]
torch.set_num_threads(1)
cfg = load_config(None, overrides)
info = dist.init("cpu")
codec = loaders.make_codec(cfg)
ds = loaders.make_dataset(cfg, loaders.domain_records(cfg, "target", "train"), codec, train=False)
torch.manual_seed(0)
model = build_model(cfg.model, 18)
gather = _Gather(info) if info.enabled else None
labels = generate_pseudo_labels(model, ds, ds.records, codec, cfg.ccssl, torch.device("cpu"), cfg.seed, 1,
                                progress=False, gather=gather)
if info.is_main:
    np.savez(out, keypoints=labels.keypoints, confidence=labels.confidence, kept=labels.kept,
             raw_keypoints=labels.raw_keypoints, images=labels.meta["images"], world=info.world_size)
dist.shutdown(info)
"""


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def label(tmp_path, overrides, name, nproc):
    script = tmp_path / "label.py"
    script.write_text(SCRIPT)
    out = tmp_path / f"{name}.npz"
    launch = [sys.executable] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr", "127.0.0.1",
        "--master_port", str(_free_port())]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([*launch, str(script), json.dumps(overrides), str(out)], capture_output=True, text=True,
                          timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dict(np.load(out))


def compare(one, two):
    assert int(one["world"]) == 1 and int(two["world"]) == 2
    assert int(one["images"]) == int(two["images"]) == len(one["keypoints"]) == 12  # target train less val
    np.testing.assert_allclose(two["raw_keypoints"], one["raw_keypoints"], rtol=0, atol=1e-4)
    np.testing.assert_allclose(two["keypoints"], one["keypoints"], rtol=0, atol=1e-4)
    np.testing.assert_allclose(two["confidence"], one["confidence"], rtol=0, atol=1e-6)
    assert np.array_equal(two["kept"], one["kept"])
    assert 0 < one["kept"].sum() < one["kept"].size  # the round's curriculum kept some, not all


@pytest.mark.slow
def test_sharded_identity_labels_equal_one_process(tiny_benchmark, tmp_path):
    # identity view only: every image's label is a function of the image and the weights alone
    over = tiny_overrides(tiny_benchmark, tmp_path) + ["ccssl.num_transforms=0", "ccssl.batch_size=3"]
    compare(label(tmp_path, over, "one", 1), label(tmp_path, over, "two", 2))


@pytest.mark.slow
def test_sharded_labels_with_random_views_equal_one_process(tiny_benchmark, tmp_path):
    # CC-SSL's default views (4 random geometric + appearance transforms an image) and temporal
    # refinement: each rank labels whole batches of the one-process batching and skips the
    # others' random draws, so an image gets the same views whatever the number of processes
    over = tiny_overrides(tiny_benchmark, tmp_path) + ["ccssl.batch_size=3"]
    compare(label(tmp_path, over, "one", 1), label(tmp_path, over, "two", 2))
