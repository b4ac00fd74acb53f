"""Will the GPU session travel and start? The carry size, and `.gpu/setup.sh` rehearsed in a clean Python 3.12.

    python benchmarks/gpu_pack_check.py
        # what the device tool sends: tracked + untracked-not-ignored files + the carried .gpu/, against 64 MiB
    python benchmarks/gpu_pack_check.py --rehearse-python /opt/py312/bin/python3 [--rehearse-session]
        # also `source .gpu/setup.sh` with that interpreter first on PATH and an empty private /tmp (a
        # fresh GPU machine: setup.sh installs into /tmp/site and builds /tmp/data), timed, twice; with
        # --rehearse-session, then the session's dry run in that environment

Build `.gpu/` first with `bash ../shared/gpu/pack.sh`. The interpreter should hold only what the GPU
image holds (torch, torchvision, accelerate, numpy, opencv-python-headless, matplotlib, jinja2, pandas,
pyarrow, scipy, scikit-learn, requests, pyyaml, ...; see ../shared/gpu/README.md) and live outside /tmp.
The rehearsal needs `unshare` and the right to mount (root). Prints one JSON line and a summary line;
exits 1 when the carry is over the limit or the rehearsal fails.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CARRY_LIMIT = 64 * 2**20            # the device tool's limit on what travels, tree and carried paths together
PACK_FILES = ("setup.sh", "ray.tar.xz", "make_cifar10.py", "cifar10-jpeg.tar.xz")
SESSION_MARK = "=== rehearsal session summary ==="


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--carry", default=".gpu", help="the carried folder (default: .gpu)")
    p.add_argument("--require-pack", action="store_true", help="fail when the carried folder is missing")
    p.add_argument("--rehearse-python", default=None,
                   help="a clean Python 3.12 imitating the GPU image: run setup.sh with it (needs unshare, root)")
    p.add_argument("--rehearse-session", action="store_true",
                   help="with --rehearse-python: then the session's dry run (gpu_session.py --dry-run) there")
    return p.parse_args(argv)


def carry_size(root: Path, carry: str = ".gpu") -> dict:
    """Bytes the device tool would send: the files git tracks or would track (tracked, and untracked
    but not ignored; a symbolic link as a link), plus every file under the carried folder."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                                capture_output=True, check=True).stdout.decode()
    except (OSError, subprocess.CalledProcessError) as e:
        raise SystemExit(f"error: cannot list the files of {root} with git ({e}): the carry is what git tracks "
                         f"or would track, so measure it in a git checkout") from None
    carry = carry.strip("/")
    sizes: list[tuple[int, str]] = []
    tree = 0
    for name in filter(None, listed.split("\0")):
        if name == carry or name.startswith(carry + "/"):
            continue  # counted below, once
        try:
            size = (root / name).lstat().st_size
        except FileNotFoundError:
            continue  # tracked but deleted in the work tree: it does not travel
        tree += size
        sizes.append((size, name))
    carried = 0
    folder = root / carry
    for dirpath, _, files in os.walk(folder):
        for f in files:
            size = (Path(dirpath) / f).lstat().st_size
            carried += size
            sizes.append((size, str((Path(dirpath) / f).relative_to(root))))
    total = tree + carried
    return {"tree_bytes": tree, "carry": carry, "carry_present": folder.is_dir(), "carry_bytes": carried,
            "total_bytes": total, "total_mib": round(total / 2**20, 2), "limit_mib": CARRY_LIMIT // 2**20,
            "fits": total <= CARRY_LIMIT, "headroom_mib": round((CARRY_LIMIT - total) / 2**20, 2),
            "missing_pack_files": [f for f in PACK_FILES if folder.is_dir() and not (folder / f).exists()],
            "wheels": sorted(p.name for p in (folder / "whl").glob("*.whl")) if folder.is_dir() else [],
            "largest": [{"path": n, "mib": round(s / 2**20, 2)} for s, n in sorted(sizes, reverse=True)[:5]]}


