"""Typed configuration: frozen dataclasses, flat YAML files, strict ``--set key=value`` overrides.

A YAML file holds top-level keys and one mapping per section (``data:``, ``model:`` ...); there
is no inheritance. ``--set data.root=DIR`` overrides one value. An unknown key or a value of the
wrong type is a :class:`~da_pose.errors.ConfigError` naming the valid keys.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from da_pose.errors import ConfigError


@dataclass(frozen=True)
class DataConfig:
    """Where the data is and how a sample is cropped."""

    root: str = "data/demo"  # a benchmark folder with manifest.json, or a dataset read as `format`
    format: str = "manifest"  # manifest | tigdog | synthetic | coco | ap10k | animalpose (root: ROOT or ANN.json[@IMAGES])
    joint_map: str = ""  # format coco: a built-in map name or a joint-map YAML file (datasets/README.md)
    animal: str = ""  # tigdog / synthetic formats: the animal (horse, tiger, ...)
    source: str = "source"  # manifest domain used as the labelled source
    target: str = "target"  # manifest domain used as the (unlabelled) target
    other: str = "other"  # manifest domain of the other body plan (WS-CDA)
    target_labels: str = ""  # labelled target train images: FRACTION | N | all | K_per_video (data/labelled.py)
    input_size: int = 256  # square crop side fed to the model, pixels
    heatmap_size: int = 64  # square heatmap side
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)  # RGB, 0-1
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    normalise: str = "imagenet"  # imagenet: (x - mean) / std | published: x - the mean of mean_file
    mean_file: str = ""  # published: mean.pth.tar / mean_by_video.pth.tar, or the folder holding it
    workers: int = 0  # DataLoader worker processes
    cache: bool = True  # keep decoded crops in memory (small datasets)
    strict: bool = False  # a single unreadable sample is an error instead of a skip


@dataclass(frozen=True)
class AugConfig:
    """Training augmentation (published "strong" augmentation, FACTS section 4)."""

    scale: float = 0.25  # crop scale factor ~ 1 + N(0, 1) * scale, clamped to +-2 scale
    rotate: float = 30.0  # degrees, ~ N(0, 1) * rotate, clamped to +-2 rotate
    rotate_prob: float = 0.6
    translate: float = 0.05  # fraction of the crop side
    flip: bool = True
    appearance: bool = True  # noise / blur / contrast / colour, each with p = appearance_prob
    appearance_prob: float = 0.5


@dataclass(frozen=True)
class ModelConfig:
    """Backbone and head. ``backbone`` is ``hourglass`` or ``resnet18|34|50|101|152``."""

    backbone: str = "hourglass"
    stacks: int = 4  # hourglass
    blocks: int = 1  # hourglass residual blocks per stack
    depth: int = 4  # hourglass recursion depth
    features: int = 256  # hourglass width
    deconv_layers: int = 3  # PoseResNet head
    deconv_filters: int = 256
    pretrained: str = ""  # torchvision ImageNet .pth for the ResNet backbone


@dataclass(frozen=True)
class CodecConfig:
    """Heatmap encoding and decoding (one codec object for targets, decoding, pseudo-labels)."""

    sigma: float = 1.0  # Gaussian sigma in heatmap pixels
    decode: str = "quarter"  # quarter | dark | argmax
    flip_test: bool = False


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation. ``epochs`` count passes over the source train split."""

    optimizer: str = "rmsprop"  # rmsprop | adam | sgd
    lr: float = 2.5e-4
    weight_decay: float = 0.0
    momentum: float = 0.0
    batch_size: int = 6
    epochs: int = 100
    max_steps: int = 0  # > 0 caps the total number of steps
    lr_milestones: tuple[int, ...] = (60, 90)  # epochs
    lr_gamma: float = 0.1
    grad_clip: float = 0.0  # 0 = off
    amp: bool = True  # CUDA only
    channels_last: bool = True  # weights (and batches) in channels_last memory order, CPU and CUDA
    deterministic: bool = False
    eval_every: int = 1  # epochs between evaluations on the selection split
    checkpoint_every: int = 1  # epochs between checkpoints (and always at the end)
    log_every: int = 20  # steps between metric logs
    eval_batch_size: int = 32  # images per batch when evaluating (any split) and predicting
    criteria: bool = True  # adaptation: log label-free selection criteria at epoch ends (da_pose.eval.criteria)
    selection: str = "last"  # the checkpoint reported: last | source_val | target_val (best epoch; never target test)


