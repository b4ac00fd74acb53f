"""Matplotlib figures of the report, each written to one PNG (Figure objects, no pyplot, no display).

Every function takes plain numbers/arrays and a path, so the figures can be tested and reused
without a run directory.  Images are float RGB [H, W, 3] in [0, 1] or uint8.

Every string drawn is plain text: class names, run names and hyperparameter values are user
input, and matplotlib would read `$...$` or a backslash in them as math text (and fail on it).
Each public function runs with `text.parse_math` off (`_plain_text`).
"""
from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

_DPI = 100
_FONT_PX = 13      # text size in the image mosaics, in output pixels
# The page's content column is ~1340 px at a 1400 px window: wider plots would be shrunk, and their
# text with them, so none is drawn wider than that.
_MAX_WIDTH_IN = 13.4


def _plain_text(fn):
    """Run a figure function with math text off: every Text created inside takes `parse_math`
    from the rc context at creation, and rc_context restores the caller's settings after."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from matplotlib import rc_context

        with rc_context({"text.parse_math": False, "text.usetex": False}):
            return fn(*args, **kwargs)
    return wrapper


def _figure(**kwargs):
    """A matplotlib Figure drawn by the Agg canvas, outside pyplot.

    No pyplot means no process-wide state: no backend switch, no figure registry to leak into,
    so building a report inside a training process or a notebook changes nothing there.
    """
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def _plain_log_ticks(ax, axis: str) -> None:
    """Tick labels of a log axis as plain numbers: matplotlib's default writes them as math text
    ($10^{-2}$), which `_plain_text` turns off, so they would print as their source."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    target = ax.xaxis if axis == "x" else ax.yaxis
    target.set_major_locator(LogLocator(base=10, numticks=8))
    target.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    target.set_minor_formatter(NullFormatter())


def _save(fig, path: Path) -> Path:
    path = Path(path)
    fig.savefig(path, dpi=_DPI, bbox_inches="tight", facecolor="white")
    return path


def _column(rows: Sequence[dict[str, Any]], key: str) -> np.ndarray:
    """Per-epoch values of one metric, NaN where missing or null (e.g. no validation split)."""
    return np.array([np.nan if r.get(key) is None else float(r[key]) for r in rows], dtype=float)


def _loss_axis(ax, values: list[np.ndarray], title: str) -> None:
    """Log scale when the losses span more than ~1.5 decades (a diverging epoch would otherwise
    flatten every other point onto the axis)."""
    from matplotlib.ticker import MaxNLocator

    finite = np.concatenate([v[np.isfinite(v)] for v in values]) if values else np.array([])
    log = bool(finite.size and finite.min() > 0 and finite.max() / finite.min() > 30)
    if log:
        ax.set_yscale("log")
        _plain_log_ticks(ax, "y")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("loss")
    ax.set_title(title + (" (log scale)" if log else ""), fontsize=11)
    ax.grid(alpha=0.3, which="both" if log else "major")


@_plain_text
def plot_curves(metrics: Sequence[dict[str, Any]], path: Path, *, label_smoothing: float = 0.0, l1: float = 0.0,
                test_loss: float | None = None) -> Path:
    """Loss and accuracy per epoch, every panel comparing like with like.

    Left: plain cross-entropy (no label smoothing), training batches beside validation, and the
    final test loss as one point. Middle (only when the run optimised something else, i.e.
    label smoothing or L1): the training objective beside the validation loss with the same
    smoothing. Right: accuracy. Older runs without `train_ce` show what they logged, labelled.
    """
    from matplotlib.ticker import MaxNLocator

    epochs = _column(metrics, "epoch")
    objective = label_smoothing > 0 or l1 > 0
    train_ce = _column(metrics, "train_ce")
    if not np.isfinite(train_ce).any() and not objective:
        train_ce = _column(metrics, "train_loss")  # without smoothing or L1 the objective is the plain CE
    panels = 3 if objective else 2
    fig = _figure(figsize=(min(_MAX_WIDTH_IN, 4.6 * panels), 3.9))
    axes = list(fig.subplots(1, panels))

    ax = axes.pop(0)
    drawn = []
    for y, style, label in ((train_ce, "-o", "train (augmented batches, train mode)"),
                            (_column(metrics, "val_loss"), "-s", "validation")):
        if np.isfinite(y).any():
            ax.plot(epochs, y, style, ms=3, label=label)
            drawn.append(y)
    if test_loss is not None and math.isfinite(test_loss) and len(epochs):
        ax.plot([epochs[-1]], [test_loss], "D", color="tab:red", ms=6, label="test (final weights)")
        drawn.append(np.array([test_loss]))
    _loss_axis(ax, drawn, "Cross-entropy, no label smoothing")
    ax.legend(fontsize=8)

    if objective:
        ax = axes.pop(0)
        what = " + ".join(([f"label smoothing {label_smoothing:g}"] if label_smoothing else [])
                          + ([f"L1 {l1:g}"] if l1 else []))
        drawn = []
        val_smoothed = _column(metrics, "val_loss_smoothed")
        for y, style, label in ((_column(metrics, "train_loss"), "-o", "train (the loss optimised)"),
                                (val_smoothed, "-s", "validation, same smoothing" + (" (no L1 term)" if l1 else ""))):
            if np.isfinite(y).any():
                ax.plot(epochs, y, style, ms=3, label=label)
                drawn.append(y)
        _loss_axis(ax, drawn, f"Training objective: CE with {what}")
        ax.legend(fontsize=8)

    ax = axes.pop(0)
    for split, style, label in (("train", "-o", "train (augmented batches)"), ("val", "-s", "validation")):
        y = _column(metrics, f"{split}_acc") * 100
        if np.isfinite(y).any():
            ax.plot(epochs, y, style, ms=3, label=label)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Accuracy", fontsize=11)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


