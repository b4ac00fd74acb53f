"""DDP: step time of 2 processes against 1 at the same per-process batch; overhead = t2 / t1.

The script launches `torchrun --standalone --nproc_per_node P benchmarks/bench_ddp.py --worker` for
P = 1 and P = 2, alternating, `--launches` times each.  Each worker builds our Accelerator
(`build_accelerator`: gloo on CPU with ACCELERATE_USE_CPU=true, NCCL on GPUs), prepares the model
and optimizer, and times the real `train_one_epoch` over in-memory synthetic batches (no data
loading); rank 0 prints the median step time.  t2 / t1 = 1.0 means free gradient all-reduce.

On CPU every process gets `--threads` threads (default: cores / 2) in BOTH cases, so the 1-process
run does not use more cores than each of the 2 processes has and the ratio isolates communication.

    python benchmarks/bench_ddp.py                        # CPU, gloo
    python benchmarks/bench_ddp.py --device cuda --batch-size 256 --steps 30   # needs 2 GPUs
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve()
TAG = "BENCH_DDP_WORKER "


def parse_args(argv=None) -> argparse.Namespace:
    from _common import add_device_arg

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_device_arg(p)
    p.add_argument("--batch-size", type=int, default=None, help="PER PROCESS (default: 256 cuda, 16 cpu)")
    p.add_argument("--steps", type=int, default=None, help="steps per timed chunk (default: 30 cuda, 2 cpu)")
    p.add_argument("--repeats", type=int, default=None, help="timed chunks per launch (default: 5 cuda, 2 cpu)")
    p.add_argument("--launches", type=int, default=2, help="torchrun launches of each size, alternating")
    p.add_argument("--nproc", type=int, default=2, help="processes of the multi-process case")
    p.add_argument("--threads", type=int, default=None, help="torch threads per process (default: cores / nproc)")
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def worker(args: argparse.Namespace) -> None:
    """One torchrun process: real train_one_epoch on in-memory batches; rank 0 prints the result."""
    import torch

    from _common import ListLoader, median, sync, synthetic_batches, timer, training_optimizer
    from distributed.config import TrainConfig
    from distributed.engine import train_one_epoch
    from distributed.pipeline import Pipeline, build_accelerator, build_scheduler
    from distributed.model import resnet18

    if args.threads:
        torch.set_num_threads(args.threads)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    gpu = args.device == "cuda"
    cfg = TrainConfig(mixed_precision="bf16" if args.bf16 else "no", batch_size=args.batch_size * world,
                      epochs=args.repeats + 2, num_workers=0, val_size=0, channels_last=gpu)
    acc = build_accelerator(cfg)
    torch.manual_seed(0)
    model = resnet18()
    if gpu:
        model = model.to(memory_format=torch.channels_last)
    opt = training_optimizer(model.parameters(), lr=cfg.effective_max_lr)
    model, opt = acc.prepare(model, opt)
    device = acc.device.type
    batches = synthetic_batches(args.steps, args.batch_size, str(acc.device), gpu, seed=acc.process_index)
    pipe = Pipeline(None, (0.0,) * 3, (1.0,) * 3, 10, ListLoader(batches), None, None, model, opt)
    sched = build_scheduler(cfg, opt, args.steps)
    times = []
    for epoch in range(args.repeats + 1):
        acc.wait_for_everyone()
        sync(device)
        t0 = timer()
        train_one_epoch(cfg, acc, pipe, sched, epoch, progress=False)
        sync(device)
        if epoch:  # the first chunk warms up (allocator, DDP buckets, cuDNN)
            times.append((timer() - t0) / args.steps)
    # Slowest rank's median = the step time of the job.
    t = torch.tensor([median(times)], dtype=torch.float64, device=acc.device)
    t_max = float(acc.gather(t).max())
    if acc.is_main_process:
        print(TAG + json.dumps({"world": world, "step_s": t_max, "backend": str(acc.distributed_type),
                                "threads": torch.get_num_threads(), "chunks": times}), flush=True)


def launch(args: argparse.Namespace, nproc: int, threads: int | None) -> dict:
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun) if torchrun.exists() else "torchrun", "--standalone", f"--nproc_per_node={nproc}",
           str(HERE), "--worker", "--device", args.device, "--batch-size", str(args.batch_size),
           "--steps", str(args.steps), "--repeats", str(args.repeats)]
    if threads:
        cmd += ["--threads", str(threads)]
    if args.bf16:
        cmd.append("--bf16")
    env = dict(os.environ)
    if args.device == "cpu":
        env["ACCELERATE_USE_CPU"] = "true"
        env["CUDA_VISIBLE_DEVICES"] = ""
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith(TAG):
            return json.loads(line[len(TAG):])
    raise SystemExit(f"torchrun --nproc_per_node {nproc} failed (rc {proc.returncode}):\n"
                     f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return
    from _common import base_info, emit, median, r, resolve_device

    args.device = resolve_device(args.device)
    gpu = args.device == "cuda"
    args.batch_size = args.batch_size or (256 if gpu else 16)
    args.steps = args.steps or (30 if gpu else 2)
    args.repeats = args.repeats or (5 if gpu else 2)
    if gpu:
        import torch

        if torch.cuda.device_count() < args.nproc:
            raise SystemExit(f"--device cuda needs {args.nproc} GPUs, found {torch.cuda.device_count()}")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = args.threads or (None if gpu else max(1, cores // args.nproc))

    one, many = [], []
    for i in range(args.launches):
        order = (1, args.nproc) if i % 2 == 0 else (args.nproc, 1)
        for p in order:
            (one if p == 1 else many).append(launch(args, p, threads))
    t1, t2 = median([x["step_s"] for x in one]), median([x["step_s"] for x in many])
    res = base_info("ddp", args.device)
    res.update({
        "per_process_batch": args.batch_size, "steps_per_chunk": args.steps, "chunks_per_launch": args.repeats,
        "launches": args.launches, "nproc": args.nproc, "threads_per_process": threads, "bf16": args.bf16,
        "backend": many[0]["backend"], "t1_step_s": r(t1, 5), f"t{args.nproc}_step_s": r(t2, 5),
        "overhead_ratio": r(t2 / t1, 4), "scaling_efficiency": r(t1 / t2, 4),
        "t1_all": [r(x["step_s"], 5) for x in one], f"t{args.nproc}_all": [r(x["step_s"], 5) for x in many],
    })
    emit(res, f"ddp [{args.device}, {many[0]['backend']}, {args.batch_size}/process]: 1 process {t1 * 1e3:.0f} ms/step, "
              f"{args.nproc} processes {t2 * 1e3:.0f} ms/step -> overhead t{args.nproc}/t1 = {t2 / t1:.3f}")


if __name__ == "__main__":
    main()
