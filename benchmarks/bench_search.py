"""Search overhead: wall time per trial of N trivial Ray Tune trials, minus their trivial work.

Each trial is a Tune function trainable that "trains" `--epochs` epochs of `--work-s` seconds of
sleep, and after each reports metrics with `tune.report` and a tiny checkpoint directory, as our
trials do.  The Tune settings are OUR search's: `tuning.runner.init_ray`, `tune_config` (ASHA on
val_acc by epoch, BasicVariantGenerator, trial dir names) and `run_config` (storage, checkpoint
keep-1, failure config), and like `run_search` the data set is `ray.put` once and every trial
`ray.get`s it through `tune.with_parameters` (`--data-mb` of bytes, default the size of CIFAR-10).

    overhead per trial = (wall of Tuner.fit - total work / concurrent trials) / N     goal <= 2 s

Ray start-up (`ray.init`) is reported separately and not counted.

    python benchmarks/bench_search.py --num-trials 8
"""
from __future__ import annotations

import argparse


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--num-trials", type=int, default=8)
    p.add_argument("--epochs", type=int, default=3, help="reports per trial (ASHA max_t)")
    p.add_argument("--work-s", type=float, default=0.05, help="seconds of 'training' per epoch (a sleep)")
    p.add_argument("--num-cpus", type=int, default=2, help="ray.init(num_cpus=...); 1 CPU per trial")
    p.add_argument("--data-mb", type=float, default=184.3, help="object shipped to every trial (0: none)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu",
                   help="accepted for symmetry; trials use CPUs only")
    return p.parse_args(argv)


def trivial_trial(config, data=None) -> None:
    """Report `epochs` results, each with a tiny checkpoint, after `work_s` of sleep per epoch."""
    import json
    import os
    import tempfile
    import time

    from ray import tune

    if data is not None:
        _ = data.nbytes  # the trial touches its data as a real one would
    work = 0.0
    for epoch in range(1, config["epochs"] + 1):
        t0 = time.perf_counter()
        time.sleep(config["work_s"])
        work += time.perf_counter() - t0
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, "trainer_state.json"), "w") as f:
                json.dump({"epoch": epoch}, f)
            tune.report({"epoch": epoch, "val_acc": config["x"] * epoch / config["epochs"], "work_s": work},
                        checkpoint=tune.Checkpoint.from_directory(d))


def main(argv=None) -> None:
    import os
    import shutil
    import tempfile
    import time

    import numpy as np

    from _common import emit, r

    args = parse_args(argv)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    from ray import tune

    from distributed.config import TrainConfig
    from tuning import runner
    from tuning.config import SearchConfig

    tmp = tempfile.mkdtemp(prefix="bench_search_")
    try:
        base_cfg = TrainConfig(epochs=args.epochs, runs_dir=tmp)
        search = SearchConfig(name="bench", num_samples=args.num_trials, num_cpus=args.num_cpus,
                                     cpus_per_trial=1.0, verbose=0)
        t0 = time.perf_counter()
        started = runner.init_ray(search)
        ray_init_s = time.perf_counter() - t0
        data = np.zeros(int(args.data_mb * 1e6), dtype=np.uint8) if args.data_mb > 0 else None
        data_ref = ray.put(data) if data is not None else None
        trainable = tune.with_resources(
            tune.with_parameters(trivial_trial, data=data_ref) if data_ref is not None else trivial_trial,
            runner.trial_resources(search))
        tuner = tune.Tuner(trainable,
                           param_space={"x": tune.uniform(0.0, 1.0), "epochs": args.epochs, "work_s": args.work_s},
                           tune_config=runner.tune_config(base_cfg, search),
                           run_config=runner.run_config(runner.search_dir_for(base_cfg, search.name), search))
        t0 = time.perf_counter()
        grid = tuner.fit()
        wall = time.perf_counter() - t0
        metrics = [res.metrics or {} for res in grid]
        errors = sum(res.error is not None for res in grid)
        work = sum(m.get("work_s", 0.0) for m in metrics)
        epochs_run = sum(m.get("epoch", 0) for m in metrics)
        concurrent = max(1, min(args.num_trials, int(ray.cluster_resources().get("CPU", 1) // 1)))
        if started:
            ray.shutdown()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    n = args.num_trials
    overhead = (wall - work / concurrent) / n
    res = {"bench": "search", "device": "cpu", "ray": ray.__version__, "date": time.strftime("%Y-%m-%d", time.gmtime()),
           "num_trials": n, "epochs_max": args.epochs, "epochs_run": epochs_run, "work_s_per_epoch": args.work_s,
           "num_cpus": args.num_cpus, "concurrent_trials": concurrent, "data_mb": args.data_mb,
           "trial_errors": errors, "ray_init_s": r(ray_init_s, 3), "fit_wall_s": r(wall, 3),
           "wall_per_trial_s": r(wall / n, 3), "work_per_trial_s": r(work / n, 3),
           "overhead_per_trial_s": r(overhead, 3), "goal_overhead_max_s": 2.0, "goal_met": overhead <= 2.0}
    emit(res, f"search [{n} trivial trials, {concurrent} at a time, ASHA max {args.epochs} epochs]: "
              f"Tuner.fit {wall:.1f} s -> {wall / n:.2f} s/trial wall, overhead {overhead:.2f} s/trial (goal <= 2 s); "
              f"ray.init {ray_init_s:.1f} s not counted")


if __name__ == "__main__":
    main()
