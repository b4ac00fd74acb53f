"""The recipe ladder: the default recipe and one change at a time, each a `distributed/train.py` run, several
at once on the one GPU, so that every rung's test accuracy (plain and mirror TTA) sits beside the default's
and beside the published reference on the same data (`bench_reference.py`).

    python benchmarks/ladder.py --data-dir $CIFAR_DIR --runs-dir /tmp/ladder           # every rung, seed 0
    python benchmarks/ladder.py --rungs fixed-momentum --seeds 1,2 ...                 # one rung, more seeds
    python benchmarks/ladder.py --winner-from /tmp/ladder/ladder.jsonl --seeds 1,2 ... # the best rung, seeds 1-2
    python benchmarks/ladder.py ... -- --subset 60 --val-size 20 --epochs 1            # extra train.py flags

Not a search: a search refuses `--val-size 0` and its trials never see the test set; the ladder's
question is how each published ingredient moves test accuracy. The rungs, in priority order (RUNGS):
the default; all 50,000 training images (`--val-size 0`); momentum not cycled (`--no-cycle-momentum`);
label smoothing 0 and 0.2; an 8x8 cutout on every image; 40 epochs instead of 30.

Up to --concurrent runs at a time share the GPU; each gets its own run directory (runs-dir/<rung>-s<seed>),
its log (runs-dir/logs/), and `--num-workers` = (cores - concurrent) / concurrent loader workers, so the runs
split the cores. Each run is started with `--resume`: a ladder cut short continues its runs when started
again on the same machine. As each run ends, its line (status, plain and TTA test accuracy from its
predictions.npz, total_seconds, ...) is appended to runs-dir/ladder.jsonl and to --live (a GPU session's
output folder), so a call killed at its limit keeps every finished rung. Ctrl-C (or the session's time
box) stops the runs still going; the JSON line then lists them as stopped.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
RESULTS = "ladder.jsonl"

# name -> (what it changes, its train.py flags given the ladder's base --epochs). Priority order.
RUNGS: dict[str, tuple[str, Callable[[int], list[str]]]] = {
    "default": ("the default recipe", lambda e: []),
    "all-images": ("all 50,000 training images: no validation split", lambda e: ["--val-size", "0"]),
    "fixed-momentum": ("momentum fixed at --momentum (OneCycle does not cycle it)", lambda e: ["--no-cycle-momentum"]),
    "no-smoothing": ("label smoothing 0 (default 0.1)", lambda e: ["--label-smoothing", "0"]),
    "smoothing-0.2": ("label smoothing 0.2", lambda e: ["--label-smoothing", "0.2"]),
    "cutout-8-always": ("an 8x8 cutout on every image (default: 8-16 px at p 0.5)",
                        lambda e: ["--cutout-p", "1", "--cutout-min", "8", "--cutout-max", "8"]),
    "40-epochs": ("a third more epochs (40 instead of 30)", lambda e: ["--epochs", str(round(e * 4 / 3))]),
}


@dataclass
class Job:
    rung: str
    seed: int
    flags: list[str]                # the rung's own train.py flags
    argv: list[str]
    log: Path
    run_dir: Path
    proc: subprocess.Popen | None = None
    started: float = 0.0


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    p.add_argument("--data-dir", default="data", help="folder holding cifar-10-batches-py/")
    p.add_argument("--runs-dir", default="runs/ladder", help="the runs' folder: one run directory per rung and seed")
    p.add_argument("--rungs", default=",".join(RUNGS), help=f"comma-separated rungs, run in this order "
                                                            f"(default: all: {', '.join(RUNGS)})")
    p.add_argument("--winner-from", default=None, metavar="LADDER_JSONL",
                   help="instead of --rungs: the rung whose seed-0 run has the best plain test accuracy in this "
                        "results file (a ladder's ladder.jsonl)")
    p.add_argument("--seeds", default="0", help="comma-separated seeds, one run each per rung")
    p.add_argument("--epochs", type=int, default=30, help="epochs of every rung (the 40-epochs rung: a third more)")
    p.add_argument("--concurrent", type=int, default=4, help="runs at once on the one GPU")
    p.add_argument("--workers-per-run", type=int, default=None,
                   help="DataLoader workers per run (default: (cores - concurrent) / concurrent, 1-12)")
    p.add_argument("--live", default=None, help="also append each finished run's line to this file")
    p.add_argument("--python", default=sys.executable, help="the Python that runs train.py")
    p.add_argument("extra", nargs=argparse.REMAINDER,
                   help="after --: train.py flags for every run (before each rung's own flags)")
    args = p.parse_args(argv)
    args.extra = args.extra[1:] if args.extra[:1] == ["--"] else args.extra
    if args.concurrent < 1:
        p.error(f"--concurrent {args.concurrent} must be >= 1")
    return args


def workers_per_run(concurrent: int) -> int:
    """The machine's cores shared among the runs: each keeps one for itself, the rest load data."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(12, (cores - concurrent) // concurrent))


