"""Faults for tests, switched on by environment variables: a disk that fills up (for machines
where a small tmpfs cannot be mounted), and steps that slow down after a checkpoint.

Put this folder on PYTHONPATH and set FAULT_FULL_DISK_AFTER_CHECKPOINTS=N: in that process the
first N `Accelerator.save_state` calls work, and every later one fails after writing part of its
folder, with the OSError a full disk gives (ENOSPC).
"""
import os

if os.environ.get("FAULT_FULL_DISK_AFTER_CHECKPOINTS"):
    import errno

    import accelerate

    allowed = int(os.environ["FAULT_FULL_DISK_AFTER_CHECKPOINTS"])
    real_save_state = accelerate.Accelerator.save_state
    calls = []

    def save_state(self, output_dir=None, **kwargs):
        calls.append(output_dir)
        if len(calls) > allowed:
            os.makedirs(output_dir, exist_ok=True)
            with open(os.path.join(output_dir, "model.safetensors"), "wb") as f:
                f.write(b"\0" * 1024)  # half-written
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.path.join(output_dir, "model.safetensors"))
        return real_save_state(self, output_dir, **kwargs)

    accelerate.Accelerator.save_state = save_state

import slow_steps  # noqa: E402,F401 - FAULT_SLOW_STEPS_AFTER_CHECKPOINTS (slow_steps.py)
