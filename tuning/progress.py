"""What a search shows while it runs, and what it frees as trials end (a Ray Tune `Callback`).

One compact view instead of Tune's status tables: trials running / finished / stopped early /
failed / waiting, the best validation accuracy so far, the exploits of a PBT search (each trial's
lineage.jsonl), the elapsed time. On a terminal it is one
line redrawn in place; in a file or pipe a new line only when a count or the best changes (no
timer lines, no colour codes). A failed trial gets one line naming its error and its log file.
Each trial's own output (epoch lines, warnings, tracebacks) is in trials/<id>/train.log.

Imported by tuning/runner.py when a search starts (it imports Ray).
"""
from __future__ import annotations

import logging
import math
import re
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from ray.tune import Callback

from distributed import rundir
from distributed.rundir import RunWriter

# Tune logs each failed trial's whole traceback (with colour codes) and a closing list of the
# trials that did not complete; the compact view says both in one line each instead.
_TUNE_NOISE = {"ray.tune.execution.tune_controller": ("Trial task failed",),
               "ray.tune.tune": ("Trials did not complete",),
               # After an interruption, one line per trial that never reported (17 lines in a cut-short
               # 32-trial search on the GPU): results.csv lists those trials as PENDING/RUNNING.
               "ray.tune.analysis.experiment_analysis": ("Failed to fetch metrics",)}
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class _TuneLogFilter(logging.Filter):
    """Drops the records the compact view replaces (`drop`), or keeps them without colour codes
    (Ray colours the process name in a task error's text, whatever the output)."""

    def __init__(self, prefixes: tuple[str, ...], drop: bool) -> None:
        super().__init__()
        self.prefixes, self.drop = prefixes, drop

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(self.prefixes):
            return True
        if self.drop:
            return False
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = _ANSI.sub("", record.exc_text)
        return True


class tune_error_logs:
    """Context manager for `tuner.fit()`: without `verbose`, Tune's per-failure traceback logs are
    dropped (the compact view has a line per failed trial, the trial's train.log the traceback);
    with it they stay, without colour codes unless stderr is a terminal."""

    def __init__(self, verbose: bool) -> None:
        self.verbose = verbose

    def __enter__(self) -> "tune_error_logs":
        self.filters = []
        if self.verbose and sys.stderr.isatty():
            return self
        for name, prefixes in _TUNE_NOISE.items():
            f = _TuneLogFilter(prefixes, drop=not self.verbose)
            logging.getLogger(name).addFilter(f)
            self.filters.append((logging.getLogger(name), f))
        return self

    def __exit__(self, *exc: Any) -> None:
        for logger, f in self.filters:
            logger.removeFilter(f)


