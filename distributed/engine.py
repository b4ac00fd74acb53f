"""Training: one `fit(cfg)` for a laptop CPU, one GPU, or DDP over many GPUs and nodes (Accelerate).

The CLI (`distributed/train.py`) and a Ray Tune trial (`tuning/`) call this same loop; they differ
only in the `callback` they pass, which sees each finished epoch.  Everything a run produces goes
to files in its run directory (see `distributed/rundir.py`); later stages read those files.

Flow (top to bottom, as in accelerate's complete_cv_example):
    build Accelerator -> check the launch -> data, split, statistics -> loaders, model, optimiser
    -> one prepare -> [resume] -> per epoch: train, validate, keep best, checkpoint, log, callback
    -> final weights, test predictions, summary.
"""
from __future__ import annotations

import math
import os
import platform
import shutil
import socket
import subprocess
import time
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, set_seed
from safetensors.torch import save_file
from torch import nn

from distributed import rundir
from distributed.augment import build_test_transform, build_train_transform
from distributed.config import ConfigError, TrainConfig
from distributed.data import CifarArrays, CifarDataset, Split, channel_stats, load_cifar10, make_loader, make_split
from distributed.model import count_parameters, resnet18, unwrap

# Config fields a resumed run may change: where things live and how fast they load, not what is learnt.
RESUMABLE_CHANGES = {"data_dir", "runs_dir", "download", "num_workers", "keep_checkpoints", "checkpoint_every"}


class LaunchError(RuntimeError):
    """The processes were started in a way that would silently train N copies instead of DDP."""


class NonFiniteLossError(RuntimeError):
    """Training diverged (NaN/inf loss); a Tune trial records this as failed."""


@dataclass(frozen=True)
class EpochReport:
    """What a callback sees after each finished (logged) epoch, on every process."""

    epoch: int
    metrics: dict[str, Any]
    run_dir: Path
    checkpoint: Path | None     # written after this epoch; None when --checkpoint-every skipped it
    is_main_process: bool


EpochCallback = Callable[[EpochReport], None]


# ----------------------------------------------------------------------------- building blocks
def build_accelerator(cfg: TrainConfig) -> Accelerator:
    """Accelerator with the run's precision and compile settings; fails fast on a broken launch."""
    precision = cfg.mixed_precision
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    accelerator = Accelerator(
        mixed_precision=precision,
        dynamo_backend="inductor" if cfg.compile else None,
        # non_blocking copies from pinned memory overlap the host->device transfer with compute.
        dataloader_config=DataLoaderConfiguration(non_blocking=torch.cuda.is_available()),
        step_scheduler_with_optimizer=False,
    )
    check_launch(accelerator)
    return accelerator


def check_launch(accelerator: Accelerator) -> None:
    """Stop if the launcher started several processes but Accelerate sees only one.

    On a machine without GPUs `accelerate launch --multi_gpu --num_processes 2` starts two
    processes that each believe they are rank 0 of 1: two identical trainings, silently.
    """
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != accelerator.num_processes:
        raise LaunchError(
            f"{launched} processes were launched (WORLD_SIZE={launched}) but Accelerate sees "
            f"{accelerator.num_processes} ({accelerator.distributed_type}); on CPU run "
            f"`ACCELERATE_USE_CPU=true torchrun --nproc_per_node {launched} distributed/train.py ...`")


def auto_workers(cfg: TrainConfig, accelerator: Accelerator) -> int:
    """DataLoader workers per process: the cores of this node shared among its processes."""
    if cfg.num_workers >= 0:
        return cfg.num_workers
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    per_process = cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes)))
    # On a CPU-only run the main process needs the cores for the model; on GPU, feed it.
    spare = per_process - 1 if accelerator.device.type != "cpu" else per_process // 2
    return max(0, min(12, spare))


@dataclass
class Pipeline:
    """Everything `fit` and the LR range test share: data, loaders, model, optimiser."""

    split: Split
    mean: tuple[float, ...]
    std: tuple[float, ...]
    train_loader: Any
    val_loader: Any | None
    test_loader: Any
    model: nn.Module
    optimizer: torch.optim.Optimizer


