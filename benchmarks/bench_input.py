"""Input pipeline: training batches/s of our DataLoader (uint8 across the worker boundary,
normalised on the device) against the float pipeline it replaced and a bare single-process loop.

Ours: `CifarDataset` + `make_loader` (N workers, per-batch `__getitems__`) with the training
transform `build_train_transform(AugConfig(), mean)`: uint8 batches, made model input by
`ModelInput` in this process (on the GPU with `--device cuda`), as `fit` does.
Float (the baseline, the pipeline before 2026-12): the same loader with
`build_float_train_transform`: Normalize and the cutout on float32 in the workers, float NCHW
batches across the worker boundary, handed over as torch does by default (file descriptors passed
through a socket that a thread of each worker serves, one connection per tensor; labels and
positions as tensors too). Ours, files: our pipeline as before 2026-12-03, each batch in a new
named shared-memory file (`data._seed_worker`) instead of a reused slot (`data.BatchSlots`).
Ours, fd: that one with torch's default handover instead of named files: what the handover alone
is worth. Bare: our transform applied image by image in this process,
stacked into batches (the minimum work any loader must do); bare float likewise for the baseline.
Both loaders iterate whole epochs over the first `--num-images` CIFAR-10 training images; their
first epoch (worker start-up) is not timed; timed epochs of all of them alternate, in rotating order.

    per-worker efficiency = loader / (N x its bare rate)     (1.0 = perfect scaling over workers)
    machine scaling       = N bare processes at once / (N x one alone)   (workers > 1: what the
                            cores give N busy processes with nothing handed over; the loader's
                            efficiency / this = how much of that the loader gets)
    speedup over float    = ours / float                    (the goal: >= 1.4 on CPU, 1 and 2 workers)
    handover speedup      = ours / ours with torch's default handover   (workers > 0)
    slots speedup         = ours / ours with a new shared-memory file per batch   (workers > 0)
    trainer cores         = CPU seconds of this process (receiving and normalising batches, all
                            its threads) / wall seconds, during ours' timed epochs: what the
                            consumer takes from the cores the N workers share (workers > 0)
    workers running       = shares of ours' timed epochs that its N workers (all their threads)
    workers runqueue wait   ran on a core, waited for one (ready, none free), and neither (idle:
    workers idle            nothing asked of them, or blocked handing a batch over); the kernel's
                            scheduler counts (Linux; workers > 0). Running near 1.0: only more
                            workers or cheaper transforms make the loader faster; waiting: too few
                            cores for the processes; idle: too few batches in flight (prefetch,
                            in-order delivery, an epoch's end)
    consumer ms per batch = `ModelInput` on one batch, against the four-pass version it replaced
                            (2026-12-03), alternating, 200 batches each

With `--device cuda` both loaders' batches are copied to the GPU (pinned, non-blocking) and it also
times a bf16 training step on synthetic batches: the rate at which the GPU consumes images, so
`loader_over_gpu` >= 1 means the loader can keep the GPU fed.

    python benchmarks/bench_input.py --workers 2
    python benchmarks/bench_input.py --device cuda --workers 12 --num-images 20000 --batch-size 512
"""
from __future__ import annotations

import argparse


