"""Training: one `fit(cfg)` for a laptop CPU, one GPU, or DDP over many GPUs and nodes (Accelerate).

The CLI and a Ray Tune trial (`tuning/`) call this same loop; they differ only in the `callback`
they pass, which sees each finished epoch. Everything a run produces goes to files in its run
directory, through `rundir.RunWriter`; later stages read those files.

Flow (top to bottom, as in accelerate's complete_cv_example):
    build Accelerator -> check the run directory -> data, loaders, model, optimiser (one prepare)
    -> [resume] -> per epoch: train, validate, keep best, checkpoint, log, callback
    -> final weights, test predictions, summary.
With `stop` (the CLI's SIGTERM flag), every rank checks before each training step whether any rank
was signalled, and all of them leave the loop at the same step with `Preempted`.
"""
from __future__ import annotations

import functools
import math
import os
import platform
import signal
import socket
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch import nn

from distributed import rundir, tracking
from distributed.config import TrainConfig, precision_name
from distributed.data import CifarArrays, load_cifar10, make_split
from distributed.failures import NonFiniteLossError
from distributed.model import count_parameters, unwrap
from distributed.pipeline import (Pipeline, build_accelerator, build_model, build_pipeline, build_scheduler,
                                  eval_loader, model_input, progress_bar)
from distributed.rundir import RunWriter, TrainerState


@dataclass(frozen=True)
class EpochReport:
    """What a callback sees after each finished (logged) epoch, on every process."""

    epoch: int
    metrics: dict[str, Any]
    run_dir: Path
    checkpoint: Path | None     # written after this epoch; None when --checkpoint-every skipped it
    is_main_process: bool


EpochCallback = Callable[[EpochReport], None]


class Preempted(RuntimeError):
    """Training stopped on a signal (SIGTERM: SLURM, Kubernetes, a spot instance going away), at
    the same step on every rank, before that step ran. Nothing was half-written: the run directory
    holds the checkpoint of `resume_epoch` (0: none yet), which `--resume` continues from."""

    def __init__(self, signal_name: str, epoch: int, resume_epoch: int = 0) -> None:
        super().__init__(f"stopped by {signal_name} in epoch {epoch}")
        self.signal_name, self.epoch, self.resume_epoch = signal_name, epoch, resume_epoch


class StopFlag:
    """Set by a signal handler (`stop_on_signals`); `fit` looks at it before every training step."""

    def __init__(self) -> None:
        self.signal = 0  # the number of the signal received; 0: none

    def set(self, signum: int) -> None:
        self.signal = int(signum)


@contextmanager
def stop_on_signals(*signums: int) -> Iterator[StopFlag]:
    """Within the block the signals (default SIGTERM) do not kill the process: they set the flag,
    and `fit(stop=flag)` ends at the next step boundary by raising `Preempted` on every rank.
    Call from the main thread (Python delivers signals there only)."""
    flag = StopFlag()
    signums = signums or (signal.SIGTERM,)
    previous = {s: signal.signal(s, lambda signum, frame: flag.set(signum)) for s in signums}
    try:
        yield flag
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _stop_check(stop: StopFlag | None, accelerator: Accelerator) -> Callable[[], int] | None:
    """A collective "stop now?": the signal any rank received (0: none), the same on every rank.

    SLURM signals every process of a job, Kubernetes only the launcher (which passes it on), a
    reclaimed spot instance only the processes on it: a rank that stopped alone would leave the
    others waiting in the next gradient all-reduce.
    The flag goes through a CPU (gloo) all-reduce, which on GPU runs costs no host-device sync."""
    if stop is None:
        return None
    if accelerator.num_processes == 1:
        return lambda: stop.signal
    import torch.distributed as dist

    group = None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")

    def check() -> int:
        flag = torch.tensor([stop.signal], dtype=torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=group)
        return int(flag.item())

    return check


# ----------------------------------------------------------------------------- one epoch
def l1_penalty(model: nn.Module) -> torch.Tensor:
    """Sum of |w| over weight matrices and kernels (not biases or norm scales)."""
    return sum(p.abs().sum() for p in model.parameters() if p.ndim > 1)