def build_pipeline(cfg: TrainConfig, accelerator: Accelerator, data: CifarArrays | None) -> Pipeline:
    """Load data (once per node: main process first, so only one downloads), split, loaders, model."""
    if data is None:
        with accelerator.main_process_first():
            data = load_cifar10(cfg.data_dir, download=cfg.download)
    split = make_split(data.train_y, data.test_y, cfg.val_size, cfg.subset, cfg.test_subset)
    # Statistics from the training images of this split only: nothing of val/test leaks in.
    with accelerator.main_process_first():
        mean, std = channel_stats(data.train_x[split.train],
                                  cache_dir=Path(cfg.data_dir) if Path(cfg.data_dir).is_dir() else None)
    n = accelerator.num_processes
    if cfg.batch_size % n:
        raise ConfigError(f"invalid --batch-size {cfg.batch_size}: the global batch must divide evenly "
                          f"over {n} processes")
    per_process, workers = cfg.batch_size // n, auto_workers(cfg, accelerator)
    if len(split.train) < cfg.batch_size:
        raise ConfigError(f"invalid --batch-size {cfg.batch_size}: larger than the {len(split.train)} training "
                          f"images; lower it or raise --subset")
    pin = accelerator.device.type == "cuda"
    channels_last = cfg.channels_last and accelerator.device.type == "cuda"  # 3x slower on CPU
    train_ds = CifarDataset(data.train_x, data.train_y, split.train, build_train_transform(cfg.aug, mean, std),
                            cfg.seed, channels_last)
    train_loader = make_loader(train_ds, per_process, shuffle=True, seed=cfg.seed, num_workers=workers,
                               drop_last=True, pin_memory=pin)

    def eval_loader(images: np.ndarray, labels: np.ndarray, indices: np.ndarray):
        # Normalize only, cheap next to the forward pass: two workers keep up. No drop_last: every
        # image counts (gather_for_metrics removes the padding DDP adds to the last batches).
        ds = CifarDataset(images, labels, indices, build_test_transform(mean, std), channels_last=channels_last)
        return make_loader(ds, max(1, cfg.eval_batch_size // n), shuffle=False, seed=0,
                           num_workers=min(workers, 2), drop_last=False, pin_memory=pin)

    val_loader = eval_loader(data.train_x, data.train_y, split.val) if len(split.val) else None
    test_loader = eval_loader(data.test_x, data.test_y, split.test)

    set_seed(cfg.seed)  # same initial weights on every rank (DDP also broadcasts them from rank 0)
    model = resnet18(num_classes=len(data.classes), dropout=cfg.dropout)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.max_lr, momentum=cfg.momentum,
                                nesterov=cfg.nesterov and cfg.momentum > 0, weight_decay=cfg.weight_decay)
    loaders = [train_loader, test_loader] + ([val_loader] if val_loader is not None else [])
    model, optimizer, *loaders = accelerator.prepare(model, optimizer, *loaders)
    train_loader, test_loader = loaders[0], loaders[1]
    val_loader = loaders[2] if val_loader is not None else None
    return Pipeline(split, mean, std, train_loader, val_loader, test_loader, model, optimizer)


def build_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
    """OneCycle (stepped per batch), or ReduceLROnPlateau / StepLR (stepped per epoch).

    Built on the raw optimiser and stepped once per optimiser step by us, so the schedule is
    defined on this process's step count and does not depend on how Accelerate shards batches.
    """
    opt = getattr(optimizer, "optimizer", optimizer)
    if cfg.scheduler == "onecycle":
        total = cfg.epochs * steps_per_epoch
        # OneCycleLR divides by the length of each phase, so both need whole steps. Tiny runs
        # (a quick --subset check) get the warm-up clamped to fit, with a warning.
        if total < 3:
            raise ConfigError(f"invalid --scheduler onecycle: {total} optimiser steps in all is too few; "
                              f"raise --epochs or --subset, lower --batch-size, or use --scheduler step")
        pct_start = min(max(cfg.pct_start, 2 / total), (total - 1) / total)
        if pct_start != cfg.pct_start:
            warnings.warn(f"--pct-start {cfg.pct_start} leaves no whole warm-up phase in {total} steps; "
                          f"using {pct_start:.3f}", stacklevel=2)
        return torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=cfg.max_lr, total_steps=total, pct_start=pct_start,
            div_factor=cfg.div_factor, final_div_factor=cfg.final_div_factor,
            base_momentum=0.85 * cfg.momentum, max_momentum=cfg.momentum, anneal_strategy="linear")
    if cfg.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=cfg.gamma, patience=cfg.patience)
    return torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.step_size, gamma=cfg.gamma)


