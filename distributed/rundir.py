"""The files a run writes, the interface between training, search and report, and their one writer.

    runs/<name>/
      config.json        {"config": TrainConfig fields, "versions": {...}, "python", "git_commit",
                          "hostname", "device", "world_size", "mixed_precision", "num_params",
                          "created", "split": {"train", "val", "test"}, "mean", "std"}
      metrics.jsonl      one JSON object per finished epoch: epoch (1-based), train_loss (the optimised
                         objective: cross-entropy with --label-smoothing, plus the L1 term), train_ce (plain
                         cross-entropy of the same training batches), train_acc, val_loss (plain
                         cross-entropy), val_loss_smoothed (with the run's label smoothing, comparable
                         to train_loss without L1), val_acc (val_* null when --val-size 0), lr (last lr of the epoch),
                         epoch_seconds, images_per_sec (training images/s, all processes),
                         data_wait_frac (share of step time spent waiting for the loader),
                         first_batch_seconds (of that wait, the first batch's: worker start-up in
                         the first epoch of an invocation, ~0 after it with persistent workers),
                         eval_seconds (validation), checkpoint_seconds (best weights + checkpoint),
                         wall_seconds (cumulative training time, survives --resume)
      steps.jsonl        one JSON object per optimiser step: step (1-based over the run), epoch, lr (the
                         rate that step used), loss (train_loss of that batch, mean over processes);
                         written once per epoch, before its checkpoint
      tensorboard/       with --log-with tensorboard: TensorBoard event files (written by the tracker,
                         not by RunWriter): the metrics.jsonl values per epoch and steps.jsonl's per step
      checkpoints/epoch_NNNN/   Accelerator.save_state + trainer_state.json (newest few kept; every
                         --checkpoint-every epochs and after the last)
      best.safetensors   weights of the epoch with the best val_acc (the last epoch without a val split)
      model.safetensors  final weights
      predictions.npz    test set: logits float32 [N, 10] (what the run reports: mirror-averaged with
                         --tta), logits_plain and logits_tta (both evaluations, always; the report shows
                         the calibration of each, nothing selects on them), labels int64 [N], indices
                         int64 [N] (positions in the test set, so a report can fetch the images)
      summary.json       test_acc, test_loss, test_count, best_val_acc, best_epoch, epochs, wall_seconds,
                         total_seconds (wall clock of fit over all invocations: start-up, evaluation,
                         checkpoints included), startup_seconds (the last invocation's, before its first
                         epoch: Accelerator, data, loaders, model, a resume's checkpoint), final_seconds
                         (final weights and the test evaluation), images_per_sec, device, world_size, mixed_precision,
                         num_params, mean, std, weights (the file predictions.npz came from), plus
                         ranks_in_sync (train.py) or trial_id, trial_status, search, params (a search's best/)
      lr_find.json       LR range test (--find-lr): lrs, losses, smoothed, suggested_max_lr, chosen_max_lr
      train.log          a search trial's own output (its epoch lines, warnings, the traceback of a failure)

    config.json appears when the first epoch ends, with "effective_max_lr" (the rate trained with,
    --max-lr or 0.4 x batch/512) and "cli" (command-line choices such as --no-report, for --resume).

    runs/search-<name>/  (tuning/search.py)
      search.json        the search's own settings, its space, base config and summary
      results.csv        one row per trial, best validation accuracy first
      trials/<id>/       each trial's run directory (layout above, never test-evaluated) + params.json,
                         attempts.jsonl (one line per start of the trial: node_ids and pids of its
                         processes by rank, from_epoch its checkpoint, started), train.log (its own
                         output) and, for a trial that ended itself as failed (diverged, or its
                         sampled config was refused: a retry would fail again), failed.json
                         ({"error": reason, "epoch"}); once a trial has ended, its epoch checkpoints
                         and final weights are removed (best weights and small files stay) unless
                         --keep-trial-checkpoints. A PBT trial (--search-scheduler pbt) also has
                         lineage.jsonl: one row per exploit it adopted, {"epoch": k (the donor's
                         checkpoint; training went on with k+1), "donor": id, "before"/"after": the
                         perturbed fields' values, "time"}; its rows of epochs <= k are then the donor's
      best/              the best trial in the layout above, test-evaluated once; after a PBT search
                         also schedule.json (tuning/pbt.py: the values per epoch, --aug-schedule's input)
      ray/               Tune's experiment (--resume); in a PBT search also Tune's copies of the
                         checkpoints trials hand to each other (checkpoint_*/, removed once unneeded)
      refit/             with --refit: the best trial's configuration trained again on every training
                         image (--val-size 0) for the full epochs, a run directory in the layout above
                         (train.log holds its output)

`RunWriter` is the only code that writes these files (the search's own two, search.json and
results.csv, are written by tuning/runner.py); every write goes through `atomic_path`, so a kill
at any moment leaves the previous version of a file or the new one, never half of one.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import sys
import tempfile
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from distributed.config import ConfigError

CONFIG = "config.json"
METRICS = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
BEST_WEIGHTS = "best.safetensors"
FINAL_WEIGHTS = "model.safetensors"
PREDICTIONS = "predictions.npz"
SUMMARY = "summary.json"
LR_FIND = "lr_find.json"
STEPS = "steps.jsonl"
TENSORBOARD = "tensorboard"       # the tracker's folder (--log-with tensorboard), written by the tracker
TRAINER_STATE = "trainer_state.json"
# A search directory (runs/search-<name>/)
SEARCH_JSON = "search.json"
RESULTS_CSV = "results.csv"
TRIALS = "trials"
BEST_TRIAL = "best"
REFIT = "refit"                   # the best configuration retrained on all training images (--refit)
PARAMS = "params.json"            # a trial's sampled hyperparameters, in its run directory
ATTEMPTS = "attempts.jsonl"       # a trial's starts: where each ran and what it resumed from
FAILED = "failed.json"            # a trial that failed for good (diverged, config refused): why
TRAIN_LOG = "train.log"           # a trial's own output
LINEAGE = "lineage.jsonl"         # a PBT trial's exploits: one row per donor state it adopted
SCHEDULE = "schedule.json"        # a PBT search's best/: the best trial's values per epoch (--aug-schedule reads it)

# Config fields a resumed run may change: where things live and how fast they load, not what is learnt.
RESUMABLE_CHANGES = {"data_dir", "runs_dir", "download", "num_workers", "keep_checkpoints", "checkpoint_every",
                     "log_with", "dist_timeout"}


# ----------------------------------------------------------------------------- reading and atomic writes
class WriteError(OSError):
    """A file could not be written because of the disk, not the program: it is full, read-only, or
    not ours to write. `str()` is one line naming the path and the reason; `path` and `reason` are
    kept for callers that say what is kept and how to continue."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"cannot write {path}: {reason}")
        self.path, self.reason = Path(path), reason

    def __reduce__(self):  # pickled as built (Ray carries a trial's exception across processes)
        return type(self), (self.path, self.reason)


