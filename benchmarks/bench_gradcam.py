"""GradCAM for layer1..layer4: ours (`reporting.gradcam.GradCAM`) against `pytorch_grad_cam.GradCAM`.

Ours: one forward + one backward per batch for all four layers, maps computed with torch ops.
Library: one `pytorch_grad_cam.GradCAM` per layer (how its users would do four layers), each call
its own forward + backward, numpy/cv2 post-processing.  Same batches, same target classes (the
class ours predicts, passed to the library as `ClassifierOutputTarget`), timed batch by batch in
alternating order; also the largest absolute difference between the two sets of maps.
Goal: ours >= 10x faster, maps within 1e-4.

    python benchmarks/bench_gradcam.py                         # CPU: 128 test images
    python benchmarks/bench_gradcam.py --device cuda           # 10,000 test images
    python benchmarks/bench_gradcam.py --weights runs/x/model.safetensors
    python benchmarks/bench_gradcam.py --device cuda --profile out/   # + torch.profiler tables

`--profile DIR`, after the timed comparison, profiles one batch of each with `torch.profiler`
(CPU and, on a GPU, CUDA activity) and writes `gradcam-profile.txt`: the operators of ours and of
the library sorted by their self time on the device that does the work. Its JSON line gets the
top operators of each, so the session's record says where the time goes, not only how much.
"""
from __future__ import annotations

import argparse


def parse_args(argv=None) -> argparse.Namespace:
    from _common import add_device_arg

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_device_arg(p)
    p.add_argument("--data-dir", default="data", help="folder holding cifar-10-batches-py/")
    p.add_argument("--num-images", type=int, default=None, help="test images (default: 10000 cuda, 128 cpu)")
    p.add_argument("--batch-size", type=int, default=None, help="default: 500 cuda, 64 cpu")
    p.add_argument("--weights", default=None, help="model.safetensors to explain (default: seeded random init)")
    p.add_argument("--profile", default=None, metavar="DIR",
                   help="also profile one batch of each with torch.profiler into DIR/gradcam-profile.txt")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)  # first: --help and a bad flag answer before the heavy imports
    import numpy as np
    import torch
    from pytorch_grad_cam import GradCAM as LibGradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from _common import base_info, emit, r, resolve_device, sync, timer
    from distributed.data import channel_stats, load_cifar10
    from distributed.model import LAYER_NAMES, resnet18
    from reporting.gradcam import GradCAM

    device = resolve_device(args.device)
    gpu = device == "cuda"
    n = args.num_images or (10000 if gpu else 128)
    bs = args.batch_size or (500 if gpu else 64)

    data = load_cifar10(args.data_dir, download=False)
    n = min(n, len(data.test_x))
    mean, std = channel_stats(data.train_x, cache_dir=None)
    x_all = torch.from_numpy(data.test_x[:n]).permute(0, 3, 1, 2).float().div(255.0)
    x_all = (x_all - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]

    torch.manual_seed(0)
    model = resnet18()
    if args.weights:
        from safetensors.torch import load_file
        model.load_state_dict(load_file(args.weights))
    model = model.to(device).eval()
    layers = list(LAYER_NAMES)
    lib_cams = {name: LibGradCAM(model=model, target_layers=[getattr(model, name)]) for name in layers}

    ours_s = lib_s = 0.0
    max_diff = 0.0
    done = 0
    with GradCAM(model, layers) as cam:
        # Warm-up of both on one small batch (allocator, cuDNN autotune), not timed.
        warm = x_all[:min(bs, 8)].to(device)
        t = cam(warm).targets
        for name in layers:
            lib_cams[name](input_tensor=warm, targets=[ClassifierOutputTarget(int(c)) for c in t.tolist()])
        for b, s in enumerate(range(0, n, bs)):
            xb = x_all[s:s + bs]

            def run_ours():
                sync(device)
                t0 = timer()
                out = cam(xb.to(device))
                maps = {k: v.cpu() for k, v in out.maps.items()}  # the report needs them on the host
                sync(device)
                return timer() - t0, maps, out.targets.cpu()

            def run_lib(targets):
                sync(device)
                t0 = timer()
                tg = [ClassifierOutputTarget(int(c)) for c in targets.tolist()]
                maps = {k: lib_cams[k](input_tensor=xb.to(device), targets=tg) for k in layers}
                sync(device)
                return timer() - t0, maps

            if b % 2 == 0:
                dt_o, ours_maps, targets = run_ours()
                dt_l, lib_maps = run_lib(targets)
            else:  # the library needs targets first: take them from a cheap forward, untimed
                with torch.no_grad():
                    targets = model(xb.to(device)).argmax(1).cpu()
                dt_l, lib_maps = run_lib(targets)
                dt_o, ours_maps, t2 = run_ours()
                assert torch.equal(t2, targets)
            ours_s += dt_o
            lib_s += dt_l
            for k in layers:
                max_diff = max(max_diff, float(np.abs(ours_maps[k].numpy() - lib_maps[k]).max()))
            done += xb.shape[0]
        profile = (profile_one_batch(x_all[:bs].to(device), device, cam, lib_cams, layers, args.profile)
                   if args.profile else None)
    for c in lib_cams.values():
        c.activations_and_grads.release()

    speedup = lib_s / ours_s
    res = base_info("gradcam", device)
    res.update({
        "num_images": done, "batch_size": bs, "layers": layers, "weights": args.weights or "random-init(seed 0)",
        "ours_s": r(ours_s, 3), "lib_s": r(lib_s, 3), "ours_images_per_s": r(done / ours_s, 1),
        "lib_images_per_s": r(done / lib_s, 1), "speedup": r(speedup, 2), "goal_speedup_min": 10.0,
        "max_abs_diff": max_diff, "goal_max_abs_diff": 1e-4,
        "goal_met": bool(speedup >= 10.0 and max_diff <= 1e-4),
    })
    if profile:
        res["profile"] = profile
    emit(res, f"gradcam [{device}, {done} images, 4 layers]: ours {ours_s:.2f} s vs pytorch-grad-cam {lib_s:.2f} s "
              f"-> {speedup:.1f}x faster (goal 10x); max |diff| {max_diff:.2e} (goal 1e-4)")