def epoch_batches(loader, epoch: int):
    """Iterate one epoch of a prepared training loader, shuffled and augmented for `epoch`.

    The epoch must be set on the loader, not on its sampler: Accelerate's DataLoaderShard re-sets
    the sampler's epoch from its own counter at every `iter()` (and only advances that counter when
    an iteration runs to the end), so a sampler-only `set_epoch` would be silently undone.
    """
    loader.set_epoch(epoch)
    return iter(loader)


def l1_penalty(model: nn.Module) -> torch.Tensor:
    """Sum of |w| over weight matrices and kernels (not biases or norm scales)."""
    return sum(p.abs().sum() for p in model.parameters() if p.ndim > 1)


# ----------------------------------------------------------------------------- one epoch
def train_one_epoch(cfg: TrainConfig, accelerator: Accelerator, p: Pipeline, scheduler, epoch: int,
                    progress: bool = True) -> dict[str, float]:
    """One pass over the training loader. Loss/accuracy are summed over all processes."""
    p.model.train()
    per_batch_schedule = cfg.scheduler == "onecycle"
    loss_sum = torch.zeros((), device=accelerator.device)
    correct = torch.zeros((), device=accelerator.device, dtype=torch.long)
    seen, wait, lr, start = 0, 0.0, 0.0, time.perf_counter()
    bar = None
    if progress and accelerator.is_main_process:
        from tqdm.auto import tqdm
        # disable=None: no bar when stderr is not a terminal (batch logs keep only the epoch lines).
        bar = tqdm(total=len(p.train_loader), desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False,
                   dynamic_ncols=True, disable=None)
        bar = None if bar.disable else bar  # and no .item() syncs for a bar nobody sees
    t0 = time.perf_counter()
    for step, (x, y, _) in enumerate(epoch_batches(p.train_loader, epoch)):
        wait += time.perf_counter() - t0  # time blocked on the loader since the last step ended
        out = p.model(x)
        loss = F.cross_entropy(out, y, label_smoothing=cfg.label_smoothing)
        if cfg.l1 > 0:
            loss = loss + cfg.l1 * l1_penalty(p.model)
        accelerator.backward(loss)
        p.optimizer.step()
        p.optimizer.zero_grad(set_to_none=True)
        lr = p.optimizer.param_groups[0]["lr"]  # the rate this step used, before the schedule moves it
        if per_batch_schedule:
            scheduler.step()
        loss_sum += loss.detach().float() * y.shape[0]
        correct += (out.detach().argmax(1) == y).sum()
        seen += y.shape[0]
        if bar is not None and (step % 10 == 0 or step == len(p.train_loader) - 1):
            # .item() syncs with the GPU: only every 10 steps, on the main process.
            rate = seen * accelerator.num_processes / (time.perf_counter() - start)
            bar.set_postfix(loss=f"{loss_sum.item() / seen:.3f}", acc=f"{correct.item() / seen:.3f}",
                            img_s=f"{rate:,.0f}")
            bar.update(step + 1 - bar.n)
        t0 = time.perf_counter()
    if bar is not None:
        bar.close()
    totals = accelerator.reduce(torch.stack([loss_sum, correct.float(),
                                             torch.tensor(float(seen), device=accelerator.device)]), "sum")
    elapsed = time.perf_counter() - start
    loss_total, correct_total, n_total = totals.tolist()
    if not math.isfinite(loss_total):
        raise NonFiniteLossError(f"training loss became {loss_total} in epoch {epoch + 1}; lower --max-lr")
    return {"train_loss": loss_total / n_total, "train_acc": correct_total / n_total,
            "epoch_seconds": elapsed, "images_per_sec": n_total / elapsed,
            "data_wait_frac": wait / elapsed, "lr": lr}


