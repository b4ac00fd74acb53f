"""CIFAR-10 from the standard `cifar-10-batches-py/` folder: safe loading, splits, statistics, loaders.

The data set (180 MB as uint8) lives in memory as numpy arrays; augmentation runs per batch in
DataLoader workers.  Randomness is keyed on (seed, epoch, batch) rather than on worker state,
so a resumed run, or the same run with another number of workers, sees identical augmentations.
"""
from __future__ import annotations

import atexit
import ctypes
import functools
import hashlib
import itertools
import json
import mmap
import multiprocessing
import os
import pickle
import shutil
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from distributed.config import CIFAR10_CLASSES
from distributed.rundir import write_json

BATCHES_DIR = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
META_FILE = "batches.meta"
SPLIT_SEED = 0  # fixed: runs with different training seeds share one validation split


class DataError(RuntimeError):
    """Missing or malformed data; the message says what is wrong and how to fix it."""


@dataclass(frozen=True)
class CifarArrays:
    """The whole data set: images uint8 [N, 32, 32, 3] (HWC, RGB), labels int64 [N]."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    classes: tuple[str, ...] = CIFAR10_CLASSES


# ----------------------------------------------------------------------------- safe loading
class RefusedPickle(pickle.UnpicklingError):
    """The file asks for something a CIFAR batch never contains."""


class _RestrictedUnpickler(pickle.Unpickler):
    """Admits only what CIFAR batch files contain: numpy array reconstruction.

    A plain pickle.load on a file someone dropped into the data folder could run any code;
    this refuses every global outside the list below.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) == ("_codecs", "encode"):
            return _latin1_encode  # how Python 3 pickles bytes at protocol 2
        if (module, name) not in self._ALLOWED:
            raise RefusedPickle(f"refusing to load global {module}.{name}")
        if module.startswith("numpy.core"):  # numpy 2 renamed numpy.core to numpy._core
            module = module.replace("numpy.core", "numpy._core", 1)
        return super().find_class(module, name)


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """The one use of `_codecs.encode` in such files, with the codec pinned."""
    if encoding not in ("latin1", "latin-1"):
        raise RefusedPickle(f"refusing codec {encoding!r}")
    return text.encode("latin1")


