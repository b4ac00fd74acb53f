"""Population Based Training (`--search-scheduler pbt`): what changes during training, how a trial hands its
state to another, and the learned schedule the search leaves in best/schedule.json.

Ray Tune's `PopulationBasedTraining` decides: every `perturbation_interval` epochs a trial in the
bottom `quantile_fraction` of the population is paused, gets the config of a trial of the top one
with the perturbable values perturbed (x 0.8 or x 1.2, or drawn anew), and is restarted from that
donor's last reported checkpoint; never at a trial's last epoch (tuning/scheduler.py). This module
does the rest:

- which fields may change (`perturbed_fields`: the space's specs of `distributed.config.SCHEDULABLE`
  fields; `l1`'s off_or_loguniform has no Tune domain to perturb: it stays as drawn per trial, like
  `max_lr`, whose OneCycle schedule is a function of the step), their Tune form (`mutations`) and
  the clipping of a perturbed value into the space's bounds (`clip_to_space`);
- a trial's config (`trial_config`): the perturbable values go in as a 1-entry `aug_schedule`, so an
  exploit changes only the schedule (`fit(..., schedule_may_change=True)`) and every metrics row
  records the values its epoch trained with;
- the checkpoint a trial reports to Tune (`export_checkpoint`) and its adoption by the trial that
  exploits it (`adopt`): the recipient becomes an exact copy of the donor's lineage (epoch checkpoint
  with weights, optimiser, scheduler, RNG and trainer state; best weights; metrics and steps rows;
  config.json), and lineage.jsonl records the exploit;
- best/schedule.json (`write_schedule`): the best trial's values per epoch and the exploits along
  its weights' ancestry.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import uuid
from functools import partial
from pathlib import Path
from typing import Any, Callable

from distributed import rundir
from distributed.config import SCHEDULE_KIND, ConfigError, TrainConfig
from distributed.rundir import RunWriter
from tuning import space as space_mod

# In a checkpoint reported to Tune: {"trial": id, "epoch": k, "id": unique}. A trial may report the same
# epoch twice with different weights (an exploit can send it back to an earlier epoch of its donor),
# so the id, not (trial, epoch), names the state a recipient adopted.
ORIGIN = "origin.json"
# Tune's copies of the checkpoints a trial reports (search-<name>/ray/<trial>/checkpoint_*) kept per
# trial. PBT hands a donor's *last reported* checkpoint to a recipient that restarts when a slot is
# free: with fewer than 3 kept, the donor's next reports may delete it first (PBT warns at <= 2). 4
# covers a recipient waiting 3 perturbation intervals for a slot, at ~135 MB each (weights, momentum,
# best weights); ended trials' copies are removed as soon as no waiting trial needs them.
TUNE_CHECKPOINTS_KEPT = 4
_STAGING = ".tmp.tune-checkpoint"   # prefix of a checkpoint being handed to Tune (pruned with .tmp.*)


# ----------------------------------------------------------------------------- what PBT perturbs
def perturbed_fields(space: dict[str, Any]) -> list[str]:
    """The space's fields PBT perturbs: SCHEDULABLE ones with a range or choice (a constant stays
    constant), except off_or_loguniform (l1): no Tune domain to perturb, so each trial keeps its draw."""
    from distributed.config import SCHEDULABLE

    return sorted(k for k, spec in space.items()
                  if k in SCHEDULABLE and isinstance(spec, dict) and spec["type"] != "off_or_loguniform")


def mutations(space: dict[str, Any]) -> dict[str, Any]:
    """PBT's `hyperparam_mutations`: a Tune domain per perturbed field (perturbed x 0.8 / x 1.2 or
    resampled); a choice as its list of values (PBT then shifts to a neighbouring value)."""
    out = {}
    for key in perturbed_fields(space):
        spec = space[key]
        out[key] = list(spec["values"]) if spec["type"] == "choice" else space_mod.to_tune({key: spec})[key]
    return out


def clip_to_space(specs: dict[str, dict[str, Any]], config: dict[str, Any]) -> dict[str, Any]:
    """PBT's `custom_explore_fn`: each perturbed value back into its spec's bounds (Ray multiplies by
    0.8 or 1.2 without a look at them: flip_p 0.45 x 1.2 = 0.54 would leave [0, 0.5]); randint
    values rounded to whole numbers within their bounds."""
    out = dict(config)
    for key, spec in specs.items():
        if key not in out or spec["type"] not in ("uniform", "loguniform", "randint"):
            continue
        lo, hi = spec["lower"], spec["upper"]
        if spec["type"] == "randint":
            out[key] = int(min(max(round(out[key]), int(lo)), int(hi)))
        else:
            out[key] = float(min(max(out[key], lo), hi))
    return out


def explore_fn(space: dict[str, Any]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """`clip_to_space` for this space's perturbed fields, picklable (Tune saves its scheduler)."""
    return partial(clip_to_space, {k: space[k] for k in perturbed_fields(space)})


