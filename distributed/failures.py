"""What a failed run says: one line for the failures users meet, a traceback only for the rest.

A failure users meet is not a bug of ours: a diverged loss, a disk that is full or read-only, a
loader worker the system killed (usually for memory), a peer process of a DDP job that went away.
For those `explain` gives what happened and what to do; the command line adds what the run
directory keeps and the command that continues it (`cifar_lab.cli`). Anything else is unexpected
and keeps its traceback.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from distributed.config import TrainConfig
from distributed.rundir import WriteError


class NonFiniteLossError(RuntimeError):
    """Training diverged (NaN/inf loss) in `epoch` (1-based); a Tune trial records this as failed."""

    def __init__(self, loss: float, epoch: int, max_lr: float) -> None:
        super().__init__(f"training loss became {loss} in epoch {epoch}; lower --max-lr (this run: {max_lr:.3g}) "
                         f"or let --find-lr choose it")
        self.loss, self.epoch, self.max_lr = loss, epoch, max_lr

    def __reduce__(self):  # pickled as built (Ray carries a trial's exception across processes)
        return type(self), (self.loss, self.epoch, self.max_lr)


@dataclass(frozen=True)
class Failure:
    """A failure users meet, in words: `what` happened, and the `fix` before continuing.

    resumable:  `--resume` after the fix continues the run (False: it would fail the same way).
    every_rank: every process of a DDP job meets it alike (the main one speaks for all); else it
                is this process's own and it says so itself.
    """

    what: str
    fix: str
    resumable: bool = True
    every_rank: bool = True


def explain(exc: BaseException, cfg: TrainConfig) -> Failure | None:
    """The `Failure` that `exc` is, or None when it is unexpected (a bug: show its traceback)."""
    if isinstance(exc, NonFiniteLossError):
        return Failure(f"training diverged: the loss became {exc.loss} in epoch {exc.epoch} at max_lr {exc.max_lr:.3g}",
                       "a --resume would diverge again: start a new --name with a lower --max-lr or with "
                       "--find-lr", resumable=False)
    if isinstance(exc, WriteError):
        fix = ("free space on that disk (or choose another --runs-dir)" if "space" in exc.reason or "quota" in exc.reason
               else "make that folder writable (or choose another --runs-dir)")
        return Failure(str(exc), fix)
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    # torch's words when a worker process ends without being asked (OOM killer, a crash):
    # "DataLoader worker (pid 123) is killed by signal: Killed." / "... exited unexpectedly";
    # or, when the batch was in transit, a broken pipe to the worker inside torch's loader.
    worker_pipe = isinstance(exc, (EOFError, ConnectionError)) and _raised_in_torch_data_loading(exc)
    if worker_pipe or (isinstance(exc, RuntimeError) and text.startswith("DataLoader worker (pid")):
        detail = text.rstrip(". ") if not worker_pipe else f"{type(exc).__name__} while receiving a batch"
        return Failure(f"a data loader worker died ({detail})",
                       "it was most likely killed for memory: lower --num-workers or free memory",
                       every_rank=False)
    import torch.distributed as dist

    if isinstance(exc, dist.DistError) or any(m in text for m in _PEER_GONE):
        # gloo: "[/path/to/pair.cc:561] Connection closed by peer [127.0.0.1]:21427. This is typically ..."
        said = re.sub(r"^\[[^\]]*\]\s*", "", text).split(". ")[0]
        return Failure(f"lost contact with another process of this job ({said})",
                       f"that process's own error says why (collectives give up after --dist-timeout "
                       f"{cfg.dist_timeout} s)", every_rank=False)
    return None


# What gloo and NCCL say, in a plain RuntimeError, when a peer process has gone or hangs.
_PEER_GONE = ("Connection closed by peer", "Connection reset by peer", "Socket Timeout",
              "NCCL communicator was aborted", "Watchdog caught collective operation timeout")


def _raised_in_torch_data_loading(exc: BaseException) -> bool:
    tb = exc.__traceback__
    while tb is not None:
        if "torch/utils/data/" in tb.tb_frame.f_code.co_filename.replace("\\", "/"):
            return True
        tb = tb.tb_next
    return False
