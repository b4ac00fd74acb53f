"""A failing run ends: promptly, non-zero, with one line saying what happened, what is kept and how
to continue; with loader workers on and under the launchers, as users run it.

Before the fix a run with loader workers that raised anything (a diverged loss, a full or read-only
disk) printed its traceback and then never exited: multiprocessing's exit handler sent each loader
worker one SIGTERM, which the workers outlive on purpose (preemption), and waited for them forever.

The disk tests mount a real tmpfs (small, or read-only) where the machine allows it (root, as in
CI), else they use a patched writer that fails like a full disk (tests/fault_helpers).
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from distributed import rundir

ROOT = Path(__file__).resolve().parent.parent
TRAIN = str(ROOT / "distributed" / "train.py")
# Loader workers on (1 per process): the path that hung. ~2 s an epoch on a 2-core CPU.
FLAGS = ["--subset", "80", "--val-size", "20", "--test-subset", "20", "--batch-size", "20",
         "--eval-batch-size", "20", "--num-workers", "1", "--max-lr", "0.01", "--scheduler", "step", "--no-download",
         "--no-report"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
# A failing run must end within this; it used to hang until killed.
ENDS_WITHIN = 240


def _as_typed(path) -> str:
    """A file as a printed command names it: relative to the working directory when inside it."""
    rel = os.path.relpath(path, os.getcwd())
    return str(path) if rel.startswith("..") else rel


# What the line saying how to continue repeats: this interpreter (not a bare `python`) and the script.
PY_TRAIN = f"{_as_typed(sys.executable)} {_as_typed(TRAIN)}"


def _run(cmd, env=None, timeout=ENDS_WITHIN, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(list(map(str, cmd)), capture_output=True, text=True, env={**ENV, **(env or {})},
                          timeout=timeout, **kw)


def _error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.strip()]


# ----------------------------------------------------------------------------- a diverged run
@pytest.mark.parametrize("launcher", ["python", "accelerate"])
def test_a_diverging_run_with_loader_workers_ends_with_one_line(fake_cifar, tmp_path, launcher):
    front = ([sys.executable] if launcher == "python" else
             [Path(sys.executable).parent / "accelerate", "launch", "-q", "--config_file",
              ROOT / "launch" / "default.yaml"])
    started = time.time()
    r = _run([*front, TRAIN, "--name", "nan", "--runs-dir", tmp_path, "--data-dir", fake_cifar, *FLAGS,
              "--epochs", "3", "--max-lr", "1e30"])
    assert r.returncode == 1, r.stderr[-3000:]
    assert time.time() - started < ENDS_WITHIN
    lines = _error_lines(r.stderr)
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert lines[0].startswith("error: training diverged: the loss became nan in epoch 1 at max_lr 1e+30; "
                               "nothing was written"), lines[0]
    assert "start a new --name with a lower --max-lr" in lines[0]
    assert not (tmp_path / "nan").exists()
    # No loader worker outlives the run.
    assert not [p for p in psutil.process_iter(["cmdline"]) if str(tmp_path) in " ".join(p.info["cmdline"] or [])]


def test_debug_shows_the_traceback_before_the_line(fake_cifar, tmp_path):
    r = _run([sys.executable, TRAIN, "--name", "nan", "--runs-dir", tmp_path, "--data-dir", fake_cifar, *FLAGS,
              "--epochs", "1", "--max-lr", "1e30", "--debug"])
    assert r.returncode == 1
    assert "Traceback" in r.stderr and "NonFiniteLossError" in r.stderr
    assert _error_lines(r.stderr)[-1].startswith("error: training diverged")


# ----------------------------------------------------------------------------- disks that refuse
def _mount_tmpfs(where: Path, *options: str) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(("size=200m", *options)), "tmpfs", str(where)],
                          capture_output=True).returncode == 0


@pytest.fixture
def small_disk(tmp_path):
    """A 200 MB disk: room for the pre-flight's ~180 MB (a checkpoint and two weights files), not for
    a second checkpoint beside the first. Real (tmpfs) where it can be mounted, else None."""
    mnt = tmp_path / "disk"
    if not _mount_tmpfs(mnt):
        yield None
        return
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _remount(mnt: Path, *options: str) -> None:
    subprocess.run(["mount", "-o", ",".join(("remount", *options)), str(mnt)], check=True)


def test_a_full_disk_mid_run_ends_with_one_line_keeps_the_checkpoint_and_resume_finishes(fake_cifar, tmp_path,
                                                                                        small_disk):
    if small_disk is not None:
        runs, env = small_disk / "runs", {}
    else:  # no tmpfs here: the writer fails like a full disk from the second checkpoint on
        runs = tmp_path / "runs"
        env = {"PYTHONPATH": str(ROOT / "tests" / "fault_helpers"), "FAULT_FULL_DISK_AFTER_CHECKPOINTS": "1"}
    cmd = [sys.executable, TRAIN, "--name", "full", "--runs-dir", runs, "--data-dir", fake_cifar, *FLAGS, "--epochs", "3"]
    r = _run(cmd, env=env)
    assert r.returncode == 1, r.stderr[-3000:]
    lines = _error_lines(r.stderr)
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    run = runs / "full"
    assert lines[0].startswith(f"error: cannot write {run}/"), lines[0]
    assert lines[0].endswith(f"no space left on device; the checkpoint of epoch 1 is intact; free space on that "
                             f"disk (or choose another --runs-dir), then continue with: {PY_TRAIN} "
                             f"--name full --runs-dir {runs} --resume"), lines[0]
    # Nothing half-written is left to take the space: the previous checkpoint, no temporaries.
    assert [p.name for p in rundir.checkpoint_dirs(run)] == ["epoch_0001"]
    assert not list(run.rglob(".tmp.*"))
    if small_disk is not None:
        _remount(small_disk, "size=400m")  # the user frees space
    else:
        env = {}
    r = _run([*cmd, "--resume"], env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert [m["epoch"] for m in rundir.read_metrics(run)] == [1, 2, 3]
    assert json.loads((run / "summary.json").read_text())["test_acc"] is not None


def test_a_read_only_runs_folder_is_refused_before_training(fake_cifar, tmp_path, small_disk):
    if small_disk is None:
        pytest.skip("cannot mount a tmpfs here (needs root): the read-only case needs a real read-only disk")
    _remount(small_disk, "ro")
    r = _run([sys.executable, TRAIN, "--name", "ro", "--runs-dir", small_disk / "runs", "--data-dir", fake_cifar,
              *FLAGS, "--epochs", "1"])
    assert r.returncode == 1
    assert _error_lines(r.stderr) == [
        f"error: cannot write {small_disk}/runs/ro: read-only file system; nothing was written (a run directory "
        f"appears when its first epoch ends); make that folder writable (or choose another --runs-dir), then run "
        f"the same command again to start over"]
    assert "epoch   1" not in r.stdout  # refused before any training


def test_a_disk_that_turns_read_only_mid_run_ends_with_one_line(fake_cifar, small_disk):
    if small_disk is None:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    run = small_disk / "runs" / "rofs"
    proc = subprocess.Popen([sys.executable, TRAIN, "--name", "rofs", "--runs-dir", str(small_disk / "runs"),
                             "--data-dir", str(fake_cifar), *FLAGS, "--epochs", "4"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        deadline = time.time() + ENDS_WITHIN
        while not rundir.checkpoint_dirs(run) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        _remount(small_disk, "ro")
        _, err = proc.communicate(timeout=ENDS_WITHIN)
    finally:
        proc.kill()
    assert proc.returncode == 1, err[-3000:]
    lines = _error_lines(err)
    assert len(lines) == 1 and "read-only file system; the checkpoint of epoch" in lines[0], err[-3000:]
    assert "make that folder writable" in lines[0] and lines[0].endswith("--resume")
    assert rundir.checkpoint_dirs(run)


def test_a_search_on_a_read_only_runs_folder_is_refused_before_ray_starts(fake_cifar, small_disk):
    if small_disk is None:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    _remount(small_disk, "ro")
    r = _run([sys.executable, str(ROOT / "tuning" / "search.py"), "--name", "ro", "--runs-dir", small_disk / "runs",
              "--data-dir", fake_cifar, "--num-samples", "1", "--epochs", "1", "--grace-period", "1", *FLAGS])
    assert r.returncode == 1, r.stderr[-2000:]
    assert _error_lines(r.stderr)[-1] == (
        f"error: cannot write {small_disk}/runs/search-ro: read-only file system; nothing was started; make that "
        f"folder writable (or choose another --runs-dir)")
    assert "Traceback" not in r.stderr and "ray" not in r.stdout.lower()  # refused before Ray started


@pytest.mark.parametrize("command", ["train", "search"])
def test_an_unwritable_report_folder_is_refused_before_training(fake_cifar, tmp_path, small_disk, command):
    """The report is built at the end: a report folder it cannot write is said at the start, not after
    the run (before, the run trained and then ended on "report failed")."""
    if small_disk is None:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    _remount(small_disk, "ro")
    script = TRAIN if command == "train" else str(ROOT / "tuning" / "search.py")
    flags = [f for f in FLAGS if f != "--no-report"]
    r = _run([sys.executable, script, "--name", "x", "--runs-dir", tmp_path / "runs", "--data-dir", fake_cifar,
              *flags, "--epochs", "1", "--report-dir", small_disk / "reports"])
    assert r.returncode == 2, r.stderr[-2000:]
    assert _error_lines(r.stderr) == [
        f"error: cannot write {small_disk}/reports: read-only file system (the report is built there at the end); "
        f"make that folder writable, or choose another --report-dir, or pass --no-report"]
    assert not (tmp_path / "runs").exists()  # nothing trained, nothing written


def test_too_little_free_space_is_refused_before_training(fake_cifar, tmp_path):
    mnt = tmp_path / "tiny"
    if not _mount_tmpfs(mnt, "size=50m"):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        r = _run([sys.executable, TRAIN, "--name", "x", "--runs-dir", mnt / "runs", "--data-dir", fake_cifar,
                  *FLAGS, "--epochs", "1"])
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
    assert r.returncode == 1
    (line,) = _error_lines(r.stderr)
    assert line.startswith(f"error: cannot write {mnt}/runs/x: only 52 MB free on its disk, and a run needs about "
                           f"179 MB (a checkpoint and its weights); nothing was written"), line


# ----------------------------------------------------------------------------- a dead loader worker
def _loader_workers(trainer: psutil.Process) -> list[psutil.Process]:
    return [c for c in trainer.children() if "train.py" in " ".join(c.cmdline())]


def _kill_a_worker_in_epoch_2(cmd, run: Path, trainer_of) -> subprocess.CompletedProcess:
    proc = subprocess.Popen(list(map(str, cmd)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
                            start_new_session=True)
    try:
        deadline = time.time() + ENDS_WITHIN
        while not rundir.checkpoint_dirs(run) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        trainer = trainer_of(psutil.Process(proc.pid))
        workers = []
        while not workers and proc.poll() is None and time.time() < deadline:
            workers = _loader_workers(trainer)
        workers[0].kill()  # what the kernel's OOM killer does
        started = time.time()
        out, err = proc.communicate(timeout=ENDS_WITHIN)
        assert time.time() - started < ENDS_WITHIN
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def test_a_loader_worker_killed_for_memory_ends_the_run_with_one_line(fake_cifar, tmp_path):
    run = tmp_path / "oom"
    cmd = [sys.executable, TRAIN, "--name", "oom", "--runs-dir", tmp_path, "--data-dir", fake_cifar, *FLAGS,
           "--epochs", "30"]
    r = _kill_a_worker_in_epoch_2(cmd, run, lambda launcher: launcher)
    assert r.returncode == 1, r.stderr[-3000:]
    (line,) = _error_lines(r.stderr)
    # torch words it "(pid N) is killed by signal: Killed" or, when the loader notices first, "(pid(s) N) exited
    # unexpectedly": the same failure either way.
    assert line.startswith(("error: a data loader worker died (DataLoader worker (pid ",
                            "error: a data loader worker died (DataLoader worker (pid(s) ")), line
    assert "lower --num-workers or free memory" in line
    assert "is intact; " in line and line.endswith(f"--name oom --runs-dir {tmp_path} --resume")
    assert rundir.checkpoint_dirs(run)


def test_one_failing_rank_of_a_torchrun_job_ends_the_whole_job(fake_cifar, tmp_path):
    """Rank 1 loses its loader worker; rank 0 must not wait for it forever in a collective."""
    run = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29741", TRAIN,
           "--name", "ddp", "--runs-dir", tmp_path, "--data-dir", fake_cifar, *FLAGS, "--epochs", "30"]

    def rank_1(launcher: psutil.Process) -> psutil.Process:
        return next(c for c in launcher.children() if c.environ().get("RANK") == "1")

    ENV["ACCELERATE_USE_CPU"] = "true"
    try:
        r = _kill_a_worker_in_epoch_2(cmd, run, rank_1)
    finally:
        del ENV["ACCELERATE_USE_CPU"]
    assert r.returncode != 0
    mine = [ln for ln in r.stderr.splitlines() if ln.startswith("rank 1: error: a data loader worker died")]
    assert len(mine) == 1, r.stderr[-3000:]
    # Rank 0 says why it stopped too (its peer went away, or torchrun's SIGTERM), never "unexpected".
    assert "error: unexpected" not in r.stderr, r.stderr[-3000:]
    assert rundir.checkpoint_dirs(run) and not (run / "summary.json").exists()
