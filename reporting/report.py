"""Static HTML report of a training run or a search: `build_report(run_dir)` -> `reports/<name>/`.

Reads only the run directory contract (`distributed/rundir.py`), the test images of the data
set the run used, and the saved weights; GradCAM runs on the few images shown, so a report
builds in seconds on a CPU.  The page is self-contained: inline CSS, PNGs beside it, no
scripts and no network requests, so it opens from file://.

Every report keeps its own folder, `reports/<run-or-search-name>/`; `reports/index.html` is the
index of every report below it, a sortable comparison table (reporting/index.py has the layout).
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from distributed import rundir
from distributed.config import ConfigError, TrainConfig, precision_name
from reporting import index as reports_index
from reporting.search import SearchError, config_comparison, format_number, schedule_text, search_context, shown_path

TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"
TEMPLATE = "index.html.j2"
ZERO_MAP = "all zero"     # written over a GradCAM map that has no positive value anywhere


class ReportError(Exception):
    """A run directory or data set the report cannot use; the message is one actionable line."""


@dataclass
class Run:
    """Everything read from one run directory."""

    path: Path
    meta: dict[str, Any]              # config.json as written (config, versions, hostname, ...)
    config: TrainConfig
    summary: dict[str, Any]
    metrics: list[dict[str, Any]]
    lr_find: dict[str, Any] | None
    predictions: dict[str, np.ndarray]
    weights: Path
    steps: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # steps.jsonl (newer runs)


# ----------------------------------------------------------------------------- reading
def _read_json(path: Path) -> Any:
    try:
        return rundir.read_json(path)
    except FileNotFoundError:
        raise ReportError(f"{path} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ReportError(f"{path} is not valid JSON ({e})") from None
    except OSError as e:
        raise ReportError(f"cannot read {path}: {e.strerror}") from None


def is_search_dir(path: Path) -> bool:
    """A `runs/search-<name>/` directory (tuning/search.py), as opposed to one training run."""
    return (Path(path) / rundir.SEARCH_JSON).exists()


def load_run(path: Path) -> Run:
    """Read and check one run directory; raise ReportError naming the first problem."""
    path = Path(path)
    if not path.is_dir():
        raise ReportError(f"run directory {path} does not exist")
    if not (path / rundir.PREDICTIONS).exists():
        raise ReportError(f"{path} has no {rundir.PREDICTIONS}: the run has not finished its test evaluation")
    meta = _read_json(path / rundir.CONFIG)
    if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict):
        raise ReportError(f"{path / rundir.CONFIG} has no \"config\" object")
    try:
        config = TrainConfig.from_dict(meta["config"])
    except (ConfigError, TypeError) as e:
        raise ReportError(f"{path / rundir.CONFIG}: {e}") from None
    summary = _read_json(path / rundir.SUMMARY)
    if not isinstance(summary, dict) or "mean" not in summary or "std" not in summary:
        raise ReportError(f"{path / rundir.SUMMARY} lacks the normalisation \"mean\"/\"std\"")
    lr_find = _read_json(path / rundir.LR_FIND) if (path / rundir.LR_FIND).exists() else None
    try:
        predictions = rundir.load_predictions(path)
    except (OSError, ValueError, EOFError) as e:  # zip errors are ValueError/OSError subclasses
        raise ReportError(f"{path / rundir.PREDICTIONS} is unreadable ({e})") from None
    missing = {"logits", "labels", "indices"} - set(predictions)
    if missing:
        raise ReportError(f"{path / rundir.PREDICTIONS} lacks {', '.join(sorted(missing))}")
    # The weights that produced predictions.npz, so GradCAM explains the very predictions shown.
    weights = path / str(summary.get("weights"))
    if not weights.is_file() or weights.parent != path:
        raise ReportError(f"{path / rundir.SUMMARY} names the weights {summary.get('weights')!r}, "
                          f"which are not in {path}")
    return Run(path, meta, config, summary, rundir.read_metrics(path), lr_find, predictions, weights,
               rundir.read_steps(path))


def load_model(run: Run, num_classes: int, device: str):
    """ResNet18 with the run's weights, in eval mode on `device`."""
    import torch
    from safetensors.torch import load_file

    from distributed.model import resnet18

    model = resnet18(num_classes=num_classes, dropout=run.config.dropout)
    try:
        state = load_file(str(run.weights), device="cpu")
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise ReportError(f"{run.weights} is not a readable safetensors file ({e})") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise ReportError(f"{run.weights} does not fit resnet18 ({first})") from None
    return model.to(torch.device(device)).eval()


