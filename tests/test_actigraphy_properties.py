"""Properties of preprocessing and the metrics over generated recordings (hypothesis).

* The same signal at every supported epoch gives identical minutes and metrics.
* Viewing the same instants in another fixed-offset zone moves clock-valued metrics by the offset and
  nothing else.
* No sleep period exceeds 24 h or overlaps non-wear; observed + missing = total for every night and day.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pat_runner.actigraphy.metrics import ActigraphyMetrics, actigraphy_metrics
from pat_runner.actigraphy.preprocess import SUPPORTED_EPOCH_SECONDS, RawRecording, preprocess
from pat_runner.settings import Settings
from tests.test_messy_recordings import DAY, assert_nights_respect_nonwear

SETTINGS = Settings().replace(redis_url="", cache_keys="", cache_hmac_key="")
FAST = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
START = datetime(2024, 5, 6, 9, 0, tzinfo=UTC)


def rest_activity_minutes(seed: int, days: int, bedtime_shift: int) -> np.ndarray:
    """Integer counts per minute: active by day, quiet (never still for 90 min) at night."""
    rng = np.random.default_rng(seed)
    minute_of_day = (np.arange(days * DAY) + 9 * 60 + bedtime_shift) % DAY
    awake = (minute_of_day >= 7 * 60) & (minute_of_day < 23 * 60)
    return np.where(awake, rng.gamma(2.0, 300.0, days * DAY), rng.poisson(1.5, days * DAY)).round()


def split_into_epochs(minutes: np.ndarray, epoch: int) -> np.ndarray:
    """Whole counts spread over the epochs of each minute so that they sum back exactly."""
    per_minute = 60 // epoch
    base = np.floor_divide(minutes, per_minute)
    epochs = np.repeat(base, per_minute).reshape(-1, per_minute)
    epochs[:, 0] += minutes - base * per_minute
    return epochs.ravel()


def metrics_of(values: np.ndarray, epoch: int, timezone: str = "UTC") -> tuple[pd.Series, ActigraphyMetrics]:
    raw = RawRecording(start=START, timezone=timezone, epoch_seconds=epoch, values=values)
    pre = preprocess(raw, settings=SETTINGS)
    return pre.minutes, actigraphy_metrics(pre.minutes)


@FAST
@given(
    seed=st.integers(0, 2**16),
    epoch=st.sampled_from([s for s in SUPPORTED_EPOCH_SECONDS if s < 60]),
    shift=st.integers(-120, 120),
)
def test_every_epoch_gives_the_same_minutes_and_metrics(seed: int, epoch: int, shift: int) -> None:
    minutes = rest_activity_minutes(seed, 3, shift)
    reference_minutes, reference = metrics_of(minutes, 60)
    series, metrics = metrics_of(split_into_epochs(minutes, epoch), epoch)
    pd.testing.assert_series_equal(series, reference_minutes)
    assert metrics == reference


def _clock_minutes(clock: str | None) -> int | None:
    return None if clock is None else int(clock[:2]) * 60 + int(clock[3:])


@FAST
@given(seed=st.integers(0, 2**16), offset_hours=st.integers(-3, 3).filter(bool))
def test_another_zone_moves_clock_values_by_the_offset_only(seed: int, offset_hours: int) -> None:
    minutes = rest_activity_minutes(seed, 4, 0)
    _, utc = metrics_of(minutes, 60)
    # Etc/GMT-3 is UTC+3 (POSIX sign), a fixed offset without DST.
    zone = f"Etc/GMT{-offset_hours:+d}"
    _, shifted = metrics_of(minutes, 60, zone)
    for name in ("interdaily_stability", "intradaily_variability", "relative_amplitude", "l5", "m10"):
        # Equal up to the order of floating-point sums over relabelled hours.
        assert getattr(shifted, name) == pytest.approx(getattr(utc, name), rel=1e-12), name
    for name in ("l5_onset", "m10_onset"):
        tie = f"{name[:-6].upper()} onset ties"
        if any(note.startswith(tie) for note in utc.notes + shifted.notes):
            # Equally quiet windows: the earliest from local midnight is reported, which depends on the clock.
            continue
        before, after = _clock_minutes(getattr(utc, name)), _clock_minutes(getattr(shifted, name))
        assert before is not None and after is not None
        assert (after - before) % DAY == (60 * offset_hours) % DAY, name
    # The same sleep periods at the same instants, shown on the other clock.
    periods = {
        n.sleep_onset.astimezone(UTC): n
        for n in utc.nights
        if n.sleep_onset is not None and n.sleep_offset is not None
    }
    common = 0
    for night in shifted.nights:
        if night.sleep_onset is None or night.sleep_offset is None:
            continue
        assert night.sleep_onset.utcoffset() == timedelta(hours=offset_hours)
        match = periods.get(night.sleep_onset.astimezone(UTC))
        if match is None:
            continue
        common += 1
        assert night.sleep_offset.astimezone(UTC) == match.sleep_offset.astimezone(UTC)  # type: ignore[union-attr]
        assert (night.total_sleep_minutes, night.wake_after_sleep_onset_minutes, night.awakenings) == (
            match.total_sleep_minutes,
            match.wake_after_sleep_onset_minutes,
            match.awakenings,
        )
    assert common >= 2


@st.composite
def messy_recordings(draw: st.DrawFn) -> np.ndarray:
    """Worn stretches, off-wrist zero stretches with odd 1-count blips, and null gaps, in random order."""
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    pieces = []
    for _ in range(draw(st.integers(2, 6))):
        kind = draw(st.sampled_from(["worn", "worn", "off", "gap"]))
        length = draw(st.integers(30, 2 * DAY))
        if kind == "worn":
            pieces.append(rest_activity_minutes(int(rng.integers(2**16)), 1, int(rng.integers(DAY)))[:length])
        elif kind == "off":
            off = np.zeros(length)
            off[rng.integers(0, length, size=max(length // 300, 1))] = 1.0
            pieces.append(off)
        else:
            pieces.append(np.full(min(length, 240), np.nan))
    values = np.concatenate(
        [rest_activity_minutes(seed, 1, 0), *pieces, rest_activity_minutes(seed + 1, 1, 0)]
    )
    return values


@FAST
@given(values=messy_recordings(), algorithm=st.sampled_from(["choi", "troiano", "none"]))
def test_no_sleep_period_spans_nonwear_or_a_day_and_minutes_add_up(
    values: np.ndarray, algorithm: str
) -> None:
    raw = RawRecording(start=START, timezone="America/New_York", epoch_seconds=60, values=values)
    pre = preprocess(raw, settings=SETTINGS.replace(max_missing_fraction=1.0))
    metrics = actigraphy_metrics(pre.minutes, nonwear_algorithm=algorithm)  # type: ignore[arg-type]
    assert_nights_respect_nonwear(metrics, pre.minutes)
    assert sum(day.total_minutes for day in metrics.days) == pre.quality.total_minutes
