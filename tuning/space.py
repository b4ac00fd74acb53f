"""The hyperparameter search space: defaults, overrides from a YAML/JSON file, and its Tune form.

A space is a plain dict `{config_field: spec}` where config_field is any flat TrainConfig/AugConfig
field (`max_lr`, `flip_p`, ...) and spec is one of

    {"type": "loguniform", "lower": 0.05, "upper": 1.0}
    {"type": "uniform",    "lower": 0.0,  "upper": 0.5}
    {"type": "randint",    "lower": 8,    "upper": 20}        # integers lower..upper inclusive
    {"type": "choice",     "values": [0.0, 1e-5]}
    {"type": "off_or_loguniform", "lower": 1e-6, "upper": 1e-4, "off_p": 0.4}   # 0 with prob off_p
    0.5                                                         # a constant: fixes the field

An override file (`--space FILE`, YAML or JSON) is merged over `DEFAULT_SPACE`: a key replaces
that field's spec, and `null` removes the field from the search (the base config's value is used).

Learning rates are given at global batch 512, like the recipe's 0.4: every max_lr value of a space
(bounds, choices, a constant) is scaled linearly to the search's --batch-size before Tune samples
it (`at_batch`), the rule train.py's default max_lr follows. params.json and results.csv hold the
rates the trials trained with.
"""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

from distributed.config import REFERENCE_BATCH, ConfigError, TrainConfig, lr_for_batch

# Ranges for a ResNet18 OneCycle recipe at global batch 512 (max_lr 0.4 is the hand-tuned default);
# max_lr is scaled to the search's batch (`at_batch`).
DEFAULT_SPACE: dict[str, Any] = {
    "max_lr": {"type": "loguniform", "lower": 0.05, "upper": 1.0},
    "dropout": {"type": "uniform", "lower": 0.0, "upper": 0.3},
    "weight_decay": {"type": "loguniform", "lower": 5e-5, "upper": 2e-3},
    "l1": {"type": "off_or_loguniform", "lower": 1e-7, "upper": 1e-5, "off_p": 0.5},
    "flip_p": {"type": "uniform", "lower": 0.0, "upper": 0.5},
    "affine_p": {"type": "uniform", "lower": 0.0, "upper": 0.5},
    "color_p": {"type": "uniform", "lower": 0.0, "upper": 0.5},
    "cutout_p": {"type": "uniform", "lower": 0.0, "upper": 0.7},
    "cutout_max": {"type": "randint", "lower": 8, "upper": 20},
}

_TYPES = {"loguniform", "uniform", "randint", "choice", "off_or_loguniform"}


