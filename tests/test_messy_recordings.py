"""Messy real recordings (issue 10): non-wear vs sleep, nearly complete nights, device clocks across DST,
stray rows, skipped calendar days, high-rate recordings.

Each test reproduces one defect of the code before the fix on a real file where one is named
(`../shared/data/actigraphy/`) or on the smallest synthetic recording that shows it.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from typing import get_args
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from pat_runner.actigraphy.metrics import ActigraphyMetrics, actigraphy_metrics
from pat_runner.actigraphy.preprocess import Preprocessed, preprocess
from pat_runner.actigraphy.readers import read_recording_file
from pat_runner.actigraphy.sleep import sleep_periods
from pat_runner.actigraphy.wear import NONWEAR_ALGORITHMS, choi_nonwear, nonwear_mask
from pat_runner.errors import InvalidInput
from pat_runner.serving.schemas import Recording
from pat_runner.settings import MAX_RECORDING_MINUTES_CAP, Settings
from scripts.device_files.export_files import SHARED_DATA, agd_bytes

SETTINGS = Settings().replace(redis_url="", cache_keys="", cache_hmac_key="")
DAY = 1440
needs_shared = pytest.mark.skipif(
    not SHARED_DATA.is_dir(), reason=f"real device files not found at {SHARED_DATA} (shared/ checkout absent)"
)


def analyse_file(data: bytes, name: str, timezone: str = "UTC", **options: object) -> ActigraphyMetrics:
    """What `/v1/analyze/file` computes for the metrics: reader → preprocessing → metrics."""
    raw = read_recording_file(
        data,
        name,
        timezone=timezone,
        max_bytes=SETTINGS.max_upload_bytes,
        max_minutes=SETTINGS.max_recording_minutes,
    )
    pre = preprocess(raw, settings=SETTINGS)
    return actigraphy_metrics(pre.minutes, **options)  # type: ignore[arg-type]


def assert_nights_respect_nonwear(metrics: ActigraphyMetrics, series: pd.Series) -> None:
    """No sleep period longer than 24 h, none overlapping non-wear, minutes add up in every night/day."""
    nonwear = nonwear_mask(series.to_numpy(dtype=np.float64), metrics.nonwear_algorithm)
    for night in metrics.nights:
        assert night.observed_minutes + night.missing_minutes == night.window_minutes
        if night.sleep_onset is None or night.sleep_offset is None:
            assert night.reason
            continue
        # In UTC: Python subtracts two datetimes of one zone on the wall clock.
        assert night.sleep_offset.astimezone(UTC) - night.sleep_onset.astimezone(UTC) <= timedelta(
            minutes=DAY
        )
        inside = (series.index >= night.sleep_onset) & (series.index < night.sleep_offset)
        assert not nonwear[inside].any(), night.night_of
    for day in metrics.days:
        assert day.observed_minutes + day.missing_minutes == day.total_minutes


# --- 1. non-wear is not sleep -----------------------------------------------------------------------


def test_choi_rule() -> None:
    worn = np.full(5, 500.0)
    assert choi_nonwear(np.r_[worn, np.zeros(90), worn]).sum() == 90
    assert choi_nonwear(np.r_[worn, np.zeros(89), worn]).sum() == 0
    # A 2-minute artefact with 30 zero minutes on both sides stays inside the non-wear period.
    spike = np.r_[worn, np.zeros(30), [800.0, 20.0], np.zeros(58), worn]
    assert choi_nonwear(spike).sum() == 90
    assert choi_nonwear(np.r_[worn, np.zeros(30), [800.0, 20.0, 5.0], np.zeros(58), worn]).sum() == 0
    # Only 29 zero minutes before it: the spike is wear, and neither zero run reaches 90 minutes.
    assert choi_nonwear(np.r_[worn, np.zeros(29), [800.0, 20.0], np.zeros(89), worn]).sum() == 0
    # A gap (NaN) inside a zero run does not make the device worn.
    assert choi_nonwear(np.r_[worn, np.zeros(50), np.full(50, np.nan), worn]).sum() == 100


def test_settings_offer_exactly_the_nonwear_algorithms() -> None:
    assert set(get_args(Settings.model_fields["nonwear_algorithm"].annotation)) == set(NONWEAR_ALGORITHMS)


def test_sleep_period_never_spans_nonwear_nor_exceeds_a_day() -> None:
    asleep = np.ones(2000, dtype=bool)
    assert sleep_periods(asleep) == []  # 2,000 min is longer than ActiLife's 1,440-min cap
    breaks = np.zeros(2000, dtype=bool)
    breaks[1000:1100] = True
    assert sleep_periods(asleep, breaks=breaks) == [(0, 1000), (1100, 2000)]


@needs_shared
def test_real_recording_device_on_a_table_is_not_sleep() -> None:
    # Nights of 2019-02-13 and 02-15 came out as 1,103 and 1,810 min of sleep at 100 % efficiency.
    path = SHARED_DATA / "TAS1D47140221_2019-04-11_60sec.csv"
    metrics = analyse_file(path.read_bytes(), path.name)
    assert metrics.nonwear_algorithm == "choi"
    nights = {night.night_of: night for night in metrics.nights}
    for day in (date(2019, 2, 13), date(2019, 2, 15)):
        night = nights[day]
        assert night.total_sleep_minutes is None and night.sleep_efficiency_percent is None
        assert night.reason == "most of the night window is non-wear" and night.nonwear_minutes > 720
    scored = [n for n in metrics.nights if n.total_sleep_minutes is not None]
    assert len(scored) >= 8 and all(n.total_sleep_minutes <= DAY for n in scored)
    raw = read_recording_file(
        path.read_bytes(), path.name, timezone="UTC", max_bytes=2**30, max_minutes=10**6
    )
    series = preprocess(raw, settings=SETTINGS).minutes
    assert_nights_respect_nonwear(metrics, series)
    # The days use the same mask as the nights.
    mask = nonwear_mask(series.to_numpy(dtype=np.float64), "choi")
    assert sum(d.nonwear_minutes or 0 for d in metrics.days) == int(mask.sum())


def off_wrist_week() -> pd.Series:
    """A week worn day and night except three days off the wrist with a 1-count blip every 6 hours."""
    index = pd.date_range("2024-05-06", periods=7 * DAY, freq="min", tz="UTC")
    rng = np.random.default_rng(3)
    awake = (index.hour >= 7) & (index.hour < 23)
    values = np.where(awake, rng.gamma(2.0, 300.0, index.size), rng.poisson(1.0, index.size)).round()
    off = slice(2 * DAY, 5 * DAY)
    values[off] = 0.0
    values[off][3 * 60 :: 6 * 60] = 1.0
    return pd.Series(values, index=index)


@pytest.mark.parametrize("algorithm", ["choi", "troiano"])
def test_three_days_off_the_wrist_are_no_night(algorithm: str) -> None:
    # Before: one "night" of 4,319 sleep minutes while the days marked the same minutes as not worn.
    series = off_wrist_week()
    metrics = actigraphy_metrics(series, nonwear_algorithm=algorithm)  # type: ignore[arg-type]
    assert metrics.nonwear_algorithm == algorithm
    assert_nights_respect_nonwear(metrics, series)
    for night in metrics.nights:
        if date(2024, 5, 8) <= night.night_of <= date(2024, 5, 10):
            assert night.total_sleep_minutes is None and "non-wear" in (night.reason or "")
    off_days = [d for d in metrics.days if date(2024, 5, 8) <= d.date <= date(2024, 5, 10)]
    assert all(d.nonwear_minutes == DAY and d.wear_minutes == 0 for d in off_days)
    # The worn nights either side are scored (05-07 ends in non-wear an hour after bedtime).
    scored = {n.night_of for n in metrics.nights if n.total_sleep_minutes is not None}
    assert scored == {date(2024, 5, 6), date(2024, 5, 11)}


# --- sleep-period algorithm choice ---------------------------------------------------------------


def test_actigraph_variant_needs_twelve_wake_minutes() -> None:
    flags = np.array([False] * 20 + [True] * 100 + [False] * 11 + [True] * 100 + [False] * 30)
    assert sleep_periods(flags, "tudor_locke") == []  # 11 wake minutes end it, both halves < 160
    assert sleep_periods(flags, "actigraph") == [(20, 231)]


# --- 3. a nearly complete night is scored ---------------------------------------------------------


@needs_shared
def test_real_night_ending_before_noon_is_scored_like_actilife() -> None:
    # ActiLife 6 scores this GT3X+ night (recording ends at 11:53, before the window's noon); it was
    # "not fully inside the recording" before.
    export = pd.read_csv(SHARED_DATA / "GT3XPlus-RawData-Day01-Sadeh.csv")
    stamps = pd.to_datetime(export["Date"] + " " + export["Time"], format="%m/%d/%Y %I:%M %p")
    lines = ["timestamp,axis1"] + [
        f"{moment:%Y-%m-%dT%H:%M:%S},{count}" for moment, count in zip(stamps, export["Axis1"], strict=True)
    ]
    data = ("\n".join(lines) + "\n").encode()
    expected = pd.read_csv(SHARED_DATA / "GT3XPlus-RawData-Day01-sleep-periods.csv").iloc[0]
    assert expected["period_algorithm"] == "Tudor-Locke Default" and expected["sleep_algorithm"] == "Sadeh"
    # Choi finds 157 still minutes from 00:00 (non-wear by its rule): the night is scored, from 02:37.
    choi = analyse_file(data, "gt3x.csv", "America/Chicago", sleep_method="sadeh")
    choi_night = next(n for n in choi.nights if n.night_of == date(2012, 6, 27))
    assert choi_night.reason is None and choi_night.nonwear_minutes == 157
    assert choi_night.sleep_onset is not None and f"{choi_night.sleep_onset:%H:%M}" == "02:37"
    # ActiLife's sleep scoring applies no wear-time rule: without one the night is ActiLife's, exactly.
    metrics = analyse_file(
        data, "gt3x.csv", "America/Chicago", sleep_method="sadeh", nonwear_algorithm="none"
    )
    night = next(n for n in metrics.nights if n.night_of == date(2012, 6, 27))
    assert night.reason is None
    assert 90 <= night.coverage_percent < 100 and night.missing_minutes == 6
    assert night.sleep_onset is not None and night.sleep_offset is not None
    assert night.sleep_onset.replace(tzinfo=None) == pd.Timestamp(expected["in_bed_time"]).tz_localize(None)
    assert night.sleep_offset.replace(tzinfo=None) == pd.Timestamp(expected["out_bed_time"]).tz_localize(None)
    assert night.total_sleep_minutes == expected["total_sleep_time"] == 442
    assert night.wake_after_sleep_onset_minutes == expected["wake_after_onset"]
    assert night.awakenings == expected["nb_awakenings"]
    assert night.sleep_efficiency_percent == pytest.approx(expected["efficiency"], abs=0.005)


def test_night_coverage_threshold_is_reported_and_configurable() -> None:
    series = off_wrist_week().iloc[: 6 * DAY + 11 * 60]  # ends at 11:00, an hour before noon
    last = actigraphy_metrics(series).nights[-1]
    assert last.night_of == date(2024, 5, 11) and last.coverage_percent == pytest.approx(
        100 * 1380 / DAY, abs=0.01
    )
    assert last.total_sleep_minutes is not None
    strict = actigraphy_metrics(series, min_night_coverage=0.99).nights[-1]
    assert strict.total_sleep_minutes is None and "99%" in (strict.reason or "")


# --- 5. one stray row ------------------------------------------------------------------------------


def tidy_csv(moments: list[datetime], values: np.ndarray) -> bytes:
    lines = ["timestamp,axis1"] + [
        f"{moment:%Y-%m-%dT%H:%M:%S},{value:g}" for moment, value in zip(moments, values, strict=True)
    ]
    return ("\n".join(lines) + "\n").encode()


def test_stray_row_does_not_redefine_the_epoch_and_is_named() -> None:
    # Before: the epoch came from the smallest step (30 s) and the 422 said 99.9 % of minutes were missing.
    start = datetime(2024, 5, 6, 12, 0)
    moments = [start + timedelta(minutes=i) for i in range(2 * DAY)]
    moments.insert(101, start + timedelta(minutes=100, seconds=30))
    data = tidy_csv(moments, np.full(len(moments), 50.0))
    with pytest.raises(InvalidInput, match=r"^line 103: the timestamp is not on the 60-s epoch grid .*1 row"):
        read_recording_file(data, "x.csv", timezone="UTC", max_bytes=2**30, max_minutes=10**6)
    many = list(moments)
    for k in range(7):
        many.insert(300 + 10 * k, start + timedelta(minutes=290 + 9 * k, seconds=15))
    with pytest.raises(InvalidInput, match=r"line 103, line 302, .* and 3 more: .*8 row"):
        read_recording_file(
            tidy_csv(many, np.full(len(many), 50.0)),
            "x.csv",
            timezone="UTC",
            max_bytes=2**30,
            max_minutes=10**6,
        )


# --- 2. naive local clock across spring-forward ---------------------------------------------------


def local_clock_recording(clock_follows_dst: bool, extra_gap_at: int | None = None) -> tuple[bytes, int]:
    """Three nights around 2024-03-10 in New York: awake 07:00–23:00, asleep otherwise, by the wall clock
    of the wearer. The device writes its own clock: one that follows DST jumps 01:59 → 03:00."""
    zone = ZoneInfo("America/New_York")
    first = datetime(2024, 3, 8, 12, 0, tzinfo=zone)
    # Elapsed minutes in UTC (aware datetime arithmetic in a zone would step the wall clock).
    instants = [first.astimezone(UTC) + timedelta(minutes=i) for i in range(3 * DAY)]
    wall = [moment.astimezone(zone) for moment in instants]
    rng = np.random.default_rng(5)
    awake = np.array([7 <= moment.hour < 23 for moment in wall])
    values = np.where(awake, rng.gamma(2.0, 300.0, awake.size), rng.poisson(1.0, awake.size)).round()
    if clock_follows_dst:
        clock = [moment.replace(tzinfo=None) for moment in wall]
    else:
        clock = [first.replace(tzinfo=None) + timedelta(minutes=i) for i in range(3 * DAY)]
    if extra_gap_at is not None:
        del clock[extra_gap_at : extra_gap_at + 60]
        values = np.delete(values, np.s_[extra_gap_at : extra_gap_at + 60])
    return tidy_csv(clock, values), len(clock)


def read_and_prepare(data: bytes, timezone: str) -> tuple[Preprocessed, ActigraphyMetrics]:
    raw = read_recording_file(data, "x.csv", timezone=timezone, max_bytes=2**30, max_minutes=10**6)
    pre = preprocess(raw, settings=SETTINGS)
    return pre, actigraphy_metrics(pre.minutes)


def test_local_clock_that_springs_forward_is_continuous() -> None:
    # Before: 60 invented missing minutes and the night of 03-09 slept 00:00–08:00 instead of 23:00–07:00.
    data, _ = local_clock_recording(clock_follows_dst=True)
    pre, metrics = read_and_prepare(data, "America/New_York")
    assert pre.quality.missing_minutes == 0 and pre.quality.total_minutes == 3 * DAY
    night = next(n for n in metrics.nights if n.night_of == date(2024, 3, 9))
    assert night.sleep_onset is not None and night.sleep_offset is not None
    assert night.sleep_onset.hour == 23 and night.sleep_offset.hour in (6, 7)
    assert night.window_minutes == DAY - 60


def test_agd_whose_clock_springs_forward_is_continuous() -> None:
    # Rows on the device's clock: 01:00–01:59, then 03:00–04:59 (its clock followed the change).
    epochs = list(range(60)) + list(range(120, 240))
    data = agd_bytes(datetime(2024, 3, 10, 1, 0), 60, [5.0] * len(epochs), epoch_indices=epochs)
    raw = read_recording_file(data, "x.agd", timezone="America/New_York", max_bytes=2**30, max_minutes=10**6)
    values = np.asarray(raw.values)
    assert values.size == 180 and not np.isnan(values).any()
    # The same jump away from the transition is an hour of missing data.
    later = agd_bytes(datetime(2024, 3, 11, 1, 0), 60, [5.0] * len(epochs), epoch_indices=epochs)
    raw = read_recording_file(later, "x.agd", timezone="America/New_York", max_bytes=2**30, max_minutes=10**6)
    assert np.isnan(np.asarray(raw.values)).sum() == 60


def test_other_clock_jumps_stay_gaps_and_nothing_is_shifted() -> None:
    # A device on standard time all along: its elapsed clock is already continuous.
    data, _ = local_clock_recording(clock_follows_dst=False)
    pre, _ = read_and_prepare(data, "America/New_York")
    assert pre.quality.missing_minutes == 0
    # An hour of data lost on 03-08 (not at the transition) is an hour missing, not a DST change.
    data, _ = local_clock_recording(clock_follows_dst=True, extra_gap_at=600)
    pre, metrics = read_and_prepare(data, "America/New_York")
    assert pre.quality.missing_minutes == 60 and pre.quality.total_minutes == 3 * DAY
    night = next(n for n in metrics.nights if n.night_of == date(2024, 3, 9))
    assert night.sleep_onset is not None and night.sleep_onset.hour == 23


# --- 6. a day the zone skips ------------------------------------------------------------------------


def wall_clock_rest_activity(zone_name: str, first_local: datetime, minutes: int, seed: int) -> pd.Series:
    """Awake 07:00–23:00 by the wearer's wall clock, asleep otherwise, one value per elapsed minute."""
    zone = ZoneInfo(zone_name)
    start = first_local.replace(tzinfo=zone).astimezone(UTC)
    index = pd.date_range(start, periods=minutes, freq="min").tz_convert(zone_name)
    rng = np.random.default_rng(seed)
    awake = (index.hour >= 7) & (index.hour < 23)
    values = np.where(awake, rng.gamma(2.0, 300.0, minutes), rng.poisson(1.0, minutes)).round()
    return pd.Series(values, index=index)