# The errors a disk gives, in the words a user acts on.
_DISK_ERRORS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
                errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
                errno.EPERM: "permission denied"}


def _existing_ancestor(path: Path) -> Path:
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _disk_reason(path: Path, exc: BaseException) -> str | None:
    """Why writing `path` failed, if the disk is the reason; None for any other error (a bug).

    Call before a half-written temporary is removed: torch's writer says only "file write
    failed", and the free space it used up tells the full disk apart."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in _DISK_ERRORS:
            return _DISK_ERRORS[seen.errno]
        seen = seen.__cause__ or seen.__context__
    text = str(exc)
    for code, reason in _DISK_ERRORS.items():  # safetensors and torch put the OS's words in their message
        if os.strerror(code) in text:
            return reason
    try:
        if shutil.disk_usage(_existing_ancestor(path)).free < 1 << 20:
            return "no space left on device"
    except OSError:
        pass
    return None


@contextmanager
def writing(path: Path) -> Iterator[None]:
    """Within the block, an error the disk caused while writing `path` becomes a `WriteError`;
    anything else passes unchanged."""
    try:
        yield
    except WriteError:
        raise
    except Exception as e:
        reason = _disk_reason(path, e)
        if reason is None:
            raise
        raise WriteError(path, reason) from e


def check_writable(folder: Path, need_bytes: int) -> None:
    """Before training: `folder` (or the existing folder it will be made in) takes a new file, and
    its disk has `need_bytes` free. Raises WriteError naming `folder` otherwise."""
    base = _existing_ancestor(folder)
    try:
        with tempfile.TemporaryFile(dir=base):
            pass
    except OSError as e:
        raise WriteError(folder, _disk_reason(base, e) or e.strerror or str(e)) from None
    free = shutil.disk_usage(base).free
    if free < need_bytes:
        raise WriteError(folder, f"only {free / 1e6:.0f} MB free on its disk, and a run needs about "
                                 f"{need_bytes / 1e6:.0f} MB (a checkpoint and its weights)")


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path` (same suffix, so numpy/safetensors keep the name); when
    the block ends without error, rename it over `path` (a file or a folder). On error it is removed,
    and an error of the disk (full, read-only) is raised as `WriteError`."""
    path = Path(path)
    tmp = path.with_name(f".tmp.{os.getpid()}.{path.name}")
    _remove(tmp)
    try:
        with writing(path):
            yield tmp
            if tmp.is_dir():
                _remove(path)  # os.replace cannot replace a non-empty folder
            os.replace(tmp, path)
    finally:
        _remove(tmp)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=_jsonable) + "\n")


