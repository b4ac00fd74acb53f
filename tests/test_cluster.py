"""Scaling out, proven on one machine: several "nodes" on localhost (CPU, gloo).

DDP: two torchrun node launches with node-local data folders; launch/slurm.sbatch (two
`accelerate launch` node launches with launch/multi_node.yaml) under stand-ins for srun and
scontrol, requeued on its warning signal; an elastic restart after kill -9 of one rank; SIGTERM to
one rank. The runs are tiny (40 training images, 3 epochs of 4 steps) and deterministic, so every
launch must end bit-identical to the first one.

Every process uses one thread; ports come from 29730-29739 (torchrun) and 46310-46799 (Ray).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import psutil
import pytest
from safetensors.numpy import load_file

from distributed import rundir
from metrics_compare import comparable

ROOT = Path(__file__).resolve().parent.parent
TRAIN = str(ROOT / "distributed" / "train.py")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
# 30 test and 20 validation images in global batches of 8 (4 per rank): uneven last batches,
# which DDP pads and gather_for_metrics must drop again.
FLAGS = ["--subset", "60", "--val-size", "20", "--test-subset", "30", "--epochs", "3", "--batch-size", "10",
         "--eval-batch-size", "8", "--num-workers", "1", "--deterministic", "--max-lr", "0.05", "--no-report"]
ENV = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
HELPERS = ROOT / "tests" / "cluster_helpers"  # sitecustomize.py there stands in for the CIFAR-10 download
# Steps 1 s slower after a process's first checkpoint (tests/fault_helpers/slow_steps.py): a run
# signalled half a second after it is still in epoch 2, however fast the machine (a tiny epoch
# here is 2 steps a rank; on a fast machine epochs 2 and 3 were over within that half second).
SLOW_AFTER_EPOCH_1 = {"FAULT_SLOW_STEPS_AFTER_CHECKPOINTS": "1", "FAULT_STEP_SECONDS": "1"}
FAULTS = ROOT / "tests" / "fault_helpers"


def _download_env(source: Path, log: Path) -> dict[str, str]:
    return {**ENV, "PYTHONPATH": str(HELPERS), "FAKE_CIFAR_SOURCE": str(source), "FAKE_CIFAR_LOG": str(log)}


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert proc.poll() is None, "the launch ended before the awaited moment"
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


def _worker(launcher: subprocess.Popen, rank: int) -> psutil.Process:
    """The training process of `rank` among the launcher's children (torchrun's workers)."""
    for child in psutil.Process(launcher.pid).children(recursive=True):
        try:
            env = child.environ()
        except psutil.Error:
            continue
        if env.get("RANK") == str(rank) and "TORCHELASTIC_RESTART_COUNT" in env:
            return child
    raise AssertionError(f"no worker with RANK={rank}")


def _end_group(proc: subprocess.Popen) -> None:
    """Kill what is left of a launch started in its own session, its descendants included (torchrun
    starts each worker in a session of its own): a failed test must not leave processes behind."""
    try:
        procs = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        procs = []
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=30)
    proc.wait()


def _no_temp_files(run: Path) -> bool:
    return not [p for p in run.rglob("*") if p.name.startswith(".tmp")]


def _assert_same_run(run: Path, reference: Path) -> None:
    """Bit-identical weights and the same per-epoch metrics and test result as `reference`."""
    assert comparable(rundir.read_metrics(run)) == comparable(rundir.read_metrics(reference))
    for name in (rundir.FINAL_WEIGHTS, rundir.BEST_WEIGHTS):
        a, b = load_file(str(run / name)), load_file(str(reference / name))
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a), name
    sa, sb = rundir.read_json(run / rundir.SUMMARY), rundir.read_json(reference / rundir.SUMMARY)
    assert (sa["test_acc"], sa["test_count"], sa["ranks_in_sync"]) == (sb["test_acc"], sb["test_count"], True)


# ----------------------------------------------------------------------------- multi-node DDP
@pytest.fixture(scope="module")
def two_node_run(fake_cifar, tmp_path_factory):
    """Two torchrun node launches as the README gives them, one process each, in two working
    directories: the same `--data-dir data` is a different, empty folder on each "node" (no shared
    disk for data), the run directory is shared. Uninterrupted: the reference for the other runs."""
    base = tmp_path_factory.mktemp("two-nodes")
    runs, log = base / "runs", base / "downloads.log"
    procs = []
    for node in (0, 1):
        (base / f"node{node}").mkdir()
        cmd = [*TORCHRUN, "--nnodes", "2", "--node-rank", str(node), "--nproc-per-node", "1",
               "--master-addr", "127.0.0.1", "--master-port", "29731", TRAIN,
               "--name", "mn", "--runs-dir", str(runs), "--data-dir", "data", "--resume", *FLAGS]
        procs.append(subprocess.Popen(cmd, cwd=base / f"node{node}", stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True, env=_download_env(fake_cifar, log), start_new_session=True))
    try:
        outs = [p.communicate(timeout=600)[0] for p in procs]
    finally:
        for p in procs:
            _end_group(p)
    return SimpleNamespace(base=base, runs=runs, run=runs / "mn", log=log, outs=outs,
                           rcs=[p.returncode for p in procs])


def test_two_node_torchrun_trains_one_run_with_data_downloaded_once_per_node(two_node_run):
    r = two_node_run
    assert r.rcs == [0, 0], "\n".join(o[-3000:] for o in r.outs)
    # One run directory, written once: by the main process, complete, nothing left half-written.
    assert [p.name for p in r.runs.iterdir()] == ["mn"]
    assert {p.name for p in r.run.iterdir()} == {"config.json", "metrics.jsonl", "checkpoints", "best.safetensors",
                                                 "model.safetensors", "predictions.npz", "summary.json", "steps.jsonl"}
    assert _no_temp_files(r.run)
    summary = rundir.read_json(r.run / rundir.SUMMARY)
    assert summary["world_size"] == 2 and summary["ranks_in_sync"] is True
    assert [row["epoch"] for row in rundir.read_metrics(r.run)] == [1, 2, 3]
    # Every test image counted once over the two nodes (uneven batches padded by DDP, then dropped).
    pred = rundir.load_predictions(r.run)
    assert summary["test_count"] == 30 and sorted(pred["indices"].tolist()) == sorted(set(pred["indices"].tolist()))
    assert len(pred["indices"]) == 30
    # Only the main process logs: one line per epoch over both node launches.
    both = r.outs[0] + r.outs[1]
    assert both.count("epoch   3/3") == 1 and both.count("test accuracy") == 1
    # Data: each node's first process downloaded into its own folder, once; node 0 first.
    downloads = r.log.read_text().splitlines()
    assert downloads == [f"0 {(r.base / 'node0' / 'data').resolve()}", f"1 {(r.base / 'node1' / 'data').resolve()}"]
    for node in (0, 1):  # and nothing else landed in a node's working directory but its data
        assert sorted(p.name for p in (r.base / f"node{node}").iterdir()) == ["data"]
        assert (r.base / f"node{node}" / "data" / "cifar10_stats.json").exists()


def test_node_local_data_is_downloaded_once_per_node_before_any_of_its_processes_reads_it(fake_cifar, tmp_path):
    """Two nodes of two processes, each node with its own empty `data` folder, loading as
    build_pipeline does. The stand-in download writes test_batch first, then the rest slowly: a
    process that read before its node's download ended would find half a folder (what
    `main_process_first` alone allows the second process of node 1)."""
    log, procs = tmp_path / "downloads.log", []
    for node in (0, 1):
        (tmp_path / f"node{node}").mkdir()
        cmd = [*TORCHRUN, "--nnodes", "2", "--node-rank", str(node), "--nproc-per-node", "2", "--master-addr",
               "127.0.0.1", "--master-port", "29735", str(HELPERS / "load_data.py")]
        procs.append(subprocess.Popen(cmd, cwd=tmp_path / f"node{node}", stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True, env=_download_env(fake_cifar, log),
                                      start_new_session=True))
    try:
        outs = [p.communicate(timeout=300)[0] for p in procs]
    finally:
        for p in procs:
            _end_group(p)
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-3000:] for o in outs)
    loaded = sorted(ln for o in outs for ln in o.splitlines() if ln.startswith("rank "))
    assert loaded == [f"rank {r}: 500 training images" for r in range(4)]
    # Ranks 0-1 are node 0, ranks 2-3 node 1: the first process of each node downloaded, once.
    assert log.read_text().splitlines() == [f"0 {(tmp_path / 'node0' / 'data').resolve()}",
                                            f"2 {(tmp_path / 'node1' / 'data').resolve()}"]


# ----------------------------------------------------------------------------- SLURM: accelerate multi-node, requeue
def _fake_slurm(bin_dir: Path, log: Path) -> None:
    """srun and scontrol for one machine: srun runs its command once per "node" (SLURM_NODEID),
    `scontrol requeue` logs the request and signals the job (its process group) with SIGTERM, as
    slurmctld does to a job it requeues or preempts."""
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(
        "#!/bin/bash\nwhile [[ $1 == --* ]]; do shift; done\npids=()\n"
        "for ((i = 0; i < SLURM_NNODES; i++)); do SLURM_NODEID=$i \"$@\" & pids+=($!); done\n"
        "rc=0; for p in \"${pids[@]}\"; do wait $p || rc=$?; done; exit $rc\n")
    (bin_dir / "scontrol").write_text(
        "#!/bin/bash\n"
        "case $1 in\n"
        "  show) for ((i = 0; i < SLURM_NNODES; i++)); do echo 127.0.0.1; done ;;\n"
        f"  requeue) echo \"requeue $2\" >> {log}; trap '' TERM; kill -TERM -- -$(ps -o pgid= $$ | tr -d ' ') ;;\n"
        "esac\n")
    for name in ("srun", "scontrol"):
        (bin_dir / name).chmod(0o755)


def _sbatch(bin_dir: Path, env: dict[str, str], out: Path) -> subprocess.Popen:
    env = {**env, "PATH": f"{bin_dir}:{env['PATH']}", "SLURM_SUBMIT_DIR": str(ROOT), "SLURM_JOB_ID": "4242",
           "SLURM_NNODES": "2", "SLURM_GPUS_PER_NODE": "1", "SLURM_JOB_NODELIST": "node[0-1]", "MAIN_PORT": "29732"}
    return subprocess.Popen(["bash", str(ROOT / "launch" / "slurm.sbatch"), *env.pop("TRAIN_FLAGS").split()],
                            stdout=open(out, "a"), stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _wait_group(proc: subprocess.Popen, timeout: float = 300) -> None:
    """Wait until no process of the job's process group is left (the script may end first)."""
    proc.wait(timeout=timeout)
    deadline = time.time() + timeout
    while any(p.info["status"] != psutil.STATUS_ZOMBIE for p in psutil.process_iter(["status"])
              if _pgid(p.pid) == proc.pid):
        assert time.time() < deadline, "processes of the job are still running"
        time.sleep(0.2)


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def test_slurm_script_takes_the_first_node_of_a_long_nodelist(tmp_path):
    """`scontrol show hostnames` prints one line per node; the script takes the first without a
    pipe that can kill scontrol with SIGPIPE (under pipefail that ended a job with 141, once, in CI)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text("#!/bin/bash\nfor ((i = 0; i < 200000; i++)); do echo node$i; done\n")
    (bin_dir / "srun").write_text('#!/bin/bash\necho "$@"\n')  # show the launch line instead of running it
    for name in ("srun", "scontrol"):
        (bin_dir / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_SUBMIT_DIR": str(ROOT),
           "SLURM_JOB_ID": "7", "SLURM_NNODES": "2", "SLURM_JOB_NODELIST": "node[0-199999]"}
    for _ in range(3):
        r = subprocess.run(["bash", str(ROOT / "launch" / "slurm.sbatch")], env=env, capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 0, (r.returncode, r.stdout[-500:], r.stderr[-500:])
        assert "--main_process_ip node0 " in r.stdout, r.stdout


def test_slurm_script_requeues_on_its_warning_signal_and_the_requeued_job_resumes(two_node_run, fake_cifar, tmp_path):
    runs, data, out, log = tmp_path / "runs", tmp_path / "data", tmp_path / "slurm-4242.out", tmp_path / "slurm.log"
    _fake_slurm(tmp_path / "bin", log)
    flags = ["--runs-dir", str(runs), "--data-dir", str(data), *FLAGS]
    env = {**_download_env(fake_cifar, tmp_path / "downloads.log"), "NAME": "slurm", "TRAIN_FLAGS": " ".join(flags)}
    env.update(SLOW_AFTER_EPOCH_1, PYTHONPATH=f"{HELPERS}:{FAULTS}")
    run = runs / "slurm"

    job = _sbatch(tmp_path / "bin", env, out)
    try:
        _wait_for(lambda: rundir.checkpoint_dirs(run), job)
        time.sleep(0.5)  # into epoch 2
        os.kill(job.pid, signal.SIGUSR1)  # what --signal=B:USR1@120 sends to the batch script
        _wait_group(job)
    finally:
        _end_group(job)
    text = out.read_text()
    assert log.read_text() == "requeue 4242\n", text[-3000:]
    # Every process got SIGTERM; training stopped on every rank at the same step, said so once, and
    # left the checkpoint of epoch 1 and nothing half-written.
    stopped = [ln for ln in text.splitlines() if ln.startswith("stopped by SIGTERM")]
    assert len(stopped) == 1, text[-3000:]
    assert stopped[0].startswith("stopped by SIGTERM in epoch 2, nothing half-written (newest checkpoint: epoch 1)")
    # One command would restart one node only: the script's part, and what to run it under.
    assert stopped[0].endswith(f"continue with: distributed/train.py --name slurm --runs-dir {runs} --resume, "
                               f"under the same launcher on every node"), stopped[0]
    assert [p.name for p in rundir.checkpoint_dirs(run)] == ["epoch_0001"] and _no_temp_files(run)
    assert [r["epoch"] for r in rundir.read_metrics(run)] == [1]

    # SLURM starts the requeued job: the same script, the same command line.
    job = _sbatch(tmp_path / "bin", env, out)
    try:
        assert job.wait(timeout=600) == 0, out.read_text()[-3000:]
    finally:
        _end_group(job)
    assert "resumed" in out.read_text()
    _assert_same_run(run, two_node_run.run)
    # --data-dir shared by both nodes: downloaded once, by rank 0, over both jobs.
    assert (tmp_path / "downloads.log").read_text() == f"0 {data.resolve()}\n"


# ----------------------------------------------------------------------------- elastic restart, SIGTERM
def _interrupt_in_epoch_2(cmd: list[str], run: Path, act, timeout: float = 600) -> tuple[int, str, str]:
    """Start a training launch in its own session; half a second after its first checkpoint (so
    in epoch 2) call `act(launcher)`; return the exit code, stdout and stderr once it ended."""
    env = {**ENV, **SLOW_AFTER_EPOCH_1, "PYTHONPATH": str(FAULTS)}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        _wait_for(lambda: rundir.checkpoint_dirs(run), proc)
        time.sleep(0.5)
        act(proc)
        out, err = proc.communicate(timeout=timeout)
    finally:
        _end_group(proc)
    return proc.returncode, out, err


def _as_typed(path) -> str:
    """A file as a printed command names it: relative to the working directory when inside it."""
    rel = os.path.relpath(path, os.getcwd())
    return str(path) if rel.startswith("..") else rel


def _two_local_ranks(port: str, *extra: str) -> list[str]:
    return [*TORCHRUN, "--nnodes", "1", "--nproc-per-node", "2", *extra, "--master-addr", "127.0.0.1",
            "--master-port", port, TRAIN]


def test_elastic_restart_after_kill_9_of_one_rank_ends_bit_identical(two_node_run, fake_cifar, tmp_path):
    """torchrun --max-restarts 1: one rank killed mid-epoch 2, the group restarts by itself and
    `--resume` (which started the run) continues it."""
    cmd = [*_two_local_ranks("29733", "--max-restarts", "1"), "--name", "el", "--runs-dir", str(tmp_path),
           "--data-dir", str(fake_cifar), "--no-download", "--resume", *FLAGS]
    rc, out, err = _interrupt_in_epoch_2(cmd, tmp_path / "el", lambda launcher: _worker(launcher, 1).kill())
    assert rc == 0, err[-3000:]
    assert "exitcode: -9" in err and "resumed" in out  # it was killed and the restarted group resumed
    _assert_same_run(tmp_path / "el", two_node_run.run)


def test_sigterm_to_one_rank_stops_every_rank_at_the_same_step(fake_cifar, tmp_path):
    """Only rank 1 gets the signal; rank 0, which did not, reports the stop: the decision is collective."""
    cmd = [*_two_local_ranks("29734"), "--name", "term", "--runs-dir", str(tmp_path), "--data-dir", str(fake_cifar),
           "--no-download", *FLAGS]
    run = tmp_path / "term"
    _, _, err = _interrupt_in_epoch_2(cmd, run, lambda launcher: _worker(launcher, 1).send_signal(signal.SIGTERM))
    stopped = [ln for ln in err.splitlines() if ln.startswith("stopped by SIGTERM")]
    assert len(stopped) == 1 and "epoch 2" in stopped[0], err[-3000:]
    # The launcher as it was typed, and the CPU setting torchrun does not make itself.
    assert stopped[0].endswith(f"continue with: ACCELERATE_USE_CPU=true {_as_typed(sys.executable)} -m "
                               f"torch.distributed.run --nnodes 1 --nproc-per-node 2 --master-addr 127.0.0.1 "
                               f"--master-port 29734 {_as_typed(TRAIN)} --name term --runs-dir {tmp_path} --resume"), \
        stopped[0]
    assert "exitcode: 143" in err  # rank 1 ended by itself, with SIGTERM's exit code
    assert [p.name for p in rundir.checkpoint_dirs(run)] == ["epoch_0001"] and _no_temp_files(run)
    assert not (run / rundir.SUMMARY).exists()


def _shm_files(pids: set[int]) -> set[str]:
    """torch's shared-memory files made by these processes (torch names them torch_<pid>_...): the
    suite runs in two processes, and the other one's loaders come and go in /dev/shm meanwhile."""
    return {p.name for p in Path("/dev/shm").glob("torch_*") if p.name.split("_")[1] in {str(i) for i in pids}}


