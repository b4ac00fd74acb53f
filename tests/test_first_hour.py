"""A new user's first hour (issue 11): the learning rate follows the batch, divergence is said,
no abbreviated flags, every flag explained, a progress bar on a terminal (also under
`accelerate launch`), a quiet first command, no run directory before training starts, remembered
CLI choices, the search's compact view and disk pruning, a dated default search name."""
from __future__ import annotations

import contextlib
import json
import os
import pickle
import pty
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest

from distributed import rundir
from distributed.config import ConfigError, TrainConfig

ROOT = Path(__file__).resolve().parent.parent
TRAIN = str(ROOT / "distributed" / "train.py")
# As test_train's TINY (60 train images, 3 steps of 20 an epoch), without a max_lr: the default rule.
TINY = ["--subset", "80", "--val-size", "20", "--test-subset", "30", "--batch-size", "20", "--eval-batch-size", "16",
        "--num-workers", "0", "--label-smoothing", "0", "--no-download"]


def tiny_cfg(data_dir, runs_dir, **kw) -> TrainConfig:
    base = dict(subset=80, val_size=20, test_subset=30, batch_size=20, eval_batch_size=16, num_workers=0,
                label_smoothing=0.0, download=False)
    return TrainConfig(data_dir=str(data_dir), runs_dir=str(runs_dir), **{**base, **kw})


# ----------------------------------------------------------------------------- 1. max_lr and the batch
def test_default_max_lr_follows_the_global_batch_and_a_given_one_is_used_as_is():
    assert TrainConfig().max_lr is None and TrainConfig().effective_max_lr == pytest.approx(0.4)
    assert TrainConfig(batch_size=128).effective_max_lr == pytest.approx(0.1)   # 0.4 x 128/512
    assert TrainConfig(batch_size=128, max_lr=0.4).effective_max_lr == 0.4     # explicit: as given
    # replace() keeps the rule, not a number computed for another batch
    assert TrainConfig().replace(batch_size=64).effective_max_lr == pytest.approx(0.05)
    with pytest.raises(ConfigError, match="--max-lr -1"):
        TrainConfig(max_lr=-1.0)
    # config.json round trip keeps "no max_lr given" (null), so a resume compares like with like
    cfg = TrainConfig(batch_size=128)
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_the_optimiser_and_the_schedule_use_the_effective_max_lr():
    import torch

    from distributed.pipeline import build_optimizer, build_scheduler

    cfg = TrainConfig(batch_size=128, epochs=2)
    opt = build_optimizer(cfg, [torch.nn.Parameter(torch.zeros(1))])
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)
    build_scheduler(cfg, opt, steps_per_epoch=8)  # OneCycle: starts at max_lr / div_factor, peaks at max_lr
    assert opt.param_groups[0]["max_lr"] == pytest.approx(0.1) and opt.param_groups[0]["lr"] == pytest.approx(0.01)
    step = build_optimizer(cfg.replace(scheduler="step"), [torch.nn.Parameter(torch.zeros(1))])
    assert step.param_groups[0]["lr"] == pytest.approx(0.1)


def test_search_space_learning_rates_are_at_batch_512_and_scale_like_the_default():
    from tuning import space

    s = space.merge_space({})
    scaled = space.at_batch(s, 128)
    assert (scaled["max_lr"]["lower"], scaled["max_lr"]["upper"]) == pytest.approx((0.0125, 0.25))
    assert scaled["dropout"] == s["dropout"] and s["max_lr"]["upper"] == 1.0  # the rest and the input untouched
    assert space.at_batch({"max_lr": 0.4}, 256)["max_lr"] == pytest.approx(0.2)
    assert space.at_batch({"max_lr": {"type": "choice", "values": [0.2, 0.8]}}, 64)["max_lr"]["values"] == \
        pytest.approx([0.025, 0.1])
    assert space.at_batch(s, 512) == s
    assert space.describe_lr(s, 128) == "max_lr 0.0125-0.25 (0.05-1 at batch 512, x 128/512)"