def pick_winner(rows: list[dict[str, Any]]) -> str | None:
    """The rung whose finished seed-0 run has the best plain test accuracy; ties go to the earlier rung.
    Plain, not TTA: TTA changes evaluation only and comes with any rung."""
    done = [r for r in rows if r.get("kind") == "ladder" and r.get("seed") == 0 and r.get("status") == "finished"
            and r.get("test_acc_plain") is not None and r.get("rung") in RUNGS]
    order = list(RUNGS)
    best = max(done, key=lambda r: (r["test_acc_plain"], -order.index(r["rung"])), default=None)
    return best["rung"] if best else None


def read_rows(path: Path) -> list[dict[str, Any]]:
    rows = []
    for line in Path(path).read_text().splitlines() if Path(path).exists() else []:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line torn by a kill
    return rows


def build_jobs(args: argparse.Namespace, rungs: list[str], seeds: list[int], workers: int) -> list[Job]:
    runs, data = Path(args.runs_dir).resolve(), Path(args.data_dir).resolve()  # the runs start in ROOT
    jobs = []
    for rung in rungs:  # priority order first, then seeds: a cut ladder has its first rungs
        for seed in seeds:
            name, flags = f"{rung}-s{seed}", RUNGS[rung][1](args.epochs)
            argv = [args.python, str(ROOT / "distributed" / "train.py"), "--data-dir", str(data),
                    "--runs-dir", str(runs), "--name", name, "--seed", str(seed), "--epochs", str(args.epochs),
                    "--num-workers", str(workers), "--no-download", "--no-report", "--resume",
                    *args.extra, *flags]  # the rung's change last: it wins
            jobs.append(Job(rung, seed, flags, argv, runs / "logs" / f"{name}.log", runs / name))
    return jobs


def result_row(job: Job, rc: int, seconds: float, stopped: bool = False) -> dict[str, Any]:
    """One run's line: from its files when it finished (summary.json, predictions.npz), else why not
    (`stopped`: the ladder was interrupted while it ran)."""
    from distributed import rundir

    row: dict[str, Any] = {"kind": "ladder", "rung": job.rung, "seed": job.seed, "what": RUNGS[job.rung][0],
                           "flags": job.flags, "rc": rc, "seconds": round(seconds, 1), "run_dir": str(job.run_dir)}
    summary_path = job.run_dir / rundir.SUMMARY
    if rc == 0 and summary_path.exists():
        s = rundir.read_json(summary_path)
        metrics = rundir.read_metrics(job.run_dir)
        waits = [m["data_wait_frac"] for m in metrics if m.get("data_wait_frac") is not None]
        row.update(status="finished", **rundir.test_accuracies(job.run_dir), test_acc=s.get("test_acc"),
                   best_val_acc=s.get("best_val_acc"), epochs=s.get("epochs"), wall_seconds=s.get("wall_seconds"),
                   total_seconds=s.get("total_seconds"), images_per_sec=s.get("images_per_sec"),
                   train_images=rundir.read_json(job.run_dir / rundir.CONFIG)["split"]["train"],
                   data_wait_frac_mean=sum(waits) / len(waits) if waits else None)
    else:
        metrics = rundir.read_metrics(job.run_dir)
        row.update(status="stopped" if stopped else "failed",
                   epochs=metrics[-1]["epoch"] if metrics else 0, error=_last_line(job.log))
    return row


def _last_line(log: Path) -> str:
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no log"
    errors = [ln for ln in lines if ln.startswith("error") or "Error" in ln]
    return (errors or lines or ["no output"])[-1][:300]


def _append(paths: list[Path], row: dict[str, Any]) -> None:
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())


