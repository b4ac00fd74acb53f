"""Mirror TTA on validation: a finished run's weights evaluated on its validation split with and without
`--tta` (each image's logits averaged with its mirror image's), and the time each evaluation takes.

Whether `--tta` should become the default is decided here, on validation, never on the test set; it
needs no second training (TTA changes evaluation only). Both use the run's own split, normalisation,
precision and channels_last setting, through the same `evaluate` that `fit` uses.

    python benchmarks/bench_tta.py --run runs/resnet18                     # final weights
    python benchmarks/bench_tta.py --run runs/resnet18 --weights best      # best-validation epoch's
"""
from __future__ import annotations

import argparse


def parse_args(argv=None) -> argparse.Namespace:
    from _common import add_device_arg

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_device_arg(p)
    p.add_argument("--run", required=True, help="a finished run directory (config.json, summary.json, weights)")
    p.add_argument("--weights", choices=("final", "best"), default="final",
                   help="model.safetensors (final) or best.safetensors (best validation epoch)")
    p.add_argument("--data-dir", default=None, help="folder holding cifar-10-batches-py/ (default: the run's)")
    p.add_argument("--repeats", type=int, default=3, help="timed evaluations of each (median)")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)  # first: --help and a bad flag answer before the heavy imports
    from pathlib import Path

    from safetensors.torch import load_file

    from _common import base_info, emit, median, r, resolve_device, sync, timer
    from distributed import rundir
    from distributed.config import TrainConfig
    from distributed.data import load_cifar10, make_split
    from distributed.engine import evaluate
    from distributed.pipeline import build_accelerator, build_model, eval_loader, model_input

    device = resolve_device(args.device)
    if device == "cpu":
        import os
        os.environ.setdefault("ACCELERATE_USE_CPU", "true")
    run = Path(args.run)
    weights = run / (rundir.FINAL_WEIGHTS if args.weights == "final" else rundir.BEST_WEIGHTS)
    for need in (run / rundir.CONFIG, run / rundir.SUMMARY, weights):
        if not need.exists():
            raise SystemExit(f"error: {need} does not exist: give --run a finished run directory")
    meta = rundir.read_json(run / rundir.CONFIG)
    cfg = TrainConfig.from_dict(meta["config"])
    if args.data_dir:
        cfg = cfg.replace(data_dir=args.data_dir)
    if cfg.val_size <= 0:
        raise SystemExit(f"error: {run} was trained without a validation split (--val-size 0): nothing to decide on")

    accelerator = build_accelerator(cfg)
    data = load_cifar10(cfg.data_dir, download=False)
    split = make_split(data.train_y, data.test_y, cfg.val_size, cfg.subset, cfg.test_subset)
    loader = eval_loader(cfg, accelerator, data.train_x, data.train_y, split.val)
    to_input = model_input(cfg, accelerator, meta["mean"], meta["std"])
    model = build_model(cfg, len(data.classes), accelerator)
    model.load_state_dict(load_file(str(weights)))
    model, loader = accelerator.prepare(model, loader)

    evaluate(model, loader, to_input, accelerator, tta=True)  # warm-up: cuDNN autotune
    times: dict[bool, list[float]] = {False: [], True: []}
    results = {}
    for i in range(args.repeats):
        for tta in ((False, True) if i % 2 == 0 else (True, False)):
            sync(device)
            t0 = timer()
            results[tta] = evaluate(model, loader, to_input, accelerator, tta=tta)
            sync(device)
            times[tta].append(timer() - t0)

    plain, mirror = results[False]["acc"], results[True]["acc"]
    res = base_info("tta", device)
    res.update({
        "run": str(run), "weights": weights.name, "val_count": results[False]["count"],
        "mixed_precision": accelerator.mixed_precision,
        "val_acc_plain": r(plain, 5), "val_acc_tta": r(mirror, 5), "tta_gain": r(mirror - plain, 5),
        "eval_s_plain": r(median(times[False]), 4), "eval_s_tta": r(median(times[True]), 4),
        "eval_s_plain_all": [r(t, 4) for t in times[False]], "eval_s_tta_all": [r(t, 4) for t in times[True]],
    })
    emit(res, f"tta [{device}, {res['val_count']} validation images, {weights.name}]: val acc {plain:.4f} plain, "
              f"{mirror:.4f} with mirror TTA ({100 * (mirror - plain):+.2f} points); evaluation "
              f"{res['eval_s_plain']:.2f} s vs {res['eval_s_tta']:.2f} s")


if __name__ == "__main__":
    main()