@_plain_text
def plot_lr_schedule(steps: Sequence[dict[str, Any]], path: Path, metrics: Sequence[dict[str, Any]] = (),
                     max_lr: float | None = None, max_lr_source: str = "--max-lr") -> Path:
    """Learning rate (left) and training loss (right) at every optimiser step, against the epoch.

    `steps` are steps.jsonl rows; a run without them (older runs) gets the per-epoch rate from
    `metrics`, titled as such.
    """
    from matplotlib.ticker import MaxNLocator

    if steps:
        epoch = np.array([float(r["epoch"]) for r in steps])
        step = np.array([float(r["step"]) for r in steps])
        per_epoch = max(1, int(np.sum(epoch == epoch[-1])))
        # x in epochs: step s of epoch e sits at e - 1 + (position in the epoch) / steps per epoch
        x = step / per_epoch
        lr, loss = _column(steps, "lr"), _column(steps, "loss")
        fig = _figure(figsize=(11, 3.5))
        ax, ax_loss = fig.subplots(1, 2)
        ax.plot(x, lr, "-", lw=1.5)
        peak = int(np.nanargmax(lr))
        ax.plot([x[peak]], [lr[peak]], "o", color="tab:red", ms=5,
                label=f"highest used: {lr[peak]:.4g} at step {int(step[peak])}")
        if max_lr:  # OneCycle reaches it only when its warm-up ends on a whole step
            # rounded as the run header rounds it; the source is the flag or the batch rule
            ax.axhline(max_lr, color="0.4", ls=":", lw=1, label=f"max_lr {max_lr:.4g} ({max_lr_source})")
        ax.legend(fontsize=8)
        ax.set_title(f"Learning rate at each of {len(steps):,} optimiser steps", fontsize=11)
        ax_loss.plot(x, loss, "-", lw=0.8, alpha=0.45, label="each step")
        if len(loss) >= 5:
            k = max(2, min(25, len(loss) // 10))
            smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
            ax_loss.plot(x[k - 1:], smooth, "-", lw=1.8, color="tab:blue", label=f"mean of {k} steps")
        finite = loss[np.isfinite(loss)]
        if finite.size and finite.min() > 0 and finite.max() / finite.min() > 30:
            ax_loss.set_yscale("log")
            _plain_log_ticks(ax_loss, "y")
        ax_loss.set_title("Training loss per step (the loss optimised)", fontsize=11)
        ax_loss.set_ylabel("loss")
        ax_loss.legend(fontsize=8)
        axes = (ax, ax_loss)
    else:
        fig = _figure(figsize=(5.5, 3.3))
        ax = fig.subplots()
        ax.plot(_column(metrics, "epoch"), _column(metrics, "lr"), "-o", ms=3)
        ax.set_title("Learning rate at the last step of each epoch\n(this run has no per-step record)", fontsize=10)
        axes = (ax,)
    ax.set_ylabel("learning rate")
    for a in axes:
        a.set_xlabel("epoch")
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
        a.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


@_plain_text
def plot_lr_find(lr_find: dict[str, Any], path: Path) -> Path:
    """LR range test: loss against learning rate (log scale), suggested and chosen max LR marked.

    Raw losses faint, the smoothed curve (what the suggestion is computed on) bold when present;
    the y range stops at a few times the starting loss, since the test ends by diverging.
    """
    fig = _figure(figsize=(5.5, 3.2))
    ax = fig.subplots()
    lrs = np.asarray(lr_find["lrs"], dtype=float)
    raw = np.asarray(lr_find["losses"], dtype=float)
    smoothed = np.asarray(lr_find["smoothed"], dtype=float) if lr_find.get("smoothed") else None
    ax.plot(lrs, raw, "-", lw=1, alpha=0.4 if smoothed is not None else 1.0, label="loss")
    if smoothed is not None and len(smoothed) == len(lrs):
        ax.plot(lrs, smoothed, "-", lw=1.8, color="tab:blue", label="smoothed")
    finite = raw[np.isfinite(raw)]
    if finite.size:
        ax.set_ylim(finite.min() - 0.05 * abs(finite.min()), min(finite.max(), 3 * finite[0]) * 1.05)
    ax.set_xscale("log")
    _plain_log_ticks(ax, "x")
    for key, colour, style in (("suggested_max_lr", "tab:orange", "--"), ("chosen_max_lr", "tab:red", ":")):
        value = lr_find.get(key)
        if value:
            ax.axvline(float(value), color=colour, ls=style, lw=2,
                       label=f"{key.split('_')[0]} max lr = {float(value):.3g}")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_title("LR range test")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


@_plain_text
def image_grid(images: Sequence[np.ndarray], path: Path, ncols: int, titles: Sequence[str] | None = None,
               title_colours: Sequence[str] | None = None, row_labels: Sequence[str] | None = None,
               scale: int = 4) -> Path:
    """Images in a grid, optionally with a caption above each image and a label left of each row.

    `scale` is the integer upscaling of each image (4: a 32x32 image becomes 128x128 pixels).
    """
    n = len(images)
    nrows = max(1, -(-n // ncols))
    cells = [[images[r * ncols + c] if r * ncols + c < n else None for c in range(ncols)] for r in range(nrows)]
    caps = None
    if titles:
        caps = [[titles[r * ncols + c] if r * ncols + c < n else "" for c in range(ncols)] for r in range(nrows)]
    colours = None
    if title_colours:
        colours = [[title_colours[min(r * ncols + c, n - 1)] for c in range(ncols)] for r in range(nrows)]
    return _mosaic(cells, path, captions=caps, caption_colours=colours, row_labels=row_labels, scale=scale)


@_plain_text
def class_samples(images_by_class: Sequence[Sequence[np.ndarray]], classes: Sequence[str], path: Path,
                  scale: int = 3) -> Path:
    """One row per class (labelled), its sample images left to right; short rows stay short."""
    ncols = max((len(r) for r in images_by_class), default=1) or 1
    cells = [[row[c] if c < len(row) else None for c in range(ncols)] for row in images_by_class]
    return _mosaic(cells, path, row_labels=list(classes), scale=scale)


def _mosaic(cells: Sequence[Sequence[np.ndarray | None]], path: Path, *, captions=None, caption_colours=None,
            column_titles: Sequence[str] | None = None, row_labels: Sequence[str] | None = None,
            notes: Sequence[Sequence[str]] | None = None, scale: int = 4, gap: int = 8) -> Path:
    """Draw a table of small images as ONE upscaled bitmap with text around it.

    One Axes per image costs ~0.1 s each in matplotlib; a 100-image grid as a single imshow
    plus text labels renders in a fraction of a second.  Pixels are repeated (nearest
    neighbour), so every pixel the model saw stays visible.
    """
    nrows, ncols = len(cells), max(len(r) for r in cells)
    h, w = next((np.asarray(c).shape[:2] for row in cells for c in row if c is not None), (32, 32))
    ch, cw = h * scale, w * scale
    line = _FONT_PX + 4                         # pixels per text line
    cap_lines = max((str(t).count("\n") + 1 for row in (captions or []) for t in row if t), default=0)
    head_lines = max((str(t).count("\n") + 1 for t in (column_titles or [])), default=0)
    cap_h = cap_lines * line + (4 if cap_lines else 0)
    head_h = head_lines * line + (4 if head_lines else 0)
    label_w = (max((max(len(s) for s in str(t).split("\n")) for t in row_labels), default=0) * 8 + 14
               if row_labels else 0)
    row_h = cap_h + ch + gap
    # A column is as wide as its widest caption or title line (~0.62 em per character), so long
    # captions ("pred: automobile 100%") never run into their neighbours.
    texts = [t for row in (captions or []) for t in row if t] + [t for t in (column_titles or []) if t]
    widest = max((len(line) for t in texts for line in str(t).split("\n")), default=0)
    col_w = max(cw + gap, int(widest * _FONT_PX * 0.62) + gap)
    H, W = head_h + nrows * row_h, label_w + ncols * col_w

    def centre(c: int) -> float:  # x of the middle of column c
        return label_w + c * col_w + (col_w - gap) / 2

    canvas = np.ones((H, W, 3), dtype=np.float32)
    for r, row in enumerate(cells):
        for c, img in enumerate(row):
            if img is None:
                continue
            a = np.asarray(img)
            a = a.astype(np.float32) / 255.0 if a.dtype == np.uint8 else np.clip(a.astype(np.float32), 0, 1)
            y, x = head_h + r * row_h + cap_h, int(centre(c) - cw / 2)
            canvas[y:y + ch, x:x + cw] = a.repeat(scale, 0).repeat(scale, 1)
    fig = _figure(figsize=(W / _DPI, H / _DPI), dpi=_DPI)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(canvas, interpolation="nearest")
    ax.set_axis_off()
    text = dict(fontsize=_FONT_PX * 72 / _DPI, ha="center", va="bottom", linespacing=1.15)
    for c, t in enumerate(column_titles or []):
        ax.text(centre(c), head_h - 3, t, fontweight="bold", **text)
    for r in range(nrows):
        y0 = head_h + r * row_h
        if row_labels and r < len(row_labels):
            ax.text(label_w - 8, y0 + cap_h + ch / 2, row_labels[r], fontsize=text["fontsize"], ha="right",
                    va="center", linespacing=1.15)
        for c in range(ncols):
            t = captions[r][c] if captions and c < len(captions[r]) else ""
            if t:
                colour = caption_colours[r][c] if caption_colours else "black"
                ax.text(centre(c), y0 + cap_h - 2, t, color=colour, **text)
            note = notes[r][c] if notes and r < len(notes) and c < len(notes[r]) else ""
            if note:  # written over the image itself, on a white box
                ax.text(centre(c), y0 + cap_h + ch / 2, note, fontsize=text["fontsize"],
                        ha="center", va="center", linespacing=1.15,
                        bbox=dict(boxstyle="round,pad=0.25", facecolor="white", alpha=0.85, lw=0))
    fig.savefig(path, dpi=_DPI, facecolor="white")
    return Path(path)


@_plain_text
def plot_confusion(cm: np.ndarray, classes: Sequence[str], path: Path) -> Path:
    """Confusion matrix as counts (left) and row-normalised (right); rows are true classes."""
    cm = np.asarray(cm)
    totals = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, totals, out=np.zeros(cm.shape, dtype=float), where=totals > 0)
    k = len(classes)
    fig = _figure(figsize=(_MAX_WIDTH_IN, 5.9))
    axes = fig.subplots(1, 2)
    for ax, data, title, fmt in ((axes[0], cm, "Counts", "{:d}"), (axes[1], norm, "Row-normalised (recall)", "{:.2f}")):
        im = ax.imshow(data, cmap="Blues", vmin=0)
        ax.set_title(title)
        ax.set_xticks(range(k), classes, rotation=45, ha="right")
        ax.set_yticks(range(k), classes)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        top = data.max() if data.size else 0
        for i in range(k):
            for j in range(k):
                v = data[i, j]
                ax.text(j, i, fmt.format(int(v) if fmt == "{:d}" else v), ha="center", va="center", fontsize=7,
                        color="white" if top and v > 0.5 * top else "black")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    return _save(fig, path)


@_plain_text
def cam_grid(rows: Sequence[Sequence[np.ndarray]], column_titles: Sequence[str], row_labels: Sequence[str],
             path: Path, notes: Sequence[Sequence[str]] | None = None) -> Path:
    """GradCAM table: one row per image, one column per map (the first column is usually the image).

    `notes`: text written over a cell (e.g. "all zero" for a map with no positive evidence,
    which the colour map alone shows as flat blue).
    """
    ncols = max((len(r) for r in rows), default=1)
    # 4x upscaled 32-pixel maps fit 9 columns in the page's width; the 11 of "every class" get 3x.
    return _mosaic(rows, path, column_titles=column_titles, row_labels=row_labels, notes=notes,
                   scale=4 if ncols <= 9 else 3)


def axis_scale(spec: Any, values: np.ndarray) -> str:
    """How a hyperparameter's axis is drawn, from its search-space spec (tuning/space.py):
    "log" for loguniform, "symlog" for off_or_loguniform (0 = off beside a log range),
    "category" for choice and non-numbers, else "linear" (uniform, randint, a space we do not know)."""
    kind = spec.get("type") if isinstance(spec, dict) else None
    if not np.isfinite(values).all() or kind == "choice":
        return "category"
    if kind == "loguniform":
        return "log" if (values > 0).all() else "symlog"
    if kind == "off_or_loguniform":
        return "symlog"
    return "linear"


def _number_ticks(ax, axis: str, scale: str, spec: Any) -> None:
    """Few, short tick labels: 1-2-5 decades on log axes, <= 5 ticks on linear ones, no minor labels."""
    from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter, SymmetricalLogLocator

    target = ax.xaxis if axis == "x" else ax.yaxis
    fmt = FuncFormatter(lambda v, _: "0" if v == 0 else f"{v:.3g}")
    if scale == "log":
        target.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0), numticks=6))
    elif scale == "symlog":
        target.set_major_locator(SymmetricalLogLocator(base=10, linthresh=float(spec["lower"]), subs=(1.0,)))
    else:
        target.set_major_locator(MaxNLocator(nbins=5))
    target.set_major_formatter(fmt)
    target.set_minor_formatter(NullFormatter())


