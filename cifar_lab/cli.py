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
import difflib
import functools
import os
import shlex
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any


class _Parser(argparse.ArgumentParser):
    """argparse that answers bad flags with one line (its default prints the whole usage too), and
    takes no abbreviations: `--epoch 2` must not quietly mean `--epochs 2`."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(allow_abbrev=False, **kwargs)

    def error(self, message: str):
        print(f"error: {message}{self._suggestion(message)}", file=sys.stderr)
        sys.exit(2)

    def _suggestion(self, message: str) -> str:
        """` (did you mean --epochs?)` for a mistyped flag: the closest option strings (difflib), if any."""
        prefix = "unrecognized arguments: "
        if not message.startswith(prefix):
            return ""
        known = [s for s in self._option_string_actions if s.startswith("--")]
        hints = []
        for word in message[len(prefix):].split():
            flag = word.split("=", 1)[0]
            if flag.startswith("--"):
                hints += [m for m in difflib.get_close_matches(flag, known, n=1, cutoff=0.75) if m not in hints]
        return f" (did you mean {' or '.join(hints)}?)" if hints else ""


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
                            "lists every report below REPORT_DIR (default: reports; --resume remembers it)")


def _cli_options(args: argparse.Namespace, saved: dict[str, Any] | None = None) -> dict[str, Any]:
    """The report choices of this command: typed now, else remembered from `saved`, else the defaults.
    Also written back into `args`, where `finish_run` reads them."""
    saved = saved or {}
    options = {k: getattr(args, k) if getattr(args, k) is not None else saved.get(k, default)
               for k, default in REPORT_DEFAULTS.items()}
    for k, v in options.items():
        setattr(args, k, v)
    return options


def _check_report_dir(options: dict[str, Any], run_dir: Path, kind: str) -> None:
    """Where the report will go is checked before training, not after it: the report is built at the
    end, and a run of hours should not end on "report failed". The folder must take files, and the
    report's own folder must not be another run's report or hold other reports (reporting.index's
    rules). Raises ConfigError."""
    if not options["report"]:
        return
    from distributed.config import ConfigError
    from distributed.rundir import CONFIG, SEARCH_JSON, WriteError, check_writable, read_json
    from reporting import index as reports_index

    out = Path(options["report_dir"])
    saved = run_dir / (CONFIG if kind == "run" else SEARCH_JSON)  # a resumed run's report may be replaced
    created = (read_json(saved) or {}).get("created" if kind == "run" else "started") if saved.is_file() else None
    try:
        check_writable(out, 0)
        reports_index.check_run_target(out, run_dir, kind, created)
    except WriteError as e:
        raise ConfigError(f"{e} (the report is built there at the end); make that folder writable, or choose "
                          f"another --report-dir, or pass --no-report") from None
    except reports_index.LayoutError as e:
        raise ConfigError(f"the report could not be built at the end: {e}, or pass --no-report") from None


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
        rebuild = f"{command_prefix('report')} {shlex.quote(str(run_dir))} --out {shlex.quote(str(args.report_dir))}"
        print(f"report failed ({type(e).__name__}: {first}); the run is complete, rebuild it with `{rebuild}`",
              file=sys.stderr)
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
    parser.add_argument("--aug-schedule", type=Path, default=None, metavar="FILE",
                        help="train with a per-epoch schedule of augmentation, dropout and weight decay: a PBT "
                             "search's best/schedule.json (cifar-search --search-scheduler pbt), stretched over "
                             "--epochs (default: the fixed values of the flags)")
    parser.add_argument("--find-lr", action="store_true",
                        help="run the LR range test first (100 steps; lr_find.json) and train with its "
                             "suggested max_lr (or with --max-lr when given)")
    _add_report_flags(parser)
    return parser


def train(argv: list[str] | None = None) -> int:
    """`cifar-train`: parse flags, [LR range test], `fit`, report. Returns the exit code."""
    from distributed.config import ConfigError, config_from_args

    _parent_argv()  # how this process was started, while its launcher is there to ask (printed commands)
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
        _check_report_dir(options, run_dir, "run")
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
    # SIGTERM (SLURM's preemption and requeue, Kubernetes, spot instances) stops training at the
    # next step on every rank instead of killing it wherever it is. It stays held while a stopped
    # run says what it kept: `accelerate launch` (>= 1.16) and torchrun answer Ctrl-C by sending
    # the trainer SIGTERM, which would otherwise end it before that line (the report, built
    # after the block, is not held: a scheduler's SIGTERM ends it).
    with stop_on_signals(signal.SIGTERM) as stop:
        try:
            if args.find_lr and not resuming:
                # The suggestion, unless a max_lr was chosen (a flag or a --config file).
                cfg = find_lr(cfg, run_dir, use_suggestion=cfg.max_lr is None)
            summary = fit(cfg, run_dir, resume=args.resume, stop=stop, cli_options=options)
        except (ConfigError, DataError, LaunchError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            if main_process:  # Ctrl-C reaches every rank; one line says it
                kept, then = _kept(cfg, run_dir)
                _outlive_the_launcher(stop)
                print(f"interrupted; {kept}; {then}", file=sys.stderr, flush=True)
            return 130
        except Preempted as e:
            if main_process:
                kept = f"newest checkpoint: epoch {e.resume_epoch}" if e.resume_epoch else "no checkpoint yet"
                print(f"stopped by {e.signal_name} in epoch {e.epoch}, nothing half-written ({kept}); continue with: "
                      f"{_resume_command(cfg)}", file=sys.stderr, flush=True)
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
    """The command line that continues `cfg`'s run: this process's own launcher or interpreter in
    front (see `command_prefix`), then the flags that find the run."""
    runs = "" if cfg.runs_dir == "runs" else f" --runs-dir {shlex.quote(str(cfg.runs_dir))}"
    resume = f"--name {shlex.quote(cfg.name)}{runs} --resume"
    prefix = command_prefix("train")
    if prefix is None:  # a launch of several nodes: no one command restarts it
        return f"{_shown(_SCRIPTS['train'])} {resume}, under the same launcher on every node"
    return f"{prefix} {resume}"


# ----------------------------------------------------------------------------- printed commands
# Every command the project prints repeats how this process was started, so that it works when
# pasted: a bare `python` is not the venv's, and `distributed/train.py` alone is not a command.
ROOT = Path(__file__).resolve().parent.parent
_SCRIPTS = {"train": ROOT / "distributed" / "train.py", "search": ROOT / "tuning" / "search.py",
            "report": ROOT / "reporting" / "build.py"}
_CONSOLE_SCRIPTS = {"train": "cifar-train", "search": "cifar-search", "report": "cifar-report"}
# cpu_ddp.sh says how it was called here (its torchrun line alone would miss ACCELERATE_USE_CPU).
LAUNCHER_ENV = "CIFAR_LAB_LAUNCHER"


def _shown(path: str | Path) -> str:
    """A path as typed here: relative to the working directory when inside it, else absolute.
    Symlinks are kept: a venv's python is a link whose target lacks the venv."""
    path = os.path.abspath(path)
    rel = os.path.relpath(path, os.getcwd())
    return path if rel.startswith("..") else rel


