"""Live tracking of a run through Accelerate's tracker API (`--log-with tensorboard|wandb|mlflow`).

The run directory stays the record (metrics.jsonl, steps.jsonl); a tracker shows the same numbers
while the run goes: per epoch every numeric value of the metrics.jsonl row under `epoch/<key>`,
per optimiser step `step/loss` and `step/lr`, at the end `test/acc` and `test/loss`. Every value
is logged at the global optimiser step (an epoch's values at its last step), so TensorBoard draws
epoch and step curves on one axis, and a resumed run can purge what the interrupted one logged
beyond its checkpoint (`purge_step`).

Step values reach the tracker once per epoch, with the epoch's row: collecting the loss of every
step on the device and reducing it once avoids a host sync per step.

The Accelerator carries the tracker (`pipeline.build_accelerator(cfg, run_dir)`); only the main
process logs (Accelerate's trackers are main-process only). TensorBoard writes into
`runs/<name>/tensorboard/`, so `tensorboard --logdir runs` (or `runs/search-<name>/trials`) shows
every run side by side.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from distributed.config import ConfigError, TrainConfig
from distributed.rundir import TENSORBOARD

_PACKAGES = {"tensorboard": ("tensorboard", "pip install -e '.[tensorboard]'"),
             "wandb": ("wandb", "pip install wandb"), "mlflow": ("mlflow", "pip install mlflow")}


def check_tracker(name: str) -> None:
    """Raise ConfigError (one line) when the tracker's package is missing: Accelerate would skip it
    silently, and a run the user believes is tracked would not be."""
    from accelerate.utils import is_mlflow_available, is_tensorboard_available, is_wandb_available

    available = {"tensorboard": is_tensorboard_available, "wandb": is_wandb_available,
                 "mlflow": is_mlflow_available}[name]()
    if not available:
        package, install = _PACKAGES[name]
        raise ConfigError(f"invalid --log-with {name}: the {package} package is not installed; "
                          f"`{install}`, or leave --log-with out")


def start(cfg: TrainConfig, accelerator, run_dir: Path, purge_step: int) -> bool:
    """Start the tracker `cfg.log_with` on `accelerator` (built with the run dir); True if tracking.

    purge_step: the first optimiser step this invocation will log (1 for a new run); TensorBoard
    hides events an interrupted earlier invocation logged from there on, so a resumed run shows
    each step once.
    """
    if cfg.log_with == "none" or not accelerator.log_with:
        return False
    init_kwargs = {"tensorboard": {"purge_step": purge_step},
                   "wandb": {"name": cfg.name, "dir": str(run_dir), "resume": "allow"},
                   "mlflow": {"run_name": cfg.name}}
    # TensorBoard's folder is logging_dir/project_name: runs/<name>/tensorboard/. The others name
    # a project, in which the run is called cfg.name.
    project = TENSORBOARD if cfg.log_with == "tensorboard" else "cifar-lab"
    # The config goes to trackers that show it beside the run; TensorBoard's hparams would add a
    # second "run" per training to its list, and config.json holds it anyway.
    config = None if cfg.log_with == "tensorboard" else _flat(cfg.to_dict())
    accelerator.init_trackers(project, config=config, init_kwargs=init_kwargs)
    return True


def log_epoch(accelerator, row: dict[str, Any], steps: list[dict[str, Any]]) -> None:
    """One epoch's steps (loss, lr) and its metrics row, each at its global step."""
    for s in steps:
        accelerator.log({"step/loss": s["loss"], "step/lr": s["lr"]}, step=s["step"])
    values = {f"epoch/{k}": float(v) for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    values.update({f"schedule/{k}": float(v) for k, v in (row.get("schedule") or {}).items()})
    accelerator.log(values, step=steps[-1]["step"] if steps else int(row["epoch"]))


def log_test(accelerator, test: dict[str, Any], step: int) -> None:
    accelerator.log({"test/acc": float(test["acc"]), "test/loss": float(test["loss"])}, step=step)


def finish(accelerator) -> None:
    """Close the trackers (flushes TensorBoard's event file). Not `Accelerator.end_training`: that
    also destroys the process group, which a DDP run or a Ray Train worker still needs."""
    for tracker in accelerator.trackers:
        tracker.finish()
    accelerator.trackers.clear()


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = "None" if v is None else v
    return out
