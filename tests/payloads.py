"""Synthetic but plausible recordings for API tests: a rest/activity rhythm with noise and a gap."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np

WEEK = 10_080
# A distinctive activity value planted in every recording, so log scans can prove values never leak.
SENTINEL_VALUE = 7777.25
SENTINEL_INDEX = 500


def week_counts(seed: int, minutes: int = WEEK, *, start_hour: int = 0) -> np.ndarray:
    """Counts per minute: ~0 asleep 23:00–07:00, gamma-distributed activity awake."""
    rng = np.random.default_rng(seed)
    clock_hour = (start_hour + np.arange(minutes) / 60.0) % 24
    awake = (clock_hour >= 7) & (clock_hour < 23)
    counts = np.where(awake, rng.gamma(1.5, 250.0, minutes), rng.poisson(3.0, minutes))
    return np.round(counts)


def recording(
    seed: int = 0,
    *,
    minutes: int = WEEK,
    timezone: str = "America/New_York",
    start: datetime | None = None,
    subject: str | None = "Patient/test-0001",
    gap: tuple[int, int] | None = (3_000, 3_060),
) -> dict[str, Any]:
    zone = ZoneInfo(timezone)
    start = start or datetime(2024, 3, 4, tzinfo=zone)
    values: list[float | None] = [float(v) for v in week_counts(seed, minutes, start_hour=start.hour)]
    if gap is not None:
        values[gap[0] : gap[1]] = [None] * (gap[1] - gap[0])
    if minutes > SENTINEL_INDEX:
        values[SENTINEL_INDEX] = SENTINEL_VALUE
    body: dict[str, Any] = {
        "start": start.isoformat(),
        "timezone": timezone,
        "epoch_seconds": 60,
        "values": values,
        "unit": "counts",
    }
    if subject is not None:
        body["subject"] = subject
    return body