def check_space(space: dict[str, Any]) -> list[str]:
    """The perturbed fields; ConfigError when there are none (PBT would only copy weights around)."""
    fields = perturbed_fields(space)
    if not fields:
        from distributed.config import SCHEDULABLE

        raise ConfigError("--search-scheduler pbt: the search space has no field PBT may perturb; give a range to at "
                          f"least one of {', '.join(sorted(set(SCHEDULABLE) - {'l1'}))} (--space FILE)")
    return fields


# ----------------------------------------------------------------------------- trial side
def trial_config(base_cfg: TrainConfig, params: dict[str, Any], specs: dict[str, dict[str, Any]],
                 interval: int) -> TrainConfig:
    """A PBT trial's config: the base with the trial's fixed params (max_lr, l1, ...), the perturbed
    ones as a 1-entry `aug_schedule` (constant until the next exploit changes it), and a checkpoint
    at every perturbation epoch (the one reported to Tune).

    Every trial's config is the same but for the fixed params and the schedule, so the config.json
    an exploit brings in matches the recipient's new config. When cutout_max is perturbed, cutout_min
    is the base's or the space's lowest cutout_max, whichever is lower (one value for every trial)."""
    fixed = {k: v for k, v in params.items() if k not in specs}
    cfg = space_mod.apply_params(base_cfg, fixed)
    if "cutout_max" in specs and "cutout_min" not in fixed:
        low = min(specs["cutout_max"]["values"]) if specs["cutout_max"]["type"] == "choice" \
            else int(specs["cutout_max"]["lower"])
        cfg = cfg.replace(cutout_min=min(cfg.aug.cutout_min, int(low)))
    typed = space_mod.apply_params(cfg, {k: params[k] for k in specs if k in params})
    entry = {k: (getattr(typed.aug, k) if hasattr(typed.aug, k) else getattr(typed, k)) for k in specs if k in params}
    return cfg.replace(aug_schedule=(entry,), checkpoint_every=interval)


