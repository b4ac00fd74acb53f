"""reporting: the HTML report of a run and of a search, its CLI, and the page in a real browser.

The run directory comes from the real training loop (`distributed.engine.fit`, one tiny epoch on
a synthetic CIFAR-format data set) when it is importable, else it is written straight from the
run-directory contract.  Reports are built once per module: GradCAM and matplotlib dominate.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from cifar_fixture import make_fake_cifar
from conftest_report_helpers import write_search_dir
from distributed import rundir
from distributed.config import TrainConfig
from reporting.report import build_report, classification_stats

REPO = Path(__file__).resolve().parents[1]
HOSTILE_NAME = "<img src=x onerror=alert(1)>"      # a valid run name: no "/"
HOSTILE = "<script>alert(1)</script>"
SECTIONS = ("summary", "curves", "data", "confusion", "examples", "gradcam", "gradcam-classes")
FIGURES = ("curves.png", "lr_schedule.png", "lr_find.png", "samples.png", "augmentation.png", "confusion.png",
           "wrong.png", "right.png", "gradcam_correct.png", "gradcam_misclassified.png", "gradcam_all_classes.png")
CHROMIUM = "/usr/bin/chromium"


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return make_fake_cifar(tmp_path_factory.mktemp("data"), n_train=50, n_test=30)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, data_dir) -> Path:
    runs = tmp_path_factory.mktemp("runs")
    path = runs / HOSTILE_NAME
    from distributed.engine import fit

    cfg = TrainConfig(name=HOSTILE_NAME, data_dir=str(data_dir), runs_dir=str(runs), download=False,
                      val_size=10, epochs=2, batch_size=20, eval_batch_size=64, num_workers=0,
                      mixed_precision="no")
    fit(cfg, path, progress=False)
    # Hostile text where a report shows free-form provenance, and an LR range test (the contract's
    # lr_find.json) if the run had none, so every section is exercised.
    meta = rundir.read_json(path / rundir.CONFIG)
    meta["hostname"] = HOSTILE
    rundir.write_json(path / rundir.CONFIG, meta)
    if not (path / rundir.LR_FIND).exists():
        rundir.write_json(path / rundir.LR_FIND, {"lrs": np.geomspace(1e-4, 1, 20).tolist(),
                                                 "losses": np.linspace(2.3, 1.9, 20).tolist(),
                                                 "suggested_max_lr": 0.1, "chosen_max_lr": 0.2})
    return path


@pytest.fixture(scope="module")
def report(run_dir, data_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report")
    return build_report(run_dir, out, data_dir=data_dir, device="cpu", n_cam=2)


@pytest.fixture(scope="module")
def search_report(run_dir, data_dir, tmp_path_factory) -> Path:
    search = write_search_dir(tmp_path_factory.mktemp("runs2") / "search-demo", run_dir, HOSTILE)
    return build_report(search, tmp_path_factory.mktemp("search_report"), data_dir=data_dir, device="cpu", n_cam=1)


class _Page(HTMLParser):
    """Ids, images (src, alt), every URL-bearing attribute, tags, and the trials table rows."""

    def __init__(self) -> None:
        super().__init__()
        self.ids, self.imgs, self.urls, self.tags, self.trial_rows = set(), [], [], [], 0
        self._in_trials = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "img":
            self.imgs.append((a.get("src", ""), a.get("alt")))
        for key in ("src", "href", "srcset", "poster", "data"):
            if a.get(key):
                self.urls.append(a[key])
        if tag == "table" and a.get("id") == "trials":
            self._in_trials = True
        if tag == "tr" and self._in_trials:
            self.trial_rows += 1

    def handle_endtag(self, tag):
        if tag == "table":
            self._in_trials = False


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


# ----------------------------------------------------------------------------- the run report
def test_every_section_and_figure_present(report, run_dir):
    page = _parse(report)
    assert set(SECTIONS) <= page.ids
    srcs = {src for src, _ in page.imgs}
    assert set(FIGURES) <= srcs, f"missing figures: {set(FIGURES) - srcs}"
    html = report.read_text()
    summary = rundir.read_json(run_dir / rundir.SUMMARY)
    assert f"{100 * summary['test_acc']:.2f}%" in html
    assert "11,173,962" in html                            # parameter count
    for field in ("max_lr", "aug.cutout_p", "label_smoothing"):   # the full config table
        assert f">{field}<" in html
    for name in rundir.CIFAR10_CLASSES:                     # per-class table
        assert f">{name}<" in html


def test_every_image_exists_is_a_png_and_has_alt_text(report):
    from PIL import Image

    page = _parse(report)
    assert len(page.imgs) >= len(FIGURES)
    for src, alt in page.imgs:
        path = report.parent / src
        assert path.is_file(), src
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", src
        with Image.open(path) as im:
            im.load()                                       # decodes every pixel
            assert im.width > 50 and im.height > 50
        assert alt and len(alt) > 20 and src not in alt, f"{src}: alt text {alt!r}"


def test_hostile_strings_are_escaped(report):
    html = report.read_text()
    assert HOSTILE not in html and HOSTILE_NAME not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "script" not in _parse(report).tags             # the page needs no JS at all


def test_page_is_self_contained(report):
    page = _parse(report)
    for url in page.urls:
        assert not re.match(r"^[a-z][a-z0-9+.-]*:|^//", url, re.I), f"non-relative URL {url!r}"
        if not url.startswith("#"):
            assert (report.parent / url).is_file(), url
    assert "link" not in page.tags                           # no external stylesheets or fonts
    assert "@import" not in report.read_text() and "url(" not in report.read_text()


def test_classification_stats():
    logits = np.array([[2, 0, 0], [0, 2, 0], [0, 2, 0], [0, 0, 2]], dtype=np.float32)
    labels = np.array([0, 1, 2, 2])
    s = classification_stats(logits, labels, 3)
    assert s["cm"].tolist() == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]
    assert s["accuracy"] == 0.75
    np.testing.assert_allclose(s["precision"], [1.0, 0.5, 1.0])
    np.testing.assert_allclose(s["recall"], [1.0, 1.0, 0.5])


# ----------------------------------------------------------------------------- search report
def test_search_report_has_trials_table_and_plots(search_report):
    page = _parse(search_report)
    assert "search" in page.ids and "trials" in page.ids
    assert page.trial_rows == 1 + 3                          # header + one row per trial
    assert "hparams.png" in {src for src, _ in page.imgs}
    html = search_report.read_text()
    assert HOSTILE not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "TERMINATED" in html and "STOPPED" in html and "NonFiniteLossError" in html
    assert html.count('class="best"') == 1                  # the best trial's row is marked
    assert set(SECTIONS) <= page.ids                          # the best trial's full report too


# ----------------------------------------------------------------------------- CLI
def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": ""}                   # the script must find the repo itself
    return subprocess.run([sys.executable, str(REPO / "reporting" / "build.py"), *args], capture_output=True,
                          text=True, env=env, timeout=120, cwd=REPO)


def test_cli_missing_run_dir_is_one_error_line(tmp_path):
    r = _cli(str(tmp_path / "nope"), "--out", str(tmp_path / "out"))
    assert r.returncode == 2
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("damage", ["no_predictions", "corrupt_config", "corrupt_summary", "no_data"])
def test_cli_bad_run_dir(damage, run_dir, data_dir, tmp_path, capsys):
    from cifar_lab.cli import report as main

    bad = tmp_path / "run"
    shutil.copytree(run_dir, bad, ignore=shutil.ignore_patterns("checkpoints", "*.safetensors"))
    shutil.copy(run_dir / rundir.FINAL_WEIGHTS, bad / rundir.FINAL_WEIGHTS)
    data = str(data_dir)
    if damage == "no_predictions":
        (bad / rundir.PREDICTIONS).unlink()
    elif damage == "corrupt_config":
        (bad / rundir.CONFIG).write_text('{"config": {')
    elif damage == "corrupt_summary":
        (bad / rundir.SUMMARY).write_text("not json")
    else:
        data = str(tmp_path / "empty")
    assert main([str(bad), "--out", str(tmp_path / "out"), "--data-dir", data, "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    expected = {"no_predictions": "predictions.npz", "corrupt_config": "config.json",
                "corrupt_summary": "summary.json", "no_data": "--data-dir"}[damage]
    assert expected in err
    assert not (tmp_path / "out" / "index.html").exists()


# ----------------------------------------------------------------------------- in a browser
# Injected into a TEST COPY of the page only: a CSP that blocks (and reports) every request that
# is not a local file, and a load-time census of the images.  The result goes to the title,
# which --dump-dom prints.
_PROBE_HEAD = """<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src file:; \
style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<script>window.__blocked = []; document.addEventListener("securitypolicyviolation",
  function (e) { window.__blocked.push(e.blockedURI); });</script>"""
_PROBE_BODY = """<script>window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var broken = imgs.filter(function (i) { return !i.complete || i.naturalWidth === 0; })
                   .map(function (i) { return i.getAttribute("src"); });
  document.title = "PROBE " + JSON.stringify({images: imgs.length, broken: broken, blocked: window.__blocked});
});</script>"""


def _chromium(*args: str, profile: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", *args],
        capture_output=True, text=True, timeout=90)


def _probe(report: Path, tmp_path: Path, name: str = "probe.html") -> dict:
    html = report.read_text()
    html = html.replace("<head>", "<head>\n" + _PROBE_HEAD, 1).replace("</body>", _PROBE_BODY + "</body>", 1)
    probe = report.parent / name
    probe.write_text(html)
    try:
        r = _chromium("--virtual-time-budget=10000", "--dump-dom", probe.as_uri(), profile=tmp_path / "profile")
    finally:
        probe.unlink()
    m = re.search(r"<title>PROBE (.*?)</title>", r.stdout)
    assert m, f"probe did not run; chromium stderr:\n{r.stderr[-2000:]}"
    result = json.loads(m.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    result["net_errors"] = [line for line in r.stderr.splitlines() if "net::ERR_" in line]
    return result


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs /usr/bin/chromium (CI installs it)")
def test_page_in_headless_chromium(report, tmp_path):
    result = _probe(report, tmp_path)
    assert result["images"] >= len(FIGURES)
    assert result["broken"] == [] and result["blocked"] == [] and result["net_errors"] == [], result
    shot = tmp_path / "page.png"
    r = _chromium("--window-size=1280,4000", f"--screenshot={shot}", report.as_uri(), profile=tmp_path / "profile")
    assert shot.is_file() and shot.stat().st_size > 10_000, r.stderr[-2000:]


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs /usr/bin/chromium (CI installs it)")
def test_browser_probe_detects_broken_images_and_requests(report, tmp_path):
    """The probe itself works: a missing image and a remote image are both caught."""
    copy = tmp_path / "copy"
    shutil.copytree(report.parent, copy)
    page = copy / "index.html"
    html = page.read_text().replace('src="confusion.png"', 'src="missing.png"', 1)
    html = html.replace("</main>", '<img src="http://example.invalid/x.png" alt="remote"></main>', 1)
    page.write_text(html)
    result = _probe(page, tmp_path)
    assert "missing.png" in result["broken"]
    assert any("example.invalid" in u for u in result["blocked"]), result
