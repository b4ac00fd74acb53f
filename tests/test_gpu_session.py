"""The GPU session script (benchmarks/gpu_session.py): its dry run executes every step of the real plan
at tiny size on the CPU, so a flag or output that drifts fails here and not on a scarce GPU; and its
runner keeps its promises: a time box that kills the whole process group, skips with reasons, and
results on disk after every step, within what the device tool returns.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(BENCH))

import gpu_pack_check  # noqa: E402
import gpu_results  # noqa: E402
import gpu_session  # noqa: E402


def _device_tool_returns(out: Path) -> None:
    """What `$OUT` may hold for the device tool to return it: at most 8 files of at most 16 MiB, at most
    two folders down, named in letters, digits, '.', '_' and '-'."""
    files = [p for p in out.rglob("*") if p.is_file()]
    assert 0 < len(files) <= 8, [p.name for p in files]
    for p in files:
        rel = p.relative_to(out)
        assert len(rel.parts) <= 3 and all(re.fullmatch(r"[A-Za-z0-9._-]+", part) for part in rel.parts), rel
        assert p.stat().st_size <= 16 * 2**20, (rel, p.stat().st_size)


# Steps whose command is another step's with other values (tested below): the dry run in CI leaves them
# out to save a CPU minute; `python benchmarks/gpu_session.py --dry-run` by hand runs them all.
VARIANTS = {"train-seed1": "train-seed0", "train-seed2": "train-seed0", "train-compile": "train-seed0",
            "step-compile": "step-bf16",
            "input-slowest": "input", "ladder-winner": "ladder"}


# The ladder rungs the CI dry run trains: the default and all-images (whose split differs) show the
# ladder's mechanics; every rung's command line is parsed into its config instead (_ladder_rung_configs),
# and what each rung changes is trained by tests of its own (test_train: --no-cycle-momentum, label
# smoothing; test_data: the 8x8 cutout). `python benchmarks/gpu_session.py --dry-run` trains them all.
TRAINED_RUNGS = ("default", "all-images")


def _ladder_rung_configs() -> dict[str, dict]:
    """Each rung's TrainConfig, as train.py parses the command line that the dry run's ladder step
    (all rungs, its default) gives benchmarks/ladder.py for that rung."""
    import ladder

    from cifar_lab.cli import train_parser
    from distributed.config import config_from_args

    argv = _dry_plan()["ladder"].argv({})
    assert argv[1] == "benchmarks/ladder.py"
    args = ladder.parse_args(argv[2:])
    jobs = ladder.build_jobs(args, args.rungs.split(","), [0], args.workers_per_run)
    assert [j.rung for j in jobs] == list(gpu_session.LADDER_RUNGS)
    assert all(j.argv[1].endswith("distributed/train.py") for j in jobs)
    return {j.rung: config_from_args(train_parser().parse_args(j.argv[2:])).to_dict() for j in jobs}


def _dry_plan() -> dict[str, "gpu_session.Step"]:
    o = gpu_session.options_from_args(gpu_session.parse_args(["--dry-run", "--work-dir", "/w", "--data-dir", "/d"]))
    return {s.name: s for s in gpu_session.plan(o)}


def test_dry_run_runs_every_step_of_the_plan(fake_cifar, tmp_path):
    """The whole session, tiny, on CPU: every distinct step of the GPU plan runs and gives its figures,
    and the output folder holds what the device tool would bring back, without weights or checkpoints."""
    out, work = tmp_path / "out", tmp_path / "work"
    proc = subprocess.run([sys.executable, str(BENCH / "gpu_session.py"), "--dry-run", "--data-dir", str(fake_cifar),
                           "--work-dir", str(work), "--out", str(out), "--skip", ",".join(VARIANTS),
                           "--ladder-rungs", ",".join(TRAINED_RUNGS), "--ladder-concurrent", "1"],
                          cwd=ROOT, capture_output=True, text=True, timeout=3700)
    records = {r["step"]: r for r in map(json.loads, (out / "steps.jsonl").read_text().splitlines())}
    failed = {k: r.get("error") for k, r in records.items() if r["status"] != "ok" and k not in VARIANTS}
    assert failed == {}, f"{failed}\n{proc.stdout[-3000:]}\n{(out / 'session.log').read_text()[-6000:]}"
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    plan = list(_dry_plan())
    assert list(records) == plan  # every step, in the plan's order
    assert {k: records[k]["reason"] for k in VARIANTS} == {k: "skipped (--skip)" for k in VARIANTS}

    res = {k: r["result"] for k, r in records.items() if k not in VARIANTS}
    assert res["pack"]["tree_bytes"] > 0 and res["pack"]["fits"]
    assert res["smoke-torch"]["ok"] and res["smoke-torch"]["fit_mixed_precision"] == "no"
    assert all(t["all_four_at_once"] for t in res["smoke-ray"]["tasks"]) and res["smoke-ray"]["pretend_gpu"]
    assert res["step-bf16"]["bf16"] and res["step-bf16"]["channels_last"] and res["step-bf16"]["ours_step_s"] > 0
    assert res["input"]["ours_images_per_s"] > 0 and res["input"]["float_images_per_s"] > 0  # the baseline beside it
    run = res["train-seed0"]
    assert run["finished"] and run["epochs"] == 1 and run["test_acc"] is not None, run
    assert run["checkpoint_s_median"] is not None and run["data_wait_frac_mean"] is not None
    assert run["startup_seconds"] > 0 and run["final_seconds"] > 0
    assert 0 < run["first_batch_s"] < run["first_epoch_s"]
    assert res["report-seed0"]["figures"] > 0
    assert "model.safetensors" in res["gradcam"]["weights"] and res["gradcam"]["max_abs_diff"] <= 1e-4
    prof = res["gradcam"]["profile"]  # where the time goes, both sides, and the tables in the archive
    assert prof["ours"]["top"] and prof["grad-cam"]["top"] and prof["file"].endswith("gradcam/gradcam-profile.txt")
    assert res["tta-val"]["val_count"] == 20 and res["tta-val"]["val_acc_tta"] is not None
    search = res["search"]
    assert search["status"] == "finished" and search["trials"] == 2 and search["trial_epochs"] >= 2, search
    assert search["trial_processes"] in (1, 2), search  # ASHA: a trial process may run the next trial
    assert search["test_acc"] is not None
    # airbench is CUDA-only: the dry run writes and checks its data files from our loader, and says so
    ref = res["reference"]
    assert ref["trained"] is False and "CUDA-only" in ref["not_trained"]
    assert ref["read_back"]["train"] == {"shape": [500, 32, 32, 3], "dtype": "uint8", "labels_dtype": "int64",
                                         "classes": 10, "same_as_loader": True}
    # the ladder's rungs trained one after the other (the second waited for the first's slot), tiny, each
    # with its own flags, and landed in $OUT as they ended; every rung's train.py command line, as the
    # dry run's ladder step gives it by default, makes the config its rung names (_ladder_rung_configs)
    ladder = res["ladder"]
    runs = {r["rung"]: r for r in ladder["runs"]}
    assert list(runs) == list(TRAINED_RUNGS) and ladder["not_started"] == []
    assert all(r["status"] == "finished" and r["test_acc_plain"] is not None and r["test_acc_tta"] is not None
               and r["total_seconds"] > 0 for r in runs.values()), runs
    assert runs["all-images"]["train_images"] == 60 and runs["default"]["train_images"] == 40  # --val-size 0
    assert ladder["winner"] in runs
    live = [json.loads(x) for x in (out / gpu_session.LIVE).read_text().splitlines()]
    assert [(x["kind"], x["rung"]) for x in live] == [("ladder", r) for r in runs]
    cfgs = _ladder_rung_configs()
    for r in runs:  # what train.py trained with is what its command line parses to (but where the files are)
        saved = json.loads(next(work.glob(f"session-*/runs/ladder/{r}-s0/config.json")).read_text())["config"]
        assert {k: v for k, v in saved.items() if k not in ("data_dir", "runs_dir")} == \
            {k: v for k, v in cfgs[r].items() if k not in ("data_dir", "runs_dir")}, r
    assert cfgs["fixed-momentum"]["cycle_momentum"] is False and cfgs["default"]["cycle_momentum"] is True
    assert (cfgs["no-smoothing"]["label_smoothing"], cfgs["smoothing-0.2"]["label_smoothing"]) == (0.0, 0.2)
    cutout = cfgs["cutout-8-always"]["aug"]
    assert (cutout["cutout_p"], cutout["cutout_min"], cutout["cutout_max"]) == (1.0, 8, 8)
    assert cfgs["all-images"]["val_size"] == 0
    # 40-epochs: a third more than the dry run's 1 epoch rounds to 1 (its 40 at 30: the test below)
    changed = {r: {k for k, v in c.items() if v != cfgs["default"][k]} - {"name"} for r, c in cfgs.items()}
    assert changed == {"default": set(), "all-images": {"val_size"}, "fixed-momentum": {"cycle_momentum"},
                       "no-smoothing": {"label_smoothing"}, "smoothing-0.2": {"label_smoothing"},
                       "cutout-8-always": {"aug"}, "40-epochs": set()}

    _device_tool_returns(out)
    with tarfile.open(out / "session.tar.gz") as tar:
        names = tar.getnames()
    assert any(n.endswith("runs/seed0/metrics.jsonl") for n in names)
    assert any(n.endswith("runs/search-session/results.csv") for n in names)
    assert any(n.endswith("runs/ladder/ladder.jsonl") for n in names)
    assert any(n.endswith("runs/ladder/logs/default-s0.log") for n in names)
    assert any(n.endswith("gradcam/gradcam-profile.txt") for n in names)
    assert any(n.endswith("logs/train-seed0.log") for n in names) and any(n.endswith(".html") for n in names)
    left_in = [n for n in names if n.endswith(gpu_session.EXCLUDE_SUFFIXES) or "/checkpoints/" in n]
    assert left_in == []

    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["session"] == "dry-run"
    md = (out / "summary.md").read_text()
    assert all(f"| {name} | `python " in md for name in plan if name not in VARIANTS), md
    assert all(f"| {name} | - |" in md and f"- {name}: skipped (--skip)" in md for name in VARIANTS), md
    assert "not a measurement" in md and "**not met**" not in md  # a dry run gives no verdicts
    assert "$CIFAR_DIR" in md and str(work) not in md


def test_the_steps_left_out_of_the_ci_dry_run_are_variants_of_steps_it_runs():
    """Each left-out step runs its sibling's command with other values only, and collects alike."""
    steps = _dry_plan()

    def argv(name: str) -> list[str]:
        return steps[name].argv({})

    seed0 = argv("train-seed0")
    for seed in (1, 2):
        name = f"train-seed{seed}"
        expected = list(seed0)
        expected[seed0.index("--name") + 1], expected[seed0.index("--seed") + 1] = name[len("train-"):], str(seed)
        assert argv(name) == expected
        assert (steps[name].collect, steps[name].target) == ("run", f"runs/seed{seed}")
    assert sorted(argv("step-compile")) == sorted(argv("step-bf16") + ["--compile"])
    compiled = list(seed0)
    compiled[seed0.index("--name") + 1] = "compile-seed0"
    assert argv("train-compile") == compiled + ["--compile"]
    assert (steps["train-compile"].collect, steps["train-compile"].target) == ("run", "runs/compile-seed0")
    ladder, winner = argv("ladder"), argv("ladder-winner")
    at = ladder.index("--rungs")
    assert winner[:at] == ladder[:at] and winner[at + 4:] == ladder[at + 2:]  # only which rung and seeds differ
    assert winner[at:at + 4] == ["--winner-from", winner[at + 1], "--seeds", "1,2"]
    assert winner[at + 1].endswith("runs/ladder/ladder.jsonl")
    assert sorted(argv("input-slowest")) == sorted(argv("input") + ["--affine-p", "1", "--color-p", "1"])
    assert all(steps[k].collect == steps[v].collect for k, v in VARIANTS.items())
    # each needs what its sibling needs, except seeds 1-2 of the ladder's winner, which need the ladder
    assert all(steps[k].needs == steps[v].needs for k, v in VARIANTS.items() if k != "ladder-winner")
    assert steps["ladder-winner"].needs == ("ladder",)