def train_one_epoch(cfg: TrainConfig, accelerator: Accelerator, p: Pipeline, scheduler, epoch: int,
                    progress: bool = True, steps: list[dict[str, Any]] | None = None,
                    should_stop: Callable[[], int] | None = None) -> dict[str, float]:
    """One pass over the training loader. Loss/accuracy are summed over all processes.

    steps:       when given, extended with one row per optimiser step (step, epoch, lr, loss; see
                 rundir.STEPS). The step losses stay on the device until the epoch's one reduction:
                 no host sync per step.
    should_stop: asked before every step (on every rank: it may be collective); when it returns a
                 signal number the epoch is abandoned by raising `Preempted`, before that step changes anything.
    """
    p.model.train()
    per_batch_schedule = cfg.scheduler == "onecycle"
    loss_sum = torch.zeros((), device=accelerator.device)
    ce_sum = torch.zeros((), device=accelerator.device)  # plain cross-entropy, comparable to val_loss
    correct = torch.zeros((), device=accelerator.device, dtype=torch.long)
    step_losses, step_lrs = [], []
    seen, wait, first_wait, lr, start = 0, 0.0, None, 0.0, time.perf_counter()
    bar = progress_bar(len(p.train_loader), f"epoch {epoch + 1}/{cfg.epochs}", progress and accelerator.is_main_process)
    # .item() syncs with a GPU: there the loss/accuracy shown are refreshed every 10 steps only.
    every = 1 if accelerator.device.type == "cpu" else 10
    t0 = time.perf_counter()
    try:  # closed on every way out, so a message printed after an error starts on a line of its own
        for step, (x, y, _) in enumerate(p.train_batches.epoch(epoch)):
            wait += time.perf_counter() - t0  # time blocked on the loader since the last step ended
            if first_wait is None:  # the epoch's start-up: workers spawning (first epoch), the first batches
                first_wait = wait
            x = p.to_input(x)
            signum = should_stop() if should_stop is not None else 0
            if signum:
                raise Preempted(signal.Signals(signum).name, epoch + 1)
            out = p.model(x)
            loss = F.cross_entropy(out, y, label_smoothing=cfg.label_smoothing)
            with torch.no_grad():
                ce = F.cross_entropy(out.detach().float(), y) if cfg.label_smoothing else loss.detach().float()
            if cfg.l1 > 0:
                loss = loss + cfg.l1 * l1_penalty(p.model)
            accelerator.backward(loss)
            p.optimizer.step()
            p.optimizer.zero_grad(set_to_none=True)
            lr = p.optimizer.param_groups[0]["lr"]  # the rate this step used, before the schedule moves it
            if per_batch_schedule:
                scheduler.step()
            loss_sum += loss.detach().float() * y.shape[0]
            ce_sum += ce * y.shape[0]
            step_losses.append(loss.detach().float())
            step_lrs.append(lr)
            correct += (out.detach().argmax(1) == y).sum()
            seen += y.shape[0]
            if bar is not None:
                if step % every == 0 or step == len(p.train_loader) - 1:
                    rate = seen * accelerator.num_processes / (time.perf_counter() - start)
                    bar.set_postfix(loss=f"{loss_sum.item() / seen:.3f}", acc=f"{correct.item() / seen:.3f}",
                                    img_s=f"{rate:,.0f}", refresh=False)
                bar.update(1)
            t0 = time.perf_counter()
    finally:
        if bar is not None:
            bar.close()
    # One reduction for the epoch: the totals, then each step's batch loss (summed over processes,
    # divided below: every process takes the same number of equal batches).
    totals = accelerator.reduce(torch.stack([loss_sum, correct.float(), torch.tensor(float(seen), device=accelerator.device),
                                             ce_sum, *step_losses]), "sum")
    elapsed = time.perf_counter() - start
    loss_total, correct_total, n_total, ce_total, *per_step = totals.tolist()
    if not math.isfinite(loss_total):
        raise NonFiniteLossError(loss_total, epoch + 1, cfg.effective_max_lr)
    if steps is not None:
        first = epoch * len(p.train_loader) + 1
        steps.extend({"step": first + i, "epoch": epoch + 1, "lr": step_lr, "loss": v / accelerator.num_processes}
                     for i, (step_lr, v) in enumerate(zip(step_lrs, per_step)))
    return {"train_loss": loss_total / n_total, "train_ce": ce_total / n_total, "train_acc": correct_total / n_total,
            "epoch_seconds": elapsed, "images_per_sec": n_total / elapsed,
            "data_wait_frac": wait / elapsed, "first_batch_seconds": first_wait or 0.0, "lr": lr}


