"""The copy's penalty: a published CIFAR-10 reference trained on THIS project's CIFAR-10 copy, against its
published figure on the original release.

    python benchmarks/bench_reference.py --device cuda --data-dir $CIFAR_DIR        # 3 seeds on the GPU
    python benchmarks/bench_reference.py --device cpu                               # the data files only

The reference is airbench's 94% recipe (`airbench.train94`, PyPI airbench 0.1.8, MIT; Keller Jordan): its
own small network, 9.9 epochs on all 50,000 training images, flip + translate, and test-time augmentation
(mirror + 1-pixel translations, `tta_level=2`). Published: **94.01%** mean test accuracy over 1,000 runs
with that TTA on the original CIFAR-10 (lib_airbench94.py: "94.01 in n=1000 runs"; its README table). The
same recipe on our copy (the release's images through JPEG once, quality 75, 4:2:0) measures what the
copy costs, apart from anything in our own recipe.

airbench's `CifarLoader` reads `cifar10/train.pt` and `cifar10/test.pt` under the working folder when they
exist (a dict: `images` uint8 [N, 32, 32, 3], `labels` int64 [N], `classes`) instead of downloading. This
script writes them from our loader's arrays (`distributed.data.load_cifar10`) into --work-dir/cifar10/, a
folder of its own, and runs airbench from --work-dir. `train94` takes no seed: torch is seeded before each
call. Each seed is evaluated with `airbench.evaluate` at `tta_level` 0 (plain), 1 (mirror: our `--tta`)
and 2 (its published TTA).

airbench is CUDA-only (its network and data live on the GPU in fp16). On a CPU this script writes the files,
reads them back, lets airbench's own `CifarLoader` read them on the CPU when airbench is installed, and
trains nothing: it says so in its JSON line. A benchmark-only package: `pip install airbench==0.1.8`
(in the dev extra; on the GPU machine `.gpu/setup.sh` installs the wheel `../shared/gpu/pack.sh` builds).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any

PUBLISHED = {"recipe": "airbench94 (airbench.train94)", "package": "airbench==0.1.8", "test_acc_tta": 0.9401,
             "tta_level": 2, "runs": 1000, "data": "the original CIFAR-10 release",
             "source": "airbench 0.1.8, lib_airbench94.py ('94.01 in n=1000 runs') and its README table"}
TTA_LEVELS = {"test_acc_plain": 0, "test_acc_mirror": 1, "test_acc_tta": 2}
NOT_ON_CPU = ("airbench is CUDA-only (its network and data live on the GPU in fp16): on a CPU only the data "
              "files and the step's plumbing are checked; nothing was trained")


def parse_args(argv=None) -> argparse.Namespace:
    from _common import add_device_arg

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_device_arg(p)
    p.add_argument("--data-dir", default="data", help="folder holding cifar-10-batches-py/ (our copy)")
    p.add_argument("--work-dir", default="/tmp/airbench-reference",
                   help="airbench's working folder: cifar10/train.pt and test.pt are written under it")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds, one training each")
    p.add_argument("--live", default=None,
                   help="a JSON-lines file that gets one line per seed as soon as it ends (a GPU session's $OUT)")
    return p.parse_args(argv)


def write_airbench_data(data, folder: Path) -> dict[str, Any]:
    """`folder`/train.pt and test.pt in the format airbench's CifarLoader reads, from CifarArrays; each
    written to a temporary name and renamed, so airbench never sees half a file. Returns what was written."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, x, y in (("train", data.train_x, data.train_y), ("test", data.test_x, data.test_y)):
        if x.dtype.name != "uint8" or x.ndim != 4 or x.shape[1:] != (32, 32, 3):
            raise ValueError(f"{name} images must be uint8 [N, 32, 32, 3] (HWC), got {x.dtype} {x.shape}")
        path, tmp = folder / f"{name}.pt", folder / f".{name}.pt.partial"
        torch.save({"images": torch.from_numpy(x).contiguous(), "labels": torch.from_numpy(y).long(),
                    "classes": list(data.classes)}, tmp)
        os.replace(tmp, path)
        written[name] = {"path": str(path), "images": int(len(x)), "bytes": path.stat().st_size}
    return written


def read_back(folder: Path, data) -> dict[str, Any]:
    """The files as airbench loads them (torch.load), checked against the arrays they came from."""
    import numpy as np
    import torch

    out = {}
    for name, x, y in (("train", data.train_x, data.train_y), ("test", data.test_x, data.test_y)):
        d = torch.load(folder / f"{name}.pt", map_location="cpu", weights_only=True)
        out[name] = {"shape": list(d["images"].shape), "dtype": str(d["images"].dtype).replace("torch.", ""),
                     "labels_dtype": str(d["labels"].dtype).replace("torch.", ""), "classes": len(d["classes"]),
                     "same_as_loader": bool(np.array_equal(d["images"].numpy(), x)
                                            and np.array_equal(d["labels"].numpy(), y))}
    return out


