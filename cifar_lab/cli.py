"""The three command lines, and the step after a run that both training and search take.

    cifar-train  [flags]   = python distributed/train.py   (accelerate launch / torchrun / python)
    cifar-search [flags]   = python tuning/search.py
    cifar-report RUN_DIR   = python reporting/build.py

This package sits above the three stages (distributed <- reporting <- tuning <- cifar_lab): it is
the one place that sees all of them, so a training run can end with its report without the
training package importing the report. Each function only parses arguments and calls the stage's
entry function (`fit`, `run_search`, `build_report`); every flag comes from a config dataclass.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
from pathlib import Path
from typing import Any


class _Parser(argparse.ArgumentParser):
    """argparse that answers bad flags with one line (its default prints the whole usage too), and
    takes no abbreviations: `--epoch 2` must not quietly mean `--epochs 2`."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(allow_abbrev=False, **kwargs)

    def error(self, message: str):
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


# Command-line choices that are not config fields; a run or search keeps them (config.json or
# search.json, under "cli") so that `--resume` remembers what was not typed again.
REPORT_DEFAULTS = {"report": True, "report_dir": "reports"}


def _add_report_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("report")
    group.add_argument("--report", action=argparse.BooleanOptionalAction, default=None,
                       help="build the HTML report (a folder with index.html) at the end; --no-report skips it "
                            "(default: build it; --resume remembers the choice)")
    group.add_argument("--report-dir", default=None,
                       help="folder of reports: this one goes to REPORT_DIR/<name>/, and REPORT_DIR/index.html "
                            "shows it with every report listed (default: reports; --resume remembers it)")


def _cli_options(args: argparse.Namespace, saved: dict[str, Any] | None = None) -> dict[str, Any]:
    """The report choices of this command: typed now, else remembered from `saved`, else the defaults.
    Also written back into `args`, where `finish_run` reads them."""
    saved = saved or {}
    options = {k: getattr(args, k) if getattr(args, k) is not None else saved.get(k, default)
               for k, default in REPORT_DEFAULTS.items()}
    for k, v in options.items():
        setattr(args, k, v)
    return options


def _check_report_dir(options: dict[str, Any]) -> None:
    """A report folder that cannot be written is said before training, not after it: the report is
    built at the end, and a run of hours should not end on "report failed". Raises ConfigError."""
    if not options["report"]:
        return
    from distributed.config import ConfigError
    from distributed.rundir import WriteError, check_writable

    try:
        check_writable(Path(options["report_dir"]), 0)
    except WriteError as e:
        raise ConfigError(f"{e} (the report is built there at the end); make that folder writable, or choose "
                          f"another --report-dir, or pass --no-report") from None


def finish_run(run_dir: str | Path, args: argparse.Namespace) -> int:
    """After a finished run or search: build its report unless --no-report. A report that fails
    never hides the finished run: one line says how to rebuild it, and the exit code is 1."""
    if not args.report:
        return 0
    from reporting.report import build_report

    try:
        print(f"report: {build_report(run_dir, args.report_dir)}", flush=True)
        return 0
    except Exception as e:  # noqa: BLE001 - any failure leaves the finished run intact
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        print(f"report failed ({type(e).__name__}: {first}); the run is complete, rebuild it with "
              f"`python reporting/build.py {run_dir} --out {args.report_dir}`", file=sys.stderr)
        return 1


# ----------------------------------------------------------------------------- training
def train_parser() -> argparse.ArgumentParser:
    """The flags of `cifar-train`: every TrainConfig/AugConfig field, and the CLI-only choices."""
    from distributed.config import add_config_arguments

    parser = _Parser(description="Train ResNet18 on CIFAR-10 (Accelerate; CPU, GPU, DDP).")
    add_config_arguments(parser)
    parser.add_argument("--resume", action="store_true",
                        help="continue runs-dir/NAME from its newest checkpoint, with its saved config and "
                             "report choices (a run without a checkpoint starts over)")
    parser.add_argument("--debug", action="store_true",
                        help="on a failure, print the full traceback before the one-line error, for a bug report; "
                             "CIFAR_LAB_DEBUG=1 does the same (default: off)")
    parser.add_argument("--find-lr", action="store_true",
                        help="run the LR range test first (100 steps; lr_find.json) and train with its "
                             "suggested max_lr (or with --max-lr when given)")
    _add_report_flags(parser)
    return parser