@torch.no_grad()
def evaluate(model: nn.Module, loader, to_input: Callable[[torch.Tensor], torch.Tensor], accelerator: Accelerator,
             tta: bool = False, progress: str | None = None, *, label_smoothing: float = 0.0,
             both: bool = False) -> dict[str, Any]:
    """Loss/accuracy over a prepared loader; `gather_for_metrics` drops the padding DDP adds,
    so every image counts exactly once whatever the batch size and number of processes.

    to_input:        the loader's uint8 batch -> model input (`Pipeline.to_input`).
    tta:             average the logits of each image and its horizontal mirror (`--tta`).
    progress:        the label of a progress bar (main process, terminal only); None: no bar.
    label_smoothing: also return `loss_smoothed`, the cross-entropy with this smoothing (what the
                     training loss measures); `loss` is always the plain cross-entropy.
    both:            also return `logits_plain` and `logits_tta` (one more forward pass when tta
                     is off), so the report can show the calibration of each; `loss`, `acc` and
                     `logits` stay those of `tta`: nothing is chosen by looking at both.
    """
    was_training = model.training
    model.eval()
    plain, mirrored, labels, indices = [], [], [], []
    bar = progress_bar(len(loader), progress, progress is not None and accelerator.is_main_process)
    try:  # closed on every way out, so a message printed after an error starts on a line of its own
        for x, y, idx in loader:
            x = to_input(x)
            out = model(x).float()
            flip = model(x.flip(3)).float() if tta or both else out
            out, flip, y, idx = accelerator.gather_for_metrics((out, flip, y, idx))
            plain.append(out)
            mirrored.append(flip)
            labels.append(y)
            indices.append(idx)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    model.train(was_training)
    plain, labels, indices = torch.cat(plain), torch.cat(labels), torch.cat(indices)
    averaged = (plain + torch.cat(mirrored)) / 2 if tta or both else plain
    logits = averaged if tta else plain
    result = {"loss": F.cross_entropy(logits, labels).item(),
              "acc": (logits.argmax(1) == labels).float().mean().item(),
              "count": int(labels.numel()),
              "logits": logits.cpu().numpy(), "labels": labels.cpu().numpy(), "indices": indices.cpu().numpy()}
    if label_smoothing:
        result["loss_smoothed"] = F.cross_entropy(logits, labels, label_smoothing=label_smoothing).item()
    if both:
        result["logits_plain"], result["logits_tta"] = plain.cpu().numpy(), averaged.cpu().numpy()
    return result


def _validate_and_step(cfg: TrainConfig, accelerator: Accelerator, p: Pipeline, scheduler,
                       row: dict[str, Any], progress: bool = True) -> None:
    """Validation loss/accuracy into `row` (None without a split), then the per-epoch schedules."""
    t_eval = time.perf_counter()
    val = (evaluate(p.model, p.val_loader, p.to_input, accelerator, cfg.tta, "validating" if progress else None,
                    label_smoothing=cfg.label_smoothing) if p.val_loader is not None else None)
    row.update(val_loss=val and val["loss"], val_loss_smoothed=val and val.get("loss_smoothed", val["loss"]),
               val_acc=val and val["acc"], eval_seconds=time.perf_counter() - t_eval)
    if cfg.scheduler == "plateau":
        scheduler.step(row["val_acc"] if val else row["train_acc"])
    elif cfg.scheduler == "step":
        scheduler.step()


# A loss this many times the chance-level loss ln(classes) is not a slow start but divergence; the
# accuracy test waits for the warm-up, whose rising learning rate may disturb the first epochs.
EXPLODED_LOSS_FACTOR = 10.0
CHANCE_MARGIN = 1.2


