"""Benchmarks import without side effects and parse their flags (the runs themselves are too slow for CI)."""
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
NAMES = ["bench_input", "bench_step", "bench_gradcam", "bench_ddp", "bench_search", "bench_tta", "gpu_smoke",
         "bench_reference"]


@pytest.mark.parametrize("name", NAMES)
def test_help(name):
    out = subprocess.run([sys.executable, str(BENCH / f"{name}.py"), "--help"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "--device" in out.stdout


@pytest.mark.parametrize("name", NAMES)
def test_import_is_light(name):
    sys.path.insert(0, str(BENCH))
    before = set(sys.modules)
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCH / f"{name}.py")
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
    assert "ray" not in set(sys.modules) - before


def test_step_runs_tiny(monkeypatch, capsys):
    sys.path.insert(0, str(BENCH))
    import json

    spec = importlib.util.spec_from_file_location("_bench_step_run", BENCH / "bench_step.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")
    mod.main(["--device", "cpu", "--batch-size", "2", "--steps", "1", "--repeats", "1"])
    res = json.loads(capsys.readouterr().out.splitlines()[0])
    assert res["bench"] == "step" and res["ours_step_s"] > 0 and res["ratio_ours_over_bare"] > 0


def test_input_runs_tiny_with_the_search_only_transforms_on(fake_cifar, capsys):
    sys.path.insert(0, str(BENCH))
    import json

    spec = importlib.util.spec_from_file_location("_bench_input_run", BENCH / "bench_input.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.main(["--device", "cpu", "--data-dir", str(fake_cifar), "--num-images", "64", "--batch-size", "16",
              "--workers", "2", "--repeats", "1", "--affine-p", "1", "--color-p", "1"])
    res = json.loads(capsys.readouterr().out.splitlines()[0])
    assert res["bench"] == "input" and (res["affine_p"], res["color_p"]) == (1.0, 1.0)
    assert res["num_images"] == 64 and res["ours_images_per_s"] > 0 and res["bare_images_per_s"] > 0
    assert res["ours_fd_images_per_s"] > 0 and res["handover_speedup"] > 0  # the handover's own before/after
    assert res["ours_files_images_per_s"] > 0 and res["slots_speedup"] > 0  # reused slots against a file a batch
    assert res["ours_through_slots"] == 1.0  # no worker ever found its slots all taken
    # what 2 busy processes get from this machine, beside the loader's 2 workers
    assert res["bare_parallel_images_per_s"] > 0 and res["machine_scaling"] > 0
    assert res["per_worker_efficiency_of_machine"] == pytest.approx(
        res["per_worker_efficiency"] / res["machine_scaling"], rel=0.01)
    # the training process's own share of the cores, per timed epoch; ModelInput against the four passes
    # it replaced (the benchmark checks that both give the same input)
    assert len(res["trainer_cores_all"]) == 1 and res["trainer_cores"] == res["trainer_cores_all"][0] > 0
    assert res["consumer_ms_per_batch"] > 0 and res["consumer_ms_per_batch_four_pass"] > 0
    # where the workers' time went, from the scheduler's counts: running and waiting for a core are
    # shares of the epoch (a worker's queue thread can run beside its main one), idle is the rest
    running, waiting = res["workers_running"], res["workers_runqueue_wait"]
    assert res["workers_running_all"] == [running] and 0 < running <= 1.5 and 0 <= waiting <= 1.5
    assert res["workers_idle"] == pytest.approx(max(0.0, 1 - running - waiting), abs=0.002)


@pytest.mark.parametrize("name, bf16, peak", [
    ("NVIDIA H100 80GB HBM3", True, 989.0),   # SXM
    ("NVIDIA H100 PCIe", True, 756.0),        # must not take the SXM figure: MFU would read 24% low
    ("NVIDIA H100 NVL", False, 417.5),
    ("NVIDIA H200", True, 989.0),
    ("NVIDIA GeForce RTX 4090", True, None),  # unknown: no MFU rather than a wrong one
])
def test_mfu_peak_is_chosen_by_the_most_specific_gpu_name(name, bf16, peak):
    sys.path.insert(0, str(BENCH))
    from _common import peak_for_name
    assert peak_for_name(name, bf16) == peak


