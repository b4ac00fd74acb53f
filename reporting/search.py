"""The search part of a report: the trials table, its figures and the best config against the recipe.

Reads a search directory (`runs/search-<name>/`: search.json, results.csv, trials/<id>/metrics.jsonl;
see distributed/rundir.py). Every cell of results.csv is text until its column is known to hold
numbers: a trial id such as `3e682_00005` must not become a float.
"""
from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path
from typing import Any

from distributed import rundir
from distributed.config import REFERENCE_BATCH, TrainConfig

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
# Ray Tune's trial states (results.csv keeps them as Tune wrote them) in the words of the report.
STATUS_TEXT = {"TERMINATED": "completed", "STOPPED": "stopped early", "ERROR": "failed",
               "RUNNING": "interrupted", "PENDING": "not started"}
# Fields a space gives at batch 512 and trials train with scaled to their batch (tuning/space.py).
LR_FIELDS = ("max_lr",)


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
    if column == "status":
        return STATUS_TEXT.get(text, text), False
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
    base = settings.get("base_config") if isinstance(settings.get("base_config"), dict) else {}
    batch = base.get("batch_size") if isinstance(base.get("batch_size"), int) else None
    # results.csv holds the rates the trials trained with, i.e. the space scaled to the search's batch
    # (search.json's space_at_batch): the figures draw those on that range, or a 0.05-1 axis at batch
    # 512 would lose every trial of a batch-50 search below its edge.
    trained = settings.get("space_at_batch")
    plot_space = trained if isinstance(trained, dict) else space
    summary = settings.get("summary") if isinstance(settings.get("summary"), dict) else {}
    best = str(summary.get("best_trial"))
    table = []
    for r in rows:
        cells = [format_cell(r.get(c), c) for c in columns]
        table.append({"cells": [{"text": t, "num": n} for t, n in cells], "best": r.get("trial_id") == best})
    # Constants in the space fix a field for every trial: nothing to plot against.
    params = [c for c in columns if isinstance(space.get(c), dict)]
    # learning rates drawn (and listed) as trained at a batch other than 512
    scaled = [p for p in params if p in LR_FIELDS and isinstance(trained, dict) and batch not in (None, REFERENCE_BATCH)]
    labels = {p: axis_label(p, space.get(p), plot_space.get(p), batch if p in scaled else None) for p in params}
    counts = {s: sum(r.get("status") == s for r in rows) for s in ("TERMINATED", "STOPPED", "ERROR")}
    name = str(settings.get("name") or path.name)
    return {"name": name, "folder": path.name, "path": str(path), "columns": columns,
            "headers": [HEADERS.get(c, c) + (f" at batch {batch}" if c in scaled else "") for c in columns],
            "rows": rows, "table": table, "metric": METRIC, "params": params, "space": space,
            "plot_space": plot_space, "labels": labels, "scaled": scaled,
            "batch": batch, "settings": _flatten(settings), "best": best,
            "wall_seconds": settings.get("wall_seconds"), "status": settings.get("status"),
            "started": settings.get("started"), "counts": counts,
            "curves": _trial_curves(path, rows),
            "refit": summary.get("refit") if isinstance(summary.get("refit"), dict) else None}


def axis_label(param: str, spec: Any, trained_spec: Any, batch: int | None) -> str:
    """The name of a hyperparameter's axis: the field, how the space draws it, and for a learning rate
    at a batch other than 512 (`batch`, else None) that the values are the rates trained with (the
    space's range scaled)."""
    kind = spec.get("type") if isinstance(spec, dict) else None
    label = f"{param} ({kind})" if kind else param
    if batch is None or not isinstance(spec, dict):
        return label
    return f"{label}, as trained at batch {batch}:\n{_span(trained_spec)} = {_span(spec)} at {REFERENCE_BATCH} x {batch}/{REFERENCE_BATCH}"


def _span(spec: Any) -> str:
    if not isinstance(spec, dict):
        return format_number(float(spec)) if isinstance(spec, (int, float)) else str(spec)
    if "values" in spec:
        return "{" + ", ".join(_g3(v) for v in spec["values"]) + "}"
    return f"{_g3(spec.get('lower'))}-{_g3(spec.get('upper'))}"


def _g3(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)


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
    recipe = TrainConfig()
    default, chosen = _flat_values(recipe), _flat_values(best)
    rows = []
    for key, value in chosen.items():
        field = key.split(".")[-1]
        if field in NOT_RECIPE:
            continue
        differs = default.get(key) != value
        shown_default = default.get(key, "–")
        if key == "max_lr":
            # None means the batch rule (0.4 x batch/512): show the rate it gives, and say so.
            differs = not math.isclose(recipe.effective_max_lr, best.effective_max_lr)
            shown_default, value = _max_lr_text(recipe), _max_lr_text(best)
            if recipe.max_lr is None and best.batch_size != recipe.batch_size:
                at = TrainConfig(batch_size=best.batch_size).effective_max_lr
                shown_default += f"; {at:.4g} at batch {best.batch_size}"
        rows.append({"field": key, "default": shown_default, "best": value,
                     "differs": differs, "searched": field in params})
    return sorted(rows, key=lambda r: not r["differs"])  # stable: config order within each group


def _max_lr_text(cfg: TrainConfig) -> str:
    """The peak rate a config trains with: as set, or `0.03906 (batch rule: 0.4 x batch 50/512)`."""
    if cfg.max_lr is not None:
        return f"{cfg.max_lr:.4g}"
    return f"{cfg.effective_max_lr:.4g} (batch rule: {cfg.max_lr_rule()})"


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
        scaled = search["scaled"]
        unscored = sum(not _NUMBER.fullmatch(str(r.get(METRIC) or "").strip()) for r in search["rows"])
        note = (f"; {', '.join(scaled)} as trained at batch {search['batch']} (the space's range at batch "
                f"{REFERENCE_BATCH} scaled by {search['batch']}/{REFERENCE_BATCH})" if scaled else "")
        figures.plot_parallel(search["rows"], search["params"], METRIC, fig(
            "parallel", "search_parallel.png",
            f"Parallel coordinates: each line is a trial, through its sampled value of "
            f"{', '.join(search['params'])}, coloured by its best validation accuracy{note}"),
            space=search["plot_space"], best=search["best"], names=search["labels"])
        figures.plot_hparams(search["rows"], search["params"], METRIC, fig(
            "hparams", "hparams.png",
            f"Best validation accuracy of each trial against each searched hyperparameter "
            f"({', '.join(search['params'])}), each axis scaled as the search space draws it{note}"
            + (f"; the {unscored} trial{'s' if unscored != 1 else ''} without a validation result (failed) "
               f"{'are' if unscored != 1 else 'is'} the red x at the bottom of each panel" if unscored else "")),
            space=search["plot_space"], labels=search["labels"])