def _load_test_set(run: Run, data_dir: str | Path | None):
    from distributed.data import DataError, load_cifar10

    root = Path(data_dir) if data_dir is not None else Path(run.config.data_dir)
    try:
        data = load_cifar10(root, download=False)
    except DataError as e:
        raise ReportError(f"{e} (the report needs the run's test images; pass --data-dir)") from None
    idx, labels = run.predictions["indices"], run.predictions["labels"]
    if len(idx) and (idx.min() < 0 or idx.max() >= len(data.test_y)):
        raise ReportError(f"{rundir.PREDICTIONS} refers to test image {int(idx.max())} but {root} has "
                          f"{len(data.test_y)}; pass the run's --data-dir")
    if not np.array_equal(data.test_y[idx], labels):
        raise ReportError(f"the labels in {rundir.PREDICTIONS} do not match the test set in {root}: "
                          f"it is not the data the run was evaluated on; pass the run's --data-dir")
    return data


# ----------------------------------------------------------------------------- numbers
def classification_stats(logits: np.ndarray, labels: np.ndarray, num_classes: int) -> dict[str, Any]:
    """Predictions, confidences, confusion matrix and per-class precision/recall/F1."""
    z = logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    probs = np.exp(z)
    probs /= probs.sum(axis=1, keepdims=True)
    pred = probs.argmax(axis=1)
    cm = np.bincount(labels * num_classes + pred, minlength=num_classes ** 2).reshape(num_classes, num_classes)
    tp = np.diag(cm).astype(float)
    support, predicted = cm.sum(axis=1), cm.sum(axis=0)
    precision = np.divide(tp, predicted, out=np.full(num_classes, np.nan), where=predicted > 0)
    recall = np.divide(tp, support, out=np.full(num_classes, np.nan), where=support > 0)
    # F1 = 2TP / (2TP + FP + FN): defined (0) for a class never predicted, unlike precision;
    # undefined only for a class that is neither present nor predicted.
    errors = (predicted - tp) + (support - tp)
    f1 = np.divide(2 * tp, 2 * tp + errors, out=np.full(num_classes, np.nan), where=(2 * tp + errors) > 0)
    return {"probs": probs, "pred": pred, "conf": probs[np.arange(len(pred)), pred], "cm": cm,
            "support": support, "correct": tp.astype(int), "precision": precision, "recall": recall, "f1": f1,
            "accuracy": float(tp.sum() / max(1, len(labels)))}


def calibration_stats(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> dict[str, Any]:
    """Expected calibration error (Guo et al. 2017) and the reliability diagram's bins.

    Confidence is the probability of the predicted class; bin m holds the confidences in
    (m/n_bins, (m+1)/n_bins] (the first also takes 0). ECE = sum over bins of
    (images in bin / all images) * |accuracy in bin - mean confidence in bin|.
    """
    probs = np.asarray(probs, dtype=np.float64)
    conf, pred = probs.max(axis=1), probs.argmax(axis=1)
    correct = (pred == np.asarray(labels)).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.digitize(conf, edges[1:-1], right=True)   # edges[m] < conf <= edges[m + 1]
    count = np.bincount(which, minlength=n_bins)
    acc_sum = np.bincount(which, weights=correct, minlength=n_bins)
    conf_sum = np.bincount(which, weights=conf, minlength=n_bins)
    acc = np.divide(acc_sum, count, out=np.zeros(n_bins), where=count > 0)
    mean_conf = np.divide(conf_sum, count, out=np.zeros(n_bins), where=count > 0)
    n = max(1, len(conf))
    return {"ece": float(np.sum(count / n * np.abs(acc - mean_conf))), "accuracy": float(correct.mean()) if len(conf) else 0.0,
            "mean_conf": float(conf.mean()) if len(conf) else 0.0, "bin_lower": edges[:-1], "bin_upper": edges[1:],
            "count": count, "acc": acc, "conf": mean_conf}


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=1, keepdims=True)


