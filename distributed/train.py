"""Train ResNet18 on CIFAR-10.

    accelerate launch distributed/train.py [--flags]        # 1 GPU, N GPUs, N nodes (see launch/)
    python distributed/train.py [--flags]                   # one process, same job
    ACCELERATE_USE_CPU=true torchrun --nproc_per_node 2 distributed/train.py ...   # CPU DDP (gloo)

This script only parses arguments and calls `distributed.engine.fit`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    """Parse flags, build the config, run `fit`, build the report. Returns the exit code."""
    from distributed.config import ConfigError, add_config_arguments, config_from_args

    parser = argparse.ArgumentParser(description="Train ResNet18 on CIFAR-10 (Accelerate; CPU, GPU, DDP).")
    add_config_arguments(parser)
    parser.add_argument("--resume", action="store_true",
                        help="continue runs/<name> from its newest checkpoint, with its saved config")
    parser.add_argument("--find-lr", action="store_true",
                        help="run the LR range test first (lr_find.json) and train with its suggested max_lr "
                             "(or with --max-lr when given)")
    parser.add_argument("--no-report", action="store_true", help="do not build reports/index.html at the end")
    parser.add_argument("--report-dir", default="reports", help="where the report goes (default: reports)")
    args = parser.parse_args(argv)
    try:
        cfg = config_from_args(args)
        run_dir = Path(cfg.runs_dir) / cfg.name
        if args.resume and args.config is None and (run_dir / "config.json").exists():
            # Resume with the run's own settings; flags given now override (and are checked by fit).
            args.config = run_dir / "config.json"
            cfg = config_from_args(args)
        from distributed.data import DataError
        from distributed.engine import LaunchError, fit
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        summary = fit(cfg, run_dir, resume=args.resume, find_lr=args.find_lr,
                      adopt_found_lr=args.max_lr is None)
    except (ConfigError, DataError, LaunchError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted; continue with: python distributed/train.py --name {cfg.name} --resume", file=sys.stderr)
        return 130
    if not args.no_report and summary.get("test_acc") is not None and _is_main():
        from reporting.report import build_report_after_run
        if not build_report_after_run(run_dir, args.report_dir):
            return 1
    return 0


def _is_main() -> bool:
    import os
    return int(os.environ.get("RANK", "0")) == 0


if __name__ == "__main__":
    # Run as a script, sys.path[0] is distributed/: its module names (config, data, ...) must not
    # shadow top-level packages, and the project root must be importable without an install.
    sys.path[0] = str(Path(__file__).resolve().parent.parent)
    sys.exit(main())