def warmup_epochs(cfg: TrainConfig) -> int:
    """Epochs of OneCycle's warm-up (rounded up); 1 for the other schedules, so that the first,
    noisiest epoch is never judged."""
    return max(1, math.ceil(cfg.pct_start * cfg.epochs)) if cfg.scheduler == "onecycle" else 1


def divergence_warning(cfg: TrainConfig, row: dict[str, Any], num_classes: int) -> str | None:
    """One line when an epoch looks diverged though its loss is finite (a NaN loss raises instead):
    the validation loss (training loss without a split) has exploded, at any epoch, or after the
    warm-up both accuracies sit at chance (1/classes). None when the epoch looks healthy.

    Only a warning: in a search such a trial is an ordinary weak trial that ASHA stops.
    """
    split = "val" if row.get("val_acc") is not None else "train"
    loss, acc = row[f"{split}_loss"], row[f"{split}_acc"]
    chance_loss = math.log(num_classes)
    fix = f"lower --max-lr (this run: {cfg.effective_max_lr:.3g}) or let --find-lr choose it"
    if loss > EXPLODED_LOSS_FACTOR * chance_loss:
        return (f"warning: {split} loss {loss:.4g} has exploded (a model that guesses scores {chance_loss:.2f}): "
                f"training is diverging; {fix}")
    chance = CHANCE_MARGIN / num_classes
    if row["epoch"] > warmup_epochs(cfg) and acc <= chance and row["train_acc"] <= chance:
        return (f"warning: {split} accuracy {acc:.3f} is still at chance (1/{num_classes}) after the warm-up: "
                f"training has likely diverged; {fix}")
    return None


def _epoch_line(cfg: TrainConfig, row: dict[str, Any]) -> str:
    val = f"val loss {row['val_loss']:.4f} acc {row['val_acc']:.4f} | " if row["val_acc"] is not None else ""
    return (f"epoch {row['epoch']:3d}/{cfg.epochs} | train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f} | "
            f"{val}lr {row['lr']:.4g} | {row['epoch_seconds']:.1f} s, {row['images_per_sec']:,.0f} img/s, "
            f"data wait {100 * row['data_wait_frac']:.0f}%")


def apply_regularisers(epoch_cfg: TrainConfig, p: Pipeline) -> None:
    """Set this epoch's dropout and weight decay on the model and optimiser (a schedule may change
    them between epochs; the augmentation follows the epoch in the loader workers, l1 in the loss).
    Both are plain attributes read at every step: nothing is rebuilt, no state is lost."""
    for module in p.model.modules():
        if isinstance(module, nn.Dropout):
            module.p = epoch_cfg.dropout
    for group in p.optimizer.param_groups:
        group["weight_decay"] = epoch_cfg.weight_decay


# ----------------------------------------------------------------------------- checkpoints
# Auto checkpoints (--checkpoint-every 0): the work between two of them is at least this many times
# what the last one took, so they cost under 1/50 = 2% of the run.
AUTO_CHECKPOINT_RATIO = 50


class CheckpointClock:
    """Which epochs end with a checkpoint: every `cfg.checkpoint_every` epochs, or (0, auto) the
    first epoch of this invocation and then each one that ends at least AUTO_CHECKPOINT_RATIO x
    the last checkpoint's seconds after it; always the last epoch.

    A checkpoint is collective (every rank saves its random state), so all ranks must decide alike:
    the auto decision is the main process's, broadcast to the others."""

    def __init__(self, cfg: TrainConfig, accelerator: Accelerator) -> None:
        self.every, self.epochs, self.accelerator = cfg.checkpoint_every, cfg.epochs, accelerator
        self.cost: float | None = None      # seconds the last checkpoint took; None: none yet
        self.since = time.perf_counter()    # when it ended

    def due(self, epoch: int) -> bool:
        """Whether `epoch` (1-based, just finished) gets a checkpoint. Call on every process."""
        if epoch == self.epochs:
            return True
        if self.every:
            return epoch % self.every == 0
        due = self.cost is None or time.perf_counter() - self.since >= AUTO_CHECKPOINT_RATIO * self.cost
        if self.accelerator.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            due = broadcast_object_list([due], from_process=0)[0]
        return due

    def written(self, seconds: float) -> None:
        """A checkpoint that took `seconds` has just been written."""
        self.cost, self.since = seconds, time.perf_counter()