def _load(name: str):
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(f"_bench_{name}_run", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_reference_on_cpu_writes_what_airbench_reads_and_trains_nothing(fake_cifar, tmp_path, capsys):
    """The copy's penalty step on a CPU: airbench's cifar10/train.pt and test.pt hold our loader's arrays
    (uint8 [N, 32, 32, 3], int64 labels, the class names), in a folder of their own; airbench's own
    CifarLoader reads them when it is installed; and the JSON line says that nothing was trained."""
    import json

    import numpy as np
    import torch

    from distributed.data import load_cifar10

    _load("bench_reference").main(["--device", "cpu", "--data-dir", str(fake_cifar), "--work-dir", str(tmp_path / "ab")])
    res = json.loads(capsys.readouterr().out.splitlines()[0])
    assert res["bench"] == "reference" and res["trained"] is False and res["seeds"] == []
    assert "CUDA-only" in res["not_trained"] and res["published"]["test_acc_tta"] == 0.9401
    arrays = load_cifar10(fake_cifar, download=False)
    for name, x, y in (("train", arrays.train_x, arrays.train_y), ("test", arrays.test_x, arrays.test_y)):
        d = torch.load(tmp_path / "ab" / "cifar10" / f"{name}.pt", weights_only=True)
        assert d["images"].dtype == torch.uint8 and tuple(d["images"].shape) == (len(x), 32, 32, 3)
        assert d["labels"].dtype == torch.int64 and np.array_equal(d["labels"].numpy(), y)
        assert np.array_equal(d["images"].numpy(), x) and d["classes"] == list(arrays.classes)
        assert res["read_back"][name]["same_as_loader"] and res["files"][name]["images"] == len(x)
    assert sorted(p.name for p in (tmp_path / "ab" / "cifar10").iterdir()) == ["test.pt", "train.pt"]
    if importlib.util.find_spec("airbench") is not None:  # the dev extra installs it
        assert res["airbench_loader_cpu"] == {"train_batches": 1, "batch_shape": [500, 3, 32, 32],
                                              "batch_dtype": "torch.float16", "batch_labels": 500,
                                              "test_images": 100}


def test_reference_on_the_gpu_seeds_each_training_and_keeps_each_seed_as_it_ends(fake_cifar, tmp_path,
                                                                                 monkeypatch, capsys):
    """The GPU path with airbench and CUDA stood in for (airbench needs both): torch is seeded before each
    train94, which runs where cifar10/ is; every seed is evaluated at tta_level 0, 1 and 2 and its line
    is in the live file before the next starts; means, sample sd and the penalty against 94.01% follow."""
    import json
    import os
    import statistics
    import types

    import torch

    import _common

    mod = _load("bench_reference")
    live = tmp_path / "out" / "trainings.jsonl"
    seen = []

    def train94(verbose=True):
        assert os.path.exists("cifar10/train.pt") and not verbose
        seen.append((torch.initial_seed(), len(live.read_text().splitlines()) if live.exists() else 0))
        return types.SimpleNamespace(seed=torch.initial_seed())

    class CifarLoader:
        def __init__(self, path, train=True, batch_size=500, **kw):
            assert path == "cifar10" and os.path.exists(f"cifar10/{'train' if train else 'test'}.pt")

    fake = types.SimpleNamespace(warmup94=lambda: print("warm-up table"), train94=train94, CifarLoader=CifarLoader,
                                 evaluate=lambda model, loader, tta_level=0: 0.90 + 0.01 * tta_level + 0.001 * model.seed)
    monkeypatch.setitem(sys.modules, "airbench", fake)
    monkeypatch.setattr(_common, "resolve_device", lambda name: "cuda")
    monkeypatch.setattr(_common, "device_name", lambda device: "FAKE GPU")
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)
    cwd = os.getcwd()
    mod.main(["--device", "cuda", "--data-dir", str(fake_cifar), "--work-dir", str(tmp_path / "ab"),
              "--live", str(live)])
    assert os.getcwd() == cwd
    out = capsys.readouterr().out
    res = json.loads(out.splitlines()[0])  # airbench's warm-up table goes to stderr, not before the JSON
    assert seen == [(0, 0), (1, 1), (2, 2)]  # seeded before each, the previous seed's line already written
    assert [json.loads(x)["seed"] for x in live.read_text().splitlines()] == [0, 1, 2]
    assert res["trained"] and res["device_name"] == "FAKE GPU" and len(res["seeds"]) == 3
    assert {k: res["seeds"][2][k] for k in ("seed", "test_acc_plain", "test_acc_mirror", "test_acc_tta")} == \
        {"seed": 2, "test_acc_plain": 0.902, "test_acc_mirror": 0.912, "test_acc_tta": 0.922}
    tta = [0.92, 0.921, 0.922]
    assert res["mean_test_acc_tta"] == pytest.approx(statistics.fmean(tta))
    assert res["sd_test_acc_tta"] == pytest.approx(statistics.stdev(tta))
    assert res["penalty_points_tta"] == pytest.approx(100 * (0.9401 - 0.921), abs=1e-3)
