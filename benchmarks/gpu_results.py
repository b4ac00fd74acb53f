"""The README rows of a GPU session: reads its output folder (steps.jsonl, summary.json) and prints, per
step, the command, the hardware, the date and the figure, so numbers reach README.md and
benchmarks/README.md without hand copying.

    python benchmarks/gpu_results.py /path/to/session-out          # the folder the device call returned

A dry run's rows say so in every row: its figures come from tiny CPU runs and measure nothing.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable


def read_jsonl(path: Path) -> list[dict]:
    """The JSON objects of a JSON-lines file (none if it is missing); a line torn by a kill is skipped."""
    rows = []
    if Path(path).exists():
        for line in Path(path).read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def load(out_dir: Path) -> tuple[dict, list[dict]]:
    """summary.json (may be missing while a session runs) and the steps' JSON lines."""
    out_dir = Path(out_dir)
    summary = json.loads((out_dir / "summary.json").read_text()) if (out_dir / "summary.json").exists() else {}
    return summary, read_jsonl(out_dir / "steps.jsonl")


def _pct(x: Any) -> str:
    return "?" if x is None else f"{100 * x:.2f}%"


def _num(x: Any, fmt: str = ",.0f") -> str:
    return "?" if x is None else format(x, fmt)


def _met(ok: bool | None) -> str:
    return "?" if ok is None else ("met" if ok else "**not met**")


def _step(r: dict) -> tuple[str, str]:
    mfu = f", MFU {r['ours_mfu']:.1%}" if r.get("ours_mfu") is not None else ""
    return (f"ours {r['ours_step_s'] * 1e3:.2f} ms/step = {_num(r['ours_images_per_s'])} img/s{mfu}; bare loop "
            f"{r['bare_step_s'] * 1e3:.2f} ms; ratio {r['ratio_ours_over_bare']:.3f} (batch {r['batch_size']})",
            f"<= 1.05x bare: {_met(r['ratio_ours_over_bare'] <= 1.05)}; >= 60,000 img/s: "
            f"{_met(r['ours_images_per_s'] >= 60_000)}")


def _input(r: dict) -> tuple[str, str]:
    gpu = (f"; GPU bf16 step eats {_num(r['gpu_step_images_per_s_bf16'])} img/s, loader/GPU {r['loader_over_gpu']:.2f}"
           if r.get("loader_over_gpu") is not None else "")
    base = (f"; the float pipeline it replaced (Normalize in the workers) {_num(r['float_images_per_s'])} img/s: "
            f"{r['speedup_over_float']:.2f}x; per worker {r['per_worker_efficiency']:.2f} (float "
            f"{r['float_per_worker_efficiency']:.2f})" if r.get("float_images_per_s") is not None else "")
    base += (f"; a new shared-memory file per batch (no reused slots) {_num(r['ours_files_images_per_s'])} img/s: "
             f"{r['slots_speedup']:.2f}x, {r['ours_through_slots']:.0%} of batches through a slot"
             if r.get("slots_speedup") is not None else "")
    base += (f"; with torch's default handover {_num(r['ours_fd_images_per_s'])} img/s: "
             f"{r['handover_speedup']:.2f}x" if r.get("handover_speedup") is not None else "")
    base += (f"; {r['workers']} bare processes at once scale {r['machine_scaling']:.2f} (the host), so the loader gives "
             f"{r['per_worker_efficiency_of_machine']:.2f} of what the host allows" if r.get("machine_scaling") else "")
    # What the training process itself spends per batch on the host (receiving, pinning, copying): a
    # core it takes from the workers, and on a GPU the core that launches the step's kernels.
    base += (f"; the training process used {r['trainer_cores']:.2f} of a core" if r.get("trainer_cores") is not None
             else "")
    # Where the workers' time went: running (more workers or cheaper transforms help), waiting for a
    # core (too few cores), idle (too few batches asked of them).
    base += (f"; its workers ran {r['workers_running']:.2f} of the time, waited for a core "
             f"{r['workers_runqueue_wait']:.2f}, idle {r['workers_idle']:.2f}"
             if r.get("workers_running") is not None else "")
    speed = r.get("speedup_over_float")
    return (f"loader {_num(r['ours_images_per_s'])} img/s with {r['workers']} workers (affine p {r['affine_p']}, "
            f"colour p {r['color_p']}); bare 1-process {_num(r['bare_images_per_s'])} img/s{base}{gpu}",
            f"loader/GPU >= 1: {_met(r['loader_over_gpu'] >= 1) if r.get('loader_over_gpu') is not None else '?'}"
            + (f"; >= 1.4x float: {_met(speed >= 1.4)}" if speed is not None else ""))


