"""Ray Tune search over `distributed.engine.fit`: ASHA (or PBT) on validation accuracy, best trial tested once.

    run_search(base_cfg, SearchConfig(name="s1", num_samples=32)) -> summary dict

Each trial is the same `fit` the CLI runs; only its per-epoch callback differs (it reports to Tune).
With `workers_per_trial > 1` a trial is a Ray Train V2 `TorchTrainer` (DDP over N workers, Accelerate
inside each) launched from the Tune trial, whose rank-0 reports reach Tune via `TuneReportCallback`.
With `--search-scheduler pbt` (tuning/pbt.py) every trial runs in one process, reports a checkpoint at each
perturbation epoch, and on a restart with another trial's checkpoint (an exploit) adopts it first.

Layout (see distributed/rundir.py):
    runs/search-<name>/search.json, results.csv, trials/<trial_id>/ (fit's run dir), best/, ray/ (Tune's
    experiment, what `--resume` restores), ray-train/ (Train V2 runs of DDP trials).

Output: one compact progress view (tuning/progress.py); each trial's own output goes to its
trials/<id>/train.log, never to the search's terminal. `verbose` brings back Tune's status tables.
"""
from __future__ import annotations

import os
import random
import shutil
import sys
import time
import traceback
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Iterator

from distributed import rundir
from distributed.config import ConfigError, TrainConfig
from distributed.rundir import RunWriter
from tuning import pbt, results
from tuning import space as space_mod
from tuning.config import SearchConfig

METRIC, MODE = "val_acc", "max"
RAY_DIR = "ray"


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
    placement_strategy: str = "PACK"
    # PBT only: the perturbed fields' space specs, and the epochs between perturbations.
    pbt_specs: dict[str, Any] | None = None
    pbt_interval: int = 0


# ----------------------------------------------------------------------------- trial side
@contextmanager
def _output_to_trial_log(run_dir: Path) -> Iterator[None]:
    """This process's output into the trial's train.log; an exception's traceback too, before it
    propagates (Tune records the trial as ERROR; the log keeps the whole story)."""
    with RunWriter(run_dir).output_to_log():
        try:
            yield
        except Exception:  # not SystemExit: that is how Tune stops a trial
            traceback.print_exc(file=sys.stderr)
            raise


def _logged_trial(config: dict[str, Any], setup: _TrialSetup) -> None:
    """The Tune trainable: `_trial` with its output in trials/<id>/train.log."""
    from ray import tune

    with _output_to_trial_log(Path(setup.search_dir) / rundir.TRIALS / tune.get_context().get_trial_id()):
        _trial(config, setup)


def _logged_fit_and_report(job: dict[str, Any]) -> None:
    """A DDP worker's loop: `_fit_and_report` with the worker's output in the trial's train.log."""
    with _output_to_trial_log(Path(job["run_dir"])):
        _fit_and_report(job)


def _trial(config: dict[str, Any], setup: _TrialSetup) -> None:
    """One Tune trial: its config, then `fit` in this process or DDP over `setup.workers` workers."""
    from ray import tune

    from distributed.pipeline import workers_for_cores

    trial_id = tune.get_context().get_trial_id()
    run_dir = Path(setup.search_dir) / rundir.TRIALS / trial_id
    params = space_mod.trial_params(config)
    base = TrainConfig.from_dict(setup.base_config)
    if setup.pbt_specs is not None:
        cfg = pbt.trial_config(base, params, setup.pbt_specs, setup.pbt_interval).replace(name=trial_id)
    else:
        cfg = space_mod.apply_params(base, params).replace(name=trial_id)
    if cfg.num_workers < 0:
        # Loader workers from what Ray reserved for each trial process, not from the host's cores
        # (4 trials on a 16-core GPU node would otherwise start 12 workers each).
        cfg = cfg.replace(num_workers=workers_for_cores(int(setup.cpus), on_gpu=setup.gpus > 0))
    if setup.pbt_specs is not None:
        _restore_pbt_checkpoint(run_dir, trial_id, params, list(setup.pbt_specs))
    else:
        _restore_checkpoint(run_dir)
    RunWriter(run_dir).write_params(params)
    job = {"cfg": cfg.to_dict(), "run_dir": str(run_dir), "data": [setup.data_ref],
           "tune_checkpoints": setup.tune_checkpoints, "ray_train": setup.workers > 1,
           "trial_id": trial_id, "pbt_interval": setup.pbt_interval if setup.pbt_specs is not None else 0}
    if setup.workers == 1:
        _ready_for_another_trial(cfg)
        _fit_and_report(job)
        return

    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    use_gpu = setup.gpus > 0
    trainer = TorchTrainer(
        _logged_fit_and_report, train_loop_config=job,
        scaling_config=ray.train.ScalingConfig(num_workers=setup.workers, use_gpu=use_gpu,
                                               resources_per_worker={"CPU": setup.cpus,
                                                                     **({"GPU": setup.gpus} if use_gpu else {})},
                                               placement_strategy=setup.placement_strategy),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo", timeout_s=cfg.dist_timeout),
        # Lost workers are retried by Tune, as the whole trial (its run dir resumes it).
        run_config=ray.train.RunConfig(name=trial_id, storage_path=str(Path(setup.search_dir) / "ray-train"),
                                       callbacks=[TuneReportCallback()],
                                       failure_config=ray.train.FailureConfig(max_failures=0)),
    )
    trainer.fit()  # raises TrainingFailedError when a worker raises or is lost: the Tune trial errors with it


