"""Train ResNet18 on CIFAR-10 (the same command as `cifar-train`; flags: `--help`).

    accelerate launch distributed/train.py [--flags]        # 1 GPU, N GPUs, N nodes (see launch/)
    python distributed/train.py [--flags]                   # one process, same job
    ACCELERATE_USE_CPU=true torchrun --nproc_per_node 2 distributed/train.py ...   # CPU DDP (gloo)

A script only: the command line is `cifar_lab.cli.train`, the training `distributed.engine.fit`.
"""
if __name__ == "__main__":
    try:
        from cifar_lab.cli import script
    except ModuleNotFoundError as e:
        raise SystemExit(f"error: cannot import {e.name}: install the project first (`pip install -e .` "
                         f"in the repository root)") from None
    script("train")