@torch.no_grad()
def evaluate(model: nn.Module, loader, accelerator: Accelerator, tta: bool = False) -> dict[str, Any]:
    """Loss/accuracy over a prepared loader; `gather_for_metrics` drops the padding DDP adds,
    so every image counts exactly once whatever the batch size and number of processes.

    tta: average the logits of each image and its horizontal mirror (`--tta`).
    """
    was_training = model.training
    model.eval()
    logits, labels, indices = [], [], []
    for x, y, idx in loader:
        out = model(x).float()
        if tta:
            out = (out + model(x.flip(3)).float()) / 2
        out, y, idx = accelerator.gather_for_metrics((out, y, idx))
        logits.append(out)
        labels.append(y)
        indices.append(idx)
    model.train(was_training)
    logits, labels, indices = torch.cat(logits), torch.cat(labels), torch.cat(indices)
    return {"loss": F.cross_entropy(logits, labels).item(),
            "acc": (logits.argmax(1) == labels).float().mean().item(),
            "count": int(labels.numel()),
            "logits": logits.cpu().numpy(), "labels": labels.cpu().numpy(), "indices": indices.cpu().numpy()}


# ----------------------------------------------------------------------------- files
def save_weights(model: nn.Module, path: Path) -> None:
    """Unwrapped fp32 weights as safetensors, written atomically."""
    state = {k: v.detach().float().contiguous().cpu() if v.is_floating_point() else v.detach().contiguous().cpu()
             for k, v in unwrap(model).state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp))
    os.replace(tmp, path)


def save_checkpoint(accelerator: Accelerator, run_dir: Path, epoch: int, state: dict[str, Any],
                    keep: int) -> Path:
    """Accelerate `save_state` into a temp folder, then an atomic rename: a kill at any moment leaves
    either the previous checkpoint or the new one complete, never a half-written one."""
    root = run_dir / rundir.CHECKPOINTS
    final = root / f"epoch_{epoch:04d}"
    tmp = root / f".tmp_epoch_{epoch:04d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        root.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        rundir.write_json(tmp / rundir.TRAINER_STATE, state)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in rundir.checkpoint_dirs(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def environment_info(accelerator: Accelerator) -> dict[str, Any]:
    """Package versions, git commit, hardware: what makes a number reproducible."""
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
    return {"versions": versions, "python": platform.python_version(), "git_commit": commit,
            "hostname": socket.gethostname(), "device": device, "world_size": accelerator.num_processes,
            "mixed_precision": accelerator.mixed_precision}


def _prepare_run_dir(cfg: TrainConfig, run_dir: Path, resume: bool) -> None:
    """Refuse to overwrite a previous run; on resume, refuse a config that would change the result."""
    cfg_path = run_dir / rundir.CONFIG
    if cfg_path.exists() and not resume:
        raise ConfigError(f"{run_dir} already holds a run; pass --resume to continue it, "
                          f"or choose another --name")
    if cfg_path.exists() and resume:
        saved = rundir.read_json(cfg_path)["config"]
        now = cfg.to_dict()
        diff = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k) and k not in RESUMABLE_CHANGES)
        if diff:
            raise ConfigError(f"--resume with a config that differs from {cfg_path} in: {', '.join(diff)}; "
                              f"resume with the run's own settings or start a new --name")
    run_dir.mkdir(parents=True, exist_ok=True)


