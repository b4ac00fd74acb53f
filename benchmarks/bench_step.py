"""Training step: our `train_one_epoch` against a bare PyTorch loop, same model/batch/precision.

Both are fed from in-memory batches already on the device (no data loading). Ours gets uint8 NHWC
images, as the loader sends them since the loader work, and normalises them on the device (`ModelInput`:
dtype, memory format and Normalize in one pass); the bare loop gets float batches already normalised.
So the difference is what our loop adds, device normalisation included: Accelerate's prepared
model/optimizer, `accelerator.backward`, the per-step OneCycle scheduler step, the running
loss/accuracy sums and the end-of-epoch reduce.
The two are interleaved (ours, bare, bare, ours, ...) and the medians compared.  Goal: ratio <= 1.05.

MFU = FLOPs per image (counted with FlopCounterMode on one forward+backward) x images/s / peak.

    python benchmarks/bench_step.py                               # CPU: tiny sizes
    python benchmarks/bench_step.py --device cuda --bf16 --channels-last --batch-size 512 --steps 50
"""
from __future__ import annotations

import argparse
import copy


def parse_args(argv=None) -> argparse.Namespace:
    from _common import add_device_arg

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_device_arg(p)
    p.add_argument("--batch-size", type=int, default=None, help="per step (default: 512 cuda, 16 cpu)")
    p.add_argument("--steps", type=int, default=None, help="steps per timed chunk (default: 30 cuda, 3 cpu)")
    p.add_argument("--repeats", type=int, default=None, help="timed chunks of each (default: 5 cuda, 3 cpu)")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast in both")
    p.add_argument("--channels-last", action="store_true", help="channels_last model and inputs in both")
    p.add_argument("--compile", action="store_true", help="torch.compile (inductor) in both")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="device peak for MFU (default by GPU name: H100/H200 989 bf16, 494.5 tf32; CPU: none)")
    return p.parse_args(argv)


def flops_per_image(model, device: str, channels_last: bool, bf16: bool) -> float:
    """FLOPs of one forward+backward of one image (counted on a batch of 4, divided)."""
    import torch
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    m = copy.deepcopy(model).train()
    x = torch.randn(4, 3, 32, 32, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.zeros(4, dtype=torch.long, device=device)
    counter = FlopCounterMode(display=False)
    with counter, torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16):
        F.cross_entropy(m(x), y).backward()
    return counter.get_total_flops() / 4


