"""A stand-in for torchvision's CIFAR-10 download, for tests that launch real training processes.

Put this folder on PYTHONPATH and set FAKE_CIFAR_SOURCE (a folder holding cifar-10-batches-py/)
and FAKE_CIFAR_LOG (a file): in every process torchrun starts (RANK is set), `torchvision.datasets.
CIFAR10(root, download=True)` then copies the source files into root, one by one and slowly, like
an unpacking archive, and appends "RANK ROOT" to the log. Tests read the log to count downloads.
"""
import os

if os.environ.get("FAKE_CIFAR_SOURCE") and "RANK" in os.environ:
    import shutil
    import time
    from pathlib import Path

    import torchvision.datasets

    class FakeCIFAR10:
        def __init__(self, root, train=True, download=False, **kwargs):
            if not download:
                raise RuntimeError("the fake CIFAR10 only downloads")
            with open(os.environ["FAKE_CIFAR_LOG"], "a") as log:
                log.write(f"{os.environ['RANK']} {Path(root).resolve()}\n")
            src = Path(os.environ["FAKE_CIFAR_SOURCE"]) / "cifar-10-batches-py"
            dest = Path(root) / "cifar-10-batches-py"
            dest.mkdir(parents=True, exist_ok=True)
            # test_batch first: a process that does not wait for the download sees it and reads
            # training batches that are not there yet.
            for name in ["test_batch", *sorted(p.name for p in src.iterdir() if p.name != "test_batch")]:
                shutil.copyfile(src / name, dest / name)
                time.sleep(0.2)

    torchvision.datasets.CIFAR10 = FakeCIFAR10

if os.environ.get("FAULT_SLOW_STEPS_AFTER_CHECKPOINTS"):
    import slow_steps  # noqa: F401 - tests/fault_helpers/slow_steps.py, on PYTHONPATH after this folder
