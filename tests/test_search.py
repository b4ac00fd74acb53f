"""Ray Tune search (tuning/): real searches on tiny synthetic CIFAR, CPU only.

One Ray session (2 CPUs, no GPU, no dashboard) is shared by the in-process searches; the resume test runs
the CLI in subprocesses with their own Ray. Trials use 40 train / 20 val / 20 test images.
"""
from __future__ import annotations

import csv
import dataclasses
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from distributed import rundir
from metrics_compare import comparable

ROOT = Path(__file__).resolve().parent.parent
TINY = dict(subset=60, val_size=20, test_subset=20, batch_size=20, eval_batch_size=20, num_workers=0,
            scheduler="step", download=False, mixed_precision="no")  # OneCycle needs more than 4 steps
TINY_FLAGS = ["--subset", "60", "--val-size", "20", "--test-subset", "20", "--batch-size", "20",
              "--eval-batch-size", "20", "--num-workers", "0", "--scheduler", "step", "--no-download"]
# Everything constant except max_lr: trials differ only in what the test wants them to differ in.
FIXED = {"dropout": 0.0, "weight_decay": 5e-4, "l1": 0.0, "flip_p": 0.0, "affine_p": 0.0, "color_p": 0.0,
         "cutout_p": 0.0, "cutout_max": 8}
GOOD_LR, BAD_LR, DIVERGING_LR = 0.05, 1e-5, 1e30


def at_512(lr: float) -> float:
    """A space gives learning rates at batch 512 (scaled to the search's batch): the value that
    trains at `lr` with the tests' batch of 20."""
    return lr * 512 / int(TINY["batch_size"])