def _range(spec: Any, values: np.ndarray, scale: str) -> tuple[float, float] | None:
    """The searched range (the space's lower-upper), widened to hold every value drawn: a trial outside
    it (a space changed on --resume, an older search.json) is drawn where it is, not off the axis."""
    finite = values[np.isfinite(values)]
    if scale in ("log", "symlog"):
        finite = finite[finite > 0]  # 0 is "off" on a symlog axis, below the log range
    bounds = []
    if isinstance(spec, dict) and all(isinstance(spec.get(k), (int, float)) and not isinstance(spec.get(k), bool)
                                      for k in ("lower", "upper")):
        bounds = [float(spec["lower"]), float(spec["upper"])]
    both = np.concatenate([np.asarray(bounds, float), finite])
    if not both.size:
        return None
    return float(both.min()), float(both.max())


def _set_scale(ax, axis: str, scale: str, spec: Any, values: np.ndarray) -> None:
    """The axis scale, few plain tick labels, and limits that hold the searched range and every value
    (so where the trials fell within the range shows, not only among themselves)."""
    setter = ax.set_xscale if axis == "x" else ax.set_yscale
    limits = _range(spec, values, scale)
    if scale == "symlog":
        linthresh = float(spec["lower"]) if isinstance(spec, dict) and spec.get("lower") else (
            limits[0] if limits and limits[0] > 0 else 1e-8)
        setter("symlog", linthresh=linthresh, linscale=0.5)
        spec = {**(spec if isinstance(spec, dict) else {}), "lower": linthresh}
    elif scale == "log":
        setter("log")
    _number_ticks(ax, axis, scale, spec)
    if limits is None:
        return
    lo, hi = limits
    if scale == "log":
        padded = (lo / 1.2, hi * 1.2)
    elif scale == "symlog":
        padded = (-0.3 * float(spec["lower"]), hi * 1.2)
    else:
        pad = 0.04 * (hi - lo) if hi > lo else 0.5
        padded = (lo - pad, hi + pad)
    (ax.set_xlim if axis == "x" else ax.set_ylim)(*padded)


