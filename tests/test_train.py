"""Training: loss goes down, the run directory, kill -9 and resume, bad input, LR range test."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from distributed import rundir
from metrics_compare import comparable
from distributed.config import ConfigError, TrainConfig
from distributed.engine import fit

ROOT = Path(__file__).resolve().parent.parent
# Tiny but real: 60 training images, 3 steps of 20 per epoch (~2 s an epoch on a 2-core CPU).
TINY = dict(subset=80, val_size=20, test_subset=30, batch_size=20, eval_batch_size=16, num_workers=0,
            max_lr=0.01, label_smoothing=0.0, download=False, checkpoint_every=1)


def tiny_cfg(data_dir, runs_dir, **kw):
    return TrainConfig(data_dir=str(data_dir), runs_dir=str(runs_dir), **{**TINY, **kw})


def cli(*args, env=None, **kw):
    return subprocess.run([sys.executable, str(ROOT / "distributed" / "train.py"), *map(str, args)],
                          capture_output=True, text=True, env={**os.environ, **(env or {})}, **kw)


def tiny_flags(data_dir, runs_dir):
    flags = ["--data-dir", data_dir, "--runs-dir", runs_dir, "--no-download", "--no-report"]
    for k, v in TINY.items():
        if k != "download":
            flags += ["--" + k.replace("_", "-"), v]
    return flags


@pytest.fixture(scope="module")
def basic_run(fake_cifar, tmp_path_factory):
    """One finished 3-epoch run that several tests read (training is the slow part on CPU)."""
    runs = tmp_path_factory.mktemp("runs")
    cfg = tiny_cfg(fake_cifar, runs, name="basic", epochs=3)
    return cfg, fit(cfg, progress=False), runs / "basic"


def copy_unfinished(run: Path, dest: Path) -> Path:
    """A copy of a run that looks interrupted after its last checkpoint (no summary)."""
    import shutil
    shutil.copytree(run, dest)
    (dest / rundir.SUMMARY).unlink()
    return dest


def killed_before_last_checkpoint(run: Path, epoch: int) -> None:
    """What a kill after epoch `epoch` was logged, but before its checkpoint was written, leaves."""
    import shutil
    shutil.rmtree(run / rundir.CHECKPOINTS / f"epoch_{epoch:04d}")
    (run / rundir.SUMMARY).unlink()


def test_fit_lowers_the_loss_and_writes_the_run_directory(basic_run):
    cfg, summary, run = basic_run
    rows = rundir.read_metrics(run)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    for key in ("train_acc", "val_loss", "val_acc", "lr", "epoch_seconds", "images_per_sec", "data_wait_frac",
                "eval_seconds", "checkpoint_seconds", "first_batch_seconds"):
        assert rows[0][key] is not None, key
    # The first batch's wait (worker start-up) is part of the epoch's data wait, not extra to it.
    for r in rows:
        assert 0 < r["first_batch_seconds"] <= r["data_wait_frac"] * r["epoch_seconds"] + 1e-9
    # The whole fit (start-up, validation, checkpoints, test) costs more than its training epochs.
    assert summary["total_seconds"] > summary["wall_seconds"] == pytest.approx(sum(r["epoch_seconds"] for r in rows))
    # where the rest of the whole fit went: before the first epoch, validation, checkpoints, the end
    parts = (summary["startup_seconds"], summary["wall_seconds"], sum(r["eval_seconds"] for r in rows),
             sum(r["checkpoint_seconds"] for r in rows), summary["final_seconds"])
    assert min(parts) > 0 and sum(parts) <= summary["total_seconds"], (parts, summary["total_seconds"])
    saved = rundir.read_json(run / rundir.CONFIG)
    assert TrainConfig.from_dict(saved["config"]) == cfg
    assert saved["versions"]["torch"] and saved["num_params"] == 11_173_962
    assert saved["split"] == {"train": 60, "val": 20, "test": 30}
    pred = rundir.load_predictions(run)
    assert pred["logits"].shape == (30, 10) and sorted(pred["indices"].tolist()) == pred["indices"].tolist()
    assert summary["test_count"] == 30 and summary["test_acc"] == pytest.approx(
        (pred["logits"].argmax(1) == pred["labels"]).mean())
    assert summary["best_epoch"] in (1, 2, 3) and summary["ranks_in_sync"]
    assert (run / rundir.FINAL_WEIGHTS).exists() and (run / rundir.BEST_WEIGHTS).exists()
    assert [p.name for p in rundir.checkpoint_dirs(run)] == ["epoch_0002", "epoch_0003"]  # keep_checkpoints=2
    weights = load_file(str(run / rundir.FINAL_WEIGHTS))
    assert sum(v.size for k, v in weights.items() if "running" not in k and "num_batches" not in k) == 11_173_962
    # Both test evaluations are kept; the reported one is the plain one (no --tta)
    assert np.array_equal(pred["logits"], pred["logits_plain"]) and pred["logits_tta"].shape == (30, 10)
    assert not np.allclose(pred["logits_plain"], pred["logits_tta"])


def test_steps_jsonl_records_every_optimiser_step_and_the_schedule_peak(basic_run):
    """steps.jsonl: one row per optimiser step, lr as the step used it (so OneCycle's peak is there
    even where metrics.jsonl's last-step-of-epoch rate misses it), loss consistent with metrics.jsonl."""
    cfg, _, run = basic_run
    steps, rows = rundir.read_steps(run), rundir.read_metrics(run)
    per_epoch = 60 // cfg.batch_size
    assert [s["step"] for s in steps] == list(range(1, 3 * per_epoch + 1))
    assert [s["epoch"] for s in steps] == [e for e in (1, 2, 3) for _ in range(per_epoch)]
    # the schedule replayed on its own: every step's rate, the peak included
    import torch
    from distributed.pipeline import build_scheduler
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.max_lr, momentum=0.9)
    sched = build_scheduler(cfg, opt, per_epoch)
    replay = []
    for _ in steps:
        replay.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert [s["lr"] for s in steps] == pytest.approx(replay, rel=1e-12)
    for r in rows:
        mine = [s for s in steps if s["epoch"] == r["epoch"]]
        assert mine[-1]["lr"] == r["lr"]
        # equal batches: the epoch's loss is the mean of its steps' losses
        assert np.mean([s["loss"] for s in mine]) == pytest.approx(r["train_loss"], rel=1e-5)
        # without label smoothing or L1 the plain cross-entropy is the optimised loss itself
        assert r["train_ce"] == pytest.approx(r["train_loss"], rel=1e-6)
        assert r["val_loss_smoothed"] == r["val_loss"]


