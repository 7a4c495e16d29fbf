"""Raw ActiGraph `.gt3x` → counts: the real files in ../shared/data/raw, then generated files."""

from __future__ import annotations

import io
import zipfile
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from agcounts.extract import get_counts
from pygt3x.reader import FileReader

from pat_runner.actigraphy.gt3x import decode_gt3x, read_gt3x
from pat_runner.errors import InvalidInput
from scripts.device_files.gt3x_files import gt3x_bytes, record, walking

RAW = Path(__file__).resolve().parents[2] / "shared" / "data" / "raw"
LIMITS = {"max_minutes": 80_640, "max_samples": 10**9}
START = datetime(2024, 3, 4, 9, 0, 0)

needs_raw = pytest.mark.skipif(not (RAW / "neo.gt3x").exists(), reason="../shared/data/raw is not present")


@needs_raw
def test_decoded_acceleration_equals_actilife_raw_csv() -> None:
    decoded = decode_gt3x(RAW / "neo.gt3x", **LIMITS)
    actilife = pd.read_csv(RAW / "neo.csv", skiprows=10).to_numpy()
    assert decoded.rate == 30
    assert decoded.xyz.shape == actilife.shape == (18_004, 3)
    np.testing.assert_array_equal(decoded.xyz, actilife)
    # ActiLife's header: Start Date 12/20/2021, Start Time 11:55:00.
    assert decoded.base == datetime(2021, 12, 20, 11, 55)


@needs_raw
def test_neo_counts_drop_the_incomplete_last_second_and_minute() -> None:
    recording = read_gt3x(RAW / "neo.gt3x", timezone="America/Chicago", **LIMITS)
    # 18,004 samples = 600 whole seconds + 4 samples: 10 whole minutes.
    assert len(recording.values) == 10
    assert recording.start == datetime(2021, 12, 20, 11, 55, tzinfo=recording.start.tzinfo)
    assert recording.start.utcoffset() == timedelta(hours=-6)
    assert recording.device == {"manufacturer": "ActiGraph", "model": "GT3XPlus", "serial": "NEO1C04110003"}


@needs_raw
def test_small_counts_equal_agcounts_run_directly() -> None:
    recording = read_gt3x(RAW / "small.gt3x", timezone="America/New_York", **LIMITS)
    with FileReader(str(RAW / "small.gt3x")) as reader:
        frame = reader.to_pandas()
    first = int(np.floor(frame.index[0]))
    lead = (-first) % 60  # the service's epochs start at the first whole clock minute
    xyz = frame[["X", "Y", "Z"]].to_numpy(dtype=np.float64)[lead * 30 :]
    expected = get_counts(xyz, freq=30, epoch=60)[:, 1]  # ActiLife axis 1 = the Y axis
    assert len(recording.values) == 815
    np.testing.assert_array_equal(recording.values, expected[:815])
    assert recording.start.replace(tzinfo=None) == datetime(1970, 1, 1) + timedelta(seconds=first + lead)
    assert np.nansum(recording.values) > 0


def test_generated_file_gaps_idle_sleep_and_alignment() -> None:
    segments = [
        ("active", walking(150, 30, seed=1)),
        ("gap", 120),
        ("active", walking(200, 30, seed=2)),
        ("idle", 600),
        ("active", walking(130, 30, seed=3)),
    ]
    recording = read_gt3x(
        io.BytesIO(gt3x_bytes(START + timedelta(seconds=30), 30, iter(segments))), timezone="UTC", **LIMITS
    )
    values = np.asarray(recording.values)
    # Starts at the first whole minute (09:01); the first 150 s (from 09:00:30) fill 09:01 and 09:02.
    assert recording.start == datetime(2024, 3, 4, 9, 1, tzinfo=recording.start.tzinfo)
    assert values[0] > 0 and values[1] > 0
    # The 120-s gap (09:03:00–09:05:00) touches minutes 09:03 and 09:04: missing.
    assert np.isnan(values[2:4]).all()
    assert not np.isnan(values[4:]).any()
    # Idle sleep mode is the device lying still: counts of 0, not missing.
    idle = values[8:17]
    assert (idle == 0).all()
    # 09:00:30 + 150 + 120 + 200 + 600 + 130 s = 09:20:30: 19 whole minutes from 09:01.
    assert len(values) == 19


def test_counts_follow_agcounts_on_the_generated_signal() -> None:
    signal = walking(600, 30, seed=7)
    data = gt3x_bytes(START, 30, iter([("active", signal)]))
    recording = read_gt3x(io.BytesIO(data), timezone="UTC", **LIMITS)
    quantized = np.rint(signal * 256) / 256
    np.testing.assert_array_equal(recording.values, get_counts(quantized, freq=30, epoch=60)[:, 1])


def test_span_and_sample_limits() -> None:
    # One idle-sleep record pair spanning a year: refused by the header scan before anything is filled.
    data = gt3x_bytes(START, 30, iter([("active", walking(60, 30, 0)), ("idle", 366 * 86_400)]))
    with pytest.raises(InvalidInput, match="span"):
        read_gt3x(io.BytesIO(data), timezone="UTC", **LIMITS)
    small = gt3x_bytes(START, 30, iter([("active", walking(120, 30, 0))]))
    with pytest.raises(InvalidInput, match="samples"):
        read_gt3x(io.BytesIO(small), timezone="UTC", max_minutes=80_640, max_samples=1_000)


def _zip(files: dict[str, bytes]) -> io.BytesIO:
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        for name, content in files.items():
            zipped.writestr(name, content)
    archive.seek(0)
    return archive


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (io.BytesIO(b"PK\x03\x04 not really a zip"), "not a readable zip"),
        (_zip({"readme.txt": b"hello"}), "info.txt and log.bin"),
        (_zip({"info.txt": b"Sample Rate: 25\n", "log.bin": b""}), "Sample Rate"),
        (_zip({"info.txt": b"Sample Rate: abc\n", "log.bin": b""}), "not a number"),
        (_zip({"info.txt": b"Sample Rate: 30\n", "log.bin": b"\x00" * 20}), "0x1E separator"),
        (_zip({"info.txt": b"Sample Rate: 30\n", "log.bin": b""}), "no records"),
        (_zip({"info.txt": b"Sample Rate: 30\n", "log.bin": record(3, 0, b"\x01")}), "no acceleration"),
    ],
)
def test_bad_files_are_422_naming_the_problem(source: io.BytesIO, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        read_gt3x(source, timezone="UTC", **LIMITS)


def test_missing_acceleration_scale_is_422() -> None:
    second = np.zeros((30, 3), dtype="<i2").tobytes()
    archive = _zip({"info.txt": b"Sample Rate: 30\n", "log.bin": record(26, 1_700_000_000, second)})
    with pytest.raises(InvalidInput, match="Acceleration Scale"):
        read_gt3x(archive, timezone="UTC", **LIMITS)
