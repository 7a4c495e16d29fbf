"""The synthetic rest/activity generator used by benchmarks and tests: deterministic, with the rhythm
and the count distributions its docstring promises."""

from __future__ import annotations

import numpy as np

from pat_runner.actigraphy.synthetic import SLEEP_HOUR, WAKE_HOUR, rest_activity_counts, week_counts
from pat_runner.model import WEEK_MINUTES


def awake_mask(minutes: int, start_hour: float = 0.0) -> np.ndarray:
    hours = (start_hour + np.arange(minutes) / 60.0) % 24
    return (hours >= WAKE_HOUR) & (hours < SLEEP_HOUR)


def test_a_seed_always_gives_the_same_week() -> None:
    first = week_counts(3)
    assert first.shape == (WEEK_MINUTES,)
    np.testing.assert_array_equal(first, week_counts(3))
    assert not np.array_equal(first, week_counts(4))


def test_counts_are_whole_non_negative_and_follow_the_rhythm() -> None:
    counts = week_counts(0)
    awake = awake_mask(WEEK_MINUTES)
    assert np.all(counts >= 0) and np.all(counts == np.round(counts))
    # Gamma(1.5, 250) awake (mean 375, sd 306 over 6,720 minutes); Poisson(3) asleep (3,360 minutes).
    assert abs(counts[awake].mean() - 375) < 20
    assert abs(counts[~awake].mean() - 3) < 0.3


def test_the_clock_starts_at_start_hour() -> None:
    counts = week_counts(1, 24 * 60, start_hour=7)
    awake = awake_mask(24 * 60, start_hour=7)
    assert awake[0] and not awake[-1]
    assert counts[awake].mean() > 50 * max(counts[~awake].mean(), 1)


def test_zero_asleep_mean_gives_exact_zeros_while_asleep_and_keeps_the_awake_values() -> None:
    hours = np.arange(2 * 24 * 60) / 60.0 % 24
    quiet = rest_activity_counts(hours, 5, asleep_mean=0.0)
    noisy = rest_activity_counts(hours, 5)
    asleep = (hours < WAKE_HOUR) | (hours >= SLEEP_HOUR)
    assert np.all(quiet[asleep] == 0)
    np.testing.assert_array_equal(quiet[~asleep], noisy[~asleep])
