"""Timing shared by the benchmark scripts: weeks/s and median latency of one model call per batch size."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np


def time_batches(
    run: Callable[[np.ndarray], Any],
    window: np.ndarray,
    batches: Sequence[int],
    seconds: float,
    *,
    warmups: int = 1,
) -> list[dict[str, float]]:
    """For each batch size, `window` repeated that many times: `warmups` untimed calls (warm-up, tracing),
    then calls for `seconds` (at least 3); weeks/s and the median call latency in ms."""
    rows = []
    for batch in batches:
        weeks = np.repeat(window[None, :], batch, axis=0)
        for _ in range(warmups):
            run(weeks)
        durations: list[float] = []
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline or len(durations) < 3:
            start = time.perf_counter()
            run(weeks)
            durations.append(time.perf_counter() - start)
        rows.append(
            {
                "batch": batch,
                "weeks_per_s": batch * len(durations) / sum(durations),
                "latency_ms_p50": 1000 * statistics.median(durations),
            }
        )
    return rows
