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


def shown_path(path: str | Path) -> str:
    """A path as the page shows it: relative to the working directory when under it (as a user types
    it, and as a run's own report shows it), else absolute. The search passes absolute paths."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return str(path)


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
    headers = [HEADERS.get(c, c) + (f" at batch {batch}" if c in scaled else "") for c in columns]
    pbt = pbt_context(path, settings, rows, best)
    if pbt:  # per trial, how many times it took over a better trial's state
        headers.append("exploits adopted")
        for r, line in zip(rows, table):
            n = pbt["adopted"].get(str(r.get("trial_id", "")))
            line["cells"].append({"text": "–" if n is None else str(n), "num": n is not None})
    return {"name": name, "folder": path.name, "path": str(path), "columns": columns, "pbt": pbt,
            "scheduler": "pbt" if pbt else "asha", "headers": headers,
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
                     "differs": differs, "searched": field in params or (field == "aug_schedule" and differs)})
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
            out[key] = (schedule_text(value) if key == "aug_schedule" else
                        format_number(value) if isinstance(value, float) else str(value))
    return out


def schedule_text(schedule: Any) -> str:
    """config.json's aug_schedule in a table cell: how many per-epoch entries (the figure shows them)."""
    if not schedule:
        return "none"
    n = len(schedule) if isinstance(schedule, (list, tuple)) else 0
    return f"{n} per-epoch entr{'ies' if n != 1 else 'y'} (see the schedule figure)"


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
    pbt = search.get("pbt")
    if curves:
        figures.plot_search_curves(search["curves"], fig(
            "search_curves", "search_curves.png",
            f"Validation accuracy against epoch for each of the {len(search['curves'])} trials; "
            + ("after an exploit at epoch k a trial's curve up to k is its donor's (the history of the weights "
               "it continued from)" if pbt else "trials that ASHA stopped early end early (x)")
            + ", the best trial is the thick black line"), best=search["best"])
    if pbt:
        pbt_figures(search, fig)
    if search["params"] and search["rows"]:
        scaled = search["scaled"]
        unscored = sum(not _NUMBER.fullmatch(str(r.get(METRIC) or "").strip()) for r in search["rows"])
        note = (f"; {', '.join(scaled)} as trained at batch {search['batch']} (the space's range at batch "
                f"{REFERENCE_BATCH} scaled by {search['batch']}/{REFERENCE_BATCH})" if scaled else "")
        if pbt:  # results.csv holds a PBT trial's latest values, not the ones it started with
            note += ("; under PBT each trial's value at its end (PBT perturbed them during training: the best "
                     "trial's values epoch by epoch are in its schedule figure)")
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


# ----------------------------------------------------------------------------- PBT (issue 23)
REPLAY_COMMAND = "cifar-train --aug-schedule"


def _epoch(v: Any) -> int | None:
    """A 1-based epoch (or an exploit's epoch k >= 0) as written in the files; None for anything else."""
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else None


def schedule_from_metrics(metrics: list[dict[str, Any]]) -> tuple[list[int], list[dict[str, Any]]]:
    """(epochs, values) of the rows of metrics.jsonl that record a "schedule": what each epoch trained
    with. A later row of the same epoch wins (metrics.jsonl is cut back on resume, but be safe)."""
    by_epoch: dict[int, dict[str, Any]] = {}
    for m in metrics:
        e = _epoch(m.get("epoch"))
        if e and isinstance(m.get("schedule"), dict):
            by_epoch[e] = m["schedule"]
    epochs = sorted(by_epoch)
    return epochs, [by_epoch[e] for e in epochs]


def read_lineage(trial_dir: Path) -> tuple[list[dict[str, Any]], int]:
    """A trial's exploits from its lineage.jsonl, oldest first, as {"epoch", "donor", "time"}; and how
    many rows were unusable (no epoch or donor): skipped, so one bad row does not lose the figure."""
    good, bad = [], 0
    for r in rundir.read_jsonl(Path(trial_dir) / rundir.LINEAGE):
        k = _epoch(r.get("epoch")) if isinstance(r, dict) else None
        donor = r.get("donor") if isinstance(r, dict) else None
        if k is None or not isinstance(donor, str) or not donor:
            bad += 1
            continue
        good.append({"epoch": k, "donor": donor, "time": r.get("time")})
    return sorted(good, key=lambda x: x["epoch"]), bad