def _train(r: dict) -> tuple[str, str]:
    done = "" if r.get("finished") else f" (unfinished: {r.get('epochs')} epochs)"
    text = (f"test {_pct(r.get('test_acc'))}, best val {_pct(r.get('best_val_acc'))} (epoch {r.get('best_epoch')}); "
            f"{_num(r.get('wall_seconds'), '.1f')} s training, {_num(r.get('total_seconds'), '.1f')} s in all; "
            f"{_num(r.get('images_per_sec'))} img/s; median epoch {_num(r.get('median_epoch_s'), '.2f')} s "
            f"(first {_num(r.get('first_epoch_s'), '.2f')} s); data wait {_pct(r.get('data_wait_frac_mean'))} mean, "
            f"{_pct(r.get('data_wait_frac_max'))} max; first batch {_num(r.get('first_batch_s'), '.2f')} s "
            f"(start-up of epoch 1), later epochs {_num(r.get('later_first_batch_s_median'), '.3f')} s median; validation {_num(r.get('eval_s_median'), '.2f')} s and "
            f"checkpoint {_num(r.get('checkpoint_s_median'), '.2f')} s per epoch"
            + (f"; before epoch 1 {_num(r['startup_seconds'], '.2f')} s, final weights and test "
               f"{_num(r.get('final_seconds'), '.2f')} s" if r.get("startup_seconds") is not None else "")
            + done)
    acc, wall = r.get("test_acc"), r.get("wall_seconds")
    return text, (f">= 94% test in 30 epochs: {_met(acc >= 0.94) if acc is not None else '?'}; <= 60 s: "
                  f"{_met(wall <= 60) if wall is not None and r.get('finished') else '?'}")


def _gradcam(r: dict) -> tuple[str, str]:
    weights = "/".join(Path(r["weights"]).parts[-2:])  # runs/<name>/model.safetensors -> <name>/model.safetensors
    prof = r.get("profile") or {}
    where = "".join(f"; {side} one batch: {p['self_ms_total']:.1f} ms, top " + ", ".join(
        f"{op['op']} {op['self_ms']:.1f} ms" for op in p["top"][:3]) for side, p in prof.items() if side != "file")
    return (f"ours {r['ours_s']:.2f} s vs grad-cam {r['lib_s']:.2f} s on {_num(r['num_images'])} images "
            f"({weights}) -> {r['speedup']:.1f}x; max map difference {r['max_abs_diff']:.1e}{where}",
            f">= 10x: {_met(r['speedup'] >= 10)}; <= 1e-4: {_met(r['max_abs_diff'] <= 1e-4)}")


def _tta(r: dict) -> tuple[str, str]:
    return (f"validation {_pct(r['val_acc_plain'])} plain, {_pct(r['val_acc_tta'])} with mirror TTA "
            f"({100 * r['tta_gain']:+.2f} points) on {r['val_count']} images; evaluation {r['eval_s_plain']:.2f} s vs "
            f"{r['eval_s_tta']:.2f} s", "decides whether --tta becomes the default (validation only)")


def _report(r: dict) -> tuple[str, str]:
    return f"report built: {r['index']}, {r['figures']} figures, {r['bytes'] / 2**20:.1f} MiB", "-"