def health_warnings(metrics: list[dict[str, Any]], summary: dict[str, Any], pred: np.ndarray,
                    classes: tuple[str, ...]) -> list[str]:
    """Plain sentences for the top of the page when the run did not learn: accuracy at chance,
    a diverging or non-finite loss, one class predicted for most images. Empty for a healthy run."""
    k = len(classes)
    out: list[str] = []
    test_acc, test_loss = summary.get("test_acc"), summary.get("test_loss")
    uniform = math.log(k)  # the loss of a model that guesses every class equally
    if isinstance(test_acc, (int, float)) and test_acc <= 1.5 / k:
        out.append(f"Test accuracy {100 * test_acc:.1f}% is at chance level ({100 / k:.0f}% for {k} classes): this "
                   f"model has not learnt to classify. The mistakes, confusion matrix and GradCAM below show what a "
                   f"model that guesses does, not what the recipe learns.")
    losses = [(r.get("epoch"), r.get(key)) for r in metrics for key in ("train_loss", "val_loss")]
    bad = [e for e, v in losses if isinstance(v, (int, float)) and not math.isfinite(v)]
    if bad:
        out.append(f"The loss became non-finite in epoch {bad[0]}: training diverged. Lower --max-lr.")
    vals = [(r["epoch"], r["val_loss"]) for r in metrics
            if isinstance(r.get("val_loss"), (int, float)) and math.isfinite(r["val_loss"])]
    if len(vals) >= 2:
        best_epoch, best = min(vals, key=lambda t: t[1])
        last_epoch, last = vals[-1]
        if last > 3 * best and last > uniform:
            out.append(f"Validation loss exploded: {best:.3g} at epoch {best_epoch}, {last:.3g} at epoch {last_epoch} "
                       f"(a model that guesses scores {uniform:.2f}). Lower --max-lr, or run --find-lr.")
    if isinstance(test_loss, (int, float)) and (not math.isfinite(test_loss) or test_loss > 3 * uniform):
        out.append(f"Test loss {test_loss:.3g} is more than 3x that of guessing ({uniform:.2f}): the model is "
                   f"confidently wrong on much of the test set.")
    if k >= 3 and len(pred):
        share = np.bincount(pred, minlength=k) / len(pred)
        top = int(share.argmax())
        if share[top] >= 0.5:
            out.append(f"The model predicts \u201c{classes[top]}\u201d for {100 * share[top]:.0f}% of the test images.")
    return out


# ----------------------------------------------------------------------------- formatting
def _pct(v: Any) -> str:
    """A fraction as a percentage with 2 decimals; "–" where it is undefined (None, NaN, not a number)."""
    if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)) or not math.isfinite(v):
        return "–"
    return f"{100 * float(v):.2f}%"


def _loss(v: Any) -> str:
    """A loss: 4 decimals in the usual range, 4 significant digits when it has exploded."""
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return "–"
    return f"{v:.4f}" if abs(v) < 1000 else f"{v:.4g}"


def _duration(seconds: Any) -> str:
    if seconds is None:
        return "–"
    s = int(round(float(seconds)))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d} ({float(seconds):.1f} s)"


def _flat_config(cfg: TrainConfig) -> list[tuple[str, str]]:
    """The config as (field, value) rows; floats to 4 significant digits (config.json has them all)."""
    def show(v: Any) -> str:
        return format_number(v) if isinstance(v, float) else str(v)

    rows = []
    for k, v in cfg.to_dict().items():
        if isinstance(v, dict):
            rows += [(f"{k}.{k2}", show(v2)) for k2, v2 in v.items()]
        elif k == "aug_schedule":  # a list of per-epoch dicts: counted here, drawn by the schedule figure
            rows.append((k, schedule_text(v)))
        elif k == "max_lr" and v is None:  # the batch-scaled default: show the rate it resolved to
            rows.append((k, f"{cfg.effective_max_lr:.4g} ({cfg.max_lr_rule()})"))
        else:
            rows.append((k, show(v)))
    return rows


# ----------------------------------------------------------------------------- the report
@dataclass
class _Page:
    """What the section builders share: inputs, the output folder, and the figures written so far."""

    run: Run
    data: Any                          # distributed.data.CifarArrays
    stats: dict[str, Any]
    out: Path
    mean: np.ndarray
    std: np.ndarray
    figs: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.data.classes)

    @property
    def labels(self) -> np.ndarray:
        return self.run.predictions["labels"].astype(np.int64)

    def image(self, row: int) -> np.ndarray:
        """The test image of predictions row `row`."""
        return self.data.test_x[int(self.run.predictions["indices"][row])]

    def fig(self, key: str, filename: str, alt: str) -> Path:
        """Register a figure for the template (src + alt text) and return where to write it."""
        self.figs[key] = {"src": filename, "alt": alt}
        return self.out / filename

    def caption(self, row: int) -> str:
        """'true: cat', 'pred: dog 93%' on two lines, for one predictions row."""
        c, s = self.classes, self.stats
        return f"true: {c[self.labels[row]]}\npred: {c[s['pred'][row]]} {100 * s['conf'][row]:.0f}%"


