"""Data: the official format, the restricted unpickler, splits, statistics, augmentation."""
import pickle

import numpy as np
import pytest

from cifar_fixture import make_fake_cifar
from distributed.augment import ModelInput, build_float_train_transform, build_train_transform, mean_pixel
from distributed.config import AugConfig
from distributed.data import CifarDataset, DataError, channel_stats, load_cifar10, make_split, read_batch


@pytest.mark.parametrize("style", ["py2", "bytes"])
def test_loader_reads_official_layout_in_both_key_styles(tmp_path, style):
    make_fake_cifar(tmp_path, n_train=50, n_test=20, style=style)
    d = load_cifar10(tmp_path, download=False)
    assert d.train_x.shape == (50, 32, 32, 3) and d.train_x.dtype == np.uint8
    assert d.test_x.shape == (20, 32, 32, 3) and d.test_y.dtype == np.int64
    assert sorted(np.unique(d.train_y)) == list(range(10))
    assert d.classes[0] == "airplane" and d.classes[9] == "truck"


def test_rows_are_converted_from_channel_planar_to_hwc(tmp_path):
    make_fake_cifar(tmp_path, n_train=50, n_test=10)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    with open(path, "rb") as f:
        raw = pickle.load(f, encoding="latin1")
    x, y = read_batch(path)
    row = raw["data"][0]
    assert x[0, 0, 0, 0] == row[0] and x[0, 0, 0, 1] == row[1024] and x[0, 0, 0, 2] == row[2048]
    assert x[0, 0, 1, 0] == row[1] and x[0, 1, 0, 0] == row[32]
    assert list(y) == raw["labels"]


class _Boom:
    def __reduce__(self):
        import os
        return (os.system, ("touch HACKED",))


def test_restricted_unpickler_refuses_a_hostile_pickle(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_fake_cifar(tmp_path, n_train=50, n_test=10)
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_3", "wb") as f:
        pickle.dump({"data": _Boom(), "labels": [0]}, f, protocol=2)
    with pytest.raises(DataError, match="refusing to load global"):
        load_cifar10(tmp_path, download=False)
    assert not (tmp_path / "HACKED").exists()


def test_truncated_and_wrong_shaped_files_get_clear_errors(tmp_path):
    make_fake_cifar(tmp_path, n_train=50, n_test=10)
    folder = tmp_path / "cifar-10-batches-py"
    blob = (folder / "data_batch_2").read_bytes()
    (folder / "data_batch_2").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError, match="data_batch_2 is truncated or corrupt"):
        load_cifar10(tmp_path, download=False)
    make_fake_cifar(tmp_path, n_train=50, n_test=10)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"data": np.zeros((4, 100), np.uint8), "labels": [0, 1, 2, 3]}, f, protocol=2)
    with pytest.raises(DataError, match=r"shape \(4, 100\)"):
        load_cifar10(tmp_path, download=False)


def test_missing_data_without_download_says_where_to_put_it(tmp_path):
    with pytest.raises(DataError, match="cifar-10-batches-py does not exist"):
        load_cifar10(tmp_path / "nothing", download=False)


def test_split_sizes_stratification_and_seeding():
    rng = np.random.default_rng(0)
    y = rng.permutation(np.arange(50_000) % 10)
    test_y = np.arange(10_000) % 10
    s = make_split(y, test_y, val_size=5000)
    assert len(s.train) == 45_000 and len(s.val) == 5000 and len(s.test) == 10_000
    assert not set(s.train) & set(s.val)
    assert np.bincount(y[s.val]).tolist() == [500] * 10
    again = make_split(y, test_y, val_size=5000)
    assert np.array_equal(s.val, again.val)  # the split is fixed: runs share one validation set
    assert len(make_split(y, test_y, val_size=0).train) == 50_000
    sub = make_split(y, test_y, val_size=100, subset=1000, test_subset=200)
    assert len(sub.train) == 900 and len(sub.val) == 100 and len(sub.test) == 200
    assert np.bincount(y[sub.train]).tolist() == [90] * 10
    assert np.bincount(test_y[sub.test]).tolist() == [20] * 10


