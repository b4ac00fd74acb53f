"""How to search: the frozen `SearchConfig` (the per-trial training config is the separate TrainConfig).

Every field with a flag is an option of `tuning/search.py`, built from this dataclass the way
`distributed/config.py` builds train.py's: the defaults and help texts live here only.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

from distributed.config import ConfigError, opt


# Ray's placement-group strategies for the workers of a DDP trial.
PLACEMENT_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")
# ASHA stops weak trials early; PBT (Population Based Training) keeps every trial running and every
# --perturbation-interval epochs has the weakest copy a strong one's state and perturb its schedulable
# hyperparameters (tuning/pbt.py).
SCHEDULERS = ("asha", "pbt")


def dated_name() -> str:
    """The default search name: when it started, to the second (runs/search-20261126-143205)."""
    return time.strftime("%Y%m%d-%H%M%S")


@dataclass(frozen=True)
class SearchConfig:
    """A Ray Tune search: how many trials, the scheduler's settings (ASHA or PBT), and the resources of each trial."""

    name: str = opt(help="search name: the folder runs-dir/search-NAME (--resume needs it)", factory=dated_name,
                    shown_default="the start time, e.g. 20261126-143205")
    num_samples: int = opt(32, "trials to sample (each a full training run of up to --epochs epochs)")
    scheduler: str = opt("asha", "asha: stop weak trials early (fixed hyperparameters per trial); pbt: Population "
                                 "Based Training, every trial runs all epochs and the weakest copy the strongest's "
                                 "weights, optimiser and schedule position, then perturb the augmentation, dropout "
                                 "and weight decay: the best trial's schedule goes to best/schedule.json",
                         # --scheduler is the training's learning-rate schedule (every training flag is a
                         # search flag too), as --seed is the training's seed and --search-seed the sampler's.
                         choices=SCHEDULERS, flag="--search-scheduler")
    grace_period: int = opt(1, "ASHA: epochs every trial gets before it may be stopped")
    reduction_factor: int = opt(2, "ASHA: keep the best 1/N of the trials at each rung (a count, >= 2)")
    perturbation_interval: int = opt(1, "PBT: epochs between two exploit/explore steps of a trial")
    quantile_fraction: float = opt(0.25, "PBT: the bottom fraction of the population copies a trial of the top "
                                         "fraction at each perturbation (0-0.5)")
    resample_probability: float = opt(0.25, "PBT: probability that a perturbed value is drawn anew from the space "
                                            "instead of multiplied by 0.8 or 1.2")
    gpus_per_trial: float | None = opt(None, "GPUs per trial process, fractions share one GPU",
                                       shown_default="1 when the cluster has a GPU, else 0")
    cpus_per_trial: float = opt(1.0, "CPU cores reserved per trial process")
    workers_per_trial: int = opt(1, "DDP worker processes per trial (Ray Train TorchTrainer); "
                                    "gpus/cpus-per-trial are then per worker")
    placement_strategy: str = opt("PACK", "where the workers of a DDP trial go: PACK (few nodes, fast "
                                          "collectives), SPREAD, STRICT_PACK (one node), STRICT_SPREAD "
                                          "(one node each)",
                                  choices=PLACEMENT_STRATEGIES)
    max_trial_retries: int = opt(2, "times a trial whose worker process or node was lost is retried, from "
                                    "its own last checkpoint (a trial whose loss diverged is never retried)")
    max_concurrent_trials: int = opt(0, "trials running at once (0: as many as the resources allow)")
    address: str | None = opt(None, "join a running Ray cluster: auto or HOST:PORT",
                              shown_default="start a local Ray on this machine")
    num_cpus: int | None = opt(None, "CPU cores a local Ray may use", shown_default="all of this machine's")
    resume: bool = opt(False, "continue runs-dir/search-NAME after an interruption, with its saved settings")
    space: dict[str, Any] = opt(factory=dict, cli=False)  # overrides merged over space.DEFAULT_SPACE
    seed: int = opt(0, "seed of the hyperparameter sampling", flag="--search-seed")
    verbose: bool = opt(False, "Ray Tune's own status table (about 200 columns, every 30 s) and Ray's worker "
                               "output, instead of the one-line progress view")
    # scikit-learn's refit=True: the search chose on 45,000 images; the model to keep trains on all of them.
    refit: bool = opt(False, "after the search, retrain the best trial's configuration on every training image "
                             "(--val-size 0) for --epochs epochs into runs-dir/search-NAME/refit/, test it once "
                             "and report it beside the best trial's own test accuracy (--resume continues an "
                             "interrupted refit)")
    # An ended trial (finished, stopped by ASHA or failed) is never resumed: its epoch checkpoints and
    # final weights (~180 + 45 MB) are dead weight; its best weights are kept for best/.
    keep_trial_checkpoints: bool = opt(False, "keep every ended trial's epoch checkpoints and final weights "
                                              "(about 200 MB a trial) instead of only its best weights "
                                              "and small files")
    # Copy every epoch checkpoint (~90 MB) into Ray's storage. Only needed on a cluster whose nodes
    # do not share --runs-dir: trials resume from their own run dir otherwise, and the copy costs I/O.
    tune_checkpoints: bool = opt(False, "also copy each epoch checkpoint into Ray's storage "
                                        "(clusters without a shared --runs-dir; a PBT search always hands its "
                                        "checkpoints over through Ray's storage)")

    def __post_init__(self) -> None:
        def bad(flag: str, value: Any, why: str) -> ConfigError:
            return ConfigError(f"invalid --{flag} {value!r}: {why}")

        if not self.name or "/" in self.name or self.name in (".", ".."):
            raise bad("name", self.name, "a search name must be a plain folder name")
        if self.num_samples < 1:
            raise bad("num-samples", self.num_samples, "must be >= 1")
        if self.grace_period < 1:
            raise bad("grace-period", self.grace_period, "must be >= 1")
        if self.reduction_factor < 2:
            raise bad("reduction-factor", self.reduction_factor, "must be >= 2")
        gpus = self.gpus_per_trial
        if gpus is not None and not (math.isfinite(gpus) and gpus >= 0):
            raise bad("gpus-per-trial", gpus, "must be >= 0 (fractions share a GPU)")
        if gpus is not None and gpus > 1 and not float(gpus).is_integer():
            raise bad("gpus-per-trial", gpus, "above 1 it must be a whole number")
        if not (math.isfinite(self.cpus_per_trial) and self.cpus_per_trial > 0):
            raise bad("cpus-per-trial", self.cpus_per_trial, "must be > 0")
        if self.workers_per_trial < 1:
            raise bad("workers-per-trial", self.workers_per_trial, "must be >= 1")
        if self.placement_strategy not in PLACEMENT_STRATEGIES:
            raise bad("placement-strategy", self.placement_strategy, f"choose one of {', '.join(PLACEMENT_STRATEGIES)}")
        if self.max_trial_retries < 0:
            raise bad("max-trial-retries", self.max_trial_retries, "must be >= 0")
        if self.max_concurrent_trials < 0:
            raise bad("max-concurrent-trials", self.max_concurrent_trials, "must be >= 0")
        if self.num_cpus is not None and self.num_cpus < 1:
            raise bad("num-cpus", self.num_cpus, "must be >= 1")
        if self.scheduler not in SCHEDULERS:
            raise bad("search-scheduler", self.scheduler, f"choose one of {', '.join(SCHEDULERS)}")
        if self.perturbation_interval < 1:
            raise bad("perturbation-interval", self.perturbation_interval, "must be >= 1 (epochs)")
        if not (math.isfinite(self.quantile_fraction) and 0.0 < self.quantile_fraction <= 0.5):
            raise bad("quantile-fraction", self.quantile_fraction, "must be in (0, 0.5]: a bottom and a top share "
                                                                   "of the population")
        if not (math.isfinite(self.resample_probability) and 0.0 <= self.resample_probability <= 1.0):
            raise bad("resample-probability", self.resample_probability, "must be a probability in [0, 1]")
        if self.scheduler == "pbt":
            self._check_pbt()

    def _check_pbt(self) -> None:
        """What --search-scheduler pbt cannot do, in one line each."""
        asha = [f"--{k.replace('_', '-')} {getattr(self, k)}" for k, default in
                (("grace_period", 1), ("reduction_factor", 2)) if getattr(self, k) != default]
        if asha:
            what = "an ASHA setting" if len(asha) == 1 else "ASHA settings"
            raise ConfigError(f"{' and '.join(asha)}: {what}, but --search-scheduler pbt stops no trial early; "
                              f"drop {'it' if len(asha) == 1 else 'them'} or use --search-scheduler asha")
        if self.num_samples < 2:
            raise ConfigError(f"invalid --num-samples {self.num_samples} with --search-scheduler pbt: a population "
                              f"needs at least 2 trials (one to copy, one to copy from)")
        if self.workers_per_trial > 1:
            # A DDP trial is a Ray Train run inside the Tune trial; handing its checkpoint to another
            # trial (and adopting one) would go through Ray Train's own checkpoint storage.
            raise ConfigError(f"--workers-per-trial {self.workers_per_trial} with --search-scheduler pbt: PBT trials "
                              f"run in one process each; use --workers-per-trial 1 or --search-scheduler asha")

    def gpus(self) -> float:
        """GPUs per trial process, `None` resolved against this machine."""
        if self.gpus_per_trial is not None:
            return self.gpus_per_trial
        import torch

        return 1.0 if torch.cuda.is_available() else 0.0
