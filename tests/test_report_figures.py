"""reporting: the search figures draw every trial where its value is, reliability diagrams leave
near-empty bins out of the gap, and the words of the headers and tables (issue 21, points 4-6).

Figures are read back from the matplotlib Figure each function draws (`figures._save` is wrapped
to keep it), so a test checks what is drawn, not only that a PNG exists.
"""
from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from cifar_fixture import make_fake_cifar
from conftest_report_helpers import write_search_dir
from distributed import rundir
from distributed.config import TrainConfig, lr_for_batch
from reporting import figures

BATCH = 50
# The default space at batch 512 and the rates the trials trained with (x 50/512), as tuning/runner.py
# writes search.json: a batch-50 search's rates all lie below the 0.05-1 range given at batch 512.
SPACE = {"max_lr": {"type": "loguniform", "lower": 0.05, "upper": 1.0},
         "dropout": {"type": "uniform", "lower": 0.0, "upper": 0.3},
         "l1": {"type": "off_or_loguniform", "lower": 1e-7, "upper": 1e-5, "off_p": 0.5},
         "cutout_max": {"type": "randint", "lower": 8, "upper": 20},
         "scheduler": {"type": "choice", "values": ["onecycle", "step"]}}
TRIALS = [  # trial_id, status, best_val_acc, max_lr at batch 512, dropout, l1, cutout_max, scheduler
    ("a_00000", "TERMINATED", 0.52, 0.9, 0.05, 0.0, 8, "onecycle"),
    ("a_00001", "STOPPED", 0.31, 0.06, 0.29, 3e-6, 20, "step"),
    ("a_00002", "STOPPED", 0.40, 0.2, 0.1, 1e-7, 13, "onecycle"),
    ("a_00003", "ERROR", None, 0.5, 0.2, 0.0, 9, "step")]
PARAMS = ("max_lr", "dropout", "l1", "cutout_max", "scheduler")


