"""Classical actigraphy metrics against hand-computable signals and the published formulas.

The independent references below compute each formula directly (UTC-hour resampling, brute-force
circular windows) instead of reusing `pat_runner.actigraphy.metrics` helpers.
"""

from __future__ import annotations

from datetime import UTC, date, time

import numpy as np
import pandas as pd
import pytest

from pat_runner.actigraphy.metrics import ONLY_COUNTS, actigraphy_metrics
from pat_runner.actigraphy.wear import troiano_nonwear
from tests.factories import DAY, minutes_series, rest_activity_series


def clock_pattern(index: pd.DatetimeIndex, by_local_minute: np.ndarray) -> np.ndarray:
    return by_local_minute[index.hour * 60 + index.minute]


def reference_is_iv(series: pd.Series) -> tuple[float, float]:
    """Witting 1990 / Van Someren 1999 on hourly means (whole-hour offsets, no gaps)."""
    hourly = series.tz_convert("UTC").resample("1h").mean().dropna()
    local_hour = hourly.index.tz_convert(series.index.tz).hour
    x = hourly.to_numpy()
    n = x.size
    grand = x.mean()
    profile = pd.Series(x).groupby(np.asarray(local_hour)).mean().to_numpy()
    interdaily = n * ((profile - grand) ** 2).sum() / (profile.size * ((x - grand) ** 2).sum())
    intradaily = n * (np.diff(x) ** 2).sum() / ((n - 1) * ((x - grand) ** 2).sum())
    return float(interdaily), float(intradaily)


def reference_lx(series: pd.Series, hours: int, lowest: bool) -> tuple[float, str]:
    """Brute force over the 1,440 circular onsets of the average local-clock day."""
    minute_of_day = series.index.hour * 60 + series.index.minute
    profile = series.groupby(np.asarray(minute_of_day)).mean().reindex(range(DAY)).to_numpy()
    width = hours * 60
    means = [profile[(start + np.arange(width)) % DAY].mean() for start in range(DAY)]
    best = int(np.argmin(means) if lowest else np.argmax(means))
    return float(means[best]), f"{best // 60:02d}:{best % 60:02d}"


def test_perfect_square_wave_has_is_one() -> None:
    by_minute = np.where((np.arange(DAY) >= 8 * 60) & (np.arange(DAY) < 20 * 60), 500.0, 0.0)
    series = minutes_series(np.zeros(7 * DAY))
    series[:] = clock_pattern(series.index, by_minute)
    metrics = actigraphy_metrics(series)
    assert metrics.interdaily_stability == pytest.approx(1.0)
    # Two jumps of 500 per day over 168 hours whose mean is 250: IV = 168·14·500² / (167·168·250²).
    assert metrics.intradaily_variability == pytest.approx(168 * 14 * 500**2 / (167 * 168 * 250**2))
    assert metrics.l5 == 0.0 and metrics.m10 == 500.0 and metrics.relative_amplitude == 1.0
    # Twelve equally active hours hold 3 possible M10 onsets: the earliest is reported, with a note.
    assert metrics.m10_onset == "08:00"
    assert any("M10 onset ties" in note for note in metrics.notes)


def test_constant_signal_has_undefined_is_and_iv() -> None:
    metrics = actigraphy_metrics(minutes_series(np.full(3 * DAY, 40.0)))
    assert metrics.interdaily_stability is None and metrics.intradaily_variability is None
    assert "no variance" in metrics.reasons["interdaily_stability"]
    assert "no variance" in metrics.reasons["intradaily_variability"]
    assert metrics.relative_amplitude == 0.0
    silent = actigraphy_metrics(minutes_series(np.zeros(3 * DAY)))
    assert silent.relative_amplitude is None and "zero" in silent.reasons["relative_amplitude"]


def test_shifted_pattern_moves_onsets_by_the_shift() -> None:
    base = rest_activity_series(7 * DAY, seed=3)
    shifted = pd.Series(np.roll(base.to_numpy(), 90), index=base.index)
    first, second = actigraphy_metrics(base), actigraphy_metrics(shifted)

    def minutes(clock: str | None) -> int:
        assert clock is not None
        hours, mins = clock.split(":")
        return int(hours) * 60 + int(mins)

    assert (minutes(second.l5_onset) - minutes(first.l5_onset)) % DAY == 90
    assert (minutes(second.m10_onset) - minutes(first.m10_onset)) % DAY == 90
    assert second.l5 == pytest.approx(first.l5) and second.m10 == pytest.approx(first.m10)


