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
from urllib.parse import quote, unquote

import numpy as np
import pytest

from cifar_fixture import CLASSES, make_fake_cifar
from conftest_report_helpers import LONG_FLOAT, MATH_TEXT, TRIAL_IDS, write_search_dir
from distributed import rundir
from distributed.config import CIFAR10_CLASSES, TrainConfig
from reporting.report import build_report, calibration_stats, classification_stats, health_warnings

REPO = Path(__file__).resolve().parents[1]
HOSTILE_NAME = "<img src=x onerror=alert(1)>"      # a valid run name: no "/"
HOSTILE = "<script>alert(1)</script>"
# matplotlib reads "$...$" and backslashes as math text; a class name is user input (batches.meta).
MATH_CLASS = "c$\\frac{$t\\"
SECTIONS = ("summary", "curves", "calibration", "data", "confusion", "examples", "gradcam", "gradcam-classes")
FIGURES = ("curves.png", "lr_schedule.png", "lr_find.png", "calibration.png", "samples.png", "augmentation.png",
           "confusion.png", "wrong.png", "right.png", "gradcam_correct.png", "gradcam_misclassified.png",
           "gradcam_all_classes.png")
SEARCH_FIGURES = ("search_curves.png", "search_parallel.png", "hparams.png")
CHROMIUM = "/usr/bin/chromium"


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    classes = list(CLASSES)
    classes[3] = MATH_CLASS
    return make_fake_cifar(tmp_path_factory.mktemp("data"), n_train=50, n_test=30, classes=classes)


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
    """reports/<run name>/index.html, the run's report (reports/index.html is the index of the folder)."""
    out = tmp_path_factory.mktemp("report")
    index = build_report(run_dir, out, data_dir=data_dir, device="cpu", n_cam=2)
    assert index == out / "index.html"
    return out / HOSTILE_NAME / "index.html"


@pytest.fixture(scope="module")
def search_report(report, run_dir, data_dir, tmp_path_factory) -> Path:
    """The report of a search built into a copy of the run report's reports folder: its second report."""
    out = tmp_path_factory.mktemp("reports2") / "reports"
    shutil.copytree(_reports(report), out)
    search = write_search_dir(tmp_path_factory.mktemp("runs2") / "search-demo", run_dir, HOSTILE)
    build_report(search, out, data_dir=data_dir, device="cpu", n_cam=1)
    return out / "search-demo" / "index.html"


def _folder(report: Path) -> Path:
    """A report's own folder: its PNGs and report.json."""
    return report.parent


def _reports(report: Path) -> Path:
    """The reports folder a report is in (its index.html lists them all)."""
    return report.parent.parent


class _Page(HTMLParser):
    """Ids, images (src, alt), every URL-bearing attribute, tags, and the trials table rows."""

    def __init__(self) -> None:
        super().__init__()
        self.ids, self.imgs, self.urls, self.tags, self.trial_rows, self.links = set(), [], [], [], 0, []
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
        if tag == "a" and a.get("href") and not a["href"].startswith("#"):
            self.links.append(a["href"])
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


def _target(page: Path, url: str) -> Path:
    """The file a relative URL of `page` points at (fragment dropped, %-escapes decoded)."""
    return page.parent / unquote(url.split("#")[0])


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
    for name in CIFAR10_CLASSES[:3]:                        # per-class table
        assert f">{name}<" in html


def test_every_image_exists_is_a_png_and_has_alt_text(report):
    from PIL import Image

    page = _parse(report)
    assert len(page.imgs) >= len(FIGURES)
    for src, alt in page.imgs:
        path = _target(report, src)
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
    # the index lists the run by its name (escaped) and links it by its %-quoted folder
    index = (_reports(report) / "index.html").read_text()
    assert HOSTILE_NAME not in index and "&lt;img src=x onerror=alert(1)&gt;" in index
    assert f'href="{quote(HOSTILE_NAME, safe="")}/index.html"' in index


