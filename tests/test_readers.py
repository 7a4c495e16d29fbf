"""Device-file readers: generated files of every layout, then the real files in ../shared/data/actigraphy."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from pat_runner.actigraphy.preprocess import SUPPORTED_EPOCH_SECONDS, RawRecording, preprocess
from pat_runner.actigraphy.readers import read_recording_file
from pat_runner.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType
from scripts.device_files.export_files import (
    SHARED_DATA,
    actilife_csv_bytes,
    agd_bytes,
    awd_bytes,
    tidy_csv_bytes,
)
from tests.factories import make_settings

NEW_YORK = "America/New_York"
MAX_BYTES = 32 * 2**20
START = datetime(2024, 3, 4, 9, 30)
WEEK = 10_080


def read(data: bytes, filename: str, timezone: str = NEW_YORK, max_bytes: int = MAX_BYTES) -> RawRecording:
    return read_recording_file(
        data,
        filename,
        timezone=timezone,
        max_bytes=max_bytes,
        max_minutes=make_settings().max_recording_minutes,
    )


def counts(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).poisson(40, n).astype(np.float64)


def as_array(recording: RawRecording) -> np.ndarray:
    return np.asarray(recording.values, dtype=np.float64)


# --- ActiGraph .agd ------------------------------------------------------------------------------


def test_agd_round_trip() -> None:
    written = counts(500)
    recording = read(agd_bytes(START, 10, written, device="GT3XPlus", serial="NEO123"), "upload.agd")
    assert recording.start == datetime(2024, 3, 4, 9, 30, tzinfo=recording.start.tzinfo)
    assert recording.start.utcoffset() == timedelta(hours=-5)
    assert recording.epoch_seconds == 10
    np.testing.assert_array_equal(as_array(recording), written)
    assert recording.device == {"manufacturer": "ActiGraph", "model": "GT3XPlus", "serial": "NEO123"}
    assert recording.timezone == NEW_YORK


def test_agd_is_recognised_by_content_whatever_the_name() -> None:
    data = agd_bytes(START, 60, counts(10))
    for name in ("../../etc/passwd", "", "recording.bin", "C:\\x\\y.AGD"):
        assert read(data, name).epoch_seconds == 60


def test_agd_rows_missing_from_the_data_table_are_missing_epochs() -> None:
    written = counts(6)
    recording = read(agd_bytes(START, 30, written, epoch_indices=[0, 1, 2, 5, 6, 9]), "x.agd")
    values = as_array(recording)
    assert values.size == 10
    np.testing.assert_array_equal(np.flatnonzero(np.isnan(values)), [3, 4, 7, 8])
    np.testing.assert_array_equal(values[[0, 1, 2, 5, 6, 9]], written)


def test_agd_null_axis1_is_missing() -> None:
    recording = read(agd_bytes(START, 60, [1.0, None, 3.0]), "x.agd")
    assert np.isnan(as_array(recording)[1])


def test_agd_start_across_dst_keeps_elapsed_epochs() -> None:
    # The device clock does not jump at 02:00; the epochs run on in elapsed time.
    recording = read(agd_bytes(datetime(2024, 3, 10, 1, 0), 60, counts(180)), "x.agd")
    assert recording.start.utcoffset() == timedelta(hours=-5)
    minutes = preprocess(recording, settings=make_settings(min_recording_minutes=60)).minutes
    assert minutes.index[60].isoformat() == "2024-03-10T03:00:00-04:00"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"SQLite format 3\x00" + b"\x01" * 2000, "the .agd file"),
        (b"not a database at all", "not an SQLite database"),
        (agd_bytes(START, 10, [1.0], tables=("data",)), "no 'settings' table"),
        (agd_bytes(START, 10, [1.0], tables=("settings",)), "no 'data' table"),
        (agd_bytes(START, 10, []), "no epochs"),
        (agd_bytes(START, 120, [1.0, 2.0]), "settings.epochlength: epochs of 120 s are longer than a minute"),
        (agd_bytes(START, 7, [1.0, 2.0]), "settings.epochlength: 7 s does not divide a minute"),
        (agd_bytes(START, 10, [1.0, 2.0], epoch_indices=[0, 0]), "data row 2: the timestamp repeats"),
        (agd_bytes(START, 10, [1.0, 2.0], epoch_indices=[0, -1]), "data row 1: the timestamp is not on"),
        (agd_bytes(START, 10, [1.0, 2.0], epoch_indices=[0, 10**6]), "the file spans .* longer than the max"),
    ],
    ids=["corrupt", "not-sqlite", "no-settings", "no-data", "empty", "2-min", "7-s", "dup", "before", "far"],
)
def test_broken_agd_is_422(data: bytes, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        read(data, "x.agd")


def test_agd_starting_in_a_nonexistent_local_time_is_422() -> None:
    with pytest.raises(
        InvalidInput, match=r"settings.startdatetime: local time 2024-03-10T02:30:00 does not exist"
    ):
        read(agd_bytes(datetime(2024, 3, 10, 2, 30), 60, counts(10)), "x.agd")
    with pytest.raises(InvalidInput, match="occurs twice"):
        read(agd_bytes(datetime(2024, 11, 3, 1, 30), 60, counts(10)), "x.agd")
    assert read(
        agd_bytes(datetime(2024, 11, 3, 1, 30), 60, counts(10)), "x.agd", timezone="Etc/GMT+5"
    ).start == (datetime(2024, 11, 3, 6, 30, tzinfo=UTC))


# --- ActiLife CSV exports ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("columns", "date_format"),
    [
        ("Axis1,Axis2,Axis3,vectormagnitude,timestamp", "M/d/yyyy"),
        ("Date,Time,Axis1,Axis2,Axis3", "dd-MM-yyyy"),
        ("Date,Time,Axis1,Axis2,Axis3", "d/M/yyyy"),
        (None, "M/d/yyyy"),
    ],
    ids=["timestamp", "date-time-dmy", "date-time-d/m", "no-columns"],
)
@pytest.mark.parametrize("epoch_seconds", [15, 60])
def test_actilife_csv_round_trip(columns: str | None, date_format: str, epoch_seconds: int) -> None:
    written = counts(300)
    start = datetime(2024, 7, 2, 8, 15)
    data = actilife_csv_bytes(start, epoch_seconds, written, date_format=date_format, columns=columns)
    recording = read(data, "export.csv")
    assert recording.start.replace(tzinfo=None) == start
    assert recording.start.utcoffset() == timedelta(hours=-4)
    assert recording.epoch_seconds == epoch_seconds
    np.testing.assert_array_equal(as_array(recording), written)
    assert recording.device == {"manufacturer": "ActiGraph", "model": "GT3X+", "serial": "TAS0000000001"}


def test_actilife_csv_rows_are_placed_by_their_timestamps() -> None:
    lines = actilife_csv_bytes(START, 60, counts(5)).decode().splitlines()
    del lines[13]  # the third epoch
    recording = read("\n".join(lines).encode(), "x.csv")
    values = as_array(recording)
    assert values.size == 5 and np.isnan(values[2]) and not np.isnan(values).sum() > 1


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda lines: lines.__setitem__(13, "12x,0,0,12,2024-03-04 09:32:00"), "line 14: Axis1 value '12x'"),
        (
            lambda lines: lines.__setitem__(13, "1,0,0,1,yesterday"),
            "line 14: 'yesterday' is not a date and time",
        ),
        (
            lambda lines: lines.__setitem__(13, "1,0,0,1,2024-03-04 09:31:30"),
            "line 14: the timestamp is not on",
        ),
        (
            lambda lines: lines.__setitem__(13, "1,0,0,1,2024-03-04 09:31:00"),
            "line 14: the timestamp repeats",
        ),
        (
            lambda lines: lines.__setitem__(4, "Epoch Period (hh:mm:ss) 00:00:07"),
            "7 s does not divide a minute",
        ),
        (
            lambda lines: lines.__setitem__(4, "Epoch Period (hh:mm:ss) 00:02:00"),
            "120 s are longer than a minute",
        ),
        (
            lambda lines: lines.__setitem__(3, "Start Date 31/31/2024"),
            "does not match the file's date format",
        ),
        (lambda lines: lines.__setitem__(2, "Begin 10:00"), "must give 'Start Time'"),
        (
            lambda lines: lines.__setitem__(10, "Axis2,Axis3,timestamp"),
            "line 11: the column header has no 'Axis1'",
        ),
        (lambda lines: lines.__delitem__(slice(10, None)), "line 11: the file has no epochs"),
        (lambda lines: lines.__setitem__(13, "1,0,0,1,2024-03-04 09:32:00Z"), "without a UTC offset"),
    ],
    ids=[
        "number",
        "timestamp",
        "off-grid",
        "repeat",
        "epoch-7",
        "epoch-120",
        "date",
        "header",
        "axis1",
        "empty",
        "offset-mixed",
    ],
)
def test_broken_actilife_csv_is_422_with_the_line(edit, message: str) -> None:  # type: ignore[no-untyped-def]
    lines = actilife_csv_bytes(START, 60, counts(5)).decode().splitlines()
    edit(lines)
    with pytest.raises(InvalidInput, match=message):
        read("\n".join(lines).encode(), "x.csv")


# --- tidy CSV ------------------------------------------------------------------------------------


def test_tidy_csv_with_utc_timestamps_is_absolute_time() -> None:
    moments = [START + timedelta(seconds=10 * i) for i in range(60)]
    written = counts(60)
    recording = read(tidy_csv_bytes(moments, written, utc_suffix=True), "x.csv", timezone="Europe/Berlin")
    assert recording.start == START.replace(tzinfo=UTC)
    assert recording.epoch_seconds == 10
    np.testing.assert_array_equal(as_array(recording), written)


def test_tidy_csv_with_naive_timestamps_is_local_time_and_gaps_are_missing() -> None:
    indices = [0, 1, 2, 4, 5]
    moments = [START + timedelta(seconds=30 * i) for i in indices]
    recording = read(tidy_csv_bytes(moments, counts(5), utc_suffix=False), "tidy.csv")
    assert recording.start == datetime.fromisoformat("2024-03-04T09:30:00-05:00")
    assert recording.epoch_seconds == 30
    assert np.flatnonzero(np.isnan(as_array(recording))).tolist() == [3]


def test_broken_tidy_csv_is_422() -> None:
    moments = [START + timedelta(minutes=i) for i in range(3)]
    lines = tidy_csv_bytes(moments, counts(3), utc_suffix=True).decode().splitlines()
    with pytest.raises(InvalidInput, match="line 3: 'soon' is not an ISO-8601 timestamp"):
        read("\n".join([*lines[:2], "soon,1,0,0,0", *lines[3:]]).encode(), "x.csv")
    with pytest.raises(InvalidInput, match="line 3: timestamps must all have a UTC offset or all have none"):
        read("\n".join([*lines[:2], lines[2].replace("Z", ""), *lines[3:]]).encode(), "x.csv")
    with pytest.raises(InvalidInput, match="at least two distinct timestamps"):
        read("\n".join(lines[:2]).encode(), "x.csv")


# --- Actiwatch .AWD ------------------------------------------------------------------------------


@pytest.mark.parametrize(("code", "epoch_seconds"), [("1", 15), ("2", 30), ("4", 60), ("C1", 5), ("81", 2)])
def test_awd_epoch_codes(code: str, epoch_seconds: int) -> None:
    written = counts(120)
    recording = read(awd_bytes(datetime(2018, 1, 1, 8, 30), code, written, marker=True), "SUBJECT.AWD")
    assert recording.epoch_seconds == epoch_seconds
    assert recording.start == datetime.fromisoformat("2018-01-01T08:30:00-05:00")
    np.testing.assert_array_equal(as_array(recording), written)
    assert recording.device == {
        "manufacturer": "Philips Respironics",
        "model": "Actiwatch",
        "serial": "V00042",
    }


def test_awd_is_recognised_by_content_without_its_extension() -> None:
    assert read(awd_bytes(START, "4", counts(30)), "download").epoch_seconds == 60


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda lines: lines.__setitem__(3, "8"), r"line 4 \(epoch code 8\): epochs of 120 s are longer"),
        (lambda lines: lines.__setitem__(3, "20"), r"line 4 \(epoch code 20\): epochs of 300 s"),
        (lambda lines: lines.__setitem__(3, "99"), "line 4: epoch code '99' is not one of"),
        (lambda lines: lines.__setitem__(1, "2018-01-01"), "line 2: start date '2018-01-01' is not like"),
        (lambda lines: lines.__setitem__(2, "8h30"), "line 3: start time '8h30' is not like 08:30"),
        (lambda lines: lines.__setitem__(11, "lots"), "line 12: activity count value 'lots' is not a number"),
        (lambda lines: lines.__delitem__(slice(7, None)), "it needs a 7-line header and epochs"),
    ],
    ids=["2-min", "5-min", "unknown-code", "date", "time", "count", "no-epochs"],
)
def test_broken_awd_is_422_with_the_line(edit, message: str) -> None:  # type: ignore[no-untyped-def]
    lines = awd_bytes(datetime(2018, 1, 1, 8, 30), "4", counts(30)).decode().splitlines()
    edit(lines)
    with pytest.raises(InvalidInput, match=message):
        read("\n".join(lines).encode(), "x.awd")


def test_truncated_or_damaged_files_only_raise_client_errors() -> None:
    # Whatever a client uploads, the answer is a 4xx error with a message, never an unexpected exception.
    originals = {
        "x.agd": agd_bytes(START, 10, counts(400)),
        "x.csv": actilife_csv_bytes(START, 60, counts(200)),
        "x.awd": awd_bytes(START, "4", counts(200)),
        "tidy.csv": tidy_csv_bytes(
            [START + timedelta(minutes=i) for i in range(50)], counts(50), utc_suffix=True
        ),
    }
    rng = np.random.default_rng(7)
    for name, data in originals.items():
        for cut in rng.integers(1, len(data), 12):
            damaged = bytearray(data[:cut])
            if len(damaged) > 20 and cut % 2:
                damaged[rng.integers(0, len(damaged))] ^= 0xFF
            try:
                result = read(bytes(damaged), name)
            except (InvalidInput, UnsupportedMediaType) as error:
                assert error.status in {415, 422} and error.message
            else:
                assert len(result.values) > 0 and result.epoch_seconds in SUPPORTED_EPOCH_SECONDS


# --- limits and unsupported files ----------------------------------------------------------------


def test_too_large_is_413_before_reading() -> None:
    with pytest.raises(PayloadTooLarge, match="1,025 bytes, more than the maximum of 1,024") as caught:
        read(b"x" * 1_025, "x.agd", max_bytes=1_024)
    assert caught.value.status == 413


@pytest.mark.parametrize(
    ("data", "filename"),
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "picture.png"),
        (b"\x00\x01\x02binary", "recording.gt3x"),
        (b"name,value\nx,1\n", "table.csv"),
        (b"hello world\n", "notes.txt"),
    ],
    ids=["png", "binary", "other-csv", "text"],
)
def test_unsupported_files_are_415(data: bytes, filename: str) -> None:
    with pytest.raises(UnsupportedMediaType) as caught:
        read(data, filename)
    assert caught.value.status == 415


def test_empty_file_and_unknown_zone_are_422() -> None:
    with pytest.raises(InvalidInput, match="the file is empty"):
        read(b"", "x.agd")
    with pytest.raises(InvalidInput, match="timezone: not a known IANA time zone name"):
        read(agd_bytes(START, 60, [1.0]), "x.agd", timezone="Nowhere/City")


# --- the real device files -----------------------------------------------------------------------

real_files = pytest.mark.skipif(
    not SHARED_DATA.is_dir(), reason=f"real device files not found at {SHARED_DATA} (shared/ checkout absent)"
)


def read_real(name: str, timezone: str = NEW_YORK) -> RawRecording:
    path = SHARED_DATA / name
    return read(path.read_bytes(), path.name, timezone=timezone)


def minute_sums_60s_csv() -> pd.Series:
    table = pd.read_csv(SHARED_DATA / "ActiSleepPlus-RawData-Day01-10sec60sec.csv")
    return table.set_index(pd.to_datetime(table["timestamp"]))["axis1"].astype(float)


@real_files
def test_real_agd_at_10_s_sums_to_the_60_s_csv() -> None:
    recording = read_real("ActiSleepPlus-RawData-Day01.agd", timezone="UTC")
    assert recording.epoch_seconds == 10
    assert recording.start == datetime(2012, 4, 4, 13, 29, tzinfo=UTC)
    assert len(recording.values) == 8_639
    assert recording.device == {
        "manufacturer": "ActiGraph",
        "model": "ActiSleepPlus",
        "serial": "MRA1DXXXXXXXX",
    }
    pre = preprocess(recording, settings=make_settings())
    expected = minute_sums_60s_csv()
    minutes = pre.minutes
    assert len(minutes) == len(expected) == 1_440
    assert (minutes.index == expected.index).all()
    # The recording ends one epoch short of its last minute: ActiLife sums the 5 epochs it has, the
    # pipeline marks the incomplete minute missing; every complete minute agrees.
    np.testing.assert_array_equal(minutes.to_numpy()[:-1], expected.to_numpy()[:-1])
    assert np.isnan(minutes.iloc[-1])
    assert pre.quality.missing_minutes == 1
    assert minutes.iloc[:-1].sum() + as_array(recording)[-5:].sum() == expected.sum()


@real_files
def test_real_tidy_csv_forms_match_the_agd() -> None:
    agd = read_real("ActiSleepPlus-RawData-Day01.agd", timezone="UTC")
    tidy = read_real("ActiSleepPlus-RawData-Day01.csv", timezone=NEW_YORK)
    assert tidy.start == agd.start and tidy.epoch_seconds == 10
    np.testing.assert_array_equal(as_array(tidy), as_array(agd))
    sixty = read_real("ActiSleepPlus-RawData-Day01-10sec60sec.csv")
    assert sixty.epoch_seconds == 60 and sixty.start == agd.start
    np.testing.assert_array_equal(as_array(sixty), minute_sums_60s_csv().to_numpy())


@real_files
def test_real_dummy_chai_agd() -> None:
    recording = read_real("dummyCHAI.agd", timezone="Asia/Kolkata")
    assert recording.epoch_seconds == 10 and len(recording.values) == 11_159
    assert recording.start == datetime.fromisoformat("2015-05-13T07:00:00+05:30")
    assert recording.device == {"manufacturer": "ActiGraph", "model": "GT3XPlus", "serial": "NEO1D31110533"}
    pre = preprocess(recording, settings=make_settings())
    assert pre.quality.total_minutes == 1_860 and pre.quality.windows == 1


@real_files
def test_real_awd() -> None:
    recording = read_real("test_sample.AWD", timezone="Europe/Berlin")
    assert recording.epoch_seconds == 60
    assert recording.start == datetime.fromisoformat("2018-01-01T08:30:00+01:00")
    assert len(recording.values) == 11_718 and not np.isnan(as_array(recording)).any()
    assert recording.device == {
        "manufacturer": "Philips Respironics",
        "model": "Actiwatch",
        "serial": "V00000",
    }
    pre = preprocess(recording, settings=make_settings())
    assert pre.quality.windows == 2 and pre.quality.dropped_minutes == 0


@real_files
def test_real_actilife_csv_exports() -> None:
    week = read_real("TAS1D47140221_2018-11-30_60sec.csv")
    assert week.start == datetime.fromisoformat("2018-07-13T10:00:00-04:00")
    assert week.epoch_seconds == 60 and len(week.values) == 10_080
    assert week.device == {"manufacturer": "ActiGraph", "model": "GT3X+", "serial": "TAS1D47140221"}
    table = pd.read_csv(SHARED_DATA / "TAS1D47140221_2018-11-30_60sec.csv", skiprows=10)
    np.testing.assert_array_equal(as_array(week), table["Axis1"].to_numpy(dtype=float))
    pre = preprocess(week, settings=make_settings())
    assert pre.quality.windows == 1 and pre.quality.padded_minutes == 0 and pre.quality.missing_minutes == 0

    long = preprocess(read_real("TAS1D47140221_2019-04-11_60sec.csv"), settings=make_settings())
    assert long.quality.total_minutes == 25_123 and long.quality.nonwear_minutes == 5_788

    short = preprocess(read_real("TAS1E25150490_2018-03-28_60sec.csv"), settings=make_settings())
    assert short.quality.total_minutes == 2_943 and short.quality.padded_minutes == WEEK - 2_943


@real_files
def test_real_mostly_non_wear_recording_is_422() -> None:
    recording = read_real("TAS1E25150485_2019-01-18_60sec.csv")
    assert len(recording.values) == 44_636
    with pytest.raises(InvalidInput, match=r"of the 44,636 minutes are missing, .* non-wear zero runs"):
        preprocess(recording, settings=make_settings())


@real_files
def test_real_nhanes_table_is_not_a_device_export() -> None:
    with pytest.raises(UnsupportedMediaType):
        read_real("nhanes_2003_2004_unidata.csv")
