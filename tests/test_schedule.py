"""Per-epoch schedules (`--aug-schedule FILE`, a PBT trial's values): stretched over the run, applied
to augmentation in persistent loader workers, dropout, weight decay and l1, recorded per epoch,
and refused in one line when the file or a value is wrong."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from distributed import rundir
from distributed.augment import ScheduledTransform, build_run_transform
from distributed.config import ConfigError, TrainConfig, load_schedule, schedule_index
from distributed.data import CifarDataset, TrainBatches, make_loader
from distributed.engine import apply_regularisers, fit
from distributed.model import resnet18

ROOT = Path(__file__).resolve().parent.parent
# Two schedule entries; what each changes is visible in what the run records and does.
ENTRIES = [{"flip_p": 0.0, "cutout_p": 0.1, "dropout": 0.0, "weight_decay": 1e-4, "l1": 0.0},
           {"flip_p": 1.0, "cutout_p": 0.6, "dropout": 0.25, "weight_decay": 2e-3, "l1": 1e-6}]
# Augmentation that does nothing, so that a flip is the only change an image can see.
NO_AUG = dict(pad=0, flip_p=0.0, affine_p=0.0, color_p=0.0, cutout_p=0.0)


def schedule_file(path: Path, entries) -> Path:
    """A schedule as a search writes it (best/schedule.json), keys besides "schedule" included."""
    path.write_text(json.dumps({"kind": "cifar-lab augmentation schedule", "version": 1, "trial": "t0",
                                "epochs": len(entries), "fields": sorted(entries[0]),
                                "schedule": [{"epoch": i + 1, **e} for i, e in enumerate(entries)],
                                "lineage": []}))
    return path


def test_a_schedule_is_stretched_or_squeezed_over_the_run():
    assert [schedule_index(e, 8, 4) for e in range(8)] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert [schedule_index(e, 3, 2) for e in range(3)] == [0, 0, 1]
    assert [schedule_index(e, 2, 4) for e in range(2)] == [0, 2]       # fewer epochs than entries
    assert [schedule_index(e, 30, 1) for e in range(30)] == [0] * 30   # one entry: constant
    cfg = TrainConfig(epochs=4, aug_schedule=tuple(ENTRIES))
    assert [cfg.for_epoch(e).aug.flip_p for e in range(4)] == [0.0, 0.0, 1.0, 1.0]
    assert cfg.for_epoch(3).dropout == 0.25 and cfg.for_epoch(3).aug_schedule == ()
    assert TrainConfig().for_epoch(5) == TrainConfig()                   # no schedule: the config itself
    # config.json's form round-trips and compares equal (a resume must not see a change)
    again = TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg and again.to_dict() == cfg.to_dict()


def test_scheduled_augmentation_changes_at_the_epoch_boundary_in_persistent_workers():
    """One worker, persistent: it is never rebuilt, yet epoch 1's batches are flipped and epoch 0's not."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    cfg = TrainConfig(epochs=2).replace(**NO_AUG, aug_schedule=({"flip_p": 0.0}, {"flip_p": 1.0}))
    transform = build_run_transform(cfg, (0.5, 0.5, 0.5))
    assert isinstance(transform, ScheduledTransform)
    ds = CifarDataset(images, np.zeros(16, dtype=np.int64), np.arange(16), transform, seed=1)
    loader = make_loader(ds, 16, shuffle=False, seed=0, num_workers=1, drop_last=True, pin_memory=False)
    batches = TrainBatches(loader)  # as fit iterates it
    seen = []
    for epoch in range(2):
        (x, _, idx), = list(batches.epoch(epoch))
        seen.append((x.numpy(), idx.numpy()))
    (x0, i0), (x1, i1) = seen
    assert np.array_equal(x0, images[i0])
    assert np.array_equal(x1, images[i1][:, :, ::-1])


def test_regularisers_follow_the_epoch():
    cfg = TrainConfig(epochs=2, aug_schedule=tuple(ENTRIES))
    model = resnet18(dropout=0.0)
    p = SimpleNamespace(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=5e-4))
    apply_regularisers(cfg.for_epoch(1), p)
    assert model.dropout.p == 0.25 and p.optimizer.param_groups[0]["weight_decay"] == 2e-3
    apply_regularisers(cfg.for_epoch(0), p)
    assert model.dropout.p == 0.0 and p.optimizer.param_groups[0]["weight_decay"] == 1e-4


def cli(*args):
    return subprocess.run([sys.executable, str(ROOT / "distributed" / "train.py"), *map(str, args)],
                          capture_output=True, text=True, env=os.environ.copy(), timeout=600)