# ----------------------------------------------------------------------------- the runner, on a fake plan
PY = sys.executable


def _step(name: str, code: str, **kw) -> "gpu_session.Step":
    kw.setdefault("box_s", 30)
    kw.setdefault("min_s", 1)
    return gpu_session.Step(name, f"test step {name}", lambda d, c=code: [PY, "-c", c], estimate_s=None, **kw)


def _json_step(name: str, value: int = 1, **kw) -> "gpu_session.Step":
    return _step(name, f"import json; print(json.dumps({{'bench': 'fake', 'value': {value}}}))", **kw)


def _options(tmp_path: Path, budget: float = 300) -> "gpu_session.Options":
    return gpu_session.Options(dry_run=False, out=tmp_path / "out", work=tmp_path / "work" / "session-x",
                               data_dir=str(tmp_path), budget_s=budget, python=PY)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").exists() and Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def test_runner_boxes_skips_and_writes_after_every_step(tmp_path, monkeypatch):
    """A hang is stopped at its box with its whole process group (a grandchild too), a step that needs
    it is skipped with the reason, an unrelated step still runs, a failure is recorded with its error
    line, a step that no longer fits the budget is skipped, and each step's line, the summary and the
    archive are on disk before the next step starts."""
    def leave_grandchild(then: str) -> str:  # one that ignores SIGINT and SIGTERM: only SIGKILL ends it
        pid_file = tmp_path / f"grandchild{len(pids)}.pid"
        pids.append(pid_file)
        return (f"import subprocess, time; p = subprocess.Popen(['bash', '-c', 'trap \"\" INT TERM; sleep 600']); "
                f"open({str(pid_file)!r}, 'w').write(str(p.pid)); {then}")

    pids: list[Path] = []
    seen_before_third: dict = {}

    def peek(done):
        out = tmp_path / "out"
        seen_before_third["lines"] = [json.loads(x)["step"] for x in (out / "steps.jsonl").read_text().splitlines()]
        seen_before_third["archive"] = (out / "session.tar.gz").exists()
        seen_before_third["summary"] = json.loads((out / "summary.json").read_text())["steps"]
        return [PY, "-c", "import json; print(json.dumps({'bench': 'fake', 'value': 3}))"]

    steps = [
        _step("first", leave_grandchild("import json; print(json.dumps({'bench': 'fake', 'value': 1}))")),
        _step("hang", leave_grandchild("time.sleep(600)"), box_s=3, grace_s=1),
        gpu_session.Step("third", "peeks at the output folder", peek, 30, 1, None),
        _json_step("after-hang", needs=("hang",)),
        _step("fails", "import sys; print('error: the thing broke'); sys.exit(3)"),
        _json_step("too-big", min_s=10_000),
    ]
    monkeypatch.setattr(gpu_session, "plan", lambda o: steps)
    summary = gpu_session.Session(_options(tmp_path)).run()

    status = {s["step"]: s["status"] for s in summary["steps"]}
    assert status == {"first": "ok", "hang": "timeout", "third": "ok", "after-hang": "skipped", "fails": "failed",
                      "too-big": "skipped"}
    reasons = {s["step"]: s["reason"] for s in summary["skipped"]}
    assert reasons["after-hang"] == "needs hang, which timeout" and reasons["too-big"].startswith("budget:")
    assert next(s["seconds"] for s in summary["steps"] if s["step"] == "hang") < 300  # not its 600 s sleep
    errors = {s["step"]: s["error"] for s in summary["steps"] if s.get("error")}
    assert errors["fails"] == "rc 3: error: the thing broke" and "box" in errors["hang"]
    for pid_file in pids:  # after a clean exit and after a time box alike
        assert not _alive(int(pid_file.read_text())), f"{pid_file.stem} outlived its step"

    assert seen_before_third["lines"] == ["first", "hang"] and seen_before_third["archive"]
    assert [s["step"] for s in seen_before_third["summary"]] == ["first", "hang"]
    lines = [json.loads(x) for x in (tmp_path / "out" / "steps.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [s.name for s in steps] and lines[0]["result"]["value"] == 1
    _device_tool_returns(tmp_path / "out")


def test_a_failed_critical_step_ends_the_session(tmp_path, monkeypatch):
    steps = [_step("smoke", "import sys; sys.exit('smoke torch failed: no CUDA device')", critical=True),
             _json_step("next")]
    monkeypatch.setattr(gpu_session, "plan", lambda o: steps)
    summary = gpu_session.Session(_options(tmp_path)).run()
    assert [s["status"] for s in summary["steps"]] == ["failed", "skipped"]
    assert summary["skipped"][0]["reason"] == "the critical step smoke failed"
    assert "no CUDA device" in summary["steps"][0]["error"]


def test_steps_chosen_alone_run_without_the_steps_they_need(tmp_path, monkeypatch):
    """`--steps train-seed1` in a second call on a warm machine: the critical smoke step and the need
    that were left out block nothing (on the GPU this once skipped every step)."""
    steps = [_step("smoke", "import sys; sys.exit('must not run')", critical=True),
             _json_step("first", needs=("smoke",)), _json_step("second", needs=("first",))]
    monkeypatch.setattr(gpu_session, "plan", lambda o: steps)
    o = dataclasses.replace(_options(tmp_path), only=("second",))
    summary = gpu_session.Session(o).run()
    assert [s["status"] for s in summary["steps"]] == ["skipped", "skipped", "ok"]
    assert {s["step"]: s["reason"] for s in summary["skipped"]} == {"smoke": "not selected (--steps)",
                                                                    "first": "not selected (--steps)"}


def test_bad_session_flags_get_one_line(tmp_path):
    with pytest.raises(SystemExit, match=r"unknown step\(s\) nope; the steps are: .*train-seed0"):
        gpu_session.options_from_args(gpu_session.parse_args(["--steps", "train-seed0,nope"]))
    with pytest.raises(SystemExit, match="--budget -5 must be > 0"):
        gpu_session.options_from_args(gpu_session.parse_args(["--budget", "-5"]))
    with pytest.raises(SystemExit, match=r"no CIFAR-10 in .*source \.gpu/setup\.sh"):
        gpu_session.main(["--data-dir", str(tmp_path), "--out", str(tmp_path / "o")])


def test_the_default_plan_fits_one_device_call():
    """The GPU plan in the accuracy issue's order: after the smoke test, the copy's penalty (reference) and
    the recipe ladder with its best rung's seeds 1-2, whose estimates fit the default budget; then the
    throughput steps up to the search, which fit a second call. The budget leaves a minute of a 600 s call
    for set-up and margin, and the estimates are labelled as such."""
    o = gpu_session.options_from_args(gpu_session.parse_args([]))
    assert o.budget_s + 30 + 45 <= 600  # set-up (~30 s fresh) and the search's kill grace
    steps = gpu_session.plan(o)
    names = [s.name for s in steps]
    assert names[:6] == ["smoke-torch", "reference", "ladder", "ladder-winner", "smoke-ray", "step-bf16"]
    first = names.index("ladder-winner") + 1
    assert sum(s.estimate_s for s in steps[:first]) < o.budget_s
    assert sum(s.estimate_s for s in steps[first:names.index("search") + 1]) < o.budget_s
    assert all(s.box_s >= 1.5 * s.estimate_s for s in steps)  # an estimate off by half still fits its box
    assert "ESTIMATES" in gpu_session.estimates_note().upper()
    assert gpu_session.asha_trial_epochs(32, 10, 1, 2) == 84  # 16x1 + 8x2 + 4x4 + 2x8 + 2x10


def test_the_full_search_with_its_refit_is_one_option_away():
    """--search-epochs 30 --search-refit: the 32-trial search at full length, then its refit; the command
    parses with cifar-search's own parser, and the summary no longer calls the search scaled down."""
    from cifar_lab.cli import search_parser
    from distributed.config import given_fields
    from tuning.config import SearchConfig

    o = gpu_session.options_from_args(gpu_session.parse_args(["--search-epochs", "30", "--search-refit"]))
    step = {s.name: s for s in gpu_session.plan(o)}["search"]
    argv = step.argv({})
    args = search_parser().parse_args(argv[2:])
    assert args.epochs == 30 and args.search_num_samples == 32
    assert SearchConfig(**given_fields(args, SearchConfig, prefix="search_")).refit is True
    assert step.label == "" and "refit" in step.what and step.box_s >= 1.5 * step.estimate_s
    default = {s.name: s for s in gpu_session.plan(gpu_session.options_from_args(gpu_session.parse_args([])))}
    assert "--refit" not in default["search"].argv({}) and "capped at 10 epochs" in default["search"].label
    assert step.estimate_s > default["search"].estimate_s


def test_ladder_rungs_parse_as_train_flags_and_the_winner_is_the_best_plain_seed_0_rung(tmp_path, capsys):
    """Every rung's flags make a valid training config that differs from the default in what the rung
    names; the winner is chosen on plain test accuracy of seed 0 (ties: the earlier rung); a winner with
    no results, or an unknown rung, is one line."""
    import ladder

    from cifar_lab.cli import train_parser
    from distributed.config import TrainConfig, config_from_args

    assert tuple(ladder.RUNGS) == gpu_session.LADDER_RUNGS  # the session names them without importing them
    default = TrainConfig()
    changed = {}
    for rung, (_, flags) in ladder.RUNGS.items():
        cfg = config_from_args(train_parser().parse_args(flags(30)))
        changed[rung] = {k for k, v in cfg.to_dict().items() if v != default.to_dict()[k]}
    assert changed == {"default": set(), "all-images": {"val_size"}, "fixed-momentum": {"cycle_momentum"},
                       "no-smoothing": {"label_smoothing"}, "smoothing-0.2": {"label_smoothing"},
                       "cutout-8-always": {"aug"}, "40-epochs": {"epochs"}}
    assert config_from_args(train_parser().parse_args(ladder.RUNGS["40-epochs"][1](30))).epochs == 40

    def row(rung, seed, acc, status="finished"):
        return {"kind": "ladder", "rung": rung, "seed": seed, "status": status, "test_acc_plain": acc}

    rows = [row("default", 0, 0.90), row("no-smoothing", 0, 0.91), row("fixed-momentum", 0, 0.91),
            row("40-epochs", 1, 0.99), row("all-images", 0, 0.95, "failed"), {"kind": "reference", "seed": 0}]
    assert ladder.pick_winner(rows) == "fixed-momentum"  # tie with no-smoothing: the earlier rung
    assert ladder.pick_winner([]) is None
    results = tmp_path / "ladder.jsonl"
    results.write_text("")
    with pytest.raises(SystemExit, match=r"no finished seed-0 rung in .*--ladder-winner R"):
        ladder.main(["--winner-from", str(results)])
    with pytest.raises(SystemExit, match="unknown rung.*nope; the rungs are: default, all-images"):
        ladder.main(["--rungs", "default,nope"])
    with pytest.raises(SystemExit, match="unknown ladder rung.*nope"):
        gpu_session.options_from_args(gpu_session.parse_args(["--ladder-winner", "nope"]))


# ----------------------------------------------------------------------------- the carry
def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)


def test_carry_size_counts_what_the_device_tool_sends(tmp_path, monkeypatch):
    """Tracked and untracked-but-not-ignored files and the carried folder count; ignored files (a venv,
    data) do not; a symbolic link counts as a link, not as what it points to."""
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / ".gitignore").write_text(".gpu/\n.venv/\n")
    (repo / "tracked.py").write_bytes(b"x" * 1000)
    _git(repo, "add", ".gitignore", "tracked.py")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    (repo / "untracked.txt").write_bytes(b"y" * 500)
    (repo / ".venv").mkdir()
    (repo / ".venv" / "big.bin").write_bytes(b"z" * 3_000_000)
    (repo / ".gpu" / "whl").mkdir(parents=True)
    (repo / ".gpu" / "setup.sh").write_bytes(b"s" * 100)
    (repo / ".gpu" / "whl" / "a.whl").write_bytes(b"w" * 2000)
    (repo / "data").symlink_to(repo / ".venv")  # like the worktree's data -> CIFAR copy
    size = gpu_pack_check.carry_size(repo, ".gpu")
    link = len(str(repo / ".venv"))
    gitignore = len(".gpu/\n.venv/\n")
    assert size["tree_bytes"] == 1000 + 500 + gitignore + link
    assert size["carry_bytes"] == 2100 and size["total_bytes"] == size["tree_bytes"] + 2100 and size["fits"]
    assert size["missing_pack_files"] == ["ray.tar.xz", "make_cifar10.py", "cifar10-jpeg.tar.xz"]
    monkeypatch.setattr(gpu_pack_check, "CARRY_LIMIT", 2000)
    assert not gpu_pack_check.carry_size(repo, ".gpu")["fits"]