def train(argv: list[str] | None = None) -> int:
    """`cifar-train`: parse flags, [LR range test], `fit`, report. Returns the exit code."""
    from distributed.config import ConfigError, config_from_args

    parser = train_parser()
    args = parser.parse_args(argv)
    try:
        cfg = config_from_args(args)
        run_dir = Path(cfg.runs_dir) / cfg.name
        resuming = args.resume and (run_dir / "config.json").exists()
        saved_cli = {}
        if resuming:
            from distributed.rundir import read_json

            saved_cli = read_json(run_dir / "config.json").get("cli") or {}
            if args.config is None:
                # Resume with the run's own settings; flags given now override (and are checked by fit).
                args.config = run_dir / "config.json"
                cfg = config_from_args(args)
        options = _cli_options(args, saved_cli)
        _check_report_dir(options)
        from distributed.data import DataError
        from distributed.engine import Preempted, fit, stop_on_signals
        from distributed.lr_finder import find_lr
        from distributed.pipeline import LaunchError
        from distributed.tracking import check_tracker

        if cfg.log_with != "none":
            check_tracker(cfg.log_with)  # before any work, not after an LR range test
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    main_process = int(os.environ.get("RANK", "0")) == 0
    try:
        # SIGTERM (SLURM's preemption and requeue, Kubernetes, spot instances) stops training at
        # the next step on every rank instead of killing it wherever it is.
        with stop_on_signals(signal.SIGTERM) as stop:
            if args.find_lr and not resuming:
                # The suggestion, unless a max_lr was chosen (a flag or a --config file).
                cfg = find_lr(cfg, run_dir, use_suggestion=cfg.max_lr is None)
            summary = fit(cfg, run_dir, resume=args.resume, stop=stop, cli_options=options)
    except (ConfigError, DataError, LaunchError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        kept, then = _kept(cfg, run_dir)
        print(f"interrupted; {kept}; {then}", file=sys.stderr)
        return 130
    except Preempted as e:
        if main_process:
            kept = f"newest checkpoint: epoch {e.resume_epoch}" if e.resume_epoch else "no checkpoint yet"
            launcher = " (under the same launcher)" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""
            print(f"stopped by {e.signal_name} in epoch {e.epoch}, nothing half-written ({kept}); continue with: "
                  f"{_resume_command(cfg)}{launcher}", file=sys.stderr, flush=True)
        return 128 + signal.SIGTERM  # 143, what a process killed by SIGTERM returns: schedulers expect it
    except Exception as e:  # noqa: BLE001 - every failure ends the process, saying what is kept
        # The run has failed: torch's SIGCHLD handler reporting a dead loader worker again (it
        # raises wherever the process is) would only interrupt the report of this failure.
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        _report_failure(e, cfg, run_dir, debug=args.debug or os.environ.get("CIFAR_LAB_DEBUG", "") not in ("", "0"))
        return 1
    if summary.get("test_acc") is None or not main_process:
        return 0  # only the main process of a DDP run builds the report
    return finish_run(run_dir, args)


def _kept(cfg, run_dir: Path) -> tuple[str, str]:
    """What an ended run's directory keeps, and what continues it."""
    from distributed.rundir import checkpoint_dirs

    checkpoints = checkpoint_dirs(run_dir)
    if checkpoints:
        return (f"the checkpoint of epoch {int(checkpoints[-1].name.split('_')[-1])} is intact",
                f"continue with: {_resume_command(cfg)}")
    if (run_dir / "config.json").exists():
        return "it stopped before its first checkpoint", f"`{_resume_command(cfg)}` starts it over"
    return ("nothing was written (a run directory appears when its first epoch ends)",
            "run the same command again to start over")


def _report_failure(e: Exception, cfg, run_dir: Path, debug: bool) -> None:
    """One line on stderr for a failure users meet (`distributed.failures.explain`): what happened,
    what is kept, what to do. An unexpected error keeps its traceback, and the line follows it.
    In a DDP job the main process speaks for failures all ranks share; a rank's own names its rank."""
    import traceback

    from distributed.failures import explain

    failure = explain(e, cfg)
    rank = int(os.environ.get("RANK", "0"))
    if failure is not None and failure.every_rank and rank != 0:
        return
    if failure is None or debug:
        traceback.print_exc()
    who = f"rank {rank}: " if rank != 0 else ""
    kept, then = _kept(cfg, run_dir)
    if failure is None:
        line = f"unexpected {type(e).__name__} (a bug: please report it with the traceback above); {kept}; {then}"
    elif failure.resumable:
        line = f"{failure.what}; {kept}; {failure.fix}, then {then}"
    else:
        line = f"{failure.what}; {kept}, but {failure.fix}"
    print(f"{who}error: {line}", file=sys.stderr, flush=True)


def _resume_command(cfg) -> str:
    """The train.py command line that continues `cfg`'s run (the launcher in front stays the same)."""
    runs = "" if cfg.runs_dir == "runs" else f" --runs-dir {cfg.runs_dir}"
    return f"python distributed/train.py --name {cfg.name}{runs} --resume"


# ----------------------------------------------------------------------------- search
def search_parser() -> argparse.ArgumentParser:
    """The flags of `cifar-search`: SearchConfig's, the report choices, and every training flag."""
    from distributed.config import add_config_arguments, add_dataclass_arguments
    from tuning.config import SearchConfig

    parser = _Parser(description="Ray Tune search over the ResNet18 recipe (ASHA, best trial tested once).")
    group = parser.add_argument_group("search")
    add_dataclass_arguments(group, SearchConfig, prefix="search_")
    group.add_argument("--space", type=Path, default=None, metavar="FILE",
                       help="YAML/JSON file of search-space overrides, merged over tuning/space.py's; max_lr "
                            "values are at batch 512 and scaled to --batch-size (default: none)")
    _add_report_flags(parser)
    add_config_arguments(parser, skip=("name",))  # --name is the search's
    return parser


def search(argv: list[str] | None = None) -> int:
    """`cifar-search`: parse flags, `run_search`, report. Returns the exit code."""
    from distributed.config import ConfigError, config_from_args, given_fields
    from tuning.config import SearchConfig

    args = search_parser().parse_args(argv)
    settings = None
    try:
        from distributed.data import DataError
        from distributed.rundir import SEARCH_JSON, WriteError, read_json
        from tuning.runner import load_saved_search, run_search, search_dir_for
        from tuning.space import load_space_file

        base_cfg = config_from_args(args, skip=("name",))
        overrides = load_space_file(args.space) if args.space is not None else {}
        given = given_fields(args, SearchConfig, prefix="search_")
        if given.get("resume") and "name" not in given:
            found = sorted(p.name[len("search-"):] for p in Path(base_cfg.runs_dir).glob("search-*")
                           if (p / SEARCH_JSON).exists())
            raise ConfigError("--resume needs the --name of the search to continue"
                              + (f" (in {base_cfg.runs_dir}: {', '.join(found)})" if found else ""))
        settings = SearchConfig(**given, space=overrides)
        saved_cli = {}
        if settings.resume:  # the search's own settings; only where and how it runs may change
            search_dir = search_dir_for(base_cfg, settings.name)
            base_cfg, saved = load_saved_search(search_dir)
            keep = ("num_samples", "grace_period", "reduction_factor", "gpus_per_trial", "cpus_per_trial",
                    "workers_per_trial", "seed", "space")
            remembered = ("keep_trial_checkpoints", "refit")  # unless typed again
            settings = dataclasses.replace(settings, **{k: saved[k] for k in keep if k in saved},
                                           **{k: saved[k] for k in remembered if k in saved and k not in given})
            saved_cli = read_json(search_dir / SEARCH_JSON).get("cli") or {}
        options = _cli_options(args, saved_cli)
        _check_report_dir(options)
        summary = run_search(base_cfg, settings, cli_options=options)
    except (ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except WriteError as e:  # the runs folder's disk: full, read-only, not ours
        from distributed.failures import explain

        search_dir = search_dir_for(base_cfg, settings.name)
        started = (search_dir / SEARCH_JSON).exists()
        then = (f"the trials ended so far are kept; {explain(e, base_cfg).fix}, then continue with: "
                f"python tuning/search.py --name {settings.name} --resume" if started
                else f"nothing was started; {explain(e, base_cfg).fix}")
        print(f"error: {e}; {then}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if settings is not None:
            print(f"interrupted; continue with: python tuning/search.py --name {settings.name} --resume",
                  file=sys.stderr)
        return 130
    if summary.get("interrupted"):
        return 130
    if summary.get("test_acc") is None:
        return 0
    code = finish_run(summary["search_dir"], args)
    # A refit that was asked for and failed: the search and its report stand, the command did not succeed.
    return code or int((summary.get("refit") or {}).get("status") == "failed")


# ----------------------------------------------------------------------------- report
def report_parser() -> argparse.ArgumentParser:
    """The arguments of `cifar-report`."""
    parser = _Parser(description="Build the static HTML report of a training run or search.")
    parser.add_argument("run_dir", type=Path, help="runs/<name> (train.py) or runs/search-<name> (tuning)")
    parser.add_argument("--out", type=Path, default=Path("reports"),
                        help="folder of reports: the report goes to OUT/<run or search name>/, and OUT/index.html "
                             "shows it with every report under OUT listed (default: reports)")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="CIFAR-10 folder holding cifar-10-batches-py/ (default: the run's data_dir)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None,
                        help="where GradCAM runs (default: cuda when available)")
    return parser


def report(argv: list[str] | None = None) -> int:
    """`cifar-report`: build the report of a run or search directory; 2 on unusable input."""
    args = report_parser().parse_args(argv)

    from reporting.report import ReportError, build_report

    try:
        path = build_report(args.run_dir, args.out, data_dir=args.data_dir, device=args.device)
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - a bug or an input nobody foresaw: one line, never a traceback
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        print(f"error: the report of {args.run_dir} failed ({type(e).__name__}: {first}); the run itself is "
              f"untouched, and any earlier report under {args.out} is kept", file=sys.stderr)
        return 2
    print(f"report written to {path} (this report's own folder: {path.parent / args.run_dir.resolve().name})")
    return 0


def script(entry: str) -> None:
    """What the files `distributed/train.py`, `tuning/search.py` and `reporting/build.py` run."""
    sys.exit({"train": train, "search": search, "report": report}[entry]())
