"""Input pipeline: training images/s of our DataLoader against a bare single-process Albumentations loop.

Ours: `CifarDataset` + `make_loader` (N workers, per-batch `__getitems__`) with the training
transform `build_train_transform(AugConfig(), mean, std)`, iterating whole epochs over the first
`--num-images` CIFAR-10 training images.  Bare: the same `A.Compose` applied image by image to the
same images in this process, stacked into batches (the minimum work any loader must do).
The first loader epoch (worker start-up) is not timed; timed epochs alternate with bare passes.

    per-worker efficiency = ours / (N x bare)     (1.0 = perfect scaling over workers)

With `--device cuda` it also times a bf16 training step on synthetic batches: the rate at which
the GPU consumes images, so `loader_over_gpu` >= 1 means the loader can keep the GPU fed.

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
    import os

    import cv2
    import numpy as np
    import torch

    from _common import (bare_train_steps, base_info, emit, median, r, resolve_device, training_optimizer,
                         synthetic_batches, timer)
    from distributed.augment import build_train_transform
    from distributed.config import AugConfig
    from distributed.data import CifarDataset, channel_stats, load_cifar10, make_loader
    from distributed.model import resnet18

    args = parse_args(argv)
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
    tf = build_train_transform(aug, mean, std)

    ds = CifarDataset(data.train_x, data.train_y, idx, tf, seed=0, channels_last=channels_last)
    loader = make_loader(ds, bs, shuffle=True, seed=0, num_workers=workers, drop_last=True,
                                  pin_memory=gpu)
    batches_per_epoch = len(loader)
    images_per_epoch = batches_per_epoch * bs

    epoch = 0

    def ours_epoch() -> float:
        nonlocal epoch
        loader.sampler.set_epoch(epoch)
        epoch += 1
        t0 = timer()
        for x, y, _ in loader:
            pass
        return timer() - t0

    # Bare: one process, the same Compose, the same images, stacked per batch like __getitems__.
    cv2.setNumThreads(0)  # as our workers do
    bare_tf = build_train_transform(aug, mean, std)
    images = data.train_x[:images_per_epoch]

    def bare_pass() -> float:
        t0 = timer()
        for s in range(0, images_per_epoch, bs):
            b = np.stack([bare_tf(image=img)["image"] for img in images[s:s + bs]])
            torch.from_numpy(b).permute(0, 3, 1, 2).contiguous()
        return timer() - t0

    startup = ours_epoch()  # worker start-up + first epoch: not timed as throughput
    ours_t, bare_t = [], []
    for i in range(args.repeats):
        if i % 2 == 0:
            bare_t.append(bare_pass())
            ours_t.append(ours_epoch())
        else:
            ours_t.append(ours_epoch())
            bare_t.append(bare_pass())
    ours_ips = images_per_epoch / median(ours_t)
    bare_ips = images_per_epoch / median(bare_t)
    eff = ours_ips / (max(1, workers) * bare_ips)

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
        "ours_images_per_s": r(ours_ips, 1), "bare_images_per_s": r(bare_ips, 1),
        "per_worker_efficiency": r(eff, 3), "first_epoch_s_incl_startup": r(startup, 3),
        "gpu_step_images_per_s_bf16": r(gpu_ips, 1),
        "loader_over_gpu": r(ours_ips / gpu_ips, 3) if gpu_ips else None,
        "ours_epoch_s_all": [r(t, 3) for t in ours_t], "bare_pass_s_all": [r(t, 3) for t in bare_t],
    })
    gpu_txt = (f"; GPU bf16 step eats {gpu_ips:,.0f} img/s -> loader/GPU {ours_ips / gpu_ips:.2f}"
               if gpu_ips else "")
    emit(res, f"input [{workers} workers, bs {bs}, {images_per_epoch} images, affine p {aug.affine_p}, "
              f"colour p {aug.color_p}]: ours {ours_ips:,.0f} img/s vs bare "
              f"1-process {bare_ips:,.0f} img/s -> per-worker efficiency {eff:.2f}{gpu_txt}")


if __name__ == "__main__":
    main()
