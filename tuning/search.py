"""Hyperparameter search for ResNet18 on CIFAR-10 with Ray Tune (ASHA on validation accuracy).

    python tuning/search.py --num-samples 32 --epochs 30 --grace-period 3
    python tuning/search.py --name s1 --resume                      # continue an interrupted search
    python tuning/search.py --space my_space.yaml --gpus-per-trial 0.25
    python tuning/search.py --workers-per-trial 2 --address auto    # DDP trials on a Ray cluster

All training flags of distributed/train.py (`--epochs`, `--subset`, `--data-dir`, ...) set the base
config every trial starts from; `--epochs` is the most epochs a trial may get. The space is in
tuning/space.py. This script only parses arguments and calls `tuning.runner.run_search`.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (argparse prints usage too by default)
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    from distributed.config import add_config_arguments

    parser = _Parser(description="Ray Tune search over the ResNet18 recipe (ASHA, best trial tested once).")
    s = parser.add_argument_group("search")
    s.add_argument("--num-samples", type=int, default=32, help="trials to sample (default: 32)")
    s.add_argument("--grace-period", type=int, default=1,
                   help="ASHA: epochs every trial gets before it may be stopped (default: 1)")
    s.add_argument("--reduction-factor", type=int, default=2, help="ASHA reduction factor (default: 2)")
    s.add_argument("--space", type=Path, default=None, help="YAML/JSON overrides of the search space")
    s.add_argument("--gpus-per-trial", type=float, default=None,
                   help="GPUs per trial, fractions share one (default: 1 if a GPU is visible, else 0)")
    s.add_argument("--cpus-per-trial", type=float, default=1.0, help="CPUs per trial (default: 1)")
    s.add_argument("--workers-per-trial", type=int, default=1,
                   help="DDP workers per trial via Ray Train's TorchTrainer; gpus/cpus-per-trial are then "
                        "per worker (default: 1)")
    s.add_argument("--max-concurrent-trials", type=int, default=0, help="0 = as resources allow (default)")
    s.add_argument("--address", default=None, help="join a running Ray cluster (e.g. auto)")
    s.add_argument("--num-cpus", type=int, default=None, help="CPUs a local Ray may use (default: all)")
    s.add_argument("--search-seed", type=int, default=0, help="seed of the hyperparameter sampling")
    s.add_argument("--resume", action="store_true", help="continue runs/search-<name> after an interruption")
    s.add_argument("--tune-checkpoints", action="store_true",
                   help="also copy each epoch checkpoint into Ray's storage (clusters without a shared --runs-dir)")
    s.add_argument("--no-report", action="store_true", help="do not build the HTML report at the end")
    s.add_argument("--report-dir", default="reports", help="where the report goes (default: reports)")
    add_config_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse flags, run the search, build the report. Returns the exit code."""
    from distributed.config import ConfigError, config_from_args
    from distributed.data import DataError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        from tuning.runner import SearchConfig, load_saved_search, run_search, search_dir_for
        from tuning.space import load_space_file

        name = args.name or "search"
        args.name = None  # the search's name, not a training run's
        base_cfg = config_from_args(args)
        overrides = load_space_file(args.space) if args.space is not None else {}
        gpus = args.gpus_per_trial
        if gpus is None:
            import torch
            gpus = 1.0 if torch.cuda.is_available() else 0.0
        if args.resume:
            saved_cfg, saved = load_saved_search(search_dir_for(base_cfg, name))
            base_cfg, overrides = saved_cfg, saved.get("space") or {}
        search = SearchConfig(
            name=name, num_samples=args.num_samples, grace_period=args.grace_period,
            reduction_factor=args.reduction_factor, gpus_per_trial=gpus, cpus_per_trial=args.cpus_per_trial,
            workers_per_trial=args.workers_per_trial, max_concurrent_trials=args.max_concurrent_trials,
            address=args.address, num_cpus=args.num_cpus, resume=args.resume, space=overrides,
            seed=args.search_seed, tune_checkpoints=args.tune_checkpoints)
        if args.resume:  # the search's own settings; only where/how it runs may change
            keep = ("num_samples", "grace_period", "reduction_factor", "gpus_per_trial", "cpus_per_trial",
                    "workers_per_trial", "seed")
            search = dataclasses.replace(search, **{k: saved[k] for k in keep if k in saved})
        summary = run_search(base_cfg, search)
    except (ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted; continue with: python tuning/search.py --name {name} --resume", file=sys.stderr)
        return 130
    if summary.get("interrupted"):
        return 130
    if not args.no_report and summary.get("test_acc") is not None:
        from reporting.report import build_report_after_run
        if not build_report_after_run(summary["search_dir"], args.report_dir):
            return 1
    return 0


if __name__ == "__main__":
    # Run as a script, sys.path[0] is tuning/: put the project root there instead.
    sys.path[0] = str(Path(__file__).resolve().parent.parent)
    sys.exit(main())