def build_report(run_dir: str | Path, out_dir: str | Path = "reports", *, data_dir: str | Path | None = None,
                 device: str | None = None, n_examples: int = 25, n_cam: int = 6, seed: int = 0) -> Path:
    """Write the report of a run or search directory into `out_dir/<its name>/`, then the index
    `out_dir/index.html` (and the index pages above it: reporting/index.py). Returns that index page.

    `data_dir` overrides the data folder named in the run's config; `device` defaults to CUDA
    when available.  `n_examples` images per example grid, GradCAM on the first `n_cam` of
    them.  Raises ReportError for unusable input or a folder it must not replace (another run's
    report, a folder of reports), before anything is written; a report that fails half-way leaves
    the previous report of the same name in place.
    """
    import torch

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ReportError(f"run directory {run_dir} does not exist")
    if (run_dir / rundir.SEARCH_JSON).exists() and not (run_dir / rundir.BEST_TRIAL).is_dir():
        raise ReportError(f"search {run_dir} has no best/ yet: it is still running, or no trial finished")
    try:
        search = search_context(run_dir) if is_search_dir(run_dir) else None
    except SearchError as e:
        raise ReportError(str(e)) from None
    run = load_run(run_dir / rundir.BEST_TRIAL if search else run_dir)
    data = _load_test_set(run, data_dir)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ReportError("--device cuda given but no CUDA device is available")
    model = load_model(run, len(data.classes), device)

    out = Path(out_dir)
    name = run_dir.resolve().name
    created = search["started"] if search else run.meta.get("created")
    kind = "search" if search else "run"
    # Where it goes is checked before anything is written: a rebuild replaces only this run's own report.
    try:
        reports_index.check_run_target(out, run_dir, kind, created)
    except reports_index.LayoutError as e:
        raise ReportError(str(e)) from None
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ReportError(f"cannot create the output folder {out}: {e.strerror}") from None
    # Built in a temp folder renamed into place: a failure keeps the previous report of this name.
    with rundir.atomic_path(out / name) as folder:
        folder.mkdir()
        context = _report_context(run, search, data, model, folder, n_examples, n_cam, seed)
        rundir.write_json(folder / reports_index.ENTRY, reports_index.entry(
            kind, context["title"], created, run.summary, context["warnings"], source=run_dir,
            wall_seconds=search.get("wall_seconds") if search else None))
        (folder / reports_index.PAGE).write_text(_render({**context, "home": "../"}), encoding="utf-8")
    # After the rename, so that the index lists this report.
    return reports_index.write_indexes(out, out / name)


def _report_context(run: Run, search: dict[str, Any] | None, data, model, out: Path, n_examples: int, n_cam: int,
                    seed: int) -> dict[str, Any]:
    """Write every figure of the report into `out` and return the template's context."""
    classes = tuple(data.classes)
    labels = run.predictions["labels"].astype(np.int64)
    stats = classification_stats(run.predictions["logits"], labels, len(classes))
    page = _Page(run, data, stats, out, np.asarray(run.summary["mean"], dtype=np.float32),
                 np.asarray(run.summary["std"], dtype=np.float32))
    _curve_figures(page, lr_sampled=bool(search and "max_lr" in search["params"]))
    calibration = _calibration_figure(page)
    _data_figures(page)
    wrong, right = _example_figures(page, n_examples, seed)
    cam_all_image, zero_maps = _gradcam_figures(page, model, wrong[:n_cam], right[:n_cam], right, wrong)
    if search:
        from reporting.search import search_figures

        search_figures(search, page.fig)
    # A search's page draws the best trial's schedule in its search section (from schedule.json).
    schedule = None if search else _schedule_figure(page)

    summary_rows = _summary_rows(run, stats, search)
    meta = run.meta
    provenance = [(k, str(meta[k])) for k in ("created", "hostname", "git_commit") if meta.get(k) is not None]
    provenance += [(f"version: {k}", str(v)) for k, v in (meta.get("versions") or {}).items()]
    if search:
        title = f"CIFAR-10 search report: {search['name']} (best trial {search['best']})"
    else:
        title = f"CIFAR-10 report: {run.config.name}"
    return {
        "title": title,
        "run_path": shown_path(run.path),
        "search_path": shown_path(search["path"]) if search else None,
        "generated": dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "warnings": health_warnings(run.metrics, run.summary, stats["pred"], classes),
        "summary": summary_rows,
        # The four numbers a reader looks for first, without the parenthesised details.
        "headline": [(k, v.split(" (")[0]) for k, v in summary_rows
                     if k in ("Test accuracy", "Refit test accuracy", "Best validation accuracy", "Epochs",
                              "Wall time (training)")],
        "has_val": _has_validation(run),
        "provenance": provenance,
        "config": _flat_config(run.config),
        "label_smoothing": format_number(run.config.label_smoothing),
        "figs": page.figs,
        "lr_find": _lr_find_rows(run.lr_find),
        "per_class": [{"name": classes[c], "support": int(stats["support"][c]), "correct": int(stats["correct"][c]),
                       "precision": _pct(stats["precision"][c]), "recall": _pct(stats["recall"][c]),
                       "f1": _pct(stats["f1"][c])} for c in range(len(classes))],
        "accuracy": _pct(stats["accuracy"]),
        "n_wrong_total": int((stats["pred"] != labels).sum()),
        "calibration": calibration,
        "cam_all_image": cam_all_image,
        "zero_maps": zero_maps,
        "search": search,
        "schedule": schedule,
        "compare": config_comparison(run.config, search["params"]) if search else [],
        "n_examples": n_examples,
    }


