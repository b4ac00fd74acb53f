"""The reports folder: one folder per report, and the list of them that `reports/index.html` shows.

    reports/
      index.html            the report built last (its figures read from its folder) + every report listed
      <run-or-search-name>/ index.html, its PNGs, report.json (what the list shows of it)

Every link is relative, so the reports folder stays valid when copied or served elsewhere.
"""
from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

ENTRY = "report.json"
PAGE = "index.html"


def folder_href(name: str) -> str:
    """A report folder's name as a relative URL path segment (any character a run name may hold)."""
    return quote(name, safe="")


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


def list_reports(out: Path, current: str) -> list[dict[str, Any]]:
    """Every report under `out` (a folder with a readable report.json), newest run first.

    Dates are the run's (or search's) start, so rebuilding an old report does not move it up.
    Each entry gets `href` relative to `out` and `current` when it is the report just built.
    """
    entries = []
    for folder in sorted(Path(out).iterdir()) if Path(out).is_dir() else []:
        if folder.name.startswith(".") or not (folder / ENTRY).is_file() or not (folder / PAGE).is_file():
            continue
        try:
            info = json.loads((folder / ENTRY).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            continue  # a damaged entry hides that report from the list, never breaks the page
        if not isinstance(info, dict):
            continue
        when = _when(info.get("created")) or _when(info.get("generated"))
        entries.append({**info, "name": folder.name, "href": f"{folder_href(folder.name)}/{PAGE}",
                        "current": folder.name == current, "when": when,
                        "date": when.astimezone().strftime("%Y-%m-%d %H:%M") if when else "–"})
    oldest = dt.datetime.min.replace(tzinfo=dt.timezone.utc)
    entries.sort(key=lambda e: (e["when"] or oldest, e["name"]), reverse=True)
    return entries


def entry(kind: str, title: str, created: Any, summary: dict[str, Any], warnings: list[str]) -> dict[str, Any]:
    """What report.json keeps of one report, for the list."""
    return {"kind": kind, "title": title, "created": created,
            "generated": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "test_acc": summary.get("test_acc"), "best_val_acc": summary.get("best_val_acc"),
            "epochs": summary.get("epochs"), "hardware": summary.get("device"), "warnings": warnings}
