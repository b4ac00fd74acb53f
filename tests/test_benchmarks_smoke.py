"""Benchmarks import without side effects and parse their flags (the runs themselves are too slow for CI)."""
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
NAMES = ["bench_input", "bench_step", "bench_gradcam", "bench_ddp", "bench_search", "bench_tta", "gpu_smoke"]


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
              "--workers", "0", "--repeats", "1", "--affine-p", "1", "--color-p", "1"])
    res = json.loads(capsys.readouterr().out.splitlines()[0])
    assert res["bench"] == "input" and (res["affine_p"], res["color_p"]) == (1.0, 1.0)
    assert res["num_images"] == 64 and res["ours_images_per_s"] > 0 and res["bare_images_per_s"] > 0


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
