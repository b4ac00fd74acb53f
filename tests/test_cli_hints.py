"""Issue 21: every command the project prints works when pasted (it repeats the interpreter or
launcher actually used); a search that can never place a trial stops at start (the test of the
command itself is in test_search.py, on that module's Ray); a mistyped flag gets "did you mean";
too small a split is refused; a failed download leaves no trace."""
from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from distributed import rundir
from distributed.config import ConfigError, TrainConfig

ROOT = Path(__file__).resolve().parent.parent
TRAIN = ROOT / "distributed" / "train.py"
# As tests/test_failures.py: ~2 s an epoch on a 2-core CPU, loader workers off.
FLAGS = ["--subset", "80", "--val-size", "20", "--test-subset", "20", "--batch-size", "20", "--eval-batch-size", "20",
         "--num-workers", "0", "--max-lr", "0.01", "--scheduler", "step", "--no-download", "--no-report"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}


def _as_typed(path: str | Path) -> str:
    """How a printed command names a file: relative to the working directory (ROOT here) when inside it."""
    rel = os.path.relpath(path, ROOT)
    return str(path) if rel.startswith("..") else rel


# ----------------------------------------------------------------------------- what a printed command repeats
@pytest.fixture
def launch(monkeypatch, tmp_path):
    """Pretend this process was started by a given parent command line, from ROOT, with a bin
    folder (not on PATH unless asked) holding an interpreter and #! scripts."""
    from cifar_lab import cli

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    python = bin_dir / "python3"
    python.write_text("")
    for name in ("accelerate", "torchrun", "cifar-train", "cifar-report"):
        (bin_dir / name).write_text(f"#!{python}\n# -*- coding: utf-8 -*-\n")
        (bin_dir / name).chmod(0o755)
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    for var in ("WORLD_SIZE", "LOCAL_WORLD_SIZE", "ACCELERATE_USE_CPU", cli.LAUNCHER_ENV):
        monkeypatch.delenv(var, raising=False)

    def start(parent: list[str] | None, argv0: str | Path = TRAIN) -> None:
        monkeypatch.setattr(sys, "argv", [str(argv0), "--name", "x"])
        monkeypatch.setattr(cli, "_parent_argv", lambda: None if parent is None else ([str(a) for a in parent],
                                                                                       str(ROOT)))
    start.bin = bin_dir
    start.python = python
    return start


def test_a_plain_run_repeats_its_interpreter(launch):
    from cifar_lab import cli

    launch(["-bash"])
    assert cli.command_prefix("train") == f"{_as_typed(sys.executable)} distributed/train.py"
    assert cli.command_prefix("report") == f"{_as_typed(sys.executable)} reporting/build.py"
    cfg = TrainConfig(name="r1", runs_dir="/tmp/my runs")
    assert cli._resume_command(cfg) == (f"{_as_typed(sys.executable)} distributed/train.py --name r1 "
                                        f"--runs-dir '/tmp/my runs' --resume")


def test_accelerate_launch_is_repeated_with_its_flags_and_by_name_when_path_finds_it(launch, monkeypatch):
    from cifar_lab import cli

    parent = [launch.python, launch.bin / "accelerate", "launch", "-q", "--config_file", "launch/default.yaml",
              "distributed/train.py", "--name", "x", "--epochs", "3"]
    launch(parent, argv0="distributed/train.py")
    # The kernel put the #! interpreter in front of `accelerate`: not shown. Not on PATH: its path.
    assert cli.command_prefix("train") == (f"{launch.bin}/accelerate launch -q --config_file launch/default.yaml "
                                           f"distributed/train.py")
    monkeypatch.setenv("PATH", f"{launch.bin}:/usr/bin:/bin")  # an activated venv
    assert cli.command_prefix("train") == "accelerate launch -q --config_file launch/default.yaml distributed/train.py"
    # A report is rebuilt without the launcher.
    assert cli.command_prefix("report") == f"{_as_typed(sys.executable)} reporting/build.py"


def test_torchrun_over_cpus_keeps_accelerate_use_cpu_and_cpu_ddp_sh_names_itself(launch, monkeypatch):
    from cifar_lab import cli

    launch([launch.python, "-m", "torch.distributed.run", "--nproc-per-node", "2", TRAIN, "--name", "x"])
    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert cli.command_prefix("train") == (f"ACCELERATE_USE_CPU=true {launch.python} -m torch.distributed.run "
                                           f"--nproc-per-node 2 distributed/train.py")
    monkeypatch.setenv(cli.LAUNCHER_ENV, "bash launch/cpu_ddp.sh 2")
    assert cli._resume_command(TrainConfig(name="d")) == "bash launch/cpu_ddp.sh 2 --name d --resume"


def test_a_launch_over_several_nodes_names_the_script_and_says_every_node(launch, monkeypatch):
    from cifar_lab import cli

    launch([launch.python, launch.bin / "accelerate", "launch", "--machine_rank", "0", TRAIN])
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert cli._resume_command(TrainConfig(name="big")) == ("distributed/train.py --name big --resume, under the "
                                                            "same launcher on every node")