def flags(data: Path, runs: Path, name: str) -> list[str]:
    return ["--name", name, "--data-dir", data, "--runs-dir", runs, "--no-download", "--no-report",
            "--subset", 60, "--val-size", 20, "--test-subset", 20, "--batch-size", 20, "--max-lr", 0.01,
            "--epochs", 4, "--checkpoint-every", 1, "--keep-checkpoints", 4]


@pytest.fixture(scope="module")
def replayed(fake_cifar, tmp_path_factory):
    """A 4-epoch run of a 2-entry schedule under train.py, with a loader worker (persistent)."""
    tmp = tmp_path_factory.mktemp("sched")
    path = schedule_file(tmp / "schedule.json", ENTRIES)
    r = cli(*flags(fake_cifar, tmp / "runs", "replay"), "--num-workers", 1, "--aug-schedule", path)
    assert r.returncode == 0, r.stderr
    return tmp / "runs" / "replay", path


def test_a_replayed_schedule_is_recorded_epoch_by_epoch(replayed):
    run, path = replayed
    rows = rundir.read_metrics(run)
    assert [r["schedule"] for r in rows] == [ENTRIES[0], ENTRIES[0], ENTRIES[1], ENTRIES[1]]
    saved = rundir.read_json(run / rundir.CONFIG)["config"]
    assert saved["aug_schedule"] == ENTRIES and list(load_schedule(path)) == ENTRIES
    # The optimiser trained each epoch with its weight decay (the epoch's checkpoint holds its groups).
    decays = [torch.load(c / "optimizer.bin", weights_only=False)["param_groups"][0]["weight_decay"]
              for c in rundir.checkpoint_dirs(run)]
    assert decays == [1e-4, 1e-4, 2e-3, 2e-3]


def test_resume_keeps_the_schedule_and_refuses_another_unless_told(replayed, fake_cifar, tmp_path):
    run, _ = replayed
    copy = tmp_path / "runs" / "replay"
    shutil.copytree(run, copy)
    (copy / rundir.SUMMARY).unlink()
    for c in rundir.checkpoint_dirs(copy)[2:]:
        shutil.rmtree(c)  # as if killed after epoch 2's checkpoint
    cfg = TrainConfig.from_dict(rundir.read_json(copy / rundir.CONFIG)["config"]).replace(runs_dir=str(tmp_path / "runs"))
    other = cfg.replace(aug_schedule=(ENTRIES[1],))
    with pytest.raises(ConfigError, match="aug_schedule"):
        fit(other, copy, resume=True, progress=False)
    # A PBT trial after an exploit: epochs 3-4 follow the new 1-entry schedule.
    fit(other, copy, resume=True, progress=False, schedule_may_change=True)
    assert [r["schedule"] for r in rundir.read_metrics(copy)] == [ENTRIES[0], ENTRIES[0], ENTRIES[1], ENTRIES[1]]
    # train.py --resume takes the run's own schedule from config.json
    r = cli("--name", "replay", "--runs-dir", tmp_path / "runs", "--resume", "--no-report")
    assert r.returncode == 0 and "already complete" in r.stdout, r.stderr


@pytest.mark.parametrize("content, words", [
    (None, "no such file"),
    ("{not json", "cannot be read as JSON"),
    ({"schedule": []}, 'non-empty "schedule" list'),
    ({"schedule": [{"epoch": 2, "flip_p": 0.1}]}, "must be epochs 1..1 in order"),
    ({"schedule": [{"epoch": 1, "max_lr": 0.1}]}, "max_lr cannot be scheduled"),
    ({"schedule": [{"epoch": 1, "flip_p": 1.3}]}, "invalid --flip-p 1.3"),
    ({"schedule": [{"epoch": 1, "flip_p": "high"}]}, "flip_p must be a number"),
])
def test_a_bad_schedule_file_is_one_line(tmp_path, content, words):
    path = tmp_path / "s.json"
    if content is not None:
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(ConfigError, match=words.replace("(", r"\(")) as e:
        TrainConfig(aug_schedule=load_schedule(path))
    assert "\n" not in str(e.value)


def test_train_py_refuses_a_bad_schedule_in_one_line(fake_cifar, tmp_path):
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"schedule": [{"epoch": 1, "cutout_p": 2}]}))
    r = cli(*flags(fake_cifar, tmp_path / "runs", "bad"), "--aug-schedule", path)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0, r.stderr
    assert r.stderr.startswith("error: invalid --aug-schedule: entry 1") and "cutout-p 2" in r.stderr
    assert not (tmp_path / "runs" / "bad").exists()
