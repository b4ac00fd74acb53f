"""Every owed GPU measurement in one command that fits one device call, most important first.

On the GPU machine (prepared here with `bash ../shared/gpu/pack.sh`; the device call carries [".gpu"]):

    source .gpu/setup.sh && python3 benchmarks/gpu_session.py            # timeout_s 600

Here, the same steps at tiny sizes on the CPU, plus the pack check (the test suite runs this):

    python benchmarks/gpu_session.py --dry-run
    python benchmarks/gpu_session.py --list                              # the plan, with estimates

Each step is a subprocess in its own process group with its own time box (SIGINT at the box, so a
training or search ends cleanly, then SIGTERM and SIGKILL to the whole group: no step can eat the
session, and nothing it started lives on). A step runs only when its box fits what is left of
`--budget`; steps whose inputs failed are skipped. As each step ends, the output folder (`$OUT` when
set) gets its JSON line (steps.jsonl), the summary (summary.json, summary.md with the README rows),
the log (session.log) and one archive of the runs, reports and step logs without weights, optimiser
state or checkpoints (session.tar.gz): a command killed at its limit still returns every finished
step. Runs are written under --work-dir (default /tmp/gpu-session), never into $OUT.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
# One device call: at most 600 s, of which `source .gpu/setup.sh` takes ~30 s on a fresh machine.
# 510 s of steps leaves a minute of margin for set-up, the last archive and a step's kill grace.
DEFAULT_BUDGET_S = 510.0
ARCHIVE_RESERVE_S = 10.0            # kept back after every step for writing the results
DRY_RUN_BOX_S = 900.0               # dry run: boxes only catch hangs (a loaded 2-core CPU is slow, not stuck)
OUT_FILE_LIMIT = 15 * 2**20         # the device tool returns files of up to 16 MiB
EXCLUDE_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".pkl")  # weights, optimiser/RNG state
EXCLUDE_DIRS = ("checkpoints", "__pycache__")
# FLOP-based estimates (labelled as such everywhere they appear) until a GPU run measures the steps.
GFLOP_PER_IMAGE = 3.33              # ResNet18-CIFAR forward+backward (bench_step's gflops_per_image_fwd_bwd)
PEAK_TFLOPS = 989.0                 # H100 SXM bf16 dense
ASSUMED_MFU = 0.20

# The search the session can afford by default: all 32 trials with fractional GPUs, ASHA capped at 10
# epochs instead of 30 (about 84 trial-epochs instead of 110 by synchronous halving, and no 30-epoch
# tail trial), so it ends inside one device call. Labelled in the summary. --search-epochs 30 asks
# for the full search (a call of its own).
SEARCH_TRIALS, SEARCH_EPOCHS = 32, 10


# ----------------------------------------------------------------------------- the plan
@dataclass(frozen=True)
class Options:
    """What this invocation runs, and where."""

    dry_run: bool
    out: Path
    work: Path                      # this invocation's own folder under --work-dir
    data_dir: str
    budget_s: float
    python: str
    only: tuple[str, ...] = ()
    skip: tuple[str, ...] = ()
    pack: bool = True               # dry run: check the carry and (with rehearse_python) setup.sh
    rehearse_python: str | None = None
    ladder_rungs: tuple[str, ...] = ()      # the ladder step's rungs (default: all, in priority order)
    ladder_concurrent: int = 4              # ladder runs at once on the one GPU
    ladder_winner: str | None = None        # the ladder-winner step's rung (default: the ladder step's best)
    search_epochs: int = SEARCH_EPOCHS      # the search step's max epochs per trial (the full search: 30)
    search_refit: bool = False              # the search step ends with --refit

    @property
    def runs(self) -> Path:
        return self.work / "runs"

    @property
    def reports(self) -> Path:
        return self.work / "reports"

    @property
    def device(self) -> str:
        return "cpu" if self.dry_run else "cuda"


@dataclass(frozen=True)
class Step:
    """One time-boxed command. `argv` is built when the step starts (it may look at earlier results)."""

    name: str
    what: str
    argv: Callable[[dict[str, dict]], list[str]]
    box_s: float                    # the step is stopped after this long
    min_s: float                    # ... and not started with less than this left
    estimate_s: float | None        # FLOP-based estimate of its GPU duration, not a measurement
    collect: str = "json"           # json | run | report | search: how its result is read
    target: str | None = None       # the run / report / search folder the step writes
    needs: tuple[str, ...] = ()
    critical: bool = False          # its failure ends the session
    grace_s: float = 15.0           # SIGINT -> SIGTERM
    env: dict[str, str] = field(default_factory=dict)
    label: str = ""                 # how the step differs from the claim it measures (summary notes)


def images_per_s() -> float:
    """The throughput the estimates assume (ASSUMED_MFU of the bf16 peak): an estimate, not a reading."""
    return PEAK_TFLOPS * 1e12 * ASSUMED_MFU / (GFLOP_PER_IMAGE * 1e9)


def asha_trial_epochs(trials: int, max_epochs: int, grace: int, rf: int) -> int:
    """Trial-epochs of synchronous successive halving (async ASHA promotes a few more)."""
    rungs, r = [], grace
    while r < max_epochs:
        rungs.append(r)
        r *= rf
    total, alive = 0, float(trials)
    for rung in rungs:
        stop = alive - alive / rf
        total += stop * rung
        alive -= stop
    return round(total + alive * max_epochs)


def estimates(search_epochs: int = SEARCH_EPOCHS, search_refit: bool = False) -> dict[str, float]:
    """Seconds per GPU step, from FLOP counts at ASSUMED_MFU plus start-up allowances: ESTIMATES."""
    ips = images_per_s()
    epoch = 45_000 / ips + 5_000 / (3 * ips) + 0.3          # train + validate (forward ~1/3) + checkpoint
    train = 15 + 30 * epoch + 10_000 / (3 * ips)
    trial_epochs = asha_trial_epochs(32, search_epochs, 1, 2)
    search = 15 + trial_epochs * epoch + 32 * 10 / 4 + 25   # Ray, trial-epochs, trial start-up 4 at a time, report
    if search_refit:
        search += 15 + search_epochs * 50_000 / ips + 10_000 / (3 * ips)
    # The ladder's runs share the GPU: their work adds up, their start-ups overlap.
    ladder = 15 + sum(ladder_run_epochs(r, 30) * epoch for r in LADDER_RUNGS)
    return {"smoke-torch": 20, "reference": 15 + 3 * 8 + 10, "ladder": ladder, "ladder-winner": 15 + 2 * 30 * epoch,
            "smoke-ray": 15, "step-bf16": 10 + 12 * 50 * 512 / ips,
            "input": 15 + 20_000 * 3 / 17_000, "train-seed0": train, "report-seed0": 25, "gradcam": 25,
            "tta-val": 10, "search": search, "step-compile": 90, "train-seed1": train, "train-seed2": train,
            "train-compile": train + 60,
            "input-slowest": 15 + 20_000 * 3 / 5_000}


# The recipe ladder (benchmarks/ladder.py RUNGS, in priority order; named here too because this process
# does not import the project) and the epochs of each rung's run.
LADDER_RUNGS = ("default", "all-images", "fixed-momentum", "no-smoothing", "smoothing-0.2", "cutout-8-always",
                "40-epochs")
# One JSON line per finished training of the reference and ladder steps, written into the output folder
# as each ends: a call killed at its limit still returns every finished one.
LIVE = "trainings.jsonl"


def ladder_run_epochs(rung: str, epochs: int) -> float:
    return epochs * 4 / 3 if rung == "40-epochs" else epochs


# ----------------------------------------------------------------------------- the command lines
# The ONE place that names the project's flags. When a CLI changes, adjust it here: the dry-run
# test runs every command below at tiny size, so a renamed or removed flag fails in CI, not on the GPU.
# Tiny runs: 4 steps of 10 images (OneCycle needs 3), 20 validation and 20 test images, and a learning
# rate that does not diverge at batch 10 (a non-finite loss would fail the step).
TINY_TRAIN = ["--subset", "60", "--val-size", "20", "--test-subset", "20", "--batch-size", "10",
              "--eval-batch-size", "20", "--num-workers", "0", "--max-lr", "0.05", "--epochs", "1"]


def bench_cmd(o: Options, script: str, *args: str) -> list[str]:
    return [o.python, f"benchmarks/{script}.py", *args, "--device", o.device]


def train_cmd(o: Options, name: str, seed: int, *extra: str) -> list[str]:
    tiny = TINY_TRAIN if o.dry_run else []  # GPU: the default recipe, 30 epochs
    return [o.python, "distributed/train.py", "--data-dir", o.data_dir, "--runs-dir", str(o.runs), "--name", name,
            "--seed", str(seed), "--no-download", "--no-report", *tiny, *extra]


def report_cmd(o: Options, run: str) -> list[str]:
    return [o.python, "reporting/build.py", str(o.runs / run), "--out", str(o.reports / run),
            "--data-dir", o.data_dir, "--device", o.device]


def search_cmd(o: Options) -> list[str]:
    if o.dry_run:
        # no report: report-seed0 exercises the same builder, and it costs a CPU minute here
        sizes = ["--num-samples", "2", "--gpus-per-trial", "0", "--cpus-per-trial", "1", "--num-cpus", "2",
                 "--no-report", *TINY_TRAIN]
    else:  # 4 trials per GPU, 4 CPUs each on a 16-core machine: 1 main process + 3 loader workers
        sizes = ["--num-samples", str(SEARCH_TRIALS), "--epochs", str(o.search_epochs), "--gpus-per-trial", "0.25",
                 "--cpus-per-trial", "4", "--num-workers", "3"]
    return [o.python, "tuning/search.py", "--name", "session", "--data-dir", o.data_dir, "--runs-dir", str(o.runs),
            "--no-download", "--grace-period", "1", "--report-dir", str(o.reports / "search"), *sizes,
            *(["--refit"] if o.search_refit else [])]


def ladder_cmd(o: Options, *choice: str) -> list[str]:
    """benchmarks/ladder.py: train.py runs sharing the GPU, each result into the output folder as it ends."""
    tiny = ["--epochs", "1", "--workers-per-run", "0", "--", *TINY_TRAIN] if o.dry_run else []
    return [o.python, "benchmarks/ladder.py", "--data-dir", o.data_dir, "--runs-dir", str(o.runs / "ladder"),
            "--concurrent", str(o.ladder_concurrent), "--live", str(o.out / LIVE), *choice, *tiny]


def ladder_winner_choice(o: Options) -> list[str]:
    """The ladder-winner step's rung: --ladder-winner, else the best seed-0 rung of the ladder's results."""
    if o.ladder_winner:
        return ["--rungs", o.ladder_winner]
    return ["--winner-from", str(o.runs / "ladder" / "ladder.jsonl")]


def plan(o: Options) -> list[Step]:
    """The steps in priority order: what the headline claims need first, extras while time is left."""
    tiny = o.dry_run
    est = estimates(o.search_epochs, o.search_refit)

    def sizes(gpu: list[str], cpu: list[str]) -> list[str]:
        return cpu if tiny else gpu

    def weights(done: dict[str, dict]) -> list[str]:
        w = o.runs / "seed0" / "model.safetensors"
        return ["--weights", str(w)] if w.exists() else []  # random init when seed 0 has none: timing still holds

    step_sizes = sizes(["--batch-size", "512", "--steps", "50", "--repeats", "5"],
                       ["--batch-size", "2", "--steps", "1", "--repeats", "1"])
    input_sizes = sizes(["--workers", "12"], ["--workers", "1", "--num-images", "64", "--batch-size", "16",
                                              "--repeats", "1", "--gpu-steps", "1"])
    rungs = o.ladder_rungs or LADDER_RUNGS
    steps = [
        Step("smoke-torch", "CUDA, bf16 + channels_last forward/backward, pinned copies, a 1-epoch fit",
             lambda d: bench_cmd(o, "gpu_smoke", "torch", "--data-dir", o.data_dir, "--work-dir", str(o.work / "smoke"),
                                 *(["--tiny"] if tiny else [])), 90, 60, est["smoke-torch"], critical=True),
        # What our JPEG copy of CIFAR-10 costs: a published recipe on it against its published figure.
        Step("reference", "airbench94 on our CIFAR-10 copy, seeds 0-2, plain and with its TTA (published: 94.01% "
                          "with TTA on the original)",
             lambda d: bench_cmd(o, "bench_reference", "--data-dir", o.data_dir, "--work-dir",
                                 str(o.work / "reference"), "--live", str(o.out / LIVE)), 150, 45, est["reference"],
             needs=("smoke-torch",)),
        Step("ladder", f"the recipe ladder, seed 0, {o.ladder_concurrent} train.py runs at once on the GPU: "
                       f"{', '.join(rungs)}",
             lambda d: ladder_cmd(o, "--rungs", ",".join(rungs)), 420, 150, est["ladder"], needs=("smoke-torch",),
             grace_s=40),
        Step("ladder-winner", "the ladder's best seed-0 rung on seeds 1 and 2, at once",
             lambda d: ladder_cmd(o, *ladder_winner_choice(o), "--seeds", "1,2"), 240, 120, est["ladder-winner"],
             needs=("ladder",), grace_s=40),
        Step("smoke-ray", "Ray sees the GPU; 4 tasks of 0.25 GPU at once",
             lambda d: bench_cmd(o, "gpu_smoke", "ray", *(["--num-cpus", "2"] if tiny else [])), 90, 60,
             est["smoke-ray"], needs=("smoke-torch",)),
        Step("step-bf16", "training step, eager bf16 channels_last: img/s, MFU, overhead over a bare loop",
             lambda d: bench_cmd(o, "bench_step", "--bf16", "--channels-last", *step_sizes), 90, 60, est["step-bf16"],
             needs=("smoke-torch",)),
        Step("input", "DataLoader img/s (12 workers) against the GPU's bf16 consumption",
             lambda d: bench_cmd(o, "bench_input", "--data-dir", o.data_dir, *input_sizes), 120, 60, est["input"],
             needs=("smoke-torch",)),
        Step("train-seed0", "the default recipe, seed 0, 30 epochs: accuracy, seconds, data wait, checkpoints",
             lambda d: train_cmd(o, "seed0", 0), 300, 150, est["train-seed0"], collect="run", target="runs/seed0",
             needs=("smoke-torch",), grace_s=20),
        Step("report-seed0", "the HTML report of that run (GradCAM on the GPU)",
             lambda d: report_cmd(o, "seed0"), 120, 60, est["report-seed0"], collect="report",
             target="reports/seed0", needs=("train-seed0",)),
        Step("gradcam", "GradCAM layer1..4 on 10,000 test images, ours against grad-cam, seed-0 weights; "
                       "a torch.profiler table of one batch of each into gradcam-profile.txt",
             lambda d: bench_cmd(o, "bench_gradcam", "--data-dir", o.data_dir, *weights(d),
                                 "--profile", str(o.work / "gradcam"),
                                 # CPU: one image (~10 CPU s less than 4; the checks are the same)
                                 *sizes([], ["--num-images", "1", "--batch-size", "1"])), 150, 90, est["gradcam"],
             needs=("smoke-torch",)),
        Step("tta-val", "mirror TTA against plain evaluation on validation, seed-0 weights",
             lambda d: bench_cmd(o, "bench_tta", "--run", str(o.runs / "seed0"), *sizes([], ["--repeats", "1"])),
             60, 45, est["tta-val"], needs=("train-seed0",)),
        Step("search", f"{SEARCH_TRIALS}-trial ASHA search, 0.25 GPU per trial, and its report"
                       + (", then the refit of its best configuration on all training images" if o.search_refit else ""),
             lambda d: search_cmd(o), 420 if o.search_epochs <= SEARCH_EPOCHS else 600, 150, est["search"],
             collect="search", target="runs/search-session", needs=("smoke-ray",), grace_s=45,
             label="" if o.search_epochs >= 30 else
             f"{SEARCH_TRIALS} trials with ASHA capped at {o.search_epochs} epochs, not 30: a scaled-down search; "
             f"its wall time is not the 30-epoch search's"),
        Step("step-compile", "training step with torch.compile (inductor), bf16 channels_last",
             lambda d: bench_cmd(o, "bench_step", "--bf16", "--channels-last", "--compile", *step_sizes), 240, 150,
             est["step-compile"], needs=("smoke-torch",),
             # On CPU only the command line is checked: compiling takes minutes there (tests/test_train.py
             # covers --compile itself).
             env={"TORCH_COMPILE_DISABLE": "1"} if tiny else {}),
        Step("train-seed1", "the default recipe, seed 1", lambda d: train_cmd(o, "seed1", 1), 300, 150,
             est["train-seed1"], collect="run", target="runs/seed1", needs=("smoke-torch",), grace_s=20),
        Step("train-seed2", "the default recipe, seed 2", lambda d: train_cmd(o, "seed2", 2), 300, 150,
             est["train-seed2"], collect="run", target="runs/seed2", needs=("smoke-torch",), grace_s=20),
        # --compile becomes the GPU default only if a whole 30-epoch fit, compilation included, is >= 1.15x
        # faster at equal accuracy; its first epoch is what a search trial that ASHA stops at once pays.
        Step("train-compile", "the default recipe, seed 0, with --compile: total_seconds (compilation included) "
                              "and its first epoch against train-seed0's",
             lambda d: train_cmd(o, "compile-seed0", 0, "--compile"), 360, 180, est["train-compile"], collect="run",
             target="runs/compile-seed0", needs=("smoke-torch",), grace_s=20,
             env={"TORCH_COMPILE_DISABLE": "1"} if tiny else {}),
        Step("input-slowest", "DataLoader img/s with affine and colour at p=1 (the slowest search draw)",
             lambda d: bench_cmd(o, "bench_input", "--data-dir", o.data_dir, "--affine-p", "1", "--color-p", "1",
                                 *input_sizes), 120, 60, est["input-slowest"], needs=("smoke-torch",)),
    ]
    if tiny and o.pack:
        rehearse = ["--rehearse-python", o.rehearse_python, "--rehearse-session"] if o.rehearse_python else []
        steps.insert(0, Step("pack", "the carry (tree + .gpu/) against 64 MiB; setup.sh in a clean Python 3.12",
                             lambda d: [o.python, "benchmarks/gpu_pack_check.py", *rehearse], 1800 if rehearse else 60,
                             30, None))
    return steps


# ----------------------------------------------------------------------------- running one step
def run_step(step: Step, argv: list[str], timeout: float, log_path: Path, env: dict[str, str]) -> tuple[int, str]:
    """Run argv in a process group of its own, stdout+stderr to log_path. At the time box: SIGINT (a
    training or search stops cleanly and writes what it has), then SIGTERM, then SIGKILL to the
    group. Whatever ends it, the group is killed afterwards so no leftover (loader workers, Ray)
    holds the GPU into the next step. Returns (exit code, "ok" | "timeout")."""
    with open(log_path, "w") as log:
        log.write(f"$ {' '.join(argv)}\n")
        log.flush()
        try:
            # Its own process group, but not its own session: the device tool ends a command's session when
            # the command ends, so even a step left running by a killed session process cannot outlive the call.
            proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, process_group=0)
        except OSError as e:
            log.write(f"error: cannot start {argv[0]}: {e}\n")
            return 127, "ok"
        how = "ok"
        try:
            try:
                proc.wait(timeout=max(1.0, timeout))
            except subprocess.TimeoutExpired:
                how = "timeout"
                for sig, wait in ((signal.SIGINT, step.grace_s), (signal.SIGTERM, 5.0), (signal.SIGKILL, 10.0)):
                    _killpg(proc.pid, sig)
                    try:
                        proc.wait(timeout=wait)
                        break
                    except subprocess.TimeoutExpired:
                        continue
        finally:
            if proc.poll() is None:  # the session itself is being stopped
                _killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            _killpg(proc.pid, signal.SIGKILL)  # stragglers of the group
    return proc.returncode, how


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def json_line(log_text: str) -> dict | None:
    """The first line of a benchmark's output that is its JSON object."""
    for line in log_text.splitlines():
        if line.startswith("{"):
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict) and "bench" in obj:
                return obj
    return None