def ancestry(best: str, exploits: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The exploits along `best`'s weights' history, oldest first: its latest exploit (epoch k, donor
    D) replaced its whole state with D's of epoch k, so its earlier exploits no longer matter and the
    history goes on with D's latest exploit at or before k (before the recipient's, by time, when both
    rows say when). The search writes this into schedule.json; this is for a search without one."""
    chain: list[dict[str, Any]] = []
    trial, upto, when = best, math.inf, None
    for _ in range(len(exploits) + 1):   # a cycle in corrupt files cannot loop
        own = [x for x in exploits if x["trial"] == trial and x["epoch"] <= upto
               and not (isinstance(when, str) and isinstance(x.get("time"), str) and x["time"] >= when)]
        if not own:
            break
        x = max(own, key=lambda x: (x["epoch"], str(x.get("time") or "")))
        chain.append(x)
        trial, upto, when = x["donor"], x["epoch"], x.get("time")
    return chain[::-1]


def weights_path(best: str, chain: list[dict[str, Any]], last: int) -> list[tuple[str, int, int]]:
    """(trial, from epoch, to epoch) segments of the rows the best trial's weights lived on, newest
    first: epochs k..last on the best's row after its latest exploit, 1..k on the donor's, and so on."""
    segments, trial, upto = [], best, last
    for x in reversed(chain):
        if x["trial"] != trial:   # a schedule.json lineage that is not a chain: draw what is consistent
            break
        segments.append((trial, x["epoch"], upto))
        trial, upto = x["donor"], x["epoch"]
    segments.append((trial, 1, upto))
    return segments


def _read_schedule_file(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """schedule.json's parts the report draws, or (None, why not) in one line."""
    if not path.exists():
        return None, f"{path.name} is missing"
    try:
        doc = rundir.read_json(path)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        return None, f"{path.name} is unreadable ({e})"
    entries = doc.get("schedule") if isinstance(doc, dict) else None
    if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) for e in entries):
        return None, f"{path.name} has no \"schedule\" list of per-epoch entries"
    epochs = [_epoch(e.get("epoch")) for e in entries]
    if any(e is None or e < 1 for e in epochs):
        return None, f"{path.name} has a schedule entry without a 1-based \"epoch\""
    fields = doc.get("fields")
    lineage = [x for x in doc.get("lineage") or [] if isinstance(x, dict) and _epoch(x.get("epoch")) is not None
               and isinstance(x.get("trial"), str) and isinstance(x.get("donor"), str)]
    return {"epochs": epochs, "schedule": [{k: v for k, v in e.items() if k != "epoch"} for e in entries],
            "fields": [str(f) for f in fields] if isinstance(fields, list) else None,
            "lineage": sorted(lineage, key=lambda x: x["epoch"]),
            "has_lineage": isinstance(doc.get("lineage"), list)}, None


def _trial_dir(path: Path, trial: str) -> Path | None:
    trial_dir = path / rundir.TRIALS / trial
    # results.csv is written by the search itself, but a trial id must stay one folder name.
    if trial in ("", ".", "..") or trial_dir.parent != path / rundir.TRIALS:
        return None
    return trial_dir