@pytest.mark.parametrize(
    ("start", "tz"),
    [
        ("2024-01-01 00:00", "UTC"),
        ("2024-03-06 09:30", "America/New_York"),
        ("2024-10-24 00:00", "Europe/Paris"),
    ],
    ids=["utc", "us-spring-forward-week", "eu-fall-back-week"],
)
def test_rhythm_metrics_match_the_published_formulas(start: str, tz: str) -> None:
    series = rest_activity_series(7 * DAY, seed=11, start=start, tz=tz)
    metrics = actigraphy_metrics(series)
    interdaily, intradaily = reference_is_iv(series)
    assert metrics.interdaily_stability == pytest.approx(interdaily, rel=1e-12)
    assert metrics.intradaily_variability == pytest.approx(intradaily, rel=1e-12)
    l5, l5_onset = reference_lx(series, 5, lowest=True)
    m10, m10_onset = reference_lx(series, 10, lowest=False)
    assert (metrics.l5, metrics.l5_onset) == (pytest.approx(l5, rel=1e-12), l5_onset)
    assert (metrics.m10, metrics.m10_onset) == (pytest.approx(m10, rel=1e-12), m10_onset)
    assert metrics.relative_amplitude == pytest.approx((m10 - l5) / (m10 + l5), rel=1e-12)


def test_dst_week_uses_the_local_clock() -> None:
    # 10,080 elapsed minutes across the US spring-forward (2024-03-10): activity only 09:00–19:00 local.
    series = minutes_series(np.zeros(10_080), "2024-03-06 00:00", "America/New_York")
    hour = series.index.hour
    series[:] = np.where((hour >= 9) & (hour < 19), 800.0, 0.0)
    metrics = actigraphy_metrics(series)
    assert metrics.m10_onset == "09:00" and metrics.m10 == 800.0
    assert metrics.interdaily_stability == pytest.approx(1.0)
    dst_day = next(day for day in metrics.days if day.date == date(2024, 3, 10))
    assert dst_day.observed_minutes == 1380
    assert (dst_day.end.astimezone(UTC) - dst_day.start.astimezone(UTC)).total_seconds() == 23 * 3600
    dst_night = next(night for night in metrics.nights if night.night_of == date(2024, 3, 9))
    assert dst_night.window_start.time() == time(12) and dst_night.window_end.time() == time(12)
    assert dst_night.observed_minutes == 1380


def test_too_little_data_gives_null_with_reasons() -> None:
    short = actigraphy_metrics(rest_activity_series(DAY, seed=1).iloc[:1200])
    assert short.interdaily_stability is None and short.l5 is None and short.intradaily_variability is None
    assert (
        "hours" in short.reasons["interdaily_stability"]
        and "hours" in short.reasons["intradaily_variability"]
    )
    one_day = actigraphy_metrics(rest_activity_series(DAY, seed=1))
    assert one_day.intradaily_variability is not None and one_day.interdaily_stability is None


def test_gaps_skip_hours_and_unobserved_clock_minutes_null_l5() -> None:
    series = rest_activity_series(4 * DAY, seed=5)
    series.iloc[DAY + 600 : DAY + 700] = np.nan
    metrics = actigraphy_metrics(series)
    assert metrics.interdaily_stability is not None and metrics.l5 is not None
    daily_gap = series.copy()
    daily_gap[(daily_gap.index.hour == 3)] = np.nan
    gapped = actigraphy_metrics(daily_gap)
    assert gapped.l5 is None and "never observed" in gapped.reasons["l5"]


def test_intensity_minutes_follow_troiano_cut_points() -> None:
    values = np.zeros(DAY)
    # 700 minutes of wear with the boundary values of each band, the rest of the day not worn.
    boundaries = [99, 100, 2019, 2020, 5998, 5999]
    values[:600] = np.repeat(boundaries, 100)
    values[600:700] = 150
    metrics = actigraphy_metrics(minutes_series(np.concatenate([values, values])))
    day = metrics.days[0]
    assert day.wear_minutes == 700 and day.valid
    assert (day.sedentary_minutes, day.light_minutes, day.moderate_minutes, day.vigorous_minutes) == (
        100,
        300,
        200,
        100,
    )
    assert metrics.valid_days == 2