def _median(xs: list[float]) -> float | None:
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return None
    mid = len(xs) // 2
    return xs[mid] if len(xs) % 2 else (xs[mid - 1] + xs[mid]) / 2


def collect_run(run_dir: Path) -> dict | None:
    """The figures of a training run, from its files (summary.json, metrics.jsonl): what the README needs.

    The session process reads run files itself rather than through `distributed.rundir`: on the GPU
    machine the project is not installed, and only the steps get the repository on their path."""
    from gpu_results import read_jsonl

    rows = read_jsonl(run_dir / "metrics.jsonl")
    summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").exists() else {}
    if not rows and not summary:
        return None

    def col(k: str) -> list[float]:
        return [r[k] for r in rows if r.get(k) is not None]

    out = {k: summary.get(k) for k in ("test_acc", "best_val_acc", "best_epoch", "wall_seconds", "total_seconds",
                                        "startup_seconds", "final_seconds", "images_per_sec", "device",
                                        "mixed_precision", "world_size")}
    out.update(finished=bool(summary), epochs=rows[-1]["epoch"] if rows else 0,
               first_epoch_s=rows[0]["epoch_seconds"] if rows else None,
               first_batch_s=rows[0].get("first_batch_seconds") if rows else None,
               # epochs 2+: whether the workers had the epoch's first batches ready (`TrainBatches.start`)
               later_first_batch_s_median=_median(col("first_batch_seconds")[1:]),
               median_epoch_s=_median(col("epoch_seconds")[1:] or col("epoch_seconds")),
               data_wait_frac_mean=sum(col("data_wait_frac")) / len(rows) if rows else None,
               data_wait_frac_max=max(col("data_wait_frac"), default=None),
               eval_s_median=_median(col("eval_seconds")), eval_s_total=sum(col("eval_seconds")),
               checkpoint_s_median=_median(col("checkpoint_seconds")), checkpoint_s_total=sum(col("checkpoint_seconds")),
               last_val_acc=rows[-1].get("val_acc") if rows else None)
    if not summary and rows:
        out["wall_seconds"] = rows[-1].get("wall_seconds")
    return out