def test_console_scripts_are_repeated_by_name(launch, monkeypatch):
    from cifar_lab import cli

    launch(["-bash"], argv0=launch.bin / "cifar-train")
    assert cli.command_prefix("train") == f"{launch.bin}/cifar-train"
    monkeypatch.setenv("PATH", f"{launch.bin}:/usr/bin:/bin")
    assert cli.command_prefix("train") == "cifar-train"
    assert cli.command_prefix("report") == "cifar-report"


def test_a_failed_report_says_how_to_rebuild_it_with_this_interpreter(launch, monkeypatch, capsys):
    from types import SimpleNamespace

    import reporting.report
    from cifar_lab import cli

    def broken(run_dir, report_dir):
        raise RuntimeError("disk on fire")

    launch(["-bash"])
    monkeypatch.setattr(reporting.report, "build_report", broken)
    assert cli.finish_run("runs/my run", SimpleNamespace(report=True, report_dir="reports")) == 1
    assert capsys.readouterr().err.strip() == (
        f"report failed (RuntimeError: disk on fire); the run is complete, rebuild it with "
        f"`{_as_typed(sys.executable)} reporting/build.py 'runs/my run' --out reports`")


def test_the_printed_resume_command_under_accelerate_launch_works_when_pasted(fake_cifar, tmp_path):
    """SIGTERM in epoch 2 of a run under `accelerate launch` (Kubernetes' preemption): the line names
    the launcher with its flags, and that very line, pasted into a shell without the venv on PATH,
    finishes the run. With a loader worker: the launcher passes SIGTERM to every process below it."""
    accelerate = Path(sys.executable).parent / "accelerate"
    env = {**ENV, "PATH": "/usr/bin:/bin"}  # the venv not activated
    cmd = [accelerate, "launch", "-q", "--config_file", ROOT / "launch" / "default.yaml", TRAIN, "--name", "paste",
           "--runs-dir", tmp_path, "--data-dir", fake_cifar, *FLAGS, "--epochs", "3", "--num-workers", "1"]
    # Steps after the first checkpoint take 0.5 s: the run is still in epoch 2 when the signal comes.
    slowed = {**env, "PYTHONPATH": str(ROOT / "tests" / "fault_helpers"), "FAULT_SLOW_STEPS_AFTER_CHECKPOINTS": "1"}
    proc = subprocess.Popen(list(map(str, cmd)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=slowed, cwd=ROOT, start_new_session=True)
    run = tmp_path / "paste"
    try:
        deadline = time.time() + 300
        while not rundir.checkpoint_dirs(run) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    lines = [ln for ln in err.splitlines() if ln.startswith("stopped by SIGTERM")]
    assert len(lines) == 1, f"exit {proc.returncode}, epochs done {[m['epoch'] for m in rundir.read_metrics(run)]}:\n{err[-3000:]}"
    (line,) = lines
    assert line.startswith("stopped by SIGTERM in epoch 2, nothing half-written (newest checkpoint: epoch 1)"), line
    printed = line.split("continue with: ", 1)[1]
    assert printed == (f"{shlex.quote(_as_typed(accelerate))} launch -q --config_file "
                       f"{ROOT / 'launch' / 'default.yaml'} distributed/train.py --name paste --runs-dir {tmp_path} "
                       f"--resume"), line
    r = subprocess.run(printed, shell=True, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed" in r.stdout and [m["epoch"] for m in rundir.read_metrics(run)] == [1, 2, 3]


def test_cpu_ddp_sh_finds_the_projects_torchrun_or_says_what_to_do(tmp_path):
    """Without the venv on PATH, launch/cpu_ddp.sh uses the torchrun of the repository's .venv; a copy
    of the script in a tree without one, and no torchrun on PATH, says so in one line."""
    env = {**ENV, "PATH": "/usr/bin:/bin"}
    if (ROOT / ".venv" / "bin" / "torchrun").exists():
        r = subprocess.run(["bash", "launch/cpu_ddp.sh", "2", "--epoch", "2"], capture_output=True, text=True,
                           env=env, cwd=ROOT, timeout=300)
        # torchrun started both ranks: each refuses the mistyped flag (not `torchrun: not found`, 127).
        assert "exec: torchrun: not found" not in r.stderr and r.returncode != 127, r.stderr[-3000:]
        assert "error: unrecognized arguments: --epoch 2 (did you mean --epochs?)" in r.stderr, r.stderr[-3000:]
    (tmp_path / "launch").mkdir()
    (tmp_path / "launch" / "cpu_ddp.sh").write_text((ROOT / "launch" / "cpu_ddp.sh").read_text())
    if subprocess.run(["bash", "-c", "command -v torchrun"], env=env).returncode == 0:
        pytest.skip("a torchrun on /usr/bin:/bin")
    r = subprocess.run(["bash", "launch/cpu_ddp.sh", "2"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 127
    assert r.stderr.strip() == (f"error: torchrun is neither in {tmp_path}/.venv/bin nor on PATH; install the project "
                                f"into that venv (python3 -m venv .venv && .venv/bin/pip install -e .) or activate "
                                f"the venv that has it")


# ----------------------------------------------------------------------------- a search that cannot start
ONE_NODE = [{"CPU": 2.0, "memory": 1e9}]


def _search(**kw):
    from tuning.config import SearchConfig

    return SearchConfig(name="s", **kw)


def test_a_trial_no_node_can_hold_is_refused_naming_ask_and_have():
    from tuning.runner import check_resources

    with pytest.raises(ConfigError) as e:
        check_resources(_search(gpus_per_trial=0.25), ONE_NODE)
    assert str(e.value) == ("each trial asks for 1 CPU and 0.25 GPUs, but this machine's Ray has 2 CPUs and 0 GPUs: no "
                            "trial could ever start; use --gpus-per-trial 0 (trials on the CPU), or join a larger "
                            "cluster with --address")
    with pytest.raises(ConfigError, match="asks for 4 CPUs, but this machine's Ray has 2 CPUs and 0 GPUs: .* use a "
                                          "lower --cpus-per-trial or a higher --num-cpus"):
        check_resources(_search(gpus_per_trial=0.0, cpus_per_trial=4, num_cpus=2), ONE_NODE)
    # DDP trials: three workers of one CPU fit two 2-CPU nodes, but not one per node on two nodes.
    two = ONE_NODE * 2
    check_resources(_search(gpus_per_trial=0.0, workers_per_trial=3), two)
    with pytest.raises(ConfigError, match=r"asks for 3 workers of 1 CPU each \(STRICT_SPREAD\), but this machine's "
                                          r"Ray has 4 CPUs and 0 GPUs on 2 nodes, the largest 2 CPUs and 0 GPUs"):
        check_resources(_search(gpus_per_trial=0.0, workers_per_trial=3, placement_strategy="STRICT_SPREAD"), two)
    check_resources(_search(gpus_per_trial=1.0), [{"CPU": 8.0, "GPU": 1.0}])  # fits: nothing said


def test_a_cluster_that_may_grow_is_waited_for_with_a_line(capsys):
    from tuning.runner import check_resources

    check_resources(_search(gpus_per_trial=1.0, address="head:6379"), ONE_NODE)
    assert capsys.readouterr().err.strip() == (
        "search: each trial asks for 1 CPU and 1 GPU; the Ray cluster at head:6379 has 2 CPUs and 0 GPUs for now: "
        "waiting for nodes to join (autoscaler, `ray start --address ...`); Ctrl-C stops")


# ----------------------------------------------------------------------------- flags and values
@pytest.mark.parametrize("which, argv, expected", [
    ("train", ["--epoch", "2"], "--epoch 2 (did you mean --epochs?)"),
    ("train", ["--max-lr", "0.1", "--val_size=10"], "--val_size=10 (did you mean --val-size?)"),
    ("search", ["--num-sample", "2"], "--num-sample 2 (did you mean --num-samples?)"),
    ("report", ["runs/x", "--ou", "y"], "--ou y (did you mean --out?)"),
    ("train", ["--zzzz", "1"], "--zzzz 1"),  # nothing close: no guess
])
def test_a_mistyped_flag_gets_the_closest_one(which, argv, expected, capsys):
    from cifar_lab import cli

    parser = {"train": cli.train_parser, "search": cli.search_parser, "report": cli.report_parser}[which]()
    with pytest.raises(SystemExit) as e:
        parser.parse_args(argv)
    assert e.value.code == 2
    assert capsys.readouterr().err.strip() == f"error: unrecognized arguments: {expected}"


@pytest.mark.parametrize("flag, zero", [("--val-size", "0: no validation"), ("--test-subset", "0: all 10,000")])
def test_a_split_with_fewer_images_than_classes_is_refused(tmp_path, capsys, flag, zero):
    from cifar_lab import cli

    assert cli.train(["--runs-dir", str(tmp_path), "--data-dir", str(tmp_path / "nodata"), flag, "5"]) == 2
    assert capsys.readouterr().err.strip() == (f"error: invalid {flag} 5: a stratified split needs at least one image "
                                               f"of each of the 10 classes: give >= 10 ({zero})")
    assert not any(tmp_path.iterdir())
    TrainConfig(val_size=10, test_subset=10)  # one of each class is enough


def test_a_failed_download_leaves_no_trace(tmp_path, monkeypatch):
    """Whatever the failed attempt created goes (folders, the lock file, a partial archive); what was
    there before stays."""
    import torchvision.datasets

    from distributed.data import DataError, load_cifar10

    def unreachable(root, train=True, download=False):
        (Path(root) / "cifar-10-python.tar.gz").write_bytes(b"\x1f\x8b partial")
        raise OSError("[Errno 101] Network is unreachable")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", unreachable)
    with pytest.raises(DataError, match="downloading it failed"):
        load_cifar10(tmp_path / "new" / "data")
    assert not any(tmp_path.iterdir())

    kept = tmp_path / "mine"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    with pytest.raises(DataError):
        load_cifar10(kept)
    assert [p.name for p in kept.iterdir()] == ["notes.txt"]
