"""Ray Tune search over `distributed.engine.fit`: ASHA on validation accuracy, best trial tested once.

    run_search(base_cfg, SearchConfig(name="s1", num_samples=32)) -> summary dict

Each trial is the same `fit` the CLI runs; only its per-epoch callback differs (it reports to Tune).
With `workers_per_trial > 1` a trial is a Ray Train V2 `TorchTrainer` (DDP over N workers, Accelerate
inside each) launched from the Tune trial, whose rank-0 reports reach Tune via `TuneReportCallback`.

Layout (see distributed/rundir.py):
    runs/search-<name>/search.json, results.csv, trials/<trial_id>/ (fit's run dir), best/, ray/ (Tune's
    experiment, what `--resume` restores), ray-train/ (Train V2 runs of DDP trials).
"""
from __future__ import annotations

import csv
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from distributed import rundir
from distributed.config import ConfigError, TrainConfig
from tuning import space as space_mod

METRIC, MODE = "val_acc", "max"
SEARCH_JSON, RESULTS_CSV, TRIALS, BEST = rundir.SEARCH_JSON, rundir.RESULTS_CSV, rundir.TRIALS, rundir.BEST_TRIAL
RAY_DIR = "ray"


@dataclass(frozen=True)
class SearchConfig:
    """How to search (the per-trial training config is the separate TrainConfig)."""

    name: str = "search"
    num_samples: int = 32
    grace_period: int = 1              # ASHA: epochs every trial gets before it can be stopped
    reduction_factor: int = 2          # ASHA: keep the top 1/rf at each rung
    gpus_per_trial: float = 0.0        # per trial process (per worker with workers_per_trial > 1)
    cpus_per_trial: float = 1.0        # idem
    workers_per_trial: int = 1         # > 1: DDP trial through Ray Train's TorchTrainer
    max_concurrent_trials: int = 0     # 0: as many as the resources allow
    address: str | None = None         # join an existing cluster ("auto" or host:port); None: local Ray
    num_cpus: int | None = None        # local Ray only: CPUs it may use (None: all)
    resume: bool = False
    space: dict[str, Any] = field(default_factory=dict)   # overrides merged over DEFAULT_SPACE
    seed: int = 0                      # sampling seed
    verbose: int = 1
    # Copy every epoch checkpoint (~90 MB) into Ray's storage. Only needed on a cluster whose nodes
    # do not share --runs-dir: trials resume from their own run dir otherwise, and the copy costs I/O.
    tune_checkpoints: bool = False

    def __post_init__(self) -> None:
        def bad(flag: str, value: Any, why: str) -> ConfigError:
            return ConfigError(f"invalid --{flag} {value!r}: {why}")

        if not self.name or "/" in self.name or self.name in (".", ".."):
            raise bad("name", self.name, "a search name must be a plain folder name")
        if self.num_samples < 1:
            raise bad("num-samples", self.num_samples, "must be >= 1")
        if self.grace_period < 1:
            raise bad("grace-period", self.grace_period, "must be >= 1")
        if self.reduction_factor < 2:
            raise bad("reduction-factor", self.reduction_factor, "must be >= 2")
        if not (math.isfinite(self.gpus_per_trial) and self.gpus_per_trial >= 0):
            raise bad("gpus-per-trial", self.gpus_per_trial, "must be >= 0 (fractions share a GPU)")
        if not (math.isfinite(self.cpus_per_trial) and self.cpus_per_trial > 0):
            raise bad("cpus-per-trial", self.cpus_per_trial, "must be > 0")
        if self.gpus_per_trial > 1 and not float(self.gpus_per_trial).is_integer():
            raise bad("gpus-per-trial", self.gpus_per_trial, "above 1 it must be a whole number")
        if self.workers_per_trial < 1:
            raise bad("workers-per-trial", self.workers_per_trial, "must be >= 1")
        if self.max_concurrent_trials < 0:
            raise bad("max-concurrent-trials", self.max_concurrent_trials, "must be >= 0")
        if self.num_cpus is not None and self.num_cpus < 1:
            raise bad("num-cpus", self.num_cpus, "must be >= 1")


