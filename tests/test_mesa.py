"""NSRR/MESA Actiwatch epoch CSVs: generated files in the NSRR column layout."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import pytest

from pat_runner.actigraphy.mesa import looks_like_mesa, read_mesa_csv
from pat_runner.errors import InvalidInput
from scripts.device_files.mesa_files import HEADER, mesa_csv_bytes

START = datetime(2010, 3, 4, 20, 30, 0)
MAX_MINUTES = 80_640


def read(data: bytes, recording_start: str = "2010-03-04", timezone: str = "America/Chicago"):
    return read_mesa_csv(data, recording_start=recording_start, timezone=timezone, max_minutes=MAX_MINUTES)


def test_round_trip_offwrist_and_empty_activity_are_missing() -> None:
    activity = [10, 0, None, 55, 3, 7]
    recording = read(mesa_csv_bytes(START, activity, offwrist=[0, 0, 0, 1, 0, 0]))
    assert looks_like_mesa(HEADER)
    assert recording.epoch_seconds == 30
    assert recording.start == datetime(2010, 3, 4, 20, 30, tzinfo=recording.start.tzinfo)
    assert recording.start.utcoffset() == timedelta(hours=-6)
    np.testing.assert_array_equal(recording.values, [10, 0, np.nan, np.nan, 3, 7])


def test_missing_lines_become_missing_epochs_across_midnight() -> None:
    start = datetime(2010, 3, 4, 23, 59, 0)
    recording = read(mesa_csv_bytes(start, [1, 2, 3, 4], lines=[1, 2, 5, 6]))
    np.testing.assert_array_equal(recording.values, [1, 2, np.nan, np.nan, 3, 4])
    assert recording.start.replace(tzinfo=None) == start


def test_start_with_a_time_must_match_the_first_linetime() -> None:
    data = mesa_csv_bytes(START, [1, 2])
    assert read(data, "2010-03-04T20:30:00").start.hour == 20
    with pytest.raises(InvalidInput, match="recording_start: 20:31:00 is not the first row's linetime"):
        read(data, "2010-03-04T20:31:00")


@pytest.mark.parametrize(
    ("data", "start", "message"),
    [
        (mesa_csv_bytes(START, [1, 2]), "", "recording_start: MESA actigraphy files carry clock times only"),
        (mesa_csv_bytes(START, [1, 2]), "March 4", "recording_start: 'March 4' is not a date"),
        (mesa_csv_bytes(START, [1, 2]), "2010-03-04T20:30:00Z", "without a UTC offset"),
        (HEADER.replace("offwrist,", "").encode() + b"\n", "2010-03-04", "no 'offwrist' column"),
        ((HEADER + "\n").encode(), "2010-03-04", "header but no rows"),
        (mesa_csv_bytes(START, [1, 2], lines=[2, 1]), "2010-03-04", "line 3: 'line' 1 does not increase"),
        (mesa_csv_bytes(START, [1, 2], offwrist=[0, 2]), "2010-03-04", "'offwrist' must be 0 or 1"),
        (mesa_csv_bytes(START, [1, 2]).replace(b",2,0,", b",x2,0,"), "2010-03-04", "line 3: 'activity'"),
        (mesa_csv_bytes(START, [1, 2]).replace(b"20:30:30", b"20:31:30"), "2010-03-04", "line 3: 'linetime'"),
        (mesa_csv_bytes(START, [1, 2]).replace(b"20:30:30", b"8:30pm"), "2010-03-04", "is not HH:MM:SS"),
    ],
)
def test_bad_files_are_422_naming_the_problem(data: bytes, start: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        read(data, start)


def test_spring_forward_start_that_does_not_exist_is_refused() -> None:
    data = mesa_csv_bytes(datetime(2010, 3, 14, 2, 30), [1, 2])
    with pytest.raises(InvalidInput, match="does not exist"):
        read(data, "2010-03-14")