def parse_args(argv=None) -> argparse.Namespace:
    from _common import add_device_arg

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_device_arg(p)
    p.add_argument("--data-dir", default="data", help="folder holding cifar-10-batches-py/")
    p.add_argument("--num-images", type=int, default=None, help="images per epoch (default: 20000 cuda, 4096 cpu)")
    p.add_argument("--batch-size", type=int, default=None, help="per batch (default: 512 cuda, 256 cpu)")
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: cores - 1, at least 1)")
    p.add_argument("--repeats", type=int, default=3, help="timed epochs of each")
    p.add_argument("--gpu-steps", type=int, default=30, help="cuda: timed bf16 training steps")
    # Off in the default recipe, sampled by the search: p=1 gives the slowest pipeline a trial can get.
    p.add_argument("--affine-p", type=float, default=None, help="shift/scale/rotate probability (default: recipe's)")
    p.add_argument("--color-p", type=float, default=None, help="HSV + brightness/contrast probability (default: recipe's)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="batches in channels_last (default: on for cuda, as training does)")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)  # first: --help and a bad flag answer before the heavy imports
    import os
    import resource

    import cv2
    import numpy as np
    import torch

    from _common import (bare_train_steps, base_info, emit, median, r, resolve_device, training_optimizer,
                         synthetic_batches, timer)
    from distributed.augment import ModelInput, build_float_train_transform, build_train_transform
    from distributed.config import AugConfig
    from distributed.data import CifarDataset, TrainBatches, channel_stats, load_cifar10, make_loader
    from distributed.model import resnet18

    device = resolve_device(args.device)
    gpu = device == "cuda"
    n = args.num_images or (20000 if gpu else 4096)
    bs = args.batch_size or (512 if gpu else 256)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    workers = args.workers if args.workers is not None else max(1, cores - 1)
    channels_last = gpu if args.channels_last is None else args.channels_last

    data = load_cifar10(args.data_dir, download=False)
    n = min(n, len(data.train_x))
    idx = np.arange(n)
    mean, std = channel_stats(data.train_x, cache_dir=None)
    changes = {k: v for k, v in (("affine_p", args.affine_p), ("color_p", args.color_p)) if v is not None}
    aug = AugConfig(**changes)
    to_input = ModelInput(mean, std, channels_last)
    # The consumer (copy to the device, ModelInput) runs in this process; with OpenMP threads it
    # would spin on the cores the loader workers are measured on (on a 2-core CPU a batch's
    # normalisation took 15-24 ms with 2 threads against 1 ms with one).
    torch.set_num_threads(1)

    class FloatBatches(CifarDataset):
        """The baseline's batches as the workers sent them: float NCHW (contiguous off the GPU)."""

        def __getitems__(self, keys):
            x, y, i = super().__getitems__(keys)
            x = x.permute(0, 3, 1, 2)
            # labels and positions as tensors, as they were sent before 2026-12-02 (ours: arrays)
            return (x if channels_last else x.contiguous()), torch.as_tensor(y), torch.as_tensor(i)

    def torch_default_handover(loader):
        """The loader's workers hand tensors over as before 2026-12-02: torch's default, file descriptors."""
        init = loader.worker_init_fn

        def fd_init(worker_id: int) -> None:
            init(worker_id)
            torch.multiprocessing.set_sharing_strategy("file_descriptor")

        loader.worker_init_fn = fd_init if init is not None else None
        return loader

    def ours_loader(reuse_buffers: bool = True):
        return make_loader(CifarDataset(data.train_x, data.train_y, idx, build_train_transform(aug, mean), seed=0),
                           bs, shuffle=True, seed=0, num_workers=workers, drop_last=True, pin_memory=gpu,
                           reuse_buffers=reuse_buffers)

    loaders = {
        "ours": ours_loader(),
        "float": torch_default_handover(make_loader(
            FloatBatches(data.train_x, data.train_y, idx, build_float_train_transform(aug, mean, std), seed=0),
            bs, shuffle=True, seed=0, num_workers=workers, drop_last=True, pin_memory=gpu)),
    }
    if workers > 0:  # without workers nothing is handed over
        # Ours as before 2026-12-03: each batch in a new shared-memory file instead of a reused slot.
        loaders["ours_files"] = ours_loader(reuse_buffers=False)
        loaders["ours_fd"] = torch_default_handover(ours_loader(reuse_buffers=False))
    batches_per_epoch = len(loaders["ours"])
    images_per_epoch = batches_per_epoch * bs
    epochs = {name: 0 for name in loaders}
    trainer_cores_ours: list[float] = []  # per timed epoch of ours: this process's cpu s / wall s
    workers_time_ours: list[tuple[float, float]] = []  # per timed epoch of ours: its workers' (running,
    # waiting for a core) seconds / (N x wall seconds)

    def cpu_seconds() -> float:
        u = resource.getrusage(resource.RUSAGE_SELF)  # this process's threads, not its workers
        return u.ru_utime + u.ru_stime

    def workers_sched_seconds(name: str) -> tuple[float, float] | None:
        """Seconds so far that loader `name`'s worker processes (all their threads) ran on a core and
        waited for one (Linux: the scheduler's nanosecond counts, /proc/<pid>/task/*/schedstat), or
        None where unknown."""
        it = getattr(loaders[name], "_iterator", None)  # persistent workers: the one iterator's
        procs = getattr(it, "_workers", None)
        if not procs:
            return None
        ran = waited = 0
        try:
            for proc in procs:
                for task in os.scandir(f"/proc/{proc.pid}/task"):
                    with open(f"{task.path}/schedstat") as f:
                        fields = f.read().split()
                    ran, waited = ran + int(fields[0]), waited + int(fields[1])
        except (OSError, ValueError, IndexError):  # not Linux, or a worker gone
            return None
        return ran / 1e9, waited / 1e9

    batches = {name: TrainBatches(loader) for name, loader in loaders.items()}  # as fit iterates them

    def loader_epoch(name: str) -> float:
        """One epoch of batches made ready for the model: on the device, and (ours) normalised."""
        epochs[name] += 1
        w0 = workers_sched_seconds(name) if name == "ours" else None
        c0, t0 = cpu_seconds(), timer()
        for x, y, _ in batches[name].epoch(epochs[name] - 1):
            x = x.to(device, non_blocking=gpu)
            if name != "float":
                x = to_input(x)
        if gpu:
            torch.cuda.synchronize()
        t = timer() - t0
        if name == "ours":
            trainer_cores_ours.append((cpu_seconds() - c0) / t)
            w1 = workers_sched_seconds(name) if w0 is not None else None
            if w1 is not None:
                workers_time_ours.append(((w1[0] - w0[0]) / (workers * t), (w1[1] - w0[1]) / (workers * t)))
        return t

    # Bare: one process, the same Compose, the same images, stacked per batch like __getitems__.
    cv2.setNumThreads(0)  # as our workers do
    bare_tf = {"ours": build_train_transform(aug, mean), "float": build_float_train_transform(aug, mean, std)}
    images = data.train_x[:images_per_epoch]

    def bare_pass(name: str) -> float:
        t0 = timer()
        for s in range(0, images_per_epoch, bs):
            b = np.stack([bare_tf[name](image=img)["image"] for img in images[s:s + bs]])
            x = torch.from_numpy(b)
            if name == "float":
                x.permute(0, 3, 1, 2).contiguous()
        return timer() - t0

    def bare_parallel(name: str) -> float:
        """`workers` forked processes doing the bare pass at the same moment, nothing handed over:
        what this machine gives that many busy processes. The seconds of the slowest; the rate
        counts all of their images (so per process, divide by `workers`)."""
        import multiprocessing

        ctx = multiprocessing.get_context("fork")
        barrier, times_q = ctx.Barrier(workers), ctx.SimpleQueue()

        def one() -> None:
            barrier.wait()
            times_q.put(bare_pass("ours"))

        procs = [ctx.Process(target=one) for _ in range(workers)]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join()
        return max(times_q.get() for _ in procs) / workers

    startup = {name: loader_epoch(name) for name in loaders}  # worker start-up + first epoch: not timed
    trainer_cores_ours.clear()
    workers_time_ours.clear()
    runs = [(name, loader_epoch) for name in loaders] + [("bare", lambda _: bare_pass("ours")),
                                                         ("bare_float", lambda _: bare_pass("float"))]
    if workers > 1:  # the machine's own scaling over that many processes, beside the loader's
        runs.append(("bare_parallel", bare_parallel))
    times: dict[str, list[float]] = {name: [] for name, _ in runs}
    for i in range(args.repeats):  # rotate the order so drifting load hits all alike
        k = i % len(runs)
        for name, fn in runs[k:] + runs[:k]:
            times[name].append(fn(name))
    ips = {name: images_per_epoch / median(t) for name, t in times.items()}
    eff = ips["ours"] / (max(1, workers) * ips["bare"])
    float_eff = ips["float"] / (max(1, workers) * ips["bare_float"])
    speedup = ips["ours"] / ips["float"]
    # 1.0 when N busy processes each run as fast as one alone; below it the machine itself (shared
    # cores, a noisy host) caps what N workers can give, whatever the loader does.
    machine = ips["bare_parallel"] / (workers * ips["bare"]) if "bare_parallel" in ips else None
    fd_ips, files_ips = ips.get("ours_fd"), ips.get("ours_files")
    slots = loaders["ours"].worker_init_fn.keywords["slots"] if workers > 0 else None
    trainer_cores = median(trainer_cores_ours) if workers > 0 else None
    # (running, waiting for a core, idle) of ours' workers: the medians of the timed epochs
    workers_time = ((median([a for a, _ in workers_time_ours]), median([b for _, b in workers_time_ours]))
                    if workers_time_ours else None)
    if workers_time:
        workers_time += (max(0.0, 1 - workers_time[0] - workers_time[1]),)  # clocks differ by a little
    consumer_ms = consumer_ms_per_batch(to_input, data.train_x[:bs], device, channels_last)

    gpu_ips = None
    if gpu:
        torch.backends.cudnn.benchmark = True
        model = resnet18().to(device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        opt = training_optimizer(model.parameters())
        batches = synthetic_batches(4, bs, device, channels_last)
        bare_train_steps(model, opt, batches, 5, device, bf16=True)  # warm-up (cuDNN autotune)
        gpu_ips = bs * args.gpu_steps / bare_train_steps(model, opt, batches, args.gpu_steps, device, bf16=True)

    res = base_info("input", device)
    res.update({
        "num_images": images_per_epoch, "batch_size": bs, "workers": workers, "repeats": args.repeats,
        "channels_last": channels_last, "affine_p": aug.affine_p, "color_p": aug.color_p,
        "ours_images_per_s": r(ips["ours"], 1), "bare_images_per_s": r(ips["bare"], 1),
        "per_worker_efficiency": r(eff, 3),
        "float_images_per_s": r(ips["float"], 1), "bare_float_images_per_s": r(ips["bare_float"], 1),
        "float_per_worker_efficiency": r(float_eff, 3), "speedup_over_float": r(speedup, 3),
        "bare_parallel_images_per_s": r(ips.get("bare_parallel"), 1), "machine_scaling": r(machine, 3),
        "per_worker_efficiency_of_machine": r(eff / machine, 3) if machine else None,
        "trainer_cores": r(trainer_cores, 3), "trainer_cores_all": [r(c, 3) for c in trainer_cores_ours],
        **dict(zip(("workers_running", "workers_runqueue_wait", "workers_idle"),
                   [r(v, 3) for v in workers_time] if workers_time else (None,) * 3)),
        "workers_running_all": [r(a, 3) for a, _ in workers_time_ours],
        "consumer_ms_per_batch": r(consumer_ms["one_pass"], 3),
        "consumer_ms_per_batch_four_pass": r(consumer_ms["four_pass"], 3),
        "ours_fd_images_per_s": r(fd_ips, 1), "handover_speedup": r(ips["ours"] / fd_ips, 3) if fd_ips else None,
        "ours_files_images_per_s": r(files_ips, 1),
        # of ours' batches (start-up epoch included), those that came in a reused slot: 1.0 unless a
        # worker found none free and sent a new tensor
        "ours_through_slots": r(slots.taken / (epochs["ours"] * batches_per_epoch), 3) if slots else None,
        "slots_speedup": r(ips["ours"] / files_ips, 3) if files_ips else None,
        "first_epoch_s_incl_startup": r(startup["ours"], 3),
        "float_first_epoch_s_incl_startup": r(startup["float"], 3),
        "gpu_step_images_per_s_bf16": r(gpu_ips, 1),
        "loader_over_gpu": r(ips["ours"] / gpu_ips, 3) if gpu_ips else None,
        "float_loader_over_gpu": r(ips["float"] / gpu_ips, 3) if gpu_ips else None,
        **{f"{name}_epoch_s_all": [r(t, 3) for t in ts] for name, ts in times.items()},
    })
    gpu_txt = (f"; GPU bf16 step eats {gpu_ips:,.0f} img/s -> loader/GPU {ips['ours'] / gpu_ips:.2f} "
               f"(float {ips['float'] / gpu_ips:.2f})" if gpu_ips else "")
    fd_txt = (f"; a new shared-memory file per batch {files_ips:,.0f} img/s (ours {ips['ours'] / files_ips:.2f}x), "
              f"with torch's default handover {fd_ips:,.0f} img/s (ours {ips['ours'] / fd_ips:.2f}x)"
              if fd_ips else "")
    machine_txt = (f"; {workers} bare processes at once scale {machine:.2f} of {workers} x one (the machine), "
                   f"so the loader gives {eff / machine:.2f} of what it could" if machine else "")
    trainer_txt = (f"; the training process used {trainer_cores:.2f} of a core receiving and normalising"
                   if trainer_cores is not None else "")
    trainer_txt += (f"; its workers ran {workers_time[0]:.2f} of the time, waited for a core {workers_time[1]:.2f}, "
                    f"idle {workers_time[2]:.2f}" if workers_time else "")
    emit(res, f"input [{workers} workers, bs {bs}, {images_per_epoch} images, affine p {aug.affine_p}, "
              f"colour p {aug.color_p}]: ours (uint8) {ips['ours']:,.0f} img/s vs float pipeline "
              f"{ips['float']:,.0f} img/s -> {speedup:.2f}x; per-worker efficiency {eff:.2f} (float "
              f"{float_eff:.2f}){fd_txt}{machine_txt}{trainer_txt}; "
              f"normalising a batch {consumer_ms['one_pass']:.2f} ms (four passes, as before: "
              f"{consumer_ms['four_pass']:.2f} ms){gpu_txt}")


def consumer_ms_per_batch(to_input, images, device: str, channels_last: bool, n: int = 200) -> dict[str, float]:
    """ms per batch of `ModelInput` (one addcmul) against the four passes it replaced on 2026-12-03
    (uint8 layout copy off the GPU, float copy, multiply, add), alternating in blocks of 20."""
    import torch

    from _common import timer

    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.from_numpy(images).to(device)
    to_input(x)  # the constants on the device
    scale, neg_shift = to_input.scale.to(device), to_input.neg_shift.to(device)

    def four_pass(b):
        b = b.permute(0, 3, 1, 2)
        if fmt is torch.contiguous_format:
            b = b.contiguous()
        return b.float().mul_(scale).add_(neg_shift)

    assert torch.allclose(four_pass(x), to_input(x), atol=1e-5, rtol=0)
    totals = {"one_pass": 0.0, "four_pass": 0.0}
    for _ in range(n // 20):
        for name, fn in (("one_pass", to_input), ("four_pass", four_pass)):
            t0 = timer()
            for _ in range(20):
                fn(x)
            if device == "cuda":
                torch.cuda.synchronize()
            totals[name] += timer() - t0
    return {name: 1000 * t / n for name, t in totals.items()}


if __name__ == "__main__":
    main()