def test_pack_check_of_this_checkout(capsys):
    """This checkout's tree is measured; without .gpu/ (CI) the check says to build it and passes, with
    it (a developer's checkout after pack.sh) the whole carry must fit."""
    try:
        gpu_pack_check.main([])
        code = 0
    except SystemExit as e:
        code = e.code
    res = json.loads(capsys.readouterr().out.splitlines()[0])
    assert res["tree_bytes"] > 0
    assert code == (0 if res["fits"] and not res["missing_pack_files"] else 1)
    if not res["carry_present"]:
        assert "pack.sh" in res["notes"][0]


# ----------------------------------------------------------------------------- the results writer
def _write_session(out: Path, records: list[dict], session: str = "gpu") -> None:
    out.mkdir(parents=True)
    (out / "steps.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (out / "summary.json").write_text(json.dumps({
        "session": session, "status": "finished", "started": "2026-12-01T10:00:00Z", "elapsed_s": 480.2,
        "budget_s": 510, "work": "/tmp/gpu-session/session-1", "data_dir": "/tmp/data", "root": "/repo",
        "machine": {"cpu": "Intel Xeon (16 cores)", "device_name": "NVIDIA H100 80GB HBM3", "torch": "2.11.0+cu130"},
        "skipped": [{"step": "train-seed1", "reason": "budget: 40 s left, the step needs at least 150 s"}],
        "notes": ["search: 32 trials with ASHA capped at 10 epochs"]}))