# ----------------------------------------------------------------------------- the loop
def fit(cfg: TrainConfig, run_dir: str | Path | None = None, *, callback: EpochCallback | None = None,
        resume: bool = False, data: CifarArrays | None = None, evaluate_test: bool = True,
        find_lr: bool = False, adopt_found_lr: bool = True, progress: bool = True,
        accelerator: Accelerator | None = None) -> dict[str, Any]:
    """Train ResNet18 on CIFAR-10 as `cfg` says; write the run directory; return the summary.

    run_dir:       default `cfg.runs_dir / cfg.name`.
    callback:      called on every process after each epoch is logged (Tune reports here).
    resume:        continue from the newest checkpoint in run_dir (a finished run returns its summary).
    data:          preloaded arrays (a search shares one copy among trials); default: read cfg.data_dir.
    evaluate_test: False in search trials: they select on validation only and never see the test set.
    find_lr:       run the LR range test first (written to lr_find.json) and train with its suggested
                   max_lr, or with cfg.max_lr when adopt_found_lr is False.
    """
    started = time.perf_counter()  # total_seconds counts start-up, evaluation and checkpoints too
    accelerator = accelerator or build_accelerator(cfg)
    run_dir = Path(run_dir) if run_dir is not None else Path(cfg.runs_dir) / cfg.name
    log = accelerator.print
    if accelerator.is_main_process:
        _prepare_run_dir(cfg, run_dir, resume)
    accelerator.wait_for_everyone()
    if resume and (run_dir / rundir.SUMMARY).exists():
        log(f"{run_dir} is already complete; nothing to resume")
        return rundir.read_json(run_dir / rundir.SUMMARY)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick the fastest kernels

    p = build_pipeline(cfg, accelerator, data)
    checkpoints = rundir.checkpoint_dirs(run_dir) if resume else []
    if find_lr and not checkpoints:
        from distributed.lr_finder import run_range_test
        result = run_range_test(cfg, accelerator, p)
        result["chosen_max_lr"] = result["suggested_max_lr"] if adopt_found_lr else cfg.max_lr
        cfg = cfg.replace(max_lr=result["chosen_max_lr"])
        if accelerator.is_main_process:
            rundir.write_json(run_dir / rundir.LR_FIND, result)
        log(f"LR range test: suggested max_lr {result['suggested_max_lr']:.3g}, training with {cfg.max_lr:.3g}")
        p = build_pipeline(cfg, accelerator, data)  # fresh weights and optimiser state after the test
    elif find_lr and (run_dir / rundir.LR_FIND).exists():
        cfg = cfg.replace(max_lr=rundir.read_json(run_dir / rundir.LR_FIND)["chosen_max_lr"])

    env = environment_info(accelerator)
    num_params = count_parameters(p.model)
    if accelerator.is_main_process and not (run_dir / rundir.CONFIG).exists():
        rundir.write_json(run_dir / rundir.CONFIG, {
            "config": cfg.to_dict(), **env, "num_params": num_params,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "split": {"train": len(p.split.train), "val": len(p.split.val), "test": len(p.split.test)},
            "mean": p.mean, "std": p.std})

    scheduler = build_scheduler(cfg, p.optimizer, len(p.train_loader))
    accelerator.register_for_checkpointing(scheduler)
    state = {"epoch": 0, "best_val_acc": -1.0, "best_val_loss": math.inf, "best_epoch": 0, "wall_seconds": 0.0,
             "total_seconds": 0.0}
    if checkpoints:
        accelerator.load_state(str(checkpoints[-1]))
        # Checkpoints written before total_seconds existed lack it.
        state = {"total_seconds": 0.0, **rundir.read_json(checkpoints[-1] / rundir.TRAINER_STATE)}
        if accelerator.is_main_process:
            rundir.truncate_metrics(run_dir, state["epoch"])
        log(f"resumed {run_dir} from epoch {state['epoch']}")
    elif accelerator.is_main_process:
        (run_dir / rundir.METRICS).unlink(missing_ok=True)
    accelerator.wait_for_everyone()
    # Time of earlier invocations (resumes) up to their last checkpoint; work lost to a kill is not counted.
    previous_total = state["total_seconds"]

    log(f"{run_dir}: {len(p.split.train)} train / {len(p.split.val)} val / {len(p.split.test)} test images, "
        f"{env['device']}, {env['mixed_precision']} precision, global batch {cfg.batch_size}, "
        f"{num_params:,} parameters")
    for epoch in range(state["epoch"], cfg.epochs):
        row: dict[str, Any] = {"epoch": epoch + 1}
        row.update(train_one_epoch(cfg, accelerator, p, scheduler, epoch, progress))
        row["val_loss"] = row["val_acc"] = None
        t_eval = time.perf_counter()
        if p.val_loader is not None:
            val = evaluate(p.model, p.val_loader, accelerator, cfg.tta)
            row["val_loss"], row["val_acc"] = val["loss"], val["acc"]
        row["eval_seconds"] = time.perf_counter() - t_eval
        if cfg.scheduler == "plateau":
            scheduler.step(row["val_acc"] if row["val_acc"] is not None else row["train_acc"])
        elif cfg.scheduler == "step":
            scheduler.step()
        state["wall_seconds"] += row["epoch_seconds"]
        row["wall_seconds"] = state["wall_seconds"]
        # Without a validation split the last epoch stands in for the best one.
        ranked = row if row["val_acc"] is not None else {"val_acc": float(epoch), "val_loss": 0.0}
        t_save = time.perf_counter()
        if rundir.selection_key(ranked) > (state["best_val_acc"], -state["best_val_loss"]):
            state.update(best_val_acc=ranked["val_acc"], best_val_loss=ranked["val_loss"], best_epoch=epoch + 1)
            if accelerator.is_main_process:
                save_weights(accelerator.unwrap_model(p.model), run_dir / rundir.BEST_WEIGHTS)
        state["epoch"] = epoch + 1
        state["total_seconds"] = previous_total + time.perf_counter() - started
        # Every rank takes the same branch (save_state synchronises them): it depends on the epoch only.
        ckpt = None
        if (epoch + 1) % cfg.checkpoint_every == 0 or epoch + 1 == cfg.epochs:
            ckpt = save_checkpoint(accelerator, run_dir, epoch + 1, dict(state), cfg.keep_checkpoints)
        row["checkpoint_seconds"] = time.perf_counter() - t_save  # best weights + checkpoint
        if accelerator.is_main_process:
            rundir.append_metrics(run_dir, row)
        val_txt = f"val loss {row['val_loss']:.4f} acc {row['val_acc']:.4f} | " if row["val_acc"] is not None else ""
        log(f"epoch {epoch + 1:3d}/{cfg.epochs} | train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f} | "
            f"{val_txt}lr {row['lr']:.4g} | {row['epoch_seconds']:.1f} s, {row['images_per_sec']:,.0f} img/s, "
            f"data wait {100 * row['data_wait_frac']:.0f}%")
        if callback is not None:
            callback(EpochReport(epoch + 1, row, run_dir, ckpt, accelerator.is_main_process))

    in_sync = ranks_in_sync(p.model, accelerator)
    if not in_sync:
        log("warning: model weights differ between processes; the distributed setup is broken")
    if accelerator.is_main_process:
        save_weights(accelerator.unwrap_model(p.model), run_dir / rundir.FINAL_WEIGHTS)
    summary: dict[str, Any] = {
        "test_acc": None, "test_loss": None, "test_count": None, "total_seconds": None,
        "best_val_acc": state["best_val_acc"] if p.val_loader is not None else None,
        "best_epoch": state["best_epoch"], "epochs": state["epoch"], "wall_seconds": state["wall_seconds"],
        "images_per_sec": steady_images_per_sec(run_dir) if accelerator.is_main_process else None,
        "device": env["device"], "world_size": env["world_size"], "mixed_precision": env["mixed_precision"],
        "num_params": num_params, "ranks_in_sync": in_sync, "mean": p.mean, "std": p.std,
        "weights": rundir.FINAL_WEIGHTS}
    if evaluate_test:
        # The test set is touched once, at the end, by the final weights: it selects nothing.
        test = evaluate(p.model, p.test_loader, accelerator, cfg.tta)
        summary.update(test_acc=test["acc"], test_loss=test["loss"], test_count=test["count"])
        if accelerator.is_main_process:
            write_predictions(run_dir, test)
    summary["total_seconds"] = previous_total + time.perf_counter() - started
    test_txt = f"test accuracy {test['acc']:.4f} on {test['count']} images | " if evaluate_test else ""
    log(f"{test_txt}{state['wall_seconds']:.1f} s of training, {summary['total_seconds']:.1f} s in all "
        f"(start-up, evaluation and checkpoints included)")
    if accelerator.is_main_process:
        rundir.write_json(run_dir / rundir.SUMMARY, summary)
    accelerator.wait_for_everyone()
    return summary