def main(argv=None) -> None:
    args = parse_args(argv)  # first: --help and a bad flag answer before the heavy imports
    import torch

    from _common import (ListLoader, bare_train_steps, base_info, default_peak_tflops, emit,
                         median, r, resolve_device, sync, synthetic_batches, timer, training_optimizer)
    from distributed.augment import ModelInput
    from distributed.config import TrainConfig
    from distributed.engine import train_one_epoch
    from distributed.pipeline import Pipeline, build_accelerator, build_scheduler
    from distributed.model import resnet18

    device = resolve_device(args.device)
    if device == "cpu":
        import os
        os.environ.setdefault("ACCELERATE_USE_CPU", "true")
    gpu = device == "cuda"
    bs = args.batch_size or (512 if gpu else 16)
    steps = args.steps or (30 if gpu else 3)
    repeats = args.repeats or (5 if gpu else 3)
    warmup_chunks = 2 if args.compile else 1

    cfg = TrainConfig(mixed_precision="bf16" if args.bf16 else "no", compile=args.compile,
                      channels_last=args.channels_last, batch_size=bs, epochs=repeats + warmup_chunks + 1,
                      num_workers=0, val_size=0)
    accelerator = build_accelerator(cfg)
    if accelerator.device.type != device:
        raise SystemExit(f"Accelerate chose {accelerator.device}, asked for {device}")
    torch.backends.cudnn.benchmark = True  # as fit() does

    torch.manual_seed(0)
    model = resnet18()
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    flops_img = flops_per_image(model.to(device), device, args.channels_last, args.bf16)

    # Bare loop: its own copy of the same initial weights, same optimiser settings.
    bare_model = copy.deepcopy(model).to(device)
    bare_opt = training_optimizer(bare_model.parameters())
    bare_run = torch.compile(bare_model) if args.compile else bare_model

    # Ours: Accelerate-prepared model/optimizer, the real train_one_epoch over an in-memory loader.
    opt = training_optimizer(model.parameters(), lr=cfg.effective_max_lr)
    model, opt = accelerator.prepare(model, opt)
    # Ours gets what the loader sends (uint8 images) and normalises them on the device, as fit does;
    # the bare loop gets ready float input: the least any training step must do.
    batches = synthetic_batches(steps, bs, device, args.channels_last)
    uint8_batches = synthetic_batches(steps, bs, device, args.channels_last, uint8=True)
    mean, std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
    pipe = Pipeline(split=None, mean=mean, std=std, num_classes=10, train_loader=ListLoader(uint8_batches),
                    val_loader=None, test_loader=None, model=model, optimizer=opt,
                    to_input=ModelInput(mean, std, channels_last=args.channels_last and gpu))
    scheduler = build_scheduler(cfg, opt, steps)

    epoch = 0

    def ours_chunk() -> float:
        nonlocal epoch
        sync(device)
        t0 = timer()
        train_one_epoch(cfg, accelerator, pipe, scheduler, epoch, progress=False)
        sync(device)
        epoch += 1
        return (timer() - t0) / steps

    def bare_chunk() -> float:
        return bare_train_steps(bare_run, bare_opt, batches, steps, device, args.bf16,
                                label_smoothing=cfg.label_smoothing) / steps

    for _ in range(warmup_chunks):
        ours_chunk()
        bare_chunk()
    ours_t, bare_t = [], []
    for i in range(repeats):  # alternate the order so drifting load hits both alike
        if i % 2 == 0:
            ours_t.append(ours_chunk())
            bare_t.append(bare_chunk())
        else:
            bare_t.append(bare_chunk())
            ours_t.append(ours_chunk())

    ours_s, bare_s = median(ours_t), median(bare_t)
    ratio = ours_s / bare_s
    pair_ratio = median([o / b for o, b in zip(ours_t, bare_t)])
    peak = args.peak_tflops if args.peak_tflops is not None else default_peak_tflops(device, args.bf16)
    ours_ips, bare_ips = bs / ours_s, bs / bare_s

    def mfu(ips: float):
        return None if not peak else r(flops_img * ips / (peak * 1e12), 5)

    res = base_info("step", device)
    res.update({
        "batch_size": bs, "steps_per_chunk": steps, "repeats": repeats, "bf16": args.bf16,
        "channels_last": args.channels_last, "compile": args.compile,
        "ours_step_s": r(ours_s, 5), "bare_step_s": r(bare_s, 5),
        "ours_images_per_s": r(ours_ips, 2), "bare_images_per_s": r(bare_ips, 2),
        "ratio_ours_over_bare": r(ratio, 4), "median_pair_ratio": r(pair_ratio, 4),
        "goal_ratio_max": 1.05, "goal_met": ratio <= 1.05,
        "gflops_per_image_fwd_bwd": r(flops_img / 1e9, 4), "peak_tflops": peak,
        "ours_mfu": mfu(ours_ips), "bare_mfu": mfu(bare_ips),
        "ours_step_s_all": [r(t, 5) for t in ours_t], "bare_step_s_all": [r(t, 5) for t in bare_t],
    })
    mfu_txt = f", MFU {res['ours_mfu']:.1%}" if res["ours_mfu"] is not None else ", MFU n/a (no --peak-tflops)"
    emit(res, f"step [{device}, bs {bs}{', bf16' if args.bf16 else ''}{', channels_last' if args.channels_last else ''}"
              f"{', compile' if args.compile else ''}]: ours {ours_s * 1e3:.1f} ms ({ours_ips:,.1f} img/s) vs bare "
              f"{bare_s * 1e3:.1f} ms ({bare_ips:,.1f} img/s) -> ratio {ratio:.3f} "
              f"({'meets' if ratio <= 1.05 else 'misses'} <= 1.05){mfu_txt}")


if __name__ == "__main__":
    main()