def _curve_figures(page: _Page, lr_sampled: bool = False) -> None:
    """Loss and accuracy per epoch, the learning rate per step, the LR range test. `lr_sampled`: the
    run is a search's trial whose max_lr the search drew (not a --max-lr flag)."""
    from reporting import figures

    run = page.run
    metrics, lr_find, cfg = run.metrics, run.lr_find, run.config
    if metrics:
        test_loss = run.summary.get("test_loss")
        objective = cfg.label_smoothing > 0 or cfg.l1 > 0
        val = _has_validation(run)
        figures.plot_curves(metrics, page.fig(
            "curves", "curves.png",
            f"Per epoch: plain cross-entropy of training batches{', validation' if val else ''} and the final test "
            + (f"(left), the training objective with its label smoothing"
               f"{' beside validation with the same smoothing' if val else ''} (middle), accuracy (right)"
               if objective else "(left), accuracy (right)")
            + ("" if val else "; no validation split (--val-size 0)")),
            label_smoothing=cfg.label_smoothing, l1=cfg.l1,
            test_loss=float(test_loss) if isinstance(test_loss, (int, float)) else None)
    if run.steps:
        figures.plot_lr_schedule(run.steps, page.fig(
            "lr", "lr_schedule.png", "Learning rate (left) and training loss (right) at every optimiser step "
                                     "(steps.jsonl), against the epoch"), max_lr=cfg.effective_max_lr,
            max_lr_source=cfg.max_lr_rule() if cfg.max_lr is None else
            "sampled by the search" if lr_sampled else "--max-lr")
    elif any(r.get("lr") is not None for r in metrics):
        figures.plot_lr_schedule([], page.fig("lr", "lr_schedule.png",
                                              "Learning rate at the last step of each epoch (this run predates the "
                                              "per-step record, steps.jsonl)"), metrics)
    if lr_find and lr_find.get("lrs"):
        figures.plot_lr_find(lr_find, page.fig(
            "lr_find", "lr_find.png",
            "LR range test: training loss against learning rate, suggested and chosen maximum LR marked"))


def _schedule_figure(page: _Page) -> dict[str, Any] | None:
    """A run trained with a schedule (config.json's aug_schedule: a --aug-schedule replay, or a PBT
    trial): the values each epoch trained with, from its metrics rows' "schedule". None for a run
    without one; else what the template says about it (a note instead of a figure when no row has one)."""
    from reporting import figures
    from reporting.search import read_lineage, schedule_from_metrics

    planned = (page.run.meta.get("config") or {}).get("aug_schedule")
    if not isinstance(planned, list) or not planned:
        return None
    epochs, entries = schedule_from_metrics(page.run.metrics)
    exploits, _ = read_lineage(page.run.path)      # a PBT trial's run directory has one
    info = {"entries": len(planned), "epochs": len(epochs),
            "exploits": [x["epoch"] for x in exploits]}
    if not entries:
        return info
    stretch = (f", stretched over {page.run.config.epochs} epochs" if len(planned) != page.run.config.epochs else "")
    figures.plot_schedule(epochs, entries, page.fig(
        "schedule", "schedule.png",
        f"The values each epoch trained with (metrics.jsonl, \"schedule\"), from the {len(planned)}-entry schedule "
        f"in config.json (aug_schedule{stretch}): each value holds for its whole epoch (one step per epoch); "
        f"probabilities share the first panel (0-1), every other field has its own scale"
        + (f"; dashed red lines: the exploits this trial adopted ({rundir.LINEAGE}), after which its weights "
           f"and values came from another trial" if exploits else "")),
        exploits=info["exploits"])
    return info