def test_lr_range_test_without_suggestion_trains_with_the_batch_scaled_default(fake_cifar, tmp_path, monkeypatch):
    from distributed import lr_finder

    # the range test itself is test_train's; here only what find_lr chooses from its result
    monkeypatch.setattr(lr_finder, "run_range_test", lambda *a, **k: {"lrs": [1e-3, 1e-2], "losses": [2.3, 2.2],
                                                                      "suggested_max_lr": 0.5})
    cfg = tiny_cfg(fake_cifar, tmp_path, name="lr", epochs=1)
    assert lr_finder.find_lr(cfg, tmp_path / "s").max_lr == 0.5
    chosen = lr_finder.find_lr(cfg, tmp_path / "lr", use_suggestion=False)
    assert chosen.max_lr == pytest.approx(0.4 * 20 / 512)   # recorded as a number: what was trained with
    assert rundir.read_json(tmp_path / "lr" / rundir.LR_FIND)["chosen_max_lr"] == pytest.approx(0.015625)


# ----------------------------------------------------------------------------- 2. divergence
def _row(epoch, val_loss, val_acc, train_acc=0.1):
    return {"epoch": epoch, "train_loss": 2.3, "train_acc": train_acc, "val_loss": val_loss, "val_acc": val_acc}


def test_divergence_warning_on_exploded_loss_or_chance_accuracy_after_the_warm_up():
    from distributed.engine import divergence_warning

    cfg = TrainConfig(epochs=8, pct_start=0.25, batch_size=128)  # warm-up: 2 epochs
    exploded = divergence_warning(cfg, _row(1, 134_370.0, 0.1), 10)
    assert exploded.startswith("warning: val loss 1.344e+05 has exploded")
    assert "lower --max-lr (this run: 0.1)" in exploded and "--find-lr" in exploded
    assert divergence_warning(cfg, _row(2, 2.30, 0.10), 10) is None          # still warming up
    stuck = divergence_warning(cfg, _row(3, 2.30, 0.10), 10)
    assert stuck.startswith("warning: val accuracy 0.100 is still at chance (1/10) after the warm-up")
    assert divergence_warning(cfg, _row(3, 1.50, 0.45, 0.5), 10) is None    # learning
    assert divergence_warning(cfg, _row(3, 2.30, 0.10, train_acc=0.6), 10) is None  # overfits, not diverged
    no_val = {"epoch": 1, "train_loss": 1e4, "train_acc": 0.1, "val_loss": None, "val_acc": None}
    assert divergence_warning(cfg, no_val, 10).startswith("warning: train loss 1e+04 has exploded")


def test_a_finite_but_exploding_run_warns_in_its_epoch_lines_and_trains_on(fake_cifar, tmp_path, capsys):
    # max_lr 3 on the tiny set: val loss ~1e20 after epoch 1, finite (NaN would raise instead)
    fit_cfg = tiny_cfg(fake_cifar, tmp_path, name="boom", epochs=1, max_lr=3.0, deterministic=True)
    from distributed.engine import fit

    summary = fit(fit_cfg, progress=False, evaluate_test=False)
    assert summary["epochs"] == 1
    out = capsys.readouterr().out
    epoch_line = next(i for i, line in enumerate(out.splitlines()) if line.startswith("epoch   1/1"))
    assert "has exploded" in out.splitlines()[epoch_line + 1] and "lower --max-lr (this run: 3)" in out


# ----------------------------------------------------------------------------- 3. the command lines
@pytest.mark.parametrize("which, argv, wrong", [
    ("train", ["--epoch", "2"], "--epoch 2"),
    ("search", ["--num-sample", "2"], "--num-sample 2"),
    ("report", ["runs/x", "--ou", "y"], "--ou y"),
])
def test_abbreviated_flags_are_refused_in_every_cli(which, argv, wrong, capsys):
    from cifar_lab import cli

    parser = {"train": cli.train_parser, "search": cli.search_parser, "report": cli.report_parser}[which]()
    with pytest.raises(SystemExit) as e:
        parser.parse_args(argv)
    assert e.value.code == 2
    assert capsys.readouterr().err.strip().startswith(f"error: unrecognized arguments: {wrong} (did you mean")


def _help_entries(parser) -> dict[str, str]:
    """--flag -> its help text, read from --help as a user sees it."""
    entries: dict[str, str] = {}
    flag = None
    for line in parser.format_help().splitlines():
        m = re.match(r"^  (-[^ ].*?)(?:\s{2,}(\S.*))?$", line)
        if m:
            flag = m.group(1).split(",")[0].split()[0]
            entries[flag] = m.group(2) or ""
        elif flag and line.startswith("    ") and line.strip():
            entries[flag] += " " + line.strip()
        elif not line.strip():
            flag = None
    return entries


