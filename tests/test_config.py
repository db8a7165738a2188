from pathlib import Path

import pytest

from da_pose.config import Config, flatten, load_config, to_dict
from da_pose.errors import ConfigError


def write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_defaults_and_yaml(tmp_path):
    cfg = load_config(write(tmp_path, "name: a\ntrain:\n  lr: 1\n  lr_milestones: [3, 4]\ndata:\n  mean: [0.1, 0.2, 0.3]\n"))
    assert cfg.name == "a"
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.train.lr_milestones == (3, 4)
    assert cfg.data.mean == (0.1, 0.2, 0.3)
    assert cfg.model == Config().model


def test_overrides_are_typed(tmp_path):
    cfg = load_config(None, ["data.root=/x/y", "train.batch_size=8", "ccssl.temporal=false", "init=a.pt",
                             "ccssl.keep_schedule=[0.5, 0.9]"])
    assert cfg.data.root == "/x/y"
    assert cfg.train.batch_size == 8
    assert cfg.ccssl.temporal is False
    assert cfg.init == "a.pt"
    assert cfg.ccssl.keep_schedule == (0.5, 0.9)


@pytest.mark.parametrize("override, message", [
    ("train.lrr=1", "unknown config key 'train.lrr'; valid keys in train: "),
    ("nosuch=1", "unknown config key 'nosuch'"),
    ("train.batch_size=abc", "train.batch_size: expected an integer"),
    ("train.amp=3", "expected true or false"),
    ("train=3", "is a section"),
    ("train.batch_size=-1", "train.batch_size must be positive"),
    ("model.stacks=0", "model.stacks must be positive"),
    ("codec.decode=magic", "codec.decode: unknown value 'magic'; valid: quarter, dark, argmax"),
    ("data.input_size=100", "must be a multiple"),
    ("novalue", "expected key=value"),
])
def test_bad_overrides_name_the_problem(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert message in str(err.value)
    assert "\n" not in str(err.value)
    assert err.value.exit_code == 2


def test_unknown_yaml_key_lists_valid(tmp_path):
    with pytest.raises(ConfigError, match="unknown config key 'model.widht'; valid keys in model: .*features"):
        load_config(write(tmp_path, "model:\n  widht: 3\n"))


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "none.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "a: [1, 2\n"))
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(write(tmp_path, "- 1\n- 2\n"))


def test_flatten_round_trip(tmp_path):
    cfg = load_config(None, ["train.lr=0.5"])
    flat = flatten(cfg)
    assert flat["train.lr"] == 0.5 and flat["data.root"] == cfg.data.root
    import yaml

    p = write(tmp_path, yaml.safe_dump(to_dict(cfg)))
    assert load_config(p) == cfg


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[1] / "experiments").rglob("*.yaml")),
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_shipped_config_loads(path):
    """Each YAML under experiments/ passes the strict loader, and its method is a registered one."""
    from da_pose.adapt import METHODS
    from da_pose.config import BASELINES

    cfg = load_config(path)
    assert cfg.method in METHODS or cfg.method in BASELINES, cfg.method
