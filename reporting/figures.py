"""Matplotlib figures of the report, each written to one PNG (Figure objects, no pyplot, no display).

Every function takes plain numbers/arrays and a path, so the figures can be tested and reused
without a run directory.  Images are float RGB [H, W, 3] in [0, 1] or uint8.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

_DPI = 100
_FONT_PX = 13      # text size in the image mosaics, in output pixels


def _figure(**kwargs):
    """A matplotlib Figure drawn by the Agg canvas, outside pyplot.

    No pyplot means no process-wide state: no backend switch, no figure registry to leak into,
    so building a report inside a training process or a notebook changes nothing there.
    """
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def _save(fig, path: Path) -> Path:
    path = Path(path)
    fig.savefig(path, dpi=_DPI, bbox_inches="tight", facecolor="white")
    return path


def _column(rows: Sequence[dict[str, Any]], key: str) -> np.ndarray:
    """Per-epoch values of one metric, NaN where missing or null (e.g. no validation split)."""
    return np.array([np.nan if r.get(key) is None else float(r[key]) for r in rows], dtype=float)


def plot_curves(metrics: Sequence[dict[str, Any]], path: Path) -> Path:
    """Train/validation loss and accuracy per epoch, side by side.

    The loss axis turns logarithmic when the losses span more than ~1.5 decades (a diverging
    early epoch would otherwise flatten every other point onto the axis).
    """
    from matplotlib.ticker import MaxNLocator

    epochs = _column(metrics, "epoch")
    fig = _figure(figsize=(11, 3.8))
    axes = fig.subplots(1, 2)
    for ax, what in zip(axes, ("loss", "acc")):
        seen = []
        for split, style in (("train", "-o"), ("val", "-s")):
            y = _column(metrics, f"{split}_{what}")
            if what == "acc":
                y = y * 100
            if np.isfinite(y).any():
                ax.plot(epochs, y, style, ms=3, label=split)
                seen.append(y[np.isfinite(y)])
        values = np.concatenate(seen) if seen else np.array([])
        log = what == "loss" and values.size and values.min() > 0 and values.max() / values.min() > 30
        if log:
            ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("accuracy (%)" if what == "acc" else "loss")
        ax.set_title("Accuracy" if what == "acc" else ("Loss (log scale)" if log else "Loss"))
        ax.grid(alpha=0.3, which="both" if log else "major")
        ax.legend()
    fig.tight_layout()
    return _save(fig, path)


def plot_lr_schedule(metrics: Sequence[dict[str, Any]], path: Path) -> Path:
    """Learning rate at the end of each epoch."""
    from matplotlib.ticker import MaxNLocator

    fig = _figure(figsize=(5.5, 3.2))
    ax = fig.subplots()
    ax.plot(_column(metrics, "epoch"), _column(metrics, "lr"), "-o", ms=3)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("learning rate")
    ax.set_title("Learning rate (last step of each epoch)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


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


def class_samples(images_by_class: Sequence[Sequence[np.ndarray]], classes: Sequence[str], path: Path,
                  scale: int = 3) -> Path:
    """One row per class (labelled), its sample images left to right; short rows stay short."""
    ncols = max((len(r) for r in images_by_class), default=1) or 1
    cells = [[row[c] if c < len(row) else None for c in range(ncols)] for row in images_by_class]
    return _mosaic(cells, path, row_labels=list(classes), scale=scale)


def _mosaic(cells: Sequence[Sequence[np.ndarray | None]], path: Path, *, captions=None, caption_colours=None,
            column_titles: Sequence[str] | None = None, row_labels: Sequence[str] | None = None,
            scale: int = 4, gap: int = 8) -> Path:
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
    col_w = cw + gap
    H, W = head_h + nrows * row_h, label_w + ncols * col_w
    canvas = np.ones((H, W, 3), dtype=np.float32)
    for r, row in enumerate(cells):
        for c, img in enumerate(row):
            if img is None:
                continue
            a = np.asarray(img)
            a = a.astype(np.float32) / 255.0 if a.dtype == np.uint8 else np.clip(a.astype(np.float32), 0, 1)
            y, x = head_h + r * row_h + cap_h, label_w + c * col_w
            canvas[y:y + ch, x:x + cw] = a.repeat(scale, 0).repeat(scale, 1)
    fig = _figure(figsize=(W / _DPI, H / _DPI), dpi=_DPI)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(canvas, interpolation="nearest")
    ax.set_axis_off()
    text = dict(fontsize=_FONT_PX * 72 / _DPI, ha="center", va="bottom", linespacing=1.15)
    for c, t in enumerate(column_titles or []):
        ax.text(label_w + c * col_w + cw / 2, head_h - 3, t, fontweight="bold", **text)
    for r in range(nrows):
        y0 = head_h + r * row_h
        if row_labels and r < len(row_labels):
            ax.text(label_w - 8, y0 + cap_h + ch / 2, row_labels[r], fontsize=text["fontsize"], ha="right",
                    va="center", linespacing=1.15)
        for c in range(ncols):
            t = captions[r][c] if captions and c < len(captions[r]) else ""
            if t:
                colour = caption_colours[r][c] if caption_colours else "black"
                ax.text(label_w + c * col_w + cw / 2, y0 + cap_h - 2, t, color=colour, **text)
    fig.savefig(path, dpi=_DPI, facecolor="white")
    return Path(path)


def plot_confusion(cm: np.ndarray, classes: Sequence[str], path: Path) -> Path:
    """Confusion matrix as counts (left) and row-normalised (right); rows are true classes."""
    cm = np.asarray(cm)
    totals = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, totals, out=np.zeros(cm.shape, dtype=float), where=totals > 0)
    k = len(classes)
    fig = _figure(figsize=(15, 6.4))
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


def cam_grid(rows: Sequence[Sequence[np.ndarray]], column_titles: Sequence[str], row_labels: Sequence[str],
             path: Path) -> Path:
    """GradCAM table: one row per image, one column per map (the first column is usually the image)."""
    return _mosaic(rows, path, column_titles=column_titles, row_labels=row_labels)


def plot_hparams(rows: Sequence[dict[str, Any]], params: Sequence[str], metric: str, path: Path) -> Path:
    """One scatter per hyperparameter: its value against the trial's validation accuracy.

    Numeric values on a log axis when they span more than a decade; others as categories.
    """
    ncols = min(3, max(1, len(params)))
    nrows = -(-len(params) // ncols)
    fig = _figure(figsize=(4.2 * ncols, 3.2 * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    y = np.array([_float(r.get(metric)) for r in rows]) * 100
    for ax, p in zip(axes.flat, params):
        raw = [r.get(p) for r in rows]
        xs = np.array([_float(v) for v in raw])
        if np.isfinite(xs).sum() == len(xs) and len(xs):
            ax.scatter(xs, y, s=25, alpha=0.8)
            pos = xs[xs > 0]
            if len(pos) == len(xs) and pos.max() / pos.min() > 10:
                ax.set_xscale("log")
        else:
            cats = sorted({str(v) for v in raw})
            ax.scatter([cats.index(str(v)) for v in raw], y, s=25, alpha=0.8)
            ax.set_xticks(range(len(cats)), cats, rotation=30, ha="right")
        ax.set_xlabel(p)
        ax.set_ylabel("val accuracy (%)")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(params):]:
        ax.axis("off")
    fig.tight_layout()
    return _save(fig, path)


def _float(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")