def _categories(raw: Sequence[Any], spec: Any) -> list[str]:
    """The categories of a choice axis: the space's values in its order, then any other value seen."""
    listed = [str(v) for v in spec.get("values", [])] if isinstance(spec, dict) else []
    return list(dict.fromkeys(listed + sorted({str(v) for v in raw})))


@_plain_text
def plot_hparams(rows: Sequence[dict[str, Any]], params: Sequence[str], metric: str, path: Path,
                 space: dict[str, Any] | None = None, labels: dict[str, str] | None = None) -> Path:
    """One scatter per hyperparameter: its value against the trial's best validation accuracy.

    The x axis follows the search space: log for log-uniform draws, linear for uniform ones,
    symlog (0 beside a log range) for "off or log-uniform", categories for choices and text. It spans
    the space's range and every value in `rows`, so each trial is drawn; one without a result (failed)
    as a red x below the others (the caption says so: a legend would hide points). `space` is the space the
    values were drawn from (for learning rates: scaled to the search's batch); `labels` names axes.
    """
    space, labels = space or {}, labels or {}
    ncols = min(3, max(1, len(params)))
    nrows = -(-len(params) // ncols)
    fig = _figure(figsize=(min(_MAX_WIDTH_IN, 4.6 * ncols), 3.3 * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    y = np.array([_float(r.get(metric)) for r in rows]) * 100
    scored = np.isfinite(y)
    for ax, p in zip(axes.flat, params):
        raw = [r.get(p) for r in rows]
        xs = np.array([_float(v) for v in raw])
        scale = axis_scale(space.get(p), xs) if len(xs) else "linear"
        if scale == "category":
            cats = _categories(raw, space.get(p))
            xs = np.array([cats.index(str(v)) for v in raw], dtype=float)
            ax.set_xticks(range(len(cats)), cats, rotation=20, ha="right", fontsize=8)
            ax.set_xlim(-0.5, len(cats) - 0.5)
        else:
            _set_scale(ax, "x", scale, space.get(p), xs)
            ax.tick_params(axis="x", labelsize=8)
        ax.scatter(xs[scored], y[scored], s=25, alpha=0.8, label="trial")
        if not scored.all():  # a failed trial has no accuracy: an x at the bottom, so it is still drawn
            if scored.any():  # room below the lowest accuracy, so the x is not read as one
                lo, hi = float(y[scored].min()), float(y[scored].max())
                span = max(hi - lo, 1.0)
                ax.set_ylim(lo - 0.3 * span, hi + 0.08 * span)
            ax.scatter(xs[~scored], np.full(int((~scored).sum()), 0.03), marker="x", color="tab:red", s=30,
                       transform=ax.get_xaxis_transform(), label="no validation result")
        kind = space[p].get("type") if isinstance(space.get(p), dict) else None
        ax.set_xlabel(labels.get(p) or (f"{p} ({kind})" if kind else p), fontsize=9)
        ax.set_ylabel("best val accuracy (%)")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(params):]:
        ax.axis("off")
    fig.tight_layout()
    return _save(fig, path)


_STATUS_COLOURS = {"TERMINATED": "tab:blue", "STOPPED": "tab:orange", "ERROR": "tab:red"}


@_plain_text
def plot_search_curves(trials: Sequence[dict[str, Any]], path: Path, best: str | None = None) -> Path:
    """Validation accuracy against epoch for every trial on one plot; ASHA's early stops end early.

    `trials`: dicts with trial_id, status, epochs (list) and val_acc (list, fractions).
    The best trial is drawn black and thick; the colour of the others is their status.
    """
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    fig = _figure(figsize=(9, 4.2))
    ax = fig.subplots()
    for t in trials:
        x, y = np.asarray(t["epochs"], float), np.asarray(t["val_acc"], float) * 100
        if not len(x):
            continue
        is_best = t["trial_id"] == best
        colour = "black" if is_best else _STATUS_COLOURS.get(t["status"], "tab:gray")
        ax.plot(x, y, "-o", ms=3, lw=2.4 if is_best else 1.2, color=colour, alpha=1.0 if is_best else 0.7,
                zorder=3 if is_best else 2)
        if t["status"] == "STOPPED":  # where ASHA stopped it
            ax.plot([x[-1]], [y[-1]], "x", color=colour, ms=8, mew=2)
    handles = [Line2D([], [], color="black", lw=2.4, label=f"best trial {best}")] if best else []
    present = {t["status"] for t in trials if len(t["epochs"]) and t["trial_id"] != best}
    handles += [Line2D([], [], color=c, lw=1.2, label={"TERMINATED": "completed (every epoch)",
                                                      "STOPPED": "stopped early by ASHA (x)",
                                                      "ERROR": "failed"}[s])
                for s, c in _STATUS_COLOURS.items() if s in present]
    ax.legend(handles=handles, fontsize=8, loc="best")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(f"Validation accuracy of all {len(trials)} trials", fontsize=11)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def _unit_position(values: np.ndarray, spec: Any, scale: str) -> tuple[np.ndarray, list[tuple[float, str]]]:
    """Values mapped onto [0, 1] the way the search space draws them, over the space's range widened to
    hold every value (`_range`), and (position, label) ticks at both ends and the middle."""
    limits = _range(spec, values, scale) or (0.0, 1.0)
    lo, hi = limits
    if scale in ("log", "symlog") and lo > 0:
        off = scale == "symlog"
        # symlog: 0 ("off") at the bottom, the log range above it from 0.15 to 1
        base = 0.15 if off else 0.0
        span = math.log(hi) - math.log(lo) if hi > lo else 1.0
        with np.errstate(divide="ignore", invalid="ignore"):
            pos = base + (1 - base) * (np.log(np.maximum(values, 1e-300)) - math.log(lo)) / span
        if off:
            pos = np.where(values == 0, 0.0, pos)
        ticks = [(base, f"{lo:.3g}"), (base + (1 - base) / 2, f"{math.sqrt(lo * hi):.3g}"), (1.0, f"{hi:.3g}")]
        return pos, ([(0.0, "off (0)")] if off else []) + ticks
    span = hi - lo if hi > lo else 1.0
    pos = (values - lo) / span
    return pos, [(0.0, f"{lo:.3g}"), (0.5, f"{(lo + hi) / 2:.3g}"), (1.0, f"{hi:.3g}")]


@_plain_text
def plot_parallel(rows: Sequence[dict[str, Any]], params: Sequence[str], metric: str, path: Path,
                  space: dict[str, Any] | None = None, best: str | None = None,
                  names: dict[str, str] | None = None) -> Path:
    """Parallel coordinates: one vertical axis per sampled hyperparameter (scaled as the search space
    draws it, spanning its range and every value), one line per trial coloured by its best validation
    accuracy; trials without a validation result grey and dashed, the best trial thick. `names`
    name the axes (their first line is used: the columns are narrow)."""
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    space = space or {}
    n = len(params)
    fig = _figure(figsize=(min(_MAX_WIDTH_IN, max(8.0, 1.45 * n + 2.5)), 4.8))
    ax = fig.add_axes((0.05, 0.2, 0.82, 0.68))
    cax = fig.add_axes((0.9, 0.2, 0.018, 0.68))
    columns, labels = [], []
    for p in params:
        raw = [r.get(p) for r in rows]
        xs = np.array([_float(v) for v in raw])
        scale = axis_scale(space.get(p), xs) if len(xs) else "linear"
        if scale == "category":
            cats = _categories(raw, space.get(p))
            pos = np.array([cats.index(str(v)) / max(1, len(cats) - 1) for v in raw]) if cats else xs
            ticks = [(i / max(1, len(cats) - 1), c) for i, c in enumerate(cats)]
        else:
            pos, ticks = _unit_position(xs, space.get(p), scale)
        columns.append(pos)
        labels.append(ticks)
    acc = np.array([_float(r.get(metric)) for r in rows]) * 100
    ok = acc[np.isfinite(acc)]
    norm = Normalize(vmin=float(ok.min()) if ok.size else 0.0, vmax=float(ok.max()) if ok.size and ok.max() > ok.min()
                     else (float(ok.min()) + 1 if ok.size else 1.0))
    cmap = colormaps["viridis"]
    xs_axis = np.arange(n)
    order = np.argsort(np.where(np.isfinite(acc), acc, -np.inf))  # best drawn last, on top
    for i in order:
        ys = np.array([c[i] for c in columns], dtype=float)
        trial = rows[i].get("trial_id")
        if not np.isfinite(acc[i]):
            ax.plot(xs_axis, ys, "--", color="0.6", lw=1, alpha=0.8)
        else:
            ax.plot(xs_axis, ys, "-", color=cmap(norm(acc[i])), lw=3 if trial == best else 1.4,
                    alpha=1.0 if trial == best else 0.85, marker="o", ms=3)
    for j, ticks in enumerate(labels):
        ax.axvline(j, color="0.3", lw=0.8)
        for y, text in ticks:
            ax.text(j + 0.04, y, text, fontsize=7.5, va="center", ha="left", color="0.25",
                    bbox=dict(boxstyle="round,pad=0.1", facecolor="white", alpha=0.7, lw=0))
    def name(p: str) -> str:
        first = ((names or {}).get(p) or "").split("\n")[0]
        if first:  # "max_lr (loguniform), as trained at batch 50:" -> three short lines
            return first.rstrip(":").replace(" (", "\n(").replace(", ", "\n")
        return f"{p}\n({space[p]['type']})" if isinstance(space.get(p), dict) else p

    ax.set_xticks(xs_axis, [name(p) for p in params], fontsize=8.5)
    ax.set_xlim(-0.2, n - 0.5)
    ax.set_ylim(-0.06, 1.06)
    ax.set_yticks([])
    for side in ("left", "right", "top"):
        ax.spines[side].set_visible(False)
    ax.set_title("Sampled hyperparameters of every trial (dashed grey: no validation result)", fontsize=11)
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), cax=cax, label="best val accuracy (%)")
    return _save(fig, path)