@dataclass(frozen=True)
class CCSSLConfig:
    """CC-SSL (Mu et al., CVPR 2020), FACTS section 4."""

    rounds: int = 6
    epochs_per_round: int = 10
    steps_per_round: int = 0  # > 0 overrides epochs_per_round
    gamma: float = 10.0  # loss = L_src + gamma * L_tgt
    num_transforms: int = 4  # geometric transforms besides the identity
    scale_sigma: float = 0.25
    scale_clamp: float = 0.25
    rotate_sigma: float = 30.0
    rotate_clamp: float = 60.0
    flip: bool = False  # published code disabled flip in pseudo-labelling
    invariance: bool = True  # appearance transforms T_beta
    equivariance: bool = True  # geometric transforms T_alpha
    temporal: bool = True  # optical flow T_Delta
    curriculum: bool = True  # False: keep labels above fixed_threshold
    fixed_threshold: float = 0.5
    keep_schedule: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8, 0.8, 0.8)  # kept fraction per round
    confidence: str = "max"  # max (published) | agreement
    flow_window: int = 15
    flow_levels: int = 2
    flow_max_motion: float = 15.0  # pixels at original resolution
    flow_ratio: float = 0.9
    batch_size: int = 32  # pseudo-labelling batch (images; each with all transforms)
    # DIAGNOSTIC, never a method: READS the target labels' visibility, drops kept labels on hidden
    # joints; the run is tagged ``diagnostic: target_visibility`` (a row of its own in compare)
    diagnostic_visible_only: bool = False

    def check(self) -> None:
        if self.batch_size <= 0:
            raise ConfigError(f"ccssl.batch_size must be positive, got {self.batch_size}")
        for key in ("rounds", "num_transforms", "steps_per_round"):
            if getattr(self, key) < 0:
                raise ConfigError(f"ccssl.{key} must be >= 0, got {getattr(self, key)}")


WSCDA_MODES = ("grl", "minmax")
WSCDA_DISCRIMINATORS = ("mlp", "conv")  # da_pose.adapt.wscda.DISCRIMINATORS builds them


@dataclass(frozen=True)
class WSCDAConfig:
    """WS-CDA (Cao et al., ICCV 2019), FACTS section 5."""

    mode: str = "grl"  # grl | minmax
    alpha: float = -1.0
    beta: float = 500.0
    w1: float = 1.0
    w2: float = 1.0
    balance_y: bool = True  # y term of L_DDL: mean of the two classes' means (False: mean over samples, as published)
    grl_max: float = 1.0
    grl_warmup: float = 10.0  # lambda = max * (2 / (1 + exp(-warmup * p)) - 1), p = progress
    disc_lr: float = 1e-3  # minmax: the discriminator's own Adam; grl: it trains with the model's optimizer
    disc_hidden: int = 256
    pplo_rounds: int = 3
    pplo_keep: tuple[float, ...] = (0.3, 0.5, 0.7)
    pplo_steps: int = 0  # steps per PPLO round; 0 = one pass over the unlabelled target
    pplo_temporal: bool = False  # PPLO pseudo-labels with CC-SSL's optical-flow term
    steps_per_epoch: int = 0  # adversarial phase (train.epochs epochs); 0 = one pass over the labelled animals
    disc: str = "mlp"  # mlp | conv (da_pose.models.discriminator)
    target_labelled: int = 0  # labelled target images mixed into the animal source (0 = none)

    def check(self) -> None:
        """Range checks of the wscda section; ConfigError naming the key."""
        for key, valid in (("mode", WSCDA_MODES), ("disc", WSCDA_DISCRIMINATORS)):
            if getattr(self, key) not in valid:
                raise ConfigError(f"wscda.{key}: unknown value '{getattr(self, key)}'; valid: {', '.join(valid)}")
        for key in ("beta", "w1", "w2", "grl_max", "grl_warmup"):
            if getattr(self, key) < 0:
                raise ConfigError(f"wscda.{key} must be >= 0, got {getattr(self, key)}")
        for key in ("disc_lr", "disc_hidden"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"wscda.{key} must be positive, got {getattr(self, key)}")
        for key in ("pplo_rounds", "pplo_steps", "steps_per_epoch", "target_labelled"):
            if getattr(self, key) < 0:
                raise ConfigError(f"wscda.{key} must be >= 0, got {getattr(self, key)}")
        if self.pplo_rounds and not self.pplo_keep:
            raise ConfigError("wscda.pplo_keep is empty; expected one kept fraction per PPLO round, e.g. [0.3, 0.5, 0.7]")
        if any(not 0 < f <= 1 for f in self.pplo_keep):
            raise ConfigError(f"wscda.pplo_keep: fractions must be in (0, 1], got {list(self.pplo_keep)}")