def test_sigterm_stops_a_single_process_run_with_143_and_one_line(fake_cifar, tmp_path):
    """SIGTERM to every process of the run, as SLURM sends it: DataLoader workers and torch's
    shared-memory managers too (they run in sessions of their own, so a process group's signal
    misses them). A manager that died of it made the trainer abort at its next release of a batch
    ("terminate called after throwing ... Broken pipe") and left the batches in /dev/shm."""
    cmd = [sys.executable, TRAIN, "--name", "one", "--runs-dir", str(tmp_path), "--data-dir", str(fake_cifar),
           "--no-download", *FLAGS]
    run = tmp_path / "one"
    pids: set[int] = set()

    def every_process(proc: subprocess.Popen) -> None:
        tree = psutil.Process(proc.pid).children(recursive=True)
        assert any(p.name() == "torch_shm_manager" for p in tree)  # what this test is about
        for p in [psutil.Process(proc.pid), *tree]:
            pids.add(p.pid)
            p.terminate()

    rc, _, err = _interrupt_in_epoch_2(cmd, run, every_process)
    assert rc == 143, err[-3000:]
    # The managers remove the batches' files 2 s after their last client has gone.
    deadline = time.time() + 30
    while _shm_files(pids) and time.time() < deadline:
        time.sleep(0.2)
    assert not _shm_files(pids)
    assert err.strip() == (f"stopped by SIGTERM in epoch 2, nothing half-written (newest checkpoint: epoch 1); "
                           f"continue with: {_as_typed(sys.executable)} {_as_typed(TRAIN)} --name one --runs-dir "
                           f"{tmp_path} --resume")
    assert [p.name for p in rundir.checkpoint_dirs(run)] == ["epoch_0001"] and _no_temp_files(run)
    assert [r["epoch"] for r in rundir.read_metrics(run)] == [1]