# ----------------------------------------------------------------------------- the run
def _say(accelerator: Accelerator, line: str) -> None:
    """Print on the global main process only: accelerator.print prints once per node, so every
    node's log would repeat the job's lines, with that node's own timings."""
    if accelerator.is_main_process:
        print(line, flush=True)


def fit(cfg: TrainConfig, run_dir: str | Path | None = None, *, callback: EpochCallback | None = None,
        resume: bool = False, data: CifarArrays | None = None, evaluate_test: bool = True,
        progress: bool = True, accelerator: Accelerator | None = None,
        stop: StopFlag | None = None, cli_options: dict[str, Any] | None = None,
        schedule_may_change: bool = False) -> dict[str, Any]:
    """Train ResNet18 on CIFAR-10 as `cfg` says into `run_dir` (default runs_dir/name); return the summary.

    callback:      called on every process after each epoch is logged (Tune reports here).
    resume:        continue from the newest checkpoint in run_dir; a finished run returns its summary,
                   a new one starts (so one command line serves the first start and every restart).
    data:          preloaded arrays (a search shares one copy among trials); default: read cfg.data_dir.
    evaluate_test: False in search trials: they select on validation only and never see the test set.
    stop:          from `stop_on_signals`: once set (on any rank), training ends before the next step
                   on every rank with `Preempted`; the current epoch is lost, nothing is half-written.
    progress:      progress bars on a terminal (train.py); a search trial's output goes to a file.
    cli_options:   command-line choices that are not config fields (e.g. --no-report), kept in
                   config.json under "cli" so that `--resume` remembers them.
    schedule_may_change: a resume may bring another `cfg.aug_schedule` than config.json's, applied from
                   the checkpoint's epoch on (a PBT trial after an exploit); any other change is refused.

    The run directory is created when the first epoch ends: a run that fails or is stopped before
    that leaves nothing behind, and its name stays free.
    """
    started = time.perf_counter()  # total_seconds counts start-up, evaluation and checkpoints too
    run_dir = Path(run_dir) if run_dir is not None else Path(cfg.runs_dir) / cfg.name
    accelerator = accelerator or build_accelerator(cfg, run_dir)
    writer = RunWriter(run_dir, accelerator.is_main_process)
    log = functools.partial(_say, accelerator)
    finished = writer.start(cfg.to_dict(), resume, may_change=("aug_schedule",) if schedule_may_change else ())
    if finished is not None:
        log(f"{writer.run_dir} is already complete; nothing to resume")
        return finished
    torch.use_deterministic_algorithms(cfg.deterministic, warn_only=True)
    torch.backends.cudnn.benchmark = not cfg.deterministic  # fixed shapes: let cuDNN pick the fastest kernels

    p = build_pipeline(cfg, accelerator, data)
    scheduler = build_scheduler(cfg, p.optimizer, len(p.train_loader))
    accelerator.register_for_checkpointing(scheduler)
    meta = {**run_meta(cfg, accelerator, p), **({"cli": cli_options} if cli_options else {})}
    # Before the first epoch, not after it: a folder that cannot be written, or a disk without room
    # for a checkpoint (weights and momentum) and the best and final weights, fp32: 16 bytes a parameter.
    rundir.check_writable(writer.run_dir, 16 * meta["num_params"])
    checkpoints = rundir.checkpoint_dirs(writer.run_dir) if resume else []
    state = rundir.read_trainer_state(checkpoints[-1]) if checkpoints else TrainerState()
    if checkpoints:
        accelerator.load_state(str(checkpoints[-1]))
        log(f"resumed {writer.run_dir} from epoch {state.epoch}")
    elif resume and writer.path(rundir.CONFIG).exists():
        log(f"{writer.run_dir}: starting over: no checkpoint yet")
    writer.reset_metrics(state.epoch, state.row)
    accelerator.wait_for_everyone()
    previous_total = state.total_seconds  # earlier invocations, up to their last checkpoint
    steps_per_epoch = len(p.train_loader)
    log(f"{writer.run_dir}: {len(p.split.train)} train / {len(p.split.val)} val / {len(p.split.test)} test images, "
        f"{meta['device']}, {precision_name(meta['mixed_precision'])} precision, global batch {cfg.batch_size}, "
        f"max_lr {cfg.effective_max_lr:.4g} ({cfg.max_lr_rule()}), {meta['num_params']:,} parameters")
    tracking.start(cfg, accelerator, writer.run_dir, purge_step=state.epoch * steps_per_epoch + 1)
    resume_epoch = state.epoch if checkpoints else 0  # what a --resume after a stop continues from
    try:
        summary = _train_and_test(cfg, accelerator, p, scheduler, writer, state, meta, callback, evaluate_test,
                                  progress, _stop_check(stop, accelerator), (started, previous_total, resume_epoch))
    finally:
        tracking.finish(accelerator)
    return summary