def _load_pickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            obj = _RestrictedUnpickler(f, encoding="latin1").load()
    except FileNotFoundError:
        raise DataError(f"{path} is missing; the folder must hold the unpacked official "
                        f"cifar-10-python.tar.gz ({', '.join(TRAIN_FILES)}, {TEST_FILE})") from None
    except RefusedPickle as e:
        raise DataError(f"{path} is not a CIFAR-10 batch file ({e}); replace it with the official file") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError, MemoryError) as e:
        raise DataError(f"{path} is truncated or corrupt ({type(e).__name__}: {e}); "
                        f"delete the folder and download or unpack CIFAR-10 again") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path} does not hold a CIFAR batch (a dict), found {type(obj).__name__}")
    # Python-2 pickles decode keys as str with latin1; files written by Python 3 tools may use bytes.
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch file -> (uint8 [N, 32, 32, 3], int64 [N]); shape errors are reported, not raised raw."""
    d = _load_pickle(path)
    if "data" not in d or ("labels" not in d and "fine_labels" not in d):
        raise DataError(f"{path} has no 'data'/'labels' entries (keys: {sorted(map(str, d))[:6]})")
    data = np.asarray(d["data"])
    labels = np.asarray(d.get("labels", d.get("fine_labels")), dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or data.shape[0] != labels.shape[0]:
        raise DataError(f"{path} has data of shape {data.shape} ({data.dtype}) and {labels.shape[0]} labels; "
                        f"expected uint8 [N, 3072] with N labels")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"{path} has labels outside 0..9")
    # Rows are channel-planar (1024 R, 1024 G, 1024 B); convert to HWC for Albumentations/OpenCV.
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy(), labels


def load_cifar10(data_dir: str | Path, download: bool = True) -> CifarArrays:
    """Load CIFAR-10 from `data_dir/cifar-10-batches-py/`, downloading it there first if allowed."""
    root = Path(data_dir)
    folder = root / BATCHES_DIR
    if not (folder / TEST_FILE).exists():
        if not download:
            raise DataError(f"CIFAR-10 not found: {folder} does not exist; unpack cifar-10-python.tar.gz "
                            f"into {root} or drop --no-download")
        _download(root)
    parts = [read_batch(folder / name) for name in TRAIN_FILES]
    test_x, test_y = read_batch(folder / TEST_FILE)
    classes = CIFAR10_CLASSES
    if (folder / META_FILE).exists():
        names = _load_pickle(folder / META_FILE).get("label_names")
        if isinstance(names, list) and len(names) == 10:
            classes = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
    return CifarArrays(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
                       test_x, test_y, classes)


def _download(root: Path) -> None:
    """torchvision download, under a file lock so parallel processes (DDP ranks, trials) don't race.
    A failed download leaves no trace: what this attempt created (the folders, the lock file, a
    partial archive) is removed again; what was there before stays."""
    from filelock import FileLock
    from torchvision.datasets import CIFAR10

    missing = [p for p in (root, *root.parents) if not p.exists()]  # folders this attempt creates
    before = set(root.iterdir()) if root.is_dir() else set()
    root.mkdir(parents=True, exist_ok=True)
    lock = root / ".cifar10.lock"
    with FileLock(str(lock)):
        if (root / BATCHES_DIR / TEST_FILE).exists():  # another process finished while we waited
            return
        try:
            CIFAR10(str(root), train=True, download=True)
        except Exception as e:  # network errors come in many types; all mean the same to the user
            failed = e
            for p in set(root.iterdir()) - before - {lock}:
                if p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
        else:
            return
    # After the lock is released. A process still waiting on it then holds a lock on the removed
    # file and tries the download itself, which is what it would do anyway.
    if lock not in before:
        lock.unlink(missing_ok=True)
    for folder in missing:  # the deepest first
        try:
            folder.rmdir()
        except OSError:  # no longer empty: another process uses it
            break
    raise DataError(f"CIFAR-10 is not in {root / BATCHES_DIR} and downloading it failed ({failed.__class__.__name__}); "
                    f"put the official cifar-10-python.tar.gz unpacked there "
                    f"(data_batch_1..5, test_batch, batches.meta)")


# ----------------------------------------------------------------------------- splits and statistics
@dataclass(frozen=True)
class Split:
    """Indices into the 50,000 training images (and the 10,000 test images)."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def _stratified_take(labels: np.ndarray, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Pick n indices with class proportions kept (largest remainder); return (picked, rest)."""
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts * n / len(labels)
    take = np.floor(quota).astype(int)
    take[np.argsort(-(quota - take), kind="stable")[: n - take.sum()]] += 1
    picked, rest = [], []
    for c, k in zip(classes, take):
        idx = rng.permutation(np.flatnonzero(labels == c))
        picked.append(idx[:k])
        rest.append(idx[k:])
    return np.sort(np.concatenate(picked)), np.sort(np.concatenate(rest))


def make_split(train_y: np.ndarray, test_y: np.ndarray, val_size: int, subset: int = 0,
               test_subset: int = 0) -> Split:
    """Stratified, seeded split: optional subset of the training images, then the validation part."""
    rng = np.random.default_rng(SPLIT_SEED)
    pool = np.arange(len(train_y))
    if subset and subset < len(pool):
        pool, _ = _stratified_take(train_y, subset, rng)
    if val_size >= len(pool):
        raise DataError(f"--val-size {val_size} leaves no training images out of {len(pool)}")
    val_pos, train_pos = (_stratified_take(train_y[pool], val_size, rng) if val_size
                          else (np.array([], dtype=np.int64), np.arange(len(pool))))
    test = np.arange(len(test_y))
    if test_subset and test_subset < len(test):
        test, _ = _stratified_take(test_y, test_subset, rng)
    return Split(pool[train_pos], pool[val_pos], test)