def _search(r: dict, one_training: float | None = None) -> tuple[str, str]:
    """one_training: a default training's img/s from the same session, to set the trials' sum against."""
    s = r.get("settings") or {}
    rate = (f"; {r['trial_train_images'] / r['wall_seconds']:,.0f} training img/s over all trials"
            if r.get("wall_seconds") else "")
    if rate and one_training:
        rate += f" ({r['trial_train_images'] / r['wall_seconds'] / one_training:.2f}x one training's {one_training:,.0f})"
    full = 30 * 45_000
    equiv = f" = {r['trial_train_images'] / full:.1f} full 30-epoch trainings of images" if r.get("trial_train_images") else ""
    best = (f"; best val {_pct(r.get('best_val_acc'))} (epoch {r.get('best_epoch')}), its test {_pct(r.get('test_acc'))}"
            if r.get("best_val_acc") is not None else "")
    refit = r.get("refit") or {}
    if refit.get("status") == "finished":
        best += (f"; refit on all {refit['train_images']:,} training images, {refit['epochs']} epochs: test "
                 f"{_pct(refit.get('test_acc_plain'))} plain, {_pct(refit.get('test_acc_tta'))} TTA, "
                 f"{_num(refit.get('total_seconds'))} s")
    elif refit:
        best += f"; refit {refit.get('status')}{': ' + refit['error'] if refit.get('error') else ''}"
    procs = f" in {r['trial_processes']} processes" if r.get("trial_processes") else ""
    return (f"{r.get('trials', r.get('trials_started'))} trials{procs} (ASHA, max {r.get('max_epochs')} epochs, "
            f"{s.get('gpus_per_trial')} GPU and {s.get('cpus_per_trial')} CPUs each), {r.get('status')}: "
            f"{_num(r.get('wall_seconds'))} s; {r.get('completed', '?')} completed, {r.get('stopped', '?')} stopped "
            f"early, {r.get('failed', '?')} failed; {r.get('trial_epochs')} trial-epochs{equiv}{rate}{best}",
            "32 trials in a few trainings' time")


def _mean_sd(mean: Any, sd: Any) -> str:
    return f"{_pct(mean)}" + (f" (sd {100 * sd:.2f})" if sd is not None else "")


def _reference(r: dict) -> tuple[str, str]:
    pub = r.get("published") or {}
    back = r.get("read_back") or {}
    if not r.get("trained"):
        same = all(v.get("same_as_loader") for v in back.values()) if back else None
        files = ", ".join(f"{k} {v['images']:,}" for k, v in r["files"].items())
        return (f"airbench data files written ({files} images; read back equal to our loader's arrays: {same}); "
                f"{r.get('not_trained')}", "-")
    seeds = "; ".join(f"seed {x['seed']}: {_pct(x['test_acc_plain'])} plain, {_pct(x['test_acc_tta'])} TTA, "
                      f"{x['train_s']:.1f} s" for x in r["seeds"])
    return (f"{pub.get('recipe')} on our copy, {len(r['seeds'])} seeds: "
            f"{_mean_sd(r.get('mean_test_acc_plain'), r.get('sd_test_acc_plain'))} plain, "
            f"{_mean_sd(r.get('mean_test_acc_mirror'), r.get('sd_test_acc_mirror'))} mirror TTA, "
            f"{_mean_sd(r.get('mean_test_acc_tta'), r.get('sd_test_acc_tta'))} with its TTA ({seeds}); published "
            f"{_pct(pub.get('test_acc_tta'))} with its TTA on the original release: "
            f"{-r['penalty_points_tta']:+.2f} points on our copy",
            "our default >= this, plain vs plain and TTA vs TTA (README Results)")