def airbench_loader_check(work: Path) -> dict[str, Any] | None:
    """airbench's own CifarLoader reading our files on the CPU (None when airbench is not installed):
    the first augmented training batch and the test labels, as train94 and evaluate will get them."""
    try:
        import airbench
    except ImportError:
        return None
    import torch

    here = Path.cwd()
    os.chdir(work)
    try:
        n = len(torch.load("cifar10/train.pt", map_location="cpu", weights_only=True)["labels"])
        # train94's loader (batch 1024, flip + translate 2, alternating flips), on the CPU
        train = airbench.CifarLoader("cifar10", train=True, batch_size=min(1024, n), aug={"flip": True, "translate": 2},
                                     altflip=True, gpu="cpu")
        x, y = next(iter(train))
        test = airbench.CifarLoader("cifar10", train=False, batch_size=2000, gpu="cpu")
    finally:
        os.chdir(here)
    return {"train_batches": len(train), "batch_shape": list(x.shape), "batch_dtype": str(x.dtype),
            "batch_labels": int(len(y)), "test_images": int(len(test.images))}


def mean_sd(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (None for fewer than two values)."""
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def train_seeds(work: Path, seeds: list[int], live: Path | None) -> list[dict[str, Any]]:
    """train94 once per seed from `work` (where cifar10/ is), each evaluated at three TTA levels."""
    try:
        import airbench
    except ImportError:
        raise SystemExit("error: airbench is not installed: on the GPU machine `source .gpu/setup.sh` installs "
                         "the wheel that `bash ../shared/gpu/pack.sh` packs; elsewhere `pip install "
                         "airbench==0.1.8`") from None
    here = Path.cwd()
    os.chdir(work)  # CifarLoader('cifar10') is relative to the working folder
    try:
        return _train_seeds(airbench, seeds, live)
    finally:
        os.chdir(here)


def _train_seeds(airbench, seeds: list[int], live: Path | None) -> list[dict[str, Any]]:
    import time

    import torch

    with contextlib.redirect_stdout(sys.stderr):  # stdout's first line is the JSON result
        airbench.warmup94()  # one step: cuDNN's autotuning, so the first seed's seconds are not the warm-up's
    rows = []
    for seed in seeds:
        torch.manual_seed(seed)  # seeds CUDA too: airbench's shuffles and augmentation draw on the GPU
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        model = airbench.train94(verbose=False)
        torch.cuda.synchronize()
        row: dict[str, Any] = {"kind": "reference", "seed": seed, "train_s": round(time.perf_counter() - t0, 3)}
        test = airbench.CifarLoader("cifar10", train=False, batch_size=2000)
        row.update({k: round(airbench.evaluate(model, test, tta_level=lvl), 5) for k, lvl in TTA_LEVELS.items()})
        rows.append(row)
        print(f"reference seed {seed}: test {row['test_acc_plain']:.4f} plain, {row['test_acc_mirror']:.4f} mirror, "
              f"{row['test_acc_tta']:.4f} with its TTA; {row['train_s']:.1f} s", file=sys.stderr, flush=True)
        if live is not None:
            append_line(live, row)
    return rows


def append_line(path: Path, row: dict[str, Any]) -> None:
    """One JSON line, on disk before the next run starts (a call killed at its limit keeps it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def main(argv=None) -> None:
    args = parse_args(argv)  # first: --help and a bad flag answer before the heavy imports
    from _common import base_info, emit, resolve_device
    from distributed.data import load_cifar10

    device = resolve_device(args.device)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    work = Path(args.work_dir).resolve()
    data = load_cifar10(args.data_dir, download=False)
    written = write_airbench_data(data, work / "cifar10")
    res = base_info("reference", device)
    res.update(published=PUBLISHED, data_dir=str(Path(args.data_dir).resolve()), files=written,
               read_back=read_back(work / "cifar10", data), seeds=[], trained=False)
    if device == "cpu":
        res.update(not_trained=NOT_ON_CPU, airbench_loader_cpu=airbench_loader_check(work))
        emit(res, f"reference [cpu]: wrote {written['train']['images']:,} + {written['test']['images']:,} images "
                  f"to {work / 'cifar10'}; {NOT_ON_CPU}")
        return
    from importlib import metadata

    rows = train_seeds(work, seeds, Path(args.live).resolve() if args.live else None)
    try:
        version = metadata.version("airbench")
    except metadata.PackageNotFoundError:  # importable without its metadata (a copied source tree)
        version = None
    res.update(trained=True, airbench=version, seeds=rows)
    for key in TTA_LEVELS:
        res[f"mean_{key}"], res[f"sd_{key}"] = mean_sd([r[key] for r in rows])
    # Points below the published figure, like against like (its TTA on both sides).
    res["penalty_points_tta"] = round(100 * (PUBLISHED["test_acc_tta"] - res["mean_test_acc_tta"]), 3)
    emit(res, f"reference [{res['device_name']}]: airbench94 on our copy, {len(rows)} seeds: "
              f"{100 * res['mean_test_acc_plain']:.2f}% plain, {100 * res['mean_test_acc_tta']:.2f}% with its TTA "
              f"(published {100 * PUBLISHED['test_acc_tta']:.2f}% on the original: "
              f"{res['penalty_points_tta']:+.2f} points)")


if __name__ == "__main__":
    main()
