"""What a training run is built from: the Accelerator, the loaders, the model, optimiser and schedule.

`fit` (engine.py), the LR range test (lr_finder.py), the test evaluation of saved weights and the
benchmarks all build through these functions, so none of them can drift from the recipe.
"""
from __future__ import annotations

import os
import sys
import warnings
from contextlib import contextmanager
from datetime import timedelta
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, InitProcessGroupKwargs, parse_flag_from_env, set_seed
from torch import nn

from distributed.augment import ModelInput, build_run_transform
from distributed.config import ConfigError, TrainConfig
from distributed.data import (CifarArrays, CifarDataset, Split, TrainBatches, channel_stats, load_cifar10, make_loader,
                             make_split)
from distributed.model import resnet18


class LaunchError(RuntimeError):
    """The processes were started in a way that would silently train N copies instead of DDP."""


def build_accelerator(cfg: TrainConfig, run_dir: str | Path | None = None) -> Accelerator:
    """Accelerator with the run's precision and compile settings; fails fast on a broken launch.

    With `run_dir` and `cfg.log_with` set, it also carries the run's live tracker (Accelerate's
    tracker API), logging into `run_dir` (see distributed/tracking.py).
    """
    precision = cfg.mixed_precision
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    tracking = run_dir is not None and cfg.log_with != "none"
    if tracking:
        from distributed.tracking import check_tracker

        check_tracker(cfg.log_with)
    timeout = timedelta(seconds=cfg.dist_timeout)
    init_process_group(timeout)
    accelerator = Accelerator(
        mixed_precision=precision,
        dynamo_backend="inductor" if cfg.compile else None,
        # non_blocking copies from pinned memory overlap the host->device transfer with compute.
        dataloader_config=DataLoaderConfiguration(non_blocking=torch.cuda.is_available()),
        step_scheduler_with_optimizer=False,
        log_with=cfg.log_with if tracking else None,
        project_dir=str(run_dir) if tracking else None,
        kwargs_handlers=[InitProcessGroupKwargs(timeout=timeout)],  # when Accelerate makes the group
    )
    check_launch(accelerator)
    return accelerator


def init_process_group(timeout: timedelta) -> None:
    """Create the default process group of a torchrun / `accelerate launch` worker ourselves, on a
    store namespace of its own per restart attempt; Accelerate then uses this group as it is.

    Why: torchrun's static rendezvous (`--master-addr/--master-port`, also what `accelerate launch
    --num_machines N` uses) keeps one TCPStore for the whole job, and a group restarted by
    `--max-restarts` finds the keys its killed predecessor left there: gloo connects to the dead
    ranks' addresses (`connectFullMesh ... Connection refused`, which uses up the restart) or the
    store barrier of `init_process_group` counts stale arrivals and hangs. Prefixing every key with
    TORCHELASTIC_RESTART_COUNT gives each attempt a clean namespace on the same store.

    `timeout` (--dist-timeout) bounds every collective: a process whose peer hangs fails after it.

    Does nothing outside a torchrun worker (single process, Ray Train, which has set up its own
    group), when a group exists already, or on launches Accelerate would not run distributed
    (no GPU and no ACCELERATE_USE_CPU: `check_launch` then explains the fix).
    """
    import torch.distributed as dist

    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if attempt is None or world_size < 2 or not dist.is_available() or dist.is_initialized():
        return
    if parse_flag_from_env("ACCELERATE_USE_CPU"):
        backend = "gloo"
    elif torch.cuda.is_available():
        backend = "nccl"
    else:
        return
    # What init_process_group(init_method="env://") does, plus the per-attempt prefix.
    store, rank, world_size = next(dist.rendezvous("env://"))
    dist.init_process_group(backend, store=dist.PrefixStore(f"attempt_{attempt}/", store),
                            rank=rank, world_size=world_size, timeout=timeout)


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
    """A tqdm bar when `enabled` and stderr or stdout is a terminal (stderr first), else None: logs
    and pipes keep only the epoch lines, and nobody pays the GPU syncs of a bar nobody sees.

    Since accelerate 1.16 `accelerate launch` pipes its child's stderr (and copies it to its own):
    the training process's stderr is then never a terminal, while its stdout still is, so the bar
    goes there. It is closed before each epoch line is printed, so the two never share a line.

    A terminal that reports no size (0 x 0: a pseudo-terminal opened without one, as `script`,
    `docker exec -t` and some IDE consoles give, with or without `accelerate launch`) made tqdm
    print nothing at all: it read -1 rows and hid the bar as "below the screen". Such a terminal
    gets a fixed 100 x 24.
    """
    stream = next((s for s in (sys.stderr, sys.stdout) if s.isatty()), None) if enabled else None
    if stream is None:
        return None
    from tqdm.auto import tqdm

    try:
        size = os.get_terminal_size(stream.fileno())
    except OSError:
        size = os.terminal_size((0, 0))
    sized = size.columns > 0 and size.lines > 0
    return tqdm(total=total, desc=desc, leave=False, file=stream, dynamic_ncols=sized,
                ncols=None if sized else 100, nrows=None if sized else 24)