@pytest.mark.parametrize("which", ["train", "search", "report"])
def test_every_flag_in_help_has_a_description_and_its_default(which, monkeypatch):
    from cifar_lab import cli

    monkeypatch.setenv("COLUMNS", "120")
    entries = _help_entries({"train": cli.train_parser, "search": cli.search_parser,
                             "report": cli.report_parser}[which]())
    assert len(entries) > (40 if which != "report" else 3)
    for flag, text in entries.items():
        if flag == "-h":
            continue
        assert len(text) > 15, f"{flag}: no description"
        if flag not in ("--resume", "--find-lr") or which == "search":  # plain switches state no default
            assert "(default:" in text, f"{flag}: no default in its help: {text}"
    assert not [t for t in entries.values() if "(default: None)" in t]  # a rule in words, never "None"


def test_help_shows_choices_units_and_explains_auto_workers(monkeypatch):
    from cifar_lab import cli

    monkeypatch.setenv("COLUMNS", "200")
    text = cli.train_parser().format_help()
    assert "--scheduler {onecycle,plateau,step}" in text and "--mixed-precision {auto,no,bf16,fp16}" in text
    entries = _help_entries(cli.train_parser())
    assert "-1: auto = this node's cores" in entries["--num-workers"]
    assert "0.4 x batch-size / 512" in entries["--max-lr"] and "used as is" in entries["--max-lr"]
    for flag, unit in (("--epochs", "epochs"), ("--batch-size", "images"), ("--pad", "pixels"),
                       ("--rotate-limit", "degrees"), ("--cutout-max", "pixels"), ("--keep-checkpoints", "MB")):
        assert unit in entries[flag], flag


# ----------------------------------------------------------------------------- 4, 7, 8: a real terminal
def _run_in_pty(cmd: list[str], interrupt_when: bytes | None = None, timeout: float = 400,
                then_terminate_children_after: float | None = None) -> tuple[int, str]:
    """Run `cmd` with stdin/stdout/stderr on a pseudo-terminal opened without a size (0 x 0, like
    `script` or `docker exec -t`); optionally Ctrl-C its process group once `interrupt_when` shows,
    and that many seconds later SIGTERM the children of the process it started."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
                            env={**os.environ, "TERM": "xterm"})
    os.close(slave)
    out, deadline, sent = b"", time.time() + timeout, False
    try:
        while time.time() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: every process holding the terminal has exited
                    break
                if not chunk:
                    break
                out += chunk
            if interrupt_when is not None and not sent and interrupt_when in out:
                time.sleep(1.0)
                children = psutil.Process(proc.pid).children()
                os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
                sent = True
                if then_terminate_children_after is not None:
                    time.sleep(then_terminate_children_after)
                    for child in children:
                        with contextlib.suppress(psutil.NoSuchProcess):
                            child.terminate()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        os.close(master)
    return proc.wait(), out.decode(errors="replace")


def test_progress_bar_on_a_terminal_and_a_plain_run_header(fake_cifar, tmp_path):
    rc, out = _run_in_pty([sys.executable, TRAIN, "--data-dir", str(fake_cifar), "--runs-dir", str(tmp_path),
                           "--name", "tty", "--epochs", "1", "--no-report", *TINY])
    assert rc == 0, out[-3000:]
    assert re.search(r"epoch 1/1: +\d+%\|", out), out[-3000:]      # the per-step bar, drawn
    assert "max_lr 0.01562 (0.4 x batch 20/512)" in out           # the effective rate, said in the header
    meta = rundir.read_json(tmp_path / "tty" / rundir.CONFIG)
    assert meta["config"]["max_lr"] is None and meta["effective_max_lr"] == pytest.approx(0.015625)
    assert meta["cli"] == {"report": False, "report_dir": "reports"}


def test_accelerate_launch_draws_the_bar_quietly_and_ctrl_c_in_epoch_1_leaves_no_run(fake_cifar, tmp_path):
    """With loader workers, as users run it. accelerate >= 1.16's launcher answers Ctrl-C by sending
    SIGTERM to every process below it (torch's shared-memory managers included, whose death made
    the trainer abort mid-sentence: "terminate called after throwing ... Broken pipe"); the test's
    own SIGTERM half a second later is that signal arriving late, as on a loaded machine, after the
    trainer had stopped holding SIGTERM (it ended the process before its line)."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "-q", "--config_file",
           str(ROOT / "launch" / "default.yaml"), TRAIN, "--data-dir", str(fake_cifar), "--runs-dir",
           str(tmp_path), "--name", "launched", "--epochs", "2", "--no-report", *TINY, "--num-workers", "2",
           # 12 steps, not TINY's 3: Ctrl-C comes ~1 s after the bar shows, and a 3-step epoch 1 had
           # ended by then on a fast hour (2026-12-03: the run stopped in epoch 2, as it should)
           "--subset", "260"]
    rc, out = _run_in_pty(cmd, interrupt_when=b"epoch 1/2:", then_terminate_children_after=0.5)
    assert re.search(r"epoch 1/2: +\d+%\|", out), out[-3000:]
    assert "were not passed to `accelerate launch`" not in out  # the launch file names every value
    assert "interrupted; nothing was written" in out, out[-3000:]
    # Whatever the launcher prints of its own (accelerate < 1.16: a KeyboardInterrupt traceback;
    # 1.16 pipes the child's stderr and prints nothing), the line saying what to do is the last.
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert lines[-1].startswith("interrupted; nothing was written"), out[-3000:]
    assert rc != 0
    assert not (tmp_path / "launched").exists()  # the name stays free