def ranks_in_sync(model: nn.Module, accelerator: Accelerator) -> bool:
    """True when every process holds the same weights (DDP's promise), compared by checksums."""
    with torch.no_grad():
        sums = torch.stack([q.detach().double().sum() for q in unwrap(model).state_dict().values()
                            if q.is_floating_point()]).to(accelerator.device)
    gathered = accelerator.gather(sums[None]).reshape(accelerator.num_processes, -1)
    return bool(torch.equal(gathered, gathered[:1].expand_as(gathered)))


def write_predictions(run_dir: Path, result: dict[str, Any]) -> None:
    """Test logits/labels/indices for the report, atomically."""
    tmp = Path(run_dir) / (rundir.PREDICTIONS + ".tmp.npz")
    np.savez(tmp, logits=result["logits"].astype(np.float32), labels=result["labels"].astype(np.int64),
             indices=result["indices"].astype(np.int64))
    os.replace(tmp, Path(run_dir) / rundir.PREDICTIONS)


def steady_images_per_sec(run_dir: Path) -> float | None:
    """Steady-state training images/s: mean over epochs after the first (which pays warm-up)."""
    rates = [r["images_per_sec"] for r in rundir.read_metrics(run_dir)]
    rates = rates[1:] or rates
    return float(np.mean(rates)) if rates else None