# How long Tune waits for an ended trial's thread to unwind (its loader workers shut down, its
# files closed) before it may start the next trial in the same process: Tune's 2 s default, missed
# on a loaded machine, fails the *next* trial ("Could not re-use actor").
_REUSE_WAIT_S = "60"


def _ready_for_another_trial(cfg: TrainConfig) -> None:
    """Make this process fit for the trial starting in it, which may not be its first: a search with
    single-process trials reuses each trial process for the next trial start (`tune_config`,
    `reuse_trial_processes`), keeping its imports, CUDA context and cuDNN's choices instead of
    starting a new process per trial."""
    import gc

    os.environ.setdefault("TUNE_FUNCTION_THREAD_TIMEOUT_S", _REUSE_WAIT_S)  # read when Tune reuses us
    # The previous trial's loader workers, if its pipeline sits in a reference cycle, end now rather
    # than beside this trial's own.
    gc.collect()
    if cfg.compile:
        import torch

        # Each trial's model is a new object, so its compiled code would be a recompilation of the
        # previous trial's; past Dynamo's recompile limit (8) it silently runs uncompiled.
        torch.compiler.reset()


def _fit_and_report(job: dict[str, Any]) -> None:
    """The one trial body: `fit` with a callback that reports every epoch, to Tune in a
    single-process trial, or to Ray Train on each DDP worker (Train V2 synchronises the ranks and
    relays rank 0's report to Tune). Ray Train has already set up the process group there."""
    import ray

    if job["ray_train"]:
        import ray.train
        import torch

        report = ray.train.report
        if not torch.cuda.is_available():
            os.environ["ACCELERATE_USE_CPU"] = "true"  # else Accelerate sees 1 process and check_launch stops
    else:
        from ray import tune

        report = tune.report
    from distributed.engine import EpochReport, NonFiniteLossError, fit

    reported = []
    interval, total_epochs = job.get("pbt_interval", 0), job["cfg"]["epochs"]
    run_dir = Path(job["run_dir"])

    def callback(r: EpochReport) -> None:
        reported.append(r.epoch)
        if interval and r.checkpoint is not None and r.epoch % interval == 0 and r.epoch < total_epochs:
            # PBT: at every perturbation epoch the state a recipient adopts if this trial is copied.
            # Not after the last epoch: a copy made there would train no further, only cost a restart.
            staged = pbt.export_checkpoint(run_dir, r.epoch, job["trial_id"])
            try:
                report(_metrics_for_tune(r.metrics), checkpoint=ray.tune.Checkpoint.from_directory(str(staged)))
            finally:  # Tune has its copy once report returns (a paused trial never gets here: remove_staging)
                shutil.rmtree(staged, ignore_errors=True)
            return
        # Epoch checkpoints stay in the trial's run dir, which a restored trial resumes from;
        # a copy goes to Tune's storage only when asked (clusters without a shared --runs-dir).
        copy = job["tune_checkpoints"] and not job["ray_train"] and r.checkpoint is not None
        report(_metrics_for_tune(r.metrics),
               checkpoint=ray.tune.Checkpoint.from_directory(str(r.checkpoint)) if copy else None)

    writer = RunWriter(run_dir, _log_attempt(run_dir, job["ray_train"]))
    try:
        # A PBT exploit changes a trial's schedule and nothing else (tuning/pbt.py).
        fit(TrainConfig.from_dict(job["cfg"]), run_dir, callback=callback, resume=True,
            data=ray.get(job["data"][0]), evaluate_test=False, progress=False,
            **({"schedule_may_change": True} if interval else {}))
    except (NonFiniteLossError, ConfigError) as e:
        # Diverged (or a sampled config fit refuses): a retry would fail the same way. The trial
        # ends here, recorded as failed, instead of raising, which Tune would retry like a lost
        # worker (its FailureConfig cannot tell them apart). Every DDP rank gets here alike: the
        # loss that diverged is the all-reduced one.
        # The trial's own log (train.log) keeps the traceback; the search's terminal gets one line.
        traceback.print_exc()
        print(f"trial failed: {type(e).__name__}: {e} (recorded in {rundir.FAILED}; not retried)", file=sys.stderr,
              flush=True)
        epochs = rundir.read_metrics(run_dir)
        writer.write_failure(f"{type(e).__name__}: {e}", (epochs[-1]["epoch"] if epochs else 0) + 1)
        # Tune wants its metric in a trial's last result; NaN ranks nowhere, and without "epoch"
        # ASHA leaves it out of its rungs. PBT refuses a result without its time attribute; a NaN
        # score keeps the trial out of its quantiles.
        last = {"epoch": epochs[-1]["epoch"] if epochs else 0} if interval else {}
        report({METRIC: float("nan"), "failed": True, **last})
        return
    rows = rundir.read_metrics(run_dir)
    if not reported and rows:
        # fit had already finished (killed after its last epoch, before Tune heard of it):
        # report the last logged epoch so Tune records a result for the trial.
        report(_metrics_for_tune(rows[-1]))


