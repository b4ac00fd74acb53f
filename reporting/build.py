#!/usr/bin/env python
"""Build the static HTML report of a run or a search:

    python reporting/build.py runs/resnet18                # -> reports/index.html
    python reporting/build.py runs/search-lr --out reports/lr --data-dir data --device cpu

Only parses arguments; the work is `reporting.report.build_report`.
"""
from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, Python puts reporting/ first on sys.path, where `reporting/*.py` could shadow
# top-level modules; the repository root is where the project's packages live.
if __name__ == "__main__":
    _here = Path(__file__).resolve().parent
    if sys.path and Path(sys.path[0] or ".").resolve() == _here:
        sys.path.pop(0)
    sys.path.insert(0, str(_here.parent))


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, build the report, print where it is; 2 on unusable input."""
    import argparse

    parser = argparse.ArgumentParser(description="Build the static HTML report of a training run or search.")
    parser.add_argument("run_dir", type=Path, help="runs/<name> (train.py) or runs/search-<name> (tuning)")
    parser.add_argument("--out", type=Path, default=Path("reports"), help="output folder (default: reports)")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="CIFAR-10 folder holding cifar-10-batches-py/ (default: the run's data_dir)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None,
                        help="where GradCAM runs (default: cuda when available)")
    args = parser.parse_args(argv)

    from reporting.report import ReportError, build_report

    try:
        path = build_report(args.run_dir, args.out, data_dir=args.data_dir, device=args.device)
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"report written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