def profile_one_batch(xb, device: str, cam, lib_cams: dict, layers: list[str], out_dir: str,
                      top: int = 12) -> dict:
    """torch.profiler over one batch of ours and of the library (after the timed, warmed-up runs).

    Writes both operator tables into `out_dir/gradcam-profile.txt` and returns, per side, the total
    self time and its `top` operators (name, self ms, calls) on the device that does the work.
    """
    from pathlib import Path

    import torch
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    from torch.profiler import ProfilerActivity, profile

    from _common import r, sync

    gpu = device == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if gpu else [])
    key = "self_cuda_time_total" if gpu else "self_cpu_time_total"
    # the attribute name changed across torch versions (cuda -> device); read whichever exists
    attrs = ("self_device_time_total", "self_cuda_time_total") if gpu else ("self_cpu_time_total",)

    def self_us(ev) -> float:
        return float(next(getattr(ev, a) for a in attrs if hasattr(ev, a)))

    def ours():
        out = cam(xb)
        return {k: v.cpu() for k, v in out.maps.items()}, out.targets

    _, targets = ours()  # the library gets the classes ours predicts, as in the timed runs
    tg = [ClassifierOutputTarget(int(c)) for c in targets.tolist()]

    def lib():
        return {k: lib_cams[k](input_tensor=xb, targets=tg) for k in layers}

    tables, summary = [], {}
    for name, fn in (("ours", ours), ("grad-cam", lib)):
        sync(device)
        with profile(activities=activities, record_shapes=False) as prof:
            fn()
            sync(device)
        events = [e for e in prof.key_averages() if self_us(e) > 0]
        events.sort(key=self_us, reverse=True)
        total = sum(self_us(e) for e in events)
        summary[name] = {"self_ms_total": r(total / 1e3, 3), "by": key,
                         "top": [{"op": e.key, "self_ms": r(self_us(e) / 1e3, 3), "calls": e.count}
                                 for e in events[:top]]}
        tables.append(f"== {name}: one batch of {xb.shape[0]} images, 4 layers, sorted by {key}\n"
                      + prof.key_averages().table(sort_by=key, row_limit=40))
    path = Path(out_dir) / "gradcam-profile.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n\n".join(tables) + "\n")
    summary["file"] = str(path)
    return summary


if __name__ == "__main__":
    main()

