"""Raw ActiGraph `.gt3x` files → per-minute ActiGraph activity counts (`RawRecording`).

A `.gt3x` is a zip archive: `info.txt` (sample rate, serial, start date in .NET ticks, …) and either
`log.bin` (newer devices: one record per second, `<BBLH` header of separator 0x1E, type, local-time
seconds since 1970, payload size, then the payload and a checksum) or `activity.bin` + `log.txt` (the
older "NHANES" layout, samples from the start date on). Decoding is ActiGraph's own `pygt3x`; the counts
are ActiGraph's published algorithm in `agcounts` (Neishabouri et al. 2022, BMC Res Notes 15:223).
Neither is re-implemented here; this module only places the samples on a time grid and checks limits.

* **Axes.** ActiLife's axis 1 is the accelerometer's Y axis (axis 2 = X, axis 3 = Z; ActiLife API
  documentation, "AGD Statistics"); axis-1 counts per 60-s epoch are PAT's input, as in NHANES.
* **Idle sleep mode.** The device stops sampling while still and `pygt3x` fills the gap with the last
  sample, as ActiLife does; such seconds count as worn and still (0 counts).
* **Gaps and partial seconds.** Seconds the file does not cover at all are filled with the last sample
  for the filter, and every minute touching one is missing (NaN). A last second with fewer samples than
  the rate (the device stopped mid-second) is dropped, and so is the incomplete last minute.
* **Start.** Epochs are aligned to whole clock minutes: samples before the first whole minute are left
  out. Device timestamps are local clock time; they are read in the request's `timezone`, like the
  naive timestamps of the other device exports.
* **Limits.** Before anything is decoded, the record headers are scanned (no payloads kept) so that a
  hostile file cannot make the decoder fill months of idle time: the span must be at most
  `max_minutes`, and the samples at most `max_samples`.
"""

from __future__ import annotations

import logging
import struct
import zipfile
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import BinaryIO

import numpy as np
from agcounts.extract import get_counts
from pygt3x.components import Info
from pygt3x.reader import FileReader

from pat_runner.actigraphy.preprocess import RawRecording, load_zone
from pat_runner.actigraphy.readers import DOTNET_EPOCH, TICKS_PER_SECOND, _device, localize
from pat_runner.errors import InvalidInput

ZIP_MAGIC = b"PK\x03\x04"
#: Sample rates `agcounts` supports.
SUPPORTED_RATES = (30, 40, 50, 60, 70, 80, 90, 100)
EPOCH_SECONDS = 60
UNIX_EPOCH = datetime(1970, 1, 1)
_HEADER = struct.Struct("<BBLH")
_SEPARATOR = 0x1E
#: Bytes of a log.bin record per second beyond its samples (header and checksum), and the most bytes
#: one sample takes (Activity2: three int16), used to bound the archive's unpacked size.
_RECORD_OVERHEAD = _HEADER.size + 1
_MAX_SAMPLE_BYTES = 6
_NHANES_SAMPLE_BYTES = 4.5

# pygt3x logs per-second warnings with device timestamps; those stay out of the service's logs.
logging.getLogger("pygt3x").setLevel(logging.ERROR)
logging.getLogger("agcounts").setLevel(logging.WARNING)


def read_gt3x(
    source: str | Path | BinaryIO, *, timezone: str, max_minutes: int, max_samples: int
) -> RawRecording:
    """Decode a `.gt3x` and compute ActiLife axis-1 counts per minute; 422 naming the problem."""
    zone = load_zone(timezone)
    decoded = decode_gt3x(source, max_minutes=max_minutes, max_samples=max_samples)
    lead = (-decoded.base.second) % EPOCH_SECONDS
    counts = minute_counts(decoded.elapsed, decoded.xyz, decoded.rate, max_minutes, lead=lead)
    del decoded.xyz
    start = localize(decoded.base + timedelta(seconds=lead), zone, timezone, "info.txt/log.bin start")
    device = _device("ActiGraph", decoded.info.device_type, decoded.info.serial_number)
    return RawRecording(
        start=start, timezone=timezone, epoch_seconds=EPOCH_SECONDS, values=counts, device=device
    )


