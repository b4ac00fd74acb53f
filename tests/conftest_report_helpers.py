"""A tiny search directory for the report tests, written straight from the rundir contract
around a real run (a real search is tested in test_search.py; here only the report's side matters)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

from distributed import rundir

# Ray Tune's trial ids: a hex run prefix and a number. "3e682_00000" reads as a float to Python
# (underscores are allowed in numbers): the report must show it as written.
TRIAL_IDS = ("3e682_00000", "3e682_00001", "3e682_00002")
LONG_FLOAT = 0.24979324429601932     # a sampled dropout, as results.csv would hold it unrounded
MATH_TEXT = "$\\frac{$ a\\b"          # matplotlib's math text fails on this hyperparameter value


def write_search_dir(search_dir: Path, best_run: Path, hostile: str) -> Path:
    """A finished search directory (tuning/runner.py's layout) around an existing run, copied as best/.

    `hostile` lands in a trial's error message, which results.csv carries verbatim.
    """
    import shutil

    search_dir = Path(search_dir)
    (search_dir / "trials").mkdir(parents=True, exist_ok=True)
    shutil.copytree(best_run, search_dir / "best", ignore=shutil.ignore_patterns("checkpoints"))
    best = rundir.read_json(search_dir / "best" / rundir.SUMMARY)
    best.update(trial_id=TRIAL_IDS[0], trial_status="TERMINATED", search=search_dir.name)
    rundir.write_json(search_dir / "best" / rundir.SUMMARY, best)
    header = ["trial_id", "status", "epochs", "best_val_acc", "best_epoch", "last_val_acc", "max_lr",
              "weight_decay", "dropout", "l1", "cutout_max", "scheduler", "error"]
    rows = [[TRIAL_IDS[0], "TERMINATED", 3, 0.61, 3, 0.6, 0.4, 5e-4, LONG_FLOAT, 0.0, 16, "onecycle", ""],
            [TRIAL_IDS[1], "STOPPED", 1, 0.35, 1, 0.35, 0.05, 1e-3, 0.1, 3e-6, 8, MATH_TEXT, ""],
            [TRIAL_IDS[2], "ERROR", 0, "", "", "", 1.5, 1e-4, 0.0, 0.0, 12, "step", f"NonFiniteLossError: {hostile}"]]
    with open(search_dir / "results.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    # Each trial's own metrics: the best ran 3 epochs, ASHA stopped the second after 1, the third failed.
    for trial, accs in ((TRIAL_IDS[0], (0.4, 0.55, 0.61)), (TRIAL_IDS[1], (0.35,)), (TRIAL_IDS[2], ())):
        (search_dir / "trials" / trial).mkdir()
        (search_dir / "trials" / trial / rundir.METRICS).write_text("".join(
            json.dumps({"epoch": e + 1, "val_acc": a, "val_loss": 2.0 - a}) + "\n" for e, a in enumerate(accs)))
    rundir.write_json(search_dir / "search.json", {
        "name": search_dir.name.removeprefix("search-"), "search": {"num_samples": 3, "scheduler": "asha"},
        "space": {"max_lr": {"type": "loguniform", "lower": 0.05, "upper": 2.0},
                  "weight_decay": {"type": "loguniform", "lower": 5e-5, "upper": 2e-3},
                  "dropout": {"type": "uniform", "lower": 0.0, "upper": 0.3},
                  "l1": {"type": "off_or_loguniform", "lower": 1e-7, "upper": 1e-5, "off_p": 0.5},
                  "cutout_max": {"type": "randint", "lower": 8, "upper": 20},
                  "scheduler": {"type": "choice", "values": ["onecycle", MATH_TEXT, "step"]}},
        "metric": "val_acc", "mode": "max", "status": "finished", "started": "2026-11-26T10:00:00+0000",
        "wall_seconds": 123.4,
        "summary": {"trials": 3, "best_trial": TRIAL_IDS[0], "best_val_acc": 0.61,
                    # --refit: what tuning/runner.py's refit_best records
                    "refit": {"status": "finished", "run_dir": str(search_dir / rundir.REFIT),
                              "trial_id": TRIAL_IDS[0], "epochs": 3, "test_acc": 0.7123, "test_acc_plain": 0.7123,
                              "test_acc_tta": 0.7311, "train_images": 50_000, "test_count": 30}}})
    return search_dir
