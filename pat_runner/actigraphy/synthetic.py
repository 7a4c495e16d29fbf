"""Synthetic rest/activity minute counts: deterministic, plausible input for benchmarks, demos and tests.

Not a physiological model and never an analysis result: it only gives the service realistic-looking
input without health data. The shape is a sleep/wake rhythm: awake (07:00 to 23:00 by default)
counts are gamma-distributed, asleep counts are Poisson with a small mean, all rounded to whole counts.
The same seed always gives the same counts.
"""

from __future__ import annotations

import numpy as np

from pat_runner.model import WEEK_MINUTES

WAKE_HOUR = 7
SLEEP_HOUR = 23


def rest_activity_counts(
    clock_hours: np.ndarray,
    seed: int,
    *,
    awake_shape: float = 1.5,
    awake_scale: float = 250.0,
    asleep_mean: float = 3.0,
) -> np.ndarray:
    """Counts, one per entry of `clock_hours` (the local hour of day of each minute, 0 ≤ h < 24).

    Awake minutes draw Gamma(`awake_shape`, `awake_scale`) (mean shape·scale counts/min), asleep
    minutes Poisson(`asleep_mean`); `asleep_mean=0` gives exact zeros while asleep.
    """
    hours = np.asarray(clock_hours, dtype=np.float64)
    rng = np.random.default_rng(seed)
    awake = (hours >= WAKE_HOUR) & (hours < SLEEP_HOUR)
    # Both arrays are drawn in full (gamma first) so a seed's awake values do not depend on the schedule.
    counts = np.where(
        awake, rng.gamma(awake_shape, awake_scale, hours.size), rng.poisson(asleep_mean, hours.size)
    )
    return np.round(counts)


def week_counts(seed: int, minutes: int = WEEK_MINUTES, *, start_hour: float = 0.0) -> np.ndarray:
    """`minutes` counts from a start at `start_hour`, on elapsed time (the clock ignores DST changes)."""
    clock_hours = (start_hour + np.arange(minutes) / 60.0) % 24
    return rest_activity_counts(clock_hours, seed)


def week_recording(seed: int, *, subject: str | None = None) -> dict[str, object]:
    """One synthetic week in the JSON shape of the API's `recording` (60-s counts, New York time)."""
    recording: dict[str, object] = {
        "start": "2024-03-04T00:00:00-05:00",
        "timezone": "America/New_York",
        "epoch_seconds": 60,
        "values": week_counts(seed).tolist(),
        "unit": "counts",
    }
    if subject is not None:
        recording["subject"] = subject
    return recording
