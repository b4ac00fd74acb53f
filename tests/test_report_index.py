"""The reports tree and its index (reporting/index.py): one index for every report built under a folder,
wherever --out / --report-dir put it; a rebuild that never deletes another report; the comparison table
(columns, newest-first rows, values read from the runs' files), its sort script and its relative links.

One tiny run is trained once (distributed.engine.fit on a synthetic CIFAR); the other runs are copies
of it with their own name, start time and numbers, and the search is the report tests' search folder
around it. Reports are built with few images (GradCAM and matplotlib dominate the time).
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import pytest

from cifar_fixture import make_fake_cifar
from conftest_report_helpers import write_search_dir
from distributed import rundir
from distributed.config import TrainConfig
from reporting import index as reports_index
from reporting.report import ReportError, build_report

CHROMIUM = "/usr/bin/chromium"
HEADERS = ["Name", "Kind", "Date (run start)", "Test accuracy", "Best validation", "Epochs", "Wall time",
           "Hardware", "Precision", "Report"]
# Start times, newest last; the search's (2026-11-26 10:00 UTC) is written by write_search_dir.
CREATED = {"a": "2026-12-01T09:00:00+00:00", "b": "2026-11-20T10:00:00+00:00"}


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return make_fake_cifar(tmp_path_factory.mktemp("data"), n_train=50, n_test=30)


def _write_run(path: Path, data_dir: Path, *, created: str, test_acc: float, best_val_acc: float,
               wall_seconds: float, mixed_precision: str, weights: Path | None = None) -> Path:
    """A finished run directory written straight from the contract (distributed/rundir.py): untrained
    weights, logits made up to score `test_acc`, its numbers in summary.json. Training one takes
    far longer than a report on a shared CPU, and the index only reads these files."""
    import numpy as np

    from distributed.data import load_cifar10
    from distributed.model import resnet18

    path.mkdir(parents=True)
    cfg = TrainConfig(name=path.name, data_dir=str(data_dir), runs_dir=str(path.parent), download=False,
                      val_size=10, epochs=2, batch_size=10, num_workers=0, mixed_precision=mixed_precision)
    labels = load_cifar10(data_dir, download=False).test_y.astype(np.int64)
    right = np.arange(len(labels)) < round(test_acc * len(labels))
    pred = np.where(right, labels, (labels + 1) % 10)
    logits = np.eye(10, dtype=np.float32)[pred] * 3
    np.savez(path / rundir.PREDICTIONS, logits=logits, logits_plain=logits, logits_tta=logits, labels=labels,
             indices=np.arange(len(labels), dtype=np.int64))
    if weights is None:
        from safetensors.torch import save_file

        save_file(resnet18(num_classes=10).state_dict(), str(path / rundir.FINAL_WEIGHTS))
    else:
        shutil.copy(weights, path / rundir.FINAL_WEIGHTS)
    mean, std = [0.49, 0.48, 0.45], [0.25, 0.24, 0.26]
    meta = {"config": cfg.to_dict(), "effective_max_lr": cfg.effective_max_lr, "created": created,
            "device": "1 x CPU (test)", "world_size": 1, "mixed_precision": mixed_precision,
            "num_params": 11_173_962, "split": {"train": 40, "val": 10, "test": len(labels)},
            "mean": mean, "std": std}
    rundir.write_json(path / rundir.CONFIG, meta)
    rows = [{"epoch": e, "train_loss": 2.3 - 0.1 * e, "train_ce": 2.3 - 0.1 * e, "train_acc": 0.1 * e,
             "val_loss": 2.3 - 0.05 * e, "val_loss_smoothed": 2.35 - 0.05 * e, "val_acc": best_val_acc * e / 2,
             "lr": 0.01, "epoch_seconds": wall_seconds / 2, "images_per_sec": 10.0,
             "wall_seconds": wall_seconds * e / 2} for e in (1, 2)]
    (path / rundir.METRICS).write_text("".join(json.dumps(r) + "\n" for r in rows))
    rundir.write_json(path / rundir.SUMMARY, rundir.build_summary(
        meta, rows, {"acc": test_acc, "loss": 2.0, "count": len(labels)}, total_seconds=wall_seconds + 5))
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_dir) -> dict[str, Path]:
    """Run "a" (fp32, 20% test accuracy), run "b" (older, bf16, 1 h 2 min 3 s of training, 90% test
    accuracy) and search "search-s" with run a as its best trial."""
    root = tmp_path_factory.mktemp("runs")
    a = _write_run(root / "a", data_dir, created=CREATED["a"], test_acc=0.2, best_val_acc=0.3, wall_seconds=83.4,
                   mixed_precision="no")
    b = _write_run(root / "b", data_dir, created=CREATED["b"], test_acc=0.9, best_val_acc=0.4,
                   wall_seconds=3723.0, mixed_precision="bf16", weights=a / rundir.FINAL_WEIGHTS)
    search = write_search_dir(root / "search-s", a, "<b>hostile</b>")
    return {"a": a, "b": b, "s": search}


def _build(run: Path, out: Path, data_dir: Path, *, full: bool = False) -> Path:
    """build_report into `out`. Unless `full`, the report's own page is a stub (no figures, no GradCAM):
    where the report goes, its report.json and the index pages are the real code, in a fraction of the
    time (tests/test_report.py covers the page itself)."""
    if full:
        return build_report(run, out, data_dir=data_dir, device="cpu", n_examples=4, n_cam=1)
    import reporting.report

    def context(run, search, *args):
        return {"title": f"stub report of {run.config.name}", "warnings": []}

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(reporting.report, "_report_context", context)
        mp.setattr(reporting.report, "_render", lambda c: f"<!DOCTYPE html><title>{c['title']}</title>")
        return build_report(run, out, data_dir=data_dir, device="cpu")


def _old_style_report(folder: Path, name: str) -> None:
    """A report folder as written before report.json had wall time, precision or source."""
    folder.mkdir(parents=True)
    (folder / "index.html").write_text(f"<html><body>{name}</body></html>")
    (folder / "report.json").write_text(json.dumps({
        "kind": "run", "title": f"CIFAR-10 report: {name}", "created": "2026-01-02T03:04:05+00:00",
        "generated": "2026-01-02T05:00:00+00:00", "test_acc": 0.5, "best_val_acc": 0.45, "epochs": 3,
        "hardware": "cpu", "warnings": []}))


@pytest.fixture(scope="module")
def tree(tmp_path_factory, runs, data_dir) -> Path:
    """The quick start's sequence and more, in one reports folder: run b into reports/ (the default),
    then as the quick start did, run a into reports/first (a custom folder: its index is
    reports/first/index.html) and the search into reports/ again; plus a report from before."""
    reports = tmp_path_factory.mktemp("tree") / "reports"
    _old_style_report(reports / "old", "old")
    _build(runs["b"], reports, data_dir)
    _build(runs["a"], reports / "first", data_dir, full=True)
    _build(runs["s"], reports, data_dir, full=True)
    return reports


class _Index(HTMLParser):
    """The comparison table (headers, rows of (text, data-v) cells and links), every URL, the scripts."""

    def __init__(self) -> None:
        super().__init__()
        self.headers, self.rows, self.urls, self.scripts, self.row_classes = [], [], [], [], []
        self._cell = self._in_table = self._in_script = self._in_a = None
        self.sort_types = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for key in ("src", "href"):
            if a.get(key):
                self.urls.append(a[key])
        if tag == "table" and a.get("id") == "report-list":
            self._in_table = True
        elif self._in_table and tag == "th":
            self.sort_types.append(a.get("data-type"))
            self._cell = {"text": "", "a_text": "", "v": None, "links": [], "head": True}
        elif self._in_table and tag == "tr" and self.headers:
            self.rows.append([])
            self.row_classes.append(a.get("class"))
        elif self._in_table and tag == "td":
            self._cell = {"text": "", "a_text": "", "v": a.get("data-v"), "links": [], "head": False}
        elif tag == "a" and self._cell is not None:
            self._cell["links"].append(a.get("href"))
            self._in_a = True
        elif tag == "script":
            self._in_script = True
            self.scripts.append("")

    def handle_endtag(self, tag):
        if tag == "a":
            self._in_a = False
        if tag == "table":
            self._in_table = False
        elif tag in ("th", "td") and self._cell is not None:
            cell, self._cell = self._cell, None
            cell["text"] = cell["text"].strip()
            if cell.pop("head"):
                self.headers.append(cell["text"])
            else:
                self.rows[-1].append(cell)
        elif tag == "script":
            self._in_script = False

    def handle_data(self, data):
        if self._cell is not None:
            self._cell["text"] += data
            if self._in_a:
                self._cell["a_text"] += data
        if self._in_script:
            self.scripts[-1] += data


def _index(page: Path) -> _Index:
    parsed = _Index()
    parsed.feed(page.read_text(encoding="utf-8"))
    return parsed


def _column(parsed: _Index, header: str) -> list[str]:
    at = parsed.headers.index(header)
    return [row[at]["a_text" if header == "Name" else "text"] for row in parsed.rows]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- one tree, one index
def test_the_quick_start_sequence_ends_with_one_index_listing_every_report(tree):
    """A report built with a custom folder (reports/first) and ones built with the default (reports)
    are all listed by reports/index.html, whichever was built first; the custom folder has its own index."""
    top = _index(tree / "index.html")
    assert _column(top, "Name") == ["first/a", "search-s", "b", "old"]        # newest run first
    assert _column(top, "Report") == ["first/a/index.html", "search-s/index.html", "b/index.html",
                                      "old/index.html"]
    # reports/first/index.html was the first page of that folder; it lists only what is below it
    assert _column(_index(tree / "first" / "index.html"), "Name") == ["a"]
    # one report folder per report, none nested in another
    folders = sorted(p.parent.relative_to(tree).as_posix() for p in tree.rglob("report.json"))
    assert folders == ["b", "first/a", "old", "search-s"]
    # the search was built last: its row is marked and the page leads to it under the table
    assert top.row_classes == [None, "current", None, None]
    html = (tree / "index.html").read_text()
    assert html.index('id="report-list"') < html.index('id="latest"')
    assert '<a href="search-s/index.html">Open the full report of search-s</a>' in html


def test_a_report_built_in_a_folder_below_an_index_is_listed_by_that_index_at_once(tree, runs, data_dir,
                                                                                   tmp_path):
    """The index above is rewritten too (here reports/index.html, when a report goes to reports/x/y)."""
    copy = tmp_path / "reports"
    shutil.copytree(tree, copy)
    page = _build(runs["b"], copy / "x" / "y", data_dir)
    assert page == copy / "x" / "y" / "index.html"
    top = _index(copy / "index.html")
    # older than the search; the same start as reports/b, ordered by name then
    assert _column(top, "Report")[-3:] == ["x/y/b/index.html", "b/index.html", "old/index.html"]
    assert top.row_classes[-3] == "current"
    assert _column(_index(copy / "first" / "index.html"), "Name") == ["a"]          # not above x/y: untouched


# ----------------------------------------------------------------------------- a rebuild deletes nothing else
def test_a_rebuild_replaces_only_its_own_report(tree, runs, data_dir, tmp_path):
    copy = tmp_path / "reports"
    shutil.copytree(tree, copy)
    before = json.loads((copy / "b" / "report.json").read_text())
    others = {p: _snapshot(copy / p) for p in ("first", "search-s", "old")}
    _build(runs["b"], copy, data_dir)
    after = json.loads((copy / "b" / "report.json").read_text())
    assert after["generated"] >= before["generated"] and after["source"] == str(runs["b"].resolve())
    assert {p: _snapshot(copy / p) for p in others} == others
    assert _column(_index(copy / "index.html"), "Name") == ["first/a", "search-s", "b", "old"]


@pytest.mark.parametrize("case", ["folder of reports", "another run of the same name", "not a report",
                                  "out is a report folder", "out inside a report folder"])
def test_a_rebuild_never_deletes_another_report(case, tree, runs, data_dir, tmp_path, capsys):
    """Every way a build could land on something that is not this run's report is refused with one
    line naming the folder, exit 2, and nothing under the reports folder changes."""
    from cifar_lab.cli import report as main

    reports = tmp_path / "reports"
    shutil.copytree(tree, reports)
    run, out = runs["a"], reports
    if case == "folder of reports":
        # the old quick start's layout: reports/a holds an index and the report reports/a/a
        shutil.move(reports / "first", reports / "a")
        expected = "holds other reports"
    elif case == "another run of the same name":
        # run b's report sits in reports/b; this is another run, also named b, started later
        run = tmp_path / "other" / "b"
        shutil.copytree(runs["b"], run)
        meta = rundir.read_json(run / rundir.CONFIG)
        meta["created"] = "2026-12-02T00:00:00+00:00"
        rundir.write_json(run / rundir.CONFIG, meta)
        expected = "is the report of another run started"
    elif case == "not a report":
        (reports / "a").mkdir()
        (reports / "a" / "notes.txt").write_text("mine")
        expected = "is not a report (it holds notes.txt"
    elif case == "out is a report folder":
        out = reports / "b"
        expected = "is the folder of one report"
    else:
        out = reports / "b" / "sub"
        expected = "is inside the folder of one report"
    before = _snapshot(reports)
    assert main([str(run), "--out", str(out), "--data-dir", str(data_dir), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and expected in err, err
    assert "move it away or pass another --out" in err or "pass a folder of reports" in err, err
    assert _snapshot(reports) == before


@pytest.mark.parametrize("command", ["train", "search"])
def test_a_run_whose_report_would_be_refused_is_refused_before_training(command, tree, data_dir, tmp_path, capsys):
    """The report is built at the end: a --report-dir where it would be refused (here the old quick
    start's layout, reports/<name> holding other reports) is said before anything trains or starts."""
    from cifar_lab import cli

    reports = tmp_path / "reports"
    shutil.copytree(tree, reports)
    name = "a" if command == "train" else "s"
    folder = name if command == "train" else f"search-{name}"
    shutil.rmtree(reports / folder, ignore_errors=True)
    shutil.move(reports / "first", reports / folder)  # it holds the report first/a
    before = _snapshot(reports)
    argv = ["--name", name, "--runs-dir", str(tmp_path / "runs"), "--data-dir", str(data_dir), "--no-download",
            "--epochs", "1", "--report-dir", str(reports)]
    assert getattr(cli, command)(argv) == 2
    err = capsys.readouterr().err
    assert err == (f"error: the report could not be built at the end: {reports / folder} holds other reports "
                   f"({reports / folder / 'a'}), not this report: move it away or pass another --out / "
                   f"--report-dir, or pass --no-report\n"), err
    assert _snapshot(reports) == before and not (tmp_path / "runs").exists()


def test_check_target_allows_a_new_name_an_empty_folder_and_the_same_run(tmp_path):
    new = {"kind": "run", "created": "2026-12-01T09:00:00+00:00", "source": "/runs/a"}
    reports_index.check_target(tmp_path / "nothing-yet", "a", new)
    (tmp_path / "a").mkdir()
    reports_index.check_target(tmp_path, "a", new)                     # empty: nothing to lose
    (tmp_path / "a" / "report.json").write_text(json.dumps({**new, "source": "/copied/elsewhere"}))
    reports_index.check_target(tmp_path, "a", new)                     # same run, moved: same start
    (tmp_path / "a" / "report.json").write_text(json.dumps({**new, "kind": "search"}))
    with pytest.raises(reports_index.LayoutError, match="another search"):
        reports_index.check_target(tmp_path, "a", new)
    with pytest.raises(ReportError):                                      # the report's own error type
        build_report(tmp_path / "missing", tmp_path)


# ----------------------------------------------------------------------------- the table
def test_the_table_has_every_column_and_the_values_of_the_runs_files(tree, runs):
    top = _index(tree / "index.html")
    assert top.headers == HEADERS
    rows = {row[0]["a_text"]: {h: c["text"] for h, c in zip(HEADERS, row)} for row in top.rows}
    for name, run in (("first/a", runs["a"]), ("b", runs["b"])):
        s = rundir.read_json(run / rundir.SUMMARY)
        assert rows[name]["Kind"] == "run"
        assert rows[name]["Test accuracy"] == f"{100 * s['test_acc']:.2f}%"
        assert rows[name]["Best validation"] == f"{100 * s['best_val_acc']:.2f}%"
        assert rows[name]["Epochs"] == str(s["epochs"]) == "2"
        assert rows[name]["Hardware"] == s["device"]
    assert rows["b"]["Test accuracy"] == "90.00%" and rows["b"]["Best validation"] == "40.00%"
    assert rows["b"]["Wall time"] == "1:02:03" and rows["b"]["Precision"] == "bf16"
    assert rundir.read_json(runs["a"] / rundir.SUMMARY)["wall_seconds"] == 83.4
    assert rows["first/a"]["Wall time"] == "0:01:23"
    assert rows["first/a"]["Precision"] == "fp32"                       # mixed_precision "no"
    # a search: its best trial's numbers, the whole search's wall time (search.json: 123.4 s)
    assert rows["search-s"]["Kind"] == "search" and rows["search-s"]["Wall time"] == "0:02:03"
    assert rows["search-s"]["Test accuracy"] == rows["first/a"]["Test accuracy"]   # its best/ is run a
    # a report.json from before wall time and precision were recorded
    assert rows["old"]["Wall time"] == "–" and rows["old"]["Precision"] == "–"
    assert rows["old"]["Test accuracy"] == "50.00%"
    # dates are the runs' starts, shown in local time, newest first
    assert _column(top, "Date (run start)")[0].startswith("2026-12-01")


def test_each_cell_carries_the_key_the_page_sorts_by(tree):
    top = _index(tree / "index.html")
    at = {h: i for i, h in enumerate(HEADERS)}
    dates = [float(row[at["Date (run start)"]]["v"]) for row in top.rows]
    assert dates == sorted(dates, reverse=True)
    for row in top.rows:
        text, key = row[at["Test accuracy"]]["text"], row[at["Test accuracy"]]["v"]
        assert f"{100 * float(key):.2f}%" == text
    old = next(row for row in top.rows if row[0]["a_text"] == "old")
    assert old[at["Wall time"]]["v"] == "" and old[at["Precision"]]["v"] == ""  # unknown: sorts last
    assert top.sort_types == ["text", "text", "num", "num", "num", "num", "num", "text", "text", "text"]


def test_the_sort_script_is_in_the_page_and_every_link_resolves_where_the_folder_is_copied(tree, tmp_path):
    copy = tmp_path / "copied" / "elsewhere"
    shutil.copytree(tree, copy)
    top = _index(copy / "index.html")
    assert len(top.scripts) == 1 and "report-list" in top.scripts[0] and ".sort(" in top.scripts[0]
    assert "http" not in top.scripts[0] and "innerHTML" not in top.scripts[0]
    assert top.urls
    for url in top.urls:
        assert not re.match(r"^[a-z][a-z0-9+.-]*:|^/", url, re.I), f"not relative: {url!r}"
        assert (copy / unquote(url)).is_file(), url
    # every report page leads back to the index of its folder (b's page is a stub)
    for page in ("search-s/index.html", "first/a/index.html"):
        html = (copy / page).read_text()
        assert '<a href="../index.html">all reports</a>' in html
        assert (copy / page).parent.joinpath("../index.html").resolve().is_file()


_CLICK = """<script>window.addEventListener("load", function () {
  function names() { return Array.prototype.map.call(document.querySelectorAll("#report-list tbody tr"),
    function (r) { return r.cells[0].textContent.trim(); }); }
  var out = {initial: names()};
  var head = document.querySelector('th[data-key="test_acc"] button');
  head.click(); out.acc_first = names(); head.click(); out.acc_second = names();
  var wall = document.querySelector('th[data-key="wall"] button');
  wall.click(); out.wall_first = names(); wall.click(); out.wall_second = names();
  document.querySelector('th[data-key="name"] button').click(); out.name = names();
  document.title = "PROBE " + JSON.stringify(out);
});</script>"""


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs /usr/bin/chromium (CI installs it)")
def test_clicking_a_header_sorts_the_table_in_a_browser(tree, tmp_path):
    page = tree / "probe.html"
    page.write_text((tree / "index.html").read_text().replace("</body>", _CLICK + "</body>", 1))
    try:
        r = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                            f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000",
                            "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=90)
    finally:
        page.unlink()
    m = re.search(r"<title>PROBE (.*?)</title>", r.stdout)
    assert m, r.stderr[-2000:]
    got = json.loads(m.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert got["initial"] == ["first/a", "search-s", "b", "old"]
    # test accuracy: highest first on the first click (old 50%, a and its search 20%, a tie kept in
    # date order), lowest first on the second
    assert got["acc_first"] == ["b", "old", "first/a", "search-s"]
    assert got["acc_second"] == ["first/a", "search-s", "old", "b"]
    # wall time: b's hour first, then down; the old report has none and stays last either way
    assert got["wall_first"] == ["b", "search-s", "first/a", "old"]
    assert got["wall_second"] == ["first/a", "search-s", "b", "old"]
    assert got["name"] == ["b", "first/a", "old", "search-s"]
