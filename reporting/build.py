"""Build the static HTML report of a run or a search (the same command as `cifar-report`):

    python reporting/build.py runs/resnet18         # -> reports/resnet18/, shown with the others in reports/index.html
    python reporting/build.py runs/search-lr --out reports --data-dir data --device cpu

A script only: the command line is `cifar_lab.cli.report`, the report `reporting.report.build_report`.
"""
if __name__ == "__main__":
    try:
        from cifar_lab.cli import script
    except ModuleNotFoundError as e:
        raise SystemExit(f"error: cannot import {e.name}: install the project first (`pip install -e .` "
                         f"in the repository root)") from None
    script("report")
