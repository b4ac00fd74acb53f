"""Steps that slow down after a checkpoint, for tests that signal a run "in epoch 2".

Imported by the sitecustomize.py of tests/fault_helpers and of tests/cluster_helpers (only the first
sitecustomize on PYTHONPATH is imported; put this folder on PYTHONPATH too). With
FAULT_SLOW_STEPS_AFTER_CHECKPOINTS=N, after the N-th checkpoint of a process every backward pass
takes FAULT_STEP_SECONDS (default 0.5) longer: a test that signals the run once it sees that
checkpoint finds it still in the next epoch however fast or loaded the machine is (tiny runs
finish their remaining epochs in well under a second).
"""
import os

if os.environ.get("FAULT_SLOW_STEPS_AFTER_CHECKPOINTS"):
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