def _program(path: str | Path, interpreter: bool = False) -> str:
    """A program to run, quoted for a shell: its bare name when PATH finds this very file (a console
    script such as `cifar-train`, `accelerate`), else its path. An interpreter always by its path:
    a venv's `python` links to the system's, so the same file is not the same environment."""
    name = os.path.basename(path)
    found = None if interpreter else shutil.which(name)
    if found and os.path.exists(path) and os.path.samefile(found, path):
        return shlex.quote(name)
    shown = _shown(path)
    return shlex.quote(shown if os.sep in shown else os.path.join(".", shown))


@functools.cache
def _parent_argv() -> tuple[list[str], str] | None:
    """The parent process's argv and working directory (Linux /proc), or None where unreadable.
    Read once, when the command starts: on Ctrl-C `accelerate launch` may exit before this process."""
    ppid = os.getppid()
    try:
        raw = Path(f"/proc/{ppid}/cmdline").read_bytes()
        cwd = os.readlink(f"/proc/{ppid}/cwd")
    except OSError:
        return None
    return [os.fsdecode(a) for a in raw.split(b"\0")[:-1]], cwd


def _launcher_prefix(script: str) -> list[str] | None:
    """The launcher's part of the parent's command line (`accelerate launch -q --config_file ...`,
    `torchrun --nproc_per_node 2`), when the parent started `script`; else None (a shell, srun)."""
    parent = _parent_argv()
    if parent is None:
        return None
    argv, cwd = parent
    for i, arg in enumerate(argv[1:], 1):
        if os.path.abspath(os.path.join(cwd, arg)) == os.path.abspath(script):
            front = argv[:i]
            break
    else:
        return None
    # `accelerate` and `torchrun` are scripts: the kernel ran them with their #! interpreter first.
    if len(front) > 1 and _runs_with(front[1], front[0]):
        front = front[1:]
    interpreter = os.path.basename(front[0]).startswith("python")  # python -m torch.distributed.run
    shown = [_program(front[0], interpreter=interpreter), *map(shlex.quote, front[1:])]
    if not any("accelerate" in a for a in front) and os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true"):
        shown.insert(0, "ACCELERATE_USE_CPU=true")  # torchrun over CPUs: train.py refuses the launch without it
    return shown