@dataclass
class Decoded:
    """Samples of a `.gt3x`: X, Y, Z in g at `elapsed` seconds after `base` (local clock time)."""

    base: datetime
    elapsed: np.ndarray
    xyz: np.ndarray
    rate: int
    info: Info


def decode_gt3x(source: str | Path | BinaryIO, *, max_minutes: int, max_samples: int) -> Decoded:
    """The calibrated samples of a `.gt3x` as `pygt3x` decodes them, after the size and span checks."""
    try:
        archive = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError, EOFError):
        raise InvalidInput("the .gt3x file is not a readable zip archive") from None
    with archive:
        info = _info(archive)
        _check_size(archive, info.sample_rate, max_minutes)
        if "log.bin" in archive.namelist():
            _check_log_span(archive, max_minutes)
    try:
        with FileReader(source) as reader:
            acceleration = reader.acceleration
            reader.acceleration = np.empty((0, 5))
            nhanes = bool(reader.nhanes)
            if not len(acceleration):
                raise InvalidInput("the .gt3x file has no acceleration records")
            if len(acceleration) > max_samples:
                raise InvalidInput(
                    f"the .gt3x file has {len(acceleration):,} samples, more than the maximum of "
                    f"{max_samples:,}; send it in parts"
                )
            times = acceleration[:, 0].copy()
            # pygt3x's own rule (`FileReader.to_pandas`): NHANES files are already in g. A scale of 0
            # gives non-finite samples, refused below.
            with np.errstate(divide="ignore", invalid="ignore"):
                xyz = acceleration[:, 1:4] if nhanes else reader.calibrate_acceleration(acceleration[:, 1:4])
            del acceleration
    except InvalidInput:
        raise
    except MemoryError:
        raise
    except Exception:
        # Whatever else the decoder raises on an untrusted archive is the archive's fault.
        raise InvalidInput("the .gt3x file is damaged: its records cannot be decoded") from None
    if not np.isfinite(xyz).all():
        raise InvalidInput(
            "the .gt3x samples are not finite after calibration (info.txt 'Acceleration Scale' missing or 0?)"
        )
    if nhanes:
        # pygt3x numbers NHANES samples from the start date's ticks / 1e9, not in Unix seconds.
        base = DOTNET_EPOCH + timedelta(seconds=info.start_date // TICKS_PER_SECOND)
        elapsed = times - times[0]
    else:
        first = int(np.floor(times[0] + 1e-6))
        base = UNIX_EPOCH + timedelta(seconds=first)
        elapsed = times - first
    xyz = np.ascontiguousarray(xyz)
    return Decoded(base=base, elapsed=elapsed, xyz=xyz, rate=info.sample_rate, info=info)


def minute_counts(
    elapsed: np.ndarray, xyz: np.ndarray, rate: int, max_minutes: int, *, lead: int = 0
) -> np.ndarray:
    """Axis-1 (Y) counts per whole minute of samples at `elapsed` seconds; minutes with a gap are NaN.

    The first `lead` seconds (before the first whole clock minute) and the samples after the last
    whole minute are left out. `xyz` is in g, columns X, Y, Z.
    """
    seconds = np.floor(elapsed + 1e-6).astype(np.int64)
    if (seconds < 0).any():
        raise InvalidInput("the .gt3x file's records go back before its first record")
    per_second = np.bincount(seconds)
    last = len(per_second) - 1
    if per_second[last] < rate:
        last -= 1
    n_seconds = last + 1 - lead
    n_minutes = n_seconds // EPOCH_SECONDS
    if n_minutes < 1:
        raise InvalidInput("the .gt3x file holds less than one whole minute of samples")
    if n_minutes > max_minutes:
        raise InvalidInput(
            f"the .gt3x file spans {n_minutes:,} minutes, longer than the maximum of {max_minutes:,}"
        )
    end = lead + n_minutes * EPOCH_SECONDS
    within = np.clip(np.rint((elapsed - seconds) * rate), 0, rate - 1).astype(np.int64)
    index = (seconds - lead) * rate + within
    keep = (seconds >= lead) & (seconds < end)
    n_samples = n_minutes * EPOCH_SECONDS * rate
    covered = per_second[lead:end] == rate
    if keep.all() and covered.all() and np.array_equal(index, np.arange(n_samples)):
        signal = xyz
    else:
        # Gaps: the last sample before each missing one keeps the filter's input continuous.
        signal = np.empty((n_samples, 3), dtype=np.float64)
        filled = np.zeros(n_samples, dtype=bool)
        signal[index[keep]] = xyz[keep]
        filled[index[keep]] = True
        positions = np.where(filled, np.arange(n_samples), 0)
        np.maximum.accumulate(positions, out=positions)
        signal = signal[positions]
        if not filled[0]:
            signal[: int(np.argmax(filled))] = signal[int(np.argmax(filled))]
        covered &= filled.reshape(-1, rate).all(axis=1)
    counts = get_counts(signal, freq=rate, epoch=EPOCH_SECONDS)[:n_minutes, 1].astype(np.float64)
    complete = covered.reshape(n_minutes, EPOCH_SECONDS).all(axis=1)
    counts[~complete] = np.nan
    return counts


def _info(archive: zipfile.ZipFile) -> Info:
    names = archive.namelist()
    if "info.txt" not in names or not ({"log.bin", "activity.bin"} & set(names)):
        raise InvalidInput("the zip archive is not a .gt3x: it needs info.txt and log.bin (or activity.bin)")
    try:
        info = Info.read_zip(archive)
    except (ValueError, KeyError, UnicodeDecodeError):
        raise InvalidInput("info.txt: a field is not a number where one is expected") from None
    if info.sample_rate not in SUPPORTED_RATES:
        raise InvalidInput(
            f"info.txt 'Sample Rate': {info.sample_rate} Hz; ActiGraph counts need one of "
            f"{', '.join(map(str, SUPPORTED_RATES))} Hz"
        )
    return info


def _check_size(archive: zipfile.ZipFile, rate: int, max_minutes: int) -> None:
    # A zip bomb is refused by the sizes its directory declares; zipfile stops at the declared size.
    seconds = max_minutes * 60 + EPOCH_SECONDS
    limits = {
        "log.bin": seconds * (_RECORD_OVERHEAD + rate * _MAX_SAMPLE_BYTES) * 2,
        "activity.bin": int(seconds * rate * _NHANES_SAMPLE_BYTES) + 1,
    }
    for name, limit in limits.items():
        if name in archive.namelist() and archive.getinfo(name).file_size > limit:
            raise InvalidInput(
                f"{name}: {archive.getinfo(name).file_size:,} bytes unpacked, more than "
                f"{max_minutes:,} minutes at {rate} Hz can take"
            )


def _check_log_span(archive: zipfile.ZipFile, max_minutes: int) -> None:
    """The record headers' time span, read without keeping payloads (idle sleep mode is filled by
    the decoder for the whole span, however few records the file has)."""
    first = last = None
    with archive.open("log.bin") as log:
        while True:
            header = log.read(_HEADER.size)
            if len(header) < _HEADER.size:
                break
            separator, _, timestamp, size = _HEADER.unpack(header)
            if separator != _SEPARATOR:
                raise InvalidInput("log.bin: a record does not start with the 0x1E separator")
            log.read(size + 1)
            first = timestamp if first is None else min(first, timestamp)
            last = timestamp if last is None else max(last, timestamp)
    if first is None or last is None:
        raise InvalidInput("log.bin has no records")
    minutes = (last - first) // 60
    if minutes > max_minutes:
        raise InvalidInput(
            f"log.bin: its records span {minutes:,} minutes, longer than the maximum of {max_minutes:,}"
        )