def _calibration_figure(page: _Page) -> list[dict[str, Any]]:
    """Reliability diagrams and ECE (15 bins) of the test predictions, plain and mirror-averaged
    when predictions.npz holds both (runs from before hold only the logits the run reported).
    Returns one row per variant for the table; the one the run reports is marked."""
    from reporting import figures

    pred, labels, tta = page.run.predictions, page.labels, page.run.config.tta
    if "logits_plain" in pred and "logits_tta" in pred:
        sources = [("Plain: one view per image", pred["logits_plain"], not tta),
                   ("Mirror-averaged (--tta)", pred["logits_tta"], tta)]
    else:
        sources = [("Mirror-averaged (--tta)" if tta else "Plain: one view per image", pred["logits"], True)]
    variants = []
    for label, logits, reported in sources:
        stats = calibration_stats(softmax(logits), labels, n_bins=15)
        variants.append({**stats, "label": label, "reported": reported})
    if not len(labels):
        return []
    figures.plot_reliability(variants, page.fig(
        "calibration", "calibration.png",
        "Reliability diagram of the test predictions: accuracy against confidence in 15 bins"
        + (", plain (left) and mirror-averaged (right)" if len(variants) == 2 else "")
        + f"; below, the number of test images in each bin. Bins with fewer than {figures.MIN_BIN_COUNT} "
          f"images are grey and get no gap bar: their accuracy rests on too few images to read a gap from"))
    return [{"label": v["label"], "ece": _pct(v["ece"]), "accuracy": _pct(v["accuracy"]),
             "mean_conf": _pct(v["mean_conf"]), "reported": v["reported"]} for v in variants]


def _data_figures(page: _Page, per_class: int = 10, n_images: int = 4, n_draws: int = 7) -> None:
    """Test images of each class, and the run's training augmentation drawn a few times per image."""
    from distributed.augment import build_train_transform
    from reporting import figures

    data, k = page.data, len(page.classes)
    by_class = [[data.test_x[i] for i in np.flatnonzero(data.test_y == c)[:per_class]] for c in range(k)]
    figures.class_samples(by_class, page.classes, page.fig(
        "samples", "samples.png", f"Up to {per_class} test images of each class, one class per row"))
    # The transform is seeded (Compose(seed=0)), so the report shows the same draws every build.
    train_tf = build_train_transform(page.run.config.aug, tuple(page.mean.tolist()))
    sources = [int(np.flatnonzero(data.test_y == c)[0]) for c in range(k) if (data.test_y == c).any()][:n_images]
    images, titles = [], []
    for i in sources:
        images.append(data.test_x[i])
        titles.append("original")
        for j in range(n_draws):
            images.append(train_tf(image=data.test_x[i])["image"])  # uint8, as the model's loader sends it
            titles.append(f"augmented {j + 1}")
    figures.image_grid(images, page.fig(
        "augment", "augmentation.png",
        f"{len(sources)} test images, each shown original then with {n_draws} random draws of the training "
        f"augmentation"), ncols=1 + n_draws, titles=titles)


