"""``da-pose evaluate`` on a real AP-10K file reports every metric it claims (PCK crop/bbox, the
published legacy PCK, OKS AP), and reads a published checkpoint with no config of its own."""

import json
from pathlib import Path

import pytest
import torch

from da_pose import checkpoint
from da_pose.cli import main
from da_pose.config import dump_yaml, load_config
from da_pose.jobs import config_from_checkpoint
from da_pose.models.factory import build_model
from da_pose.run import arch_of

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "real" / "coco"
AP10K_JSON = REAL / "ap10k" / "test_ap10k.json"
SMALL = ["data.input_size=64", "data.heatmap_size=16", "model.stacks=1", "model.depth=2", "model.features=16",
         "device=cpu"]


@pytest.mark.skipif(not AP10K_JSON.is_file(), reason=f"{AP10K_JSON} absent (real reference files not mounted)")
def test_evaluate_on_ap10k_writes_pck_legacy_and_oks(tmp_path, capsys):
    cfg = load_config(None, SMALL)
    torch.manual_seed(0)
    ckpt = tmp_path / "m.pt"
    checkpoint.save(ckpt, {"model": build_model(cfg.model, 18).state_dict(), "arch": arch_of(cfg),
                           "config": dump_yaml(cfg)})
    out = tmp_path / "eval"
    main(["evaluate", "--checkpoint", str(ckpt), "--data", f"ap10k:{AP10K_JSON}", "--out", str(out)])
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("pck@0.05_crop/mean", "pck@0.05_bbox/mean", "pck@0.05_legacy/mean", "pck@0.05_legacy/batch_mean",
                "oks/AP", "oks/AR"):
        assert key in metrics, key
    assert 0.0 <= metrics["oks/AP"] <= 1.0
    group = (out / "per_group.md").read_text()
    assert "PCK@0.05 legacy" in group and "batch mean (published)" in group
    assert "| AP |" in (out / "oks.md").read_text()


def test_a_published_checkpoint_gets_its_model_from_the_weights(tmp_path):
    cfg = load_config(None, SMALL + ["model.stacks=2"])
    model = build_model(cfg.model, 18)
    path = tmp_path / "published.pth.tar"
    torch.save({"epoch": 3, "arch": "hg", "best_acc": torch.tensor(0.5),
                "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    got = config_from_checkpoint(path, ["model.depth=2", "data.input_size=64", "data.heatmap_size=16"])
    assert got.model.stacks == 2 and got.model.features == 16 and got.model.backbone == "hourglass"
    loaded = build_model(got.model, 18)
    checkpoint.load_model_weights(loaded, checkpoint.load(path), path)
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k


def test_published_normalisation_needs_a_mean_file():
    from da_pose.data.loaders import input_normalisation
    from da_pose.errors import ConfigError

    assert input_normalisation(load_config(None, [])) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    with pytest.raises(ConfigError, match="mean_file"):
        input_normalisation(load_config(None, ["data.normalise=published"]))
    with pytest.raises(ConfigError, match="data.normalise"):
        load_config(None, ["data.normalise=zscore"])