def test_nights_follow_the_zones_real_calendar() -> None:
    # Pacific/Apia skipped 2011-12-30. Before: a night dated 12-30 and the night of 12-29 cut to 12 h.
    series = wall_clock_rest_activity("Pacific/Apia", datetime(2011, 12, 26, 12, 0), 6 * DAY, seed=6)
    metrics = actigraphy_metrics(series)
    assert date(2011, 12, 30) not in {n.night_of for n in metrics.nights}
    assert date(2011, 12, 30) not in {d.date for d in metrics.days}
    night = next(n for n in metrics.nights if n.night_of == date(2011, 12, 29))
    assert night.window_minutes == DAY and night.window_end.date() == date(2011, 12, 31)
    assert night.sleep_onset is not None and night.sleep_offset is not None
    assert night.sleep_onset.hour == 23 and night.sleep_offset.date() == date(2011, 12, 31)
    assert night.total_sleep_minutes is not None and night.total_sleep_minutes > 400
    assert_nights_respect_nonwear(metrics, series)


# --- 4. the length limit is in minutes ------------------------------------------------------------


def test_values_cap_follows_minutes_times_epochs_per_minute() -> None:
    week_at_1s = {"start": "2024-05-06T00:00:00Z", "timezone": "UTC", "epoch_seconds": 1}
    # Strictly, from JSON, as the API validates it.
    week = Recording.model_validate_json(json.dumps({**week_at_1s, "values": [0.0] * (7 * DAY * 60)}))
    assert len(week.values) == 7 * DAY * 60
    minute_epochs = {**week_at_1s, "epoch_seconds": 60, "values": [0.0] * (MAX_RECORDING_MINUTES_CAP + 1)}
    with pytest.raises(ValidationError, match=f"more than {MAX_RECORDING_MINUTES_CAP:,} minutes"):
        Recording.model_validate_json(json.dumps(minute_epochs))
