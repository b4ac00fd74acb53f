"""Data: the official format, the restricted unpickler, splits, statistics, augmentation."""
import pickle

import numpy as np
import pytest

from cifar_fixture import make_fake_cifar
from distributed.augment import build_test_transform, build_train_transform
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


def _images(n=16):
    return np.random.default_rng(1).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def test_augmentation_with_all_probabilities_zero_is_normalize_only():
    aug = AugConfig(pad=0, flip_p=0, affine_p=0, color_p=0, cutout_p=0)
    train, test = build_train_transform(aug, MEAN, STD), build_test_transform(MEAN, STD)
    for img in _images():
        assert np.allclose(train(image=img)["image"], test(image=img)["image"])
        assert np.allclose(test(image=img)["image"], (img / 255.0 - 0.5) / 0.25, atol=1e-5)


def test_augmentation_with_flip_probability_one_always_flips():
    aug = AugConfig(pad=0, flip_p=1.0, affine_p=0, color_p=0, cutout_p=0)
    t = build_train_transform(aug, MEAN, STD)
    for img in _images():
        assert np.allclose(t(image=img)["image"], (img[:, ::-1] / 255.0 - 0.5) / 0.25, atol=1e-5)


def test_cutout_probability_one_always_cuts_a_hole_of_the_configured_size():
    aug = AugConfig(pad=0, flip_p=0, affine_p=0, color_p=0, cutout_p=1.0, cutout_min=8, cutout_max=8)
    t = build_train_transform(aug, MEAN, STD)
    for img in _images():
        out = t(image=np.full_like(img, 255))["image"]  # white image: the hole is the only mean-valued area
        assert (np.abs(out).sum(-1) == 0).sum() == 64


def test_augmentation_is_keyed_on_seed_epoch_and_batch_not_on_worker_state():
    x = _images(40)
    y = np.arange(40) % 10
    t = build_train_transform(AugConfig(affine_p=0.5, color_p=0.5), MEAN, STD)
    a = CifarDataset(x, y, np.arange(40), t, seed=3)
    b = CifarDataset(x, y, np.arange(40), build_train_transform(AugConfig(affine_p=0.5, color_p=0.5), MEAN, STD), seed=3)
    b.__getitems__([40 + 5, 40 + 6])  # b's transform has been used before: state must not matter
    batch_a, _, idx = a.__getitems__([40 + 1, 40 + 2])  # epoch 1, images 1 and 2
    batch_b, _, _ = b.__getitems__([40 + 1, 40 + 2])
    assert idx.tolist() == [1, 2] and batch_a.shape == (2, 3, 32, 32)
    assert torch_equal(batch_a, batch_b)
    other_epoch, _, _ = a.__getitems__([80 + 1, 80 + 2])
    assert not torch_equal(batch_a, other_epoch)


def torch_equal(a, b):
    import torch
    return torch.equal(a.contiguous(), b.contiguous())