def test_valid_day_needs_ten_hours_of_wear() -> None:
    values = np.zeros(DAY)
    values[:599] = 500
    day = actigraphy_metrics(minutes_series(values)).days[0]
    assert not day.valid and day.sedentary_minutes is None and "600" in (day.reason or "")


def test_troiano_nonwear_rule() -> None:
    sixty_zeros = np.r_[np.full(5, 500.0), np.zeros(60), np.full(5, 500.0)]
    assert troiano_nonwear(sixty_zeros).sum() == 60
    assert troiano_nonwear(np.r_[500.0, np.zeros(59), 500.0]).sum() == 0
    interrupted = np.r_[np.zeros(40), [50.0, 80.0], np.zeros(30), [500.0]]
    assert troiano_nonwear(interrupted).sum() == 72
    broken = np.r_[np.zeros(40), [50.0, 80.0, 20.0], np.zeros(30), [500.0]]
    assert troiano_nonwear(broken).sum() == 0


def test_night_summary_on_a_constructed_night() -> None:
    # Awake at 1000 counts/min, asleep 23:00–07:00 with a 4-minute movement at 03:00. A worn wrist is
    # never still for 90 min (Choi non-wear): one count every 20 minutes, far too little to wake.
    series = minutes_series(np.zeros(3 * DAY), "2024-05-01 00:00", "Europe/Berlin")
    hour, minute = series.index.hour, series.index.minute
    asleep = (hour >= 23) | (hour < 7)
    movement = (hour == 3) & (minute < 4)
    still = np.where(minute % 20 == 0, 1.0, 0.0)
    series[:] = np.where(asleep & ~movement, still, 1000.0)
    night = next(n for n in actigraphy_metrics(series).nights if n.night_of == date(2024, 5, 1))
    # Cole–Kripke with A = 10: the lag weights keep 23:00–23:03 and 03:04–03:07 awake (D ≥ 1.06), the
    # two lead weights wake 02:59 and 06:59 (D = 0.74 + 0.67). So the period is 23:04–06:59 (475 min)
    # with one 9-minute awakening, 02:59–03:07.
    assert night.sleep_onset is not None and night.sleep_onset.strftime("%H:%M") == "23:04"
    assert night.sleep_offset is not None and night.sleep_offset.strftime("%H:%M") == "06:59"
    assert night.wake_after_sleep_onset_minutes == 9
    assert night.awakenings == 1
    assert night.total_sleep_minutes == 475 - 9
    assert night.sleep_efficiency_percent == pytest.approx(round(100 * 466 / 475, 2))
    with_gap = series.copy()
    with_gap[(hour == 1) & (series.index.day == 2)] = np.nan  # an hour off-wrist mid-sleep
    gap_night = next(n for n in actigraphy_metrics(with_gap).nights if n.night_of == date(2024, 5, 1))
    assert (gap_night.sleep_onset, gap_night.sleep_offset) == (night.sleep_onset, night.sleep_offset)
    assert gap_night.total_sleep_minutes == 466 - 60 and gap_night.wake_after_sleep_onset_minutes == 9
    assert gap_night.sleep_efficiency_percent == pytest.approx(round(100 * 406 / 415, 2))
    partial = actigraphy_metrics(series).nights[0]
    assert partial.total_sleep_minutes is None and "50.0% of the night window" in (partial.reason or "")
    assert partial.coverage_percent == 50.0
    assert partial.observed_minutes + partial.missing_minutes == partial.window_minutes == DAY


def test_other_units_get_no_count_based_metrics() -> None:
    metrics = actigraphy_metrics(rest_activity_series(3 * DAY, seed=2), unit="steps")
    assert metrics.nights == [] and metrics.reasons["nights"] == ONLY_COUNTS
    assert all(day.sedentary_minutes is None and day.reason == ONLY_COUNTS for day in metrics.days)
    assert metrics.interdaily_stability is not None


def test_result_serialises_with_offsets_and_rejects_naive_index() -> None:
    payload = actigraphy_metrics(rest_activity_series(3 * DAY, seed=4, tz="Asia/Kolkata")).model_dump(
        mode="json"
    )
    assert payload["days"][0]["start"].endswith("+05:30")
    with pytest.raises(ValueError, match="timezone-aware"):
        actigraphy_metrics(pd.Series([1.0], index=pd.DatetimeIndex(["2024-01-01"])))