def _example_figures(page: _Page, n_examples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Confusion matrix, the most confident mistakes and a random sample of correct predictions.

    Returns the predictions rows shown (mistakes most confident first, correct ones in test order).
    """
    from reporting import figures

    stats, labels = page.stats, page.labels
    figures.plot_confusion(stats["cm"], page.classes, page.fig(
        "confusion", "confusion.png", "Confusion matrix of the test set, counts (left) and row-normalised (right)"))
    wrong = np.flatnonzero(stats["pred"] != labels)
    wrong = wrong[np.argsort(-stats["conf"][wrong], kind="stable")][:n_examples]
    right = np.flatnonzero(stats["pred"] == labels)
    right = np.sort(np.random.default_rng(seed).permutation(right)[:n_examples])
    for key, rows, what, colour in (("wrong", wrong, "misclassified", "tab:red"),
                                    ("right", right, "correctly classified", "tab:green")):
        if len(rows):
            figures.image_grid(
                [page.image(r) for r in rows], page.fig(
                    key, f"{key}.png", f"{len(rows)} {what} test images with true class, predicted class and "
                                       f"confidence"),
                ncols=5, titles=[page.caption(r) for r in rows], title_colours=[colour] * len(rows))
    return wrong, right


def _gradcam_figures(page: _Page, model, cam_wrong: np.ndarray, cam_right: np.ndarray, right: np.ndarray,
                     wrong: np.ndarray) -> tuple[dict[str, Any] | None, int]:
    """GradCAM grids of the first shown examples, and of one image for every class.

    Targets are the classes stored in predictions.npz, so the maps explain the predictions the
    page shows.  Returns the description of the all-classes image (None without test images)
    and how many maps shown are all zero (labelled as such on the figures).
    """
    import torch

    from distributed.augment import ModelInput
    from distributed.model import LAYER_NAMES
    from reporting import figures
    from reporting.gradcam import GradCAM, gradcam_all_classes, overlay

    stats, labels, classes, layers = page.stats, page.labels, page.classes, LAYER_NAMES
    to_input = ModelInput(tuple(page.mean.tolist()), tuple(page.std.tolist()), channels_last=False)

    def normalised(rows: np.ndarray) -> torch.Tensor:
        return to_input(torch.from_numpy(np.stack([page.image(r) for r in rows])))

    def overlays(row: int, res, i: int) -> list[np.ndarray]:
        return [overlay(page.image(row), res.maps[name][i].cpu().numpy()) for name in layers]

    zero = [0]

    def notes(res, i: int) -> list[str]:
        """"all zero" over a map with no positive evidence for its class anywhere: jet shows it as
        flat blue, which a reader would otherwise take for a map."""
        flags = [ZERO_MAP if float(res.maps[name][i].max()) <= 1e-6 else "" for name in layers]
        zero[0] += sum(bool(f) for f in flags)
        return flags

    def row_label(r: int) -> str:
        return f"true {classes[labels[r]]}\npred {classes[stats['pred'][r]]}\n{100 * stats['conf'][r]:.0f}%"

    with GradCAM(model, layers) as cam:
        if len(cam_right):
            res = cam(normalised(cam_right), torch.as_tensor(stats["pred"][cam_right]))
            figures.cam_grid([[page.image(r)] + overlays(r, res, i) for i, r in enumerate(cam_right)],
                             ["image", *layers], [row_label(r) for r in cam_right], page.fig(
                "cam_right", "gradcam_correct.png",
                f"GradCAM heatmaps of {len(cam_right)} correctly classified images for the predicted class, "
                f"one row per image, one column per layer (layer1 to layer4)"),
                notes=[[""] + notes(res, i) for i in range(len(cam_right))])
        if len(cam_wrong):
            x = normalised(cam_wrong)
            by_pred = cam(x, torch.as_tensor(stats["pred"][cam_wrong]))
            by_true = cam(x, torch.as_tensor(labels[cam_wrong]))
            figures.cam_grid(
                [[page.image(r)] + overlays(r, by_pred, i) + overlays(r, by_true, i) for i, r in enumerate(cam_wrong)],
                ["image"] + [f"{which}\n{name}" for which in ("predicted", "true") for name in layers],
                [row_label(r) for r in cam_wrong], page.fig(
                    "cam_wrong", "gradcam_misclassified.png",
                    f"GradCAM heatmaps of {len(cam_wrong)} misclassified images: columns 2 to 5 explain the "
                    f"predicted class, columns 6 to 9 the true class, for layer1 to layer4"),
                notes=[[""] + notes(by_pred, i) + notes(by_true, i) for i in range(len(cam_wrong))])

    # The most confidently correct image: its true class's map is a clear reference for the other nine.
    pick = right[np.argmax(stats["conf"][right])] if len(right) else (wrong[0] if len(wrong) else None)
    if pick is None:
        return None, zero[0]
    res = gradcam_all_classes(model, normalised(np.array([pick]))[0], layers)
    img, probs = page.image(pick), stats["probs"][pick]
    flat = [[ZERO_MAP if float(res.maps[name][c].max()) <= 1e-6 else "" for c in range(len(classes))]
            for name in layers]
    zero[0] += sum(bool(f) for row in flat for f in row)
    figures.cam_grid([[img] + [overlay(img, res.maps[name][c].cpu().numpy()) for c in range(len(classes))]
                      for name in layers],
                     ["image"] + [f"{classes[c]}\n{100 * probs[c]:.1f}%" for c in range(len(classes))],
                     list(layers), page.fig(
        "cam_all", "gradcam_all_classes.png",
        f"GradCAM of one test image (true class {classes[labels[pick]]}) for each of the {len(classes)} classes, "
        f"one row per layer, with the model's probability for each class"), notes=[[""] + row for row in flat])
    return ({"true": classes[labels[pick]], "pred": classes[stats["pred"][pick]],
             "conf": f"{100 * stats['conf'][pick]:.1f}%", "test_index": int(page.run.predictions["indices"][pick])},
            zero[0])


def _summary_rows(run: Run, stats: dict[str, Any], search: dict[str, Any] | None = None) -> list[tuple[str, str]]:
    s = run.summary
    last_val = next((r.get("val_acc") for r in reversed(run.metrics) if r.get("val_acc") is not None), None)
    best_epoch = f" (epoch {s['best_epoch']})" if s.get("best_epoch") is not None else ""
    rate = s.get("images_per_sec")
    trial = " of the best trial" if search else ""
    if _has_validation(run):
        validation = [("Best validation accuracy", _pct(s.get("best_val_acc")) + best_epoch),
                      ("Final validation accuracy", _pct(last_val))]
    else:  # --val-size 0: no epoch was chosen, the final weights are the ones tested
        train = (run.meta.get("split") or {}).get("train")
        images = f"all {train:,} training images" if isinstance(train, int) else "every training image"
        validation = [("Best validation accuracy", f"none (--val-size 0: trained on {images}; the final "
                                                   f"weights are the ones tested)")]
    rows = [
        ("Test accuracy", _pct(s["test_acc"]) + (" (with --tta)" if run.config.tta else "")),
        *_refit_rows(search),
        ("Test loss (cross-entropy, no label smoothing)",
         _loss(s.get("test_loss"))),
        *validation,
        ("Epochs", str(s["epochs"])),
        ("Wall time (training)", _duration(s.get("wall_seconds"))),
        (f"Wall time (all{trial}: start-up, evaluation, checkpoints)", _duration(s.get("total_seconds"))),
        ("Training throughput", f"{float(rate):,.0f} images/s" if isinstance(rate, (int, float)) else "–"),
        ("Hardware", str(s["device"])),
        ("World size (processes)", str(s["world_size"])),
        ("Precision", precision_name(str(s["mixed_precision"]))),
        ("Parameters", f"{int(s['num_params']):,}"),
        ("Weights in this report", run.weights.name),
        ("Test images", f"{len(run.predictions['labels']):,}"),
        ("Normalisation mean / std", f"{_fmt_floats(s['mean'])} / {_fmt_floats(s['std'])}"),
    ]
    if search:
        c = search["counts"]
        at = next(i for i, (k, _) in enumerate(rows) if k == "Training throughput")
        stopped = "" if search.get("pbt") and not c["STOPPED"] else f", {c['STOPPED']} stopped early by ASHA"
        rows[at:at] = [("Search wall time (all trials)", _duration(search.get("wall_seconds"))),
                     ("Trials", f"{len(search['rows'])}: {c['TERMINATED']} completed (every epoch){stopped}, "
                                f"{c['ERROR']} failed")]
    return rows


def _has_validation(run: Run) -> bool:
    """Whether the run held out a validation split (not so with --val-size 0)."""
    return bool((run.meta.get("split") or {}).get("val", run.config.val_size))


def _refit_rows(search: dict[str, Any] | None) -> list[tuple[str, str]]:
    """A search's --refit beside its best trial: the best configuration trained again on every image."""
    refit = (search or {}).get("refit") or {}
    status = refit.get("status")
    if status is None:
        return []
    if status != "finished":
        how = f"failed: {refit.get('error')}" if status == "failed" else f"{status}: continue with --resume"
        return [("Refit test accuracy", f"none yet ({how})")]
    both = (f"; plain {_pct(refit.get('test_acc_plain'))}, mirror TTA {_pct(refit.get('test_acc_tta'))}"
            if refit.get("test_acc_tta") is not None else "")
    return [("Refit test accuracy", f"{_pct(refit.get('test_acc'))} (the best configuration trained again on all "
                                    f"{refit.get('train_images', 0):,} training images for {refit.get('epochs')} "
                                    f"epochs, in {Path(refit['run_dir']).name}/{both})")]


def _fmt_floats(values: Any) -> str:
    return "(" + ", ".join(f"{float(v):.4f}" for v in values) + ")"


def _lr_find_rows(lr_find: dict[str, Any] | None) -> list[tuple[str, str]]:
    if not lr_find:
        return []
    return [(k, f"{float(lr_find[k]):.4g}") for k in ("suggested_max_lr", "chosen_max_lr")
            if isinstance(lr_find.get(k), (int, float))]


def _render(context: dict[str, Any]) -> str:
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    # autoescape on for every template: run names, class names and config strings are user input.
    env = Environment(loader=FileSystemLoader(str(TEMPLATE_DIR)), autoescape=True, undefined=StrictUndefined,
                      trim_blocks=True, lstrip_blocks=True)
    env.filters["pct"] = _pct
    return env.get_template(TEMPLATE).render(**context)
