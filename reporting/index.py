"""The reports tree: where a report's folder goes, what a rebuild may replace, and the index pages.

    reports/                  a folder of reports: what --report-dir (train, search) and --out (report) name
      index.html              the index: one sortable table of every report below this folder, at any
                              depth, newest run first, then the report built last, one click away
      <run-or-search-name>/   one report: index.html, its PNGs, report.json (what the index shows of it)
      cluster/                a folder of reports inside it (e.g. --report-dir reports/cluster):
        index.html            its own index, listing what is below it;
        <name>/               reports/index.html lists these reports too

The rules that keep it one tree:
- A report goes to OUT/<name>/ (the run's or search's folder name); OUT/index.html is rewritten, and
  so is every index page made here in a folder above OUT, since each lists the reports at any depth
  below it. Whatever --report-dir says, a report built under reports/ is listed by reports/index.html
  (once that page exists: the first report built into reports/ itself writes it, and lists the
  reports built under reports/ before).
- A report folder holds one report and never another: OUT may not be a report folder or lie inside
  one. So a rebuild, which replaces OUT/<name>/ whole, deletes only the previous report of that run.
- A rebuild replaces OUT/<name>/ only when it is a report of the same run (report.json: same kind,
  and the same start time or run folder) holding no other report, or an empty folder. Anything else
  (another run's report of the same name, a folder of reports, a folder that is not a report) is
  refused with one line before anything is written.

Every link is relative, so a reports folder stays valid when copied or served elsewhere; the index's
sorting is a few lines of script inside the page (no server, no network).
"""
from __future__ import annotations

import datetime as dt
import json
import math
import os
from pathlib import Path
from typing import Any
from urllib.parse import quote

from distributed import config

ENTRY = "report.json"
PAGE = "index.html"
TEMPLATE = "reports_index.html.j2"
# In every index page's <head>: how a later build recognises an index it may rewrite.
GENERATOR = "cifar-lab reports index"

# The comparison table: (key, header, sort type). Each row holds the shown text and a sort key per column.
COLUMNS = (("name", "Name", "text"), ("kind", "Kind", "text"), ("date", "Date (run start)", "num"),
           ("test_acc", "Test accuracy", "num"), ("best_val_acc", "Best validation", "num"),
           ("epochs", "Epochs", "num"), ("wall", "Wall time", "num"), ("hardware", "Hardware", "text"),
           ("precision", "Precision", "text"), ("link", "Report", "text"))
MISSING = "–"


class LayoutError(Exception):
    """A report that would land where it must not (over another report, inside one); one line."""


def folder_href(name: str) -> str:
    """A report folder's name as a relative URL path segment (any character a run name may hold)."""
    return quote(name, safe="")


def _href(rel: Path) -> str:
    """A folder's path relative to an index, as the URL of its page."""
    return "/".join(folder_href(part) for part in rel.parts) + "/" + PAGE


def _when(value: Any) -> dt.datetime | None:
    """An ISO date (config.json's "created", search.json's "started") as an aware datetime."""
    if not isinstance(value, str) or not value:
        return None
    for parse in (dt.datetime.fromisoformat, lambda v: dt.datetime.strptime(v, "%Y-%m-%dT%H:%M:%S%z")):
        try:
            when = parse(value)
        except ValueError:
            continue
        return when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)
    return None