def test_results_writer_prints_readme_rows(tmp_path, capsys):
    step = {"bench": "step", "ours_step_s": 0.0080, "bare_step_s": 0.0079, "ours_images_per_s": 64000.0,
            "ratio_ours_over_bare": 1.012, "batch_size": 512, "ours_mfu": 0.2155}
    train = {"finished": True, "epochs": 30, "test_acc": 0.9412, "best_val_acc": 0.9440, "best_epoch": 30,
             "wall_seconds": 71.5, "total_seconds": 90.1, "images_per_sec": 61000.0, "median_epoch_s": 2.3,
             "first_epoch_s": 6.1, "data_wait_frac_mean": 0.03, "data_wait_frac_max": 0.2, "eval_s_median": 0.2,
             "checkpoint_s_median": 0.35}
    records = [
        {"step": "step-bf16", "status": "ok", "started": "2026-12-01T10:01:00Z", "result": step,
         "command": ["/opt/torch/.venv/bin/python3", "benchmarks/bench_step.py", "--bf16", "--device", "cuda"]},
        {"step": "train-seed0", "status": "ok", "started": "2026-12-01T10:02:00Z", "result": train,
         "command": ["/usr/bin/python3", "distributed/train.py", "--data-dir", "/tmp/data", "--runs-dir",
                     "/tmp/gpu-session/session-1/runs", "--name", "seed0"]},
        {"step": "gradcam", "status": "failed", "started": "2026-12-01T10:04:00Z", "result": None,
         "error": "rc 1: RuntimeError: CUDA out of memory", "command": ["python3", "benchmarks/bench_gradcam.py"]},
        {"step": "train-seed1", "status": "skipped", "reason": "budget: 40 s left", "started": "2026-12-01T10:09:00Z"},
    ]
    _write_session(tmp_path / "out", records)
    assert gpu_results.main([str(tmp_path / "out")]) == 0
    text = capsys.readouterr().out
    rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines() if line.startswith("| ")}
    hw = "1 x NVIDIA H100 80GB HBM3, Intel Xeon (16 cores), torch 2.11.0+cu130"
    assert rows["step-bf16"].startswith(f"| step-bf16 | `python benchmarks/bench_step.py --bf16 --device cuda` | {hw} | "
                                        f"2026-12-01 | ours 8.00 ms/step = 64,000 img/s, MFU 21.6%")
    assert "ratio 1.012" in rows["step-bf16"] and "<= 1.05x bare: met; >= 60,000 img/s: met" in rows["step-bf16"]
    assert ("`python distributed/train.py --data-dir $CIFAR_DIR --runs-dir $WORK/runs --name seed0`"
            in rows["train-seed0"])
    assert "test 94.12%" in rows["train-seed0"] and "71.5 s training, 90.1 s in all" in rows["train-seed0"]
    assert ">= 94% test in 30 epochs: met; <= 60 s: **not met**" in rows["train-seed0"]
    assert "**failed**: rc 1: RuntimeError: CUDA out of memory" in rows["gradcam"]
    assert "not run: budget: 40 s left" in rows["train-seed1"]
    assert "- train-seed1: budget: 40 s left, the step needs at least 150 s" in text
    assert "32 trials with ASHA capped at 10 epochs" in text

    assert gpu_results.main([str(tmp_path)]) == 2
    assert "holds no steps.jsonl" in capsys.readouterr().err


