"""Real 2-process DDP on CPU (torchrun + gloo), and the broken-launch guard."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from distributed import rundir

ROOT = Path(__file__).resolve().parent.parent
TRAIN = str(ROOT / "distributed" / "train.py")


def test_two_process_ddp_keeps_weights_identical_and_counts_every_test_image_once(fake_cifar, tmp_path):
    # 30 test images, 2 processes, eval batch 8 (4 per process): the last batches are uneven and
    # Accelerate pads them; gather_for_metrics must drop the padding.
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517", TRAIN,
           "--data-dir", fake_cifar, "--runs-dir", tmp_path, "--name", "ddp", "--no-download", "--no-report",
           "--subset", "100", "--val-size", "20", "--test-subset", "30", "--epochs", "2", "--batch-size", "20",
           "--eval-batch-size", "8", "--num-workers", "1", "--max-lr", "0.05"]
    r = subprocess.run(list(map(str, cmd)), capture_output=True, text=True, timeout=600,
                       env={**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["world_size"] == 2
    assert summary["ranks_in_sync"] is True
    assert summary["test_count"] == 30
    pred = rundir.load_predictions(tmp_path / "ddp")
    assert len(pred["indices"]) == 30 and len(np.unique(pred["indices"])) == 30
    cfg = rundir.read_json(tmp_path / "ddp" / "config.json")
    assert cfg["world_size"] == 2 and cfg["split"]["test"] == 30
    # Every training image seen once per epoch across the 2 ranks: 80 images, 4 global batches of 20.
    assert r.stdout.count("epoch   2/2") == 1  # one log line per epoch, from the main process only


def test_a_launch_that_accelerate_does_not_see_is_refused(tmp_path):
    # On a machine without GPUs `accelerate launch --multi_gpu --num_processes 2` starts two
    # processes (WORLD_SIZE=2) that each fall back to a single-process Accelerator.
    env = {k: v for k, v in os.environ.items() if k != "ACCELERATE_USE_CPU"}
    r = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                        "--main_process_port", "29519", TRAIN, "--runs-dir", str(tmp_path),
                        "--data-dir", str(tmp_path / "d"), "--no-download"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode != 0
    assert "error: 2 processes were launched (WORLD_SIZE=2) but Accelerate sees 1" in r.stderr
    assert "ACCELERATE_USE_CPU=true torchrun --nproc_per_node 2" in r.stderr
    assert not any(tmp_path.iterdir())