def collect_report(report_dir: Path) -> dict | None:
    pages = sorted(report_dir.rglob("index.html")) if report_dir.is_dir() else []
    if not pages:
        return None
    return {"index": str(pages[0].relative_to(report_dir)), "figures": len(list(report_dir.rglob("*.png"))),
            "bytes": sum(p.stat().st_size for p in report_dir.rglob("*") if p.is_file())}


def collect_search(search_dir: Path, log_text: str) -> dict | None:
    """A search's figures from its files: search.json's summary when it finished, else what its trials'
    run directories hold (a search stopped at its box still tells its throughput)."""
    from gpu_results import read_jsonl

    if not search_dir.is_dir():
        return None
    info = json.loads((search_dir / "search.json").read_text()) if (search_dir / "search.json").exists() else {}
    trials = [p for p in (search_dir / "trials").iterdir() if p.is_dir()] if (search_dir / "trials").is_dir() else []
    epochs = [read_jsonl(t / "metrics.jsonl") for t in trials]
    out = dict(info.get("summary") or {})
    out.pop("best_params", None)
    # The processes that ran them (attempts.jsonl: node and pid of each start): a process may run
    # trial after trial (`tuning.runner.reuse_trial_processes`), each paying start-up once.
    starts = [a for t in trials for a in read_jsonl(t / "attempts.jsonl")]
    out["trial_processes"] = len({(node, pid) for a in starts
                                  for node, pid in zip(a.get("node_ids") or [], a.get("pids") or [])}) or None
    out.update(status=info.get("status"), trials_started=len(trials), trial_epochs=sum(len(e) for e in epochs),
               trial_epoch_seconds=sum(r.get("epoch_seconds", 0.0) for e in epochs for r in e),
               trial_train_images=sum(r.get("images_per_sec", 0.0) * r.get("epoch_seconds", 0.0)
                                      for e in epochs for r in e),
               settings={k: (info.get("search") or {}).get(k) for k in ("num_samples", "gpus_per_trial",
                                                                       "cpus_per_trial", "grace_period")},
               max_epochs=(info.get("base_config") or {}).get("epochs"))
    out["report_built"] = "report:" in log_text
    return out


