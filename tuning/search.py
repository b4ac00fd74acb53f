"""Hyperparameter search for ResNet18 on CIFAR-10 with Ray Tune (the same command as `cifar-search`).

    python tuning/search.py --num-samples 32 --epochs 30 --grace-period 3
    python tuning/search.py --name s1 --resume                      # continue an interrupted search
    python tuning/search.py --space my_space.yaml --gpus-per-trial 0.25
    python tuning/search.py --workers-per-trial 2 --address auto    # DDP trials on a Ray cluster

All training flags of distributed/train.py (`--epochs`, `--subset`, `--data-dir`, ...) set the base
config every trial starts from; `--epochs` is the most epochs a trial may get. The space is in
tuning/space.py. A script only: the command line is `cifar_lab.cli.search`, the search
`tuning.runner.run_search`.
"""
if __name__ == "__main__":
    try:
        from cifar_lab.cli import script
    except ModuleNotFoundError as e:
        raise SystemExit(f"error: cannot import {e.name}: install the project first (`pip install -e .` "
                         f"in the repository root)") from None
    script("search")
