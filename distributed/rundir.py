"""The files a run writes: the interface between training, search and report.

    runs/<name>/
      config.json        {"config": TrainConfig fields, "versions": {...}, "git_commit", "hostname",
                          "created", "world_size", "device", "num_params"}
      metrics.jsonl      one JSON object per finished epoch: epoch (1-based), train_loss, train_acc,
                         val_loss, val_acc (null when --val-size 0), lr (last lr of the epoch),
                         epoch_seconds, images_per_sec (training images/s, all processes),
                         data_wait_frac (share of step time spent waiting for the loader),
                         eval_seconds (validation), checkpoint_seconds (best weights + checkpoint),
                         wall_seconds (cumulative training time, survives --resume)
      checkpoints/epoch_NNNN/   Accelerator.save_state + trainer_state.json (newest few kept; every
                         --checkpoint-every epochs and after the last)
      best.safetensors   weights of the epoch with the best val_acc (the last epoch without a val split)
      model.safetensors  final weights
      predictions.npz    test set: logits float32 [N, 10], labels int64 [N], indices int64 [N]
                         (positions in the test set, so a report can fetch the images)
      summary.json       test_acc, test_loss, best_val_acc, best_epoch, epochs, wall_seconds,
                         total_seconds (wall clock of fit over all invocations: start-up, evaluation,
                         checkpoints included), images_per_sec, device, world_size, num_params,
                         mean, std, weights
      lr_find.json       LR range test (--find-lr): lrs, losses, suggested_max_lr, chosen_max_lr

    runs/search-<name>/  (tuning/search.py)
      search.json        the search's own settings and the best trial id
      results.csv        one row per trial, best validation accuracy first
      trials/<id>/       each trial's config.json and metrics.jsonl
      best/              the best trial in the layout above, test-evaluated once
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

CONFIG = "config.json"
METRICS = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
BEST_WEIGHTS = "best.safetensors"
FINAL_WEIGHTS = "model.safetensors"
PREDICTIONS = "predictions.npz"
SUMMARY = "summary.json"
LR_FIND = "lr_find.json"
TRAINER_STATE = "trainer_state.json"
# A search directory (runs/search-<name>/)
SEARCH_JSON = "search.json"
RESULTS_CSV = "results.csv"
TRIALS = "trials"
BEST_TRIAL = "best"

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically (temp file + rename) so a kill never leaves half a file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=_jsonable) + "\n")
    os.replace(tmp, path)


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
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def append_metrics(run_dir: Path, row: dict[str, Any]) -> None:
    with open(Path(run_dir) / METRICS, "a") as f:
        f.write(json.dumps(row, default=_jsonable) + "\n")
        f.flush()
        os.fsync(f.fileno())


def truncate_metrics(run_dir: Path, last_epoch: int) -> None:
    """Keep only epochs <= last_epoch (those covered by the checkpoint a resume starts from)."""
    rows = [r for r in read_metrics(run_dir) if r.get("epoch", 0) <= last_epoch]
    path = Path(run_dir) / METRICS
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.replace(tmp, path)


def selection_key(row: dict[str, Any]) -> tuple[float, float]:
    """How epochs rank for model selection: validation accuracy, ties going to the lower val loss."""
    return (row["val_acc"], -row["val_loss"])


def load_predictions(run_dir: Path) -> dict[str, np.ndarray]:
    """Test-set logits, labels and indices written at the end of a run."""
    with np.load(Path(run_dir) / PREDICTIONS, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """Complete epoch checkpoints, oldest first (incomplete ones never get their final name)."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("epoch_")
                  and (p / TRAINER_STATE).exists())