def collect(step: Step, o: Options, log_text: str) -> dict | None:
    if step.collect == "json":
        return json_line(log_text)
    target = o.work / step.target
    if step.collect == "run":
        return collect_run(target)
    if step.collect == "report":
        return collect_report(target)
    return collect_search(target, log_text)


# ----------------------------------------------------------------------------- the session's outputs
def _tracked(path: Path) -> bool:
    """Whether a file goes into the archive: no weights, optimiser or RNG state, no checkpoints."""
    return not (path.name.endswith(EXCLUDE_SUFFIXES) or path.name.startswith(".tmp.")
                or any(part in EXCLUDE_DIRS or part.startswith("checkpoint_") for part in path.parts))


ARCHIVE_LEVELS = (
    ("everything but weights and checkpoints", lambda p: True),
    ("without figures, predictions and event files",
     lambda p: not p.name.endswith((".png", ".npz")) and "tfevents" not in p.name),
    ("text only", lambda p: p.suffix in (".json", ".jsonl", ".csv", ".log", ".txt", ".md", ".yaml", ".html")),
)


def write_archive(work: Path, out: Path) -> dict:
    """out/session.tar.gz of `work`, atomically, at most OUT_FILE_LIMIT: levels drop figures, then all but text."""
    files = sorted(p for p in work.rglob("*") if p.is_file() and not p.is_symlink()
                   and _tracked(p.relative_to(work)))
    dest, tmp = out / "session.tar.gz", out / ".session.tar.gz.partial"
    for level, keep in ARCHIVE_LEVELS:
        chosen = [p for p in files if keep(p.relative_to(work))]
        with tarfile.open(tmp, "w:gz") as tar:
            for p in chosen:
                try:
                    tar.add(p, arcname=str(Path(work.name) / p.relative_to(work)))
                except OSError:
                    continue  # a file that vanished under a running step
        if tmp.stat().st_size <= OUT_FILE_LIMIT:
            os.replace(tmp, dest)
            return {"name": dest.name, "bytes": dest.stat().st_size, "files": len(chosen), "level": level}
    tmp.unlink(missing_ok=True)
    return {"name": None, "error": f"even the text files of {work} exceed {OUT_FILE_LIMIT} bytes"}


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(text)
    os.replace(tmp, path)