def _outlive_the_launcher(stop, within: float = 3.0) -> None:
    """On Ctrl-C, wait (at most `within` seconds) until `accelerate launch` has exited when it is
    this process's launcher, so that the line saying how to continue is the last one on the screen.
    Its one-process launcher gets the terminal's SIGINT too. Before 1.16 it waits 0.25 s for us,
    then prints a ~20-line KeyboardInterrupt traceback and exits: printed after it, our line is not
    buried. From 1.16 it prints nothing, sends us SIGTERM (`stop` records it) and waits for us
    while passing our stderr on: then there is nothing to wait for."""
    ppid = os.getppid()
    parent = _parent_argv()
    if (parent is None or "WORLD_SIZE" in os.environ or not sys.argv
            or not any(os.path.basename(a).startswith("accelerate") or a.startswith("accelerate.")
                       for a in (_launcher_prefix(sys.argv[0]) or []))):
        return
    deadline = time.monotonic() + within
    while os.getppid() == ppid and not stop.signal and time.monotonic() < deadline:
        time.sleep(0.02)
    if not stop.signal:
        time.sleep(0.05)  # its traceback is written before it exits; let the terminal show it first


def _runs_with(script: str, interpreter: str) -> bool:
    """Whether `script` is a file whose #! line names `interpreter`."""
    try:
        with open(script, "rb") as f:
            first = f.readline(512)
    except OSError:
        return False
    return first.startswith(b"#!") and os.fsencode(interpreter) in first


def command_prefix(entry: str) -> str | None:
    """How to run `entry` (train, search, report) again, as this process was started: the
    launcher and its flags with the script (`.venv/bin/accelerate launch -q --config_file
    launch/default.yaml distributed/train.py`, `torchrun --nproc_per_node 2 distributed/train.py`),
    the console script (`cifar-train`), or the interpreter and the script
    (`.venv/bin/python distributed/train.py`). None for a launch spanning several nodes, where
    each node has its own launcher command. `report` is never launched: the interpreter's."""
    me = sys.argv[0] if sys.argv else ""
    console = os.path.basename(me) == _CONSOLE_SCRIPTS.get(entry) and not me.endswith(".py")
    if entry != "report":
        if os.environ.get(LAUNCHER_ENV):
            return os.environ[LAUNCHER_ENV]
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world > int(os.environ.get("LOCAL_WORLD_SIZE", world)):
            return None
        if me and os.path.exists(me):
            launcher = _launcher_prefix(me)
            if launcher is not None:
                shown_me = _program(me) if console else shlex.quote(_shown(me))
                return " ".join([*launcher, shown_me])
        if console:
            return _program(me)
    elif os.path.basename(me) in _CONSOLE_SCRIPTS.values() and not me.endswith(".py"):
        sibling = Path(me).with_name(_CONSOLE_SCRIPTS["report"])
        if sibling.exists():
            return _program(sibling)
    return f"{_program(sys.executable, interpreter=True)} {shlex.quote(_shown(_SCRIPTS[entry]))}"