def export_checkpoint(run_dir: Path, epoch: int, trial_id: str) -> Path:
    """A folder to report to Tune after `epoch` (its checkpoint just written): what a recipient needs to
    become this trial's exact copy at that epoch. Hard links where the files are never rewritten in
    place (Tune copies them into its storage), copies of the JSON-lines files cut at `epoch`. The
    caller removes the folder once `tune.report` returned (Tune has copied it by then)."""
    run_dir = Path(run_dir)
    source = run_dir / rundir.CHECKPOINTS / f"epoch_{epoch:04d}"
    dest = Path(tempfile.mkdtemp(prefix=_STAGING, dir=run_dir))
    _link_tree(source, dest / rundir.CHECKPOINTS / source.name)
    if (run_dir / rundir.BEST_WEIGHTS).exists():
        rundir.link_or_copy(run_dir / rundir.BEST_WEIGHTS, dest / rundir.BEST_WEIGHTS)
    for name in (rundir.METRICS, rundir.STEPS):
        rows = [r for r in rundir.read_jsonl(run_dir / name) if r.get("epoch", 0) <= epoch]
        (dest / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    shutil.copy2(run_dir / rundir.CONFIG, dest / rundir.CONFIG)
    (dest / ORIGIN).write_text(json.dumps({"trial": trial_id, "epoch": epoch, "id": uuid.uuid4().hex}) + "\n")
    return dest


def remove_staging(run_dir: Path) -> None:
    """Checkpoint folders a killed or paused trial left before Tune took them."""
    for path in Path(run_dir).glob(_STAGING + "*"):
        shutil.rmtree(path, ignore_errors=True)


def adopt(run_dir: Path, checkpoint_dir: Path, trial_id: str, before: dict[str, Any],
          after: dict[str, Any]) -> dict[str, Any] | None:
    """On a (re)start with a checkpoint from Tune: when it is another trial's (an exploit), make this
    trial's run directory that trial's copy at the checkpoint's epoch and append the lineage row;
    return the row. None when the checkpoint is this trial's own (a retry after a lost worker, a
    search --resume: the trial resumes from its own newest checkpoint, as under ASHA), or when this
    exploit was already adopted and the values are unchanged (a retry after a later loss that
    reported nothing newer: Tune restarts it with the same config and checkpoint). The same
    checkpoint with new values is a new exploit (PBT drew the same donor, which has reported
    nothing newer since): adopted again, back to that epoch.

    before/after: the perturbed fields' values this trial had (its last start's) and gets."""
    checkpoint_dir, run_dir = Path(checkpoint_dir), Path(run_dir)
    origin_file = checkpoint_dir / ORIGIN
    if not origin_file.exists():
        return None
    origin = rundir.read_json(origin_file)
    if origin["trial"] == trial_id:
        return None
    done = rundir.read_jsonl(run_dir / rundir.LINEAGE)
    if done and done[-1].get("checkpoint") == origin.get("id") and before == after:
        return None
    writer = RunWriter(run_dir)
    writer.adopt(checkpoint_dir, trial_id)
    row = {"epoch": int(origin["epoch"]), "donor": origin["trial"], "checkpoint": origin.get("id"),
           "before": before, "after": after,
           "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    writer.log_lineage(row)
    return row


def seed_own_checkpoint(run_dir: Path, checkpoint_dir: Path) -> None:
    """A trial's own checkpoint from Tune into a run directory that has none (a node without the
    shared runs folder): what `runner._restore_checkpoint` does for ASHA's flat checkpoints."""
    if rundir.checkpoint_dirs(run_dir):
        return
    for src in rundir.checkpoint_dirs(checkpoint_dir):
        shutil.copytree(src, Path(run_dir) / rundir.CHECKPOINTS / src.name, dirs_exist_ok=True)


def _link_tree(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst, copy_function=rundir.link_or_copy)


# ----------------------------------------------------------------------------- driver side
def count_exploits(search_dir: Path) -> int:
    """Exploits so far: the rows of every trial's lineage.jsonl."""
    return sum(len(rundir.read_jsonl(p)) for p in (Path(search_dir) / rundir.TRIALS).glob(f"*/{rundir.LINEAGE}"))


def lineage_chain(trials_dir: Path, trial_id: str, upto: int | None = None) -> list[dict[str, Any]]:
    """The exploits along the ancestry of `trial_id`'s weights (up to epoch `upto`), oldest first:
    {"epoch", "trial" (recipient), "donor"}. Only a trial's last exploit at or before `upto` counts
    (it replaced whatever came before), then the donor's ancestry up to that epoch, recursively."""
    rows = [r for r in rundir.read_jsonl(Path(trials_dir) / trial_id / rundir.LINEAGE)
            if upto is None or r["epoch"] <= upto]
    if not rows:
        return []
    last = rows[-1]
    return [*lineage_chain(trials_dir, last["donor"], last["epoch"]),
            {"epoch": last["epoch"], "trial": trial_id, "donor": last["donor"]}]


def write_schedule(search_dir: Path, search_name: str, trial_id: str, fields: list[str]) -> Path:
    """best/schedule.json (the format of distributed.config.load_schedule): per epoch the values the
    best trial's weights trained with (its metrics rows' "schedule": the donors' rows up to each
    exploit), and the exploits of its ancestry."""
    search_dir = Path(search_dir)
    rows = rundir.read_metrics(search_dir / rundir.TRIALS / trial_id)
    schedule = [{"epoch": r["epoch"], **{k: r["schedule"][k] for k in fields}} for r in rows]
    doc = {"kind": SCHEDULE_KIND, "version": 1, "search": search_name, "trial": trial_id, "epochs": len(rows),
           "fields": list(fields), "schedule": schedule,
           "lineage": lineage_chain(search_dir / rundir.TRIALS, trial_id)}
    path = search_dir / rundir.BEST_TRIAL / rundir.SCHEDULE
    rundir.write_json(path, doc)
    return path


def prune_tune_checkpoints(trial_path: str | None, keep: set[str]) -> None:
    """Remove Tune's copies of an ended trial's checkpoints (ray/<trial>/checkpoint_*), except those a
    trial still waiting to adopt them holds (`keep`: paths of live trials' `Trial.checkpoint`)."""
    if not trial_path or not Path(trial_path).is_dir():
        return
    keep = {os.path.normpath(k) for k in keep}
    for path in Path(trial_path).glob("checkpoint_*"):
        if path.is_dir() and os.path.normpath(path) not in keep:
            shutil.rmtree(path, ignore_errors=True)
