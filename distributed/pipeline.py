"""What a training run is built from: the Accelerator, the loaders, the model, optimiser and schedule.

`fit` (engine.py), the LR range test (lr_finder.py), the test evaluation of saved weights and the
benchmarks all build through these functions, so none of them can drift from the recipe.
"""
from __future__ import annotations

import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, set_seed
from torch import nn

from distributed.augment import build_test_transform, build_train_transform
from distributed.config import ConfigError, TrainConfig
from distributed.data import CifarArrays, CifarDataset, Split, channel_stats, load_cifar10, make_loader, make_split
from distributed.model import resnet18


class LaunchError(RuntimeError):
    """The processes were started in a way that would silently train N copies instead of DDP."""


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


def progress_bar(total: int, desc: str, enabled: bool = True):
    """A tqdm bar on stderr when `enabled` and stderr is a terminal, else None: logs and pipes keep
    only the epoch lines, and nobody pays the GPU syncs of a bar nobody sees.

    A terminal that reports no size (0 x 0: a pseudo-terminal opened without one, as `script`,
    `docker exec -t` and some IDE consoles give, with or without `accelerate launch`) made tqdm
    print nothing at all: it read -1 rows and hid the bar as "below the screen". Such a terminal
    gets a fixed 100 x 24.
    """
    if not enabled or not sys.stderr.isatty():
        return None
    from tqdm.auto import tqdm

    try:
        size = os.get_terminal_size(sys.stderr.fileno())
    except OSError:
        size = os.terminal_size((0, 0))
    sized = size.columns > 0 and size.lines > 0
    return tqdm(total=total, desc=desc, leave=False, file=sys.stderr, dynamic_ncols=sized,
                ncols=None if sized else 100, nrows=None if sized else 24)


def auto_workers(cfg: TrainConfig, accelerator: Accelerator) -> int:
    """DataLoader workers per process: the cores of this node shared among its processes."""
    if cfg.num_workers >= 0:
        return cfg.num_workers
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    per_process = cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes)))
    # On a CPU-only run the main process needs the cores for the model; on GPU, feed it.
    spare = per_process - 1 if accelerator.device.type != "cpu" else per_process // 2
    return max(0, min(12, spare))


def build_model(cfg: TrainConfig, num_classes: int, accelerator: Accelerator) -> nn.Module:
    """ResNet18 with the run's dropout, seeded (the same initial weights on every rank)."""
    set_seed(cfg.seed)
    model = resnet18(num_classes=num_classes, dropout=cfg.dropout)
    if _channels_last(cfg, accelerator):
        model = model.to(memory_format=torch.channels_last)
    return model


def build_optimizer(cfg: TrainConfig, params) -> torch.optim.Optimizer:
    """SGD with the recipe's momentum, Nesterov and L2 weight decay, at the effective max_lr (the
    schedule moves it)."""
    return torch.optim.SGD(params, lr=cfg.effective_max_lr, momentum=cfg.momentum,
                           nesterov=cfg.nesterov and cfg.momentum > 0, weight_decay=cfg.weight_decay)


def _channels_last(cfg: TrainConfig, accelerator: Accelerator) -> bool:
    return cfg.channels_last and accelerator.device.type == "cuda"  # 3x slower on CPU


def eval_loader(cfg: TrainConfig, accelerator: Accelerator, images: np.ndarray, labels: np.ndarray,
                indices: np.ndarray, mean, std, workers: int):
    """An unprepared evaluation loader: normalise only, in order, every image (no drop_last;
    `gather_for_metrics` later removes the padding DDP adds to the last batches)."""
    ds = CifarDataset(images, labels, indices, build_test_transform(mean, std),
                      channels_last=_channels_last(cfg, accelerator))
    # Normalising is cheap next to the forward pass: two workers keep up.
    return make_loader(ds, max(1, cfg.eval_batch_size // accelerator.num_processes), shuffle=False, seed=0,
                       num_workers=min(workers, 2), drop_last=False, pin_memory=accelerator.device.type == "cuda")


@dataclass
class Pipeline:
    """Everything `fit` and the LR range test share: data, loaders, model, optimiser (prepared)."""

    split: Split
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_classes: int
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
    if len(split.train) < cfg.batch_size:
        raise ConfigError(f"invalid --batch-size {cfg.batch_size}: larger than the {len(split.train)} training "
                          f"images; lower it or raise --subset")
    workers = auto_workers(cfg, accelerator)
    train_ds = CifarDataset(data.train_x, data.train_y, split.train, build_train_transform(cfg.aug, mean, std),
                            cfg.seed, _channels_last(cfg, accelerator))
    train_loader = make_loader(train_ds, cfg.batch_size // n, shuffle=True, seed=cfg.seed, num_workers=workers,
                               drop_last=True, pin_memory=accelerator.device.type == "cuda")
    test_loader = eval_loader(cfg, accelerator, data.test_x, data.test_y, split.test, mean, std, workers)
    val_loader = (eval_loader(cfg, accelerator, data.train_x, data.train_y, split.val, mean, std, workers)
                  if len(split.val) else None)
    model = build_model(cfg, len(data.classes), accelerator)
    optimizer = build_optimizer(cfg, model.parameters())
    loaders = [train_loader, test_loader] + ([val_loader] if val_loader is not None else [])
    model, optimizer, *loaders = accelerator.prepare(model, optimizer, *loaders)
    val_loader = loaders[2] if val_loader is not None else None
    return Pipeline(split, mean, std, len(data.classes), loaders[0], val_loader, loaders[1], model, optimizer)


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
            opt, max_lr=cfg.effective_max_lr, total_steps=total, pct_start=pct_start,
            div_factor=cfg.div_factor, final_div_factor=cfg.final_div_factor,
            base_momentum=0.85 * cfg.momentum, max_momentum=cfg.momentum, anneal_strategy="linear")
    if cfg.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=cfg.gamma, patience=cfg.patience)
    return torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.step_size, gamma=cfg.gamma)