def rehearse(root: Path, python: str, carry: str, session: bool) -> dict:
    """`source <carry>/setup.sh` twice (fresh, then warm) with `python` first on PATH, in a mount namespace
    whose /tmp is an empty private folder, so setup.sh's fixed /tmp/site and /tmp/data start as on a
    fresh machine and nobody else's /tmp is touched; then the imports the project needs there."""
    py = Path(python)
    if not py.exists():
        return {"ok": False, "error": f"--rehearse-python {python} does not exist"}
    prefix = subprocess.run([str(py), "-c", "import sys; print(sys.prefix, sys.version.split()[0])"],
                            capture_output=True, text=True, check=True).stdout.split()
    if Path(prefix[0]).resolve().is_relative_to("/tmp"):
        return {"ok": False, "error": f"the rehearsal interpreter lives under /tmp ({prefix[0]}), which the "
                                      f"rehearsal replaces by an empty folder: put it elsewhere"}
    private = tempfile.mkdtemp(prefix="gpu-rehearsal-")
    q = shlex.quote
    session_cmd = (f'python3 benchmarks/gpu_session.py --dry-run --no-pack --data-dir "$CIFAR_DIR" '
                   f'--work-dir /tmp/session --out /tmp/session-out; echo "session_rc=$?"; '
                   f'echo {q(SESSION_MARK)}; cat /tmp/session-out/summary.json; echo') if session else ""
    script = f"""
set -u
mount --bind {q(private)} /tmp || {{ echo "mount_failed"; exit 97; }}
export PATH={q(str(py.parent))}:$PATH
unset PYTHONPATH VIRTUAL_ENV
t0=$EPOCHREALTIME; source {q(carry)}/setup.sh; rc=$?; t1=$EPOCHREALTIME
echo "setup1_rc=$rc setup1_s=$(awk "BEGIN {{print $t1 - $t0}}")"
test -f /tmp/site/.done && echo "site_installed=1"
test -f /tmp/data/cifar-10-batches-py/test_batch && echo "data_built=1"
t0=$EPOCHREALTIME; source {q(carry)}/setup.sh; rc=$?; t1=$EPOCHREALTIME
echo "setup2_rc=$rc setup2_s=$(awk "BEGIN {{print $t1 - $t0}}")"
python3 -c "import sys, torch, ray, albumentations, pytorch_grad_cam, tensorboardX, pydantic, jsonschema, airbench; \
import ray.tune, ray.train.torch; print('imports_ok=1 python=' + sys.version.split()[0] + ' ray=' + ray.__version__ \
+ ' torch=' + torch.__version__ + ' albumentations=' + albumentations.__version__)"
command -v ray >/dev/null && echo "ray_on_path=1" || echo "ray_on_path=0"
{session_cmd}
"""
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "bash", "-c", script], cwd=root,
                              capture_output=True, text=True, timeout=1800)
        out = proc.stdout + proc.stderr
    except (OSError, subprocess.TimeoutExpired) as e:
        return {"ok": False, "error": f"unshare failed: {e}"}
    finally:
        subprocess.run(["rm", "-rf", private], check=False)
    keys = {}
    for line in proc.stdout.splitlines():
        for tok in line.split():
            if "=" in tok and tok.split("=", 1)[0].replace("_", "").isalnum():
                keys[tok.split("=", 1)[0]] = tok.split("=", 1)[1]
    res = {"python": prefix[1], "interpreter": str(py), "seconds": round(time.perf_counter() - t0, 1),
           "setup_first_s": _num(keys.get("setup1_s")), "setup_warm_s": _num(keys.get("setup2_s")),
           "setup_rc": [keys.get("setup1_rc"), keys.get("setup2_rc")],
           "site_installed": keys.get("site_installed") == "1", "data_built": keys.get("data_built") == "1",
           "imports_ok": keys.get("imports_ok") == "1", "ray_on_path": keys.get("ray_on_path") == "1",
           "versions": {k: keys.get(k) for k in ("python", "ray", "torch", "albumentations")}}
    if "mount_failed" in out:
        return {**res, "ok": False, "error": "could not mount a private /tmp (needs root and unshare)"}
    # setup.sh ends with torch.cuda.get_device_name(0): on a machine without a GPU that last check
    # fails by design, so its exit status says nothing here; the install, data and imports do.
    res["setup_gpu_check_output"] = [ln for ln in out.splitlines() if "gpu setup" in ln or "CUDA" in ln
                                     or "NVIDIA" in ln][-2:]
    res["ok"] = res["site_installed"] and res["data_built"] and res["imports_ok"]
    if session:
        res["session_rc"] = keys.get("session_rc")
        text = proc.stdout.split(SESSION_MARK, 1)[1] if SESSION_MARK in proc.stdout else ""
        try:
            res["session"] = json.loads(text)
        except json.JSONDecodeError:
            res["session"] = None
        res["ok"] = res["ok"] and res["session_rc"] == "0"
    if not res["ok"]:
        res["output_tail"] = out[-3000:]
    return res


def _num(s: str | None) -> float | None:
    try:
        return round(float(s), 1) if s is not None else None
    except ValueError:
        return None


def main(argv=None) -> None:
    args = parse_args(argv)
    size = carry_size(ROOT, args.carry)
    res = {"bench": "pack", "date": time.strftime("%Y-%m-%d", time.gmtime()), **size}
    problems = []
    if not size["carry_present"]:
        note = f"{args.carry}/ is not built (run `bash ../shared/gpu/pack.sh`): only the tree was measured"
        (problems if args.require_pack else res.setdefault("notes", [])).append(note)
    elif size["missing_pack_files"]:
        problems.append(f"{args.carry}/ lacks {', '.join(size['missing_pack_files'])}: rebuild it with pack.sh")
    if not size["fits"]:
        problems.append(f"what travels is {size['total_mib']} MiB, over the {size['limit_mib']} MiB limit; "
                        f"largest: {size['largest'][:3]}")
    if args.rehearse_python:
        if not size["carry_present"]:
            problems.append("--rehearse-python needs the carried folder")
        else:
            res["rehearsal"] = rehearse(ROOT, args.rehearse_python, args.carry, args.rehearse_session)
            if not res["rehearsal"]["ok"]:
                problems.append(f"setup rehearsal failed: {res['rehearsal'].get('error', 'see output_tail')}")
    res["ok"] = not problems
    res["problems"] = problems
    print(json.dumps(res), flush=True)
    reh = res.get("rehearsal")
    reh_txt = (f"; setup.sh in Python {reh['python']}: first {reh['setup_first_s']} s, warm {reh['setup_warm_s']} s, "
               f"imports {'ok' if reh['imports_ok'] else 'FAILED'}" if reh and "python" in reh else "")
    print(f"pack: {size['total_mib']} MiB travel of {size['limit_mib']} ({size['tree_bytes'] / 2**20:.2f} tree + "
          f"{size['carry_bytes'] / 2**20:.2f} {args.carry}/){reh_txt}"
          + ("" if not problems else " | " + "; ".join(problems)), flush=True)
    if problems:
        sys.exit(1)


if __name__ == "__main__":
    main()