def test_a_failed_launch_prints_one_line_and_no_launcher_noise(tmp_path):
    r = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "-q", "--config_file",
                        str(ROOT / "launch" / "default.yaml"), TRAIN, "--epoch", "2"],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode != 0
    # no launcher warning or traceback
    assert r.stderr.strip() == "error: unrecognized arguments: --epoch 2 (did you mean --epochs?)"
    assert r.stdout == ""


# ----------------------------------------------------------------------------- 8. the run directory
def test_a_run_that_fails_before_its_first_epoch_ends_leaves_no_directory(fake_cifar, tmp_path):
    from distributed.engine import NonFiniteLossError, fit

    with pytest.raises(NonFiniteLossError, match=r"lower --max-lr \(this run: 1e\+30\)"):
        fit(tiny_cfg(fake_cifar, tmp_path, name="nan", epochs=1, max_lr=1e30), progress=False)
    with pytest.raises(ConfigError, match="larger than the 60 training images"):
        fit(tiny_cfg(fake_cifar, tmp_path, name="big", epochs=1, batch_size=100), progress=False)
    assert not any(tmp_path.iterdir())


def test_resume_without_a_checkpoint_says_it_starts_over_and_remembers_no_report(fake_cifar, tmp_path, capsys):
    from cifar_lab.cli import train

    flags = ["--data-dir", str(fake_cifar), "--runs-dir", str(tmp_path), "--name", "r", "--epochs", "1", *TINY]
    assert train([*flags, "--no-report"]) == 0
    assert "%|" not in capsys.readouterr().err  # stderr is not a terminal here: no progress bar
    run = tmp_path / "r"
    assert rundir.read_json(run / rundir.CONFIG)["cli"]["report"] is False
    # What a kill after epoch 1 was logged but before any checkpoint leaves (--checkpoint-every > 1)
    shutil.rmtree(run / rundir.CHECKPOINTS)
    (run / rundir.SUMMARY).unlink()
    capsys.readouterr()
    assert train(flags) == 2
    assert "stopped before its first checkpoint; --resume starts it over" in capsys.readouterr().err
    report_dir = tmp_path / "rep"
    assert train(["--name", "r", "--runs-dir", str(tmp_path), "--resume", "--report-dir", str(report_dir)]) == 0
    assert "starting over: no checkpoint yet" in capsys.readouterr().out
    assert [r["epoch"] for r in rundir.read_metrics(run)] == [1]
    assert not report_dir.exists()  # --no-report of the first start, remembered


# ----------------------------------------------------------------------------- 6. the search's view
def _trial(tid, status, epoch=None, acc=None):
    return SimpleNamespace(trial_id=tid, status=status,
                           last_result={} if epoch is None else {"epoch": epoch, "val_acc": acc})


