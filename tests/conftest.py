import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
# Tests run on 2-core CPUs: keep every process to its share, and never touch a real GPU.
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

from cifar_fixture import make_fake_cifar  # noqa: E402


@pytest.fixture(scope="session")
def fake_cifar(tmp_path_factory) -> Path:
    """A tiny CIFAR-10 (500 train / 100 test) in the official format, shared by the session."""
    return make_fake_cifar(tmp_path_factory.mktemp("cifar"), n_train=500, n_test=100)
