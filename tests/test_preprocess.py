"""Preprocessing: epochs → UTC minute grid → missing/non-wear → week windows → standardization."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pytest

from pat_runner.actigraphy.preprocess import (
    PIPELINE_VERSION,
    SUPPORTED_EPOCH_SECONDS,
    WEEK_MINUTES,
    QualityReport,
    RawRecording,
    preprocess,
)
from pat_runner.errors import InvalidInput
from pat_runner.settings import Settings
from tests.factories import DAY, NEW_YORK, make_settings, raw_recording, split_into_epochs

BERLIN = "Europe/Berlin"


def settings(**overrides: object) -> Settings:
    return make_settings(
        **{
            "window_stride_minutes": WEEK_MINUTES,
            "min_recording_minutes": DAY,
            "max_recording_minutes": 8 * WEEK_MINUTES,
            "max_missing_fraction": 0.5,
            "nonwear_zero_run_minutes": DAY,
            **overrides,
        }
    )


def minute_counts(minutes: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.poisson(120, minutes).astype(np.float64) + 1


# --- epochs to minutes ---------------------------------------------------------------------------


@pytest.mark.parametrize("epoch_seconds", SUPPORTED_EPOCH_SECONDS)
def test_each_epoch_length_sums_to_the_same_minutes(epoch_seconds: int) -> None:
    minutes = minute_counts(2 * DAY)
    by_minute = preprocess(raw_recording(minutes), settings=settings())
    by_epoch = preprocess(
        raw_recording(split_into_epochs(minutes, epoch_seconds), epoch_seconds=epoch_seconds),
        settings=settings(),
    )
    np.testing.assert_array_equal(by_epoch.minutes.to_numpy(), minutes)
    assert by_epoch.quality.epoch_seconds == epoch_seconds
    assert by_epoch.quality.total_minutes == 2 * DAY
    assert by_epoch.canonical_bytes() == by_minute.canonical_bytes()
    np.testing.assert_array_equal(by_epoch.windows, by_minute.windows)


def test_a_minute_with_any_null_epoch_is_missing_and_others_are_not() -> None:
    epochs = split_into_epochs(minute_counts(DAY), 15).tolist()
    epochs[4 * 10 + 2] = None  # one epoch of minute 10
    epochs[4 * 20 : 4 * 25] = [None] * 20  # minutes 20-24 entirely
    pre = preprocess(raw_recording(epochs, epoch_seconds=15), settings=settings())
    missing = np.flatnonzero(np.isnan(pre.minutes.to_numpy()))
    np.testing.assert_array_equal(missing, [10, 20, 21, 22, 23, 24])
    assert pre.quality.missing_minutes == 6
    assert pre.quality.longest_missing_run_minutes == 5
    assert pre.quality.missing_fraction == pytest.approx(6 / DAY)


def test_missing_runs_are_reported_and_zero_after_standardization() -> None:
    values: list[float | None] = list(minute_counts(3 * DAY))
    values[100:400] = [None] * 300
    values[2000:2010] = [None] * 10
    pre = preprocess(raw_recording(values), settings=settings())
    assert pre.quality.missing_minutes == 310
    assert pre.quality.longest_missing_run_minutes == 300
    assert np.all(pre.windows[0, 100:400] == 0)
    assert np.all(pre.windows[0, 2000:2010] == 0)
    assert pre.minutes.iloc[100:400].isna().all()


def test_a_start_inside_a_minute_leaves_that_minute_and_the_last_incomplete_missing() -> None:
    minutes = minute_counts(DAY)
    epochs = split_into_epochs(minutes, 15)
    start = datetime(2024, 3, 4, 0, 0, 30, tzinfo=ZoneInfo(NEW_YORK))
    pre = preprocess(raw_recording(epochs, start=start, epoch_seconds=15), settings=settings())
    assert pre.quality.start == datetime(2024, 3, 4, 5, 0, tzinfo=UTC)
    assert pre.quality.total_minutes == DAY + 1
    values = pre.minutes.to_numpy()
    assert np.isnan(values[0]) and np.isnan(values[-1])
    # Minute k of the grid holds the second half of input minute k-1 and the first half of minute k.
    expected = epochs.reshape(-1, 2)[1:-1].reshape(-1, 4).sum(axis=1)
    np.testing.assert_array_equal(values[1:-1], expected)
    assert not any("epoch boundary" in warning for warning in pre.warnings)


def test_a_start_off_the_epoch_grid_is_aligned_with_a_warning() -> None:
    start = datetime(2024, 3, 4, 5, 0, 7, tzinfo=UTC)
    pre = preprocess(
        raw_recording(split_into_epochs(minute_counts(DAY), 15), start=start, epoch_seconds=15),
        settings=settings(),
    )
    assert pre.quality.start == datetime(2024, 3, 4, 5, 0, tzinfo=UTC)
    assert pre.quality.missing_minutes == 0
    assert any("not on a 15-s epoch boundary" in warning for warning in pre.warnings)


# --- time zones ----------------------------------------------------------------------------------


def local_day_lengths(pre_minutes: pd.Series) -> dict[str, int]:
    return {str(day): int(count) for day, count in pre_minutes.groupby(pre_minutes.index.date).size().items()}


@pytest.mark.parametrize(
    ("zone", "day", "last_before", "first_after", "day_length"),
    [
        (NEW_YORK, datetime(2024, 3, 10), "2024-03-10T01:59:00-05:00", "2024-03-10T03:00:00-04:00", 1_380),
        (NEW_YORK, datetime(2024, 11, 3), "2024-11-03T01:59:00-04:00", "2024-11-03T01:00:00-05:00", 1_500),
        (BERLIN, datetime(2024, 3, 31), "2024-03-31T01:59:00+01:00", "2024-03-31T03:00:00+02:00", 1_380),
        (BERLIN, datetime(2024, 10, 27), "2024-10-27T02:59:00+02:00", "2024-10-27T02:00:00+01:00", 1_500),
    ],
)
def test_dst_changes_keep_elapsed_minutes_and_give_the_local_clock(
    zone: str, day: datetime, last_before: str, first_after: str, day_length: int
) -> None:
    start = (day - timedelta(days=1)).replace(tzinfo=ZoneInfo(zone))
    pre = preprocess(raw_recording(minute_counts(3 * DAY), start=start, timezone=zone), settings=settings())

    assert pre.quality.total_minutes == 3 * DAY
    assert pre.quality.end - pre.quality.start == timedelta(minutes=3 * DAY)
    index = pre.minutes.index
    assert str(index.tz) == zone
    assert (np.diff(index.asi8) == np.diff(index[:2].asi8)[0]).all()  # one elapsed minute apart, always
    lengths = local_day_lengths(pre.minutes)
    assert lengths[str(day.date())] == day_length
    assert lengths[str((day - timedelta(days=1)).date())] == DAY
    before = pd.Timestamp(last_before)
    position = int(np.flatnonzero(index == before)[0])
    assert index[position].isoformat() == last_before
    assert index[position + 1].isoformat() == first_after


def test_week_is_10080_elapsed_minutes_across_a_dst_change() -> None:
    start = datetime(2024, 3, 7, tzinfo=ZoneInfo(NEW_YORK))
    pre = preprocess(raw_recording(minute_counts(WEEK_MINUTES), start=start), settings=settings())
    assert pre.quality.windows == 1 and pre.quality.padded_minutes == 0
    assert pre.window_starts == [datetime(2024, 3, 7, 5, 0, tzinfo=UTC)]
    # 10,080 elapsed minutes from 00:00 EST end at 01:00 EDT: the local clock gained the skipped hour.
    assert pre.minutes.index[-1].isoformat() == "2024-03-14T00:59:00-04:00"


def test_a_utc_start_is_fine_and_an_inconsistent_offset_is_warned() -> None:
    values = minute_counts(DAY)
    utc_start = preprocess(
        raw_recording(values, start=datetime(2024, 7, 4, 4, tzinfo=UTC)), settings=settings()
    )
    assert not any("offset" in warning for warning in utc_start.warnings)
    assert utc_start.minutes.index[0].isoformat() == "2024-07-04T00:00:00-04:00"
    wrong = datetime.fromisoformat("2024-07-04T00:00:00-05:00")
    warned = preprocess(raw_recording(values, start=wrong), settings=settings())
    assert any("-05:00 differs from America/New_York's offset -04:00" in w for w in warned.warnings)
    assert warned.quality.start == datetime(2024, 7, 4, 5, tzinfo=UTC)


# --- windows -------------------------------------------------------------------------------------


def test_three_weeks_give_three_consecutive_week_windows() -> None:
    minutes = minute_counts(3 * WEEK_MINUTES)
    pre = preprocess(raw_recording(minutes), settings=settings())
    assert pre.windows.shape == (3, WEEK_MINUTES) and pre.windows.dtype == np.float32
    start = pre.quality.start
    assert pre.window_starts == [start + timedelta(minutes=k * WEEK_MINUTES) for k in range(3)]
    assert pre.window_observed_fraction == [1.0, 1.0, 1.0]
    standardized = (minutes - minutes.mean()) / minutes.std()
    np.testing.assert_allclose(pre.windows.ravel(), standardized, rtol=1e-5, atol=1e-5)
    assert pre.quality.windows == 3 and pre.quality.padded_minutes == 0 and pre.quality.dropped_minutes == 0


def test_three_weeks_with_a_daily_stride() -> None:
    pre = preprocess(
        raw_recording(minute_counts(3 * WEEK_MINUTES)), settings=settings(window_stride_minutes=DAY)
    )
    assert pre.windows.shape == (15, WEEK_MINUTES)
    np.testing.assert_array_equal(pre.windows[1, : WEEK_MINUTES - DAY], pre.windows[0, DAY:])
    assert pre.quality.window_stride_minutes == DAY


def test_a_long_tail_gets_a_window_aligned_to_the_end() -> None:
    minutes = minute_counts(3 * WEEK_MINUTES + 2_000)
    pre = preprocess(raw_recording(minutes), settings=settings())
    assert pre.quality.windows == 4 and pre.quality.dropped_minutes == 0
    assert pre.window_starts[-1] == pre.quality.end - timedelta(minutes=WEEK_MINUTES)
    standardized = (minutes - minutes.mean()) / minutes.std()
    np.testing.assert_allclose(pre.windows[-1], standardized[-WEEK_MINUTES:], rtol=1e-5, atol=1e-5)


def test_a_short_tail_is_dropped_with_a_warning() -> None:
    pre = preprocess(raw_recording(minute_counts(3 * WEEK_MINUTES + 100)), settings=settings())
    assert pre.quality.windows == 3 and pre.quality.dropped_minutes == 100
    assert len(pre.minutes) == 3 * WEEK_MINUTES + 100
    assert any("last 100 minutes" in warning for warning in pre.warnings)


def test_a_short_recording_is_padded_and_flagged() -> None:
    pre = preprocess(raw_recording(minute_counts(2 * DAY)), settings=settings())
    assert pre.windows.shape == (1, WEEK_MINUTES)
    assert pre.quality.padded_minutes == WEEK_MINUTES - 2 * DAY
    assert np.all(pre.windows[0, 2 * DAY :] == 0)
    assert pre.window_observed_fraction == [pytest.approx(2 * DAY / WEEK_MINUTES)]
    assert any("padding" in warning for warning in pre.warnings)
    assert not any("observed minutes" in warning for warning in pre.warnings)


def test_a_window_mostly_missing_is_warned_about() -> None:
    values: list[float | None] = list(minute_counts(2 * WEEK_MINUTES))
    values[WEEK_MINUTES : WEEK_MINUTES + 6_000] = [None] * 6_000
    pre = preprocess(raw_recording(values), settings=settings())
    assert pre.window_observed_fraction[1] == pytest.approx(1 - 6_000 / WEEK_MINUTES)
    assert any(warning.startswith("window 1 has only 40%") for warning in pre.warnings)


# --- non-wear ------------------------------------------------------------------------------------


def test_a_day_of_zero_counts_is_non_wear_and_shorter_zero_runs_are_not() -> None:
    values = minute_counts(4 * DAY)
    values[100 : 100 + DAY] = 0
    values[3_000 : 3_000 + DAY - 1] = 0
    pre = preprocess(raw_recording(values), settings=settings())
    assert pre.quality.nonwear_minutes == DAY
    assert pre.quality.missing_minutes == DAY
    assert pre.minutes.iloc[100 : 100 + DAY].isna().all()
    assert (pre.minutes.iloc[3_000 : 3_000 + DAY - 1] == 0).all()
    assert any("non-wear" in warning for warning in pre.warnings)

    disabled = preprocess(raw_recording(values), settings=settings(nonwear_zero_run_minutes=0))
    assert disabled.quality.missing_minutes == 0
    assert disabled.canonical_bytes() != pre.canonical_bytes()


# --- standardization -----------------------------------------------------------------------------


def test_per_recording_zscore_uses_observed_minutes_only() -> None:
    values = minute_counts(2 * DAY)
    with_gap: list[float | None] = list(values)
    with_gap[:60] = [None] * 60
    pre = preprocess(raw_recording(with_gap), settings=settings())
    observed = values[60:]
    expected = (observed - observed.mean()) / observed.std()
    np.testing.assert_allclose(pre.windows[0, 60 : 2 * DAY], expected, rtol=1e-5, atol=1e-5)
    assert pre.quality.standardization == "per_recording"


def test_a_constant_recording_standardizes_to_zeros() -> None:
    pre = preprocess(raw_recording(np.full(DAY, 50.0)), settings=settings())
    assert np.all(pre.windows == 0)
    assert np.isfinite(pre.windows).all()
    assert any("same count" in warning for warning in pre.warnings)


def test_cohort_scaler_is_applied_per_minute_of_window() -> None:
    values = minute_counts(WEEK_MINUTES + 3 * DAY)
    mean = np.linspace(50, 150, WEEK_MINUTES)
    scale = np.linspace(10, 20, WEEK_MINUTES)
    pre = preprocess(raw_recording(values), scaler=(mean, scale), settings=settings())
    assert pre.quality.standardization == "cohort_scaler"
    np.testing.assert_allclose(pre.windows[0], (values[:WEEK_MINUTES] - mean) / scale, rtol=1e-5)
    np.testing.assert_allclose(pre.windows[1], (values[-WEEK_MINUTES:] - mean) / scale, rtol=1e-5)


def test_cohort_scaler_sets_padding_and_gaps_to_zero() -> None:
    values: list[float | None] = list(minute_counts(2 * DAY))
    values[10:20] = [None] * 10
    scaler = (np.full(WEEK_MINUTES, 100.0), np.full(WEEK_MINUTES, 5.0))
    pre = preprocess(raw_recording(values), scaler=scaler, settings=settings())
    assert np.all(pre.windows[0, 10:20] == 0) and np.all(pre.windows[0, 2 * DAY :] == 0)


def test_a_scaler_of_the_wrong_length_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="shape"):
        preprocess(
            raw_recording(minute_counts(DAY)), scaler=(np.zeros(100), np.ones(100)), settings=settings()
        )


# --- canonical bytes and the report --------------------------------------------------------------


def test_canonical_bytes_change_with_what_changes_the_result() -> None:
    values = minute_counts(DAY)
    base = preprocess(raw_recording(values), settings=settings())
    assert (
        base.canonical_bytes()
        == preprocess(raw_recording(values.tolist()), settings=settings()).canonical_bytes()
    )
    changed_value = values.copy()
    changed_value[7] += 1
    later = datetime(2024, 3, 4, 0, 1, tzinfo=ZoneInfo(NEW_YORK))
    variants = [
        preprocess(raw_recording(changed_value), settings=settings()),
        preprocess(raw_recording(values, start=later), settings=settings()),
        preprocess(
            raw_recording(values, timezone="America/Chicago", start=base.quality.start), settings=settings()
        ),
        preprocess(raw_recording(values), settings=settings(window_stride_minutes=DAY)),
    ]
    assert len({base.canonical_bytes(), *(variant.canonical_bytes() for variant in variants)}) == 5


def test_the_minutes_series_and_quality_report_contract() -> None:
    pre = preprocess(raw_recording(minute_counts(DAY)), settings=settings())
    assert isinstance(pre.minutes.index, pd.DatetimeIndex)
    assert pre.minutes.dtype == np.float64
    assert pre.minutes.index[0] == pd.Timestamp("2024-03-04T00:00:00-05:00")
    report = pre.quality.model_dump(mode="json")
    assert report["start"] == "2024-03-04T05:00:00Z" and report["end"] == "2024-03-05T05:00:00Z"
    schema = QualityReport.model_json_schema()
    assert schema["example"] and all("description" in field for field in schema["properties"].values())
    assert PIPELINE_VERSION


# --- 422 cases -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            raw_recording(minute_counts(DAY - 1)),
            "the recording is 1,439 minutes, shorter than the minimum of 1,440",
        ),
        (
            raw_recording(minute_counts(8 * WEEK_MINUTES + 1)),
            "the recording is 80,641 minutes, longer than the maximum of 80,640",
        ),
        (
            raw_recording([*minute_counts(DAY).tolist(), *[None] * (DAY + 10)]),
            r"50.\d% of the 2,890 minutes are missing, more than the maximum of 50%; "
            r"the longest gap is 1,450 minutes from minute 1,440 \(2024-03-05T05:00Z\)",
        ),
        (raw_recording(minute_counts(DAY), timezone="Mars/Olympus_Mons"), "timezone: not a known IANA"),
        (raw_recording(minute_counts(DAY), timezone="../../etc/passwd"), "timezone: not a known IANA"),
        (
            RawRecording(start=datetime(2024, 3, 4), timezone=NEW_YORK, epoch_seconds=60, values=[1.0] * DAY),
            "start: 2024-03-04T00:00:00 has no UTC offset",
        ),
        (raw_recording([*[1.0] * 1_234, -3.0, *[1.0] * DAY]), r"values\[1234\]: negative"),
        (raw_recording([*[1.0] * 99, float("inf"), *[1.0] * DAY]), r"values\[99\]: infinite"),
        (raw_recording(minute_counts(DAY), epoch_seconds=7), "epoch_seconds: 7 s does not divide a minute"),
        (raw_recording(minute_counts(DAY), epoch_seconds=45), "epoch_seconds: 45 s does not divide a minute"),
        (raw_recording(minute_counts(DAY), epoch_seconds=120), "epochs of 120 s are longer than a minute"),
        (raw_recording([]), "values: the recording has no epochs"),
        (raw_recording(["a", 1.0]), "values: every value must be a number or null"),  # type: ignore[list-item]
        (raw_recording(np.ones((DAY, 2))), r"values: must be a flat list"),
    ],
    ids=[
        "too-short",
        "too-long",
        "too-much-missing",
        "unknown-zone",
        "zone-path",
        "naive-start",
        "negative",
        "infinite",
        "epoch-7",
        "epoch-45",
        "epoch-120",
        "empty",
        "not-numbers",
        "two-dimensional",
    ],
)
def test_invalid_recordings_are_422_saying_what_and_where(raw: RawRecording, message: str) -> None:
    with pytest.raises(InvalidInput, match=message) as caught:
        preprocess(raw, settings=settings())
    assert caught.value.status == 422 and caught.value.code == "invalid_input"


def test_nan_is_missing_not_an_error() -> None:
    values = minute_counts(DAY)
    values[5] = np.nan
    assert preprocess(raw_recording(values), settings=settings()).quality.missing_minutes == 1