def _jsonable(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """Per-epoch metrics of a run, in epoch order; a torn last line (killed mid-write) is skipped."""
    return read_jsonl(Path(run_dir) / METRICS)


def read_steps(run_dir: Path) -> list[dict[str, Any]]:
    """Per-optimiser-step lr and loss of a run (steps.jsonl), in step order; empty for older runs."""
    return read_jsonl(Path(run_dir) / STEPS)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The rows of a JSON-lines file ([] when absent); a torn last line is skipped."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def selection_key(row: dict[str, Any]) -> tuple[float, float]:
    """How epochs rank for model selection: validation accuracy, ties going to the lower val loss."""
    return (row["val_acc"], -row["val_loss"])


def load_predictions(run_dir: Path) -> dict[str, np.ndarray]:
    """Test-set logits, labels and indices written at the end of a run."""
    with np.load(Path(run_dir) / PREDICTIONS, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def test_accuracies(run_dir: Path) -> dict[str, float | None]:
    """Test accuracy of a finished run's final weights evaluated plain and mirror-averaged (TTA), from
    predictions.npz: both are there whatever --tta chose, so runs compare like with like."""
    pred = load_predictions(run_dir)
    return {f"test_acc_{k}": float((pred[f"logits_{k}"].argmax(1) == pred["labels"]).mean())
            if f"logits_{k}" in pred else None for k in ("plain", "tta")}


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """Complete epoch checkpoints, oldest first (incomplete ones never get their final name)."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("epoch_")
                  and (p / TRAINER_STATE).exists())


def build_summary(meta: dict[str, Any], rows: list[dict[str, Any]], test: dict[str, Any] | None = None,
                  **extra: Any) -> dict[str, Any]:
    """summary.json of a run: its config.json `meta`, its metrics rows, the test result, and `extra`.

    The best epoch is ranked like fit ranks it (`selection_key`); without a validation split the
    last epoch stands in for it. Images/s is the steady state: epochs after the first, which pays warm-up.
    """
    vals = [r for r in rows if r.get("val_acc") is not None]
    best = max(vals, key=selection_key) if vals else (rows[-1] if rows else None)
    rates = [r["images_per_sec"] for r in rows]
    rates = rates[1:] or rates
    return {
        "test_acc": test["acc"] if test else None, "test_loss": test["loss"] if test else None,
        "test_count": test["count"] if test else None,
        "best_val_acc": best["val_acc"] if vals else None, "best_epoch": best["epoch"] if best else 0,
        "epochs": rows[-1]["epoch"] if rows else 0, "wall_seconds": rows[-1]["wall_seconds"] if rows else 0.0,
        "total_seconds": None, "images_per_sec": float(np.mean(rates)) if rates else None,
        **{k: meta.get(k) for k in ("device", "world_size", "mixed_precision", "num_params", "mean", "std")},
        "weights": FINAL_WEIGHTS, **extra}


# ----------------------------------------------------------------------------- the writer
@dataclass
class TrainerState:
    """Where training stands; saved beside every checkpoint (trainer_state.json) and resumed from it."""

    epoch: int = 0                     # finished epochs
    best_val_acc: float = -1.0
    best_val_loss: float = float("inf")
    best_epoch: int = 0
    wall_seconds: float = 0.0          # training epochs only
    total_seconds: float = 0.0         # everything fit did, up to the last checkpoint
    # The checkpointed epoch's metrics row (checkpoint_seconds unknown yet): metrics.jsonl gets the row
    # only after the checkpoint, so a kill in between is repaired from here on resume.
    row: dict[str, Any] | None = None

    def improves(self, row: dict[str, Any]) -> bool:
        """Record `row` as the best epoch when it ranks above the best so far; True if it did.
        Without a validation split every epoch beats the previous one (the last stands in for the best)."""
        ranked = row if row.get("val_acc") is not None else {"val_acc": float(row["epoch"]), "val_loss": 0.0}
        if selection_key(ranked) <= (self.best_val_acc, -self.best_val_loss):
            return False
        self.best_val_acc, self.best_val_loss, self.best_epoch = ranked["val_acc"], ranked["val_loss"], row["epoch"]
        return True


class RunWriter:
    """The one writer of a run directory. Every method only writes on the main process, so callers
    need no rank checks; `checkpoint` must still be called on every process (Accelerate's
    `save_state` is collective: each rank saves its own random state)."""

    def __init__(self, run_dir: str | Path, is_main: bool = True) -> None:
        self.run_dir, self.is_main = Path(run_dir), is_main
        self._pending: Future | None = None  # the best weights being written in the background

    def path(self, name: str) -> Path:
        return self.run_dir / name

    def _make_dir(self) -> None:
        with writing(self.run_dir):
            self.run_dir.mkdir(parents=True, exist_ok=True)

    # -- before training
    def start(self, config: dict[str, Any], resume: bool, may_change: tuple[str, ...] = ()) -> dict[str, Any] | None:
        """Check the folder before anything is built: refuse to reuse a run without `resume`, and on
        resume refuse a config that would change the result (but for the fields in `may_change`).
        Returns the summary of an already finished run (resume), else None. Reads only, on every
        process, so all ranks stop alike."""
        saved = self.path(CONFIG)
        if saved.exists() and not resume:
            if not checkpoint_dirs(self.run_dir) and not self.path(SUMMARY).exists():
                raise ConfigError(f"{self.run_dir} holds a run stopped before its first checkpoint; --resume starts "
                                  f"it over (nothing to lose), or choose another --name")
            raise ConfigError(f"{self.run_dir} already holds a run; pass --resume to continue it, "
                              f"or choose another --name")
        if saved.exists():
            before = _with_defaults(read_json(saved)["config"])
            diff = sorted(k for k in set(before) | set(config)
                          if before.get(k) != config.get(k) and k not in RESUMABLE_CHANGES
                          and k not in may_change)
            if diff:
                raise ConfigError(f"--resume with a config that differs from {saved} in: {', '.join(diff)}; "
                                  f"resume with the run's own settings or start a new --name")
            if self.path(SUMMARY).exists():
                return read_json(self.path(SUMMARY))
        return None

    def write_config(self, meta: dict[str, Any]) -> None:
        """config.json, once: a resumed run keeps the description of its first start."""
        if self.is_main and not self.path(CONFIG).exists():
            self._make_dir()
            write_json(self.path(CONFIG), meta)

    def write_lr_find(self, result: dict[str, Any]) -> None:
        if self.is_main:
            self._make_dir()
            write_json(self.path(LR_FIND), result)

    def write_params(self, params: dict[str, Any]) -> None:
        """A search trial's sampled hyperparameters (the results table reads them back)."""
        if self.is_main:
            self._make_dir()
            write_json(self.path(PARAMS), params)

    def log_attempt(self, row: dict[str, Any]) -> None:
        """A search trial starting (first start, retry or restore): one line of attempts.jsonl."""
        if self.is_main:
            self._make_dir()
            self._append(ATTEMPTS, [row])

    def write_failure(self, error: str, epoch: int) -> None:
        """failed.json: the trial ended itself as failed (the search records it as ERROR, no retry)."""
        if self.is_main:
            write_json(self.path(FAILED), {"error": error, "epoch": epoch})

    def reset_metrics(self, last_epoch: int, last_row: dict[str, Any] | None = None) -> None:
        """Keep only the epochs a resumed checkpoint covers (all of them gone when starting over),
        in metrics.jsonl and steps.jsonl alike. `last_row`, the checkpoint's own epoch row
        (`TrainerState.row`), is put back when a kill came between the checkpoint and its log line."""
        if not self.is_main:
            return
        for name in (METRICS, STEPS):
            rows = [r for r in read_jsonl(self.path(name)) if r.get("epoch", 0) <= last_epoch]
            if name == METRICS and last_row and last_row["epoch"] not in {r.get("epoch") for r in rows}:
                rows.append(last_row)
            if not rows and not self.path(name).exists():
                continue
            with atomic_path(self.path(name)) as tmp:
                tmp.write_text("".join(json.dumps(r, default=_jsonable) + "\n" for r in rows))

    # -- during training
    def log_epoch(self, row: dict[str, Any]) -> None:
        """Append one epoch (flushed to disk: a kill right after still keeps it)."""
        self._append(METRICS, [row])

    def log_steps(self, rows: list[dict[str, Any]]) -> None:
        """Append one epoch's optimiser steps (step, epoch, lr, loss) to steps.jsonl."""
        self._append(STEPS, rows)

    def _append(self, name: str, rows: list[dict[str, Any]]) -> None:
        """JSON lines, flushed to disk (a torn last line is skipped by its readers)."""
        if self.is_main and rows:
            with writing(self.path(name)), open(self.path(name), "a") as f:
                f.write("".join(json.dumps(r, default=_jsonable) + "\n" for r in rows))
                f.flush()
                os.fsync(f.fileno())

    def save_best(self, model) -> None:
        """best.safetensors, written by a background thread: training goes on meanwhile. The
        weights are copied first, so later steps cannot change what is written; `flush` waits for
        the write (a checkpoint or the end of the run does), and raises its error if it failed."""
        if not self.is_main:
            return
        state = _weights_copy(model)
        self.flush()
        from concurrent.futures import ThreadPoolExecutor

        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="best-weights")
        self._pending = pool.submit(_write_weights, state, self.path(BEST_WEIGHTS))
        pool.shutdown(wait=False)  # the thread ends after this write; Python waits for it at exit

    def flush(self) -> None:
        """Wait for the background write of the best weights; raise its error, if any."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def save_final(self, model) -> None:
        self.flush()
        if self.is_main:
            _write_weights(_weights_copy(model), self.path(FINAL_WEIGHTS))

    def checkpoint(self, accelerator, state: TrainerState, keep: int) -> Path:
        """Accelerate `save_state` (model, optimiser, scheduler, random states of every rank) into a
        temp folder renamed into place, then prune to the newest `keep`. Call on every process."""
        # The best weights the checkpoint's state names must be on disk before the checkpoint is:
        # a run resumed from it reports them.
        self.flush()
        final = self.path(CHECKPOINTS) / f"epoch_{state.epoch:04d}"
        # One temp name for all ranks (each writes its own random state into it): no pid in it.
        tmp = final.with_name(f".tmp.{final.name}")
        if self.is_main:
            _remove(tmp)
            with writing(tmp):
                tmp.parent.mkdir(parents=True, exist_ok=True)
        accelerator.wait_for_everyone()
        try:
            with writing(tmp):
                accelerator.save_state(str(tmp), safe_serialization=True)
        except WriteError:
            _remove(tmp)  # free what the half-written checkpoint took; the previous one stays
            raise
        accelerator.wait_for_everyone()
        if self.is_main:
            write_json(tmp / TRAINER_STATE, asdict(state))
            _remove(final)
            os.replace(tmp, final)
            for old in checkpoint_dirs(self.run_dir)[:-keep]:
                _remove(old)
        accelerator.wait_for_everyone()
        return final

    @contextmanager
    def output_to_log(self) -> Iterator[Path]:
        """Send this process's stdout and stderr (file descriptors 1 and 2, so C++ warnings and
        logging handlers too) to train.log, appended; restore them afterwards. A search trial's
        output goes there instead of the search's terminal."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        log = self.path(TRAIN_LOG)
        sys.stdout.flush()
        sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
        # Line by line, so that `tail -f train.log` follows a running trial.
        buffering = [(s, s.line_buffering) for s in (sys.stdout, sys.stderr) if hasattr(s, "reconfigure")]
        try:
            with open(log, "a") as f:
                os.dup2(f.fileno(), 1)
                os.dup2(f.fileno(), 2)
            for stream, _ in buffering:
                stream.reconfigure(line_buffering=True)
            yield log
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for stream, line_buffering in buffering:
                stream.reconfigure(line_buffering=line_buffering)
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)

    def prune_ended(self) -> int:
        """Free the disk of a run that nothing will resume (an ended search trial): remove its epoch
        checkpoints and final weights, keep the small files and best.safetensors (what results.csv,
        best/ and the report read). Returns the bytes freed."""
        if not self.is_main:
            return 0
        freed = 0
        doomed = [self.path(CHECKPOINTS), self.path(FINAL_WEIGHTS), *self.run_dir.glob(".tmp.*")]
        for path in doomed:
            if path.exists():
                freed += disk_bytes(path)
                _remove(path)
        return freed

    # -- a PBT trial (tuning/pbt.py)
    def adopt(self, source: Path, name: str) -> None:
        """Become another run's copy at one epoch (a PBT exploit): `source` holds that run's epoch
        checkpoint (checkpoints/epoch_NNNN), its best weights if any, its metrics and steps rows up to
        that epoch and its config.json. This run's checkpoints, best and final weights, rows, summary
        and config are replaced (config.json keeps this run's `name`); train.log, attempts.jsonl,
        params.json and lineage.jsonl stay. Each file is replaced atomically; a kill in between is
        repaired by adopting again."""
        if not self.is_main:
            return
        source = Path(source)
        with atomic_path(self.path(CHECKPOINTS)) as tmp:
            tmp.mkdir()
            for src in checkpoint_dirs(source):
                shutil.copytree(src, tmp / src.name, copy_function=link_or_copy)
        if (source / BEST_WEIGHTS).exists():
            with atomic_path(self.path(BEST_WEIGHTS)) as tmp:
                link_or_copy(source / BEST_WEIGHTS, tmp)
        else:
            _remove(self.path(BEST_WEIGHTS))
        for stale in (FINAL_WEIGHTS, SUMMARY, PREDICTIONS):
            _remove(self.path(stale))
        for rows_file in (METRICS, STEPS):
            rows = read_jsonl(source / rows_file)
            with atomic_path(self.path(rows_file)) as tmp:
                tmp.write_text("".join(json.dumps(r, default=_jsonable) + "\n" for r in rows))
        meta = read_json(source / CONFIG)
        meta["config"]["name"] = name
        write_json(self.path(CONFIG), meta)

    def log_lineage(self, row: dict[str, Any]) -> None:
        """A PBT exploit this trial adopted: one line of lineage.jsonl."""
        self._append(LINEAGE, [row])

    # -- at the end
    def finish(self, meta: dict[str, Any], test: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
        """Write predictions.npz (when there is a test result) and summary.json; return the summary.
        Predictions go first: a summary on disk means the run is complete."""
        summary = build_summary(meta, read_metrics(self.run_dir), test, **extra)
        if self.is_main:
            if test is not None:
                both = {k: test[k].astype(np.float32) for k in ("logits_plain", "logits_tta") if k in test}
                with atomic_path(self.path(PREDICTIONS)) as tmp:
                    np.savez(tmp, logits=test["logits"].astype(np.float32), labels=test["labels"].astype(np.int64),
                             indices=test["indices"].astype(np.int64), **both)
            write_json(self.path(SUMMARY), summary)
        return summary


def link_or_copy(src: str | Path, dst: str | Path) -> None:
    """A hard link (files a run never rewrites in place: checkpoints, weights), else a copy."""
    try:
        os.link(src, dst)
    except OSError:  # another file system, or one without hard links
        shutil.copy2(src, dst)


def _weights_copy(model) -> dict[str, Any]:
    """The unwrapped model's weights as fp32 CPU tensors of their own (a copy even on CPU)."""
    from distributed.model import unwrap

    return {k: (v.detach().float() if v.is_floating_point() else v.detach()).to("cpu", copy=True).contiguous()
            for k, v in unwrap(model).state_dict().items()}


def _write_weights(state: dict[str, Any], path: Path) -> None:
    """Weights as safetensors (what the report and the search load), atomically."""
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file(state, str(tmp))


def _with_defaults(config: dict[str, Any]) -> dict[str, Any]:
    """A saved config with the fields added since it was written at their defaults (which keep the old
    behaviour), so a run or search started before a new flag existed still resumes."""
    from distributed.config import TrainConfig

    try:
        return TrainConfig.from_dict(config).to_dict()
    except (ConfigError, TypeError):
        return config  # a config this version cannot read: compared as it is


def disk_bytes(path: Path) -> int:
    """Bytes a file or folder holds (files only)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def read_trainer_state(checkpoint: Path) -> TrainerState:
    return TrainerState(**read_json(Path(checkpoint) / TRAINER_STATE))