def run_ladder(jobs: list[Job], concurrent: int, outputs: list[Path]) -> tuple[list[dict[str, Any]], bool]:
    """Run the jobs, `concurrent` at a time, in order; each result is appended to `outputs` as it ends.
    Returns the rows (jobs never started are left out) and whether it was interrupted."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    pending, running, rows = list(jobs), [], []
    interrupted = False
    try:
        while pending or running:
            while pending and len(running) < concurrent:
                job = pending.pop(0)
                job.log.parent.mkdir(parents=True, exist_ok=True)
                with open(job.log, "w") as log:
                    log.write("$ " + " ".join(job.argv) + "\n")
                    log.flush()
                    # Same process group as the ladder: a session's time box (SIGINT to the group) reaches them.
                    job.proc = subprocess.Popen(job.argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                                stdin=subprocess.DEVNULL)
                job.started = time.monotonic()
                running.append(job)
                _say(f"ladder: started {job.rung} seed {job.seed} ({len(running)} running)")
            time.sleep(0.5)
            for job in [j for j in running if j.proc.poll() is not None]:
                running.remove(job)
                row = result_row(job, job.proc.returncode, time.monotonic() - job.started)
                rows.append(row)
                _append(outputs, row)
                _say(_line(row))
    except KeyboardInterrupt:
        interrupted = True
        _say(f"ladder: interrupted; stopping {len(running)} running run(s), {len(pending)} not started")
        for job in running:  # they got the same SIGINT when it came from the terminal or the session's box
            try:
                job.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                job.proc.kill()
                job.proc.wait()
            row = result_row(job, job.proc.returncode, time.monotonic() - job.started, stopped=True)
            rows.append(row)
            _append(outputs, row)
            _say(_line(row))
    return rows, interrupted


def _line(row: dict[str, Any]) -> str:
    if row["status"] != "finished":
        return f"ladder: {row['rung']} seed {row['seed']} {row['status']} after {row['epochs']} epochs: {row['error']}"
    return (f"ladder: {row['rung']} seed {row['seed']}: test {100 * row['test_acc_plain']:.2f}% plain, "
            f"{100 * row['test_acc_tta']:.2f}% mirror TTA; {row['total_seconds']:.1f} s")


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)  # stdout's first line is the JSON result


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.winner_from:
        winner = pick_winner(read_rows(Path(args.winner_from)))
        if winner is None:
            raise SystemExit(f"error: no finished seed-0 rung in {args.winner_from} to pick a winner from: run the "
                             f"ladder first, or name the rung (ladder.py --rungs R; gpu_session.py --ladder-winner R)")
        rungs = [winner]
    else:
        rungs = [r for r in args.rungs.split(",") if r]
        unknown = [r for r in rungs if r not in RUNGS]
        if unknown:
            raise SystemExit(f"error: unknown rung(s) {', '.join(unknown)}; the rungs are: {', '.join(RUNGS)}")
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    workers = args.workers_per_run if args.workers_per_run is not None else workers_per_run(args.concurrent)
    jobs = build_jobs(args, rungs, seeds, workers)
    runs = Path(args.runs_dir).resolve()
    t0 = time.monotonic()
    rows, interrupted = run_ladder(jobs, args.concurrent, [runs / RESULTS] + ([Path(args.live)] if args.live else []))
    wall = time.monotonic() - t0
    images = sum((r.get("images_per_sec") or 0) * (r.get("wall_seconds") or 0) for r in rows)
    result = {"bench": "ladder", "date": time.strftime("%Y-%m-%d", time.gmtime()), "rungs": rungs, "seeds": seeds,
              "epochs": args.epochs, "concurrent": args.concurrent, "workers_per_run": workers, "extra": args.extra,
              "from_winner_of": args.winner_from, "interrupted": interrupted, "wall_s": round(wall, 1),
              "runs": rows, "not_started": [f"{j.rung}-s{j.seed}" for j in jobs if j.proc is None],
              "winner": pick_winner(rows),
              # training images of all runs over the ladder's wall time: what the shared GPU sustained
              "summed_images_per_s": round(images / wall, 1) if wall > 0 else None}
    print(json.dumps(result), flush=True)
    done = [r for r in rows if r["status"] == "finished"]
    print(f"ladder: {len(done)} of {len(jobs)} runs finished in {wall:.0f} s ({args.concurrent} at a time, "
          f"{workers} loader workers each){'; interrupted' if interrupted else ''}; best seed-0 rung: "
          f"{result['winner']}", flush=True)
    # A failed run is in the JSON line (and the session's summary); the step fails only when nothing finished.
    return 130 if interrupted else (0 if done or not jobs else 1)


if __name__ == "__main__":
    sys.exit(main())