def channel_stats(images: np.ndarray, cache_dir: Path | None = None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std in [0, 1] of the given training images, cached by their content hash."""
    key = hashlib.sha1(images.tobytes()[:: max(1, images.size // 1_000_000)] + str(images.shape).encode()).hexdigest()
    cache = Path(cache_dir) / "cifar10_stats.json" if cache_dir else None
    stored = {}
    if cache and cache.exists():
        try:
            stored = json.loads(cache.read_text())
            return tuple(stored[key]["mean"]), tuple(stored[key]["std"])
        except (json.JSONDecodeError, KeyError, TypeError):
            pass
    x = images.reshape(-1, 3).astype(np.float64) / 255.0
    mean, std = tuple(x.mean(0).tolist()), tuple(x.std(0).tolist())
    if cache:
        try:  # the cache is an optimisation: a read-only data folder must not stop training
            stored[key] = {"mean": mean, "std": std}
            write_json(cache, stored)
        except OSError:
            pass
    return mean, std


# ----------------------------------------------------------------------------- datasets and loaders
class EpochSampler(Sampler[int]):
    """Shuffles with a generator seeded by (seed, epoch), identical on every rank.

    Each yielded index carries its epoch (`epoch * n + i`) because persistent workers never see
    `set_epoch`; the dataset decodes it and keys its augmentation randomness on it.
    """

    def __init__(self, n: int, seed: int, shuffle: bool = True) -> None:
        self.n, self.seed, self.shuffle, self.epoch = n, seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = range(self.n)
        base = self.epoch * self.n
        return iter([base + i for i in order])


class CifarDataset(Dataset):
    """Images and labels at given indices, with an Albumentations transform (uint8 in and out)
    applied per batch; batches stay uint8 [B, 32, 32, 3] (`augment.ModelInput` makes them model
    input on the device).

    `__getitems__` (used by DataLoader for whole batches) reseeds the transform once per batch from
    (seed, epoch, first index): cheap, and independent of which worker or rank takes the batch.
    In a loader worker it returns the images in a reused shared-memory slot (`BatchSlots`, when
    `make_loader` gave it some) and labels and positions as numpy arrays (cheaper to send; see
    there): iterate such a loader through `TrainBatches`, which returns tensors.
    """

    slots: BatchSlots | None = None  # in a loader worker: where its batches go (`make_loader`)

    def __init__(self, images: np.ndarray, labels: np.ndarray, indices: np.ndarray,
                 transform: Callable | None, seed: int = 0) -> None:
        self.images, self.labels, self.indices = images, labels, np.asarray(indices, dtype=np.int64)
        self.transform, self.seed = transform, seed

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.__getitems__([i])

    def __getitems__(self, keys: Sequence[int]):
        n = len(self.indices)
        epoch, first = divmod(int(keys[0]), n)
        pos = np.asarray(keys, dtype=np.int64) % n
        src = self.indices[pos]
        # A schedule's transform (`augment.ScheduledTransform`) gives the one of this batch's epoch.
        transform = self.transform.for_epoch(epoch) if hasattr(self.transform, "for_epoch") else self.transform
        if transform is not None:
            if hasattr(transform, "set_random_seed"):
                transform.set_random_seed(int(np.random.SeedSequence([self.seed, epoch, first]).generate_state(1)[0]))
            made = [transform(image=img)["image"] for img in self.images[src]]
        else:
            made = self.images[src]  # already one array (evaluation): no list, no second copy
        # Third item: positions in the source array, so predictions can name their images.
        worker = torch.utils.data.get_worker_info()
        if worker is not None:
            # Into one of this worker's reusable slots when one is free (`BatchSlots`).
            slotted = self.slots.put(worker.id, made) if self.slots is not None else None
            if slotted is not None:
                return slotted, self.labels[src], src
        batch = np.stack(made) if isinstance(made, list) else made
        if worker is not None:
            # From a loader worker, labels and positions (2 x 8 bytes an image) travel as numpy
            # arrays inside the queue's pickled message: as tensors, each would be a shared-memory
            # file of its own, created, mapped, registered with torch's shm manager and unmapped
            # again per batch, on both sides. A small gain, measured on a 2-core CPU (batch 256,
            # default recipe, 2026-12-02; 6 runs with 2 workers and 5 with 1, each the median of 8
            # interleaved epochs of 16,384 images): 2 workers 0.97-1.22x (median 1.06x), 1 worker
            # 0.94-1.10x (1.02x); expected to be more on a GPU host, where one trainer receives the
            # batches of many workers. `TrainBatches` makes them tensors again.
            return torch.from_numpy(batch), self.labels[src], src
        return torch.from_numpy(batch), torch.from_numpy(self.labels[src]), torch.from_numpy(src)


class BatchSlots:
    """Shared memory a loader's workers write their batches into, reused batch after batch.

    Without it every batch crosses the worker boundary as a new shared-memory file: the worker
    creates it, registers it with torch's shm manager, faults its pages in and copies the batch
    into it (~1.5 ms of a ~13 ms batch on a 2-core CPU, 2026-12-03, against 0.3 ms for a plain
    tensor); the trainer maps it (~1 ms) and both unmap it again. Here each worker owns
    `per_worker` slots of one batch each, mapped once by every process: anonymous shared memory
    made before the workers fork (nothing in /dev/shm, so Docker's 64 MB default does not
    apply; freed with the last process, kill -9 included). A worker claims a free slot, stacks
    its batch into it and sends only (slot, size); the trainer copies the images out (into pinned
    memory on a GPU host: the copy the pin thread made anyway) and frees the slot. A worker that
    finds no slot free sends a new tensor as before, so nothing ever waits for one.

    One byte a slot says who has it: the worker sets it (free -> claimed) before writing, the
    trainer clears it after its copy has returned, and a batch that is never taken (an epoch
    abandoned, whose batches the DataLoader drops) frees its slot when dropped (`SlotBatch`).
    Workers started by fork only (Linux's default): a pool sent to a worker started otherwise
    arrives empty and its worker sends tensors.
    """

    _tokens = itertools.count()
    _live: weakref.WeakValueDictionary = weakref.WeakValueDictionary()  # this process's pools, by token

    def __init__(self, workers: int, per_worker: int, batch_shape: tuple[int, ...]) -> None:
        head = -(-workers * per_worker // 64) * 64  # the flags, then the images 64-byte aligned
        self._memory = mmap.mmap(-1, head + workers * per_worker * int(np.prod(batch_shape)))
        self.busy = np.frombuffer(self._memory, np.uint8, workers * per_worker).reshape(workers, per_worker)
        self.images = np.frombuffer(self._memory, np.uint8, offset=head).reshape(
            workers, per_worker, *batch_shape)
        self.taken = 0  # batches the trainer took out of a slot (the rest came as new tensors)
        self.token = self._register(self)

    @classmethod
    def _register(cls, pool: BatchSlots) -> tuple[int, int]:
        token = (os.getpid(), next(cls._tokens))
        cls._live[token] = pool
        return token

    @classmethod
    def find(cls, token: tuple[int, int]) -> BatchSlots | None:
        """This process's pool of that token (a `SlotBatch` carries it), if it is still alive."""
        return cls._live.get(token)

    def __reduce__(self):  # a worker not forked (spawn, forkserver) cannot map it: it gets none
        return (_no_slots, ())

    def put(self, worker: int, images: Sequence[np.ndarray] | np.ndarray) -> SlotBatch | None:
        """In a worker: `images` stacked into a free slot of `worker`'s, or None (none free, or
        images a slot cannot hold)."""
        if worker >= len(self.busy) or len(images) > self.images.shape[2]:
            return None
        free = np.flatnonzero(self.busy[worker] == 0)
        if not len(free):
            return None
        slot = int(free[0])
        self.busy[worker, slot] = 1
        try:  # the stack itself refuses images of another shape or dtype (casting "no")
            np.stack(images, out=self.images[worker, slot, :len(images)], casting="no")
        except (ValueError, TypeError):
            self.busy[worker, slot] = 0
            return None
        return SlotBatch(self.token, worker, slot, len(images))


def _no_slots():
    return None


class SlotBatch:
    """A batch in a `BatchSlots` slot, as a worker sends it. In the trainer, `take()` (or
    `pin_memory()`, which the DataLoader's pin thread calls) copies it out and frees the slot; a
    batch dropped without being taken frees it too."""

    __slots__ = ("token", "worker", "slot", "n", "_owner")

    def __init__(self, token: tuple[int, int], worker: int, slot: int, n: int, owner: bool = False) -> None:
        # The worker's own object (owner False) frees nothing when it is dropped after sending.
        self.token, self.worker, self.slot, self.n, self._owner = token, worker, slot, n, owner

    def __reduce__(self):  # received by the trainer, which owns the slot until it frees it
        return (SlotBatch, (self.token, self.worker, self.slot, self.n, True))

    def take(self, pin: bool = False) -> torch.Tensor:
        """The images as a tensor of their own (pinned with `pin`); the slot is free again."""
        pool = BatchSlots.find(self.token)
        if pool is None or not self._owner:
            raise RuntimeError("a loader batch was taken after its loader was gone, or twice")
        images = torch.from_numpy(pool.images[self.worker, self.slot, :self.n])
        out = torch.empty(images.shape, dtype=images.dtype, pin_memory=pin)
        out.copy_(images)  # complete when it returns: only then may the worker write the slot again
        self.release()
        pool.taken += 1
        return out

    def pin_memory(self, device=None) -> torch.Tensor:
        return self.take(pin=True)

    def release(self) -> None:
        if self._owner:
            self._owner = False
            pool = BatchSlots.find(self.token)
            if pool is not None:
                pool.busy[self.worker, self.slot] = 0

    def __del__(self) -> None:
        try:
            self.release()
        except Exception:  # noqa: BLE001 - at interpreter exit the pools may be gone already
            pass


def _passthrough(batch):
    """The dataset already returns a collated batch."""
    return batch


def _seed_worker(worker_id: int, trainer_exiting=None, slots: BatchSlots | None = None) -> None:
    """Numpy/random state per worker and rank, for any randomness outside the keyed transforms;
    the worker's answer to SIGTERM (`_sigterm_in_a_worker`); the slots its batches go into."""
    import random
    import signal

    import cv2

    cv2.setNumThreads(0)  # OpenCV threads inside DataLoader workers oversubscribe the cores
    # How this worker hands its batches' tensors over (the sender's choice; the trainer reads
    # either kind). torch's default on Linux passes each tensor's file descriptor through an
    # authenticated socket served by a thread of this worker, one connection per tensor, which took
    # the augmentation's GIL ~45 times per batch: measured on a 2-core CPU (2026-12-02, default
    # recipe, batch 256, 1 worker) the worker spent 20-33 ms per batch against 11-12 ms for the same
    # transforms in one process. Named shared-memory files cost no thread (9-10 GIL handoffs per
    # batch against 42-49; an epoch of 64 batches 0.83-0.98 s against 1.3-2.1 s); torch's shm
    # manager removes them when their processes are gone, kill -9 included.
    torch.multiprocessing.set_sharing_strategy("file_system")
    _start_shm_manager_deaf_to_sigterm()
    signal.signal(signal.SIGTERM, functools.partial(_sigterm_in_a_worker, trainer_exiting))
    if slots is not None:
        torch.utils.data.get_worker_info().dataset.slots = slots  # this worker's copy of the dataset
    rank = int(os.environ.get("RANK", 0))
    seed = (torch.initial_seed() + 1009 * rank + worker_id) % 2**32
    np.random.seed(seed)
    random.seed(seed)


def _start_shm_manager_deaf_to_sigterm() -> None:
    """Start this worker's torch_shm_manager now, ignoring SIGTERM, as a worker's SIGTERM must not
    end a run (`_sigterm_in_a_worker`).

    The manager (started by the first tensor a worker shares as a file) is a child of the worker.
    When it dies, the trainer's next release of a batch it received writes to the manager's closed
    socket, and torch throws a C++ error in a destructor: the process aborts ("terminate called
    after throwing an instance of 'std::system_error'  what(): Broken pipe") before saying what it
    kept, and the batches' /dev/shm files are never removed. SIGTERM reached it from `accelerate
    launch` (>= 1.16), which answers Ctrl-C or its own SIGTERM (Kubernetes) by sending SIGTERM to
    every descendant, and from SLURM, which signals every process of a job. A signal ignored when
    a process is started stays ignored in it (POSIX), so the manager lives until its last client
    has gone, then removes the files and exits (2 s later) as torch designed it. SIGKILL still
    ends it; the terminal's SIGINT never reaches it (it runs in a session of its own)."""
    import signal

    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        torch.empty(1, dtype=torch.uint8).share_memory_()  # strategy file_system: starts the manager
    finally:
        signal.signal(signal.SIGTERM, previous)


def _sigterm_in_a_worker(trainer_exiting, signum, frame) -> None:
    """A loader worker outlives SIGTERM while its trainer runs; once the trainer is exiting,
    SIGTERM ends it at once.

    SLURM and a shutting-down host signal every process of the job, loader workers included. A
    worker that died of it would make torch's SIGCHLD handler raise inside the training process,
    at any point of a step; instead the training process stops at a step boundary
    (`engine.stop_on_signals`) and shuts its loaders down. Every SIGTERM, not only the first:
    launchers pass a SIGTERM on to the processes below them (torchrun to each rank's process
    group, `accelerate launch` >= 1.16 to every descendant), so a worker of a job signalled as a
    whole gets two, and one that died of the second was reported as "killed for memory".
    SIGKILL still ends a worker; a worker whose trainer has died ends by itself (torch's watchdog).

    But an exiting trainer (a run that failed: diverged, disk full, any exception) ends its
    workers with exactly one SIGTERM each (multiprocessing's exit handler, or torch's shutdown of
    a worker that did not stop when told) and then waits for them: a worker that outlived that
    one signal left the process waiting forever. `trainer_exiting` (shared memory, set by the
    trainer's exit handler: `make_loader`) tells the two apart.
    """
    import signal

    if trainer_exiting is None or trainer_exiting.value:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)  # now with the default action: the worker ends


def _trainer_exits(trainer_exiting) -> None:
    """At the trainer's exit (atexit): its loader workers' next SIGTERM is final, and their end is
    no error.

    A loader still alive at exit (a script's global; `fit`'s are gone by then) has its workers
    ended by multiprocessing's exit handler, and torch's SIGCHLD handler then raised inside it:
    "Exception ignored in atexit callback ... DataLoader worker (pid N) is killed by signal:
    Terminated" after a run that went well (3 of 4 runs of such a script, 2026-12-03)."""
    import signal

    trainer_exiting.value = True
    handler = signal.getsignal(signal.SIGCHLD)
    if getattr(handler, "__module__", "").startswith("torch.utils.data"):
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)


