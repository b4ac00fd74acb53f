"""Tune's PopulationBasedTraining, with no decision on a trial's last epoch.

Tune's PBT knows no end of training: a trial that reports its last epoch from the bottom of the
population is sent back to a donor's last checkpoint like any other, to train that epoch again,
and as the exploit hands it the donor's last perturbation time, its next report of the same last
epoch is due for a decision again: a trial could loop on its last epoch while it stays at the
bottom (seen on the 2-core CPU, 2026-12-03: one trial restarted three times after its last epoch).
A copy made there trains at most the epochs since the donor's checkpoint; the population gains
nothing it would keep. Here a trial's last epoch continues: its `fit` ends by itself and writes
its final weights and summary.

Imported by tuning/runner.py when a search starts (it imports Ray); a module-level class, so Tune
can pickle the scheduler with the experiment's state.
"""
from __future__ import annotations

from typing import Any

from ray.tune.schedulers import PopulationBasedTraining, TrialScheduler


class PopulationBasedTrainingToTheEnd(PopulationBasedTraining):
    """`PopulationBasedTraining` that lets a trial reporting `last` (its `time_attr`: our epoch) or
    later finish instead of exploiting another trial."""

    def __init__(self, *, last: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.last = last

    def on_trial_result(self, tune_controller, trial, result: dict[str, Any]) -> str:
        if result.get(self._time_attr, 0) >= self.last:
            return TrialScheduler.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)