# ----------------------------------------------------------------------------- a Ray cluster of two nodes
GCS = "127.0.0.1:46379"
SEARCH = ROOT / "tuning" / "search.py"
SEARCH_FLAGS = ["--subset", "60", "--val-size", "20", "--test-subset", "20", "--batch-size", "20",
                "--eval-batch-size", "8", "--scheduler", "step", "--no-download", "--no-report"]
FIXED = {"dropout": 0.0, "weight_decay": 5e-4, "l1": 0.0, "flip_p": 0.0, "affine_p": 0.0, "color_p": 0.0,
         "cutout_p": 0.0, "cutout_max": 8}
GOOD_LR, DIVERGING_LR = 0.05, 1e30


def at_512(lr: float) -> float:
    """A space gives learning rates at batch 512, scaled to the search's batch (20 here): the value
    that trains at `lr` (results.csv and params.json record the scaled one)."""
    return lr * 512 / 20


def _ray_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "RAY_ADDRESS"))}
    return {**env, "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", **extra}


def _ray_node(temp: Path, node: int, env: dict[str, str], *head_or_address: str, block: bool = True):
    """`ray start` for node `node` (0, 1, ...) on this machine: its own temp dir (so no other Ray on
    the host finds it) and ports of its own, 46310 + 10 * node .. +5, workers 46500 + 100 * node .. +99."""
    ports, workers = 46310 + 10 * node, 46500 + 100 * node
    cmd = [str(Path(sys.executable).parent / "ray"), "start", *head_or_address, "--node-ip-address", "127.0.0.1",
           "--num-cpus", "2", "--object-store-memory", str(200 * 2**20), "--temp-dir", str(temp),
           "--node-manager-port", str(ports), "--object-manager-port", str(ports + 1),
           "--dashboard-agent-listen-port", str(ports + 2), "--dashboard-agent-grpc-port", str(ports + 3),
           "--runtime-env-agent-port", str(ports + 4), "--metrics-export-port", str(ports + 5),
           "--min-worker-port", str(workers), "--max-worker-port", str(workers + 99)] + (["--block"] if block else [])
    log = temp.with_suffix(".log")
    return subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env, start_new_session=True), log