# A bin's accuracy from fewer images than this is noise (one image is 0 or 100%): drawn grey, no gap.
MIN_BIN_COUNT = 20


@_plain_text
def plot_reliability(variants: Sequence[dict[str, Any]], path: Path, min_count: int = MIN_BIN_COUNT) -> Path:
    """Reliability diagrams side by side, one per variant (e.g. plain and mirror-averaged logits).

    Each variant is `calibration_stats`' dict plus a "label": per bin the accuracy (bar) against
    the mean confidence (the diagonal is perfect calibration; red is the gap), and below it the
    number of test images in each bin. A bin with fewer than `min_count` images gets a grey
    accuracy bar and no gap: a handful of images would draw a gap as tall as the axis.
    """
    from matplotlib.patches import Patch

    n = len(variants)
    fig = _figure(figsize=(min(_MAX_WIDTH_IN, 5.2 * n), 5.6))
    grid = fig.add_gridspec(2, n, height_ratios=(3, 1), hspace=0.08)
    for j, v in enumerate(variants):
        ax = fig.add_subplot(grid[0, j])
        hist = fig.add_subplot(grid[1, j], sharex=ax)
        lower, upper = np.asarray(v["bin_lower"]), np.asarray(v["bin_upper"])
        count, acc, conf = np.asarray(v["count"]), np.asarray(v["acc"], float), np.asarray(v["conf"], float)
        width = upper - lower
        enough, sparse = count >= min_count, (count > 0) & (count < min_count)
        ax.bar(lower[enough], acc[enough], width=width[enough], align="edge", color="tab:blue", edgecolor="white",
               label="accuracy in bin")
        gap_lo, gap_hi = np.minimum(acc, conf), np.maximum(acc, conf)
        ax.bar(lower[enough], (gap_hi - gap_lo)[enough], bottom=gap_lo[enough], width=width[enough], align="edge",
               color="none", edgecolor="tab:red", hatch="///", lw=0.8, label="gap to mean confidence")
        ax.bar(lower[sparse], acc[sparse], width=width[sparse], align="edge", color="0.82", edgecolor="white",
               label=f"under {min_count} images: accuracy only, no gap")
        ax.plot([0, 1], [0, 1], "--", color="0.3", lw=1, label="perfect calibration")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_ylabel("accuracy")
        ax.set_title(f"{v['label']}: ECE {100 * v['ece']:.2f}%", fontsize=11)
        handles = [Patch(color="tab:blue", label="accuracy in bin"),
                   Patch(facecolor="none", edgecolor="tab:red", hatch="///", label="gap to mean confidence"),
                   Patch(color="0.82", label=f"bin under {min_count} images: no gap drawn")]
        ax.legend(handles=handles + ax.get_lines()[:1], fontsize=8, loc="upper left")
        ax.tick_params(labelbottom=False)
        ax.grid(alpha=0.3)
        hist.bar(lower[enough], count[enough], width=width[enough], align="edge", color="0.45", edgecolor="white")
        hist.bar(lower[sparse], count[sparse], width=width[sparse], align="edge", color="0.82", edgecolor="white")
        top = max(1, int(count.max())) if count.size else 1
        for lo_, w, c in zip(lower, width, count):
            if c > 0:  # the count itself: the bar heights alone hide a bin of 3 beside one of 400
                hist.text(lo_ + w / 2, c + 0.04 * top, str(int(c)), ha="center", va="bottom", fontsize=6.5)
        hist.set_ylim(0, top * 1.35)
        hist.set_xlabel("confidence (probability of the predicted class)")
        hist.set_ylabel("images")
        hist.grid(alpha=0.3)
    fig.subplots_adjust(left=0.08, right=0.98, top=0.93, bottom=0.1, wspace=0.25)
    return _save(fig, path)