def make_loader(dataset: CifarDataset, batch_size: int, *, shuffle: bool, seed: int, num_workers: int,
                drop_last: bool, pin_memory: bool, reuse_buffers: bool = True) -> DataLoader:
    """A DataLoader over `dataset` with an `EpochSampler`.

    Its epoch drives shuffling and augmentation: `loader.sampler.set_epoch(e)` on this loader, but
    `prepared.set_epoch(e)` once Accelerate has prepared it; `TrainBatches` does this. With
    workers, iterate it through `TrainBatches`: the workers' batches come as slots of reused
    shared memory (`BatchSlots`; `reuse_buffers=False`: a new shared-memory file per batch).
    """
    sampler = EpochSampler(len(dataset), seed, shuffle=shuffle)
    init = None
    prefetch = 4
    if num_workers > 0:
        # Shared with the workers (inherited at their start); registered after multiprocessing's
        # own exit handler, so it runs before that one terminates the workers (atexit is LIFO).
        trainer_exiting = multiprocessing.get_context().RawValue(ctypes.c_bool, False)
        atexit.register(_trainer_exits, trainer_exiting)
        # A worker has at most `prefetch` batches out, and makes the next one while the trainer
        # still copies the oldest out of its slot: prefetch + 1 slots, so none has to do without.
        slots = (BatchSlots(num_workers, prefetch + 1, (batch_size, *dataset.images.shape[1:]))
                 if reuse_buffers and len(dataset.images) else None)
        init = functools.partial(_seed_worker, trainer_exiting=trainer_exiting, slots=slots)
    loader = DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last,
        num_workers=num_workers, persistent_workers=num_workers > 0, pin_memory=pin_memory,
        worker_init_fn=init,
        prefetch_factor=prefetch if num_workers > 0 else None,
        collate_fn=_passthrough,
        # Own generator: the workers' base seed must not consume the global torch RNG, or a resumed
        # run would draw dropout masks from a different stream than an uninterrupted one.
        generator=torch.Generator().manual_seed(seed),
    )
    return loader


