"""Frozen configuration for one training run, its validation, and its CLI.

Every field is a flag of `distributed/train.py` (`--max-lr`, `--flip-p`, ...), so the
search can tune any of them and `config.json` in a run directory round-trips exactly.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """An invalid configuration value; the message is one line a user can act on."""


@dataclass(frozen=True)
class AugConfig:
    """Training augmentation (Albumentations 2.x). Probabilities are per image, sizes in pixels."""

    pad: int = 4                  # reflect-pad before the random 32x32 crop (0 = no crop)
    flip_p: float = 0.5           # horizontal flip
    affine_p: float = 0.0         # shift/scale/rotate
    shift_limit: float = 0.0625   # fraction of the image side
    scale_limit: float = 0.1      # +-10% zoom
    rotate_limit: float = 15.0    # degrees
    color_p: float = 0.0          # hue/saturation/value and brightness/contrast, each with this p
    hue_shift: float = 10.0       # HSV units as albumentations uses them (hue in [0, 180))
    sat_shift: float = 20.0
    val_shift: float = 20.0
    brightness: float = 0.2       # +-fraction
    contrast: float = 0.2         # +-fraction
    cutout_p: float = 0.5         # CoarseDropout, one hole
    cutout_min: int = 8           # hole side, pixels
    cutout_max: int = 16


@dataclass(frozen=True)
class TrainConfig:
    """One training run. Defaults are the project's ResNet18 recipe (30 epochs)."""

    name: str = "resnet18"
    data_dir: str = "data"
    runs_dir: str = "runs"
    download: bool = True         # fetch CIFAR-10 with torchvision when data_dir lacks it
    val_size: int = 5000          # carved from the 50,000 training images, stratified; 0 = train on all
    subset: int = 0               # use only N training images (stratified), 0 = all; for quick runs
    test_subset: int = 0          # evaluate on only N test images, 0 = all 10,000
    # Optimisation. batch_size is GLOBAL: each of N processes takes batch_size / N, so the
    # recipe (and its max_lr) means the same thing on 1 CPU or 8 GPUs.
    epochs: int = 30
    batch_size: int = 512
    eval_batch_size: int = 1024
    max_lr: float = 0.4
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4    # L2, through SGD
    l1: float = 0.0               # L1 penalty on weights, added to the loss
    label_smoothing: float = 0.1
    dropout: float = 0.0
    # Evaluation (validation and test alike, so the choice is made on validation) averages the
    # logits of each image and its mirror image: the model was trained on both orientations.
    tta: bool = False
    scheduler: str = "onecycle"   # onecycle | plateau | step
    pct_start: float = 0.25       # onecycle: fraction of steps spent warming up
    div_factor: float = 10.0      # onecycle: initial lr = max_lr / div_factor
    final_div_factor: float = 100.0  # onecycle: final lr = initial lr / final_div_factor
    step_size: int = 10           # step: epochs between decays
    gamma: float = 0.1            # step/plateau: decay factor
    patience: int = 3             # plateau: epochs without val improvement
    # Execution
    mixed_precision: str = "auto"  # auto (bf16 on GPUs that have it, else no) | no | bf16 | fp16
    channels_last: bool = True    # GPU only: CPU convolutions are ~3x slower in channels_last
    compile: bool = False
    num_workers: int = -1         # DataLoader workers per process; -1 = auto
    seed: int = 0
    deterministic: bool = False   # bit-exact reruns (slower on GPU)
    keep_checkpoints: int = 2     # newest epoch checkpoints kept on disk
    # Epochs between checkpoints (the last epoch always gets one). A checkpoint (weights + momentum,
    # ~90 MB) costs a fraction of a second (checkpoint_seconds in metrics.jsonl): nothing next to a
    # CPU epoch, possibly a visible share of a ~1 s GPU epoch. A kill loses at most this many
    # epochs; --resume redoes them exactly.
    checkpoint_every: int = 1
    aug: AugConfig = field(default_factory=AugConfig)

    def __post_init__(self) -> None:
        validate(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        """Inverse of `to_dict`; unknown keys are an error (a typo must not be silently ignored)."""
        d = dict(d)
        aug = d.pop("aug", {}) or {}
        _check_keys(cls, d)
        _check_keys(AugConfig, aug)
        return cls(**d, aug=AugConfig(**aug))

    def replace(self, **changes: Any) -> "TrainConfig":
        """A copy with fields changed; AugConfig fields may be given flat (`flip_p=0.2`)."""
        aug_names = {f.name for f in fields(AugConfig)}
        aug = {k: changes.pop(k) for k in list(changes) if k in aug_names}
        if aug:
            changes["aug"] = dataclasses.replace(self.aug, **aug)
        _check_keys(TrainConfig, changes)
        return dataclasses.replace(self, **changes)


def _check_keys(cls: type, d: dict[str, Any]) -> None:
    unknown = set(d) - {f.name for f in fields(cls)}
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} field(s): {', '.join(sorted(unknown))}")


_PROBABILITIES = ("flip_p", "affine_p", "color_p", "cutout_p")
_NON_NEGATIVE = ("weight_decay", "l1", "shift_limit", "scale_limit", "rotate_limit", "hue_shift",
                 "sat_shift", "val_shift", "brightness", "contrast", "pad", "val_size", "subset",
                 "test_subset", "momentum")