def _ladder(r: dict) -> tuple[str, str]:
    runs = r.get("runs") or []
    parts = []
    for x in runs:
        name = f"{x['rung']} s{x['seed']}"
        if x["status"] == "finished":
            parts.append(f"{name}: {_pct(x.get('test_acc_plain'))} plain, {_pct(x.get('test_acc_tta'))} TTA, "
                         f"{_num(x.get('total_seconds'), '.0f')} s")
        else:
            parts.append(f"{name}: **{x['status']}** after {x.get('epochs')} epochs ({x.get('error')})")
    left = f"; not started: {', '.join(r['not_started'])}" if r.get("not_started") else ""
    done = sum(x["status"] == "finished" for x in runs)
    if r.get("from_winner_of"):
        best = f"; {', '.join(r.get('rungs') or [])} is the ladder's best seed-0 rung by plain test accuracy"
    else:
        best = f"; best seed-0 rung by plain test accuracy: {r.get('winner')}"
    return (f"{done} of {len(runs) + len(r.get('not_started') or [])} runs finished, {r.get('concurrent')} at a "
            f"time with {r.get('workers_per_run')} loader workers each, {r.get('epochs')} epochs, "
            f"{_num(r.get('summed_images_per_s'))} training img/s summed over the runs: {'; '.join(parts)}{left}{best}",
            "each rung against the default, 3 seeds before a default changes")


def _smoke(r: dict) -> tuple[str, str]:
    if r["bench"] == "smoke-ray":
        return (f"Ray {r['ray']} sees {r['cluster_gpus']:g} GPU{' (pretend)' if r.get('pretend_gpu') else ''}; "
                f"4 tasks of 0.25 GPU ran at once", "-")
    return (f"torch {r['torch']} (CUDA {r.get('torch_cuda')}, cuDNN {r.get('cudnn')}): bf16 + channels_last "
            f"forward/backward, pinned copies, a 1-epoch fit in {r.get('fit_s')} s ({r.get('fit_mixed_precision')})",
            "-")


def _pack(r: dict) -> tuple[str, str]:
    reh = r.get("rehearsal") or {}
    setup = (f"; setup.sh in Python {reh.get('python')}: {reh.get('setup_first_s')} s fresh, "
             f"{reh.get('setup_warm_s')} s warm" if reh.get("python") else "")
    return (f"{r['total_mib']} MiB travel ({r['tree_bytes'] / 2**20:.2f} tree + {r['carry_bytes'] / 2**20:.2f} "
            f"{r['carry']}/){setup}", f"<= {r['limit_mib']} MiB: {_met(r['fits'])}")


FORMATTERS: dict[str, Callable[[dict], tuple[str, str]]] = {
    "step": _step, "input": _input, "gradcam": _gradcam, "tta": _tta, "smoke-torch": _smoke, "smoke-ray": _smoke,
    "pack": _pack, "reference": _reference, "ladder": _ladder}


def _figure(rec: dict, one_training: float | None = None) -> tuple[str, str]:
    res = rec.get("result")
    if rec["status"] == "skipped":
        return f"not run: {rec.get('reason')}", "-"
    if not res:
        return f"**{rec['status']}**: {rec.get('error', 'no result')}", "-"
    if rec["step"].startswith("train-"):
        text, goal = _train(res)
    elif rec["step"].startswith("report-"):
        text, goal = _report(res)
    elif rec["step"] == "search":
        text, goal = _search(res, one_training)
    else:
        text, goal = FORMATTERS.get(res.get("bench", ""), lambda r: (json.dumps(r)[:300], "-"))(res)
    if rec["status"] != "ok":
        text = f"**{rec['status']}** ({rec.get('error')}); partial: {text}"
    return text, goal