def _result_rows(tmp_path: Path, capsys, **results: dict) -> dict[str, str]:
    """The results writer's table rows, by step, for a session whose steps (in order) gave `results`."""
    records = [{"step": step, "status": "ok", "started": f"2026-12-02T10:{i:02d}:00Z", "result": res}
               for i, (step, res) in enumerate(results.items())]
    _write_session(tmp_path / "out", records)
    assert gpu_results.main([str(tmp_path / "out")]) == 0
    return {line.split(" | ")[0].strip("| "): line for line in capsys.readouterr().out.splitlines()
            if line.startswith("| ")}


def test_results_writer_shows_the_reference_the_ladder_and_the_refit(tmp_path, capsys):
    """The accuracy steps' rows: the reference's per-seed and mean figures against its published 94.01%,
    each ladder run plain and TTA (a failed one flagged, unstarted ones named), and the search's refit."""
    ref = {"bench": "reference", "trained": True, "published": {"recipe": "airbench94 (airbench.train94)",
                                                                "test_acc_tta": 0.9401},
           "seeds": [{"seed": s, "test_acc_plain": p, "test_acc_mirror": m, "test_acc_tta": t, "train_s": 3.1}
                     for s, p, m, t in ((0, 0.92, 0.925, 0.93), (1, 0.921, 0.926, 0.931), (2, 0.922, 0.927, 0.932))],
           "mean_test_acc_plain": 0.921, "sd_test_acc_plain": 0.001, "mean_test_acc_mirror": 0.926,
           "sd_test_acc_mirror": 0.001, "mean_test_acc_tta": 0.931, "sd_test_acc_tta": 0.001,
           "penalty_points_tta": 0.91}
    ladder = {"bench": "ladder", "concurrent": 4, "workers_per_run": 3, "epochs": 30, "summed_images_per_s": 41000.0,
              "winner": "no-smoothing", "not_started": ["40-epochs-s0"], "runs": [
                  {"rung": "default", "seed": 0, "status": "finished", "test_acc_plain": 0.905, "test_acc_tta": 0.915,
                   "total_seconds": 180.4},
                  {"rung": "no-smoothing", "seed": 0, "status": "finished", "test_acc_plain": 0.91,
                   "test_acc_tta": 0.92, "total_seconds": 181.0},
                  {"rung": "all-images", "seed": 0, "status": "failed", "epochs": 3, "error": "CUDA out of memory"}]}
    search = {"trials": 32, "status": "finished", "wall_seconds": 900, "completed": 4, "stopped": 28, "failed": 0,
              "trial_epochs": 110, "trial_train_images": 4.5e6, "max_epochs": 30, "best_val_acc": 0.93, "best_epoch": 30, "test_acc": 0.925,
              "refit": {"status": "finished", "train_images": 50000, "epochs": 30, "test_acc_plain": 0.931,
                        "test_acc_tta": 0.94, "total_seconds": 75.2}}
    rows = _result_rows(tmp_path, capsys, reference=ref, ladder=ladder, search=search)
    assert ("airbench94 (airbench.train94) on our copy, 3 seeds: 92.10% (sd 0.10) plain, 92.60% (sd 0.10) mirror "
            "TTA, 93.10% (sd 0.10) with its TTA (seed 0: 92.00% plain, 93.00% TTA, 3.1 s;") in rows["reference"]
    assert "published 94.01% with its TTA on the original release: -0.91 points on our copy" in rows["reference"]
    assert ("2 of 4 runs finished, 4 at a time with 3 loader workers each, 30 epochs, 41,000 training img/s summed "
            "over the runs: default s0: 90.50% plain, 91.50% TTA, 180 s; no-smoothing s0: 91.00% plain, 92.00% TTA, "
            "181 s; all-images s0: **failed** after 3 epochs (CUDA out of memory); not started: 40-epochs-s0; best "
            "seed-0 rung by plain test accuracy: no-smoothing") in rows["ladder"]
    assert ("refit on all 50,000 training images, 30 epochs: test 93.10% plain, 94.00% TTA, 75 s"
            in rows["search"])