def test_channel_stats_match_numpy_and_are_cached(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
    mean, std = channel_stats(x, cache_dir=tmp_path)
    assert np.allclose(mean, (x / 255.0).mean(axis=(0, 1, 2)))
    assert np.allclose(std, (x / 255.0).std(axis=(0, 1, 2)))
    assert (tmp_path / "cifar10_stats.json").exists()
    assert channel_stats(x, cache_dir=tmp_path) == (mean, std)


MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
NONE = dict(pad=0, flip_p=0, affine_p=0, color_p=0, cutout_p=0)  # every augmentation off


def _images(n=16, seed=1):
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def _model_input(batch: np.ndarray, channels_last=False):
    import torch

    return ModelInput(MEAN, STD, channels_last)(torch.from_numpy(batch))


@pytest.mark.parametrize("channels_last", [False, True])
def test_normalising_on_the_device_equals_normalize_in_the_workers(channels_last):
    """The uint8 pipeline + ModelInput gives the model what the float pipeline (Normalize in the
    workers, before 2026-12) gave it, for training (no augmentation drawn) and evaluation alike."""
    import torch

    x = _images(32)
    before = torch.from_numpy(np.stack([build_float_train_transform(AugConfig(**NONE), MEAN, STD)(image=i)["image"]
                                        for i in x])).permute(0, 3, 1, 2)
    train = np.stack([build_train_transform(AugConfig(**NONE), MEAN)(image=i)["image"] for i in x])
    assert train.dtype == np.uint8  # what crosses the worker boundary
    evaluation, _, _ = CifarDataset(x, np.zeros(32, dtype=np.int64), np.arange(32), transform=None).__getitems__(
        list(range(32)))
    assert evaluation.dtype == torch.uint8 and evaluation.shape == (32, 32, 32, 3)
    for batch in (_model_input(train, channels_last), ModelInput(MEAN, STD, channels_last)(evaluation)):
        assert batch.dtype == torch.float32 and batch.shape == (32, 3, 32, 32)
        assert batch.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        assert torch.allclose(batch, before, atol=1e-5, rtol=0)


def test_augmentation_with_flip_probability_one_always_flips():
    t = build_train_transform(AugConfig(**{**NONE, "flip_p": 1.0}), MEAN)
    for img in _images():
        assert np.array_equal(t(image=img)["image"], img[:, ::-1])


def test_the_cutout_hole_is_the_mean_pixel_which_normalises_to_about_zero():
    aug = AugConfig(**{**NONE, "cutout_p": 1.0, "cutout_min": 8, "cutout_max": 8})
    mean = (0.4914, 0.4822, 0.4465)
    out = build_train_transform(aug, mean)(image=np.full((32, 32, 3), 255, np.uint8))["image"]
    hole = (out != 255).all(-1)
    assert hole.sum() == 64 and (out[hole] == mean_pixel(mean)).all()
    normalised = ModelInput(mean, STD, False)(__import__("torch").from_numpy(out[None]))[0]
    assert normalised.permute(1, 2, 0)[hole].abs().max() < 0.5 / 255 / min(STD) + 1e-6  # half a grey level


def _draws(aug: AugConfig, images: np.ndarray, epochs: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Every image of `images` through the training dataset (batches of 128, keyed seeds) for a few
    epochs: (augmented uint8 [epochs * N, 32, 32, 3], the originals in the same order)."""
    n = len(images)
    ds = CifarDataset(images, np.zeros(n, dtype=np.int64), np.arange(n), build_train_transform(aug, MEAN), seed=5)
    out, src = [], []
    for epoch in range(epochs):
        for s in range(0, n, 128):
            x, _, idx = ds.__getitems__([epoch * n + i for i in range(s, min(n, s + 128))])
            out.append(x.numpy())
            src.append(images[idx.numpy()])
    return np.concatenate(out), np.concatenate(src)


def _within_sampling_error(hits: int, n: int, p: float) -> bool:
    return abs(hits / n - p) <= 4 * (p * (1 - p) / n) ** 0.5 + 1e-9


@pytest.mark.parametrize("field,p", [("flip_p", 0.5), ("affine_p", 0.3), ("color_p", 0.4), ("cutout_p", 0.25)])
def test_each_augmentation_is_drawn_at_its_probability(field, p):
    """Thousands of draws through the keyed per-batch seeding: the share of images an augmentation
    changed is its probability (colour: two transforms, each at p), within 4 standard errors."""
    images = _images(1024, seed=2)
    out, src = _draws(AugConfig(**{**NONE, field: p}), images)
    changed = (out != src).reshape(len(out), -1).any(1)
    expected = 1 - (1 - p) ** 2 if field == "color_p" else p
    # An image can come out unchanged though drawn (a flip of a symmetric image, a tiny affine):
    # random images make that vanishingly rare; the bound is two-sided all the same.
    assert _within_sampling_error(int(changed.sum()), len(out), expected), (field, changed.mean(), expected)


def test_random_crops_are_uniform_over_the_9_by_9_offsets():
    """pad 4 then a 32x32 crop: 81 offsets, each ~1/81 of the draws (chi-square, 80 dof, p < 0.001)."""
    rows, cols = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
    coded = np.stack([rows * 7, cols * 7, np.zeros_like(rows)], -1).astype(np.uint8)  # pixel = its position
    out, _ = _draws(AugConfig(**{**NONE, "pad": 4}), np.repeat(coded[None], 1024, 0), epochs=4)
    # Output pixel (4, 4) comes from padded (dy + 4, dx + 4), i.e. original (dy, dx): no reflection there.
    dy, dx = out[:, 4, 4, 0] // 7, out[:, 4, 4, 1] // 7
    assert dy.min() == 0 and dy.max() == 8 and dx.min() == 0 and dx.max() == 8
    counts = np.bincount(dy * 9 + dx, minlength=81)
    expected = len(out) / 81
    assert ((counts - expected) ** 2 / expected).sum() < 124.8  # chi2(80) at p = 0.001


def test_cutout_holes_are_squares_or_rectangles_of_the_configured_sizes():
    aug = AugConfig(**{**NONE, "cutout_p": 1.0, "cutout_min": 4, "cutout_max": 12})
    out, _ = _draws(aug, np.full((512, 32, 32, 3), 255, np.uint8), epochs=2)
    heights, widths = set(), set()
    for img in out:
        hole = (img != 255).all(-1)
        ys, xs = np.flatnonzero(hole.any(1)), np.flatnonzero(hole.any(0))
        h, w = len(ys), len(xs)
        assert hole.sum() == h * w and 1 <= h <= 12 and 1 <= w <= 12  # one rectangle (clipped at a border)
        heights.add(h), widths.add(w)
    assert {4, 12} <= heights and {4, 12} <= widths  # both ends of the range are drawn


def test_augmentation_is_keyed_on_seed_epoch_and_batch_not_on_worker_state():
    x = _images(40)
    y = np.arange(40) % 10
    t = build_train_transform(AugConfig(affine_p=0.5, color_p=0.5), MEAN)
    a = CifarDataset(x, y, np.arange(40), t, seed=3)
    b = CifarDataset(x, y, np.arange(40), build_train_transform(AugConfig(affine_p=0.5, color_p=0.5), MEAN), seed=3)
    b.__getitems__([40 + 5, 40 + 6])  # b's transform has been used before: state must not matter
    batch_a, _, idx = a.__getitems__([40 + 1, 40 + 2])  # epoch 1, images 1 and 2
    batch_b, _, _ = b.__getitems__([40 + 1, 40 + 2])
    assert idx.tolist() == [1, 2] and batch_a.shape == (2, 32, 32, 3)
    assert torch_equal(batch_a, batch_b)
    other_epoch, _, _ = a.__getitems__([80 + 1, 80 + 2])
    assert not torch_equal(batch_a, other_epoch)


def torch_equal(a, b):
    import torch
    return torch.equal(a.contiguous(), b.contiguous())


_HOLD_BATCHES = """
import sys, numpy as np, torch
from distributed.augment import build_train_transform
from distributed.config import AugConfig
from distributed.data import CifarDataset, load_cifar10, make_loader
data = load_cifar10(sys.argv[1], download=False)
loader = make_loader(CifarDataset(data.train_x, data.train_y, np.arange(500), build_train_transform(AugConfig(), (0.5,) * 3)),
                     20, shuffle=True, seed=0, num_workers=2, drop_last=True, pin_memory=False,
                     reuse_buffers=sys.argv[2] == "slots")
held = []
for x, y, i in loader:
    held.append((x, y, i))  # held: their shared memory stays mapped until the process dies
    if len(held) == 8:
        print("holding", flush=True)
        sys.stdin.read()  # until killed
"""


@pytest.mark.parametrize("handover", ["files", "slots"])
def test_a_loader_killed_with_9_leaves_no_shared_memory_behind(fake_cifar, handover):
    """Loader workers hand batches over in reused slots of anonymous shared memory (`BatchSlots`),
    or, without a free slot, as named shared-memory files (`_seed_worker`: much cheaper than
    torch's default descriptor passing); torch's shm manager must remove the files when the
    processes holding them are killed without a chance to clean up, and the slots are never in
    /dev/shm."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    import psutil

    shm = Path("/dev/shm")
    if not shm.is_dir():
        pytest.skip("no /dev/shm")
    before = {p.name for p in shm.iterdir()}
    proc = subprocess.Popen([sys.executable, "-c", _HOLD_BATCHES, str(fake_cifar), handover], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert proc.stdout.readline().strip() == "holding", proc.stderr.read()
        # torch names its files torch_<pid of the maker>_...: another process's are not this loader's (the
        # suite runs in two processes, and the other one's loaders come and go in /dev/shm meanwhile)
        ours = {str(p.pid) for p in [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]}
        made = {n for n in {p.name for p in shm.iterdir()} - before
                if not n.startswith("torch_") or n.split("_")[1] in ours}
        if handover == "files":
            assert any(n.startswith("torch_") for n in made), made  # the batches are in named files
        os.killpg(proc.pid, signal.SIGKILL)  # the trainer and its workers, as the OOM killer or a job end does
        proc.wait()
        deadline = time.time() + 30
        while (left := {p.name for p in shm.iterdir()} & made) and time.time() < deadline:
            time.sleep(0.2)
        assert not left, f"left in /dev/shm after kill -9: {sorted(left)[:5]}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


class _RecordingDataset(CifarDataset):
    """Writes the epoch of every batch a worker makes, as it starts making it, to a file."""

    def __init__(self, *args, log, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.log = log

    def __getitems__(self, keys):
        with open(self.log, "a") as f:
            f.write(f"{int(keys[0]) // len(self.indices)}\n")
        return super().__getitems__(keys)


def test_the_next_epoch_is_made_by_the_workers_before_it_is_iterated_and_is_the_same(tmp_path):
    """`TrainBatches.start(e)` (called by fit right after an epoch's training) sends epoch e to the
    persistent workers while the trainer validates; the batches it then yields are exactly those
    of an epoch that was not started ahead."""
    import time

    import torch

    from distributed.data import TrainBatches, make_loader

    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, 64)
    transform = build_train_transform(AugConfig(flip_p=0.5, cutout_p=0.5), (0.5, 0.5, 0.5))

    def batches(log):
        ds = _RecordingDataset(images, labels, np.arange(64), transform, seed=3, log=log)
        return TrainBatches(make_loader(ds, 8, shuffle=True, seed=3, num_workers=2, drop_last=True,
                                        pin_memory=False))

    ahead, log = batches(tmp_path / "ahead.log"), tmp_path / "ahead.log"
    assert len(list(ahead.epoch(0))) == 8
    ahead.start(1)  # and nothing iterated: the workers must begin epoch 1 on their own
    deadline = time.time() + 60
    while "1" not in log.read_text().split() and time.time() < deadline:
        time.sleep(0.05)
    assert "1" in log.read_text().split(), "start(1) sent no batch of epoch 1 to the workers"
    got = list(ahead.epoch(1))

    plain = batches(tmp_path / "plain.log")
    list(plain.epoch(0))
    expected = list(plain.epoch(1))
    assert len(got) == len(expected) == 8
    for (x, y, i), (x2, y2, i2) in zip(got, expected):
        assert torch.equal(i, i2) and torch.equal(y, y2) and torch.equal(x, x2)
    assert len(list(ahead.epoch(2))) == 8  # and the epochs after go on as before


# ----------------------------------------------------------------------------- batches in reused slots
def _slot_batches(reuse_buffers: bool, n: int = 320, batch: int = 32, workers: int = 2):
    from distributed.data import TrainBatches, make_loader

    rng = np.random.default_rng(4)
    images, labels = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n)
    ds = CifarDataset(images, labels, np.arange(n), build_train_transform(AugConfig(), MEAN), seed=7)
    loader = make_loader(ds, batch, shuffle=True, seed=7, num_workers=workers, drop_last=True, pin_memory=False,
                         reuse_buffers=reuse_buffers)
    slots = loader.worker_init_fn.keywords["slots"]
    return TrainBatches(loader), slots


def _same_batches(got, expected) -> bool:
    import torch

    return len(got) == len(expected) and all(
        torch.equal(x, x2) and torch.equal(y, y2) and torch.equal(i, i2) for (x, y, i), (x2, y2, i2) in zip(got, expected))


def test_batches_through_reused_slots_equal_new_tensors_and_held_ones_never_change():
    """Workers stack their batches into reused shared-memory slots (`BatchSlots`) and the trainer
    copies each out: three epochs, every batch held to the end (a slot is rewritten a dozen times
    meanwhile), equal those of a loader that sends a new tensor per batch; and every batch came
    through a slot (prefetch + 1 slots a worker are enough: none had to do without)."""
    batches, slots = _slot_batches(reuse_buffers=True)
    held = [b for e in range(3) for b in batches.epoch(e)]
    fresh, none = _slot_batches(reuse_buffers=False)
    assert none is None
    assert _same_batches(held, [b for e in range(3) for b in fresh.epoch(e)])
    assert slots.taken == len(held) == 30 and not slots.busy.any()


def test_an_abandoned_epoch_gives_its_slots_back():
    """An epoch left after one batch (the LR range test, a stopped trial): the batches the workers
    had made for it are dropped by the DataLoader, and dropping one frees its slot; else the
    workers would run out of slots and send new tensors from then on."""
    batches, slots = _slot_batches(reuse_buffers=True)
    first = next(iter(batches.epoch(0)))
    later = [b for e in (1, 2) for b in batches.epoch(e)]
    fresh, _ = _slot_batches(reuse_buffers=False)
    expected = [b for e in (0, 1, 2) for b in fresh.epoch(e)]
    assert _same_batches([first, *later], [expected[0], *expected[10:]])
    assert slots.taken == 21 and not slots.busy.any()


def test_a_worker_with_no_free_slot_sends_a_new_tensor():
    """Nothing waits for a slot: with every slot taken, the workers send new tensors, the same batches."""
    batches, slots = _slot_batches(reuse_buffers=True)
    slots.busy[:] = 1  # before the workers start (they fork at the first epoch)
    got = list(batches.epoch(0))
    fresh, _ = _slot_batches(reuse_buffers=False)
    assert _same_batches(got, list(fresh.epoch(0))) and slots.taken == 0


def test_slots_do_not_travel_to_a_worker_that_was_not_forked():
    """A worker started by spawn or forkserver cannot map the slots: it gets none (and sends tensors)."""
    from distributed.data import BatchSlots

    assert pickle.loads(pickle.dumps(BatchSlots(2, 5, (8, 32, 32, 3)))) is None


_EXIT_WITH_A_LIVE_LOADER = """
import numpy as np
from distributed.data import CifarDataset, TrainBatches, make_loader
rng = np.random.default_rng(0)
images, labels = rng.integers(0, 256, (256, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, 256)
ds = CifarDataset(images, labels, np.arange(256), transform=None, seed=3)
batches = TrainBatches(make_loader(ds, 32, shuffle=True, seed=3, num_workers=2, drop_last=True, pin_memory=False))
print(sum(len(x) for e in range(2) for x, _, _ in batches.epoch(e)))
"""


def test_a_script_that_ends_with_its_loader_alive_exits_quietly():
    """A loader alive at exit (a script's global): multiprocessing's exit handler ends its workers,
    and torch's SIGCHLD handler used to raise inside it ("Exception ignored in atexit callback ...
    DataLoader worker (pid N) is killed by signal: Terminated") in most runs. Three at once."""
    import subprocess
    import sys

    procs = [subprocess.Popen([sys.executable, "-c", _EXIT_WITH_A_LIVE_LOADER], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert (proc.returncode, out.strip(), err) == (0, "512", ""), err[-3000:]


def test_the_pin_thread_takes_a_slot_batch_out_into_pinned_memory(monkeypatch):
    """On a GPU host the DataLoader's pin thread calls torch's `pin_memory` on each batch as it
    arrives: that must reach `SlotBatch.pin_memory`, copy the images into pinned memory, free the
    slot and keep the labels as they came (`TrainBatches` pins those). Pinning itself needs a GPU:
    here `torch.empty` records that pinned memory was asked for."""
    import torch
    from torch.utils.data._utils.pin_memory import pin_memory

    from distributed.data import BatchSlots

    pool = BatchSlots(1, 5, (4, 32, 32, 3))
    images = list(np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8))
    received = pickle.loads(pickle.dumps(pool.put(0, images)))  # as the worker sends it
    assert pool.busy.tolist() == [[1, 0, 0, 0, 0]]
    asked, empty = [], torch.empty

    def recording_empty(*args, pin_memory=False, **kwargs):
        asked.append(pin_memory)
        return empty(*args, **kwargs)

    monkeypatch.setattr(torch, "empty", recording_empty)
    x, y, i = pin_memory((received, np.arange(4), np.arange(4)))
    assert asked == [True] and np.array_equal(x.numpy(), np.stack(images))
    assert isinstance(y, np.ndarray) and not pool.busy.any() and pool.taken == 1


def test_images_a_slot_cannot_hold_go_as_a_tensor_and_leave_the_slot_free():
    """A batch of another dtype, image shape or size than the slots' is refused (`put` gives None:
    the worker sends a tensor) and the slot it tried stays free for the next batch."""
    from distributed.data import BatchSlots

    pool = BatchSlots(1, 2, (4, 32, 32, 3))
    good = [np.full((32, 32, 3), 7, np.uint8)] * 3
    for bad in ([np.zeros((32, 32, 3), np.float32)] * 3, [np.zeros((31, 32, 3), np.uint8)] * 3,
                [np.zeros((32, 32, 3), np.uint8)] * 5):
        assert pool.put(0, bad) is None and not pool.busy.any()
    sent = pool.put(0, good)
    assert (sent.slot, sent.n) == (0, 3) and pool.busy.tolist() == [[1, 0]]
    assert (pool.images[0, 0, :3] == 7).all()