def test_math_text_in_a_class_name_is_plain_text(report):
    """A class name with $ and backslashes (matplotlib math text: ParseFatalException before) is
    drawn and shown as written."""
    assert MATH_CLASS in report.read_text()                 # nothing to escape for HTML in it
    assert (_folder(report) / "confusion.png").is_file()    # its tick labels hold the name


@pytest.mark.parametrize("which", ["index", "own folder"])
def test_page_is_self_contained(report, which):
    page_path = _reports(report) / "index.html" if which == "index" else report
    page = _parse(page_path)
    for url in page.urls:
        assert not re.match(r"^[a-z][a-z0-9+.-]*:|^//", url, re.I), f"non-relative URL {url!r}"
        if not url.startswith("#"):
            assert _target(page_path, url).is_file(), url
    assert "link" not in page.tags                           # no external stylesheets or fonts
    text = page_path.read_text()
    assert "@import" not in text and "url(" not in text


def test_classification_stats():
    logits = np.array([[2, 0, 0], [0, 2, 0], [0, 2, 0], [0, 0, 2]], dtype=np.float32)
    labels = np.array([0, 1, 2, 2])
    s = classification_stats(logits, labels, 3)
    assert s["cm"].tolist() == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]
    assert s["accuracy"] == 0.75
    np.testing.assert_allclose(s["precision"], [1.0, 0.5, 1.0])
    np.testing.assert_allclose(s["recall"], [1.0, 1.0, 0.5])
    np.testing.assert_allclose(s["f1"], [1.0, 2 / 3, 2 / 3])


def test_f1_is_zero_for_a_class_never_predicted_and_precision_undefined():
    # class 2 is present but never predicted; class 3 is neither present nor predicted
    logits = np.eye(4, dtype=np.float32)[[0, 1, 1, 0]] * 3
    labels = np.array([0, 1, 2, 2])
    s = classification_stats(logits, labels, 4)
    assert s["f1"][2] == 0.0 and np.isnan(s["precision"][2]) and s["recall"][2] == 0.0
    assert np.isnan(s["f1"][3]) and np.isnan(s["precision"][3]) and np.isnan(s["recall"][3])
    # F1 = 2TP / (2TP + FP + FN): class 0 has TP 1, FP 1 (the second class-2 image), FN 0
    assert s["f1"][0] == pytest.approx(2 / 3)


def test_expected_calibration_error_by_hand():
    # Confidences 0.95, 0.95 (one right, one wrong), 0.55 (right), 0.25 (wrong), in 15 bins:
    # (0.9333, 1]: acc 0.5, conf 0.95 -> 2/4 * 0.45; (0.5333, 0.6]: 1/4 * |1 - 0.55|; (0.2, 0.2667]: 1/4 * 0.25
    probs = np.array([[0.95, 0.05, 0.0, 0.0], [0.95, 0.05, 0.0, 0.0], [0.55, 0.45, 0.0, 0.0],
                      [0.25, 0.25, 0.25, 0.25]])
    labels = np.array([0, 1, 0, 1])      # row 3 predicts class 0 (the first of a tie): wrong
    cal = calibration_stats(probs, labels, n_bins=15)
    assert cal["ece"] == pytest.approx(2 / 4 * 0.45 + 1 / 4 * 0.45 + 1 / 4 * 0.25, abs=1e-8)
    assert cal["count"].sum() == 4 and cal["count"][14] == 2 and cal["count"][8] == 1 and cal["count"][3] == 1
    assert cal["accuracy"] == 0.5
    perfect = calibration_stats(np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([0, 1]))
    assert perfect["ece"] == 0.0


