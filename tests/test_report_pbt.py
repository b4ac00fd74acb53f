"""reporting: a PBT search's learned schedule and lineage, and a scheduled run's schedule (issue 23, item 3).

The search directories are written here from issue 23's file formats (search.json with
search.scheduler "pbt", results.csv, trials/<id>/metrics.jsonl rows with "schedule",
trials/<id>/lineage.jsonl, best/schedule.json) around one real tiny run as best/, as
conftest_report_helpers does for an ASHA search. Figures are read back from the matplotlib Figure
each function draws (the `drawn` fixture of conftest.py keeps it), as in test_report_figures.py.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from cifar_fixture import make_fake_cifar
from distributed import rundir
from distributed.config import TrainConfig

# A population of 4 trials x 4 epochs, perturbation every epoch. Exploits (epoch k, recipient <- donor):
# B <- A at 1, C <- B at 2, A <- C at 3, B <- D at 3. The best trial A's weights: A's epoch 1, then B's
# epoch 2 (B took A's epoch 1), then C's epoch 3 (C took B's epoch 2), then A's own epoch 4. B's second
# exploit (epoch 3) happened after C copied B: it is not in A's ancestry.
A, B, C, D = "p1f3a_00000", "p1f3a_00001", "p1f3a_00002", "p1f3a_00003"
EXPLOITS = [(1, B, A), (2, C, B), (3, A, C), (3, B, D)]
ANCESTRY = [(1, B, A), (2, C, B), (3, A, C)]
FIELDS = ["cutout_max", "cutout_p", "dropout", "flip_p", "weight_decay"]
PERTURBED = ["cutout_p", "dropout", "flip_p", "weight_decay"]
# The best trial's schedule, epoch 1..4; cutout_max never changes (not perturbed).
SCHEDULE = [{"cutout_max": 16, "cutout_p": 0.5, "dropout": 0.0, "flip_p": 0.5, "weight_decay": 5e-4},
            {"cutout_max": 16, "cutout_p": 0.6, "dropout": 0.05, "flip_p": 0.4, "weight_decay": 6e-4},
            {"cutout_max": 16, "cutout_p": 0.72, "dropout": 0.05, "flip_p": 0.32, "weight_decay": 4.8e-4},
            {"cutout_max": 16, "cutout_p": 0.86, "dropout": 0.1, "flip_p": 0.38, "weight_decay": 5.8e-4}]
VAL_ACC = {A: (0.30, 0.38, 0.45, 0.52), B: (0.30, 0.36, 0.42, 0.47), C: (0.22, 0.38, 0.44, 0.49),
           D: (0.28, 0.33, 0.43, 0.46)}


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def write_pbt_search(path: Path, best_run: Path | None = None, *, exploits=EXPLOITS, schedule=SCHEDULE,
                     ancestry=ANCESTRY, with_schedule_file: bool = True, empty_metrics: tuple[str, ...] = ()) -> Path:
    """A finished PBT search directory (issue 23's spec, sections 2-4); best/ is a copy of `best_run`
    (a real run) when given."""
    (path / rundir.TRIALS).mkdir(parents=True)
    if best_run is not None:
        shutil.copytree(best_run, path / rundir.BEST_TRIAL, ignore=shutil.ignore_patterns("checkpoints"))
    else:
        (path / rundir.BEST_TRIAL).mkdir()
    header = ["trial_id", "status", "epochs", "best_val_acc", "best_epoch", "last_val_acc", *PERTURBED, "error"]
    with open(path / rundir.RESULTS_CSV, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for t in sorted(VAL_ACC, key=lambda t: -max(VAL_ACC[t])):
            w.writerow([t, "TERMINATED", 4, max(VAL_ACC[t]), 4, VAL_ACC[t][-1],
                        *(schedule[-1][p] for p in PERTURBED), ""])
    for t, accs in VAL_ACC.items():
        trial = path / rundir.TRIALS / t
        trial.mkdir()
        # every trial's rows carry a schedule; the best's are exactly schedule.json's (spec section 2)
        rows = [] if t in empty_metrics else [
            {"epoch": e + 1, "val_acc": a, "val_loss": 2.0 - a,
             "schedule": schedule[min(e, len(schedule) - 1)] if t == A else {**SCHEDULE[0], "flip_p": 0.1 * e}}
            for e, a in enumerate(accs[:len(schedule)] if t == A else accs)]
        _jsonl(trial / rundir.METRICS, rows)
        _jsonl(trial / "lineage.jsonl", [
            {"epoch": k, "donor": don, "before": {"flip_p": 0.1}, "after": {"flip_p": 0.12},
             "time": f"2026-12-01T10:0{k}:0{i}+00:00"} for i, (k, rec, don) in enumerate(exploits) if rec == t])
        rundir.write_json(trial / rundir.PARAMS, {p: schedule[-1][p] for p in PERTURBED})
    if with_schedule_file:
        rundir.write_json(path / rundir.BEST_TRIAL / "schedule.json", {
            "kind": "cifar-lab augmentation schedule", "version": 1, "search": "pop", "trial": A,
            "epochs": len(schedule), "fields": FIELDS,
            "schedule": [{"epoch": e + 1, **s} for e, s in enumerate(schedule)],
            "lineage": [{"epoch": k, "trial": rec, "donor": don} for k, rec, don in ancestry]})
    space = {p: {"type": "uniform", "lower": 0.0, "upper": 1.0} for p in PERTURBED}
    space["weight_decay"] = {"type": "loguniform", "lower": 5e-5, "upper": 2e-3}
    rundir.write_json(path / rundir.SEARCH_JSON, {
        "name": "pop", "search": {"num_samples": 4, "scheduler": "pbt", "perturbation_interval": 1,
                                  "quantile_fraction": 0.25, "resample_probability": 0.25, "perturbed": PERTURBED},
        "space": space, "metric": "val_acc", "mode": "max", "status": "finished",
        "started": "2026-12-01T10:00:00+0000", "wall_seconds": 321.0,
        "summary": {"trials": 4, "best_trial": A, "best_val_acc": 0.52, "exploits": len(exploits),
                    **({"schedule": str(path / rundir.BEST_TRIAL / "schedule.json")} if with_schedule_file else {})}})
    return path


def _figures_of(search: dict, tmp_path: Path) -> dict[str, str]:
    """Draw a search's figures into tmp_path; their alt texts by file name."""
    from reporting.search import search_figures

    alts: dict[str, str] = {}

    def fig(key: str, name: str, alt: str) -> Path:
        alts[name] = alt
        return tmp_path / name

    search_figures(search, fig)
    return alts


def _steps(fig) -> dict[str, tuple[np.ndarray, np.ndarray, object]]:
    """Every field's step plot in a schedule figure: (values, edges, its axes), by field."""
    out = {}
    for ax in fig.axes:
        for p in ax.patches:
            if p.get_gid() and p.get_gid() != "exploit":
                values, edges, _ = p.get_data()
                out[p.get_gid()] = (np.asarray(values), np.asarray(edges), ax)
    return out


def _exploit_lines(fig) -> list[list[float]]:
    """x of the exploit marks in each visible panel."""
    return [sorted(ln.get_xdata()[0] for ln in ax.get_lines() if ln.get_gid() == "exploit")
            for ax in fig.axes if ax.get_visible()]


def _arrows(fig) -> list[tuple[str, int, str, str]]:
    """Each lineage arrow as (gid, epoch, recipient row's label, donor row's label)."""
    ax = fig.axes[0]
    rows = {round(t.get_position()[1]): t.get_text() for t in ax.get_yticklabels()}
    out = []
    for a in ax.texts:
        if a.get_gid() in ("exploit", "ancestry"):
            (x1, y1), (x0, y0) = a.xy, a.xyann
            assert x0 == x1, (a.xy, a.xyann)          # both ends at the exploit's epoch
            out.append((a.get_gid(), int(x1), rows[round(y1)].split(" ")[0], rows[round(y0)].split(" ")[0]))
    return sorted(out)


# ----------------------------------------------------------------------------- figures from the files
def test_pbt_schedule_and_lineage_draw_the_files(tmp_path, drawn):
    """The schedule's steps are schedule.json's values per epoch, probabilities on one 0-1 panel, the
    other fields one panel each, exploit marks between the epochs the ancestry changed; the lineage has
    one arrow per exploit between the right rows at the right epoch, the best's ancestry in black."""
    from reporting.search import search_context

    search = search_context(write_pbt_search(tmp_path / "search-pop"))
    alts = _figures_of(search, tmp_path)
    steps = _steps(drawn["pbt_schedule.png"])
    assert sorted(steps) == FIELDS
    for field, (values, edges, ax) in steps.items():
        assert np.allclose(values, [s[field] for s in SCHEDULE]), field
        assert np.allclose(edges, [0.5, 1.5, 2.5, 3.5, 4.5])       # one step per epoch, centred on it
    probability_axes = {id(steps[f][2]) for f in ("cutout_p", "flip_p")}
    assert len(probability_axes) == 1 and steps["flip_p"][2].get_ylim()[0] < 0 < 1 < steps["flip_p"][2].get_ylim()[1]
    assert len({id(steps[f][2]) for f in ("cutout_max", "dropout", "weight_decay")} | probability_axes) == 4
    assert steps["cutout_max"][2].get_title() == "cutout_max (px, constant)"
    assert _exploit_lines(drawn["pbt_schedule.png"]) == [[1.5, 2.5, 3.5]] * 4
    assert "constant: cutout_max" in alts["pbt_schedule.png"]
    assert "cifar-train --aug-schedule " in alts["pbt_schedule.png"] and "best/schedule.json" in alts["pbt_schedule.png"]

    arrows = _arrows(drawn["pbt_lineage.png"])
    assert [a[1:] for a in arrows] == sorted(EXPLOITS)
    assert sorted(a[1:] for a in arrows if a[0] == "ancestry") == sorted(ANCESTRY)
    # the thick path: A 3..4, C 2..3, B 1..2, A (the original) from 1 to 1
    path = sorted((ln.get_ydata()[0], *ln.get_xdata()) for ln in drawn["pbt_lineage.png"].axes[0].get_lines()
                  if ln.get_gid() == "best-path")
    row = {t: i for i, t in enumerate(search["pbt"]["trials"])}
    assert path == sorted([(row[A], 3, 4), (row[C], 2, 3), (row[B], 1, 2), (row[A], 1, 1)])

    table = {line["cells"][0]["text"]: line["cells"][-1]["text"] for line in search["table"]}
    assert search["headers"][-1] == "exploits adopted" and table == {A: "1", B: "2", C: "1", D: "0"}


def test_without_schedule_json_the_best_trials_metrics_give_the_schedule_and_its_ancestry(tmp_path, drawn):
    """An interrupted search has no best/schedule.json yet: the schedule comes from the best trial's
    metrics rows and its ancestry from the lineage files, with a one-line note saying so."""
    from reporting.search import search_context

    search = search_context(write_pbt_search(tmp_path / "search-pop", with_schedule_file=False))
    _figures_of(search, tmp_path)
    assert search["pbt"]["notes"] == [
        f"best/schedule.json is missing; the schedule below is read from the best trial's trials/{A}/metrics.jsonl."]
    assert [(x["epoch"], x["trial"], x["donor"]) for x in search["pbt"]["ancestry"]] == ANCESTRY
    steps = _steps(drawn["pbt_schedule.png"])
    assert np.allclose(steps["dropout"][0], [s["dropout"] for s in SCHEDULE])
    assert sorted(a[1:] for a in _arrows(drawn["pbt_lineage.png"]) if a[0] == "ancestry") == sorted(ANCESTRY)


# ----------------------------------------------------------------------------- degenerate inputs
def test_no_exploits_one_epoch_and_a_trial_without_metrics(tmp_path, drawn):
    """No exploit at all: no lineage figure (the page says why), a schedule without marks; a 1-epoch
    schedule is one step over epoch 1; a trial with no metrics yet is a row in the table."""
    from reporting.search import search_context

    search = search_context(write_pbt_search(tmp_path / "search-pop", exploits=[], ancestry=[],
                                             schedule=SCHEDULE[:1], empty_metrics=(D,)))
    alts = _figures_of(search, tmp_path)
    assert "pbt_lineage.png" not in alts and search["pbt"]["exploits"] == 0
    steps = _steps(drawn["pbt_schedule.png"])
    assert np.allclose(steps["flip_p"][0], [0.5]) and np.allclose(steps["flip_p"][1], [0.5, 1.5])
    assert _exploit_lines(drawn["pbt_schedule.png"]) == [[]] * 4
    assert "no exploit along its ancestry" in alts["pbt_schedule.png"]
    assert D not in search["pbt"]["spans"] and D in search["pbt"]["trials"]


def test_a_lineage_row_naming_an_unknown_trial_and_a_broken_row(tmp_path, drawn):
    """A donor not in results.csv gets its own row, marked; a lineage row without a donor is left out
    with a note; schedule.json without a lineage: the ancestry comes from the files."""
    from reporting.search import search_context

    ghost = "p1f3a_00099"
    path = write_pbt_search(tmp_path / "search-pop", exploits=[*EXPLOITS, (2, D, ghost)])
    with open(path / rundir.TRIALS / D / "lineage.jsonl", "a") as f:
        f.write(json.dumps({"epoch": 3, "before": {}, "after": {}}) + "\n")
    search = search_context(path)
    _figures_of(search, tmp_path)
    labels = [t.get_text() for t in drawn["pbt_lineage.png"].axes[0].get_yticklabels()]
    assert f"{ghost} (not in results.csv)" in labels and f"{A} (best)" in labels
    assert (("exploit", 2, D, ghost)) in _arrows(drawn["pbt_lineage.png"])
    assert any("1 row of the trials' lineage.jsonl without an epoch or donor is left out" in n
               for n in search["pbt"]["notes"])
    assert any(f"Donor {ghost} is named in a lineage but not in results.csv" in n for n in search["pbt"]["notes"])


def test_corrupt_schedule_json_is_a_note_not_a_crash(tmp_path, drawn):
    from reporting.search import search_context

    path = write_pbt_search(tmp_path / "search-pop", empty_metrics=(A,))
    (path / rundir.BEST_TRIAL / "schedule.json").write_text('{"schedule": [{"flip_p": 0.5}]}')
    search = search_context(path)
    alts = _figures_of(search, tmp_path)
    assert "pbt_schedule.png" not in alts
    assert search["pbt"]["notes"][-1] == ('best/schedule.json has a schedule entry without a 1-based "epoch", and '
                                          "the best trial's metrics.jsonl records no schedule: no schedule to draw.")


def test_ancestry_follows_the_latest_exploit_before_the_copy():
    """Only a recipient's latest exploit matters (it replaces the whole state), and a donor's exploits
    after the epoch it was copied at, or later in time at the same epoch, are not in the history."""
    from reporting.search import ancestry, weights_path

    ex = [{"epoch": k, "trial": r, "donor": d, "time": f"t{i}"} for i, (k, r, d) in enumerate(EXPLOITS)]
    chain = ancestry(A, ex)
    assert [(x["epoch"], x["trial"], x["donor"]) for x in chain] == ANCESTRY
    assert weights_path(A, chain, 4) == [(A, 3, 4), (C, 2, 3), (B, 1, 2), (A, 1, 1)]
    # without times, by epoch alone: B's exploit at epoch 3 is after C copied B's epoch 2
    untimed = [{k: v for k, v in x.items() if k != "time"} for x in ex]
    assert [(x["epoch"], x["trial"], x["donor"]) for x in ancestry(A, untimed)] == ANCESTRY
    # C copied B at epoch 2 before B itself exploited at epoch 2 (time t1 < t2): not B's exploit
    later = [*ex, {"epoch": 2, "trial": B, "donor": D, "time": "t9"}]
    assert [(x["epoch"], x["trial"]) for x in ancestry(A, later)] == [(1, B), (2, C), (3, A)]
    loop = [{"epoch": 1, "trial": A, "donor": B}, {"epoch": 1, "trial": B, "donor": A}]
    assert len(ancestry(A, loop)) <= len(loop) + 1          # corrupt files cannot loop forever


# ----------------------------------------------------------------------------- a scheduled run (item 2)
def test_a_scheduled_runs_report_draws_its_metrics_schedule(tmp_path, drawn):
    """A run whose config.json has an aug_schedule (a replay: 2 entries stretched over 4 epochs)
    draws what its metrics rows say each epoch trained with; a run without one draws nothing."""
    from reporting.report import _schedule_figure

    planned = [SCHEDULE[0], SCHEDULE[3]]
    metrics = [{"epoch": e, "val_acc": 0.3, "schedule": planned[(e - 1) * 2 // 4]} for e in range(1, 5)]
    figs: dict[str, dict] = {}

    def page(config: dict) -> SimpleNamespace:
        run = SimpleNamespace(meta={"config": config}, metrics=metrics, path=tmp_path,
                              config=SimpleNamespace(epochs=4))
        return SimpleNamespace(run=run, fig=lambda key, name, alt: figs.setdefault(key, {"alt": alt}) and tmp_path / name)

    assert _schedule_figure(page({"epochs": 4})) is None and not figs
    info = _schedule_figure(page({"epochs": 4, "aug_schedule": planned}))
    assert info == {"entries": 2, "epochs": 4, "exploits": []}
    steps = _steps(drawn["schedule.png"])
    assert np.allclose(steps["flip_p"][0], [0.5, 0.5, 0.38, 0.38]) and np.allclose(steps["cutout_max"][0], [16] * 4)
    assert "2-entry schedule in config.json (aug_schedule, stretched over 4 epochs)" in figs["schedule"]["alt"]
    # a run that has not recorded an epoch yet: a note (the template's), no figure
    metrics.clear()
    drawn.clear()
    assert _schedule_figure(page({"epochs": 4, "aug_schedule": planned})) == {"entries": 2, "epochs": 0,
                                                                            "exploits": []}
    assert "schedule.png" not in drawn


# ----------------------------------------------------------------------------- whole reports
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[Path, Path]:
    """A finished run written straight from the contract (distributed/rundir.py), as
    test_report_index.py does: untrained weights, made-up logits. The best trial for every report
    here; training one would take longer than all the reports on a shared CPU."""
    from safetensors.torch import save_file

    from distributed.data import load_cifar10
    from distributed.model import resnet18

    data = make_fake_cifar(tmp_path_factory.mktemp("data"), n_train=50, n_test=20)
    path = tmp_path_factory.mktemp("runs") / "tiny"
    path.mkdir()
    cfg = TrainConfig(name="tiny", data_dir=str(data), runs_dir=str(path.parent), download=False, val_size=10,
                      epochs=4, batch_size=10, num_workers=0, mixed_precision="no")
    labels = load_cifar10(data, download=False).test_y.astype(np.int64)
    logits = np.eye(10, dtype=np.float32)[np.where(np.arange(len(labels)) % 2 == 0, labels, (labels + 1) % 10)] * 3
    np.savez(path / rundir.PREDICTIONS, logits=logits, logits_plain=logits, logits_tta=logits, labels=labels,
             indices=np.arange(len(labels), dtype=np.int64))
    save_file(resnet18(num_classes=10).state_dict(), str(path / rundir.FINAL_WEIGHTS))
    meta = {"config": cfg.to_dict(), "effective_max_lr": cfg.effective_max_lr, "created": "2026-12-01T09:00:00+00:00",
            "device": "1 x CPU (test)", "world_size": 1, "mixed_precision": "no", "num_params": 11_173_962,
            "split": {"train": 40, "val": 10, "test": len(labels)}, "mean": [0.49, 0.48, 0.45],
            "std": [0.25, 0.24, 0.26]}
    rundir.write_json(path / rundir.CONFIG, meta)
    rows = [{"epoch": e, "train_loss": 2.3 - 0.1 * e, "train_ce": 2.3 - 0.1 * e, "train_acc": 0.1 * e,
             "val_loss": 2.3 - 0.05 * e, "val_loss_smoothed": 2.35 - 0.05 * e, "val_acc": VAL_ACC[A][e - 1],
             "lr": 0.01, "epoch_seconds": 2.0, "images_per_sec": 20.0, "wall_seconds": 2.0 * e} for e in range(1, 5)]
    _jsonl(path / rundir.METRICS, rows)
    rundir.write_json(path / rundir.SUMMARY, rundir.build_summary(
        meta, rows, {"acc": 0.5, "loss": 2.0, "count": len(labels)}, total_seconds=12.0))
    return path, data


def _build(search: Path, data: Path, out: Path) -> str:
    from reporting.report import build_report

    build_report(search, out, data_dir=data, device="cpu", n_cam=1, n_examples=2)
    return (out / search.name / "index.html").read_text()


@pytest.fixture(scope="module")
def pbt_page(tiny_run, tmp_path_factory) -> tuple[str, dict, Path]:
    """A PBT search's page, built from the working directory above runs/ as a user would, with the
    template context it was rendered from (to render variants of it without building again)."""
    from reporting import report

    run, data = tiny_run
    home = tmp_path_factory.mktemp("home")
    kept: dict = {}
    render = report._render

    def keep(context):
        kept.update(context)
        return render(context)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(report, "_render", keep)
        mp.chdir(home)
        html = _build(write_pbt_search(home / "runs" / "search-pop", run).resolve(), data, home / "reports")
    return html, kept, home


def test_pbt_search_report_page(pbt_page):
    """The page of a PBT search: the header line, the trials table's exploit column, both figures with
    their captions, the replay command; no word of ASHA stopping trials."""
    html, _, home = pbt_page
    assert re.search(r'<p class="note" id="pbt-header">Population Based Training \(PBT\): every 1 epoch the bottom '
                     r"25% of the trials copied the state of one of the top 25% and perturbed cutout_p, dropout, "
                     r"flip_p, weight_decay; 4 exploits in all.</p>", html), html[html.index('id="search"'):][:2000]
    assert '<th scope="col">exploits adopted</th>' in html
    for name in ("pbt_schedule.png", "pbt_lineage.png"):
        assert f'<img src="{name}"' in html and (home / "reports" / "search-pop" / name).is_file()
    assert "<code>cifar-train --aug-schedule runs/search-pop/best/schedule.json</code>" in html
    assert "ASHA" not in html
    assert "4: 4 completed (every epoch), 0 failed" in html


def test_pbt_search_without_exploits_says_so(pbt_page, tmp_path):
    """The same page for a population without exploits: a one-line note instead of the lineage."""
    from reporting.report import _render
    from reporting.search import search_context

    _, context, _ = pbt_page
    search = search_context(write_pbt_search(tmp_path / "search-pop", exploits=[], ancestry=[]))
    figs = {k: v for k, v in context["figs"].items() if k != "lineage"}
    html = _render({**context, "search": search, "figs": figs})
    assert "No exploits: no trial copied another's state (perturbation every 1 epoch" in html
    assert "pbt_lineage.png" not in html and "pbt_schedule.png" in html and "0 exploits in all" in html


@pytest.mark.skipif("aug_schedule" not in {f.name for f in dataclasses.fields(TrainConfig)},
                    reason="TrainConfig.aug_schedule arrives with issue 23's training side (branch sched)")
def test_replay_run_report_shows_its_schedule(tiny_run, tmp_path):
    """A whole report of a run whose config.json has an aug_schedule: the schedule figure under
    Training curves, the config row counting the entries."""
    run, data = tiny_run
    replay = tmp_path / "runs" / "replay"
    shutil.copytree(run, replay, ignore=shutil.ignore_patterns("checkpoints"))
    meta = rundir.read_json(replay / rundir.CONFIG)
    meta["config"].update(name="replay", aug_schedule=[SCHEDULE[1]])
    rundir.write_json(replay / rundir.CONFIG, meta)
    _jsonl(replay / rundir.METRICS, [{**m, "schedule": SCHEDULE[1]} for m in rundir.read_metrics(replay)])
    from reporting.report import build_report

    build_report(replay, tmp_path / "reports", data_dir=data, device="cpu", n_cam=1, n_examples=2)
    html = (tmp_path / "reports" / "replay" / "index.html").read_text()
    assert '<h3 id="schedule">Augmentation schedule</h3>' in html and '<img src="schedule.png"' in html
    assert "1 per-epoch entry (see the schedule figure)" in html
