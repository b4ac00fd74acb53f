"""Tiny run and search directories for the report tests, written straight from the rundir contract.

Used when the real training loop (`distributed.engine.fit`) is not available, and for the
search layout, which only tuning/search.py writes for real.
"""
from __future__ import annotations

import csv
import pickle
from pathlib import Path

import numpy as np

from distributed import rundir
from distributed.config import TrainConfig

MEAN = (0.49, 0.48, 0.45)
STD = (0.25, 0.24, 0.26)


def make_fake_cifar_fallback(root: Path, n_train: int = 100, n_test: int = 200, seed: int = 0) -> Path:
    """Write `root/cifar-10-batches-py/` with tiny, class-coloured images (same layout as the official)."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)

    def batch(n: int) -> dict:
        labels = np.arange(n) % 10
        rng.shuffle(labels)
        # A per-class colour plus noise, channel-planar rows as in the real files.
        base = (np.stack([labels * 25, 250 - labels * 25, (labels * 70) % 256], 1)[:, :, None])
        data = np.clip(base + rng.integers(-40, 40, (n, 3, 1024)), 0, 255).astype(np.uint8)
        return {"data": data.reshape(n, 3072), "labels": labels.tolist()}

    per = max(1, n_train // 5)
    for i in range(1, 6):
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(batch(per), protocol=4))
    (folder / "test_batch").write_bytes(pickle.dumps(batch(n_test), protocol=4))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": list(rundir.CIFAR10_CLASSES)}, protocol=4))
    return Path(root)


def read_test_labels(data_dir: Path) -> np.ndarray:
    """Labels of the test batch under data_dir."""
    from distributed.data import read_batch

    return read_batch(Path(data_dir) / "cifar-10-batches-py" / "test_batch")[1]


def write_run_dir(run_dir: Path, data_dir: Path, cfg: TrainConfig | None = None, epochs: int = 3,
                  seed: int = 0, lr_find: bool = True, hostname: str = "testhost") -> Path:
    """A finished run directory following distributed/rundir.py, with random ResNet18 weights."""
    import torch
    from safetensors.torch import save_file

    from distributed.model import count_parameters, resnet18

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = cfg or TrainConfig(name=run_dir.name, data_dir=str(data_dir), epochs=epochs)
    torch.manual_seed(seed)
    model = resnet18(num_classes=10, dropout=cfg.dropout)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(run_dir / rundir.FINAL_WEIGHTS))
    n_params = count_parameters(model)
    rundir.write_json(run_dir / rundir.CONFIG, {
        "config": cfg.to_dict(), "versions": {"torch": torch.__version__}, "git_commit": "0" * 40,
        "hostname": hostname, "created": "2026-01-01T00:00:00", "world_size": 1, "device": "cpu",
        "num_params": n_params})
    rng = np.random.default_rng(seed)
    for e in range(1, epochs + 1):
        rundir.append_metrics(run_dir, {
            "epoch": e, "train_loss": 2.3 / e, "train_acc": 0.2 * e, "val_loss": 2.4 / e, "val_acc": 0.18 * e,
            "lr": 0.1 / e, "epoch_seconds": 1.0, "images_per_sec": 100.0, "data_wait_frac": 0.1,
            "wall_seconds": float(e)})
    labels = read_test_labels(data_dir).astype(np.int64)
    n = len(labels)
    logits = rng.normal(size=(n, 10)).astype(np.float32)
    right = rng.random(n) < 0.6           # 60% correct, the rest confidently wrong or not
    logits[np.arange(n)[right], labels[right]] += 3.0
    np.savez(run_dir / rundir.PREDICTIONS, logits=logits, labels=labels, indices=np.arange(n, dtype=np.int64))
    acc = float((logits.argmax(1) == labels).mean())
    rundir.write_json(run_dir / rundir.SUMMARY, {
        "test_acc": acc, "test_loss": 1.5, "best_val_acc": 0.18 * epochs, "best_epoch": epochs, "epochs": epochs,
        "wall_seconds": float(epochs), "images_per_sec": 100.0, "device": "cpu", "world_size": 1,
        "num_params": n_params, "mean": list(MEAN), "std": list(STD), "weights": rundir.FINAL_WEIGHTS})
    if lr_find:
        lrs = np.geomspace(1e-4, 10, 40)
        rundir.write_json(run_dir / rundir.LR_FIND, {
            "lrs": lrs.tolist(), "losses": (2.3 - np.sin(np.linspace(0, 2.5, 40))).tolist(),
            "suggested_max_lr": 0.3, "chosen_max_lr": 0.4})
    return run_dir


def write_search_dir(search_dir: Path, best_run: Path, hostile: str) -> Path:
    """A finished search directory (tuning/runner.py's layout) around an existing run, copied as best/.

    `hostile` lands in a trial's error message, which results.csv carries verbatim.
    """
    import shutil

    search_dir = Path(search_dir)
    (search_dir / "trials").mkdir(parents=True, exist_ok=True)
    shutil.copytree(best_run, search_dir / "best", ignore=shutil.ignore_patterns("checkpoints"))
    header = ["trial_id", "status", "epochs", "best_val_acc", "best_epoch", "last_val_acc", "max_lr",
              "weight_decay", "cutout_max", "error"]
    rows = [["t0", "TERMINATED", 3, 0.61, 3, 0.6, 0.4, 5e-4, 16, ""],
            ["t1", "STOPPED", 1, 0.35, 1, 0.35, 0.05, 1e-3, 8, ""],
            ["t2", "ERROR", 0, "", "", "", 1.5, 1e-4, 12, f"NonFiniteLossError: {hostile}"]]
    with open(search_dir / "results.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    rundir.write_json(search_dir / "search.json", {
        "name": search_dir.name, "search": {"num_samples": 3, "scheduler": "asha"},
        "space": {"max_lr": {"type": "loguniform", "lower": 0.05, "upper": 2.0},
                  "weight_decay": {"type": "loguniform", "lower": 5e-5, "upper": 2e-3},
                  "cutout_max": {"type": "randint", "lower": 8, "upper": 20}},
        "metric": "val_acc", "mode": "max", "status": "finished",
        "summary": {"trials": 3, "best_trial": "t0", "best_val_acc": 0.61}})
    return search_dir