class TrainBatches:
    """A training loader's batches epoch by epoch, where the next epoch can be started ahead.

    Persistent workers fall idle once they have made an epoch's last batches, and start the next
    epoch only when it is iterated: its first batch then costs a whole batch of augmentation (with
    N workers, N batches at once) while the device waits, once per epoch. On the H100 an epoch took
    1.3-2.0 s; the first batch of a 512-image batch needs ~0.1-0.2 s of one worker, so this alone
    could be most of the 12% data wait measured there. `start(e + 1)` right after an epoch's last
    step hands epoch e + 1's first batches to the workers, which make them while this process
    validates and checkpoints.

    Works on a loader Accelerate prepared (its base loader is iterated here and each batch moved to
    the device as Accelerate does, non-blocking from pinned memory), a plain DataLoader, or any
    object with `set_epoch` and `__iter__` (the benchmarks' in-memory loader).
    """

    def __init__(self, loader) -> None:
        self.loader = loader
        self._ahead: tuple[int, Iterator] | None = None  # (epoch, its started iterator)

    def __len__(self) -> int:
        return len(self.loader)

    def start(self, epoch: int) -> None:
        """Let the loader workers begin `epoch`'s batches now; `epoch(epoch)` takes them."""
        if self._ahead is not None and self._ahead[0] == epoch:
            return
        # On a prepared loader the epoch must be set through it: it reaches the sampler inside
        # Accelerate's sharded batch sampler (DDP) and keeps Accelerate's own counter in step.
        set_epoch = getattr(self.loader, "set_epoch", None) or self.loader.sampler.set_epoch
        set_epoch(epoch)
        # Iterating the base loader ourselves (not Accelerate's wrapper, which would start its
        # iteration only at the first next()) sends the first prefetch_factor x workers batches'
        # indices to the workers here. Accelerate's wrapper adds nothing else for training: our
        # sampler has no generator to synchronise, and no gradient accumulation reads its state.
        self._ahead = (epoch, iter(getattr(self.loader, "base_dataloader", self.loader)))

    def epoch(self, epoch: int) -> Iterator:
        """One epoch's batches, shuffled and augmented for `epoch` (started now unless `start` did)."""
        self.start(epoch)
        batches, self._ahead = self._ahead[1], None
        device = getattr(self.loader, "device", None) if hasattr(self.loader, "base_dataloader") else None
        non_blocking = getattr(self.loader, "_non_blocking", False)
        from accelerate.utils import send_to_device

        for x, y, i in batches:
            if isinstance(x, SlotBatch):  # from a worker's slot, not pinned (no pin thread: off a GPU)
                x = x.take()
            if isinstance(y, np.ndarray):  # from a worker (`CifarDataset.__getitems__`)
                y, i = torch.from_numpy(y), torch.from_numpy(i)
                if x.is_pinned():  # as the images are, so that their copies to the GPU stay asynchronous too
                    y, i = y.pin_memory(), i.pin_memory()
            if device is not None:
                x, y, i = send_to_device((x, y, i), device, non_blocking=non_blocking)
            yield x, y, i