def test_an_existing_run_is_never_overwritten(fake_cifar, tmp_path):
    cfg = tiny_cfg(fake_cifar, tmp_path, name="once", epochs=1)
    (tmp_path / "once").mkdir()
    (tmp_path / "once" / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match="holds a run stopped before its first checkpoint; --resume starts it over"):
        fit(cfg, progress=False)
    ckpt = tmp_path / "once" / rundir.CHECKPOINTS / "epoch_0001"
    ckpt.mkdir(parents=True)
    (ckpt / rundir.TRAINER_STATE).write_text("{}")
    with pytest.raises(ConfigError, match="already holds a run; pass --resume"):
        fit(cfg, progress=False)
    assert (tmp_path / "once" / "config.json").read_text() == "{}"


def test_kill_9_then_resume_ends_exactly_like_an_uninterrupted_run(fake_cifar, tmp_path):
    flags = tiny_flags(fake_cifar, tmp_path) + ["--epochs", 4, "--deterministic", "--dropout", 0.2]
    full = cli(*flags, "--name", "full", timeout=600)
    assert full.returncode == 0, full.stderr

    proc = subprocess.Popen([sys.executable, str(ROOT / "distributed" / "train.py"), *map(str, flags),
                             "--name", "killed"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not rundir.checkpoint_dirs(tmp_path / "killed") and time.time() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)  # no chance to clean up, mid-epoch 2 or mid-checkpoint
    proc.wait()
    assert not (tmp_path / "killed" / rundir.SUMMARY).exists(), "the run finished before it was killed"

    resumed = cli("--name", "killed", "--runs-dir", tmp_path, "--resume", "--no-report", timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed" in resumed.stdout
    a, b = rundir.read_metrics(tmp_path / "full"), rundir.read_metrics(tmp_path / "killed")
    assert comparable(a) == comparable(b)
    # the per-step record too: rows past the resumed checkpoint were dropped, none is missing or doubled
    assert rundir.read_steps(tmp_path / "killed") == rundir.read_steps(tmp_path / "full")
    assert len(rundir.read_steps(tmp_path / "full")) == 4 * 3
    wa, wb = load_file(str(tmp_path / "full" / "model.safetensors")), load_file(str(tmp_path / "killed" / "model.safetensors"))
    assert all(np.array_equal(wa[k], wb[k]) for k in wa)
    sa = json.loads((tmp_path / "full" / "summary.json").read_text())
    sb = json.loads((tmp_path / "killed" / "summary.json").read_text())
    assert sa["test_acc"] == sb["test_acc"] and sa["best_val_acc"] == sb["best_val_acc"]


def test_checkpoint_every_skips_epochs_and_a_kill_between_checkpoints_redoes_them_exactly(fake_cifar, tmp_path):
    cfg = tiny_cfg(fake_cifar, tmp_path, name="sparse", epochs=3, checkpoint_every=2, deterministic=True,
                   keep_checkpoints=5)
    written = []
    done = fit(cfg, callback=lambda r: written.append((r.epoch, r.checkpoint and r.checkpoint.name)), progress=False)
    run = tmp_path / "sparse"
    # Epoch 2 by the interval, epoch 3 because it is the last; epoch 1 none.
    assert written == [(1, None), (2, "epoch_0002"), (3, "epoch_0003")]
    assert [p.name for p in rundir.checkpoint_dirs(run)] == ["epoch_0002", "epoch_0003"]
    final = load_file(str(run / rundir.FINAL_WEIGHTS))

    steps = rundir.read_steps(run)
    killed_before_last_checkpoint(run, 3)  # the newest checkpoint left is epoch 2's
    again = fit(cfg, resume=True, progress=False)
    assert [r["epoch"] for r in rundir.read_metrics(run)] == [1, 2, 3]  # epoch 3 redone, not duplicated
    assert rundir.read_steps(run) == steps
    assert again["test_acc"] == done["test_acc"]
    resumed = load_file(str(run / rundir.FINAL_WEIGHTS))
    assert all(np.array_equal(final[k], resumed[k]) for k in final)


def test_auto_checkpoints_follow_their_own_cost(monkeypatch):
    """--checkpoint-every 0: the first epoch, then once 50x the last checkpoint's seconds have passed,
    and the last epoch always."""
    from distributed import engine

    now = [100.0]
    monkeypatch.setattr(engine.time, "perf_counter", lambda: now[0])
    clock = engine.CheckpointClock(TrainConfig(epochs=10, checkpoint_every=0), type("A", (), {"num_processes": 1})())
    assert clock.due(1)
    clock.written(0.2)  # a checkpoint of 0.2 s: the next one after 10 s of work
    now[0] += 9.9
    assert not clock.due(2)
    now[0] += 0.2
    assert clock.due(3)
    clock.written(0.2)
    assert not clock.due(4) and clock.due(10)
    every = engine.CheckpointClock(TrainConfig(epochs=10, checkpoint_every=3), None)
    assert [e for e in range(1, 11) if every.due(e)] == [3, 6, 9, 10]


def test_a_default_run_checkpoints_its_first_and_last_epoch_at_least(fake_cifar, tmp_path):
    written = []
    fit(tiny_cfg(fake_cifar, tmp_path, name="auto", epochs=3, checkpoint_every=0, keep_checkpoints=5),
        callback=lambda r: written.append(r.checkpoint is not None), progress=False)
    assert written[0] and written[-1]
    assert [p.name for p in rundir.checkpoint_dirs(tmp_path / "auto")][0] == "epoch_0001"


def test_a_half_written_checkpoint_is_ignored_on_resume(basic_run, tmp_path):
    cfg, _, run = basic_run
    run = copy_unfinished(run, tmp_path / "basic")
    # What a kill during save_state leaves: a temp folder, never an epoch_NNNN one.
    (run / "checkpoints" / ".tmp_epoch_0004").mkdir()
    assert [p.name for p in rundir.checkpoint_dirs(run)] == ["epoch_0002", "epoch_0003"]
    longer = cfg.replace(runs_dir=str(tmp_path))
    summary = fit(longer, resume=True, progress=False)  # epoch 3 of 3 is done: only the test eval runs
    assert summary["epochs"] == 3 and summary["test_count"] == 30
    assert len(rundir.read_metrics(run)) == 3


def test_a_kill_between_the_checkpoint_and_its_log_line_loses_no_epoch_row(basic_run, tmp_path):
    """The checkpoint of epoch 3 is in place but metrics.jsonl never got epoch 3's row (killed in
    between): --resume puts the row back from the checkpoint instead of ending with 2 epochs logged."""
    cfg, _, run = basic_run
    full = rundir.read_metrics(run)
    run = copy_unfinished(run, tmp_path / "basic")
    (run / rundir.METRICS).write_text("".join(json.dumps(r) + "\n" for r in full[:2]))
    summary = fit(cfg.replace(runs_dir=str(tmp_path)), resume=True, progress=False)
    rows = rundir.read_metrics(run)
    assert [r["epoch"] for r in rows] == [1, 2, 3] and summary["epochs"] == 3
    assert comparable(rows) == comparable(full)  # the same row, only its checkpoint time unknown
    assert rows[2]["checkpoint_seconds"] is None and rows[2]["val_acc"] == full[2]["val_acc"]


def test_resume_refuses_a_changed_recipe(basic_run, tmp_path):
    cfg, _, run = basic_run
    copy_unfinished(run, tmp_path / "basic")
    with pytest.raises(ConfigError, match="differs from .* in: max_lr"):
        fit(cfg.replace(runs_dir=str(tmp_path), max_lr=0.2), resume=True, progress=False)


def test_a_run_saved_before_a_flag_existed_still_resumes(basic_run, tmp_path):
    """config.json written before --cycle-momentum existed lacks the field: it means the default
    (the behaviour of that time), so --resume goes on; a run that asks for another value is refused."""
    cfg, _, run = basic_run
    old = copy_unfinished(run, tmp_path / "basic")
    meta = json.loads((old / rundir.CONFIG).read_text())
    del meta["config"]["cycle_momentum"]
    (old / rundir.CONFIG).write_text(json.dumps(meta))
    mine = cfg.replace(runs_dir=str(tmp_path))
    assert rundir.RunWriter(old).start(mine.to_dict(), resume=True) is None
    with pytest.raises(ConfigError, match="differs from .* in: cycle_momentum"):
        rundir.RunWriter(old).start(mine.replace(cycle_momentum=False).to_dict(), resume=True)


@pytest.mark.parametrize("flags, message", [
    (["--max-lr", "-0.1"], "invalid --max-lr -0.1: the learning rate must be > 0"),
    (["--flip-p", "1.5"], "invalid --flip-p 1.5: a probability must be in [0, 1]"),
    (["--epochs", "0"], "invalid --epochs 0: must be >= 1"),
    (["--checkpoint-every", "-1"], "invalid --checkpoint-every -1: must be >= 0 (0: auto)"),
    (["--dropout", "1"], "invalid --dropout 1.0: must be in [0, 1)"),
    (["--scheduler", "cosine"], "invalid --scheduler 'cosine': choose onecycle, plateau or step"),
])
def test_invalid_values_are_rejected_with_one_line_before_anything_starts(tmp_path, flags, message):
    r = cli("--runs-dir", tmp_path, "--data-dir", tmp_path / "nodata", *flags, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip() == f"error: {message}"
    assert not any(tmp_path.iterdir())  # nothing started, nothing written


def test_unknown_flags_and_missing_data_fail_cleanly(tmp_path):
    r = cli("--max-lrr", "0.1", timeout=120)
    assert r.returncode == 2 and r.stderr.strip() == ("error: unrecognized arguments: --max-lrr 0.1 "
                                                    "(did you mean --max-lr?)")
    r = cli("--runs-dir", tmp_path, "--data-dir", tmp_path / "nodata", "--no-download", "--no-report", timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().startswith("error: CIFAR-10 not found") and "Traceback" not in r.stderr


def test_download_failure_says_where_to_put_the_files(tmp_path, monkeypatch):
    import torchvision.datasets
    from distributed.data import DataError, load_cifar10

    def offline(*a, **k):
        raise OSError("no network")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(DataError, match="downloading it failed .* put the official cifar-10-python.tar.gz"):
        load_cifar10(tmp_path / "d", download=True)


def test_lr_range_test_writes_curve_and_suggestion(fake_cifar, tmp_path):
    from distributed.lr_finder import find_lr
    cfg = tiny_cfg(fake_cifar, tmp_path, name="lr", epochs=1)
    fit(find_lr(cfg, tmp_path / "lr"), progress=False)  # a step before fit: fit trains with what it returns
    res = rundir.read_json(tmp_path / "lr" / rundir.LR_FIND)
    lrs = res["lrs"]
    assert len(lrs) >= 5 and all(b > a for a, b in zip(lrs, lrs[1:]))  # rising, no scheduler in between
    assert lrs[0] <= res["suggested_max_lr"] <= lrs[-1]
    saved = rundir.read_json(tmp_path / "lr" / rundir.CONFIG)["config"]
    assert saved["max_lr"] == res["chosen_max_lr"] == res["suggested_max_lr"]


def test_suggested_lr_is_the_steepest_descent_before_the_minimum():
    from distributed.lr_finder import suggest_max_lr
    lrs = np.logspace(-4, 1, 50)
    losses = 2.3 - 1.0 / (1 + np.exp(-(np.log10(lrs) + 2) * 4))  # steepest at 1e-2
    losses[40:] += np.linspace(0, 5, 10)  # diverges at the end
    assert 0.5e-2 < suggest_max_lr(lrs, losses) < 2e-2


def test_schedules_onecycle_peaks_at_max_lr_and_ends_low_step_and_plateau_decay():
    import torch
    from distributed.pipeline import build_scheduler

    def opt():
        return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0, momentum=0.9)

    cfg = TrainConfig(epochs=4, max_lr=0.4, pct_start=0.25)
    o = opt()
    s = build_scheduler(cfg, o, steps_per_epoch=10)
    lrs = []
    for _ in range(40):
        lrs.append(o.param_groups[0]["lr"])
        o.step()
        s.step()
    assert lrs[0] == pytest.approx(0.4 / cfg.div_factor)
    assert max(lrs) == pytest.approx(0.4) and int(np.argmax(lrs)) == 9  # 25% of 40 steps
    assert lrs[-1] < lrs[0] and min(lrs) > 0

    o = opt()
    s = build_scheduler(TrainConfig(scheduler="step", step_size=2, gamma=0.5, max_lr=0.4), o, 10)
    o.param_groups[0]["lr"] = 0.4
    for _ in range(4):
        s.step()
    assert o.param_groups[0]["lr"] == pytest.approx(0.1)

    o = opt()
    s = build_scheduler(TrainConfig(scheduler="plateau", patience=1, gamma=0.1, max_lr=0.4), o, 10)
    for acc in (0.5, 0.5, 0.5):  # no improvement for more than `patience` epochs
        s.step(acc)
    assert o.param_groups[0]["lr"] == pytest.approx(0.1)


@pytest.mark.parametrize("flag", ["--cycle-momentum", "--no-cycle-momentum", None])
def test_onecycle_cycles_momentum_unless_told_not_to(flag):
    """By default OneCycle moves momentum against the learning rate (0.9 -> 0.765 at the peak -> 0.9);
    `--no-cycle-momentum` keeps the momentum SGD steps with at --momentum throughout (David Page's recipe)."""
    import torch

    from cifar_lab.cli import train_parser
    from distributed.config import config_from_args
    from distributed.pipeline import build_optimizer, build_scheduler

    cfg = config_from_args(train_parser().parse_args(["--epochs", "4", "--max-lr", "0.4"] + ([flag] if flag else [])))
    assert cfg.cycle_momentum is (flag != "--no-cycle-momentum")
    o = build_optimizer(cfg, [torch.nn.Parameter(torch.zeros(1))])
    s = build_scheduler(cfg, o, steps_per_epoch=10)
    lrs, momenta = [], []
    for _ in range(40):
        lrs.append(o.param_groups[0]["lr"])
        momenta.append(o.param_groups[0]["momentum"])  # what SGD.step reads for this step
        o.step()
        s.step()
    peak = int(np.argmax(lrs))
    if cfg.cycle_momentum:
        assert momenta[0] == pytest.approx(0.9) and momenta[peak] == pytest.approx(0.85 * 0.9)
        assert min(momenta) == pytest.approx(0.765) and momenta[-1] > 0.89
    else:
        assert momenta == [0.9] * 40
    assert max(lrs) == pytest.approx(0.4)  # the learning rate cycles either way


def test_train_builds_the_report_at_the_end_and_a_report_failure_keeps_the_run(basic_run, tmp_path, capsys):
    from cifar_lab.cli import train as main

    _, _, run = basic_run
    import shutil
    shutil.copytree(run, tmp_path / "basic")
    # --resume of a finished run does no training: it returns the summary and builds the report.
    assert main(["--name", "basic", "--runs-dir", str(tmp_path), "--resume", "--report-dir", str(tmp_path / "rep")]) == 0
    assert (tmp_path / "rep" / "index.html").exists()
    (tmp_path / "basic" / rundir.PREDICTIONS).unlink()
    assert main(["--name", "basic", "--runs-dir", str(tmp_path), "--resume", "--report-dir", str(tmp_path / "rep2")]) == 1
    err = capsys.readouterr().err
    assert "report failed" in err and "the run is complete, rebuild it with" in err
    assert (tmp_path / "basic" / rundir.SUMMARY).exists()


def test_every_epoch_reshuffles_and_redraws_augmentation_and_a_resume_sees_the_same_epoch(fake_cifar):
    # Accelerate's prepared loader re-sets its sampler's epoch from its own counter; a bug there
    # would train every epoch on one fixed order and one fixed set of augmented images.
    import torch
    from distributed.pipeline import build_accelerator, build_pipeline

    cfg = tiny_cfg(fake_cifar, "unused").replace(flip_p=0.5, cutout_p=0.5)
    accelerator = build_accelerator(cfg)

    def epoch(p, e):
        xs, idx = zip(*[(x, i) for x, _, i in p.train_batches.epoch(e)])
        return torch.cat(idx).tolist(), torch.cat(xs)

    p = build_pipeline(cfg, accelerator, None)
    order0, x0 = epoch(p, 0)
    order1, x1 = epoch(p, 1)
    assert sorted(order0) == sorted(order1) and order0 != order1
    same_image_0 = x0[order0.index(order1[0])]
    assert not torch.equal(same_image_0, x1[0])  # same image, new augmentation draw
    fresh = build_pipeline(cfg, accelerator, None)  # what a resumed run builds
    order1_again, x1_again = epoch(fresh, 1)
    assert order1_again == order1 and torch.equal(x1_again, x1)


def test_compiled_training_saves_plain_weights_and_resumes(fake_cifar, tmp_path):
    # --compile wraps the model (torch.compile / inductor; on CPU it needs a C++ compiler, as CI has):
    # weights must still be saved under the plain names the report and the search load, and a
    # checkpoint must load back into a compiled model.
    from distributed.model import resnet18
    cfg = tiny_cfg(fake_cifar, tmp_path, name="compiled", epochs=2, compile=True)
    done = fit(cfg, progress=False)
    run = tmp_path / "compiled"
    weights = load_file(str(run / rundir.FINAL_WEIGHTS))
    assert not [k for k in weights if "_orig_mod" in k or k.startswith("module.")]
    import torch
    resnet18().load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})  # strict: names match

    killed_before_last_checkpoint(run, 2)
    again = fit(cfg, resume=True, progress=False)
    assert again["epochs"] == 2 and [r["epoch"] for r in rundir.read_metrics(run)] == [1, 2]
    assert abs(again["test_acc"] - done["test_acc"]) <= 1 / done["test_count"] + 1e-9


def test_tta_evaluation_averages_each_image_with_its_mirror(fake_cifar):
    import torch
    from accelerate import Accelerator

    from distributed.data import CifarDataset, load_cifar10, make_loader
    from distributed.engine import evaluate
    from distributed.model import resnet18

    data = load_cifar10(fake_cifar, download=False)
    ds = CifarDataset(data.test_x, data.test_y, np.arange(12), transform=None)
    loader = make_loader(ds, 5, shuffle=False, seed=0, num_workers=0, drop_last=False, pin_memory=False)
    torch.manual_seed(0)
    model = resnet18().eval()
    from distributed.augment import ModelInput

    to_input = ModelInput((0.0,) * 3, (1.0,) * 3, channels_last=False)  # x / 255
    plain = evaluate(model, loader, to_input, Accelerator(cpu=True))
    both = evaluate(model, loader, to_input, Accelerator(cpu=True), tta=True)
    # both=True: the two evaluations side by side, the reported numbers still those of `tta`
    kept = evaluate(model, loader, to_input, Accelerator(cpu=True), both=True, label_smoothing=0.1)
    np.testing.assert_array_equal(kept["logits"], plain["logits"])
    np.testing.assert_array_equal(kept["logits_plain"], plain["logits"])
    np.testing.assert_allclose(kept["logits_tta"], both["logits"], rtol=1e-6, atol=1e-6)
    assert kept["loss"] == plain["loss"] and kept["acc"] == plain["acc"]
    logits, labels = torch.from_numpy(kept["logits"]), torch.from_numpy(kept["labels"])
    assert kept["loss_smoothed"] == pytest.approx(torch.nn.functional.cross_entropy(logits, labels, label_smoothing=0.1).item())
    assert kept["loss_smoothed"] != pytest.approx(kept["loss"])
    x = torch.from_numpy(data.test_x[:12]).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        mirrored = model(x.flip(3)).numpy()
    assert both["count"] == plain["count"] == 12
    np.testing.assert_allclose(both["logits"], (plain["logits"] + mirrored) / 2, rtol=1e-5, atol=1e-5)
    assert not np.allclose(both["logits"], plain["logits"])  # the mirror changed something: not a no-op


def test_log_with_tensorboard_logs_the_run_and_a_resume_shows_each_step_once(fake_cifar, tmp_path):
    """--log-with tensorboard: per-epoch metrics and per-step loss/lr in runs/<name>/tensorboard/,
    read back with TensorBoard's own event reader; a resumed run purges what it redoes."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = tiny_cfg(fake_cifar, tmp_path, name="tb", epochs=2, deterministic=True, log_with="tensorboard")
    fit(cfg, progress=False)
    run = tmp_path / "tb"
    killed_before_last_checkpoint(run, 2)       # epoch 2 is redone by the resume
    fit(cfg, resume=True, progress=False)
    events = EventAccumulator(str(run / rundir.TENSORBOARD), size_guidance={"scalars": 0})
    events.Reload()
    steps, rows = rundir.read_steps(run), rundir.read_metrics(run)
    for tag, key in (("step/lr", "lr"), ("step/loss", "loss")):
        logged = events.Scalars(tag)
        assert [e.step for e in logged] == [s["step"] for s in steps], tag   # each step once
        assert [e.value for e in logged] == pytest.approx([s[key] for s in steps], rel=1e-6)
    for key in ("train_loss", "train_ce", "val_acc", "val_loss", "val_loss_smoothed", "epoch_seconds"):
        logged = events.Scalars(f"epoch/{key}")
        assert [e.value for e in logged] == pytest.approx([r[key] for r in rows], rel=1e-6), key
        assert [e.step for e in logged] == [3, 6]    # at the epoch's last optimiser step
    summary = rundir.read_json(run / rundir.SUMMARY)
    assert [e.value for e in events.Scalars("test/acc")] == pytest.approx([summary["test_acc"]])


def test_log_with_a_tracker_that_is_not_installed_is_one_line(tmp_path):
    import importlib.util
    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    r = cli("--runs-dir", tmp_path, "--data-dir", tmp_path / "nodata", "--log-with", "wandb", timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip() == ("error: invalid --log-with wandb: the wandb package is not installed; "
                                "`pip install wandb`, or leave --log-with out")
    assert not any(tmp_path.iterdir())
    r = cli("--runs-dir", tmp_path, "--log-with", "neptune", timeout=120)
    assert r.returncode == 2 and r.stderr.strip() == (
        "error: invalid --log-with 'neptune': choose tensorboard, wandb, mlflow or none")
