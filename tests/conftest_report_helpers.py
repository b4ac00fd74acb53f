"""A tiny search directory for the report tests, written straight from the rundir contract
around a real run (a real search is tested in test_search.py; here only the report's side matters)."""
from __future__ import annotations

import csv
from pathlib import Path

from distributed import rundir


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
