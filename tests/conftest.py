import os
from pathlib import Path

import pytest

# The project is installed (`pip install -e .`); pytest puts tests/ itself on the path (rootdir
# conftest, prepend import mode), which is how cifar_fixture imports. Tests run on 2-core CPUs: keep every process to its share, and never touch a real GPU.
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

from cifar_fixture import make_fake_cifar


@pytest.fixture(scope="session")
def fake_cifar(tmp_path_factory) -> Path:
    """A tiny CIFAR-10 (500 train / 100 test) in the official format, shared by the session."""
    return make_fake_cifar(tmp_path_factory.mktemp("cifar"), n_train=500, n_test=100)


@pytest.fixture
def drawn(monkeypatch) -> dict[str, object]:
    """Every Figure the report's figure functions save, by file name (their drawn data is read back)."""
    from reporting import figures

    kept: dict[str, object] = {}
    save = figures._save

    def keep(fig, path):
        kept[Path(path).name] = fig
        return save(fig, path)

    monkeypatch.setattr(figures, "_save", keep)
    return kept