def _write_batch50_search(path: Path) -> Path:
    from tuning.space import at_batch

    (path / rundir.TRIALS).mkdir(parents=True)
    header = ["trial_id", "status", "epochs", "best_val_acc", "best_epoch", "last_val_acc", *PARAMS, "error"]
    with open(path / rundir.RESULTS_CSV, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for tid, status, acc, lr, *rest in TRIALS:
            w.writerow([tid, status, 2 if status == "TERMINATED" else 1, "" if acc is None else acc, 1,
                        "" if acc is None else acc, lr_for_batch(lr, BATCH), *rest,
                        "NonFiniteLossError: loss nan" if status == "ERROR" else ""])
    for tid, _, acc, *_ in TRIALS:
        (path / rundir.TRIALS / tid).mkdir()
        (path / rundir.TRIALS / tid / rundir.METRICS).write_text(
            "" if acc is None else json.dumps({"epoch": 1, "val_acc": acc}) + "\n")
    rundir.write_json(path / rundir.SEARCH_JSON, {
        "name": "s50", "search": {"num_samples": 4}, "space": SPACE, "space_at_batch": at_batch(SPACE, BATCH),
        "base_config": TrainConfig(batch_size=BATCH).to_dict(), "status": "finished",
        "summary": {"best_trial": TRIALS[0][0]}})
    return path


def _trained(tid: str, param: str):
    row = next(t for t in TRIALS if t[0] == tid)
    value = dict(zip(PARAMS, row[3:]))[param]
    return lr_for_batch(value, BATCH) if param == "max_lr" else value


def _tick_value(text: str) -> float:
    return 0.0 if text == "off (0)" else float(text)


def test_search_figures_draw_every_trial_where_its_value_is(tmp_path, drawn):
    """A search at batch 50: in the scatter of each hyperparameter and on each parallel axis, every
    trial is drawn inside the axis, at its value (read back from the artists), with the axis saying
    the learning rates are the ones trained at batch 50."""
    from reporting.search import search_context, search_figures

    search = search_context(_write_batch50_search(tmp_path / "search-s50"))
    alts: dict[str, str] = {}

    def fig(key: str, name: str, alt: str) -> Path:
        alts[name] = alt
        return tmp_path / name

    search_figures(search, fig)
    assert "the 1 trial without a validation result (failed) is the red x at the bottom" in alts["hparams.png"]
    assert "max_lr as trained at batch 50 (the space's range at batch 512 scaled by 50/512)" in alts[
        "search_parallel.png"]
    assert "max_lr at batch 50" in search["headers"]        # the trials table says which rates it lists

    hparams = drawn["hparams.png"]
    axes = [ax for ax in hparams.axes if ax.get_visible() and ax.axison]
    assert [ax.get_xlabel().split(" ")[0] for ax in axes] == list(PARAMS)
    for ax, p in zip(axes, PARAMS):
        lo, hi = ax.get_xlim()
        points = np.concatenate([c.get_offsets() for c in ax.collections])
        assert len(points) == len(TRIALS), (p, points)
        for x in points[:, 0]:
            assert lo < x < hi, (p, x, (lo, hi))          # inside the axis, not on or past an edge
        if p == "scheduler":
            labels = [t.get_text() for t in ax.get_xticklabels()]
            xs = sorted(labels[int(x)] for x in points[:, 0])
            assert xs == sorted(_trained(t[0], p) for t in TRIALS), xs
        else:
            assert np.allclose(sorted(points[:, 0]), sorted(_trained(t[0], p) for t in TRIALS), rtol=1e-9), p
        # a NaN is not drawn: the failed trial (no accuracy) is an x at the bottom, in axes coordinates
        assert np.isfinite(points[:, 1]).all(), (p, points)
        scored = ax.collections[0].get_offsets()[:, 1]
        assert np.allclose(sorted(scored), sorted(100 * t[2] for t in TRIALS if t[2] is not None))
    assert axes[0].get_xlabel() == ("max_lr (loguniform), as trained at batch 50:\n0.00488-0.0977 = 0.05-1 at 512 "
                                    "x 50/512")

    parallel = drawn["search_parallel.png"]
    ax = parallel.axes[0]
    lines = [ln for ln in ax.get_lines() if len(ln.get_xdata()) == len(PARAMS)]
    assert len(lines) == len(TRIALS)
    ylo, yhi = ax.get_ylim()
    for j, p in enumerate(PARAMS):
        ys = np.array(sorted(ln.get_ydata()[j] for ln in lines))
        assert ((ys >= 0) & (ys <= 1) & (ys > ylo) & (ys < yhi)).all(), (p, ys)
        ticks = sorted((t.get_position()[1], t.get_text()) for t in ax.texts
                       if math.isclose(t.get_position()[0], j + 0.04))
        if p == "scheduler":
            got = sorted(dict(ticks)[y] for y in ys)
            assert got == sorted(_trained(t[0], p) for t in TRIALS), got
            continue
        # back from the unit position to the value, by the axis' own tick labels (3 significant digits)
        (b0, t0), (b1, t1) = [tk for tk in ticks if tk[1] != "off (0)"][0], ticks[-1]
        v0, v1 = _tick_value(t0), _tick_value(t1)
        if p in ("max_lr", "l1"):
            back = [0.0 if y == 0 else v0 * (v1 / v0) ** ((y - b0) / (b1 - b0)) for y in ys]
        else:
            back = [v0 + (v1 - v0) * (y - b0) / (b1 - b0) for y in ys]
        want = sorted(_trained(t[0], p) for t in TRIALS)
        assert np.allclose(back, want, rtol=0.02, atol=1e-12), (p, back, want)
    assert "as trained at batch 50" in ax.get_xticklabels()[0].get_text()


def test_an_axis_holds_values_outside_the_space():
    """A value outside the space's range (an older search.json, a space changed on --resume) widens
    the axis instead of falling off it."""
    values = np.array([0.001, 0.02])
    pos, ticks = figures._unit_position(values, SPACE["max_lr"], "log")
    assert pos.min() == 0.0 and pos.max() < 1 and ticks[0][1] == "0.001" and ticks[-1][1] == "1"
    assert figures._range(SPACE["dropout"], np.array([0.1, 0.5]), "linear") == (0.0, 0.5)


def test_reliability_diagram_counts_bins_and_draws_no_gap_for_near_empty_ones(tmp_path, drawn):
    counts = np.array([0, 0, 0, 0, 0, 3, 5, 0, 19, 20, 40, 0, 60, 100, 250])
    n = len(counts)
    edges = np.linspace(0, 1, n + 1)
    stats = {"bin_lower": edges[:-1], "bin_upper": edges[1:], "count": counts, "ece": 0.05,
             "acc": np.where(counts > 0, 0.9, 0.0), "conf": np.where(counts > 0, edges[:-1] + 0.5 / n, 0.0)}
    stats["acc"][5] = 0.0  # 3 images, all wrong: a 0-0.37 "gap" that says nothing
    figures.plot_reliability([{**stats, "label": "Plain"}], tmp_path / "calibration.png")
    fig = drawn["calibration.png"]
    ax, hist = fig.axes[0], fig.axes[1]
    by_label = {c.get_label(): c for c in ax.containers}
    enough = edges[:-1][counts >= figures.MIN_BIN_COUNT]
    gap_x = [bar.get_x() for bar in by_label["gap to mean confidence"]]
    assert np.allclose(gap_x, enough)                       # bins of 20 and more, and no others
    grey = [bar.get_x() for c in ax.containers if "no gap" in c.get_label() for bar in c]
    assert np.allclose(grey, edges[:-1][(counts > 0) & (counts < figures.MIN_BIN_COUNT)])
    assert sorted(int(t.get_text()) for t in hist.texts) == sorted(int(c) for c in counts if c)
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert f"bin under {figures.MIN_BIN_COUNT} images: no gap drawn" in legend


def test_search_header_names_the_search_once(tmp_path, fake_cifar, monkeypatch, capsys):
    """`search s50: ...`, not `search search-s50: ...`, at the start and in the closing line."""
    from tuning import runner
    from tuning.config import SearchConfig

    class Stop(Exception):
        pass

    def stop(*args, **kwargs):
        raise Stop

    import ray

    # No Ray: the line is printed once the trials are known to fit, just before search.json is written.
    monkeypatch.setattr(runner, "init_ray", lambda search: False)
    monkeypatch.setattr(ray, "nodes", lambda: [])
    monkeypatch.setattr(runner, "check_resources", lambda *args: None)
    monkeypatch.setattr(runner.rundir, "write_json", stop)
    cfg = TrainConfig(data_dir=str(fake_cifar), runs_dir=str(tmp_path), download=False, batch_size=BATCH)
    with pytest.raises(Stop):
        runner.run_search(cfg, SearchConfig(name="s50", num_samples=4, gpus_per_trial=0.0))
    out = capsys.readouterr().out
    assert out.startswith("search s50: 4 trials"), out
    assert "search search-" not in out and "max_lr 0.00488-0.0977 (0.05-1 at batch 512, x 50/512)" in out
    line = runner.summary_line({"search_dir": str(tmp_path / "search-s50"), "trials": 4, "wall_seconds": 437,
                                "completed": 2, "stopped": 2, "failed": 0, "best_trial": None})
    assert line.startswith("search s50: 4 trials in 437 s | 2 completed, 2 stopped early, 0 failed"), line


# ----------------------------------------------------------------------------- a run and a search, built
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[Path, Path, str]:
    """One real epoch at batch 10 without --max-lr (the batch rule), fp32; with the lines it printed."""
    import contextlib
    import io

    from distributed.engine import fit

    data = make_fake_cifar(tmp_path_factory.mktemp("data"), n_train=50, n_test=30)
    runs = tmp_path_factory.mktemp("runs")
    cfg = TrainConfig(name="tiny", data_dir=str(data), runs_dir=str(runs), download=False, val_size=10, epochs=1,
                      batch_size=10, eval_batch_size=64, num_workers=0, mixed_precision="no")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        fit(cfg, runs / "tiny", progress=False)
    return runs / "tiny", data, out.getvalue()


def test_run_header_says_fp32(tiny_run):
    header = next(ln for ln in tiny_run[2].splitlines() if "precision" in ln)
    assert "fp32 precision" in header and "no precision" not in header, header
    assert "max_lr 0.007812 (0.4 x batch 10/512)" in header


@pytest.fixture(scope="module")
def built(tiny_run, tmp_path_factory):
    """The search report of a search around the tiny run, at an absolute path under the working
    directory, with the figures it drew."""
    from reporting.report import build_report

    run, data, _ = tiny_run
    home = tmp_path_factory.mktemp("home")
    search = write_search_dir(home / "runs" / "search-demo", run, "boom")
    kept: dict[str, object] = {}
    save = figures._save

    def keep(fig, path):
        kept[Path(path).name] = fig
        return save(fig, path)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(figures, "_save", keep)
        mp.chdir(home)
        page = build_report(search.resolve(), home / "reports", data_dir=data, device="cpu", n_cam=1, n_examples=4)
    return (page.parent / "search-demo" / "index.html").read_text(), kept


def test_search_report_header_shows_paths_as_the_run_report_does(built):
    html = built[0]
    header = html[html.index("<header>"):html.index("</header>")]
    assert "Run directory <code>runs/search-demo/best</code> · search <code>runs/search-demo</code>" in header, header


def test_lr_legend_says_the_batch_rule_rounded_as_the_header(built):
    legend = [t.get_text() for t in built[1]["lr_schedule.png"].axes[0].get_legend().get_texts()]
    assert "max_lr 0.007812 (0.4 x batch 10/512)" in legend, legend
    assert not any("--max-lr" in t for t in legend)


def test_comparison_table_shows_the_default_rate_and_its_rule(built):
    row = re.search(r'<th scope="row">max_lr</th><td>([^<]*)</td><td>([^<]*)</td><td>([^<]*)</td>', built[0])
    assert row, built[0][-3000:]
    assert row.groups()[:2] == ("0.4 (batch rule: 0.4 x batch 512/512); 0.007812 at batch 10",
                                "0.007812 (batch rule: 0.4 x batch 10/512)")
    assert ">None<" not in built[0]


def test_trials_table_says_completed_stopped_early_and_failed(built):
    html = built[0]
    table = html[html.index('<table id="trials">'):]
    table = table[:table.index("</table>")]
    cells = re.findall(r"<td>(completed|stopped early|failed)</td>", table)
    assert cells == ["completed", "stopped early", "failed"], table
    assert "TERMINATED" not in table and "STOPPED" not in table and "ERROR" not in table
    assert "Precision</th><td>fp32</td>" in html
    assert "3: 1 completed (every epoch), 1 stopped early by ASHA, 1 failed" in html