def load_space_file(path: str | Path) -> dict[str, Any]:
    """Read an override file (YAML or JSON object); ConfigError with one line on any problem."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"space file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"space file {path} cannot be read: {e}") from None
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml
            data = yaml.safe_load(text)
    except Exception as e:  # yaml.YAMLError / json.JSONDecodeError: one line either way
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"space file {path} is not valid YAML/JSON: {msg}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"space file {path} must hold a mapping of config field -> spec")
    return data


def merge_space(overrides: dict[str, Any] | None, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """DEFAULT_SPACE (or `base`) with `overrides` applied; a None value drops the field."""
    space = copy.deepcopy(DEFAULT_SPACE if base is None else base)
    for key, spec in (overrides or {}).items():
        if spec is None:
            space.pop(key, None)
        else:
            space[key] = copy.deepcopy(spec)
    return space


def validate_space(space: dict[str, Any], base_cfg: TrainConfig) -> None:
    """Check every spec is well formed and its extreme values make a valid TrainConfig."""
    for key, spec in space.items():
        where = f"search space field {key!r}"
        if key not in _field_names() or key in ("aug", "aug_schedule", "name", "runs_dir", "data_dir"):
            raise ConfigError(f"{where}: not a tunable training config field")
        if not isinstance(spec, dict):
            if isinstance(spec, (list, tuple)):
                raise ConfigError(f"{where}: use {{type: choice, values: [...]}} for a list of values")
            _check_values(base_cfg, key, [spec], where)
            continue
        kind = spec.get("type")
        if kind not in _TYPES:
            raise ConfigError(f"{where}: type must be one of {', '.join(sorted(_TYPES))} (got {kind!r})")
        allowed = {"type", "values"} if kind == "choice" else {"type", "lower", "upper"} | (
            {"off_p"} if kind == "off_or_loguniform" else set())
        extra = set(spec) - allowed
        if extra:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(extra))} for type {kind}")
        if kind == "choice":
            values = spec.get("values")
            if not isinstance(values, list) or not values:
                raise ConfigError(f"{where}: choice needs a non-empty list 'values'")
            _check_values(base_cfg, key, values, where)
            continue
        lo, hi = spec.get("lower"), spec.get("upper")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in (lo, hi)):
            raise ConfigError(f"{where}: lower and upper must be finite numbers")
        if kind == "randint" and not (float(lo).is_integer() and float(hi).is_integer()):
            raise ConfigError(f"{where}: randint bounds must be integers")
        if not lo < hi if kind != "randint" else not lo <= hi:
            raise ConfigError(f"{where}: needs lower < upper (got {lo}, {hi})")
        if kind in ("loguniform", "off_or_loguniform") and lo <= 0:
            raise ConfigError(f"{where}: a log scale needs lower > 0 (got {lo})")
        if kind == "off_or_loguniform":
            off_p = spec.get("off_p", 0.5)
            if not isinstance(off_p, (int, float)) or not 0.0 <= off_p <= 1.0:
                raise ConfigError(f"{where}: off_p must be a probability in [0, 1]")
        values = [int(lo), int(hi)] if kind == "randint" else [lo, hi]
        if kind == "off_or_loguniform":
            values.append(0.0)
        _check_values(base_cfg, key, values, where)


LR_FIELDS = ("max_lr",)


def at_batch(space: dict[str, Any], batch_size: int) -> dict[str, Any]:
    """The space as trials sample it: every learning-rate value (given at global batch 512) times
    batch_size / 512. Call after `validate_space`."""
    out = copy.deepcopy(space)
    for key in LR_FIELDS:
        spec = out.get(key)
        if spec is None or batch_size == REFERENCE_BATCH:
            continue
        if not isinstance(spec, dict):
            out[key] = lr_for_batch(spec, batch_size)
            continue
        for bound in ("lower", "upper"):
            if bound in spec:
                spec[bound] = lr_for_batch(spec[bound], batch_size)
        if "values" in spec:
            spec["values"] = [lr_for_batch(v, batch_size) for v in spec["values"]]
    return out


def describe_lr(space: dict[str, Any], batch_size: int) -> str | None:
    """One phrase for the search header: the max_lr range at 512 and at this batch."""
    given, used = space.get("max_lr"), at_batch(space, batch_size).get("max_lr")
    if given is None:
        return None

    def span(spec: Any) -> str:
        if not isinstance(spec, dict):
            return f"{spec:.3g}"
        if "values" in spec:
            return "{" + ", ".join(f"{v:.3g}" for v in spec["values"]) + "}"
        return f"{spec['lower']:.3g}-{spec['upper']:.3g}"

    if batch_size == REFERENCE_BATCH:
        return f"max_lr {span(used)} (at batch {REFERENCE_BATCH})"
    return f"max_lr {span(used)} ({span(given)} at batch {REFERENCE_BATCH}, x {batch_size}/{REFERENCE_BATCH})"


def _field_names() -> set[str]:
    from dataclasses import fields

    from distributed.config import AugConfig
    return {f.name for f in fields(TrainConfig)} | {f.name for f in fields(AugConfig)}


def _probe_value(base_cfg: TrainConfig, key: str) -> Any:
    return getattr(base_cfg.aug, key) if hasattr(base_cfg.aug, key) else getattr(base_cfg, key, None)


def _check_values(base_cfg: TrainConfig, key: str, values: list[Any], where: str) -> None:
    for v in values:
        try:
            apply_params(base_cfg, {key: v})
        except ConfigError as e:
            raise ConfigError(f"{where}: value {v!r} is invalid ({e})") from None
        except TypeError as e:
            raise ConfigError(f"{where}: value {v!r} is invalid ({e})") from None


def apply_params(base_cfg: TrainConfig, params: dict[str, Any]) -> TrainConfig:
    """The trial's config: base with the sampled values, types cast to the field's type.

    Keeps cutout valid: when cutout_max is sampled below the base cutout_min, cutout_min follows it.
    """
    changes: dict[str, Any] = {}
    for key, value in params.items():
        current = _probe_value(base_cfg, key)
        if isinstance(current, bool):
            value = bool(value)
        elif isinstance(current, int) and isinstance(value, float) and value.is_integer():
            value = int(value)
        elif isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        changes[key] = value
    cut_max = changes.get("cutout_max", base_cfg.aug.cutout_max)
    cut_min = changes.get("cutout_min", base_cfg.aug.cutout_min)
    if "cutout_min" not in params and isinstance(cut_max, int) and cut_min > cut_max:
        changes["cutout_min"] = cut_max
    return base_cfg.replace(**changes)


# ----------------------------------------------------------------------------- Tune form
def to_tune(space: dict[str, Any]) -> dict[str, Any]:
    """The param_space for `tune.Tuner` (Tune domains; constants pass through).

    `off_or_loguniform` has no Tune domain of its own. It becomes two helper values drawn by Tune
    (`_<field>_off` uniform in [0, 1), `_<field>_log` log-uniform), so the seed of the search makes
    them reproducible, and a `sample_from` that picks 0.0 when the first is below off_p. The helper
    keys start with "_" and `trial_params` drops them.
    """
    from ray import tune

    out: dict[str, Any] = {}
    for key, spec in space.items():
        if not isinstance(spec, dict):
            out[key] = spec
            continue
        kind = spec["type"]
        if kind == "loguniform":
            out[key] = tune.loguniform(spec["lower"], spec["upper"])
        elif kind == "uniform":
            out[key] = tune.uniform(spec["lower"], spec["upper"])
        elif kind == "randint":
            out[key] = tune.randint(int(spec["lower"]), int(spec["upper"]) + 1)  # Tune's upper is exclusive
        elif kind == "choice":
            out[key] = tune.choice(list(spec["values"]))
        elif kind == "off_or_loguniform":
            off, log = f"_{key}_off", f"_{key}_log"
            out[off] = tune.uniform(0.0, 1.0)
            out[log] = tune.loguniform(spec["lower"], spec["upper"])
            out[key] = tune.sample_from(_off_or(off, log, spec.get("off_p", 0.5)))
    return out


def _off_or(off: str, log: str, off_p: float):
    def pick(config: dict[str, Any]) -> float:
        return 0.0 if config[off] < off_p else float(config[log])
    return pick


def trial_params(config: dict[str, Any]) -> dict[str, Any]:
    """A trial's hyperparameters: Tune's config without the helper values of `to_tune`."""
    return {k: v for k, v in config.items() if not k.startswith("_")}