def auto_workers(cfg: TrainConfig, accelerator: Accelerator) -> int:
    """DataLoader workers per process: the cores of this node shared among its processes.

    A search trial is not on its own node: it sets `num_workers` from its Ray CPU reservation
    (`workers_for_cores`) before it calls fit, so this host-wide rule is for train.py runs."""
    if cfg.num_workers >= 0:
        return cfg.num_workers
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    per_process = cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes)))
    return workers_for_cores(per_process, on_gpu=accelerator.device.type != "cpu")


def workers_for_cores(cores: int, on_gpu: bool) -> int:
    """DataLoader workers for a training process that may use `cores` CPU cores, at most 12.

    On GPU the process itself needs one core to drive the GPU, the others feed it; on a CPU-only
    run the model needs the cores as much as the loader, so half go to each."""
    spare = cores - 1 if on_gpu else cores // 2
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
                indices: np.ndarray):
    """An unprepared evaluation loader: every image, in order, untransformed uint8 (no drop_last;
    `gather_for_metrics` later removes the padding DDP adds to the last batches).

    No loader workers: a batch is one indexing copy of uint8 images (3 MB for 1,024), cheaper in
    this process than sent from another one, and no worker processes wait between evaluations."""
    ds = CifarDataset(images, labels, indices, transform=None)
    return make_loader(ds, max(1, cfg.eval_batch_size // accelerator.num_processes), shuffle=False, seed=0,
                       num_workers=0, drop_last=False, pin_memory=accelerator.device.type == "cuda")


def model_input(cfg: TrainConfig, accelerator: Accelerator, mean, std) -> ModelInput:
    """What turns the loaders' uint8 batches into this run's model input, on its device."""
    return ModelInput(mean, std, channels_last=_channels_last(cfg, accelerator))


@contextmanager
def once_per_disk(accelerator: Accelerator) -> Iterator[None]:
    """Run the block on the global main process first, then on the first process of every other
    node, then on all the others: what --data-dir needs, shared by all nodes or local to each.

    `main_process_first` alone is right for a shared disk (rank 0 downloads, everyone else finds
    the files), but on node-local disks all processes of another node start at once: one of them
    downloads under the file lock while another already sees the first unpacked file and reads a
    half-written folder. `local_main_process_first` alone is right for local disks, but on a shared
    one the first process of every node downloads into the same folder at the same time (safe only
    where the file lock works across machines). Nested, the first process of node 0 goes first;
    the first one of each other node then finds the files (shared disk) or downloads its own copy
    (local disk); the rest read a complete folder.
    """
    with accelerator.main_process_first(), accelerator.local_main_process_first():
        yield


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
    to_input: ModelInput        # a loader's uint8 batch -> the model's input (normalised on the device)
    train_batches: TrainBatches | None = None  # train_loader's epochs, the next one startable ahead (default: made here)

    def __post_init__(self) -> None:
        if self.train_batches is None:
            self.train_batches = TrainBatches(self.train_loader)


def build_pipeline(cfg: TrainConfig, accelerator: Accelerator, data: CifarArrays | None) -> Pipeline:
    """Load data (downloaded once per disk: `once_per_disk`), split, loaders, model."""
    if data is None:
        with once_per_disk(accelerator):
            data = load_cifar10(cfg.data_dir, download=cfg.download)
    split = make_split(data.train_y, data.test_y, cfg.val_size, cfg.subset, cfg.test_subset)
    # Statistics from the training images of this split only: nothing of val/test leaks in. Their
    # cache (data_dir/cifar10_stats.json) lives on the same disk as the data: the same order.
    with once_per_disk(accelerator):
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
    train_ds = CifarDataset(data.train_x, data.train_y, split.train, build_run_transform(cfg, mean), cfg.seed)
    train_loader = make_loader(train_ds, cfg.batch_size // n, shuffle=True, seed=cfg.seed, num_workers=workers,
                               drop_last=True, pin_memory=accelerator.device.type == "cuda")
    test_loader = eval_loader(cfg, accelerator, data.test_x, data.test_y, split.test)
    val_loader = eval_loader(cfg, accelerator, data.train_x, data.train_y, split.val) if len(split.val) else None
    model = build_model(cfg, len(data.classes), accelerator)
    optimizer = build_optimizer(cfg, model.parameters())
    loaders = [train_loader, test_loader] + ([val_loader] if val_loader is not None else [])
    model, optimizer, *loaders = accelerator.prepare(model, optimizer, *loaders)
    val_loader = loaders[2] if val_loader is not None else None
    return Pipeline(split, mean, std, len(data.classes), loaders[0], val_loader, loaders[1], model, optimizer,
                    model_input(cfg, accelerator, mean, std))


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
            cycle_momentum=cfg.cycle_momentum, base_momentum=0.85 * cfg.momentum, max_momentum=cfg.momentum,
            anneal_strategy="linear")
    if cfg.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=cfg.gamma, patience=cfg.patience)
    return torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.step_size, gamma=cfg.gamma)
