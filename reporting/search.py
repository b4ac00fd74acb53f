"""The search part of a report: the trials table, its figures and the best config against the recipe.

Reads a search directory (`runs/search-<name>/`: search.json, results.csv, trials/<id>/metrics.jsonl;
see distributed/rundir.py). Every cell of results.csv is text until its column is known to hold
numbers: a trial id such as `3e682_00005` must not become a float.
"""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any

from distributed import rundir
from distributed.config import TrainConfig

# Columns of results.csv (tuning/results.py) that are never numbers, and the ones that are fractions.
TEXT_COLUMNS = frozenset({"trial_id", "status", "error"})
FRACTION_COLUMNS = frozenset({"best_val_acc", "last_val_acc"})
HEADERS = {"trial_id": "trial", "best_val_acc": "best val acc", "best_epoch": "best epoch",
           "last_val_acc": "last val acc"}
# A plain decimal number as tuning/results.py writes one: no underscores, no inf/nan, no hex.
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
METRIC = "best_val_acc"
# Where a run lives and how it is watched, not what it learns: left out of the recipe comparison.
NOT_RECIPE = rundir.RESUMABLE_CHANGES | {"name"}


class SearchError(Exception):
    """A search directory the report cannot use (the report turns it into a ReportError)."""


def format_number(v: float) -> str:
    """A number rounded for reading: integers as integers, others to 4 significant digits."""
    if float(v).is_integer() and abs(v) < 1e6:
        return str(int(v))
    return f"{v:.4g}"


def format_cell(value: Any, column: str) -> tuple[str, bool]:
    """(text, is_number) of one results.csv cell: strings stay exactly as written; only cells that
    are plain decimal numbers, in columns that hold numbers, are rounded."""
    text = "" if value is None else str(value).strip()
    if column in TEXT_COLUMNS or not _NUMBER.fullmatch(text):
        return text, False
    number = float(text)
    if column in FRACTION_COLUMNS:
        return f"{100 * number:.2f}%", True
    return format_number(number), True


def read_results_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """Columns and rows of a search's results.csv (empty when absent)."""
    if not Path(path).exists():
        return [], []
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            rows = [dict(r) for r in reader]
            return list(reader.fieldnames or []), rows
    except (OSError, csv.Error, UnicodeDecodeError) as e:
        raise SearchError(f"{path} is not a readable CSV file ({e})") from None


def search_context(path: Path) -> dict[str, Any]:
    """The search's settings, its trials table (results.csv), which columns are hyperparameters,
    and each trial's validation curve (trials/<id>/metrics.jsonl)."""
    path = Path(path)
    try:
        settings = rundir.read_json(path / rundir.SEARCH_JSON)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SearchError(f"{path / rundir.SEARCH_JSON} is unreadable ({e})") from None
    if not isinstance(settings, dict):
        raise SearchError(f"{path / rundir.SEARCH_JSON} must hold a JSON object")
    columns, rows = read_results_csv(path / rundir.RESULTS_CSV)
    space = settings.get("space") if isinstance(settings.get("space"), dict) else {}
    summary = settings.get("summary") if isinstance(settings.get("summary"), dict) else {}
    best = str(summary.get("best_trial"))
    table = []
    for r in rows:
        cells = [format_cell(r.get(c), c) for c in columns]
        table.append({"cells": [{"text": t, "num": n} for t, n in cells], "best": r.get("trial_id") == best})
    # Constants in the space fix a field for every trial: nothing to plot against.
    params = [c for c in columns if isinstance(space.get(c), dict)]
    counts = {s: sum(r.get("status") == s for r in rows) for s in ("TERMINATED", "STOPPED", "ERROR")}
    name = str(settings.get("name") or path.name)
    return {"name": name, "folder": path.name, "path": str(path), "columns": columns,
            "headers": [HEADERS.get(c, c) for c in columns], "rows": rows, "table": table,
            "metric": METRIC, "params": params, "space": space, "settings": _flatten(settings), "best": best,
            "wall_seconds": settings.get("wall_seconds"), "status": settings.get("status"),
            "started": settings.get("started"), "counts": counts,
            "curves": _trial_curves(path, rows),
            "refit": summary.get("refit") if isinstance(summary.get("refit"), dict) else None}


def _trial_curves(path: Path, rows: list[dict[str, str]]) -> list[dict[str, Any]]:
    curves = []
    for r in rows:
        trial = str(r.get("trial_id", ""))
        trial_dir = path / rundir.TRIALS / trial
        # results.csv is written by the search itself, but a trial id must stay one folder name.
        if trial in ("", ".", "..") or trial_dir.parent != path / rundir.TRIALS:
            continue
        metrics = [m for m in rundir.read_metrics(trial_dir) if m.get("val_acc") is not None]
        curves.append({"trial_id": trial, "status": r.get("status", ""),
                       "epochs": [m["epoch"] for m in metrics], "val_acc": [m["val_acc"] for m in metrics]})
    return curves


def config_comparison(best: TrainConfig, params: list[str]) -> list[dict[str, Any]]:
    """The best trial's config beside the default recipe's (TrainConfig()), field by field:
    differing fields first; `searched` marks the fields the search sampled (the others differ
    because of the flags the search was started with)."""
    default, chosen = _flat_values(TrainConfig()), _flat_values(best)
    rows = []
    for key, value in chosen.items():
        field = key.split(".")[-1]
        if field in NOT_RECIPE:
            continue
        rows.append({"field": key, "default": default.get(key, "–"), "best": value,
                     "differs": default.get(key) != value, "searched": field in params})
    return sorted(rows, key=lambda r: not r["differs"])  # stable: config order within each group


def _flat_values(cfg: TrainConfig) -> dict[str, str]:
    out = {}
    for k, v in cfg.to_dict().items():
        for key, value in ((f"{k}.{k2}", v2) for k2, v2 in v.items()) if isinstance(v, dict) else [(k, v)]:
            out[key] = format_number(value) if isinstance(value, float) else str(value)
    return out


def _flatten(d: dict[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """Nested settings as dotted keys; numbers rounded, lists as JSON."""
    rows: list[tuple[str, str]] = []
    for k, v in d.items():
        if isinstance(v, dict) and v:
            rows += _flatten(v, f"{prefix}{k}.")
        elif isinstance(v, float):
            rows.append((f"{prefix}{k}", format_number(v)))
        else:
            rows.append((f"{prefix}{k}", json.dumps(v) if isinstance(v, (list, dict)) else str(v)))
    return rows


def search_figures(search: dict[str, Any], fig) -> None:
    """The search's figures; `fig(key, filename, alt)` registers one and returns where to write it."""
    from reporting import figures

    curves = [c for c in search["curves"] if c["epochs"]]
    if curves:
        figures.plot_search_curves(search["curves"], fig(
            "search_curves", "search_curves.png",
            f"Validation accuracy against epoch for each of the {len(search['curves'])} trials; trials that "
            f"ASHA stopped early end early (x), the best trial is the thick black line"), best=search["best"])
    if search["params"] and search["rows"]:
        figures.plot_parallel(search["rows"], search["params"], METRIC, fig(
            "parallel", "search_parallel.png",
            f"Parallel coordinates: each line is a trial, through its sampled value of "
            f"{', '.join(search['params'])}, coloured by its best validation accuracy"),
            space=search["space"], best=search["best"])
        figures.plot_hparams(search["rows"], search["params"], METRIC, fig(
            "hparams", "hparams.png",
            f"Best validation accuracy of each trial against each searched hyperparameter "
            f"({', '.join(search['params'])}), each axis scaled as the search space draws it"), space=search["space"])