@dataclass(frozen=True)
class _TrialSetup:
    """What every trial needs besides its sampled params; shipped once through the object store."""

    base_config: dict[str, Any]
    search_dir: str
    data_ref: Any                      # ray.ObjectRef of the CifarArrays, read once by the driver
    workers: int
    cpus: float
    gpus: float
    tune_checkpoints: bool = False


# ----------------------------------------------------------------------------- trial side
def _metrics_for_tune(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if v is not None}


def _trial_fn(config: dict[str, Any], setup: _TrialSetup) -> None:
    """One Tune trial: `fit` in this process, or DDP over `setup.workers` Ray Train workers."""
    import ray
    from ray import tune

    trial_id = tune.get_context().get_trial_id()
    run_dir = Path(setup.search_dir) / TRIALS / trial_id
    cfg = space_mod.apply_params(TrainConfig.from_dict(setup.base_config), config).replace(name=trial_id)
    _restore_checkpoint(run_dir)
    if setup.workers > 1:
        _run_ddp_trial(cfg, run_dir, setup, trial_id)
        return

    from distributed.engine import EpochReport, fit

    reported = []

    def report(r: EpochReport) -> None:
        reported.append(r.epoch)
        ckpt = (tune.Checkpoint.from_directory(str(r.checkpoint))
                if setup.tune_checkpoints and r.checkpoint is not None else None)
        tune.report(_metrics_for_tune(r.metrics), checkpoint=ckpt)

    fit(cfg, run_dir, callback=report, resume=True, data=ray.get(setup.data_ref), evaluate_test=False,
        progress=False)
    _report_if_silent(run_dir, reported)


def _restore_checkpoint(run_dir: Path) -> None:
    """A restored trial resumes from its run dir's own checkpoints (`fit(resume=True)`); when that dir
    lacks them (trial moved to another node without shared runs_dir), seed it from Tune's checkpoint."""
    from ray import tune

    ckpt = tune.get_checkpoint()
    if ckpt is None or rundir.checkpoint_dirs(run_dir):
        return
    with ckpt.as_directory() as d:
        state = rundir.read_json(Path(d) / rundir.TRAINER_STATE)
        dest = run_dir / rundir.CHECKPOINTS / f"epoch_{int(state['epoch']):04d}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(d, dest, dirs_exist_ok=True)


def _report_if_silent(run_dir: Path, reported: list[int]) -> None:
    """A trial whose fit had already finished (killed after its last epoch, before Tune heard of it)
    reports its last logged epoch so Tune records a result for it."""
    from ray import tune

    if not reported:
        rows = rundir.read_metrics(run_dir)
        if rows:
            tune.report(_metrics_for_tune(rows[-1]))