class SearchProgress(Callback):
    """The compact progress view (`show=True`) and the disk cleanup of ended trials (`prune=True`).

    An ended trial (TERMINATED, stopped by ASHA, or ERROR: Tune resumes none of them) loses its
    epoch checkpoints and final weights (`RunWriter.prune_ended`); unfinished trials of an
    interrupted search keep theirs for `--resume`. In a PBT search (`pbt=True`) recipients adopt
    a donor's checkpoint from Tune's copy (ray/<donor>/checkpoint_*), never from the donor's run
    directory, so that pruning is safe there too; an ended trial's Tune copies go as well, but for
    those a paused recipient has yet to adopt.
    """

    def __init__(self, search_dir: Path, num_samples: int, max_epochs: int, *, show: bool = True,
                 prune: bool = True, stream: TextIO | None = None, pbt: bool = False) -> None:
        self.search_dir, self.num_samples, self.max_epochs = Path(search_dir), num_samples, max_epochs
        self.show, self.prune, self.pbt = show, prune, pbt
        self._stream = stream
        self._reset()

    def _reset(self) -> None:
        self.started = time.time()
        self.best: tuple[float, str, Any] | None = None   # (val_acc, trial id, epoch)
        self.shown, self.drawn_at = "", 0.0
        self.exploits: dict[str, int] | None = None       # PBT: lineage rows per trial id; None: not read yet

    # Tune pickles its RunConfig, callbacks included, into the experiment (tuner.pkl) and a resumed
    # search gets this object back from there: no stream in the pickle, a fresh clock after it.
    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_stream"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        # A search started before PBT existed pickled no `pbt`: it was an ASHA search.
        self.__dict__.update({"pbt": False, **state}, _stream=None)
        self._reset()

    @property
    def stream(self) -> TextIO:
        return self._stream or sys.stdout

    @property
    def tty(self) -> bool:
        return self.stream.isatty()

    # -- Tune's hooks
    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info: Any) -> None:
        self._consider(result, trial.trial_id)
        if self.pbt and self.exploits is not None:
            # A recipient writes its lineage row before its first result after the exploit.
            self.exploits[trial.trial_id] = self._lineage_rows(trial.trial_id)

    def on_trial_complete(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self._ended(trial, trials)
        if self.show and (trial.last_result or {}).get("failed"):
            # A trial that ended itself as failed (diverged): Tune sees it complete, not errored.
            failed = self.search_dir / rundir.TRIALS / trial.trial_id / rundir.FAILED
            why = rundir.read_json(failed)["error"] if failed.exists() else "unknown error"
            log = self.search_dir / rundir.TRIALS / trial.trial_id / rundir.TRAIN_LOG
            self._print(f"trial {trial.trial_id} failed: {why} (not retried; its output: {log})")

    def on_trial_error(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self._ended(trial, trials)
        if self.show:
            from tuning.results import error_line

            error = trial.get_error()
            log = self.search_dir / rundir.TRIALS / trial.trial_id / rundir.TRAIN_LOG
            self._print(f"trial {trial.trial_id} failed: {error_line(error) if error else 'unknown error'} "
                        f"(its output: {log})")

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        self._draw(trials)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self._draw(trials, force=True)
        if self.show and self.tty:
            self.stream.write("\n")
            self.stream.flush()

    # -- the view
    def counts(self, trials: list) -> dict[str, int]:
        """Trials by state; a TERMINATED trial that ended before max epochs was stopped by ASHA."""
        c = {"running": 0, "finished": 0, "stopped": 0, "failed": 0}
        for t in trials:
            if t.status == "RUNNING":
                c["running"] += 1
            elif t.status == "ERROR" or (t.last_result or {}).get("failed"):
                c["failed"] += 1
            elif t.status == "TERMINATED":
                epoch = (t.last_result or {}).get("epoch", 0)
                c["finished" if epoch >= self.max_epochs else "stopped"] += 1
        c["waiting"] = max(0, self.num_samples - sum(c.values()))
        return c

    def line(self, trials: list, elapsed: float | None = None) -> str:
        c = self.counts(trials)
        # Trials that ended before a resume report nothing new: their last result still counts.
        for t in trials:
            self._consider(t.last_result or {}, t.trial_id)
        best = (f"best val_acc {self.best[0]:.4f} ({self.best[1]}, epoch {self.best[2]})" if self.best
                else "no result yet")
        text = (f"{self.num_samples} trials: {c['running']} running, {c['finished']} finished, "
                f"{c['stopped']} stopped early, {c['failed']} failed, {c['waiting']} waiting | {best}")
        if self.pbt:
            if self.exploits is None:  # first line, or after a resume: every trial's rows so far
                self.exploits = {t.trial_id: self._lineage_rows(t.trial_id) for t in trials}
            n = sum(self.exploits.values())
            text += f" | {n} exploit{'' if n == 1 else 's'}"
        if elapsed is None:
            return text
        s = int(elapsed)
        return f"[{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}] {text}"

    def _draw(self, trials: list, force: bool = False) -> None:
        if not self.show:
            return
        now = time.time()
        state = self.line(trials)
        if self.tty:  # redrawn in place, at most once a second (the clock moves)
            if force or state != self.shown or now - self.drawn_at >= 1.0:
                self.stream.write("\r" + self.line(trials, now - self.started) + "\x1b[K")
                self.stream.flush()
                self.shown, self.drawn_at = state, now
        elif state != self.shown:  # a log: a line per change, never one per tick
            self.stream.write(self.line(trials, now - self.started) + "\n")
            self.stream.flush()
            self.shown = state

    def _consider(self, result: dict, trial_id: str) -> None:
        """Keep the best validation accuracy so far; a failed trial's NaN ranks nowhere."""
        acc = result.get("val_acc")
        if acc is not None and math.isfinite(acc) and (self.best is None or acc > self.best[0]):
            self.best = (acc, trial_id, result.get("epoch"))

    def _print(self, text: str) -> None:
        """A line of its own, above the redrawn progress line on a terminal."""
        self.stream.write(("\r\x1b[K" if self.tty else "") + text + "\n")
        self.stream.flush()
        self.shown = ""  # redraw the progress line below it

    def _lineage_rows(self, trial_id: str) -> int:
        return len(rundir.read_jsonl(self.search_dir / rundir.TRIALS / trial_id / rundir.LINEAGE))

    def _ended(self, trial, trials: list) -> None:
        if not self.prune:
            return
        RunWriter(self.search_dir / rundir.TRIALS / trial.trial_id).prune_ended()
        if self.pbt:
            from tuning.pbt import prune_tune_checkpoints

            # An ended trial is never a donor again (PBT ranks live trials only); a paused recipient
            # holds its donor's checkpoint as its own `Trial.checkpoint` until it has adopted it.
            waiting = {t.checkpoint.path for t in trials
                       if t is not trial and not t.is_finished() and t.checkpoint is not None}
            for ended in trials:
                if ended.is_finished() or ended is trial:
                    prune_tune_checkpoints(ended.path, waiting)