def _float(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


# A field whose name ends so is a probability per image (flip_p, affine_p, color_p, cutout_p): drawn
# together on one 0-1 panel; every other scheduled field has its own scale and its own panel.
PROBABILITY_SUFFIX = "_p"
# The unit of each scheduled field's values (distributed/config.py's AugConfig), for its panel's title.
_UNITS = {"shift_limit": "+- fraction of the side", "scale_limit": "+- fraction", "rotate_limit": "+- degrees",
          "hue_shift": "+- HSV units", "sat_shift": "+- HSV units", "val_shift": "+- HSV units",
          "brightness": "+- fraction", "contrast": "+- fraction", "cutout_min": "px", "cutout_max": "px",
          "dropout": "probability"}
# Fields whose useful values span decades: a log axis when every value is positive and they do.
_DECADE_FIELDS = ("weight_decay", "l1")


def _epoch_ticks(ax, last: int) -> None:
    """Whole epochs on an axis from 0.5 to last + 0.5: every one up to 12, else a few (matplotlib's
    integer locator falls back to fractions when the range holds one integer)."""
    from matplotlib.ticker import MaxNLocator

    if last <= 12:
        ax.set_xticks(range(1, last + 1))
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))


def schedule_panels(fields: Sequence[str]) -> list[tuple[str, list[str]]]:
    """How plot_schedule groups fields: ("probabilities", [the *_p fields]) first when there are
    any, then one (field, [field]) panel per other field, in the order given."""
    probs = [f for f in fields if f.endswith(PROBABILITY_SUFFIX)]
    panels = [("probabilities", probs)] if probs else []
    return panels + [(f, [f]) for f in fields if not f.endswith(PROBABILITY_SUFFIX)]