def pbt_context(path: Path, settings: dict[str, Any], rows: list[dict[str, str]], best: str) -> dict[str, Any] | None:
    """A PBT search's schedule and lineage for the report (None for any other scheduler): the PBT
    settings, every exploit (each trial's lineage.jsonl), how many each trial adopted, the best
    trial's schedule (best/schedule.json, else its metrics rows) and the exploits along its ancestry,
    and one-line notes for whatever is missing or odd."""
    path = Path(path)
    search = settings.get("search") if isinstance(settings.get("search"), dict) else {}
    if search.get("scheduler") != "pbt":
        return None
    summary = settings.get("summary") if isinstance(settings.get("summary"), dict) else {}
    notes: list[str] = []
    trials = [str(r.get("trial_id", "")) for r in rows]
    exploits: list[dict[str, Any]] = []
    adopted: dict[str, int] = {}
    spans: dict[str, tuple[int, int]] = {}
    unusable = 0
    for t in trials:
        trial_dir = _trial_dir(path, t)
        if trial_dir is None:
            continue
        own, bad = read_lineage(trial_dir)
        unusable += bad
        adopted[t] = len(own)
        exploits += [{**x, "trial": t} for x in own]
        epochs = [e for m in rundir.read_metrics(trial_dir) if (e := _epoch(m.get("epoch")))]
        if epochs:
            spans[t] = (min(epochs), max(epochs))
    exploits.sort(key=lambda x: (x["epoch"], x["trial"]))
    if unusable:
        notes.append(f"{unusable} row{'s' if unusable != 1 else ''} of the trials' {rundir.LINEAGE} without an "
                     f"epoch or donor {'are' if unusable != 1 else 'is'} left out.")
    unknown = sorted({x["donor"] for x in exploits} - set(trials))
    if unknown:
        notes.append(f"Donor{'s' if len(unknown) != 1 else ''} {', '.join(unknown)} "
                     f"{'are' if len(unknown) != 1 else 'is'} named in a lineage but not in results.csv: "
                     f"drawn as extra rows, marked \u201cnot in results.csv\u201d.")
    schedule_path = path / rundir.BEST_TRIAL / rundir.SCHEDULE
    doc, why = _read_schedule_file(schedule_path)
    source = f"{rundir.BEST_TRIAL}/{rundir.SCHEDULE}"
    if doc is None:
        best_dir = _trial_dir(path, best)
        epochs, entries = schedule_from_metrics(rundir.read_metrics(best_dir) if best_dir else [])
        if entries:
            source = f"the best trial's {rundir.TRIALS}/{best}/{rundir.METRICS}"
        notes.append(f"{rundir.BEST_TRIAL}/{why}; the schedule below is read from {source}." if entries else
                     f"{rundir.BEST_TRIAL}/{why}, and the best trial's {rundir.METRICS} records no schedule: "
                     f"no schedule to draw.")
        doc = {"epochs": epochs, "schedule": entries, "fields": None, "lineage": [], "has_lineage": False}
    chain = doc["lineage"] if doc["has_lineage"] else ancestry(best, exploits)
    fields = doc["fields"] or sorted({k for e in doc["schedule"] for k in e})
    last = max([*doc["epochs"], *(hi for t, (_, hi) in spans.items() if t == best)], default=1)
    count = summary.get("exploits")
    return {
        "interval": search.get("perturbation_interval"), "quantile": search.get("quantile_fraction"),
        "resample": search.get("resample_probability"),
        "perturbed": [str(f) for f in search.get("perturbed") or []],
        "exploits": count if isinstance(count, int) and not isinstance(count, bool) else len(exploits),
        "lineage": exploits, "adopted": adopted, "spans": spans, "trials": trials + unknown, "unknown": unknown,
        "epochs": doc["epochs"], "schedule": doc["schedule"], "fields": fields, "source": source,
        "ancestry": chain, "path": weights_path(best, chain, last),
        "changing": [f for f in fields if len({json.dumps(e.get(f)) for e in doc["schedule"]}) > 1],
        "schedule_file": str(schedule_path) if schedule_path.exists() else None,
        "schedule_file_shown": shown_path(schedule_path), "notes": notes}


def pbt_figures(search: dict[str, Any], fig) -> None:
    """A PBT search's two figures: the best trial's schedule and the population's lineage (none when
    there is nothing to draw; the template then says why in one line)."""
    from reporting import figures

    pbt, best = search["pbt"], search["best"]
    if pbt["schedule"]:
        marks = [x["epoch"] for x in pbt["ancestry"]]
        where = (f"{shown_path(pbt['schedule_file'])}; replay it in a training of any length with "
                 f"{REPLAY_COMMAND} {shown_path(pbt['schedule_file'])}" if pbt["schedule_file"] else pbt["source"])
        n = len(pbt["epochs"])
        figures.plot_schedule(pbt["epochs"], pbt["schedule"], fig(
            "schedule", "pbt_schedule.png",
            f"The schedule the best trial's weights trained with, epoch by epoch ({n} epoch{'s' if n != 1 else ''}; "
            f"from {where}): each value holds for its whole epoch (one step per epoch); probabilities share the "
            f"first panel (0-1), every other field has its own scale"
            + (f"; dashed red lines mark the {len(marks)} exploit{'s' if len(marks) != 1 else ''} along its "
               f"ancestry (after epoch {', '.join(map(str, sorted(set(marks))))}), where the weights and values "
               f"came from another trial" if marks else "; no exploit along its ancestry")
            + (f"; constant: {', '.join(f for f in pbt['fields'] if f not in pbt['changing'])}"
               if len(pbt["changing"]) < len(pbt["fields"]) else "")),
            fields=pbt["fields"], exploits=marks)
    if pbt["lineage"]:
        labels = {t: f"{t} (not in results.csv)" for t in pbt["unknown"]}
        labels.update({best: f"{best} (best)"} if best in pbt["trials"] else {})
        figures.plot_lineage(pbt["trials"], pbt["lineage"], fig(
            "lineage", "pbt_lineage.png",
            f"Lineage of the population: one row per trial, epoch across; each arrow is one of the "
            f"{len(pbt['lineage'])} exploits, from the donor's row to the recipient's at the epoch k of the "
            f"donor's checkpoint (the recipient continued from it with epoch k+1, perturbed); the thick black "
            f"path is where the best trial's weights came from ({len(pbt['ancestry'])} exploit"
            f"{'s' if len(pbt['ancestry']) != 1 else ''} along it, black arrows); grey lines: the epochs each "
            f"trial's metrics cover; from trials/<id>/{rundir.LINEAGE}"),
            spans=pbt["spans"], best=best, ancestry=pbt["ancestry"], path_segments=pbt["path"], labels=labels)