def _wait_log(proc: subprocess.Popen, log: Path, text: str, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while text not in log.read_text():
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.time() < deadline, log.read_text()[-3000:]
        time.sleep(0.2)


@pytest.fixture(scope="module")
def ray_cluster():
    """A head and a worker node, 2 CPUs each, joined the way README's "Scaling out" says: the head
    runs with token authentication and the token file (RAY_AUTH_TOKEN_PATH), the worker gets the
    same token (RAY_AUTH_TOKEN), and a worker without it is refused."""
    import secrets
    import shutil
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="r13-", dir="/tmp"))  # short: Ray's socket paths have a length limit
    token = base / "token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    auth = {"RAY_AUTH_MODE": "token"}
    nodes = []
    try:
        head, head_log = _ray_node(base / "head", 0, _ray_env(**auth, RAY_AUTH_TOKEN_PATH=str(token)),
                                   "--head", "--port", GCS.split(":")[1], "--include-dashboard=false")
        nodes.append(head)
        _wait_log(head, head_log, "block forever")
        worker, worker_log = _ray_node(base / "worker", 1, _ray_env(**auth, RAY_AUTH_TOKEN=token.read_text()),
                                       "--address", GCS)
        nodes.append(worker)
        # Refused on its first tries: 2 of them, not the 20 (one a second) Ray makes before it gives up.
        stranger, stranger_log = _ray_node(base / "stranger", 2, _ray_env(RAY_gcs_server_port_wait_time_s="2"),
                                           "--address", GCS, block=False)
        nodes.append(stranger)
        _wait_log(worker, worker_log, "block forever")
        assert stranger.wait(timeout=180) != 0 and "InvalidAuthToken" in stranger_log.read_text()
        yield SimpleNamespace(address=GCS, env=_ray_env(**auth, RAY_AUTH_TOKEN_PATH=str(token)))
    finally:
        for node in reversed(nodes):  # this cluster's processes only: never `ray stop`
            _end_group(node)
        shutil.rmtree(base, ignore_errors=True)


