"""What two runs' metrics.jsonl rows must share when they trained alike: everything but the clocks."""
from __future__ import annotations

from typing import Any

TIMING = frozenset({"epoch_seconds", "images_per_sec", "data_wait_frac", "first_batch_seconds", "wall_seconds",
                    "eval_seconds", "checkpoint_seconds"})


def comparable(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows without their timings: equal for runs that trained to the bit alike."""
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]