def _train_and_test(cfg: TrainConfig, accelerator: Accelerator, p: Pipeline, scheduler, writer: RunWriter,
                    state: TrainerState, meta: dict[str, Any], callback: EpochCallback | None, evaluate_test: bool,
                    progress: bool, should_stop, clock: tuple[float, float, int]) -> dict[str, Any]:
    """The epochs from `state` on, then the final weights, the test evaluation and the summary.
    clock: when this invocation started, the total seconds of earlier ones, and the epoch a resume
    would continue from (so a stop can say it)."""
    log = functools.partial(_say, accelerator)
    started, previous_total, resume_epoch = clock
    # Before the first epoch of this invocation: Accelerator, data, loaders, model, a resume's checkpoint.
    startup_seconds = time.perf_counter() - started
    checkpoints = CheckpointClock(cfg, accelerator)
    for epoch in range(state.epoch, cfg.epochs):
        steps: list[dict[str, Any]] = []
        epoch_cfg = cfg.for_epoch(epoch)  # the schedule's values for this epoch (cfg without one)
        if cfg.aug_schedule:
            apply_regularisers(epoch_cfg, p)
        try:
            row = {"epoch": epoch + 1,
                   **train_one_epoch(epoch_cfg, accelerator, p, scheduler, epoch, progress, steps, should_stop)}
        except Preempted as e:  # add what a --resume continues from
            raise Preempted(e.signal_name, e.epoch, resume_epoch) from None
        if epoch + 1 < cfg.epochs:  # the loader workers make its first batches during validation and checkpoint
            p.train_batches.start(epoch + 1)
        if cfg.aug_schedule:
            row["schedule"] = cfg.schedule_entry(epoch)  # what this epoch trained with, read back by reports
        _validate_and_step(cfg, accelerator, p, scheduler, row, progress)
        writer.write_config(meta)  # the run directory appears with its first finished epoch
        # Before the checkpoint: a kill after it is resumed from the previous checkpoint, whose
        # reset drops these rows, so no step is ever logged twice.
        writer.log_steps(steps)
        state.wall_seconds += row["epoch_seconds"]
        row["wall_seconds"] = state.wall_seconds
        t_save = time.perf_counter()
        if state.improves(row):
            writer.save_best(accelerator.unwrap_model(p.model))  # written in the background
        state.epoch, state.total_seconds = epoch + 1, previous_total + time.perf_counter() - started
        due = checkpoints.due(epoch + 1)  # the same on every rank (save_state is collective)
        state.row = {**row, "checkpoint_seconds": None}
        ckpt = writer.checkpoint(accelerator, state, cfg.keep_checkpoints) if due else None
        if due:
            checkpoints.written(time.perf_counter() - t_save)
        resume_epoch = state.epoch if due else resume_epoch
        row["checkpoint_seconds"] = time.perf_counter() - t_save  # best weights (their copy) + checkpoint
        writer.log_epoch(row)
        tracking.log_epoch(accelerator, row, steps)
        log(_epoch_line(cfg, row))
        warning = divergence_warning(cfg, row, p.num_classes)
        if warning:
            log(warning)
        if callback is not None:
            callback(EpochReport(epoch + 1, row, writer.run_dir, ckpt, accelerator.is_main_process))

    t_final = time.perf_counter()
    in_sync = ranks_in_sync(p.model, accelerator)
    if not in_sync:
        log("warning: model weights differ between processes; the distributed setup is broken")
    writer.save_final(accelerator.unwrap_model(p.model))
    # The test set is touched once, at the end, by the final weights: it selects nothing.
    test = (evaluate(p.model, p.test_loader, p.to_input, accelerator, cfg.tta, "testing" if progress else None,
                     both=True)
            if evaluate_test else None)
    if test is not None:
        tracking.log_test(accelerator, test, step=cfg.epochs * len(p.train_loader))
    summary = writer.finish(meta, test, ranks_in_sync=in_sync,
                            total_seconds=previous_total + time.perf_counter() - started,
                            startup_seconds=startup_seconds, final_seconds=time.perf_counter() - t_final)
    test_txt = f"test accuracy {test['acc']:.4f} on {test['count']} images | " if test else ""
    log(f"{test_txt}{state.wall_seconds:.1f} s of training, {summary['total_seconds']:.1f} s in all "
        f"(start-up, evaluation and checkpoints included)")
    accelerator.wait_for_everyone()
    return summary