def validate(cfg: TrainConfig) -> None:
    """Raise ConfigError with one actionable line for the first invalid value."""
    def bad(name: str, value: Any, why: str) -> ConfigError:
        flag = "--" + name.replace("_", "-")
        return ConfigError(f"invalid {flag} {value!r}: {why}")

    values = {**{f.name: getattr(cfg, f.name) for f in fields(cfg) if f.name != "aug"},
              **dataclasses.asdict(cfg.aug)}
    for name, v in values.items():
        if isinstance(v, float) and not math.isfinite(v):
            raise bad(name, v, "must be a finite number")
    for name in _PROBABILITIES:
        if not 0.0 <= values[name] <= 1.0:
            raise bad(name, values[name], "a probability must be in [0, 1]")
    for name in _NON_NEGATIVE:
        if values[name] < 0:
            raise bad(name, values[name], "must be >= 0")
    if not cfg.max_lr > 0:
        raise bad("max_lr", cfg.max_lr, "the learning rate must be > 0")
    for name in ("epochs", "batch_size", "eval_batch_size", "step_size", "keep_checkpoints", "checkpoint_every"):
        if values[name] < 1:
            raise bad(name, values[name], "must be >= 1")
    if not 0.0 <= cfg.dropout < 1.0:
        raise bad("dropout", cfg.dropout, "must be in [0, 1)")
    if not 0.0 <= cfg.label_smoothing < 1.0:
        raise bad("label_smoothing", cfg.label_smoothing, "must be in [0, 1)")
    if not 0.0 < cfg.pct_start < 1.0:
        raise bad("pct_start", cfg.pct_start, "must be in (0, 1)")
    if cfg.div_factor < 1 or cfg.final_div_factor < 1:
        raise bad("div_factor", (cfg.div_factor, cfg.final_div_factor), "div factors must be >= 1")
    if not 0.0 < cfg.gamma <= 1.0:
        raise bad("gamma", cfg.gamma, "must be in (0, 1]")
    if cfg.scheduler not in ("onecycle", "plateau", "step"):
        raise bad("scheduler", cfg.scheduler, "choose onecycle, plateau or step")
    if cfg.mixed_precision not in ("auto", "no", "bf16", "fp16"):
        raise bad("mixed_precision", cfg.mixed_precision, "choose auto, no, bf16 or fp16")
    if cfg.num_workers < -1:
        raise bad("num_workers", cfg.num_workers, "must be >= 0, or -1 for auto")
    if cfg.val_size >= 50_000:
        raise bad("val_size", cfg.val_size, "must leave training images (< 50000)")
    if cfg.subset and cfg.val_size and cfg.subset <= cfg.val_size:
        raise bad("subset", cfg.subset, f"must be larger than --val-size {cfg.val_size} (or set --val-size 0)")
    if not 1 <= cfg.aug.cutout_min <= cfg.aug.cutout_max <= 32:
        raise bad("cutout_min", (cfg.aug.cutout_min, cfg.aug.cutout_max), "need 1 <= cutout-min <= cutout-max <= 32")
    if cfg.aug.pad > 16:
        raise bad("pad", cfg.aug.pad, "must be <= 16 pixels")
    if not cfg.name or "/" in cfg.name or cfg.name in (".", ".."):
        raise bad("name", cfg.name, "a run name must be a plain folder name")


# ---------------------------------------------------------------------------- CLI
def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one `--flag` per config field (AugConfig fields flat), defaults taken from the dataclasses."""
    group = parser.add_argument_group("training configuration")
    for cls in (TrainConfig, AugConfig):
        for f in fields(cls):
            if f.name == "aug":
                continue
            default = f.default
            flag = "--" + f.name.replace("_", "-")
            if isinstance(default, bool):
                group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                                   help=f"(default: {default})")
            else:
                group.add_argument(flag, type=type(default), default=None, metavar=type(default).__name__.upper(),
                                   help=f"(default: {default})")
    group.add_argument("--config", type=Path, default=None,
                       help="JSON file of config fields (e.g. a run's config.json); flags override it")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Build the config: defaults, then `--config FILE`, then explicit flags."""
    cfg = TrainConfig()
    if getattr(args, "config", None) is not None:
        cfg = load_config(args.config)
    names = [f.name for f in fields(TrainConfig) if f.name != "aug"] + [f.name for f in fields(AugConfig)]
    changes = {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}
    return cfg.replace(**changes) if changes else cfg


def load_config(path: str | Path) -> TrainConfig:
    """Read a config JSON: either bare fields or a run's `config.json` (fields under "config")."""
    path = Path(path)
    try:
        d = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {path} is not valid JSON: {e}") from None
    if isinstance(d, dict) and isinstance(d.get("config"), dict):
        d = d["config"]
    if not isinstance(d, dict):
        raise ConfigError(f"config file {path} must hold a JSON object")
    try:
        return TrainConfig.from_dict(d)
    except TypeError as e:
        raise ConfigError(f"config file {path}: {e}") from None
