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

if os.environ.get("FAULT_SLOW_STEPS_AFTER_CHECKPOINTS"):
    # FAULT_SLOW_STEPS_AFTER_CHECKPOINTS=N: after the N-th checkpoint every backward pass takes
    # FAULT_STEP_SECONDS (default 0.5) longer, so a test that signals the run once it sees that
    # checkpoint finds it still in the next epoch however loaded the machine is (tiny runs finish
    # their remaining epochs in well under a second).
    import time

    import accelerate

    after = int(os.environ["FAULT_SLOW_STEPS_AFTER_CHECKPOINTS"])
    pause = float(os.environ.get("FAULT_STEP_SECONDS", "0.5"))
    real_save, real_backward = accelerate.Accelerator.save_state, accelerate.Accelerator.backward
    saved = []

    def counting_save_state(self, *args, **kwargs):
        result = real_save(self, *args, **kwargs)
        saved.append(1)
        return result

    def slow_backward(self, *args, **kwargs):
        if len(saved) >= after:
            time.sleep(pause)
        return real_backward(self, *args, **kwargs)

    accelerate.Accelerator.save_state = counting_save_state
    accelerate.Accelerator.backward = slow_backward