@pytest.fixture(scope="module")
def ray_session():
    ray = pytest.importorskip("ray")
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    # "local": a Ray of its own, even when a `ray start` cluster runs on this machine
    ray.init(address="local", num_cpus=2, num_gpus=0, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


def _base(fake_cifar: Path, runs: Path, **kw):
    from distributed.config import TrainConfig

    return TrainConfig(**{"data_dir": str(fake_cifar), "runs_dir": str(runs), "epochs": 2, **TINY, **kw})


def _results(search_dir: Path) -> list[dict[str, str]]:
    with open(search_dir / "results.csv") as f:
        return list(csv.DictReader(f))


def test_a_search_that_cannot_place_a_trial_stops_at_start_and_leaves_nothing(ray_session, fake_cifar, tmp_path,
                                                                             capsys):
    """A GPU asked for on a machine without one, and more CPUs per trial than the machine has: one
    line, exit 2, no search folder (Tune would sit at "1 waiting" for ever). (Issue 21; first in this
    module, on its Ray of 2 CPUs before any trial ran, so that no worker's output reaches stdout.)"""
    from cifar_lab import cli

    capsys.readouterr()
    flags = ["--subset", "80", "--val-size", "20", "--test-subset", "20", "--batch-size", "20", "--eval-batch-size",
             "20", "--num-workers", "0", "--max-lr", "0.01", "--scheduler", "step", "--no-download", "--no-report"]
    base = ["--runs-dir", str(tmp_path), "--data-dir", str(fake_cifar), "--num-samples", "2", *flags]
    assert cli.search(["--name", "gpu", "--gpus-per-trial", "1", *base]) == 2
    out, err = capsys.readouterr()
    assert err.strip() == ("error: each trial asks for 1 CPU and 1 GPU, but this machine's Ray has 2 CPUs and 0 "
                           "GPUs: no trial could ever start; use --gpus-per-trial 0 (trials on the CPU), or join "
                           "a larger cluster with --address") and out == ""
    assert cli.search(["--name", "cpu", "--cpus-per-trial", "3", *base]) == 2
    assert capsys.readouterr().err.strip().startswith("error: each trial asks for 3 CPUs, but this machine's Ray "
                                                      "has 2 CPUs and 0 GPUs: no trial could ever start")
    assert not any(tmp_path.iterdir())


def test_search_asha_failure_and_best_export(ray_session, fake_cifar, tmp_path, capsys):
    """4 trials in sequence, seed 24 draws max_lr = good, bad, diverging, good: ASHA stops the bad one
    after epoch 1; the diverging one fails (NonFiniteLossError -> ERROR) and the search goes on; the
    best trial is exported and tested once. All four run in one process (Tune reuses it), and the
    last, after a stopped and a failed trial with loader workers, trains exactly as the first did."""
    from tuning.config import SearchConfig
    from tuning.runner import run_search

    space = {**FIXED, "max_lr": {"type": "choice", "values": [at_512(BAD_LR), at_512(GOOD_LR), at_512(DIVERGING_LR)]}}
    search = SearchConfig(name="asha", num_samples=4, grace_period=1, max_concurrent_trials=1, space=space,
                          seed=24, verbose=0)
    # OneCycle over 4 steps: max_lr 0.05 learns something in 2 epochs, 1e-5 does not.
    # Trials track into their own run dirs when the base config asks for it.
    log_with = "tensorboard" if importlib.util.find_spec("tensorboard") else "none"
    # Loader workers on: a trial that raises with live workers must still end (it once hung the process).
    summary = run_search(_base(fake_cifar, tmp_path, scheduler="onecycle", pct_start=0.5, log_with=log_with,
                               num_workers=1), search)
    sdir = tmp_path / "search-asha"

    rows = _results(sdir)
    assert len(rows) == 4
    by_lr = {}
    for r in rows:
        by_lr.setdefault(float(r["max_lr"]), []).append(r)
    assert [r["status"] for r in by_lr[DIVERGING_LR]] == ["ERROR"]
    assert "NonFiniteLossError" in by_lr[DIVERGING_LR][0]["error"]
    assert [r["status"] for r in by_lr[BAD_LR]] == ["STOPPED"] and by_lr[BAD_LR][0]["epochs"] == "1"
    assert {r["status"] for r in by_lr[GOOD_LR]} == {"TERMINATED"}
    # sorted by best validation accuracy; failed trial (no result) last
    vals = [float(r["best_val_acc"]) for r in rows if r["best_val_acc"]]
    assert vals == sorted(vals, reverse=True) and rows[-1]["status"] == "ERROR"
    assert (summary["completed"], summary["stopped"], summary["failed"]) == (2, 1, 1)
    # The compact view counts the diverged trial as failed, says why once, and never shows its NaN as best.
    shown = capsys.readouterr().out
    progress = [x for x in shown.splitlines() if x.startswith("[")]
    assert "2 finished, 1 stopped early, 1 failed, 0 waiting" in progress[-1], shown
    assert "val_acc nan" not in shown and shown.count("failed: NonFiniteLossError") == 1, shown

    # every trial that finished an epoch has fit's files in its own run dir (the one that failed in
    # epoch 1 only its params and log: fit writes config.json when the first epoch ends); none of
    # them touched the test set
    for r in rows:
        tdir = sdir / "trials" / r["trial_id"]
        assert (tdir / "params.json").exists()
        if r["status"] != "ERROR":
            assert (tdir / "config.json").exists() and (tdir / "metrics.jsonl").exists()
            assert (tdir / "steps.jsonl").exists()
            if log_with == "tensorboard":
                assert list((tdir / "tensorboard").glob("events.out.tfevents.*")), r["trial_id"]
        if r["status"] == "TERMINATED":  # ASHA kills a stopped trial before fit's summary
            assert json.loads((tdir / "summary.json").read_text())["test_acc"] is None
            assert not (tdir / "predictions.npz").exists()

    best = sdir / "best"
    bsum = json.loads((best / "summary.json").read_text())
    assert bsum["trial_id"] == rows[0]["trial_id"] == summary["best_trial"]
    assert bsum["test_acc"] is not None and bsum["test_acc"] == summary["test_acc"]
    # the trial's whole fit time (the report's "Wall time (all)"), not the null a fresh summary has
    assert bsum["total_seconds"] > bsum["wall_seconds"] > 0
    assert bsum["best_val_acc"] == pytest.approx(float(rows[0]["best_val_acc"]))
    # best over all epochs, not the last one
    metrics = [json.loads(x) for x in (best / "metrics.jsonl").read_text().splitlines()]
    assert bsum["best_val_acc"] == max(m["val_acc"] for m in metrics)
    for name in ("config.json", "metrics.jsonl", "steps.jsonl", "best.safetensors", "model.safetensors",
                 "predictions.npz"):
        assert (best / name).exists(), name
    with np.load(best / "predictions.npz") as z:
        assert z["logits"].shape == (20, 10) and len(set(z["indices"].tolist())) == 20
        assert (z["logits"].argmax(1) == z["labels"]).mean() == pytest.approx(bsum["test_acc"])
    info = json.loads((sdir / "search.json").read_text())
    assert info["status"] == "finished" and info["summary"]["best_trial"] == bsum["trial_id"]
    assert info["space"]["max_lr"]["values"] == [at_512(BAD_LR), at_512(GOOD_LR), at_512(DIVERGING_LR)]
    assert info["space_at_batch"]["max_lr"]["values"] == pytest.approx([BAD_LR, GOOD_LR, DIVERGING_LR])
    assert (sdir / "ray").is_dir()

    # An ended trial keeps what results.csv, best/ and the report read, not its checkpoints (~90 MB
    # each) and final weights; its own output is in its train.log, not on the search's terminal.
    for r in rows:
        tdir = sdir / "trials" / r["trial_id"]
        assert not (tdir / "checkpoints").exists() and not (tdir / "model.safetensors").exists(), r
        log = (tdir / "train.log").read_text()
        if r["status"] == "ERROR":
            assert "NonFiniteLossError" in log and "Traceback" in log
        else:
            assert (tdir / "best.safetensors").exists() and "epoch   1/2" in log

    # One process ran every trial, in the order drawn; the two good trials (same config and seed)
    # agree to the bit: nothing of an earlier trial (an ASHA stop, a divergence, loader workers)
    # leaks into a later one in the same process.
    order = sorted(rows, key=lambda r: r["trial_id"])
    assert [float(r["max_lr"]) for r in order] == [GOOD_LR, BAD_LR, DIVERGING_LR, GOOD_LR]
    pids = {pid for r in rows for a in rundir.read_jsonl(sdir / "trials" / r["trial_id"] / rundir.ATTEMPTS)
            for pid in a["pids"]}
    assert len(pids) == 1, pids
    first, last = (comparable(rundir.read_metrics(sdir / "trials" / r["trial_id"])) for r in (order[0], order[3]))
    assert first == last and len(first) == 2


def test_trial_processes_are_reused_and_readied_for_the_next_trial(monkeypatch):
    """Single-process trials, ASHA's and PBT's, run one after another in the same process (DDP
    trials do not); before each, Tune is told to wait for the ended trial's thread longer than its 2 s
    (unless the user set it), and a compiled trial starts without the previous trial's Dynamo cache:
    a new model per trial would otherwise be a recompilation, and past Dynamo's limit of 8 the
    model silently runs uncompiled."""
    import torch
    from torch._dynamo.eval_frame import _debug_get_cache_entry_list

    from distributed.config import TrainConfig
    from tuning.config import SearchConfig
    from tuning.runner import _ready_for_another_trial, reuse_trial_processes

    assert reuse_trial_processes(SearchConfig(name="a"))
    assert reuse_trial_processes(SearchConfig(name="p", scheduler="pbt", num_samples=2))
    assert not reuse_trial_processes(SearchConfig(name="d", workers_per_trial=2))

    def step(x):
        return x + 1

    torch.compile(step, backend="eager")(torch.ones(2))
    assert len(_debug_get_cache_entry_list(step.__code__)) == 1
    monkeypatch.setenv("TUNE_FUNCTION_THREAD_TIMEOUT_S", "7")
    _ready_for_another_trial(TrainConfig(compile=False))
    assert len(_debug_get_cache_entry_list(step.__code__)) == 1  # an eager trial leaves Dynamo alone
    assert os.environ["TUNE_FUNCTION_THREAD_TIMEOUT_S"] == "7"  # the user's setting stands
    monkeypatch.delenv("TUNE_FUNCTION_THREAD_TIMEOUT_S")
    _ready_for_another_trial(TrainConfig(compile=True))
    assert len(_debug_get_cache_entry_list(step.__code__)) == 0
    assert int(os.environ["TUNE_FUNCTION_THREAD_TIMEOUT_S"]) >= 30


def test_refit_trains_the_best_config_on_every_image_and_resumes_when_interrupted(ray_session, fake_cifar,
                                                                                  tmp_path, monkeypatch, capsys):
    """--refit: after the search, one more `fit` of the best trial's configuration with no validation split
    (all 60 images of the subset) for the full epochs, tested once, beside the best trial's own test
    accuracy. Interrupted after its first epoch, the search says so and --resume continues that run
    from its checkpoint without touching the trials."""
    import distributed.engine
    from tuning.config import SearchConfig
    from tuning.runner import run_search

    real_fit = distributed.engine.fit

    def fit_interrupted_after_epoch_1(cfg, run_dir=None, **kw):
        def stop(report):
            if report.epoch == 1:
                raise KeyboardInterrupt  # Ctrl-C, after the epoch's checkpoint
        return real_fit(cfg, run_dir, callback=stop, **kw)

    monkeypatch.setattr(distributed.engine, "fit", fit_interrupted_after_epoch_1)  # only the driver's (refit) fit
    space = {**FIXED, "max_lr": {"type": "choice", "values": [at_512(BAD_LR), at_512(GOOD_LR)]}}
    search = SearchConfig(name="refit", num_samples=2, space=space, verbose=0, refit=True)
    base = _base(fake_cifar, tmp_path, epochs=2)
    first = run_search(base, search)
    sdir = tmp_path / "search-refit"
    refit = sdir / "refit"
    assert first["interrupted"] and first["refit"]["status"] == "interrupted", first
    assert json.loads((sdir / "search.json").read_text())["status"] == "interrupted"
    assert (refit / "checkpoints" / "epoch_0001").is_dir() and not (refit / "summary.json").exists()
    assert "continue with --name refit --resume" in capsys.readouterr().out
    trials = {p: p.stat().st_mtime_ns for p in (sdir / "trials").glob("*/metrics.jsonl")}

    monkeypatch.setattr(distributed.engine, "fit", real_fit)
    summary = run_search(base, dataclasses.replace(search, resume=True))
    assert {p: p.stat().st_mtime_ns for p in trials} == trials  # no trial ran again
    # (refit/train.log gets the refit's output through file descriptors 1 and 2; pytest's capture holds it here)
    shown = capsys.readouterr().out
    assert (refit / "train.log").exists() and f"resumed {refit} from epoch 1" in shown
    assert [m["epoch"] for m in rundir.read_metrics(refit)] == [1, 2]
    r = summary["refit"]
    assert r["status"] == "finished" and not summary["interrupted"], summary
    assert r["trial_id"] == summary["best_trial"] and r["train_images"] == 60 and r["epochs"] == 2
    assert r["test_acc"] == json.loads((refit / "summary.json").read_text())["test_acc"]
    assert r["test_acc_plain"] is not None and r["test_acc_tta"] is not None and r["test_count"] == 20
    # the best trial's configuration, on every image: only where it lives, its split and workers differ
    best = json.loads((sdir / "trials" / r["trial_id"] / "config.json").read_text())
    mine = json.loads((refit / "config.json").read_text())
    assert mine["split"] == {"train": 60, "val": 0, "test": 20}
    assert {k for k in best["config"] if best["config"][k] != mine["config"][k]} <= {"name", "runs_dir", "val_size",
                                                                                   "num_workers"}
    assert mine["config"]["val_size"] == 0 and mine["config"]["max_lr"] == pytest.approx(GOOD_LR)
    info = json.loads((sdir / "search.json").read_text())
    assert info["status"] == "finished" and info["summary"]["refit"] == r and info["search"]["refit"] is True
    line = shown.strip().splitlines()[-1]
    assert f"test_acc {summary['test_acc']:.4f} | refit on all 60 training images, 2 epochs: test_acc" in line, line


def test_a_finite_but_diverging_trial_is_an_ordinary_trial(ray_session, fake_cifar, tmp_path):
    """max_lr 3 at batch 20 explodes the validation loss (~1e20) without a NaN: the trial is not a
    crash but a weak trial (ASHA's to stop); its log carries the divergence warning."""
    from tuning.config import SearchConfig
    from tuning.runner import run_search

    search = SearchConfig(name="boom", num_samples=1, space={**FIXED, "max_lr": at_512(3.0)}, verbose=0)
    summary = run_search(_base(fake_cifar, tmp_path, epochs=1), search)
    rows = _results(tmp_path / "search-boom")
    assert [r["status"] for r in rows] == ["TERMINATED"] and summary["failed"] == 0, rows
    log = (tmp_path / "search-boom" / "trials" / rows[0]["trial_id"] / "train.log").read_text()
    assert "has exploded" in log and "NonFiniteLossError" not in log


def test_bad_space_is_one_line_error(tmp_path, fake_cifar):
    bad = tmp_path / "space.yaml"
    bad.write_text("max_lr: {type: loguniform, lower: -1, upper: 1}\n")
    for extra in (["--space", str(bad)], ["--no-such-flag"], ["--num-samples", "0"],
                  ["--space", str(tmp_path / "missing.yaml")]):
        out = subprocess.run([sys.executable, str(ROOT / "tuning" / "search.py"), "--runs-dir", str(tmp_path),
                              "--data-dir", str(fake_cifar), *extra], capture_output=True, text=True, timeout=120)
        assert out.returncode == 2, (extra, out.stderr)
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (extra, out.stderr)
    assert not list(tmp_path.glob("search-*"))


def test_space_overrides_and_cutout_kept_valid():
    from distributed.config import ConfigError, TrainConfig
    from tuning import space

    s = space.merge_space({"dropout": None, "max_lr": {"type": "uniform", "lower": 0.1, "upper": 0.2}})
    assert "dropout" not in s and s["max_lr"]["type"] == "uniform" and "flip_p" in s
    space.validate_space(space.DEFAULT_SPACE, TrainConfig())
    cfg = space.apply_params(TrainConfig(), {"cutout_max": 5, "l1": 0, "max_lr": 1})
    assert cfg.aug.cutout_min == 5 and cfg.aug.cutout_max == 5 and cfg.l1 == 0.0 and cfg.max_lr == 1.0
    for bad in ({"flip_p": {"type": "uniform", "lower": 0, "upper": 2}}, {"nope": 1},
                {"l1": {"type": "off_or_loguniform", "lower": 0, "upper": 1e-4}}):
        with pytest.raises(ConfigError):
            space.validate_space(space.merge_space(bad), TrainConfig())
    # the l1 domain gives both "off" and log-uniform values from Tune's seeded sampler
    from ray.tune.search.variant_generator import generate_variants

    def draw(seed):
        rng = np.random.RandomState(seed)
        return [space.trial_params(c)["l1"] for _ in range(200)
                for _, c in generate_variants(space.to_tune(space.DEFAULT_SPACE), random_state=rng)]

    vals = draw(0)
    assert any(v == 0.0 for v in vals) and any(1e-7 <= v <= 1e-5 for v in vals)
    assert draw(0) == vals and draw(1) != vals  # the search seed decides the draws


def test_a_search_with_unfinished_trials_is_interrupted_whatever_tune_counts():
    """Interruption is read from each trial's own last result: one trial still running or waiting
    (or one never created) means the search is not done, and its best is not test-evaluated."""
    from tuning import results
    from tuning.runner import summary_line

    ended = [{"status": s} for s in ("TERMINATED", "STOPPED", "ERROR")]
    assert not results.interrupted(ended, 3)
    assert results.interrupted(ended, 4)  # a trial Tune never created
    for unfinished in ("RUNNING", "PENDING"):
        assert results.interrupted([*ended, {"status": unfinished}], 4)
    line = summary_line({"search_dir": "runs/search-s", "trials": 32, "wall_seconds": 179, "completed": 2,
                         "stopped": 13, "failed": 0, "interrupted": True})
    assert "2 completed, 13 stopped early, 0 failed, 17 not finished" in line
    assert "continue with --name s --resume" in line


def test_a_trial_whose_fit_finished_counts_as_finished_whatever_tune_saved(tmp_path):
    """A restored search's last result of a finished trial may lack Tune's `done` (reused trial
    processes): the trial's own summary.json says it finished; without it the trial still runs."""
    from types import SimpleNamespace

    from tuning import results

    def trial(name: str, finished: bool):
        run = tmp_path / rundir.TRIALS / name
        run.mkdir(parents=True)
        rows = [{"epoch": e, "val_acc": 0.1 * e, "val_loss": 2.0, "wall_seconds": e} for e in (1, 2)]
        (run / rundir.METRICS).write_text("".join(json.dumps(r) + "\n" for r in rows))
        if finished:
            (run / rundir.SUMMARY).write_text("{}")
        return SimpleNamespace(path=str(tmp_path / "ray" / name), metrics={"epoch": 2, "val_acc": 0.2},
                               error=None, config={})

    rows = results.collect([trial("a", finished=True), trial("b", finished=False)], tmp_path, max_epochs=2)
    assert {r["trial_id"]: r["status"] for r in rows} == {"a": "TERMINATED", "b": "RUNNING"}


def _wait_for_a_trial_to_finish(proc: subprocess.Popen, sdir: Path, besides: set[str]) -> str:
    """The id of the first trial (not one of `besides`) whose summary.json appears while `proc` runs."""
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        new = sorted(p.parent.name for p in (sdir / "trials").glob("*/summary.json") if p.parent.name not in besides)
        if new:
            return new[0]
        time.sleep(0.5)
    raise AssertionError(f"no trial finished before the deadline (rc {proc.poll()})")


def _no_noise(shown: str) -> None:
    """The search's own output is a few plain lines: no status tables, no colour codes, no Ray notices,
    no epoch lines (those are in each trial's train.log), no traceback."""
    for noise in ("\x1b[", "== Status ==", "Token authentication", "epoch   1/1", "Traceback"):
        assert noise not in shown, (noise, shown[-3000:])


def test_interrupted_search_resumes_without_rerunning(fake_cifar, tmp_path):
    """Ctrl-C after the first trial finished; --resume, whose driver is then killed (kill -9: no chance to
    clean up) after the second trial finished; --resume again runs only the third. One search serves
    both interruptions: each resume must leave the trials finished before it as they were."""
    space = tmp_path / "space.json"
    space.write_text(json.dumps({**FIXED, "max_lr": at_512(GOOD_LR)}))
    cmd = [sys.executable, str(ROOT / "tuning" / "search.py"), "--name", "res", "--runs-dir", str(tmp_path),
           "--data-dir", str(fake_cifar), "--num-samples", "3", "--epochs", "1", "--num-cpus", "2",
           "--max-concurrent-trials", "1", "--space", str(space), "--no-report", *TINY_FLAGS]
    # --no-report is not typed again: the search remembers it (a report would go to cwd/reports)
    resume = [sys.executable, str(ROOT / "tuning" / "search.py"), "--name", "res", "--runs-dir", str(tmp_path),
              "--resume", "--num-cpus", "2"]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    sdir = tmp_path / "search-res"

    def finished() -> dict[str, tuple[str, int]]:
        """Each finished trial's metrics.jsonl: its text and modification time."""
        return {p.parent.name: ((p.parent / "metrics.jsonl").read_text(),
                                (p.parent / "metrics.jsonl").stat().st_mtime_ns)
                for p in (sdir / "trials").glob("*/summary.json")}

    def unchanged(before: dict[str, tuple[str, int]]) -> None:  # finished trials were not run again
        now = finished()
        assert {t: now.get(t) for t in before} == before

    # 1. Ctrl-C. Its own session, so that Ctrl-C can reach the whole process group, as a terminal sends it
    # (Ray's worker processes included): what a GPU session's SIGINT showed to fool Tune's counts.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    first = _wait_for_a_trial_to_finish(proc, sdir, set())
    os.killpg(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=180)
    after_ctrl_c = finished()
    assert first in after_ctrl_c
    assert len(after_ctrl_c) < 3, out[-3000:]
    assert json.loads((sdir / "search.json").read_text())["status"] != "finished"
    assert "continue with --name res --resume" in out and "not finished" in out, out[-3000:]

    # 2. --resume, then kill -9 of its driver once one more trial finished.
    proc = subprocess.Popen(resume, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            cwd=tmp_path, start_new_session=True)
    try:
        second = _wait_for_a_trial_to_finish(proc, sdir, set(after_ctrl_c))
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate(timeout=180)
    finally:
        proc.kill()
    unchanged(after_ctrl_c)
    after_kill = finished()
    assert second in after_kill and len(after_kill) < 3, out[-3000:]
    assert json.loads((sdir / "search.json").read_text())["status"] != "finished"
    _no_noise(out)

    # 3. --resume runs the rest.
    res = subprocess.run(resume, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert not (tmp_path / "reports").exists()
    rows = _results(sdir)
    assert len(rows) == 3 and {r["status"] for r in rows} == {"TERMINATED"}, rows
    shown = res.stdout + res.stderr
    _no_noise(shown)
    assert len(shown.splitlines()) <= 12, shown
    assert "3 trials: 0 running, 3 finished, 0 stopped early, 0 failed, 0 waiting" in shown
    for r in rows:  # every ended trial pruned
        tdir = sdir / "trials" / r["trial_id"]
        assert "epoch   1/1" in (tdir / "train.log").read_text()
        assert not (tdir / "checkpoints").exists() and (tdir / "best.safetensors").exists()
    unchanged(after_kill)
    info = json.loads((sdir / "search.json").read_text())
    assert info["status"] == "finished" and info["summary"]["test_acc"] is not None
