"""What a search leaves behind: the table of its trials (results.csv) and best/, the best trial
evaluated once on the test set. Read from Tune's public `ResultGrid` and the trials' own run
directories (distributed/rundir.py).
"""
from __future__ import annotations

import csv
import shutil
from pathlib import Path
from typing import Any

from distributed import rundir
from distributed.config import TrainConfig
from distributed.rundir import RunWriter
from tuning import space as space_mod

ENDED = ("TERMINATED", "STOPPED", "ERROR")   # trial states Tune never resumes


def collect(grid, search_dir: Path, max_epochs: int) -> list[dict[str, Any]]:
    """One row per trial, best validation accuracy first: Tune's `Result` of each trial (error,
    last report) beside the trial run directory's own files (params, metrics).

    A trial whose fit wrote its summary.json has finished, whatever Tune saved: with reused trial
    processes, Ray 2.60 sets `done` on a finished trial's last result in memory without
    saving it again (as far as Tune's code reads), so a restored search (`--resume`) read some
    finished trials as still running
    (seen 5 times in 8 runs of the refit test on a loaded 2-core machine, 2026-12-03)."""
    trials = []
    for result in grid:
        trial_id = Path(result.path).name  # trial_dirname_creator names the folder after the trial id
        run_dir = search_dir / rundir.TRIALS / trial_id
        rows = rundir.read_metrics(run_dir)
        vals = [r for r in rows if r.get("val_acc") is not None]
        best = max(vals, key=rundir.selection_key) if vals else None  # the epoch fit kept as best.safetensors
        epochs = rows[-1]["epoch"] if rows else 0
        last = result.metrics or {}
        failed = run_dir / rundir.FAILED
        failure = rundir.read_json(failed)["error"] if failed.exists() else None
        attempts = rundir.read_jsonl(run_dir / rundir.ATTEMPTS)
        if failure is not None or result.error is not None:  # failure: it ended itself (diverged)
            status = "ERROR"
        elif (run_dir / rundir.SUMMARY).exists():  # fit wrote it after the trial's last epoch
            status = "TERMINATED"
        elif last.get("done"):  # Tune marks the last result of a finished or ASHA-stopped trial
            status = "TERMINATED" if epochs >= max_epochs else "STOPPED"
        else:
            status = "RUNNING" if last else "PENDING"  # the search was interrupted
        params_file = run_dir / rundir.PARAMS
        params = rundir.read_json(params_file) if params_file.exists() else space_mod.trial_params(result.config or {})
        trials.append({"trial_id": trial_id, "status": status, "epochs": epochs,
                       "best_val_acc": best["val_acc"] if best else None, "best_epoch": best["epoch"] if best else None,
                       "last_val_acc": vals[-1]["val_acc"] if vals else None, "params": params, "run_dir": run_dir,
                       "error": failure or (error_line(result.error) if result.error is not None else None),
                       # where its last start ran (one node id per rank), and how often it started
                       "node_ids": attempts[-1]["node_ids"] if attempts else [], "attempts": len(attempts)})
    trials.sort(key=lambda t: (t["best_val_acc"] is None, -(t["best_val_acc"] or 0.0), t["trial_id"]))
    return trials


def error_line(error: BaseException) -> str:
    """The line of a trial's error that names it (Ray wraps it in its own traceback text)."""
    lines = [ln.strip() for ln in str(error).strip().splitlines() if ln.strip()]
    for ln in reversed(lines):
        if "Error" in ln or "Exception" in ln:
            return ln[:300]
    return lines[-1][:300] if lines else type(error).__name__


def interrupted(trials: list[dict[str, Any]], num_samples: int) -> bool:
    """Whether the search stopped before every trial ended: fewer trials than asked for, or some still
    RUNNING or PENDING. Judged from each trial's own last result (`collect`), not from Tune's trial
    states: after a SIGINT to the whole process group (Ctrl-C in a terminal, a scheduler's stop), Ray
    2.60's ResultGrid counted unfinished trials as terminated, and the search claimed to be done."""
    return len(trials) < num_samples or any(t["status"] not in ENDED for t in trials)


def select_best(trials: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Best validation accuracy at any epoch, among trials that did not fail (else among all)."""
    ok = [t for t in trials if t["best_val_acc"] is not None and (t["run_dir"] / rundir.BEST_WEIGHTS).exists()]
    good = [t for t in ok if t["status"] != "ERROR"] or ok
    return good[0] if good else None  # trials are sorted best first


def export_best(search_dir: Path, best: dict[str, Any], data: Any) -> dict[str, Any]:
    """best/ in the layout of a train.py run: the trial's files, its best-epoch weights as the
    final ones, evaluated once on the test set (predictions.npz, summary.json)."""
    from distributed.engine import evaluate_weights

    src = Path(best["run_dir"])
    meta = rundir.read_json(src / rundir.CONFIG)
    cfg = TrainConfig.from_dict(meta["config"])
    test = evaluate_weights(cfg, src / rundir.BEST_WEIGHTS, meta["mean"], meta["std"], data)
    with rundir.atomic_path(search_dir / rundir.BEST_TRIAL) as tmp:
        tmp.mkdir()
        for name in (rundir.CONFIG, rundir.METRICS, rundir.BEST_WEIGHTS, rundir.PARAMS):
            shutil.copy2(src / name, tmp / name)
        if (src / rundir.STEPS).exists():  # runs from before steps.jsonl have none
            shutil.copy2(src / rundir.STEPS, tmp / rundir.STEPS)
        shutil.copy2(src / rundir.BEST_WEIGHTS, tmp / rundir.FINAL_WEIGHTS)  # the weights the summary describes
        summary = RunWriter(tmp).finish(meta, test, trial_id=best["trial_id"], trial_status=best["status"],
                                        search=search_dir.name, params=best["params"],
                                        total_seconds=trial_total_seconds(src))
    print(f"best trial {best['trial_id']}: val_acc {best['best_val_acc']:.4f} at epoch {best['best_epoch']}, "
          f"test_acc {test['acc']:.4f} on {test['count']} images -> {search_dir / rundir.BEST_TRIAL}", flush=True)
    return summary


def trial_total_seconds(run_dir: Path) -> float | None:
    """The whole `fit` time of a trial (start-up, validation, checkpoints): its summary's when it
    finished, else its newest checkpoint's (an ASHA-stopped trial ends without a summary)."""
    run_dir = Path(run_dir)
    if (run_dir / rundir.SUMMARY).exists():
        total = rundir.read_json(run_dir / rundir.SUMMARY).get("total_seconds")
        if total is not None:
            return float(total)
    checkpoints = rundir.checkpoint_dirs(run_dir)
    return rundir.read_trainer_state(checkpoints[-1]).total_seconds if checkpoints else None


def write_results_csv(path: Path, trials: list[dict[str, Any]], param_names: list[str]) -> None:
    """results.csv: one row per trial, best validation accuracy first."""
    names = list(dict.fromkeys(param_names + [k for t in trials for k in t["params"]]))
    with rundir.atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["trial_id", "status", "epochs", "best_val_acc", "best_epoch", "last_val_acc", *names, "error",
                    "node_ids", "attempts"])
        for t in trials:
            w.writerow([t["trial_id"], t["status"], t["epochs"], _fmt(t["best_val_acc"]), t["best_epoch"] or "",
                        _fmt(t["last_val_acc"]), *[_fmt(t["params"].get(n)) for n in names], t["error"] or "",
                        " ".join(t.get("node_ids", [])), t.get("attempts", 0)])


def _fmt(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return v