def _log_attempt(run_dir: Path, ray_train: bool) -> bool:
    """Record this start of the trial in attempts.jsonl: the Ray node and pid of each of its
    processes (by rank; on one host two nodes share IP and hostname, so the node id it is), and
    the epoch of the checkpoint it resumes from. Collective on DDP trials. True on rank 0."""
    import ray

    me = (ray.get_runtime_context().get_node_id(), os.getpid())
    ranks, rank = [me], 0
    if ray_train:
        import torch.distributed as dist

        ranks = [None] * dist.get_world_size()
        dist.all_gather_object(ranks, me)
        rank = dist.get_rank()
    checkpoints = rundir.checkpoint_dirs(run_dir)
    RunWriter(run_dir, rank == 0).log_attempt({
        "node_ids": [r[0] for r in ranks], "pids": [r[1] for r in ranks],
        "from_epoch": rundir.read_trainer_state(checkpoints[-1]).epoch if checkpoints else 0,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    return rank == 0


def _metrics_for_tune(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if v is not None}


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


def _restore_pbt_checkpoint(run_dir: Path, trial_id: str, params: dict[str, Any], fields: list[str]) -> None:
    """A PBT trial's start: Tune's checkpoint from another trial (an exploit) is adopted, making this
    run directory the donor's copy at its epoch (tuning/pbt.py); one of its own is a retry or a
    resumed search, which resumes from the run directory's own newest checkpoint as under ASHA."""
    from ray import tune

    pbt.remove_staging(run_dir)
    ckpt = tune.get_checkpoint()
    if ckpt is None:
        return
    previous = rundir.read_json(run_dir / rundir.PARAMS) if (run_dir / rundir.PARAMS).exists() else {}
    with ckpt.as_directory() as d:
        row = pbt.adopt(run_dir, Path(d), trial_id, before={k: previous.get(k) for k in fields},
                        after={k: params.get(k) for k in fields})
        if row is None:
            pbt.seed_own_checkpoint(run_dir, Path(d))
    if row is not None:
        print(f"PBT exploit: adopted trial {row['donor']}'s state after epoch {row['epoch']}; perturbed "
              f"{row['before']} -> {row['after']}", flush=True)


# ----------------------------------------------------------------------------- driver side
def search_dir_for(base_cfg: TrainConfig, name: str) -> Path:
    return (Path(base_cfg.runs_dir) / f"search-{name}").resolve()


def load_saved_search(search_dir: Path) -> tuple[TrainConfig, dict[str, Any]]:
    """The base config and search settings a previous run of this search stored in search.json."""
    path = search_dir / rundir.SEARCH_JSON
    if not path.exists():
        raise ConfigError(f"--resume: {search_dir} holds no search (no {rundir.SEARCH_JSON}); "
                          f"start it without --resume")
    saved = rundir.read_json(path)
    return TrainConfig.from_dict(saved["base_config"]), saved["search"]


def run_search(base_cfg: TrainConfig, search: SearchConfig, *, data: Any = None,
               cli_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run (or resume) the search; write search.json, results.csv and best/; return the summary.

    base_cfg:    every trial's config before its sampled params (epochs = ASHA's max epochs).
    data:        preloaded CifarArrays (default: read base_cfg.data_dir once here).
    cli_options: command-line choices that are not settings (e.g. --no-report), kept in search.json
                 for `--resume`.
    Raises ConfigError on bad settings; failed trials do not raise (status ERROR in results.csv).
    A trial whose loss explodes but stays finite is an ordinary weak trial (ASHA stops it); only a
    non-finite loss fails one.
    """
    start = time.time()
    search_dir = search_dir_for(base_cfg, search.name)
    space = space_mod.merge_space(search.space)
    space_mod.validate_space(space, base_cfg)
    # Learning rates in a space are at batch 512; trials sample them at this search's batch.
    trial_space = space_mod.at_batch(space, base_cfg.batch_size)
    perturbed = pbt.check_space(trial_space) if search.scheduler == "pbt" else []
    if base_cfg.val_size <= 0:
        raise ConfigError("invalid --val-size 0: a search selects on validation accuracy; give it a split")
    if base_cfg.log_with != "none":
        from distributed.tracking import check_tracker

        check_tracker(base_cfg.log_with)  # in the driver: a trial would fail on it, one by one
    ray_path = search_dir / RAY_DIR
    if search.resume:
        if not ray_path.is_dir():
            raise ConfigError(f"--resume: no Ray experiment in {ray_path}; start the search without --resume")
    elif search_dir.exists() and any(search_dir.iterdir()):
        raise ConfigError(f"{search_dir} already holds a search; pass --resume to continue it, "
                          f"or choose another --name")
    # Before Ray starts: a runs folder that cannot be written, or a disk without room for one trial's
    # checkpoint and weights (as a run checks), is said in one line here, not by every trial.
    from distributed.model import count_parameters, resnet18

    rundir.check_writable(search_dir, 16 * count_parameters(resnet18()))

    started_ray = init_ray(search)  # before `import ray`: Ray reads some settings when imported
    import ray
    from ray import tune

    try:
        if search.gpus_per_trial is None:  # a GPU anywhere in the cluster: one per trial
            search = replace(search, gpus_per_trial=1.0 if ray.cluster_resources().get("GPU", 0) else 0.0)
        # Before the search directory exists: a search that can never start a trial leaves nothing.
        check_resources(search, [n["Resources"] for n in ray.nodes() if n.get("Alive")])
        with rundir.writing(search_dir):
            search_dir.mkdir(parents=True, exist_ok=True)
        saved = rundir.read_json(search_dir / rundir.SEARCH_JSON) if (search_dir / rundir.SEARCH_JSON).exists() else {}
        previous_wall = saved.get("wall_seconds") or 0.0
        lr_text = space_mod.describe_lr(space, base_cfg.batch_size)
        print(f"search {search.name}: {'resuming, ' if search.resume else ''}{search.num_samples} trials of up "
              f"to {base_cfg.epochs} epochs, global batch {base_cfg.batch_size}"
              f"{', ' + lr_text if lr_text else ''}; each trial's output: {search_dir / rundir.TRIALS}/<id>/"
              f"{rundir.TRAIN_LOG}", flush=True)
        info: dict[str, Any] = {
            "name": search.name, "space": space,
            "search": {**_search_settings(search), **({"perturbed": perturbed} if perturbed else {})},
            "space_at_batch": trial_space, "base_config": base_cfg.to_dict(),
            "cli": cli_options or saved.get("cli") or {}, "metric": METRIC, "mode": MODE, "status": "running",
            "started": saved.get("started", time.strftime("%Y-%m-%dT%H:%M:%S%z"))}
        rundir.write_json(search_dir / rundir.SEARCH_JSON, info)
        if data is None:
            from distributed.data import load_cifar10
            data = load_cifar10(base_cfg.data_dir, download=base_cfg.download)
        data_ref = ray.put(data)  # one copy in the object store; every trial (and DDP worker) ray.gets it
        setup = _TrialSetup(base_cfg.to_dict(), str(search_dir), data_ref, search.workers_per_trial,
                            search.cpus_per_trial, search.gpus_per_trial, search.tune_checkpoints,
                            search.placement_strategy,
                            pbt_specs={k: trial_space[k] for k in perturbed} if perturbed else None,
                            pbt_interval=search.perturbation_interval)
        trainable = tune.with_resources(tune.with_parameters(_logged_trial, setup=setup), trial_resources(search))
        from tuning.progress import tune_error_logs

        # Restoring reads the saved trials too, and warns about each that never reported.
        with tune_error_logs(search.verbose):
            if search.resume:
                tuner = tune.Tuner.restore(str(ray_path), trainable, resume_unfinished=True,
                                           resume_errored=False, restart_errored=False)
            else:
                tuner = tune.Tuner(trainable, param_space=space_mod.to_tune(trial_space),
                                   tune_config=tune_config(base_cfg, search, trial_space),
                                   run_config=run_config(search_dir, search, list(space), base_cfg.epochs))
            if perturbed:
                # PBT draws its quantile partners and perturbations with Python's `random`, in this
                # process: seeded, a search repeats its choices as far as the trials' timing allows.
                random.seed(search.seed)
            grid = tuner.fit()
        trials = results.collect(grid, search_dir, base_cfg.epochs)
        if not search.keep_trial_checkpoints:  # trials that ended before a resume, or missed by the callback
            for t in trials:
                if t["status"] in results.ENDED:
                    RunWriter(t["run_dir"]).prune_ended()
        # Tune returns normally after Ctrl-C: an interrupted search has unfinished or unstarted trials.
        interrupted = results.interrupted(trials, search.num_samples)
        best = results.select_best(trials)
        # The test set is touched once, when the search is done.
        best_summary = results.export_best(search_dir, best, data) if best is not None and not interrupted else None
        schedule = (pbt.write_schedule(search_dir, search.name, best["trial_id"], perturbed)
                    if perturbed and best_summary is not None else None)
        if perturbed and not interrupted and not search.keep_trial_checkpoints:
            # Every trial has ended: no recipient will ever read Tune's copies of their checkpoints.
            for trial_path in (search_dir / RAY_DIR).iterdir():
                pbt.prune_tune_checkpoints(str(trial_path), set())
    finally:
        if started_ray:
            ray.shutdown()

    counts = {s: sum(t["status"] == s for t in trials) for s in ("TERMINATED", "STOPPED", "ERROR")}
    results.write_results_csv(search_dir / rundir.RESULTS_CSV, trials, list(space))
    wall = time.time() - start + previous_wall
    summary = {
        # Trials asked for: Tune creates them lazily, so an interrupted search may know fewer.
        "search_dir": str(search_dir), "wall_seconds": wall, "trials": max(len(trials), search.num_samples),
        "completed": counts["TERMINATED"], "stopped": counts["STOPPED"], "failed": counts["ERROR"],
        "best_trial": best["trial_id"] if best else None,
        "best_val_acc": best["best_val_acc"] if best else None,
        "best_epoch": best["best_epoch"] if best else None,
        "best_params": best["params"] if best else None,
        "test_acc": best_summary["test_acc"] if best_summary else None,
        "interrupted": interrupted,
        "disk_bytes": rundir.disk_bytes(search_dir),
        **({"exploits": pbt.count_exploits(search_dir)} if perturbed else {}),
        **({"schedule": str(schedule)} if schedule else {}),
    }
    if search.refit and best is not None and not interrupted:
        # search.json says a refit is under way before it starts: a search killed during it is
        # resumed (--resume) into the refit, not reported as finished without it.
        summary["refit"] = {"status": "running", "run_dir": str(search_dir / rundir.REFIT)}
        info.update(status="refitting", wall_seconds=wall, summary=summary)
        rundir.write_json(search_dir / rundir.SEARCH_JSON, info)
        summary["refit"] = refit_best(base_cfg, best, search_dir, data,
                                      {k: trial_space[k] for k in perturbed} if perturbed else None)
        interrupted = summary["interrupted"] = summary["refit"]["status"] == "interrupted"
    info.update(status="interrupted" if interrupted else "finished", wall_seconds=wall, summary=summary,
                finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    rundir.write_json(search_dir / rundir.SEARCH_JSON, info)
    print(summary_line(summary), flush=True)
    return summary


def refit_config(base_cfg: TrainConfig, best: dict[str, Any], search_dir: Path,
                 pbt_specs: dict[str, Any] | None = None) -> TrainConfig:
    """The best trial's configuration (the base config with its sampled params, what the trial trained
    with) on every training image: no validation split, the full --epochs, run dir search_dir/refit.
    After a PBT search (`pbt_specs`: the perturbed fields' specs) the perturbed fields follow the
    best trial's learned schedule, best/schedule.json, stretched over --epochs."""
    if pbt_specs:
        from distributed.config import load_schedule

        cfg = pbt.trial_config(base_cfg, best["params"], pbt_specs, 1).replace(
            aug_schedule=load_schedule(search_dir / rundir.BEST_TRIAL / rundir.SCHEDULE),
            checkpoint_every=base_cfg.checkpoint_every)
    else:
        cfg = space_mod.apply_params(base_cfg, best["params"])
    return cfg.replace(name=rundir.REFIT, runs_dir=str(search_dir), val_size=0)


def refit_best(base_cfg: TrainConfig, best: dict[str, Any], search_dir: Path, data: Any,
               pbt_specs: dict[str, Any] | None = None) -> dict[str, Any]:
    """`--refit`: `fit` the best configuration again on all training images in search_dir/refit/ and test
    it once. Resumes that run when it was interrupted (and returns a finished one's result as it is).
    Its output goes to refit/train.log, like a trial's. Returns what the search summary keeps: status
    (finished | interrupted | failed), test accuracy as the run reports it and plain/TTA, images, seconds."""
    from distributed.engine import Preempted, fit

    cfg = refit_config(base_cfg, best, search_dir, pbt_specs)
    run_dir = search_dir / rundir.REFIT
    out: dict[str, Any] = {"run_dir": str(run_dir), "trial_id": best["trial_id"], "epochs": cfg.epochs}
    resumed = rundir.checkpoint_dirs(run_dir)
    print(f"refit: {'resuming ' if resumed else ''}the best trial {best['trial_id']}'s configuration on every "
          f"training image (--val-size 0), {cfg.epochs} epochs; its output: {run_dir / rundir.TRAIN_LOG}", flush=True)
    try:
        with _output_to_trial_log(run_dir):
            summary = fit(cfg, run_dir, resume=True, data=data, progress=False)
    except (KeyboardInterrupt, Preempted):
        print(f"refit interrupted; {run_dir} keeps its checkpoints for --resume", flush=True)
        return {**out, "status": "interrupted"}
    except Exception as e:  # noqa: BLE001 - the search is done and saved; a failed refit must not hide it
        why = (str(e).strip().splitlines() or [""])[0][:300]
        print(f"refit failed ({type(e).__name__}: {why}); the search's results stand; traceback in "
              f"{run_dir / rundir.TRAIN_LOG}", file=sys.stderr, flush=True)
        return {**out, "status": "failed", "error": f"{type(e).__name__}: {why}"}
    meta = rundir.read_json(run_dir / rundir.CONFIG)
    out.update(status="finished", test_acc=summary["test_acc"], **rundir.test_accuracies(run_dir),
               train_images=meta["split"]["train"], test_count=summary["test_count"],
               wall_seconds=summary["wall_seconds"], total_seconds=summary["total_seconds"])
    return out


def summary_line(s: dict[str, Any]) -> str:
    if s.get("interrupted"):
        best = f"interrupted; continue with --name {Path(s['search_dir']).name[len('search-'):]} --resume"
    elif s["best_trial"]:
        best = (f"best {s['best_trial']} val_acc {s['best_val_acc']:.4f} (epoch {s['best_epoch']}), "
                f"test_acc {s['test_acc']:.4f}")
    else:
        best = "no trial produced a validation result"
    refit = s.get("refit") or {}
    if refit.get("status") == "finished":
        best += (f" | refit on all {refit['train_images']:,} training images, {refit['epochs']} epochs: "
                 f"test_acc {refit['test_acc']:.4f}")
    elif refit.get("status") == "failed":
        best += f" | refit failed: {refit['error']}"
    disk = f" | {s['disk_bytes'] / 1e6:,.0f} MB on disk" if s.get("disk_bytes") is not None else ""
    left = s["trials"] - s["completed"] - s["stopped"] - s["failed"]
    unfinished = f", {left} not finished" if left else ""
    n = s.get("exploits")
    exploits = f" | {n} exploit{'' if n == 1 else 's'}" if n is not None else ""
    return (f"search {Path(s['search_dir']).name.removeprefix('search-')}: {s['trials']} trials in {s['wall_seconds']:.0f} s | "
            f"{s['completed']} completed, {s['stopped']} stopped early, {s['failed']} failed{unfinished}{exploits} | "
            f"{best}{disk}")


def _search_settings(search: SearchConfig) -> dict[str, Any]:
    d = asdict(search)
    d.pop("resume", None)
    return d


# ----------------------------------------------------------------------------- Ray and Tune settings
def init_ray(search: SearchConfig) -> bool:
    """Start a local Ray, or join the cluster at `search.address`, with no dashboard and no usage
    stats; False if Ray was already initialised. ConfigError when the cluster cannot be joined."""
    if "ray" not in sys.modules and not search.address:
        # A new local Ray turns token authentication on and says so in a warning on every start;
        # asking for it explicitly keeps it on without the notice. Ray reads the mode when it is
        # imported, so only before the first `import ray` (a joined cluster brings its own mode).
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    if not sys.stdout.isatty():
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")  # no colour codes in a log (--verbose)
    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    # Tune's own progress output (CLIReporter, --verbose) instead of the new AIR console output.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Trials write their output to their own train.log; without --verbose nothing of the workers'
    # output is relayed to this terminal.
    kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": "WARNING",
                              "log_to_driver": bool(search.verbose),
                              "runtime_env": {"env_vars": {"RAY_USAGE_STATS_ENABLED": "0",
                                                           "RAY_TRAIN_V2_ENABLED": "1"}}}
    if search.address:
        try:
            ray.init(address=search.address, **kwargs)
        except (ConnectionError, ray.exceptions.AuthenticationError) as e:
            # Ray 2.60 guards a cluster with a token when its head started while one existed; a
            # driver joining by explicit address must bring it (Ray never sends it unasked).
            why = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise ConfigError(f"--address {search.address}: cannot join the Ray cluster ({why}); check that "
                              f"`ray start --head` runs there and give this process the cluster's token: "
                              f"RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=<the token file the nodes started with> "
                              f"(README: Scaling out)") from None
    else:
        # "local": always a Ray of our own; ray.init() would join a `ray start` cluster on this host.
        ray.init(address="local", num_cpus=search.num_cpus, **kwargs)
    return True


def check_resources(search: SearchConfig, nodes: list[dict[str, float]]) -> None:
    """Refuse a search no node of which can ever start one trial (Tune would wait for ever at
    "1 waiting"): ConfigError naming what a trial asks for and what the cluster has. A cluster joined
    with --address may still grow (autoscaler, `ray start` on another node): one line says the
    search waits for it. `nodes`: the Resources of each alive node (`ray.nodes()`)."""
    n, cpus, gpus = search.workers_per_trial, search.cpus_per_trial, search.gpus_per_trial or 0.0

    def workers_held(node: dict[str, float]) -> int:
        k = node.get("CPU", 0) // cpus
        return int(min(k, node.get("GPU", 0) // gpus) if gpus else k)

    held = [workers_held(node) for node in nodes]
    # A single-process trial is one bundle: one node must hold it. A DDP trial's workers are placed
    # by --placement-strategy: STRICT_PACK on one node, STRICT_SPREAD one per node, else anywhere.
    strategy = search.placement_strategy if n > 1 else "STRICT_PACK"
    if strategy == "STRICT_PACK":
        fits = max(held, default=0) >= n
    elif strategy == "STRICT_SPREAD":
        fits = sum(k >= 1 for k in held) >= n
    else:
        fits = sum(held) >= n
    if fits:
        return
    one = f"{cpus:g} CPU{'s' if cpus != 1 else ''}" + (f" and {gpus:g} GPU{'s' if gpus != 1 else ''}" if gpus else "")
    asked = one if n == 1 else f"{n} workers of {one} each ({strategy})"
    total = {k: sum(node.get(k, 0) for node in nodes) for k in ("CPU", "GPU")}
    largest = max(nodes, key=lambda node: (node.get("GPU", 0), node.get("CPU", 0)), default={})
    have = f"{total['CPU']:g} CPUs and {total['GPU']:g} GPUs"
    if len(nodes) > 1:
        have += f" on {len(nodes)} nodes, the largest {largest.get('CPU', 0):g} CPUs and {largest.get('GPU', 0):g} GPUs"
    if search.address:
        print(f"search: each trial asks for {asked}; the Ray cluster at {search.address} has {have} for now: waiting "
              f"for nodes to join (autoscaler, `ray start --address ...`); Ctrl-C stops", file=sys.stderr, flush=True)
        return
    fixes = []
    if gpus > total["GPU"] or gpus and not any(node.get("GPU", 0) >= gpus for node in nodes):
        fixes.append("--gpus-per-trial 0 (trials on the CPU)" if not total["GPU"] else "a lower --gpus-per-trial")
    if cpus > max((node.get("CPU", 0) for node in nodes), default=0):
        fixes.append("a lower --cpus-per-trial" + (" or a higher --num-cpus" if search.num_cpus else ""))
    if not fixes:
        fixes.append("fewer --workers-per-trial or another --placement-strategy")
    raise ConfigError(f"each trial asks for {asked}, but this machine's Ray has {have}: no trial could ever start; "
                      f"use {' or '.join(fixes)}, or join a larger cluster with --address")


def trial_resources(search: SearchConfig) -> dict[str, float]:
    if search.workers_per_trial > 1:
        # The trial only drives the TorchTrainer; its workers hold the CPUs/GPUs.
        # Ray refuses an empty bundle: a token of memory instead of a CPU the workers need.
        return {"cpu": 0, "memory": 1}
    return {"cpu": search.cpus_per_trial, "gpu": search.gpus_per_trial or 0.0}


def _max_concurrent(search: SearchConfig) -> int:
    """Concurrent trials the cluster can hold now (at least one); needed for DDP trials, whose 0-CPU driver Tune
    would otherwise start without bound while their workers wait for resources."""
    if search.max_concurrent_trials:
        return search.max_concurrent_trials
    if search.workers_per_trial == 1:
        return 0  # Tune derives it from the trial resources
    import ray

    total = ray.cluster_resources()
    n, gpus = search.workers_per_trial, search.gpus_per_trial or 0.0
    fits = [int(total.get("CPU", 0) // (n * search.cpus_per_trial))]
    if gpus > 0:
        fits.append(int(total.get("GPU", 0) // (n * gpus)))
    # check_resources has refused a cluster that cannot hold one trial; one that may still grow
    # (--address) starts with one trial, which waits for the nodes.
    return max(1, min(fits))


def tune_config(base_cfg: TrainConfig, search: SearchConfig, space: dict[str, Any] | None = None):
    """Tune's TuneConfig: the scheduler (ASHA, or PBT over `space`'s perturbable fields), the seeded
    sampler, one folder per trial named by its id."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from tuning.scheduler import PopulationBasedTrainingToTheEnd

    # time_attr "epoch" (1-based, from fit's metrics) rather than training_iteration: it stays
    # right across a resumed trial whatever Tune's own counter did.
    if search.scheduler == "pbt":
        space = space_mod.merge_space(search.space) if space is None else space
        # metric and mode come from TuneConfig (Tune refuses them in both places). PBT works with a
        # BasicVariantGenerator (only a SearchGenerator is refused), so the sampling stays seeded.
        scheduler = PopulationBasedTrainingToTheEnd(
            last=base_cfg.epochs, time_attr="epoch", perturbation_interval=search.perturbation_interval,
            quantile_fraction=search.quantile_fraction, resample_probability=search.resample_probability,
            hyperparam_mutations=pbt.mutations(space), custom_explore_fn=pbt.explore_fn(space),
            # lineage.jsonl in each trial's run dir is the record; no pbt_policy files in ray/
            log_config=False)
    else:
        scheduler = ASHAScheduler(time_attr="epoch", max_t=base_cfg.epochs, grace_period=search.grace_period,
                                  reduction_factor=search.reduction_factor,
                                  # let a trial at max epochs return by itself, so fit writes its final
                                  # weights and summary instead of being killed after its last report
                                  stop_last_trials=False)
    return tune.TuneConfig(metric=METRIC, mode=MODE, scheduler=scheduler, num_samples=search.num_samples,
                           # max_concurrent goes to the generator: Tune ignores TuneConfig's for it.
                           search_alg=BasicVariantGenerator(random_state=search.seed,
                                                            max_concurrent=_max_concurrent(search)),
                           trial_dirname_creator=lambda trial: trial.trial_id,
                           reuse_actors=reuse_trial_processes(search))


def reuse_trial_processes(search: SearchConfig) -> bool:
    """Whether a trial process, once its trial has ended or been paused, runs the next trial instead
    of a new process.

    Single-process trials: yes. A new process costs every trial start its interpreter, imports
    (torch, Albumentations, Accelerate: ~5.5 s on the 2-core CPU machine), CUDA context and cuDNN's
    kernel choices; ASHA stops most trials after an epoch or two, on a GPU a few seconds each, and
    PBT restarts a trial at every copy and, with more trials than slots, at every interval.
    Measured on the 2-core CPU (2026-12-03, 2 trials at a time, 2 runs each): ASHA, 8 trials of
    2 epochs, 72-75 s with reuse against 85-91 s without; PBT, 8 trials of 4 epochs (32 trial
    starts), 127-130 s against 195-204 s (README Performance). `_ready_for_another_trial` readies a
    reused process; a PBT copy lands in a process that ran another trial, and the recipient's run
    directory, not the process, carries what it continues from (tuning/pbt.py). Tune keeps an ended
    or paused trial's process only while a trial waits for resources: with the whole PBT population
    running at once an exploit often still starts a new process (9-10 starts in 6-7 processes for
    4 trials, same day). Not for DDP trials: their workers are Ray Train's, started per trial anyway."""
    return search.workers_per_trial == 1


def run_config(search_dir: Path, search: SearchConfig, params: list[str] | None = None, max_epochs: int = 1):
    """Tune's RunConfig: storage in the search directory, no retries, the compact progress view and
    the pruning of ended trials (tuning/progress.py), Tune's wide status table only when verbose."""
    from ray import tune

    from tuning.progress import SearchProgress

    reporter = tune.CLIReporter(
        metric_columns={"epoch": "epoch", "val_acc": "val_acc", "train_loss": "train_loss"},
        parameter_columns=params, max_report_frequency=30, sort_by_metric=True) if search.verbose else None
    pbt_search = search.scheduler == "pbt"
    progress = SearchProgress(search_dir, search.num_samples, max_epochs, show=not search.verbose,
                              prune=not search.keep_trial_checkpoints, pbt=pbt_search)
    return tune.RunConfig(
        name=RAY_DIR, storage_path=str(search_dir),
        # A trial that raises (its worker process or node lost, or a bug) is retried from its own
        # last checkpoint; one that diverged ends itself as failed without raising (_fit_and_report).
        failure_config=tune.FailureConfig(max_failures=search.max_trial_retries),
        # PBT hands a donor's Tune copy to a recipient that may start later: pbt.TUNE_CHECKPOINTS_KEPT.
        checkpoint_config=tune.CheckpointConfig(num_to_keep=pbt.TUNE_CHECKPOINTS_KEPT if pbt_search else 1),
        callbacks=[progress], progress_reporter=reporter, verbose=1 if search.verbose else 0)
