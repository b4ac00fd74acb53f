"""LR range test (Smith 2015; fastai's lr_find): loss against an exponentially rising learning rate.

A step before `fit`: `find_lr(cfg, run_dir)` trains a throw-away copy of the run's model (no
scheduler), writes lr_find.json into the run directory and returns the config to train with.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch.nn.functional as F

from distributed.config import TrainConfig
from distributed.data import CifarArrays
from distributed.pipeline import build_accelerator, build_pipeline
from distributed.rundir import RunWriter


def find_lr(cfg: TrainConfig, run_dir: str | Path, *, data: CifarArrays | None = None,
            use_suggestion: bool = True) -> TrainConfig:
    """Run the LR range test on the run's own data and model, write lr_find.json, and return `cfg`
    with the max_lr to train with: the suggestion, or the config's own (`effective_max_lr`: --max-lr
    when given, else the batch-scaled default) when `use_suggestion` is False. Either way the
    returned config holds it as an explicit max_lr, so config.json says what was trained with.

    Refuses a run directory that already holds a run, as `fit` would, before any work.
    """
    # An Accelerator of its own: `save_state` saves every model an Accelerator prepared, so the
    # throw-away model must not be registered with the one `fit` checkpoints.
    accelerator = build_accelerator(cfg)
    writer = RunWriter(run_dir, accelerator.is_main_process)
    writer.start(cfg.to_dict(), resume=False)
    result = run_range_test(cfg, accelerator, build_pipeline(cfg, accelerator, data))
    accelerator.free_memory()
    result["chosen_max_lr"] = result["suggested_max_lr"] if use_suggestion else cfg.effective_max_lr
    writer.write_lr_find(result)
    accelerator.print(f"LR range test: suggested max_lr {result['suggested_max_lr']:.3g}, "
                      f"training with {result['chosen_max_lr']:.3g}")
    return cfg.replace(max_lr=result["chosen_max_lr"])


def suggest_max_lr(lrs: np.ndarray, losses: np.ndarray) -> float:
    """Steepest descent of the smoothed loss, before the minimum: where learning is fastest.

    OneCycle's peak goes a little past that point; the minimum itself already diverges next step.
    """
    lrs, losses = np.asarray(lrs, float), np.asarray(losses, float)
    stop = int(np.argmin(losses)) + 1
    if stop < 3:
        return float(lrs[max(0, stop - 1)])
    slopes = np.gradient(losses[:stop], np.log(lrs[:stop]))
    return float(lrs[int(np.argmin(slopes))])


def run_range_test(cfg: TrainConfig, accelerator, pipeline, start_lr: float = 1e-5, end_lr: float = 10.0,
                   num_steps: int = 100, smooth: float = 0.05, diverge: float = 4.0) -> dict[str, Any]:
    """Train `num_steps` batches with lr from start_lr to end_lr (log-uniform); stop on divergence.

    Returns lrs, raw and smoothed losses and the suggested max_lr (the caller adds the chosen one).
    """
    model, opt = pipeline.model, pipeline.optimizer
    num_steps = max(5, min(num_steps, len(pipeline.train_loader) * 3))
    gamma = (end_lr / start_lr) ** (1 / (num_steps - 1))
    model.train()
    lrs, raw, smoothed, avg, best = [], [], [], 0.0, math.inf
    step, epoch = 0, 0
    while step < num_steps:
        for x, y, _ in pipeline.train_batches.epoch(10_000 + epoch):  # epochs no real run uses
            lr = start_lr * gamma ** step
            for g in opt.param_groups:
                g["lr"] = lr
            loss = F.cross_entropy(model(pipeline.to_input(x)), y, label_smoothing=cfg.label_smoothing)
            accelerator.backward(loss)
            opt.step()
            opt.zero_grad(set_to_none=True)
            value = accelerator.reduce(loss.detach().float(), "mean").item()
            avg = smooth * value + (1 - smooth) * avg if step else value
            lrs.append(lr)
            raw.append(value)
            smoothed.append(avg)
            best = min(best, avg)
            step += 1
            if not math.isfinite(avg) or avg > diverge * best or step >= num_steps:
                break
        else:
            epoch += 1
            continue
        break
    finite = [i for i, v in enumerate(smoothed) if math.isfinite(v)]
    lrs_f, sm_f = np.array(lrs)[finite], np.array(smoothed)[finite]
    suggested = suggest_max_lr(lrs_f, sm_f)
    return {"lrs": lrs, "losses": raw, "smoothed": smoothed, "suggested_max_lr": suggested,
            "start_lr": start_lr, "end_lr": end_lr}