def _capped(text: str, head: int = 150, tail: int = 300) -> str:
    lines = text.splitlines()
    if len(lines) <= head + tail:
        return text
    return "\n".join(lines[:head] + [f"[... {len(lines) - head - tail} lines left out; the whole log is in "
                                     f"session.tar.gz ...]"] + lines[-tail:]) + "\n"


def machine_info() -> dict:
    from _common import device_name

    return {"host": platform.node(), "python": platform.python_version(), "cpu": device_name("cpu")}


class Session:
    """Runs the plan and keeps the output folder current after every step."""

    def __init__(self, o: Options) -> None:
        self.o = o
        self.steps = plan(o)
        self.records: dict[str, dict] = {}
        self.started = time.monotonic()
        self.started_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.status = "running"
        self.archive: dict = {}
        self.logs = o.work / "logs"

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def env(self, step: Step) -> dict[str, str]:
        env = dict(os.environ)
        # The project is not installed on the GPU machine: the repository root on the path lets the
        # scripts, Ray's workers and the benchmarks import it (an installed checkout is unaffected).
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
        env.update(PYTHONUNBUFFERED="1", NO_ALBUMENTATIONS_UPDATE="1", RAY_USAGE_STATS_ENABLED="0", **step.env)
        if self.o.dry_run:
            env["CUDA_VISIBLE_DEVICES"] = ""  # a dry run measures nothing and must not touch a GPU
        return env

    def why_not(self, step: Step) -> str | None:
        """None when the step should run now, else why it is skipped."""
        if self.o.only and step.name not in self.o.only:
            return "not selected (--steps)"
        if step.name in self.o.skip:
            return "skipped (--skip)"
        # Only a step that ran and did not succeed blocks others: one left out (--steps, --skip,
        # budget) blocks nothing, so `--steps train-seed1` runs on a machine where the smoke test
        # passed in an earlier call (its own inputs missing make it fail by itself, with its log).
        stopped = next((r["step"] for r in self.records.values() if r["status"] not in ("ok", "skipped")
                        and any(s.critical and s.name == r["step"] for s in self.steps)), None)
        if stopped:
            return f"the critical step {stopped} failed"
        for need in step.needs:
            rec = self.records.get(need)
            if rec is not None and rec["status"] not in ("ok", "skipped"):
                return f"needs {need}, which {rec['status']}"
        left = self.o.budget_s - self.elapsed() - step.grace_s - ARCHIVE_RESERVE_S
        if left < step.min_s:
            return f"budget: {max(0.0, left):.0f} s left, the step needs at least {step.min_s:.0f} s"
        return None

    def run(self) -> dict:
        self.o.out.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        self.machine = machine_info()
        self.write_outputs()
        _say(f"gpu session ({'dry run, CPU, tiny sizes' if self.o.dry_run else 'GPU'}): {len(self.steps)} steps, "
             f"budget {self.o.budget_s:.0f} s, results in {self.o.out}, runs in {self.o.work}")
        try:
            for step in self.steps:
                self.run_one(step)
            self.status = "finished"
        except KeyboardInterrupt:
            self.status = "stopped (interrupted)"
        finally:
            self.write_outputs()
        ok = sum(r["status"] == "ok" for r in self.records.values())
        ran = sum(r["status"] != "skipped" for r in self.records.values())
        _say(f"gpu session {self.status} in {self.elapsed():.0f} s: {ok} of {ran} steps run ok, "
             f"{len(self.records) - ran} skipped; see {self.o.out / 'summary.md'}")
        return self.summary()

    def run_one(self, step: Step) -> None:
        reason = self.why_not(step)
        rec: dict[str, Any] = {"step": step.name, "what": step.what, "box_s": step.box_s,
                               "estimate_s": None if step.estimate_s is None else round(step.estimate_s, 1),
                               "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        if reason is not None:
            rec.update(status="skipped", reason=reason, seconds=0.0)
        else:
            argv = step.argv(self.records)
            box = max(step.box_s, DRY_RUN_BOX_S) if self.o.dry_run else step.box_s
            timeout = min(box, self.o.budget_s - self.elapsed() - step.grace_s - ARCHIVE_RESERVE_S)
            _say(f"[{self.elapsed():5.0f} s] {step.name}: {step.what} (box {timeout:.0f} s)")
            log = self.logs / f"{step.name}.log"
            t0, cpu0 = time.monotonic(), _children_cpu()
            rc, how = run_step(step, argv, timeout, log, self.env(step))
            text = log.read_text(errors="replace")
            result = collect(step, self.o, text)
            status = "timeout" if how == "timeout" else ("ok" if rc == 0 and result is not None else "failed")
            # CPU seconds beside wall seconds: on a shared machine the wall clock says little about the step.
            rec.update(status=status, rc=rc, seconds=round(time.monotonic() - t0, 2),
                       cpu_s=round(_children_cpu() - cpu0, 2), timeout_s=round(timeout, 1), command=argv, result=result)
            if status != "ok":
                rec["error"] = _last_error(text, rc, how, timeout)
            if step.label:
                rec["label"] = step.label
            _say(f"[{self.elapsed():5.0f} s] {step.name}: {status} in {rec['seconds']:.1f} s"
                 + (f" ({rec['error']})" if status != "ok" else ""))
            with open(self.o.out / "session.log", "a") as f:
                f.write(f"\n===== {step.name}: {status}, rc {rc}, {rec['seconds']} s =====\n{_capped(text)}")
        self.records[step.name] = rec
        with open(self.o.out / "steps.jsonl", "a") as f:
            f.write(json.dumps(rec, default=str) + "\n")
        self.write_outputs()

    def summary(self) -> dict:
        not_run = [{"step": s.name, "reason": self.records[s.name]["reason"]} for s in self.steps
                   if s.name in self.records and self.records[s.name]["status"] == "skipped"]
        pending = [s.name for s in self.steps if s.name not in self.records]
        notes = [f"{r['step']}: {r['label']}" for r in self.records.values() if r.get("label")]
        smoke = (self.records.get("smoke-torch") or {}).get("result") or {}
        return {
            "session": "dry-run" if self.o.dry_run else "gpu", "status": self.status, "started": self.started_at,
            "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "budget_s": self.o.budget_s,
            "elapsed_s": round(self.elapsed(), 1), "root": str(ROOT), "work": str(self.o.work), "out": str(self.o.out),
            "data_dir": self.o.data_dir, "python": self.o.python,
            "machine": {**self.machine, **{k: smoke.get(k) for k in ("device_name", "torch", "torch_cuda", "cudnn",
                                                                    "gpu_memory_gib", "capability") if k in smoke}},
            "estimate_basis": (f"ESTIMATES, not measurements: {GFLOP_PER_IMAGE} GFLOP per image forward+backward, "
                               f"{ASSUMED_MFU:.0%} MFU of {PEAK_TFLOPS:.0f} TFLOP/s bf16 = "
                               f"{images_per_s():,.0f} images/s, plus start-up allowances"),
            "steps": [{k: r.get(k) for k in ("step", "status", "seconds", "cpu_s", "box_s", "estimate_s", "reason",
                                             "error")}
                      for r in self.records.values()],
            "skipped": not_run, "pending": pending, "notes": notes, "archive": self.archive,
        }

    def write_outputs(self) -> None:
        """summary.json, summary.md and session.tar.gz, each replaced atomically."""
        self.archive = write_archive(self.o.work, self.o.out) if self.o.work.exists() else {}
        _write_atomic(self.o.out / "summary.json", json.dumps(self.summary(), indent=2, default=str) + "\n")
        from gpu_results import render

        try:
            text = render(self.o.out)
        except Exception as e:  # noqa: BLE001 - a formatting slip must not end a GPU session; the JSON has it all
            text = f"# GPU session\n\nrender failed ({type(e).__name__}: {e}); the figures are in steps.jsonl\n"
        _write_atomic(self.o.out / "summary.md", text)


def _last_error(text: str, rc: int, how: str, timeout: float) -> str:
    if how == "timeout":
        return f"stopped at its {timeout:.0f} s box"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if ln.startswith(("error", "Error", "smoke")) or "Error" in ln or "failed" in ln:
            return f"rc {rc}: {ln[:300]}"
    return f"rc {rc}: {lines[-1][:300] if lines else 'no output'}"


def _children_cpu() -> float:
    """User + system seconds of the finished children (a step's whole process tree once it is reaped)."""
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _say(msg: str) -> None:
    print(msg, flush=True)


# ----------------------------------------------------------------------------- command line
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, same steps, plus the pack check")
    p.add_argument("--out", default=None, help="results folder (default: $OUT, else <work-dir>/out-<time>)")
    p.add_argument("--work-dir", default="/tmp/gpu-session", help="runs and reports (one sub-folder per invocation)")
    p.add_argument("--data-dir", default=None, help="CIFAR-10 folder (default: $CIFAR_DIR, else data)")
    p.add_argument("--budget", type=float, default=None,
                   help=f"seconds for all steps (default {DEFAULT_BUDGET_S:.0f}: one 600 s device call with set-up "
                        f"and margin; dry run: 3600)")
    p.add_argument("--steps", default=None, help="comma-separated step names to run (default: all, in order)")
    p.add_argument("--skip", default="", help="comma-separated step names to leave out")
    p.add_argument("--no-pack", action="store_true", help="dry run: leave out the pack check")
    p.add_argument("--rehearse-python", default=None,
                   help="dry run: a clean Python 3.12 for the pack step's setup.sh rehearsal (see gpu_pack_check.py)")
    p.add_argument("--list", action="store_true", help="print the plan (boxes, estimates) and exit")
    p.add_argument("--ladder-rungs", default=None,
                   help=f"comma-separated rungs of the ladder step (default: all: {','.join(LADDER_RUNGS)}); a "
                        f"second call names the ones the first left unfinished")
    p.add_argument("--ladder-concurrent", type=int, default=None,
                   help="ladder runs at once on the GPU (default 4, each with (16 - 4) / 4 = 3 loader workers on "
                        "16 cores; dry run: 2)")
    p.add_argument("--ladder-winner", default=None,
                   help="the rung the ladder-winner step runs on seeds 1-2 (default: the ladder step's best seed-0 "
                        "rung by plain test accuracy; give it in a call that does not run the ladder)")
    p.add_argument("--search-epochs", type=int, default=SEARCH_EPOCHS,
                   help=f"the search step's most epochs per trial (default {SEARCH_EPOCHS}, labelled as scaled down; "
                        f"30: the full search, which needs a call of its own)")
    p.add_argument("--search-refit", action="store_true",
                   help="the search step ends with --refit: its best configuration trained again on all 50,000 "
                        "training images and tested")
    return p.parse_args(argv)


def options_from_args(args: argparse.Namespace) -> Options:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    work_root = Path(args.work_dir).resolve()
    out = Path(args.out or os.environ.get("OUT") or work_root / f"out-{stamp}").resolve()
    budget = args.budget if args.budget is not None else (3600.0 if args.dry_run else DEFAULT_BUDGET_S)
    o = Options(dry_run=args.dry_run, out=out, work=work_root / f"session-{stamp}",
                data_dir=str(Path(args.data_dir or os.environ.get("CIFAR_DIR") or "data").resolve()),
                budget_s=budget, python=sys.executable,
                only=tuple(s for s in (args.steps or "").split(",") if s),
                skip=tuple(s for s in args.skip.split(",") if s), pack=not args.no_pack,
                rehearse_python=args.rehearse_python,
                ladder_rungs=tuple(r for r in (args.ladder_rungs or "").split(",") if r),
                ladder_concurrent=args.ladder_concurrent or (2 if args.dry_run else 4),
                ladder_winner=args.ladder_winner, search_epochs=args.search_epochs, search_refit=args.search_refit)
    names = {s.name for s in plan(o)}
    unknown = sorted((set(o.only) | set(o.skip)) - names)
    if unknown:
        raise SystemExit(f"error: unknown step(s) {', '.join(unknown)}; the steps are: {', '.join(sorted(names))}")
    if budget <= 0:
        raise SystemExit(f"error: --budget {budget:g} must be > 0 seconds")
    bad_rungs = sorted(set(o.ladder_rungs + ((o.ladder_winner,) if o.ladder_winner else ())) - set(LADDER_RUNGS))
    if bad_rungs:
        raise SystemExit(f"error: unknown ladder rung(s) {', '.join(bad_rungs)}; the rungs are: {', '.join(LADDER_RUNGS)}")
    if o.ladder_concurrent < 1 or o.search_epochs < 1:
        raise SystemExit("error: --ladder-concurrent and --search-epochs must be >= 1")
    return o


def main(argv=None) -> int:
    args = parse_args(argv)
    o = options_from_args(args)
    if args.list:
        for s in plan(o):
            est = "-" if s.estimate_s is None else f"~{s.estimate_s:.0f} s (estimate)"
            _say(f"{s.name:14s} box {s.box_s:4.0f} s  min {s.min_s:4.0f} s  GPU {est:22s} {s.what}")
        _say(estimates_note())
        return 0
    if not o.dry_run and not (Path(o.data_dir) / "cifar-10-batches-py" / "test_batch").exists():
        raise SystemExit(f"error: no CIFAR-10 in {o.data_dir}: on the GPU machine run `source .gpu/setup.sh` first "
                         f"(it sets $CIFAR_DIR), or pass --data-dir")
    if o.out.exists() and (o.out / "steps.jsonl").exists():
        raise SystemExit(f"error: {o.out} already holds a session's results; give another --out")

    def stop(signum, frame):  # the device tool's kill, or Ctrl-C: end the step, write what is done
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    summary = Session(o).run()
    return 0 if summary["status"] == "finished" and all(s["status"] in ("ok", "skipped")
                                                         for s in summary["steps"]) else 1


def estimates_note() -> str:
    return (f"GPU seconds are ESTIMATES from FLOP counts ({GFLOP_PER_IMAGE} GFLOP/image fwd+bwd at {ASSUMED_MFU:.0%} "
            f"MFU of {PEAK_TFLOPS:.0f} TFLOP/s = {images_per_s():,.0f} img/s) plus start-up allowances; "
            f"nothing here was measured on a GPU")


if __name__ == "__main__":
    sys.exit(main())
