"""Smoke test of a GPU machine: what a first GPU run fails on and no CPU test exercises, in seconds.

    python benchmarks/gpu_smoke.py torch --data-dir $CIFAR_DIR   # CUDA, bf16 + channels_last forward/backward,
                                                                 # pinned non-blocking copies, a 1-epoch `fit`
    python benchmarks/gpu_smoke.py ray                           # Ray sees the GPU; 4 tasks of 0.25 GPU run at once
    python benchmarks/gpu_smoke.py torch --device cpu --tiny     # the same checks on CPU (the session's dry run)

`benchmarks/gpu_session.py` runs both first. Prints one JSON line and a summary line; a failed check
exits 1 with one line naming it, so a session stops within seconds instead of failing minutes later.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time


class SmokeError(RuntimeError):
    """A failed check; the message says which and what it means."""


def parse_args(argv=None) -> argparse.Namespace:
    from _common import add_device_arg

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("part", choices=("torch", "ray"), help="torch: CUDA, bf16, channels_last, a tiny fit; "
                                                           "ray: fractional GPUs")
    add_device_arg(p)
    p.add_argument("--data-dir", default="data", help="torch: folder holding cifar-10-batches-py/")
    p.add_argument("--work-dir", default=None, help="torch: where the tiny fit writes its run (default: a temp dir)")
    p.add_argument("--tiny", action="store_true", help="torch: CPU-sized fit (60 images)")
    p.add_argument("--num-cpus", type=int, default=None, help="ray: CPUs of the local Ray (default: all)")
    return p.parse_args(argv)


def torch_checks(device: str, data_dir: str, work_dir: str, tiny: bool) -> dict:
    """bf16 + channels_last forward/backward of ResNet18, a pinned non-blocking copy, then the recipe's own
    `fit` for one epoch on a subset (Accelerate prepare, loader workers, checkpoint, test evaluation)."""
    import torch
    import torch.nn.functional as F

    from distributed.config import TrainConfig
    from distributed.engine import fit
    from distributed.model import resnet18

    gpu = device == "cuda"
    info: dict = {"torch": torch.__version__, "torch_cuda": torch.version.cuda,
                  "cudnn": torch.backends.cudnn.version() if gpu else None}
    if gpu:
        props = torch.cuda.get_device_properties(0)
        info.update(gpu_count=torch.cuda.device_count(), capability=f"{props.major}.{props.minor}",
                    gpu_memory_gib=round(props.total_memory / 2**30, 1), bf16_supported=torch.cuda.is_bf16_supported())
        if not info["bf16_supported"]:
            raise SmokeError(f"{torch.cuda.get_device_name(0)} does not support bf16: the recipe's precision "
                             f"(--mixed-precision auto) would fall back to fp32 and every figure would differ")

    t0 = time.perf_counter()
    torch.backends.cudnn.benchmark = True
    model = resnet18().to(device).to(memory_format=torch.channels_last)
    x = torch.randn(8 if tiny else 512, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (x.shape[0],), device=device)
    for _ in range(2):  # the second step runs on the kernels cuDNN picked in the first
        with torch.autocast(device_type=device, dtype=torch.bfloat16):
            out = model(x)
            loss = F.cross_entropy(out, y)
        loss.backward()
    if out.dtype != torch.bfloat16:
        raise SmokeError(f"autocast bf16 produced {out.dtype} logits: bf16 autocast is not active on {device}")
    grads_finite = all(bool(torch.isfinite(p.grad).all()) for p in model.parameters() if p.grad is not None)
    if not (torch.isfinite(loss).item() and grads_finite):
        raise SmokeError("bf16 + channels_last forward/backward gave a non-finite loss or gradient")
    info["bf16_channels_last_fwd_bwd_s"] = round(time.perf_counter() - t0, 3)

    host = torch.arange(1 << 20, dtype=torch.float32)
    if gpu:
        host = host.pin_memory()
    moved = host.to(device, non_blocking=gpu)
    if gpu:
        torch.cuda.synchronize()
    if not torch.equal(moved.cpu(), host):
        raise SmokeError("a pinned, non-blocking host-to-device copy arrived corrupted")
    info["pinned_copy"] = gpu

    # The recipe itself, one short epoch: what train.py runs, on this device.
    sizes = (dict(subset=60, val_size=20, test_subset=20, batch_size=10, eval_batch_size=20, num_workers=1)
             if tiny else dict(subset=2048, val_size=512, test_subset=512, batch_size=256))
    # A small peak rate: six steps must not diverge (a non-finite loss would stop the session here).
    cfg = TrainConfig(name="smoke", data_dir=data_dir, runs_dir=work_dir, download=False, epochs=1, max_lr=0.05,
                      **sizes)
    t0 = time.perf_counter()
    summary = fit(cfg, progress=False)
    info["fit_s"] = round(time.perf_counter() - t0, 2)
    info["fit_mixed_precision"] = summary.get("mixed_precision")
    info["fit_device"] = summary.get("device")
    if gpu and summary.get("mixed_precision") != "bf16":
        raise SmokeError(f"the tiny fit ran in {summary.get('mixed_precision')!r}, not bf16: "
                         f"check --mixed-precision auto on this GPU")
    if gpu and "cpu" in str(summary.get("device", "")).lower():
        raise SmokeError(f"the tiny fit ran on {summary.get('device')}, not on the GPU")
    if summary.get("test_acc") is None:
        raise SmokeError("the tiny fit finished without a test accuracy")
    return info


def ray_checks(device: str, num_cpus: int | None) -> dict:
    """Ray sees the GPU (on CPU: a pretend one), and four tasks of 0.25 GPU each hold it at the same time,
    as four search trials of `--gpus-per-trial 0.25` do; on a GPU each task also runs a bf16 matmul."""
    import ray

    gpu = device == "cuda"
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    kwargs = {"include_dashboard": False, "logging_level": "WARNING", "num_cpus": num_cpus}
    if not gpu:
        kwargs["num_gpus"] = 1  # fractional scheduling is the same bookkeeping with a pretend GPU
        os.environ.pop("CUDA_VISIBLE_DEVICES", None)  # Ray refuses a pretend GPU that this hides
    t0 = time.perf_counter()
    ray.init(**kwargs)
    try:
        res = ray.cluster_resources()
        if res.get("GPU", 0) < 1:
            raise SmokeError(f"Ray does not see the GPU (cluster resources {res}): search trials would "
                             f"never start with --gpus-per-trial > 0")
        cpus = min(1.0, res.get("CPU", 1) / 4)

        @ray.remote(num_cpus=0)
        class Count:
            """How many probes have arrived: 4 at once proves the 0.25-GPU shares are held together."""

            def __init__(self) -> None:
                self.n = 0

            def arrive(self) -> int:
                self.n += 1
                return self.n

            def value(self) -> int:
                return self.n

        @ray.remote(num_gpus=0.25, num_cpus=cpus)
        def probe(count, on_gpu: bool) -> dict:
            out = {"gpu_ids": [str(g) for g in ray.get_gpu_ids()],
                   "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}
            if on_gpu:
                import torch

                out["cuda"] = torch.cuda.is_available()
                if out["cuda"]:
                    a = torch.randn(1024, 1024, device="cuda", dtype=torch.bfloat16)
                    out["matmul_finite"] = bool(torch.isfinite(a @ a).all())
                    out["name"] = torch.cuda.get_device_name(0)
            ray.get(count.arrive.remote())
            deadline = time.time() + 60
            while ray.get(count.value.remote()) < 4 and time.time() < deadline:
                time.sleep(0.05)
            out["all_four_at_once"] = ray.get(count.value.remote()) >= 4
            return out

        count = Count.remote()
        tasks = ray.get([probe.remote(count, gpu) for _ in range(4)], timeout=120)
    finally:
        ray.shutdown()
    info = {"ray": ray.__version__, "cluster_cpus": res.get("CPU"), "cluster_gpus": res.get("GPU"),
            "pretend_gpu": not gpu, "tasks": tasks, "seconds": round(time.perf_counter() - t0, 2)}
    if not all(t["all_four_at_once"] for t in tasks):
        raise SmokeError("four tasks of 0.25 GPU did not run at once: fractional GPUs do not share one GPU here")
    if gpu and not all(t.get("cuda") and t.get("matmul_finite") for t in tasks):
        raise SmokeError(f"a Ray task of 0.25 GPU could not use CUDA (CUDA_VISIBLE_DEVICES per task: "
                         f"{[t['cuda_visible_devices'] for t in tasks]})")
    return info


def main(argv=None) -> None:
    from _common import base_info, emit, resolve_device

    args = parse_args(argv)
    device = resolve_device(args.device)
    res = base_info(f"smoke-{args.part}", device)
    try:
        if args.part == "torch":
            with tempfile.TemporaryDirectory() as tmp:
                res.update(torch_checks(device, args.data_dir, args.work_dir or tmp, args.tiny))
        else:
            res.update(ray_checks(device, args.num_cpus))
    except SmokeError as e:
        raise SystemExit(f"smoke {args.part} failed on {res['device_name']}: {e}") from None
    res["ok"] = True
    emit(res, f"smoke {args.part} [{res['device_name']}]: ok")


if __name__ == "__main__":
    main()