def command_text(rec: dict, summary: dict) -> str:
    """The command as a reader would type it: `python`, and $CIFAR_DIR / $WORK for this session's folders."""
    argv = [str(a) for a in rec.get("command") or []]
    if not argv:
        return "-"
    subs = [(summary.get("work") or "\0", "$WORK"), (summary.get("data_dir") or "\0", "$CIFAR_DIR"),
            (summary.get("out") or "\0", "$OUT"),
            ((summary.get("root") or "\0") + "/", "")]
    out = ["python"]
    for a in argv[1:]:
        for old, new in subs:
            a = a.replace(old, new)
        out.append(a)
    return "`" + " ".join(out) + "`"


def hardware(summary: dict) -> str:
    m = summary.get("machine") or {}
    if summary.get("session") == "dry-run":
        return f"dry run on {m.get('cpu', 'CPU')}: tiny sizes, not a measurement"
    gpu = m.get("device_name") or "GPU ?"
    return f"1 x {gpu}, {m.get('cpu', 'CPU ?')}, torch {m.get('torch', '?')}"


def rows(summary: dict, records: list[dict]) -> list[str]:
    """Markdown table rows, one per step, in the order they ran."""
    hw = hardware(summary)
    dry = summary.get("session") == "dry-run"
    out = ["| step | command | hardware | date | result | goal |", "| --- | --- | --- | --- | --- | --- |"]
    trainings = [(rec.get("result") or {}).get("images_per_sec") for rec in records
                 if rec["step"].startswith("train-seed")]
    one_training = next((t for t in trainings if t), None)  # what four trials sharing the GPU are set against
    eager = next((rec.get("result") for rec in records if rec["step"] == "train-seed0" and rec.get("result")), None)
    for rec in records:
        text, goal = _figure(rec, one_training)
        res = rec.get("result") or {}
        if rec["step"] == "train-compile" and eager and res.get("total_seconds") and eager.get("total_seconds"):
            speed = eager["total_seconds"] / res["total_seconds"]
            acc = (f", test {100 * (res['test_acc'] - eager['test_acc']):+.2f} points"
                   if res.get("test_acc") is not None and eager.get("test_acc") is not None else "")
            text += (f"; against train-seed0 (eager): whole fit {speed:.2f}x faster{acc}, first epoch "
                     f"{_num(res.get('first_epoch_s'), '.1f')} s vs {_num(eager.get('first_epoch_s'), '.1f')} s "
                     f"(what a trial stopped after one epoch pays)")
            goal = f"default on GPU if >= 1.15x at equal accuracy: {_met(speed >= 1.15)}"
        if rec.get("label"):
            text += f" ({rec['label']})"
        date = (rec.get("started") or "")[:10]
        if dry and goal != "-":
            goal = "no verdict: dry run"
        out.append(f"| {rec['step']} | {command_text(rec, summary)} | {hw} | {date} | {text} | {goal} |")
    return out


def render(out_dir: Path) -> str:
    summary, records = load(out_dir)
    lines = [f"# GPU session: {summary.get('session', '?')}, {summary.get('status', '?')}", "",
             f"Started {summary.get('started', '?')}, {summary.get('elapsed_s', '?')} s of a {summary.get('budget_s', '?')} s "
             f"budget. Hardware: {hardware(summary)}.", ""]
    lines += rows(summary, records)
    skipped = summary.get("skipped") or []
    if skipped or summary.get("pending"):
        lines += ["", "Not run:"] + [f"- {s['step']}: {s['reason']}" for s in skipped]
        lines += [f"- {p}: not reached" for p in summary.get("pending") or []]
    if summary.get("notes"):
        lines += ["", "Notes:"] + [f"- {n}" for n in summary["notes"]]
    if summary.get("estimate_basis"):
        lines += ["", f"Estimates in steps.jsonl (`estimate_s`): {summary['estimate_basis']}."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out_dir", type=Path, help="a GPU session's output folder (steps.jsonl, summary.json)")
    args = p.parse_args(argv)
    if not (args.out_dir / "steps.jsonl").exists():
        print(f"error: {args.out_dir} holds no steps.jsonl: give the folder a GPU session wrote", file=sys.stderr)
        return 2
    print(render(args.out_dir), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