def read_entry(folder: Path) -> dict[str, Any] | None:
    """A report folder's report.json, or None when it has none or it is unreadable."""
    try:
        info = json.loads((Path(folder) / ENTRY).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return info if isinstance(info, dict) else None


def _report_folders(root: Path) -> list[Path]:
    """Every report folder below `root` (report.json and index.html in it), at any depth.

    Hidden folders (temporary build folders, .venv) are skipped; a report folder is not entered,
    since it holds no other report."""
    found = []
    for here, dirs, files in os.walk(root):
        if Path(here) != root and ENTRY in files and PAGE in files:
            found.append(Path(here))
            dirs[:] = []
            continue
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    return found


def list_reports(out: Path, current: Path | str | None = None) -> list[dict[str, Any]]:
    """Every report below `out` (a folder with a readable report.json), newest run first.

    Dates are the run's (or search's) start, so rebuilding an old report does not move it up.
    Each entry gets `href` (its page, relative to `out`), `rel` (its folder relative to `out`),
    `current` (it is `current`, a folder relative to `out`: the report just built) and `cells`,
    the comparison table's text and sort key per column (COLUMNS).
    """
    out = Path(out)
    current = Path(current) if current is not None else None
    entries = []
    for folder in _report_folders(out) if out.is_dir() else []:
        info = read_entry(folder)
        if info is None:
            continue  # a damaged entry hides that report from the list, never breaks the page
        rel = folder.relative_to(out)
        when = _when(info.get("created")) or _when(info.get("generated"))
        entry = {**info, "name": rel.as_posix(), "rel": rel, "href": _href(rel), "current": rel == current,
                 "when": when, "date": when.astimezone().strftime("%Y-%m-%d %H:%M") if when else MISSING}
        entry["cells"] = _cells(entry)
        entries.append(entry)
    oldest = dt.datetime.min.replace(tzinfo=dt.timezone.utc)
    entries.sort(key=lambda e: (e["when"] or oldest, e["name"]), reverse=True)
    return entries


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def _pct(v: Any) -> str:
    return MISSING if _number(v) is None else f"{100 * float(v):.2f}%"


def _hms(seconds: Any) -> str:
    """Seconds as h:mm:ss; "–" when unknown (report.json files from before this field)."""
    s = _number(seconds)
    if s is None:
        return MISSING
    s = int(round(s))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def precision_name(mixed_precision: Any) -> str:
    """Accelerate's mixed_precision setting as a reader names it ("no" is plain fp32)."""
    if not isinstance(mixed_precision, str) or not mixed_precision:
        return MISSING
    return config.precision_name(mixed_precision)


def _cells(e: dict[str, Any]) -> dict[str, dict[str, str]]:
    """The table row of one entry: per column the text shown and the key the page sorts by ("" = none)."""
    def num(v: Any) -> str:
        n = _number(v)
        return "" if n is None else repr(n)

    epochs = e.get("epochs")
    return {
        "name": {"text": e["name"], "v": e["name"].lower()},
        "kind": {"text": str(e.get("kind") or MISSING), "v": str(e.get("kind") or "")},
        "date": {"text": e["date"], "v": num(e["when"].timestamp()) if e["when"] else ""},
        "test_acc": {"text": _pct(e.get("test_acc")), "v": num(e.get("test_acc"))},
        "best_val_acc": {"text": _pct(e.get("best_val_acc")), "v": num(e.get("best_val_acc"))},
        "epochs": {"text": str(epochs) if _number(epochs) is not None else MISSING, "v": num(epochs)},
        "wall": {"text": _hms(e.get("wall_seconds")), "v": num(e.get("wall_seconds"))},
        "hardware": {"text": str(e.get("hardware") or MISSING), "v": str(e.get("hardware") or "").lower()},
        "precision": {"text": precision_name(e.get("precision")),
                      "v": "" if e.get("precision") is None else precision_name(e.get("precision"))},
        "link": {"text": e["href"], "v": e["href"]},
    }


def entry(kind: str, title: str, created: Any, summary: dict[str, Any], warnings: list[str], *,
          source: str | Path | None = None, wall_seconds: Any = None) -> dict[str, Any]:
    """What report.json keeps of one report: the index's row, and who it belongs to.

    `source` is the run (or search) folder it was built from; with `kind` and `created` (the run's
    start) it tells a rebuild of the same run from another run of the same name. `wall_seconds`
    defaults to the run's training time; a search passes the whole search's.
    """
    return {"kind": kind, "title": title, "created": created,
            "generated": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "source": str(Path(source).resolve()) if source is not None else None,
            "test_acc": summary.get("test_acc"), "best_val_acc": summary.get("best_val_acc"),
            "epochs": summary.get("epochs"), "hardware": summary.get("device"),
            "wall_seconds": wall_seconds if wall_seconds is not None else summary.get("wall_seconds"),
            "precision": summary.get("mixed_precision"), "warnings": warnings}


# ----------------------------------------------------------------------------- where a report may go
def _same_run(old: dict[str, Any], new: dict[str, Any]) -> bool:
    if old.get("kind") != new.get("kind"):
        return False
    if old.get("created") is not None and old.get("created") == new.get("created"):
        return True
    return old.get("source") is not None and old.get("source") == new.get("source")


def _describe(info: dict[str, Any]) -> str:
    when = _when(info.get("created"))
    start = f" started {when.astimezone().strftime('%Y-%m-%d %H:%M')}" if when else ""
    source = f" ({info['source']})" if info.get("source") else ""
    return f"the report of another {info.get('kind') or 'run'}{start}{source}"


def check_target(out: Path, name: str, new: dict[str, Any]) -> None:
    """Raise LayoutError unless the report `new` (an `entry`) may be written to `out/name/`.

    Nothing is written; see the module docstring for the rules.
    """
    out, flag = Path(out), "--out / --report-dir"
    if name == PAGE:
        raise LayoutError(f"a run named {name} cannot have its report folder beside {out / PAGE}; "
                          f"copy the run to another name")
    if (out / ENTRY).is_file():
        raise LayoutError(f"{out} is the folder of one report (it holds {ENTRY}), not a folder of reports: "
                          f"pass a folder of reports as {flag}, e.g. {out.parent}")
    for folder in out.resolve().parents:
        if (folder / ENTRY).is_file():
            raise LayoutError(f"{out} is inside the folder of one report, {folder} (it holds {ENTRY}), which a "
                              f"rebuild replaces whole: pass a folder of reports as {flag}, e.g. {folder.parent}")
    target = out / name
    if not target.exists() and not target.is_symlink():
        return
    if not target.is_dir() or target.is_symlink():
        raise LayoutError(f"{target} exists and is not a report folder: move it away or pass another {flag}")
    nested = _report_folders(target)
    if nested:
        raise LayoutError(f"{target} holds other reports ({nested[0]}{f' and {len(nested) - 1} more' if len(nested) > 1 else ''}), "
                          f"not this report: move it away or pass another {flag}")
    old = read_entry(target)
    if old is None:
        leftovers = sorted(p.name for p in target.iterdir())
        if leftovers:
            raise LayoutError(f"{target} is not a report (it holds {', '.join(leftovers[:3])}"
                              f"{', ...' if len(leftovers) > 3 else ''}; no {ENTRY}): move it away or "
                              f"pass another {flag}")
        return
    if not _same_run(old, new):
        raise LayoutError(f"{target} is {_describe(old)}, not of {new.get('source') or name}: move it away "
                          f"or pass another {flag}")


def check_run_target(out: Path, run_dir: Path | str, kind: str, created: Any) -> None:
    """`check_target` for the report of the run or search in `run_dir` (its folder's name, its
    path as the source): what the CLI checks before training and `build_report` before writing."""
    run_dir = Path(run_dir).resolve()
    check_target(out, run_dir.name, {"kind": kind, "created": created, "source": str(run_dir)})


# ----------------------------------------------------------------------------- the index pages
def is_index(page: Path) -> bool:
    """Whether `page` is an index page written here (and may be rewritten)."""
    try:
        with open(page, encoding="utf-8", errors="replace") as f:
            head = f.read(4096)
    except OSError:
        return False
    return f'<meta name="generator" content="{GENERATOR}">' in head


def render_index(out: Path, current: Path | str | None) -> str:
    """The index page of the reports folder `out`; `current` is the report just built (relative to `out`)."""
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    out = Path(out)
    reports = list_reports(out, current)
    latest = next((r for r in reports if r["current"]), reports[0] if reports else None)
    parent = out.resolve().parent / PAGE
    # autoescape on: run names, hostnames and titles are user input.
    env = Environment(loader=FileSystemLoader(str(Path(__file__).resolve().parent / "templates")),
                      autoescape=True, undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    return env.get_template(TEMPLATE).render(
        generator=GENERATOR, folder=out.resolve().name or str(out), reports=reports, columns=COLUMNS,
        latest=latest, latest_figure=_preview(out, latest),
        counts={k: sum(r.get("kind") == k for r in reports) for k in ("run", "search")},
        parent_index="../" + PAGE if is_index(parent) else None,
        generated=dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"))


def _preview(out: Path, latest: dict[str, Any] | None) -> str | None:
    """The training curves of the report built last, shown under the table (its folder's curves.png)."""
    if latest is None or not (out / latest["rel"] / "curves.png").is_file():
        return None
    return latest["href"].removesuffix(PAGE) + "curves.png"


def write_indexes(out: Path, report: Path) -> Path:
    """Rewrite `out`/index.html and every index page made here in a folder above `out`, each listing
    every report below it with `report` (the folder just built) marked. Returns `out`/index.html."""
    from distributed import rundir

    out, report = Path(out), Path(report).resolve()
    pages = [out] + [p for p in out.resolve().parents if is_index(p / PAGE)]
    for folder in pages:
        with rundir.atomic_path(folder / PAGE) as tmp:
            tmp.write_text(render_index(folder, report.relative_to(folder.resolve())), encoding="utf-8")
    return out / PAGE