def _search(cluster, tmp_path: Path, name: str, space: dict, *flags: str) -> subprocess.Popen:
    (tmp_path / f"{name}.json").write_text(json.dumps(space))
    cmd = [sys.executable, str(SEARCH), "--address", cluster.address, "--name", name, "--runs-dir", str(tmp_path),
           "--space", str(tmp_path / f"{name}.json"), *SEARCH_FLAGS, *flags]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=cluster.env)


def _results(search_dir: Path) -> dict[str, dict[str, str]]:
    import csv

    with open(search_dir / rundir.RESULTS_CSV) as f:
        return {r["trial_id"]: r for r in csv.DictReader(f)}


def test_cluster_search_retries_a_lost_trial_from_its_checkpoint_and_not_a_diverged_one(ray_cluster, fake_cifar,
                                                                                      tmp_path):
    """Three trials on two nodes (one trial per node at a time, 2 CPUs each); search seed 2 draws
    max_lr = diverging, good, good. The diverging one ends as ERROR at once; the first good one
    has its process killed (kill -9) in epoch 2 and is retried, resuming from its epoch-1 checkpoint."""
    space = {**FIXED, "max_lr": {"type": "choice", "values": [at_512(GOOD_LR), at_512(DIVERGING_LR)]}}
    proc = _search(ray_cluster, tmp_path, "lost", space, "--data-dir", str(fake_cifar), "--num-samples", "3",
                   "--epochs", "3", "--grace-period", "3", "--cpus-per-trial", "2", "--search-seed", "2")
    trials = tmp_path / "search-lost" / rundir.TRIALS
    killed: dict[str, object] = {}

    def kill_a_good_trial_in_epoch_2() -> bool:
        for run in sorted(trials.glob("*")) if trials.is_dir() else []:
            attempts = rundir.read_jsonl(run / rundir.ATTEMPTS)
            if (attempts and rundir.checkpoint_dirs(run)
                    and rundir.read_json(run / rundir.PARAMS)["max_lr"] == pytest.approx(GOOD_LR)):
                killed.update(trial=run.name, epoch1=rundir.read_metrics(run)[0])
                os.kill(attempts[0]["pids"][0], signal.SIGKILL)
                return True
        return False

    try:
        _wait_for(kill_a_good_trial_in_epoch_2, proc)
        out = proc.communicate(timeout=600)[0]
    finally:
        proc.kill()
    assert proc.returncode == 0, out[-4000:]
    rows = _results(tmp_path / "search-lost")
    assert len(rows) == 3
    lost = rows[killed["trial"]]
    assert (lost["status"], lost["epochs"], lost["attempts"]) == ("TERMINATED", "3", "2"), lost
    attempts = rundir.read_jsonl(trials / killed["trial"] / rundir.ATTEMPTS)
    assert [a["from_epoch"] for a in attempts] == [0, 1]  # the retry resumed after epoch 1...
    metrics = rundir.read_metrics(trials / killed["trial"])
    assert [m["epoch"] for m in metrics] == [1, 2, 3] and metrics[0] == killed["epoch1"]  # ...and kept it
    diverged = [r for r in rows.values() if float(r["max_lr"]) == pytest.approx(DIVERGING_LR)]
    assert [(r["status"], r["attempts"]) for r in diverged] == [("ERROR", "1")], rows  # not retried
    assert diverged[0]["error"].startswith("NonFiniteLossError: training loss became nan in epoch 1")
    other = [r for t, r in rows.items() if t != killed["trial"] and r not in diverged]
    assert [(r["status"], r["attempts"]) for r in other] == [("TERMINATED", "1")]
    # Trials ran on both nodes (on one host they differ by Ray node id only).
    node_ids = {n for r in rows.values() for n in r["node_ids"].split()} | {n for a in attempts for n in a["node_ids"]}
    assert len(node_ids) == 2 and all(len(n) == 56 for n in node_ids), rows
    # Loader workers follow the trial's 2-CPU reservation (half of it on a CPU-only run), not the host.
    # (The diverged trial failed in epoch 1, before fit writes config.json.)
    for t, r in rows.items():
        if r["status"] != "ERROR":
            assert rundir.read_json(trials / t / rundir.CONFIG)["config"]["num_workers"] == 1
    assert not (trials / diverged[0]["trial_id"] / rundir.CONFIG).exists()
    assert json.loads((tmp_path / "search-lost" / rundir.SEARCH_JSON).read_text())["status"] == "finished"