def evaluate_weights(cfg: TrainConfig, weights: Path, mean, std, data: CifarArrays | None = None,
                     accelerator: Accelerator | None = None) -> dict[str, Any]:
    """The test result of saved weights (`evaluate`'s dict), on the test images `cfg` selects.

    `mean`/`std` are the normalisation the weights were trained with (their run's config.json).
    Builds only what evaluation needs: the test loader and the model.
    """
    from safetensors.torch import load_file

    accelerator = accelerator or build_accelerator(cfg)
    if data is None:
        data = load_cifar10(cfg.data_dir, download=False)
    split = make_split(data.train_y, data.test_y, cfg.val_size, cfg.subset, cfg.test_subset)
    loader = eval_loader(cfg, accelerator, data.test_x, data.test_y, split.test)
    model = build_model(cfg, len(data.classes), accelerator)
    model.load_state_dict(load_file(str(weights)))
    model, loader = accelerator.prepare(model, loader)
    return evaluate(model, loader, model_input(cfg, accelerator, mean, std), accelerator, cfg.tta, both=True)


def run_meta(cfg: TrainConfig, accelerator: Accelerator, p: Pipeline) -> dict[str, Any]:
    """config.json: the config, package versions, git commit, hardware, split sizes, normalisation."""
    versions = {}
    for pkg in ("torch", "torchvision", "albumentations", "accelerate", "numpy", "opencv-python-headless", "ray"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                                cwd=Path(__file__).resolve().parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    if accelerator.device.type == "cuda":
        device = f"{accelerator.num_processes} x {torch.cuda.get_device_name(accelerator.device)}"
    else:
        device = f"{accelerator.num_processes} x CPU ({platform.processor() or platform.machine()}, " \
                 f"{os.cpu_count()} cores)"
    return {"config": cfg.to_dict(), "effective_max_lr": cfg.effective_max_lr, "versions": versions, "python": platform.python_version(),
            "git_commit": commit, "hostname": socket.gethostname(), "device": device,
            "world_size": accelerator.num_processes, "mixed_precision": accelerator.mixed_precision,
            "num_params": count_parameters(p.model),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "split": {"train": len(p.split.train), "val": len(p.split.val), "test": len(p.split.test)},
            "mean": p.mean, "std": p.std}


def ranks_in_sync(model: nn.Module, accelerator: Accelerator) -> bool:
    """True when every process holds the same weights (DDP's promise), compared by checksums."""
    with torch.no_grad():
        sums = torch.stack([q.detach().double().sum() for q in unwrap(model).state_dict().values()
                            if q.is_floating_point()]).to(accelerator.device)
    gathered = accelerator.gather(sums[None]).reshape(accelerator.num_processes, -1)
    return bool(torch.equal(gathered, gathered[:1].expand_as(gathered)))
