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


def py2_pickle(obj) -> bytes:
    """`obj` pickled (protocol 2) as Python 2 wrote the official files, opcode by opcode: byte
    strings as Python 2 `str` (SHORT_BINSTRING/BINSTRING, which no Python 3 pickler writes) and numpy
    arrays through `numpy.core.multiarray._reconstruct`. Loaded with encoding="latin1" the keys are
    str ("data"); with encoding="bytes", b"data". Handles what a batch file holds: dict, list, int,
    bytes, uint8 array."""
    out = bytearray(b"\x80\x02")  # PROTO 2

    def string(b: bytes) -> None:
        out.extend(b"U" + bytes([len(b)]) + b if len(b) < 256 else b"T" + struct.pack("<i", len(b)) + b)

    def save(o) -> None:
        if isinstance(o, bytes):
            string(o)
        elif isinstance(o, int):
            out.extend(b"K" + bytes([o]) if 0 <= o < 256 else b"J" + struct.pack("<i", o))
        elif isinstance(o, list):
            out.extend(b"](")                                   # EMPTY_LIST, MARK
            for x in o:
                save(x)
            out.extend(b"e")                                    # APPENDS
        elif isinstance(o, dict):
            out.extend(b"}(")                                   # EMPTY_DICT, MARK
            for k, v in o.items():
                save(k)
                save(v)
            out.extend(b"u")                                    # SETITEMS
        elif isinstance(o, np.ndarray) and o.dtype == np.uint8:
            # _reconstruct(ndarray, (0,), "b"), then BUILD with (1, shape, dtype("u1"), False, raw bytes)
            out.extend(b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85")
            string(b"b")
            out.extend(b"\x87R(K\x01(")                        # TUPLE3, REDUCE, MARK, 1, MARK
            for n in o.shape:
                save(int(n))
            out.extend(b"tcnumpy\ndtype\n")                      # TUPLE (shape), GLOBAL numpy.dtype
            string(b"u1")
            out.extend(b"\x89\x88\x87R(K\x03")                    # False, True, TUPLE3, REDUCE, MARK, 3
            string(b"|")
            out.extend(b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89")  # None x3, -1, -1, 0, TUPLE, BUILD, False
            string(np.ascontiguousarray(o).tobytes())
            out.extend(b"tb")                                   # TUPLE (state), BUILD
        else:
            raise TypeError(f"py2_pickle cannot write {type(o).__name__}")

    save(obj)
    return bytes(out + b".")


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
    Path(path).write_bytes(py2_pickle(obj) if style == "py2" else pickle.dumps(obj, protocol=2))


def make_fake_cifar(root: Path, n_train: int = 500, n_test: int = 100, seed: int = 0,
                    style: str = "py2", classes: list[str] | None = None) -> Path:
    """Write root/cifar-10-batches-py/ with n_train images over 5 batches and n_test test images.

    n_train and n_test should be multiples of 10 (balanced classes). `classes`: the 10 label
    names batches.meta holds (default CIFAR-10's). Returns `root`.
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
    meta = {b"label_names": [c.encode() for c in (classes or CLASSES)], b"num_cases_per_batch": n_train // 5, b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(py2_pickle(meta) if style == "py2" else pickle.dumps(meta, protocol=2))
    return Path(root)