@_plain_text
def plot_schedule(epochs: Sequence[int], schedule: Sequence[dict[str, Any]], path: Path, *,
                  fields: Sequence[str] | None = None, exploits: Sequence[int] = (), title: str = "") -> Path:
    """A learned or replayed schedule: each field's value against epoch, as steps (the value of epoch
    e holds from e - 0.5 to e + 0.5, so each step sits on its epoch's tick).

    `schedule[i]` holds the values epoch `epochs[i]` (1-based) trained with; an epoch not listed is a
    gap. Probabilities share one panel on 0-1; every other field gets its own panel (small
    multiples, shared epoch axis). `exploits`: epochs k after which the weights came from another
    trial (PBT), drawn as a dashed line at k + 0.5 in every panel, where the values change.
    """
    from matplotlib.ticker import FuncFormatter

    fields = list(fields) if fields is not None else sorted({k for e in schedule for k in e})
    last = max((int(e) for e in epochs), default=1)
    edges = np.arange(last + 1) + 0.5
    by_epoch = {int(e): entry for e, entry in zip(epochs, schedule)}

    def values(field: str) -> np.ndarray:
        return np.array([_float(by_epoch.get(e, {}).get(field)) for e in range(1, last + 1)])

    panels = schedule_panels(fields) or [("no scheduled field", [])]
    ncols = min(4, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig = _figure(figsize=(min(_MAX_WIDTH_IN, 3.35 * ncols), 2.5 * nrows + 0.6))
    axes = np.atleast_1d(fig.subplots(nrows, ncols, sharex=True, squeeze=False)).ravel()
    marks = sorted({int(k) for k in exploits if 1 <= int(k) < last})
    for ax, (name, group) in zip(axes, panels):
        for field in group:
            y = values(field)
            ax.stairs(y, edges, baseline=None, lw=1.8, label=field, gid=field)
        if name == "probabilities":
            ax.set_ylim(-0.03, 1.03)
            ax.legend(fontsize=7, loc="best")
            ax.set_title("probabilities (per image)", fontsize=10)
        elif group:
            y = values(name)
            finite = y[np.isfinite(y)]
            constant = finite.size > 0 and np.ptp(finite) == 0
            if name in _DECADE_FIELDS and finite.size and finite.min() > 0 and finite.max() / finite.min() > 10:
                ax.set_yscale("log")
                _plain_log_ticks(ax, "y")
            else:  # 0.0006 as 0.0006, not 0.000600
                ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
            if constant:  # a flat step in the middle of a readable range, not on an axis edge
                v = float(finite[0])
                pad = abs(v) * 0.5 or 1.0
                ax.set_ylim(v - pad, v + pad)
            notes = [n for n in (_UNITS.get(name), "constant" if constant else None) if n]
            ax.set_title(name + (f" ({', '.join(notes)})" if notes else ""), fontsize=10)
        for k in marks:
            ax.axvline(k + 0.5, ls="--", lw=1, color="tab:red", gid="exploit")
        ax.set_xlim(0.5, last + 0.5)
        _epoch_ticks(ax, last)
        ax.grid(alpha=0.3)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    for ax in axes[max(0, len(panels) - ncols):len(panels)]:
        ax.set_xlabel("epoch")
        ax.tick_params(labelbottom=True)
    if title or marks:
        fig.suptitle(title + (f"{'; ' if title else ''}dashed red: exploit (the values change after epoch "
                              f"{', '.join(map(str, marks))})" if marks else ""), fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


@_plain_text
def plot_lineage(trials: Sequence[str], exploits: Sequence[dict[str, Any]], path: Path, *,
                 spans: dict[str, tuple[int, int]] | None = None, best: str | None = None,
                 ancestry: Sequence[dict[str, Any]] = (), path_segments: Sequence[tuple[str, int, int]] = (),
                 labels: dict[str, str] | None = None) -> Path:
    """A PBT population's lineage: one row per trial (in the order given, top down), x = epoch.

    `exploits`: dicts with epoch k, trial (the recipient) and donor; each is an arrow at x = k from
    the donor's row to the recipient's (the recipient trains epoch k + 1 on from the donor's state of
    epoch k). `spans`: the epochs each trial's metrics cover, a thin line along its row. The best
    trial's `ancestry` (exploits, as above) is drawn thick black, and `path_segments` (trial, from
    epoch, to epoch) trace where its weights were along the rows. `labels`: text per row, else the id.
    """
    from matplotlib.lines import Line2D

    rows = list(dict.fromkeys(trials))
    row = {t: i for i, t in enumerate(rows)}
    spans = spans or {}
    on_path = {(str(a.get("epoch")), str(a.get("trial")), str(a.get("donor"))) for a in ancestry}
    last = max([int(x["epoch"]) + 1 for x in exploits] + [hi for _, hi in spans.values()] + [1])
    fig = _figure(figsize=(min(_MAX_WIDTH_IN, max(7.0, 0.6 * last + 3.5)), 0.32 * len(rows) + 1.6))
    ax = fig.subplots()
    for t, (lo, hi) in spans.items():
        if t in row:
            ax.plot([lo, hi], [row[t], row[t]], "-", color="0.75", lw=1.2, zorder=1)
    for t, lo, hi in path_segments:
        if t in row:
            ax.plot([lo, hi], [row[t], row[t]], "-", color="black", lw=3, zorder=2, gid="best-path")
    for x in exploits:
        k, rec, don = int(x["epoch"]), str(x["trial"]), str(x["donor"])
        mine = (str(x["epoch"]), rec, don) in on_path
        ax.annotate("", xy=(k, row[rec]), xytext=(k, row[don]), gid="ancestry" if mine else "exploit",
                    arrowprops={"arrowstyle": "-|>", "color": "black" if mine else "tab:blue",
                                "lw": 2.2 if mine else 1.0, "alpha": 1.0 if mine else 0.7,
                                "connectionstyle": "arc3,rad=0.25", "shrinkA": 2, "shrinkB": 2},
                    zorder=4 if mine else 3)
    ax.set_yticks(range(len(rows)), [(labels or {}).get(t, t) for t in rows], fontsize=8)
    for tick, t in zip(ax.get_yticklabels(), rows):
        if t == best:
            tick.set_fontweight("bold")
    ax.set_ylim(len(rows) - 0.5, -0.5)        # first trial on top
    ax.set_xlim(0.5, last + 0.5)
    _epoch_ticks(ax, last)
    ax.set_xlabel("epoch")
    ax.grid(alpha=0.3, axis="x")
    handles = [Line2D([], [], color="tab:blue", lw=1, marker=">", label="exploit at epoch k: donor -> recipient, "
                                                                         "which trains epoch k+1 on from it")]
    if best is not None:
        handles.append(Line2D([], [], color="black", lw=3, label=f"where the best trial's ({best}) weights came from"))
    ax.set_title(f"Lineage of {len(rows)} trials: {len(exploits)} exploit{'s' if len(exploits) != 1 else ''}",
                 fontsize=11)
    # Margins in inches (the row labels, the legend under the axis), so the axis keeps its size.
    width, height = fig.get_size_inches()
    fig.subplots_adjust(left=min(0.45, 2.3 / width), right=0.98, top=1 - 0.45 / height, bottom=1.05 / height)
    fig.legend(handles=handles, fontsize=8, loc="lower left", bbox_to_anchor=(min(0.45, 2.3 / width), 0.0),
               frameon=False)
    return _save(fig, path)