def test_cluster_ddp_trial_puts_one_worker_on_each_node(ray_cluster, fake_cifar, tmp_path):
    """--workers-per-trial 2 with STRICT_SPREAD: one trial is a Ray Train TorchTrainer with 2 gloo ranks, one
    per node; the best trial's test images counted once. --keep-trial-checkpoints: the ended trial keeps
    everything, and both ranks' output is in its log. (The same DDP trial on one node, with Ray's default
    placement, was a test of its own in test_search until 2026-12-03: the same code but the placement.)"""
    proc = _search(ray_cluster, tmp_path, "spread", {**FIXED, "max_lr": at_512(GOOD_LR)}, "--data-dir", str(fake_cifar),
                   "--num-samples", "1", "--epochs", "1", "--workers-per-trial", "2", "--cpus-per-trial", "2",
                   "--placement-strategy", "STRICT_SPREAD", "--keep-trial-checkpoints")
    try:
        out = proc.communicate(timeout=600)[0]
    finally:
        proc.kill()
    assert proc.returncode == 0, out[-4000:]
    (row,) = _results(tmp_path / "search-spread").values()
    assert row["status"] == "TERMINATED" and len(set(row["node_ids"].split())) == 2, row
    run = tmp_path / "search-spread" / rundir.TRIALS / row["trial_id"]
    meta = rundir.read_json(run / rundir.CONFIG)
    assert meta["world_size"] == 2 and meta["config"]["num_workers"] == 1
    best = tmp_path / "search-spread" / rundir.BEST_TRIAL
    pred = rundir.load_predictions(best)
    assert rundir.read_json(best / rundir.SUMMARY)["test_count"] == 20 and len(set(pred["indices"].tolist())) == 20
    assert rundir.read_json(best / rundir.SUMMARY)["world_size"] == 2
    assert rundir.read_json(tmp_path / "search-spread" / "search.json")["summary"]["test_acc"] is not None
    assert (run / "checkpoints").is_dir() and (run / "model.safetensors").exists()
    assert "epoch   1/1" in (run / "train.log").read_text()


def test_loader_workers_follow_the_cores_a_process_may_use():
    from distributed.pipeline import workers_for_cores

    # A trial process with --cpus-per-trial C: C - 1 workers feed its GPU, C // 2 on a CPU-only run.
    assert [workers_for_cores(c, on_gpu=False) for c in (1, 2, 3, 4, 16)] == [0, 1, 1, 2, 8]
    assert [workers_for_cores(c, on_gpu=True) for c in (1, 2, 4, 16, 64)] == [0, 1, 3, 12, 12]