def test_results_writer_sets_the_loader_work_against_its_baselines(tmp_path, capsys):
    """Issue 19's rows: the input step beside the float pipeline it replaced, four trials sharing the GPU
    against one training of the same session, the first batch's start-up, the GradCAM profile's top ops,
    and a compiled fit against the eager one (the 1.15x rule for making --compile the GPU default)."""
    inp = {"bench": "input", "ours_images_per_s": 52000.0, "bare_images_per_s": 9000.0, "workers": 12,
           "affine_p": 0.0, "color_p": 0.0, "float_images_per_s": 36000.0, "speedup_over_float": 1.444,
           "per_worker_efficiency": 0.48, "float_per_worker_efficiency": 0.41, "loader_over_gpu": 1.08,
           "gpu_step_images_per_s_bf16": 48000.0, "machine_scaling": 0.6, "per_worker_efficiency_of_machine": 0.8,
           "trainer_cores": 0.93, "workers_running": 0.62, "workers_runqueue_wait": 0.01, "workers_idle": 0.37,
           "ours_files_images_per_s": 47000.0, "slots_speedup": 1.106, "ours_through_slots": 1.0}
    train = {"finished": True, "epochs": 30, "test_acc": 0.905, "images_per_sec": 30000.0, "first_batch_s": 1.25,
             "later_first_batch_s_median": 0.004, "startup_seconds": 6.5, "final_seconds": 1.25,
             "wall_seconds": 50.0, "total_seconds": 60.0}
    search = {"trials": 32, "status": "stopped", "wall_seconds": 100, "trial_epochs": 40, "trial_train_images": 1.5e6,
              "trial_processes": 4}
    gradcam = {"bench": "gradcam", "weights": "runs/seed0/model.safetensors", "ours_s": 2.0, "lib_s": 20.0,
               "num_images": 10000, "speedup": 10.0, "max_abs_diff": 1e-5,
               "profile": {"ours": {"self_ms_total": 12.5, "top": [{"op": "aten::cudnn_convolution", "self_ms": 6.0}]},
                           "grad-cam": {"self_ms_total": 99.0, "top": [{"op": "aten::copy_", "self_ms": 40.0}]},
                           "file": "/w/gradcam/gradcam-profile.txt"}}
    compiled = {**train, "total_seconds": 50.0, "test_acc": 0.906, "first_epoch_s": 40.0}
    train = {**train, "first_epoch_s": 4.0}
    rows = _result_rows(tmp_path, capsys, **{"input": inp, "train-seed0": train, "train-compile": compiled,
                                             "gradcam": gradcam, "search": search})
    assert ("the float pipeline it replaced (Normalize in the workers) 36,000 img/s: 1.44x; per worker 0.48 "
            "(float 0.41)") in rows["input"]
    assert "loader/GPU >= 1: met; >= 1.4x float: met" in rows["input"]
    assert "12 bare processes at once scale 0.60 (the host), so the loader gives 0.80 of what" in rows["input"]
    assert "; the training process used 0.93 of a core" in rows["input"]
    assert "; its workers ran 0.62 of the time, waited for a core 0.01, idle 0.37" in rows["input"]
    assert ("; a new shared-memory file per batch (no reused slots) 47,000 img/s: 1.11x, 100% of batches through "
            "a slot") in rows["input"]
    assert "first batch 1.25 s (start-up of epoch 1), later epochs 0.004 s median" in rows["train-seed0"]
    assert "; before epoch 1 6.50 s, final weights and test 1.25 s" in rows["train-seed0"]
    assert ("against train-seed0 (eager): whole fit 1.20x faster, test +0.10 points, first epoch 40.0 s vs 4.0 s"
            in rows["train-compile"]) and "default on GPU if >= 1.15x at equal accuracy: met" in rows["train-compile"]
    assert "15,000 training img/s over all trials (0.50x one training's 30,000)" in rows["search"]
    assert "32 trials in 4 processes (ASHA, max" in rows["search"]
    assert ("ours one batch: 12.5 ms, top aten::cudnn_convolution 6.0 ms; grad-cam one batch: 99.0 ms, top "
            "aten::copy_ 40.0 ms") in rows["gradcam"]