@dataclass(frozen=True)
class Config:
    """A whole run."""

    name: str = "run"  # MLflow run name and run-directory name
    experiment: str = "da_pose"  # MLflow experiment
    method: str = "source_only"  # a baseline (BASELINES) or an adaptation method (da_pose.adapt.METHODS)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    init: str = ""  # starting checkpoint (adapt / finetune)
    out_dir: str = "runs"
    tracking_uri: str = "sqlite:///mlruns.db"
    resume: str = "no"  # no | auto | PATH
    settings: str = "defaults"  # where this config's hyperparameters were chosen: defaults | source_val | target_val
    data: DataConfig = field(default_factory=DataConfig)
    aug: AugConfig = field(default_factory=AugConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    codec: CodecConfig = field(default_factory=CodecConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    ccssl: CCSSLConfig = field(default_factory=CCSSLConfig)
    wscda: WSCDAConfig = field(default_factory=WSCDAConfig)
    # sections of methods registered outside this module (register_section): (name, section) pairs
    sections: tuple = ()

    def section(self, name: str):
        """The config section ``name``: a built-in one (``ccssl``) or a registered one."""
        if name in _BUILTIN_SECTIONS:
            return getattr(self, name)
        if name not in SECTIONS:
            raise ConfigError(f"no config section '{name}'; known: {', '.join(sorted(_BUILTIN_SECTIONS + tuple(SECTIONS)))}")
        return dict(self.sections).get(name) or SECTIONS[name]()


# The method tags of runs that are not adaptation methods (pretrain / finetune jobs); every other
# tag must name an entry of da_pose.adapt.METHODS, so a typo cannot start a new row in compare.
BASELINES = ("source_only", "source_only_ext", "oracle", "ccssl_r")

# Config sections of methods defined outside this module: name -> frozen dataclass. A method
# module registers its own (da_pose.adapt.register does it for a method's section).
SECTIONS: dict[str, type] = {}
_BUILTIN_SECTIONS = ("data", "aug", "model", "codec", "train", "ccssl", "wscda")


def register_section(name: str, cls: type) -> None:
    """Let YAML files and ``--set`` carry a top-level section ``name`` read into ``cls``."""
    if not (dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen):
        raise TypeError(f"section '{name}': expected a frozen dataclass, got {cls!r}")
    if name in _BUILTIN_SECTIONS or name in {f.name for f in dataclasses.fields(Config)}:
        if name in _BUILTIN_SECTIONS and getattr(Config(), name).__class__ is cls:
            return
        raise ValueError(f"config section '{name}' is a built-in key of Config")
    SECTIONS[name] = cls


# --------------------------------------------------------------------------------------------
# building and checking


def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    types_ = {f.name: hints[f.name] for f in dataclasses.fields(cls)}
    if cls is Config:
        del types_["sections"]
        types_.update(SECTIONS)
    return types_


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; int -> float and list -> tuple allowed."""
    origin = typing.get_origin(tp)
    if origin is tuple:
        (item_tp, _) = typing.get_args(tp)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list of {item_tp.__name__}, got {value!r}")
        return tuple(_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value))
    if origin in (typing.Union, types.UnionType):
        raise ConfigError(f"{key}: unsupported annotation {tp}")  # pragma: no cover
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported annotation {tp}")  # pragma: no cover


def _build(cls, values: dict, prefix: str = ""):
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {values!r}")
    types_ = _field_types(cls)
    unknown = sorted(set(values) - set(types_))
    if unknown:
        raise ConfigError(
            f"unknown config key '{prefix}{unknown[0]}'; valid keys"
            f"{' in ' + prefix.rstrip('.') if prefix else ''}: {', '.join(sorted(types_))}"
        )
    kwargs = {}
    registered = []
    for name, value in values.items():
        tp = types_[name]
        if dataclasses.is_dataclass(tp):
            built = _build(tp, value or {}, f"{prefix}{name}.")
            if cls is Config and name in SECTIONS:
                registered.append((name, built))
            else:
                kwargs[name] = built
        else:
            kwargs[name] = _coerce(value, tp, f"{prefix}{name}")
    if registered:
        kwargs["sections"] = tuple(sorted(registered, key=lambda kv: kv[0]))
    return cls(**kwargs)


def _parse_override(item: str) -> tuple[list[str], Any, str]:
    """``"a.b=value"`` -> (["a", "b"], the value parsed as YAML, the raw text)."""
    if "=" not in item:
        raise ConfigError(f"override '{item}': expected key=value, e.g. train.lr=0.001")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override '{item}': empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if value is None:
        value = ""
    return key.split("."), value, raw.strip()


def _nested_set(tree: dict, path: list[str], value: Any, cls=Config, prefix: str = "", raw: str | None = None) -> None:
    types_ = _field_types(cls)
    head = path[0]
    if head not in types_:
        where = f" in {prefix.rstrip('.')}" if prefix else ""
        raise ConfigError(
            f"unknown config key '{prefix}{'.'.join(path)}'; valid keys{where}: {', '.join(sorted(types_))}"
        )
    tp = types_[head]
    if len(path) == 1:
        if dataclasses.is_dataclass(tp):
            raise ConfigError(f"'{head}' is a section; set one of its keys, e.g. {head}.<key>=...")
        if tp is str and raw is not None and isinstance(value, bool):
            # YAML 1.1 reads no/off/yes/on as booleans; a string key takes the text as typed
            # (--resume no, --set name=off).
            value = raw
        tree[head] = value
        return
    if not dataclasses.is_dataclass(tp):
        raise ConfigError(f"'{head}' is not a section; '{'.'.join(path)}' does not exist")
    sub = tree.setdefault(head, {})
    if not isinstance(sub, dict):
        raise ConfigError(f"'{head}' must be a mapping")
    _nested_set(sub, path[1:], value, tp, f"{prefix}{head}.", raw)


def validate(cfg: Config) -> Config:
    """Range checks that types alone cannot express."""
    positive = {
        "data.input_size": cfg.data.input_size,
        "data.heatmap_size": cfg.data.heatmap_size,
        "train.batch_size": cfg.train.batch_size,
        "train.lr": cfg.train.lr,
        "model.stacks": cfg.model.stacks,
        "model.blocks": cfg.model.blocks,
        "model.depth": cfg.model.depth,
        "model.features": cfg.model.features,
        "codec.sigma": cfg.codec.sigma,
        "train.eval_batch_size": cfg.train.eval_batch_size,
    }
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{key} must be positive, got {value}")
    non_negative = {
        "data.workers": cfg.data.workers,
        "train.epochs": cfg.train.epochs,
        "train.max_steps": cfg.train.max_steps,
        "train.weight_decay": cfg.train.weight_decay,
        "train.grad_clip": cfg.train.grad_clip,
    }
    for key, value in non_negative.items():
        if value < 0:
            raise ConfigError(f"{key} must be >= 0, got {value}")
    if cfg.data.input_size % cfg.data.heatmap_size:
        raise ConfigError(
            f"data.input_size ({cfg.data.input_size}) must be a multiple of data.heatmap_size "
            f"({cfg.data.heatmap_size})"
        )
    choices = {
        "codec.decode": (cfg.codec.decode, ("quarter", "dark", "argmax")),
        "train.optimizer": (cfg.train.optimizer, ("rmsprop", "adam", "sgd")),
        "data.normalise": (cfg.data.normalise, ("imagenet", "published")),
        "data.format": (cfg.data.format, ("manifest", "tigdog", "synthetic", "coco", "ap10k", "animalpose")),
        "ccssl.confidence": (cfg.ccssl.confidence, ("max", "agreement")),
        "train.selection": (cfg.train.selection, ("last", "source_val", "target_val")),
        "settings": (cfg.settings, ("defaults", "source_val", "target_val")),
    }
    # The backbone is checked here, before a job opens its run folder and MLflow run; the
    # factory's dict of constructors is the one list of names (imported late: it imports torch).
    from da_pose.models.factory import BACKBONES

    choices["model.backbone"] = (cfg.model.backbone, tuple(BACKBONES))
    for key, (value, valid) in choices.items():
        if value not in valid:
            raise ConfigError(f"{key}: unknown value '{value}'; valid: {', '.join(valid)}")
    if len(cfg.data.mean) != 3 or len(cfg.data.std) != 3:
        raise ConfigError("data.mean and data.std need 3 values (RGB)")
    if cfg.resume not in ("no", "auto") and not Path(cfg.resume).is_file():
        raise ConfigError(f"resume: expected no, auto or an existing checkpoint file, got '{cfg.resume}'")
    for name in _BUILTIN_SECTIONS + tuple(SECTIONS):
        check = getattr(cfg.section(name), "check", None)
        if callable(check):
            check()
    return cfg


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML config (or the defaults when ``path`` is None) and apply ``key=value`` overrides.

    Raises:
        ConfigError: missing file, bad YAML, unknown key, wrong type or invalid value.
    """
    tree: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, OSError) as exc:
            raise ConfigError(f"{p}: not readable as UTF-8 text ({exc}); expected a YAML config") from None
        except yaml.YAMLError as exc:
            first = str(exc).splitlines()[0] if str(exc) else "parse error"
            raise ConfigError(f"{p}: not valid YAML ({first})") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: expected a mapping of config keys at the top level")
        tree = loaded
    for item in overrides:
        keys, value, raw = _parse_override(item)
        _nested_set(tree, keys, value, raw=raw)
    return validate(_build(Config, tree))


def to_dict(cfg) -> dict:
    """Nested plain dict (tuples as lists), ready for YAML."""

    def conv(v):
        if isinstance(v, tuple):
            return [conv(x) for x in v]
        return v

    out = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if isinstance(cfg, Config) and f.name == "sections":
            out.update({name: to_dict(section) for name, section in v})
            continue
        out[f.name] = to_dict(v) if dataclasses.is_dataclass(v) else conv(v)
    return out


def flatten(cfg) -> dict[str, Any]:
    """``{"data.root": ..., "train.lr": ...}``: the MLflow params of a run."""
    out: dict[str, Any] = {}

    def walk(d: dict, prefix: str):
        for k, v in d.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            else:
                out[f"{prefix}{k}"] = v

    walk(to_dict(cfg), "")
    return out


def dump_yaml(cfg) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def replace(cfg: Config, **sections) -> Config:
    """``replace(cfg, train={"lr": 1e-3})``: a copy with some section values changed."""
    changes = {}
    registered = dict(cfg.sections)
    for name, values in sections.items():
        if name in SECTIONS:
            registered[name] = dataclasses.replace(cfg.section(name), **values)
            changes["sections"] = tuple(sorted(registered.items()))
            continue
        current = getattr(cfg, name)
        if dataclasses.is_dataclass(current):
            changes[name] = dataclasses.replace(current, **values)
        else:
            changes[name] = values
    return dataclasses.replace(cfg, **changes)