def _run_ddp_trial(cfg: TrainConfig, run_dir: Path, setup: _TrialSetup, trial_id: str) -> None:
    """DDP trial: Ray Train V2 TorchTrainer (gloo on CPU, nccl on GPU), Accelerate in each worker."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    use_gpu = setup.gpus > 0
    resources = {"CPU": setup.cpus}
    if use_gpu:
        resources["GPU"] = setup.gpus
    trainer = TorchTrainer(
        _ddp_worker,
        train_loop_config={"cfg": cfg.to_dict(), "run_dir": str(run_dir), "data": [setup.data_ref]},
        scaling_config=ray.train.ScalingConfig(num_workers=setup.workers, use_gpu=use_gpu,
                                               resources_per_worker=resources),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        run_config=ray.train.RunConfig(name=trial_id, storage_path=str(Path(setup.search_dir) / "ray-train"),
                                       callbacks=[TuneReportCallback()],
                                       failure_config=ray.train.FailureConfig(max_failures=0)),
    )
    trainer.fit()  # raises TrainingFailedError when a worker raises: the Tune trial errors with it


def _ddp_worker(conf: dict[str, Any]) -> None:
    """Runs on every Ray Train worker: Ray has set RANK/WORLD_SIZE/MASTER_* and the process group."""
    import ray
    import ray.train
    import torch

    if not torch.cuda.is_available():
        os.environ["ACCELERATE_USE_CPU"] = "true"  # else Accelerate sees 1 process and check_launch stops
    from distributed.engine import EpochReport, fit

    reported = []

    def report(r: EpochReport) -> None:
        # Every rank reports (Train V2 synchronises them); rank 0's metrics reach Tune. The epoch
        # checkpoints stay in the trial run dir, which a restarted trial resumes from.
        reported.append(r.epoch)
        ray.train.report(_metrics_for_tune(r.metrics))

    run_dir = Path(conf["run_dir"])
    fit(TrainConfig.from_dict(conf["cfg"]), run_dir, callback=report, resume=True,
        data=ray.get(conf["data"][0]), evaluate_test=False, progress=False)
    if not reported:
        rows = rundir.read_metrics(run_dir)
        if rows:
            ray.train.report(_metrics_for_tune(rows[-1]))


# ----------------------------------------------------------------------------- driver side
def search_dir_for(base_cfg: TrainConfig, name: str) -> Path:
    return (Path(base_cfg.runs_dir) / f"search-{name}").resolve()


def load_saved_search(search_dir: Path) -> tuple[TrainConfig, dict[str, Any]]:
    """The base config and search settings a previous run of this search stored in search.json."""
    path = search_dir / SEARCH_JSON
    if not path.exists():
        raise ConfigError(f"--resume: {search_dir} holds no search (no {SEARCH_JSON}); start it without --resume")
    saved = rundir.read_json(path)
    return TrainConfig.from_dict(saved["base_config"]), saved["search"]


def run_search(base_cfg: TrainConfig, search: SearchConfig, *, data: Any = None) -> dict[str, Any]:
    """Run (or resume) the search; write search.json, results.csv and best/; return the summary.

    base_cfg: every trial's config before its sampled params (epochs = ASHA's max epochs).
    data:     preloaded CifarArrays (default: read base_cfg.data_dir once here).
    Raises ConfigError on bad settings; failed trials do not raise (status ERROR in results.csv).
    """
    start = time.time()
    search_dir = search_dir_for(base_cfg, search.name)
    space = space_mod.merge_space(search.space)
    space_mod.validate_space(space, base_cfg)
    if base_cfg.val_size <= 0:
        raise ConfigError("invalid --val-size 0: a search selects on validation accuracy; give it a split")
    ray_path = search_dir / RAY_DIR
    if search.resume:
        if not ray_path.is_dir():
            raise ConfigError(f"--resume: no Ray experiment in {ray_path}; start the search without --resume")
    elif search_dir.exists() and any(search_dir.iterdir()):
        raise ConfigError(f"{search_dir} already holds a search; pass --resume to continue it, "
                          f"or choose another --name")
    search_dir.mkdir(parents=True, exist_ok=True)
    saved = rundir.read_json(search_dir / SEARCH_JSON) if (search_dir / SEARCH_JSON).exists() else {}
    info: dict[str, Any] = {
        "name": search.name, "search": _search_settings(search), "space": space,
        "base_config": base_cfg.to_dict(), "metric": METRIC, "mode": MODE, "status": "running",
        "started": saved.get("started", time.strftime("%Y-%m-%dT%H:%M:%S%z")),
        "previous_wall_seconds": saved.get("wall_seconds", 0.0) or 0.0,
    }
    rundir.write_json(search_dir / SEARCH_JSON, info)

    import ray
    from ray import tune

    started_ray = _init_ray(search)
    try:
        if data is None:
            from distributed.data import load_cifar10
            data = load_cifar10(base_cfg.data_dir, download=base_cfg.download)
        data_ref = ray.put(data)  # one copy in the object store; every trial (and DDP worker) ray.gets it
        setup = _TrialSetup(base_cfg.to_dict(), str(search_dir), data_ref, search.workers_per_trial,
                            search.cpus_per_trial, search.gpus_per_trial, search.tune_checkpoints)
        trainable = tune.with_resources(tune.with_parameters(_trial_fn, setup=setup), _trial_resources(search))
        if search.resume:
            tuner = tune.Tuner.restore(str(ray_path), trainable, resume_unfinished=True,
                                       resume_errored=False, restart_errored=False)
        else:
            tuner = tune.Tuner(trainable, param_space=space_mod.to_tune(space),
                               tune_config=_tune_config(base_cfg, search),
                               run_config=_run_config(search_dir, search))
        grid = tuner.fit()
        trials = _collect(grid, search_dir, base_cfg)
        # Tune returns normally after Ctrl-C: an interrupted search has unfinished or unstarted trials.
        interrupted = len(trials) < search.num_samples or any(
            t["status"] not in ("TERMINATED", "STOPPED", "ERROR") for t in trials)
        best = _select_best(trials)
        best_summary = None
        if best is not None and not interrupted:  # the test set is touched once, when the search is done
            best_summary = export_best(search_dir, best, data)
    finally:
        if started_ray:
            ray.shutdown()

    counts = {s: sum(t["status"] == s for t in trials) for s in ("TERMINATED", "STOPPED", "ERROR")}
    write_results_csv(search_dir / RESULTS_CSV, trials, list(space))
    wall = time.time() - start + info["previous_wall_seconds"]
    summary = {
        "search_dir": str(search_dir), "wall_seconds": wall, "trials": len(trials),
        "completed": counts["TERMINATED"], "stopped": counts["STOPPED"], "failed": counts["ERROR"],
        "best_trial": best["trial_id"] if best else None,
        "best_val_acc": best["best_val_acc"] if best else None,
        "best_epoch": best["best_epoch"] if best else None,
        "best_params": best["params"] if best else None,
        "test_acc": best_summary["test_acc"] if best_summary else None,
        "interrupted": interrupted,
    }
    info.update(status="interrupted" if interrupted else "finished", wall_seconds=wall, summary=summary,
                finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    info.pop("previous_wall_seconds", None)
    rundir.write_json(search_dir / SEARCH_JSON, info)
    print(summary_line(summary), flush=True)
    return summary


def summary_line(s: dict[str, Any]) -> str:
    if s.get("interrupted"):
        best = f"interrupted; continue with --name {Path(s['search_dir']).name[len('search-'):]} --resume"
    elif s["best_trial"]:
        best = (f"best {s['best_trial']} val_acc {s['best_val_acc']:.4f} (epoch {s['best_epoch']}), "
                f"test_acc {s['test_acc']:.4f}")
    else:
        best = "no trial produced a validation result"
    return (f"search {Path(s['search_dir']).name}: {s['trials']} trials in {s['wall_seconds']:.0f} s | "
            f"{s['completed']} completed, {s['stopped']} stopped early, {s['failed']} failed | {best}")


def _search_settings(search: SearchConfig) -> dict[str, Any]:
    d = asdict(search)
    d.pop("resume", None)
    return d


def _init_ray(search: SearchConfig) -> bool:
    """Start (or join) Ray with no dashboard and no usage stats; False if already initialised."""
    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    # Tune's own progress output (CLIReporter) instead of the new AIR console output.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": "WARNING",
                              "runtime_env": {"env_vars": {"RAY_USAGE_STATS_ENABLED": "0",
                                                           "RAY_TRAIN_V2_ENABLED": "1"}}}
    if search.address:
        ray.init(address=search.address, **kwargs)
    else:
        ray.init(num_cpus=search.num_cpus, **kwargs)
    return True


def _trial_resources(search: SearchConfig) -> dict[str, float]:
    if search.workers_per_trial > 1:
        # The trial only drives the TorchTrainer; its workers hold the CPUs/GPUs.
        # Ray refuses an empty bundle: a token of memory instead of a CPU the workers need.
        return {"cpu": 0, "memory": 1}
    return {"cpu": search.cpus_per_trial, "gpu": search.gpus_per_trial}


def _max_concurrent(search: SearchConfig) -> int:
    """Concurrent trials the cluster can hold; needed for DDP trials, whose 0-CPU driver Tune
    would otherwise start without bound while their workers wait for resources."""
    if search.max_concurrent_trials:
        return search.max_concurrent_trials
    if search.workers_per_trial == 1:
        return 0  # Tune derives it from the trial resources
    import ray

    total = ray.cluster_resources()
    n = search.workers_per_trial
    fits = [int(total.get("CPU", 0) // (n * search.cpus_per_trial))]
    if search.gpus_per_trial > 0:
        fits.append(int(total.get("GPU", 0) // (n * search.gpus_per_trial)))
    concurrent = min(fits)
    if concurrent < 1:
        raise ConfigError(f"invalid --workers-per-trial {n}: the cluster ({total.get('CPU', 0):g} CPUs, "
                          f"{total.get('GPU', 0):g} GPUs) cannot hold {n} workers of "
                          f"{search.cpus_per_trial:g} CPU / {search.gpus_per_trial:g} GPU")
    return concurrent


def _tune_config(base_cfg: TrainConfig, search: SearchConfig):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    # time_attr "epoch" (1-based, from fit's metrics) rather than training_iteration: it stays
    # right across a resumed trial whatever Tune's own counter did.
    scheduler = ASHAScheduler(time_attr="epoch", max_t=base_cfg.epochs, grace_period=search.grace_period,
                              reduction_factor=search.reduction_factor,
                              # let a trial at max epochs return by itself, so fit writes its final
                              # weights and summary instead of being killed after its last report
                              stop_last_trials=False)
    return tune.TuneConfig(metric=METRIC, mode=MODE, scheduler=scheduler, num_samples=search.num_samples,
                           # max_concurrent goes to the generator: Tune ignores TuneConfig's for it.
                           search_alg=BasicVariantGenerator(random_state=search.seed,
                                                            max_concurrent=_max_concurrent(search)),
                           trial_dirname_creator=lambda trial: trial.trial_id)


def _run_config(search_dir: Path, search: SearchConfig):
    from ray import tune

    reporter = tune.CLIReporter(
        metric_columns={"epoch": "epoch", "val_acc": "val_acc", "train_loss": "train_loss"},
        parameter_columns=None, max_report_frequency=30, sort_by_metric=True)
    return tune.RunConfig(
        name=RAY_DIR, storage_path=str(search_dir),
        failure_config=tune.FailureConfig(max_failures=0),  # a failed trial stays failed; the search goes on
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        progress_reporter=reporter, verbose=search.verbose)


def _collect(grid, search_dir: Path, base_cfg: TrainConfig) -> list[dict[str, Any]]:
    """One row per trial, from Tune's trial records plus the trial run dir's own metrics."""
    trials = []
    for trial in grid._experiment_analysis.trials:
        run_dir = search_dir / TRIALS / trial.trial_id
        rows = rundir.read_metrics(run_dir)
        vals = [r for r in rows if r.get("val_acc") is not None]
        best = max(vals, key=rundir.selection_key) if vals else None  # the epoch fit kept as best.safetensors
        best_val, best_epoch = (best["val_acc"], best["epoch"]) if best else (None, None)
        epochs = rows[-1]["epoch"] if rows else 0
        if trial.status == "ERROR":
            status = "ERROR"
        elif trial.status == "TERMINATED":
            status = "TERMINATED" if epochs >= base_cfg.epochs else "STOPPED"
        else:
            status = trial.status  # PENDING/RUNNING/PAUSED: the search was interrupted
        error = None
        if trial.status == "ERROR":
            error = _error_line(trial)
        trials.append({"trial_id": trial.trial_id, "status": status, "epochs": epochs,
                       "best_val_acc": best_val, "best_epoch": best_epoch,
                       "last_val_acc": vals[-1]["val_acc"] if vals else None,
                       "params": {k: v for k, v in trial.config.items()}, "run_dir": run_dir, "error": error})
    trials.sort(key=lambda t: (t["best_val_acc"] is None, -(t["best_val_acc"] or 0.0), t["trial_id"]))
    return trials


def _error_line(trial) -> str | None:
    try:
        path = getattr(trial, "error_file", None) or getattr(trial.run_metadata, "error_filename", None)
        text = Path(path).read_text() if path and Path(path).exists() else str(trial.run_metadata.pickled_error_filename)
    except Exception:  # the error text is a courtesy; never fail the summary over it
        return "failed"
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    for ln in reversed(lines):
        if "Error" in ln or "Exception" in ln:
            return ln[:300]
    return lines[-1][:300] if lines else "failed"


def _select_best(trials: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Best validation accuracy at any epoch, among trials that did not fail (else among all)."""
    ok = [t for t in trials if t["best_val_acc"] is not None and (t["run_dir"] / rundir.BEST_WEIGHTS).exists()]
    good = [t for t in ok if t["status"] != "ERROR"] or ok
    return good[0] if good else None  # trials are sorted best first