def _ece_by_loop(logits: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """ECE written out the plain way, independently of the report's code."""
    z = logits.astype(np.float64)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    conf, correct = p.max(1), (p.argmax(1) == labels)
    total = 0.0
    for m in range(n_bins):
        lo, hi = m / n_bins, (m + 1) / n_bins
        inside = (conf > lo) & (conf <= hi) if m else (conf <= hi)
        if inside.any():
            total += inside.mean() * abs(correct[inside].mean() - conf[inside].mean())
    return total


def test_numbers_in_the_html_are_recomputed_from_predictions_npz(report, run_dir):
    """Accuracy, per-class recall/precision/F1 and both ECEs on the page equal plain numpy
    recomputations from predictions.npz."""
    html = report.read_text()
    pred = rundir.load_predictions(run_dir)
    logits, labels = pred["logits"], pred["labels"]
    guess = logits.argmax(1)
    assert f"Test accuracy {100 * (guess == labels).mean():.2f}%" in html
    for c in range(10):
        tp, fp, fn = [int(v) for v in (((guess == c) & (labels == c)).sum(), ((guess == c) & (labels != c)).sum(),
                                       ((guess != c) & (labels == c)).sum())]
        recall = f"{100 * tp / (tp + fn):.2f}%"
        precision = f"{100 * tp / (tp + fp):.2f}%" if tp + fp else "–"
        f1 = f"{100 * 2 * tp / (2 * tp + fp + fn):.2f}%"
        row = (f'<td class="num">{tp + fn}</td><td class="num">{tp}</td><td class="num">{recall}</td>'
               f'<td class="num">{precision}</td><td class="num">{f1}</td>')
        assert row in html, (c, row)
    assert "“–” means undefined" in html
    # Both evaluations are stored; the reported logits are the plain ones (no --tta).
    np.testing.assert_array_equal(pred["logits"], pred["logits_plain"])
    for key, label in (("logits_plain", "Plain: one view per image"), ("logits_tta", "Mirror-averaged (--tta)")):
        ece = _ece_by_loop(pred[key], labels)
        acc = (pred[key].argmax(1) == labels).mean()
        assert re.search(rf"<th scope=\"row\">{re.escape(label)}</th><td class=\"num\">{100 * acc:.2f}%</td>"
                         rf"<td class=\"num\">[0-9.]+%</td><td class=\"num\">{100 * ece:.2f}%</td>", html), label


def test_curves_put_like_with_like_and_the_schedule_is_per_step(report, run_dir):
    """Training loss with label smoothing is never the only training curve beside plain validation
    loss: plain training cross-entropy and validation with the same smoothing are logged too."""
    rows = rundir.read_metrics(run_dir)
    for r in rows:
        assert r["train_ce"] is not None and r["val_loss_smoothed"] is not None
        assert r["val_loss_smoothed"] != r["val_loss"]      # label smoothing 0.1 changes it
    steps = rundir.read_steps(run_dir)
    # OneCycle's peak is in the record: the run's max_lr (the default, scaled to its batch)
    peak = rundir.read_json(run_dir / "config.json")["effective_max_lr"]
    assert max(s["lr"] for s in steps) == pytest.approx(peak) and peak < 0.4
    html = report.read_text()
    assert "plain cross-entropy of the training batches" in html
    assert "at every optimiser step" in html


def test_health_warnings_name_chance_level_and_divergence_and_stay_quiet_for_a_good_run():
    classes = tuple(CLASSES)
    bad = health_warnings([{"epoch": 1, "train_loss": 2.5, "val_loss": 2.2}, {"epoch": 2, "train_loss": 22.0,
                                                                            "val_loss": 83.0}],
                          {"test_acc": 0.106, "test_loss": 83.0}, np.full(100, 7), classes)
    text = " ".join(bad)
    assert "chance level" in text and "Validation loss exploded" in text and "Test loss 83" in text
    assert "predicts “horse” for 100%" in text
    nan = health_warnings([{"epoch": 1, "train_loss": float("nan"), "val_loss": None}], {"test_acc": 0.5},
                          np.arange(100) % 10, classes)
    assert any("non-finite" in w for w in nan)
    good = health_warnings([{"epoch": e, "train_loss": 2.0 / e, "val_loss": 1.5 / e ** 0.5} for e in (1, 2, 3)],
                           {"test_acc": 0.91, "test_loss": 0.3}, np.arange(100) % 10, classes)
    assert good == []


def test_a_model_at_chance_is_flagged_and_its_empty_gradcam_maps_labelled(run_dir, data_dir, tmp_path):
    """A classifier with zero weights: every logit 0, every GradCAM map all zero, one class predicted."""
    from safetensors.numpy import load_file, save_file

    run = tmp_path / "chance"
    shutil.copytree(run_dir, run, ignore=shutil.ignore_patterns("checkpoints", "best.safetensors"))
    weights = load_file(str(run / rundir.FINAL_WEIGHTS))
    weights["linear.weight"][:] = 0
    weights["linear.bias"][:] = 0
    save_file(weights, str(run / rundir.FINAL_WEIGHTS))
    pred = rundir.load_predictions(run)
    zeros = np.zeros_like(pred["logits"])
    np.savez(run / rundir.PREDICTIONS, logits=zeros, logits_plain=zeros, logits_tta=zeros, labels=pred["labels"],
             indices=pred["indices"])
    summary = rundir.read_json(run / rundir.SUMMARY)
    summary.update(test_acc=float((pred["labels"] == 0).mean()), test_loss=float(np.log(10)))
    rundir.write_json(run / rundir.SUMMARY, summary)
    html = build_report(run, tmp_path / "out", data_dir=data_dir, device="cpu", n_cam=2).parent.joinpath(
        "chance", "index.html").read_text()
    assert 'id="warnings"' in html and "chance level" in html and "for 100% of the test images" in html
    # 2 correct rows x 4 layers + 2 mistakes x 8 maps + 10 classes x 4 layers, all of them zero
    assert "64 maps on this page are marked “all zero”" in html


# ----------------------------------------------------------------------------- search report
def test_search_report_has_trials_table_and_plots(search_report):
    page = _parse(search_report)
    assert "search" in page.ids and "trials" in page.ids
    assert page.trial_rows == 1 + 3                          # header + one row per trial
    srcs = {src.rsplit("/", 1)[-1] for src, _ in page.imgs}
    assert set(SEARCH_FIGURES) <= srcs
    html = search_report.read_text()
    assert HOSTILE not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "completed" in html and "stopped early" in html and "NonFiniteLossError" in html
    assert html.count('class="best"') == 1                  # the best trial's row is marked
    assert set(SECTIONS) <= page.ids                          # the best trial's full report too


def test_asha_search_report_has_no_pbt_section(search_report):
    """An ASHA search's page is as before issue 23: no schedule, no lineage, no exploit column, ASHA's
    words (here, where the ASHA report is built anyway: tests/test_report_pbt.py has the PBT page)."""
    html = search_report.read_text()
    for absent in ('id="pbt"', 'id="lineage"', 'id="pbt-header"', "exploits adopted", "pbt_schedule.png",
                   "pbt_lineage.png", "Population Based", 'id="schedule"', "learned schedule"):
        assert absent not in html, absent
    assert "ASHA stopped the weakest early." in html and "1 stopped early by ASHA, 1 failed" in html
    assert "trials that ASHA stopped early end early (x)" in html


def test_search_table_keeps_strings_and_rounds_numbers(search_report):
    html = search_report.read_text()
    for trial in TRIAL_IDS:                                  # "3e682_00000" is a float to Python
        assert f">{trial}<" in html
    assert ">inf<" not in html
    assert f"{LONG_FLOAT:.4g}" in html and str(LONG_FLOAT) not in html
    assert MATH_TEXT in html                                 # as written, not as math text
    assert "61.00%" in html                                  # best_val_acc as a percentage
    assert "Hyperparameter search “demo”" in html
    assert "best best_val_acc" not in html and "Search search-" not in html
    assert "Search wall time (all trials)</th><td>0:02:03 (123.4 s)" in html


def test_best_config_beside_the_default_recipe(search_report):
    html = search_report.read_text()
    # epochs 2 in the run the fixture copied as best/, 30 in the recipe; not a sampled field
    assert '<tr class="differs"><th scope="row">epochs</th><td>30</td><td>2</td><td>search flags</td>' in html
    assert '<th scope="row">momentum</th><td>0.9</td><td>0.9</td>' in html


def test_search_report_shows_the_refit_beside_the_best_trial(search_report):
    """`cifar-search --refit`: the best configuration retrained on every training image is reported
    next to the best trial's own test accuracy, with its plain and TTA figures and where it is."""
    html = search_report.read_text()
    row = re.search(r"<th[^>]*>Refit test accuracy</th><td>([^<]*(?:<[^t][^<]*)*)</td>", html)
    assert row, html[:3000]
    assert row.group(1).startswith("71.23% (the best configuration trained again on all 50,000 training images "
                                   "for 3 epochs, in refit/; plain 71.23%, mirror TTA 73.11%)")
    assert html.index(">Test accuracy<") < html.index(">Refit test accuracy<")  # beside the best trial's
    assert "trained again on every training image (<code>--refit</code>" in html and "<code>search-demo/refit/</code>" in html


def test_a_run_without_validation_split_reads_right(data_dir, tmp_path):
    """--val-size 0 trains on every image and picks no epoch: the report says so instead of showing an
    empty 'best validation (epoch N)', and the curves text does not promise validation curves."""
    from distributed.engine import fit

    cfg = TrainConfig(name="all", data_dir=str(data_dir), runs_dir=str(tmp_path), download=False, val_size=0,
                      epochs=2, batch_size=25, eval_batch_size=64, num_workers=0, mixed_precision="no")
    fit(cfg, tmp_path / "all", progress=False)
    html = build_report(tmp_path / "all", tmp_path / "out", data_dir=data_dir, device="cpu", n_cam=1,
                        n_examples=4).parent.joinpath("all", "index.html").read_text()
    assert ("Best validation accuracy</th><td>none (--val-size 0: trained on all 50 training images; the final "
            "weights are the ones tested)") in html
    assert "Final validation accuracy" not in html and "(epoch 2)" not in html
    assert '<div class="v">none</div><div class="k">Best validation accuracy</div>' in html
    assert "beside validation" not in html and "validation and test loss" not in html
    assert "This run has no validation split" in html and "no validation split (--val-size 0)" in html


def test_hyperparameter_axes_follow_the_search_space():
    from reporting.figures import axis_scale

    xs = np.array([0.1, 0.2])
    assert axis_scale({"type": "loguniform", "lower": 0.05, "upper": 1.0}, xs) == "log"
    assert axis_scale({"type": "uniform", "lower": 0.0, "upper": 0.5}, np.array([0.0, 0.4])) == "linear"
    assert axis_scale({"type": "randint", "lower": 8, "upper": 20}, np.array([8.0, 19.0])) == "linear"
    assert axis_scale({"type": "off_or_loguniform", "lower": 1e-7, "upper": 1e-5}, np.array([0, 1e-6])) == "symlog"
    assert axis_scale({"type": "choice", "values": [1, 2]}, xs) == "category"
    assert axis_scale(None, np.array([np.nan, 1.0])) == "category"
    # uniform values spanning more than a decade stay linear (they were drawn on a log axis before)
    assert axis_scale({"type": "uniform", "lower": 0.0, "upper": 0.5}, np.array([0.01, 0.45])) == "linear"


# ----------------------------------------------------------------------------- the reports folder
def test_every_report_keeps_its_folder_and_the_index_lists_them_newest_first(report, search_report, tmp_path):
    out = _reports(search_report)
    run_folder = out / HOSTILE_NAME
    assert (run_folder / "index.html").is_file() and (run_folder / "curves.png").is_file()   # not overwritten
    assert (out / "search-demo" / "index.html").is_file()
    page = _parse(out / "index.html")
    assert "reports" in page.ids and "report-list" in page.ids
    # the run (created today) is newer than the search (started 2026-11-26 10:00 UTC in search.json);
    # each row links its report twice (name, folder), then the report built last is linked under the table
    run_link = f"{quote(HOSTILE_NAME, safe='')}/index.html"
    assert page.links == [run_link, run_link, "search-demo/index.html", "search-demo/index.html",
                          "search-demo/index.html"]
    html = (out / "index.html").read_text()
    assert re.search(r'<tr class="current">\s*<td class="name" data-v="search-demo"><a href="search-demo/index.html">'
                     r'search-demo</a>', html)
    # a report's own page leads back to the list
    own = _parse(run_folder / "index.html")
    assert set(own.links) == {"../index.html"}
    # copied elsewhere, every link and image still resolves
    copy = tmp_path / "elsewhere"
    shutil.copytree(out, copy)
    for page_path in [copy / "index.html"] + [copy / unquote(link) for link in page.links]:
        parsed = _parse(page_path)
        for url in parsed.urls + parsed.links:
            if not url.startswith("#"):
                assert _target(page_path, url).is_file(), (page_path, url)


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


def test_cli_any_failure_is_one_line_exit_2_and_keeps_the_previous_report(report, run_dir, data_dir, tmp_path,
                                                                         capsys, monkeypatch):
    """A failure nobody foresaw (here: in the GradCAM step, half-way through) is one line and exit 2,
    and the report already in the folder under that name stays whole."""
    import reporting.report
    from cifar_lab.cli import report as main

    out = tmp_path / "reports"
    shutil.copytree(_reports(report), out)
    before = {p.name: p.read_bytes() for p in (out / HOSTILE_NAME).iterdir()}

    def boom(*args, **kwargs):
        raise RuntimeError("boom\nsecond line of a long message")

    monkeypatch.setattr(reporting.report, "_gradcam_figures", boom)
    assert main([str(run_dir), "--out", str(out), "--data-dir", str(data_dir), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "RuntimeError: boom" in err, err
    assert {p.name: p.read_bytes() for p in (out / HOSTILE_NAME).iterdir()} == before
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp")]


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
def test_index_and_every_linked_report_in_headless_chromium(search_report, tmp_path):
    """The index page (every report listed, the curves of the one built last) and each report it
    links to load in a browser with every image, and no request leaves the folder."""
    index = _reports(search_report) / "index.html"
    result = _probe(index, tmp_path)
    assert result["images"] == 1                            # the curves of the report built last
    assert result["broken"] == [] and result["blocked"] == [] and result["net_errors"] == [], result
    links = sorted(set(_parse(index).links))
    assert len(links) == 2
    for link in links:
        linked = _probe(_target(index, link), tmp_path)
        assert linked["images"] >= len(FIGURES) + (len(SEARCH_FIGURES) if link.startswith("search-") else 0)
        assert linked["broken"] == [] and linked["blocked"] == [] and linked["net_errors"] == [], (link, linked)
    shot = tmp_path / "page.png"
    r = _chromium("--window-size=1400,4000", f"--screenshot={shot}", search_report.as_uri(),
                  profile=tmp_path / "profile")
    assert shot.is_file() and shot.stat().st_size > 10_000, r.stderr[-2000:]


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs /usr/bin/chromium (CI installs it)")
def test_browser_probe_detects_broken_images_and_requests(report, tmp_path):
    """The probe itself works: a missing image and a remote image are both caught."""
    copy = tmp_path / "copy"
    shutil.copytree(_folder(report), copy)
    page = copy / "index.html"
    html = page.read_text().replace('src="confusion.png"', 'src="missing.png"', 1)
    html = html.replace("</main>", '<img src="http://example.invalid/x.png" alt="remote"></main>', 1)
    page.write_text(html)
    result = _probe(page, tmp_path)
    assert "missing.png" in result["broken"]
    assert any("example.invalid" in u for u in result["blocked"]), result
