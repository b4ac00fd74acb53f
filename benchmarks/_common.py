"""Small helpers shared by the benchmarks: device choice, medians, the one JSON line, synthetic batches.

Nothing heavy happens at import time; torch is imported inside the functions that need it.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Sequence

# bf16 dense tensor-core peaks (TFLOP/s, NVIDIA data sheets: half the "with sparsity" figures) and
# the TF32 dense peaks used for fp32 runs (cuDNN convolutions use TF32 by default). The first key
# found in the device name wins, so the PCIe and NVL variants come before the SXM parts.
PEAK_TFLOPS = {
    "H100 PCIe": {"bf16": 756.0, "fp32": 378.0},
    "H100 NVL": {"bf16": 835.5, "fp32": 417.5},
    "H200 NVL": {"bf16": 835.5, "fp32": 417.5},
    "H100": {"bf16": 989.0, "fp32": 494.5},
    "H200": {"bf16": 989.0, "fp32": 494.5},
    "A100": {"bf16": 312.0, "fp32": 156.0},
}


def add_device_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto: cuda when available, else cpu")


def resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible")
    return name


def device_name(device: str) -> str:
    import torch

    if device == "cuda":
        return torch.cuda.get_device_name(0)
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{model} ({cores} cores)"


def default_peak_tflops(device: str, bf16: bool) -> float | None:
    """Peak for MFU by GPU name; None on CPU (no honest default there) or an unknown GPU."""
    return peak_for_name(device_name(device), bf16) if device == "cuda" else None


def peak_for_name(name: str, bf16: bool) -> float | None:
    """The data-sheet peak of the first `PEAK_TFLOPS` key in a GPU's name, or None."""
    for key, peaks in PEAK_TFLOPS.items():
        if key in name:
            return peaks["bf16" if bf16 else "fp32"]
    return None


def sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def timer() -> float:
    return time.perf_counter()


def emit(result: dict[str, Any], summary: str) -> None:
    """The benchmark's output: ONE JSON line, then one human line."""
    print(json.dumps(result, sort_keys=False, default=_jsonable), flush=True)
    print(summary, flush=True)


def _jsonable(v: Any) -> Any:
    try:
        return float(v)
    except (TypeError, ValueError):
        return str(v)


def base_info(bench: str, device: str) -> dict[str, Any]:
    import torch

    return {"bench": bench, "device": device, "device_name": device_name(device), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d", time.gmtime())}


def r(x: float | None, nd: int = 4) -> float | None:
    return None if x is None else round(float(x), nd)


class ListLoader:
    """In-memory 'loader': a fixed list of (x, y, idx) batches already on the device.

    Stands in for the prepared DataLoader so a training step is timed without data loading.
    """

    def __init__(self, batches: list[tuple[Any, Any, Any]]) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        return iter(self.batches)

    def set_epoch(self, epoch: int) -> None:
        """The engine sets the epoch on the loader (shuffling); fixed batches ignore it."""


def synthetic_batches(n: int, batch_size: int, device: str, channels_last: bool, seed: int = 0,
                      num_classes: int = 10, uint8: bool = False):
    """n distinct random batches (x, labels, indices) on the device: normalised-image-like floats
    [B, 3, 32, 32], or (`uint8`) what the loader sends, uint8 images [B, 32, 32, 3]."""
    import torch

    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        if uint8:
            x = torch.randint(0, 256, (batch_size, 32, 32, 3), generator=g, dtype=torch.uint8)
        else:
            x = torch.randn(batch_size, 3, 32, 32, generator=g)
        y = torch.randint(0, num_classes, (batch_size,), generator=g)
        x = x.to(device)
        if channels_last and not uint8:
            x = x.contiguous(memory_format=torch.channels_last)
        out.append((x, y.to(device), torch.arange(batch_size, device=device)))
    return out


def bare_train_steps(model, optimizer, batches, steps: int, device: str, bf16: bool,
                     label_smoothing: float = 0.1) -> float:
    """Plain PyTorch: forward, loss, backward, SGD step, zero_grad; returns seconds for `steps` steps."""
    import torch
    import torch.nn.functional as F

    model.train()
    sync(device)
    t0 = timer()
    for i in range(steps):
        x, y, _ = batches[i % len(batches)]
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16):
            out = model(x)
            loss = F.cross_entropy(out, y, label_smoothing=label_smoothing)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    sync(device)
    return timer() - t0


def training_optimizer(params, lr: float | None = None):
    """The optimiser training builds (`distributed.pipeline.build_optimizer`) from the default
    TrainConfig, at `lr` (default: OneCycle's starting rate, max_lr / div_factor, at batch 512)."""
    from distributed.config import TrainConfig
    from distributed.pipeline import build_optimizer

    cfg = TrainConfig()
    return build_optimizer(cfg.replace(max_lr=lr if lr is not None else cfg.effective_max_lr / cfg.div_factor), params)
