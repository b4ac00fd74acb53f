"""Tiny CIFAR-10 files in the official on-disk format, made by the tests themselves.

Images are learnable on purpose: each class has its own colour and stripe pattern plus noise,
so a few steps of training measurably lower the loss.
"""
from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def fake_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """uint8 [N, 32, 32, 3]: a class colour, a class-dependent stripe period, and noise."""
    n = len(labels)
    palette = np.random.default_rng(1234).integers(30, 225, size=(10, 3))
    yy = np.arange(32)[None, :, None]
    stripes = ((yy // (labels[:, None, None] % 5 + 1)) % 2) * 40
    img = palette[labels][:, None, None, :] + stripes[..., None] + rng.normal(0, 20, size=(n, 32, 32, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def _to_rows(images: np.ndarray) -> np.ndarray:
    """HWC images -> the official channel-planar rows of 3072 bytes."""
    return images.transpose(0, 3, 1, 2).reshape(len(images), -1).copy()


class Py2Pickler(pickle._Pickler):
    """Protocol 2 with bytes written as Python 2 `str`, as in the official cifar-10-python.tar.gz.

    Loaded with encoding="latin1" its keys are str ("data"); with encoding="bytes", b"data".
    """

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj):
        n = len(obj)
        self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj if n < 256
                   else pickle.BINSTRING + struct.pack("<i", n) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str

    def save_global(self, obj, name=None):
        if getattr(obj, "__name__", "") == "_reconstruct":  # the module path the official files name
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
            self.memoize(obj)
            return
        super().save_global(obj, name)

    dispatch[type(len)] = save_global


def write_batch(path: Path, images: np.ndarray, labels: np.ndarray, style: str = "py2") -> None:
    """One batch file. style "py2": the official files' Python 2 strings (keys load as str with
    encoding="latin1"); "bytes": a Python 3 pickle with b"data"/b"labels" keys."""
    if style == "py2":
        k = lambda s: s.encode()  # noqa: E731  bytes -> written as py2 str
    elif style == "bytes":
        k = lambda s: s.encode()  # noqa: E731
    else:
        raise ValueError(style)
    obj = {k("batch_label"): k("fake batch"), k("labels"): [int(v) for v in labels], k("data"): _to_rows(images),
           k("filenames"): [k(f"img_{i}.png") for i in range(len(labels))]}
    with open(path, "wb") as f:
        (Py2Pickler(f, protocol=2) if style == "py2" else pickle.Pickler(f, protocol=2)).dump(obj)


def make_fake_cifar(root: Path, n_train: int = 500, n_test: int = 100, seed: int = 0,
                    style: str = "py2") -> Path:
    """Write root/cifar-10-batches-py/ with n_train images over 5 batches and n_test test images.

    n_train and n_test should be multiples of 10 (balanced classes). Returns `root`.
    """
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    train_y = rng.permutation(np.arange(n_train) % 10)
    train_x = fake_images(train_y, rng)
    for i, (xs, ys) in enumerate(zip(np.array_split(train_x, 5), np.array_split(train_y, 5)), 1):
        write_batch(folder / f"data_batch_{i}", xs, ys, style)
    test_y = rng.permutation(np.arange(n_test) % 10)
    write_batch(folder / "test_batch", fake_images(test_y, rng), test_y, style)
    meta = {b"label_names": [c.encode() for c in CLASSES], b"num_cases_per_batch": n_train // 5, b"num_vis": 3072}
    with open(folder / "batches.meta", "wb") as f:
        (Py2Pickler(f, protocol=2) if style == "py2" else pickle.Pickler(f, protocol=2)).dump(meta)
    return Path(root)