def export_best(search_dir: Path, best: dict[str, Any], data: Any) -> dict[str, Any]:
    """best/ in the layout of a train.py run, its best-epoch weights evaluated once on the test set."""
    from distributed.engine import (build_accelerator, build_pipeline, evaluate, steady_images_per_sec,
                                    write_predictions)
    from distributed.model import unwrap
    from safetensors.torch import load_file

    src, dest = Path(best["run_dir"]), search_dir / BEST
    tmp = search_dir / (BEST + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in (rundir.CONFIG, rundir.METRICS, rundir.BEST_WEIGHTS):
        shutil.copy2(src / name, tmp / name)
    shutil.copy2(src / rundir.BEST_WEIGHTS, tmp / rundir.FINAL_WEIGHTS)  # the weights the summary describes
    trial_info = rundir.read_json(src / rundir.CONFIG)
    cfg = TrainConfig.from_dict(trial_info["config"])

    accelerator = build_accelerator(cfg)
    p = build_pipeline(cfg, accelerator, data)
    unwrap(accelerator.unwrap_model(p.model)).load_state_dict(load_file(str(src / rundir.BEST_WEIGHTS)))
    test = evaluate(p.model, p.test_loader, accelerator, cfg.tta)
    write_predictions(tmp, test)
    rows = rundir.read_metrics(src)
    summary = {
        "test_acc": test["acc"], "test_loss": test["loss"], "test_count": test["count"],
        "best_val_acc": best["best_val_acc"], "best_epoch": best["best_epoch"], "epochs": best["epochs"],
        "wall_seconds": rows[-1]["wall_seconds"] if rows else 0.0,
        "images_per_sec": steady_images_per_sec(src),
        "device": trial_info.get("device"), "world_size": trial_info.get("world_size"),
        "mixed_precision": trial_info.get("mixed_precision"), "num_params": trial_info.get("num_params"),
        "mean": trial_info.get("mean"), "std": trial_info.get("std"), "weights": rundir.FINAL_WEIGHTS,
        "trial_id": best["trial_id"], "trial_status": best["status"], "search": search_dir.name,
        "params": best["params"],
    }
    rundir.write_json(tmp / rundir.SUMMARY, summary)
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
    print(f"best trial {best['trial_id']}: val_acc {best['best_val_acc']:.4f} at epoch {best['best_epoch']}, "
          f"test_acc {test['acc']:.4f} on {test['count']} images -> {dest}", flush=True)
    return summary


def write_results_csv(path: Path, trials: list[dict[str, Any]], param_names: list[str]) -> None:
    """results.csv: one row per trial, best validation accuracy first."""
    names = list(dict.fromkeys(param_names + [k for t in trials for k in t["params"]]))
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["trial_id", "status", "epochs", "best_val_acc", "best_epoch", "last_val_acc", *names, "error"])
        for t in trials:
            w.writerow([t["trial_id"], t["status"], t["epochs"], _fmt(t["best_val_acc"]), t["best_epoch"] or "",
                        _fmt(t["last_val_acc"]), *[_fmt(t["params"].get(n)) for n in names], t["error"] or ""])
    os.replace(tmp, path)


def _fmt(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return v