def test_search_progress_is_one_compact_line_per_change_in_a_log(tmp_path):
    import io

    from tuning.progress import SearchProgress

    stream = io.StringIO()
    view = SearchProgress(tmp_path, num_samples=4, max_epochs=2, stream=stream, prune=False)
    trials = [_trial("a", "RUNNING", 1, 0.3), _trial("b", "PENDING")]
    view.on_trial_result(0, trials, trials[0], {"epoch": 1, "val_acc": 0.3})
    for _ in range(5):
        view.on_step_end(0, trials)  # ticks without a change print nothing more
    trials = [_trial("a", "TERMINATED", 2, 0.4), _trial("b", "TERMINATED", 1, 0.2), _trial("c", "ERROR"),
              _trial("d", "RUNNING")]
    view.on_step_end(1, trials)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2 and "\x1b" not in stream.getvalue() and "\r" not in stream.getvalue()
    assert lines[0].endswith("4 trials: 1 running, 0 finished, 0 stopped early, 0 failed, 3 waiting | "
                             "best val_acc 0.3000 (a, epoch 1)")
    assert lines[1].endswith("4 trials: 1 running, 1 finished, 1 stopped early, 1 failed, 0 waiting | "
                             "best val_acc 0.4000 (a, epoch 2)")
    # Tune pickles its callbacks into the experiment; a resumed search gets this object back, with
    # no stream of the old process and the best result read from the restored trials
    again = pickle.loads(pickle.dumps(view))
    assert again.stream is sys.stdout and again.num_samples == 4 and again.best is None
    assert "best val_acc 0.4000 (a, epoch 2)" in again.line(trials)


def test_search_tables_only_with_verbose(tmp_path):
    from tuning.config import SearchConfig
    from tuning.runner import run_config

    quiet = run_config(tmp_path, SearchConfig(name="q"), ["max_lr"], 2)
    loud = run_config(tmp_path, SearchConfig(name="q", verbose=True), ["max_lr"], 2)
    assert quiet.progress_reporter is None and quiet.verbose == 0
    assert loud.progress_reporter is not None and loud.verbose == 1


def test_tune_failure_logs_are_dropped_for_the_compact_view_or_kept_without_colour():
    import logging

    from tuning.progress import tune_error_logs

    logger = logging.getLogger("ray.tune.execution.tune_controller")
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger.addHandler(handler)
    err = RuntimeError("\x1b[36mray::ImplicitFunc.train()\x1b[39m (pid=1) ValueError: bad")
    try:
        for verbose in (False, True):  # pytest's stderr is not a terminal
            with tune_error_logs(verbose):
                logger.error("Trial task failed for trial t1", exc_info=(RuntimeError, err, None))
                logger.error("Something else")
    finally:
        logger.removeHandler(handler)
    assert [r.getMessage() for r in records] == ["Something else", "Trial task failed for trial t1", "Something else"]
    assert "ray::ImplicitFunc.train()" in records[1].exc_text and "\x1b" not in records[1].exc_text


def test_ended_trials_lose_checkpoints_and_final_weights_only(tmp_path):
    from distributed.rundir import RunWriter

    run = tmp_path / "trial"
    (run / rundir.CHECKPOINTS / "epoch_0001").mkdir(parents=True)
    (run / rundir.CHECKPOINTS / "epoch_0001" / "model.safetensors").write_bytes(b"x" * 1000)
    keep = [rundir.CONFIG, rundir.METRICS, rundir.PARAMS, rundir.SUMMARY, rundir.BEST_WEIGHTS, rundir.TRAIN_LOG]
    for name in keep + [rundir.FINAL_WEIGHTS]:
        (run / name).write_text("{}")
    assert RunWriter(run).prune_ended() == 1002
    assert sorted(p.name for p in run.iterdir()) == sorted(keep)


# ----------------------------------------------------------------------------- 9. names and README
def test_the_default_search_name_is_its_start_time_and_resume_asks_for_a_name(tmp_path, capsys):
    from cifar_lab.cli import search
    from tuning.config import SearchConfig

    assert re.fullmatch(r"\d{8}-\d{6}", SearchConfig().name)
    (tmp_path / "search-old").mkdir()
    (tmp_path / "search-old" / rundir.SEARCH_JSON).write_text("{}")
    assert search(["--runs-dir", str(tmp_path), "--resume"]) == 2
    assert capsys.readouterr().err.strip() == (f"error: --resume needs the --name of the search to continue "
                                               f"(in {tmp_path}: old)")


def test_readme_commands_name_files_that_exist():
    readme = (ROOT / "README.md").read_text()
    assert "accelerate launch -q --config_file launch/default.yaml distributed/train.py" in readme
    for path in set(re.findall(r"launch/[\w.-]+\.(?:yaml|sh|sbatch|md)", readme)):
        assert (ROOT / path).exists(), path
