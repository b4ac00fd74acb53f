import os
import shutil
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


@pytest.fixture(scope="module", autouse=True)
def _module_folders_removed(request, tmp_path_factory, fake_cifar):
    """The folders a module's fixtures made (`tmp_path_factory`) go when the module ends, unless
    one of its tests failed: with pytest's retention policy "failed" (pyproject.toml) the suite's
    peak disk use is then one module's, not the sum of all (about 11 GB of checkpoints).
    `fake_cifar` is asked for first, so the session's folder is never counted as the module's."""
    base = tmp_path_factory.getbasetemp()
    before, failed = set(base.iterdir()), request.session.testsfailed
    yield
    if request.session.testsfailed == failed:
        for path in set(base.iterdir()) - before:
            shutil.rmtree(path, ignore_errors=True)


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
