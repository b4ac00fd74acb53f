"""Frozen configuration for one training run, its validation, and its CLI.

Every field is a flag of `distributed/train.py` (`--max-lr`, `--flip-p`, ...), so the
search can tune any of them and `config.json` in a run directory round-trips exactly.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """An invalid configuration value; the message is one line a user can act on."""


# The recipe's learning rate is tuned for this global batch. Without --max-lr the peak rate follows
# the batch linearly (Goyal et al. 2017): 0.4 x batch / 512, so a smaller batch (every CPU example)
# does not keep a rate tuned for 512 and diverge. Search spaces give max_lr at this batch too.
REFERENCE_BATCH = 512
REFERENCE_MAX_LR = 0.4
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",  # in label order
                   "dog", "frog", "horse", "ship", "truck")
NUM_CLASSES = len(CIFAR10_CLASSES)  # also the least a stratified split can hold with every class in it


def lr_for_batch(lr_at_reference: float, batch_size: int) -> float:
    """A learning rate given for global batch 512, scaled linearly to `batch_size`."""
    return lr_at_reference * batch_size / REFERENCE_BATCH


def precision_name(mixed_precision: str) -> str:
    """The arithmetic of a run's resolved mixed_precision ("no", "bf16", "fp16"): "no" is plain fp32."""
    return "fp32" if mixed_precision == "no" else mixed_precision


def opt(default: Any = dataclasses.MISSING, help: str = "", *, factory: Any = dataclasses.MISSING,
        choices: tuple[str, ...] | None = None, flag: str | None = None, cli: bool = True,
        shown_default: str | None = None) -> Any:
    """A config field with its `--help` text (say the unit), its choices, and optionally its own
    flag name or no flag at all (`cli=False`): the dataclass is the one place a setting is described.
    `shown_default` replaces the default that `--help` prints (for defaults like None that mean a rule)."""
    meta = {"help": help, "choices": choices, "flag": flag, "cli": cli, "shown_default": shown_default}
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class AugConfig:
    """Training augmentation (Albumentations 2.x). Probabilities are per image, sizes in pixels."""

    pad: int = opt(4, "reflect padding before the random 32x32 crop, pixels per side (0: no crop)")
    flip_p: float = opt(0.5, "probability of a horizontal flip, per image")
    affine_p: float = opt(0.0, "probability of a shift/scale/rotate, per image")
    shift_limit: float = opt(0.0625, "affine shift, +- fraction of the image side")
    scale_limit: float = opt(0.1, "affine zoom, +- fraction of the image size")
    rotate_limit: float = opt(15.0, "affine rotation, +- degrees")
    color_p: float = opt(0.0, "probability of each colour jitter (hue/saturation/value, brightness/contrast), "
                              "per image")
    hue_shift: float = opt(10.0, "hue shift, +- Albumentations HSV units (hue spans 0-180)")
    sat_shift: float = opt(20.0, "saturation shift, +- HSV units (0-255)")
    val_shift: float = opt(20.0, "value shift, +- HSV units (0-255)")
    brightness: float = opt(0.2, "brightness jitter, +- fraction of the full range")
    contrast: float = opt(0.2, "contrast jitter, +- fraction")
    cutout_p: float = opt(0.5, "probability of one cutout hole (filled with the mean), per image")
    cutout_min: int = opt(8, "smallest cutout side, pixels")
    cutout_max: int = opt(16, "largest cutout side, pixels")


TRACKERS = ("none", "tensorboard", "wandb", "mlflow")

# What a schedule (--aug-schedule, a PBT trial) may set per epoch: every augmentation strength and
# probability but the padding (which changes the crop, not how often it happens), and the
# regularisers. Not the learning rate: OneCycle is a function of the step, fixed at the start.
SCHEDULABLE = ("flip_p", "affine_p", "shift_limit", "scale_limit", "rotate_limit", "color_p", "hue_shift",
               "sat_shift", "val_shift", "brightness", "contrast", "cutout_p", "cutout_min", "cutout_max",
               "dropout", "weight_decay", "l1")
SCHEDULE_KIND = "cifar-lab augmentation schedule"