# ----------------------------------------------------------------------------- search
def search_parser() -> argparse.ArgumentParser:
    """The flags of `cifar-search`: SearchConfig's, the report choices, and every training flag."""
    from distributed.config import add_config_arguments, add_dataclass_arguments
    from tuning.config import SCHEDULERS, SearchConfig

    parser = _Parser(description="Ray Tune search over the ResNet18 recipe (ASHA or PBT, best trial tested once).")
    group = parser.add_argument_group("search")
    add_dataclass_arguments(group, SearchConfig, prefix="search_")
    group.add_argument("--space", type=Path, default=None, metavar="FILE",
                       help="YAML/JSON file of search-space overrides, merged over tuning/space.py's; max_lr "
                            "values are at batch 512 and scaled to --batch-size (default: none)")
    _add_report_flags(parser)
    add_config_arguments(parser, skip=("name", "scheduler"))  # --name is the search's; --scheduler: below
    from distributed.config import TrainConfig

    lr_schedules = {f.name: f for f in dataclasses.fields(TrainConfig)}["scheduler"].metadata["choices"]
    parser.add_argument("--scheduler", action=_SchedulerFlag, dest="scheduler", default=None,
                        choices=SCHEDULERS + lr_schedules, metavar="{" + ",".join(SCHEDULERS + lr_schedules) + "}",
                        help="either schedule, told apart by the value: asha or pbt picks how trials are scheduled "
                             "(the same as --search-scheduler), onecycle, plateau or step the learning-rate "
                             "schedule of every trial (default: asha, onecycle)")
    return parser


class _SchedulerFlag(argparse.Action):
    """`cifar-search --scheduler pbt`: a search's --scheduler names the trial scheduler (asha, pbt) or the
    training's learning-rate schedule (onecycle, plateau, step); the two sets of values never overlap,
    so each value goes where it belongs (`--scheduler pbt --scheduler step` sets both)."""

    def __call__(self, parser, namespace, value, option_string=None) -> None:
        from tuning.config import SCHEDULERS

        setattr(namespace, "search_scheduler" if value in SCHEDULERS else self.dest, value)


def search(argv: list[str] | None = None) -> int:
    """`cifar-search`: parse flags, `run_search`, report. Returns the exit code."""
    from distributed.config import ConfigError, config_from_args, given_fields
    from tuning.config import SearchConfig

    _parent_argv()
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
            keep = ("num_samples", "scheduler", "grace_period", "reduction_factor", "perturbation_interval",
                    "quantile_fraction", "resample_probability", "gpus_per_trial", "cpus_per_trial",
                    "workers_per_trial", "seed", "space")
            remembered = ("keep_trial_checkpoints", "refit")  # unless typed again
            settings = dataclasses.replace(settings, **{k: saved[k] for k in keep if k in saved},
                                           **{k: saved[k] for k in remembered if k in saved and k not in given})
            saved_cli = read_json(search_dir / SEARCH_JSON).get("cli") or {}
        options = _cli_options(args, saved_cli)
        _check_report_dir(options, search_dir_for(base_cfg, settings.name), "search")
        summary = run_search(base_cfg, settings, cli_options=options)
    except (ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except WriteError as e:  # the runs folder's disk: full, read-only, not ours
        from distributed.failures import explain

        fix = explain(e, base_cfg).fix
        started = (search_dir_for(base_cfg, settings.name) / SEARCH_JSON).exists()
        then = (f"the trials ended so far are kept; {fix}, then continue with: "
                f"{_search_resume_command(base_cfg, settings)}" if started else f"nothing was started; {fix}")
        print(f"error: {e}; {then}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if settings is not None:
            print(f"interrupted; continue with: {_search_resume_command(base_cfg, settings)}", file=sys.stderr)
        return 130
    if summary.get("interrupted"):
        print(f"continue with: {_search_resume_command(base_cfg, settings)}", file=sys.stderr, flush=True)
        return 130
    if summary.get("test_acc") is None:
        return 0
    code = finish_run(summary["search_dir"], args)
    # A refit that was asked for and failed: the search and its report stand, the command did not succeed.
    return code or int((summary.get("refit") or {}).get("status") == "failed")


def _search_resume_command(base_cfg, settings) -> str:
    runs = "" if base_cfg.runs_dir == "runs" else f" --runs-dir {shlex.quote(str(base_cfg.runs_dir))}"
    return f"{command_prefix('search')} --name {shlex.quote(settings.name)}{runs} --resume"


# ----------------------------------------------------------------------------- report
def report_parser() -> argparse.ArgumentParser:
    """The arguments of `cifar-report`."""
    parser = _Parser(description="Build the static HTML report of a training run or search.")
    parser.add_argument("run_dir", type=Path, help="runs/<name> (train.py) or runs/search-<name> (tuning)")
    parser.add_argument("--out", type=Path, default=Path("reports"),
                        help="folder of reports: the report goes to OUT/<run or search name>/, and OUT/index.html "
                             "lists every report below OUT (default: reports)")
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