def schedule_index(epoch: int, epochs: int, entries: int) -> int:
    """The schedule entry of 0-based `epoch` in a run of `epochs`: a schedule of `entries` epochs
    stretched (or squeezed) over the run, entry i covering epochs [i E/S, (i+1) E/S)."""
    return min(entries - 1, epoch * entries // epochs)


@dataclass(frozen=True)
class TrainConfig:
    """One training run. Defaults are the project's ResNet18 recipe (30 epochs)."""

    name: str = opt("resnet18", "run name: the folder runs-dir/NAME")
    data_dir: str = opt("data", "folder holding (or receiving) cifar-10-batches-py/")
    runs_dir: str = opt("runs", "folder of run directories")
    download: bool = opt(True, "download CIFAR-10 with torchvision when data-dir lacks it")
    val_size: int = opt(5000, "images carved from the 50,000 training images for validation, stratified "
                              "(0: train on all, no model selection)")
    subset: int = opt(0, "use a stratified subset of N of the 50,000 training images, validation included, "
                         "for quick runs (0: all)")
    test_subset: int = opt(0, "evaluate on a stratified subset of N test images (0: all 10,000)")
    # Optimisation. batch_size is GLOBAL: each of N processes takes batch_size / N, so the
    # recipe (and its max_lr) means the same thing on 1 CPU or 8 GPUs.
    epochs: int = opt(30, "training epochs (passes over the training images)")
    batch_size: int = opt(512, "GLOBAL batch: images per optimiser step over all processes")
    eval_batch_size: int = opt(1024, "global batch for validation and test, images")
    # None is the rule, not a number: config.json keeps null and records the rate it resolved to.
    max_lr: float | None = opt(None, "peak learning rate of OneCycle, or the initial one of step/plateau, per "
                                     "optimiser step; a value given is used as is, whatever the batch",
                               shown_default=f"{REFERENCE_MAX_LR} x batch-size / {REFERENCE_BATCH}, "
                                             f"i.e. {REFERENCE_MAX_LR} at the default batch")
    momentum: float = opt(0.9, "SGD momentum, fraction of the previous update kept")
    nesterov: bool = opt(True, "Nesterov momentum")
    weight_decay: float = opt(5e-4, "L2 weight decay through SGD, coefficient of the weights added to the gradient")
    l1: float = opt(0.0, "L1 penalty on weights, coefficient of sum|w| added to the loss (0: off)")
    label_smoothing: float = opt(0.1, "label smoothing of the training loss, probability mass spread over all classes")
    dropout: float = opt(0.0, "dropout before the classifier, probability")
    # Evaluation (validation and test alike, so the choice is made on validation) averages the
    # logits of each image and its mirror image: the model was trained on both orientations.
    tta: bool = opt(False, "evaluate each image averaged with its mirror image (validation and test)")
    scheduler: str = opt("onecycle", "learning-rate schedule: onecycle (linear warm-up to max-lr, then down, "
                                     "per step), plateau (x gamma when validation accuracy stalls), step "
                                     "(x gamma every step-size epochs)", choices=("onecycle", "plateau", "step"))
    pct_start: float = opt(0.25, "onecycle: fraction of all steps spent warming up")
    div_factor: float = opt(10.0, "onecycle: initial lr = max-lr / div-factor (a ratio)")
    final_div_factor: float = opt(100.0, "onecycle: final lr = initial lr / final-div-factor (a ratio)")
    # On by default (what the recipe was measured with); off is what David Page's 94% recipe does.
    cycle_momentum: bool = opt(True, "onecycle: cycle momentum against the learning rate, from --momentum down "
                                     "to 0.85 x --momentum at the peak and back; --no-cycle-momentum keeps "
                                     "it at --momentum throughout")
    step_size: int = opt(10, "step: epochs between decays")
    gamma: float = opt(0.1, "step/plateau: factor the learning rate is multiplied by at each decay")
    patience: int = opt(3, "plateau: epochs without validation improvement before a decay")
    # Execution
    mixed_precision: str = opt("auto", "auto: bf16 on GPUs that have it, else fp32; no: fp32; bf16; fp16 "
                                       "(GPU, with loss scaling)", choices=("auto", "no", "bf16", "fp16"))
    channels_last: bool = opt(True, "channels_last memory format, GPU only (CPU convolutions are ~3x slower in it)")
    compile: bool = opt(False, "torch.compile the model (inductor; the first epoch pays the compilation)")
    num_workers: int = opt(-1, "DataLoader worker processes per training process; -1: auto = this node's cores "
                               "divided among its training processes, then halved on CPU (the model needs the "
                               "rest) or minus 1 on GPU, at most 12 (1 on a 2-core laptop); 0: load in the "
                               "training process")
    seed: int = opt(0, "seed of the weights, shuffling and augmentation")
    deterministic: bool = opt(False, "bit-exact reruns (slower on GPU)")
    keep_checkpoints: int = opt(2, "newest epoch checkpoints kept on disk (about 90 MB each)")
    # A checkpoint (weights + momentum, ~90 MB) costs a fraction of a second: nothing next to a CPU
    # epoch, but 8% of a ~1.5 s GPU epoch (H100, 2026-11-27). Auto keeps that share under 2%
    # whatever the hardware, and bounds what a kill loses to ~50 checkpoint-times of work.
    checkpoint_every: int = opt(0, "epochs between checkpoints; 0: auto = after the first epoch, then as soon as "
                                   "the time since the last checkpoint is 50x what that one took (under 2 percent of "
                                   "the run; every epoch of a CPU run, every few seconds on a GPU); the last "
                                   "epoch always gets one. A kill loses what came after the newest checkpoint, "
                                   "which --resume redoes exactly")
    # A process waiting in a collective (a checkpoint's barrier, the download on another rank, a
    # peer that died) gives up after this; the launchers end the rest of a job sooner when one
    # process fails, so this bounds only what they cannot see (e.g. a hung peer).
    dist_timeout: int = opt(1800, "DDP: seconds a process waits for the others in a collective before it "
                                  "fails (covers a first download on rank 0)")
    # Live tracking through Accelerate's tracker API, main process only, into the run directory
    # (tensorboard: runs/<name>/tensorboard/). Off by default: it needs an optional package.
    log_with: str = opt("none", "live tracking of per-epoch metrics and per-step loss/lr: tensorboard "
                                "(pip install -e '.[tensorboard]'; logs into runs-dir/NAME/tensorboard/), "
                                "wandb or mlflow when installed, none: off",
                        choices=TRACKERS)
    aug: AugConfig = opt(factory=AugConfig, cli=False)
    # Per-epoch values of SCHEDULABLE fields, overriding the fields above in their epochs (stretched
    # over the run: `schedule_index`); () = none. train.py's --aug-schedule FILE fills it
    # (`load_schedule`); a PBT trial gives its current values as a 1-entry schedule.
    aug_schedule: tuple[dict[str, Any], ...] = opt(factory=tuple, cli=False)

    def __post_init__(self) -> None:
        # JSON gives lists; a tuple of plain dicts keeps the config comparable and its own copy.
        object.__setattr__(self, "aug_schedule", tuple(dict(e) if isinstance(e, dict) else e
                                                       for e in (self.aug_schedule or ())))
        validate(self)

    def for_epoch(self, epoch: int) -> "TrainConfig":
        """The config 0-based `epoch` trains with: the schedule's entry for it applied (self without one)."""
        entry = self.schedule_entry(epoch)
        return self if entry is None else self.with_entry(entry)

    def with_entry(self, entry: dict[str, Any]) -> "TrainConfig":
        """This config with one schedule entry's values in place and no schedule."""
        return self.replace(**entry, aug_schedule=())

    def schedule_entry(self, epoch: int) -> dict[str, Any] | None:
        """The values the schedule sets for 0-based `epoch` (what its metrics row records); None without one."""
        if not self.aug_schedule:
            return None
        return dict(self.aug_schedule[schedule_index(epoch, self.epochs, len(self.aug_schedule))])

    @property
    def effective_max_lr(self) -> float:
        """The peak learning rate training uses: --max-lr as given, else 0.4 x batch_size / 512."""
        return self.max_lr if self.max_lr is not None else lr_for_batch(REFERENCE_MAX_LR, self.batch_size)

    def max_lr_rule(self) -> str:
        """Where the effective max_lr comes from, for the run header."""
        if self.max_lr is not None:
            return "as given"
        return f"{REFERENCE_MAX_LR} x batch {self.batch_size}/{REFERENCE_BATCH}"

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["aug_schedule"] = [dict(e) for e in self.aug_schedule]  # JSON's form: a list compares equal after a round trip
        return d

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
    if cfg.max_lr is not None and not cfg.max_lr > 0:
        raise bad("max_lr", cfg.max_lr, "the learning rate must be > 0")
    for name in ("epochs", "batch_size", "eval_batch_size", "step_size", "keep_checkpoints", "dist_timeout"):
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
    if cfg.log_with not in TRACKERS:
        raise bad("log_with", cfg.log_with, "choose " + ", ".join(TRACKERS[1:]) + " or none")
    if cfg.checkpoint_every < 0:
        raise bad("checkpoint_every", cfg.checkpoint_every, "must be >= 0 (0: auto)")
    if cfg.num_workers < -1:
        raise bad("num_workers", cfg.num_workers, "must be >= 0, or -1 for auto")
    # Both splits are stratified: fewer images than classes leaves classes out, and an accuracy
    # on 5 images moves in steps of 20%.
    for name in ("val_size", "test_subset"):
        if 0 < values[name] < NUM_CLASSES:
            zero = "0: no validation" if name == "val_size" else "0: all 10,000"
            raise bad(name, values[name], f"a stratified split needs at least one image of each of the "
                                          f"{NUM_CLASSES} classes: give >= {NUM_CLASSES} ({zero})")
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
    for i, entry in enumerate(cfg.aug_schedule):
        where = f"invalid --aug-schedule: entry {i + 1} (epoch {i + 1} of the schedule)"
        if not isinstance(entry, dict) or not entry:
            raise ConfigError(f"{where} must be a non-empty object of field: value")
        unknown = sorted(set(entry) - set(SCHEDULABLE))
        if unknown:
            raise ConfigError(f"{where}: {', '.join(unknown)} cannot be scheduled; the fields that can: "
                              f"{', '.join(SCHEDULABLE)}")
        for k, v in entry.items():
            if not isinstance(v, (int, float)) or isinstance(v, bool):
                raise ConfigError(f"{where}: {k} must be a number (got {v!r})")
        try:
            cfg.with_entry(entry)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None


# ---------------------------------------------------------------------------- CLI
def add_dataclass_arguments(group, cls: type, skip: tuple[str, ...] = (), prefix: str = "") -> None:
    """One `--flag` per field of a config dataclass, with its help, choices and default; the value
    lands in `args.<prefix><field>` (a prefix keeps two dataclasses' fields of one name apart).

    Flags default to None so that "given" and "not given" differ: a flag overrides a `--config`
    file or a saved search only when it was typed.
    """
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        meta = f.metadata
        if f.name in skip or not meta.get("cli", True):
            continue
        default = f.default if f.default is not dataclasses.MISSING else None
        kind = next((t for t in typing.get_args(hints[f.name]) if t is not type(None)), hints[f.name])
        flag = meta.get("flag") or "--" + f.name.replace("_", "-")
        shown = meta.get("shown_default") or default
        text = f"{meta.get('help', '')} (default: {shown})"
        choices = meta.get("choices")
        if kind is bool:
            group.add_argument(flag, dest=prefix + f.name, action=argparse.BooleanOptionalAction, default=None,
                               help=text)
        else:  # choices are checked by the config's validation, which says what to choose in one line
            group.add_argument(flag, dest=prefix + f.name, type=kind, default=None, help=text,
                               metavar="{" + ",".join(choices) + "}" if choices else kind.__name__.upper())


def given_fields(args: argparse.Namespace, cls: type, prefix: str = "", skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """The fields of `cls` whose flags were given, by field name."""
    return {f.name: getattr(args, prefix + f.name) for f in fields(cls)
            if f.name not in skip and getattr(args, prefix + f.name, None) is not None}


def add_config_arguments(parser: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """The flags of TrainConfig and AugConfig (flat), and `--config FILE`."""
    group = parser.add_argument_group("training configuration")
    add_dataclass_arguments(group, TrainConfig, skip)
    add_dataclass_arguments(parser.add_argument_group("augmentation (training images only)"), AugConfig, skip)
    group.add_argument("--config", type=Path, default=None, metavar="FILE",
                       help="JSON file of config fields (e.g. a run's config.json); flags override it "
                            "(default: none)")


def config_from_args(args: argparse.Namespace, skip: tuple[str, ...] = ()) -> TrainConfig:
    """Build the config: defaults, then `--config FILE`, then the flags that were given (and the
    schedule of `--aug-schedule FILE`, where the parser has that flag)."""
    cfg = load_config(args.config) if getattr(args, "config", None) is not None else TrainConfig()
    changes = {**given_fields(args, TrainConfig, skip=skip + ("aug", "aug_schedule")),
               **given_fields(args, AugConfig, skip=skip)}
    if getattr(args, "aug_schedule", None) is not None:
        changes["aug_schedule"] = load_schedule(args.aug_schedule)
    return cfg.replace(**changes) if changes else cfg


def load_schedule(path: str | Path) -> tuple[dict[str, Any], ...]:
    """The per-epoch values of a schedule file (a search's best/schedule.json: its "schedule" list of
    {"epoch": 1, field: value, ...}, epochs 1..n in order); ConfigError with one line on any problem.
    The values themselves are checked by TrainConfig (fields that can be scheduled, valid values)."""
    path = Path(path)
    where = f"--aug-schedule {path}"
    try:
        d = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{where}: no such file; give a search's best/schedule.json "
                          f"(written by `cifar-search --search-scheduler pbt`)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{where} cannot be read as JSON ({str(e).splitlines()[0] if str(e) else type(e).__name__})")\
            from None
    entries = d.get("schedule") if isinstance(d, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{where}: expected an object with a non-empty \"schedule\" list (one entry per epoch), "
                          f"as a search's best/schedule.json has")
    out = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: schedule entry {i + 1} is not an object")
        if entry.get("epoch") != i + 1:
            raise ConfigError(f"{where}: schedule entry {i + 1} has epoch {entry.get('epoch')!r}; the entries must "
                              f"be epochs 1..{len(entries)} in order")
        out.append({k: v for k, v in entry.items() if k != "epoch"})
    return tuple(out)


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
