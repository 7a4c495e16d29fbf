"""Device export files written from known counts, in the layouts `pat_runner.actigraphy.readers` reads.

The layouts follow the real files in `../shared/data/actigraphy/` (README there), so a reader test can
check what it read against what was written.
"""

from __future__ import annotations

import sqlite3
import tempfile
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path

DOTNET_EPOCH = datetime(1, 1, 1)
SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "actigraphy"


def ticks(moment: datetime) -> int:
    """.NET ticks (100-ns units since 0001-01-01) of a naive date-time."""
    delta = moment - DOTNET_EPOCH
    return (delta.days * 86_400 + delta.seconds) * 10_000_000 + delta.microseconds * 10


def agd_bytes(
    start: datetime,
    epoch_seconds: int,
    counts: Sequence[float | None],
    *,
    epoch_indices: Sequence[int] | None = None,
    device: str = "GT3XPlus",
    serial: str = "TEST0000001",
    tables: Sequence[str] = ("settings", "data"),
) -> bytes:
    """An ActiLife `.agd` (SQLite) file; `epoch_indices` places rows on the epoch grid (gaps allowed)."""
    indices = list(epoch_indices) if epoch_indices is not None else list(range(len(counts)))
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "file.agd"
        connection = sqlite3.connect(path)
        if "settings" in tables:
            connection.execute(
                "CREATE TABLE settings (settingID INTEGER PRIMARY KEY, settingName VARCHAR(64), "
                "settingValue VARCHAR(8192))"
            )
            settings = {
                "softwarename": "ActiLife",
                "devicename": device,
                "deviceserial": serial,
                "epochlength": str(epoch_seconds),
                "startdatetime": str(ticks(start)),
                "epochcount": str(len(counts)),
            }
            connection.executemany(
                "INSERT INTO settings (settingName, settingValue) VALUES (?, ?)", settings.items()
            )
        if "data" in tables:
            connection.execute(
                "CREATE TABLE data (dataTimestamp INTEGER, axis1 REAL, axis2 REAL, axis3 REAL, steps REAL)"
            )
            rows = [
                (ticks(start + timedelta(seconds=index * epoch_seconds)), count, 0.0, 0.0, 0.0)
                for index, count in zip(indices, counts, strict=True)
            ]
            connection.executemany("INSERT INTO data VALUES (?, ?, ?, ?, ?)", rows)
        connection.commit()
        connection.close()
        return path.read_bytes()


def actilife_csv_bytes(
    start: datetime,
    epoch_seconds: int,
    counts: Sequence[float],
    *,
    date_format: str = "M/d/yyyy",
    columns: str | None = "Axis1,Axis2,Axis3,vectormagnitude,timestamp",
    serial: str = "TAS0000000001",
) -> bytes:
    """An ActiLife CSV export: the 10-line header, then rows in the given column layout
    (`None`: no column header, axis 1 first; `Date,Time,Axis1,…`; or `…,timestamp`)."""
    python_date = {"M/d/yyyy": "%-m/%-d/%Y", "dd-MM-yyyy": "%d-%m-%Y", "d/M/yyyy": "%-d/%-m/%Y"}[date_format]
    epoch = timedelta(seconds=epoch_seconds)
    lines = [
        "------------ Data File Created By ActiGraph GT3X+ ActiLife v6.13.3 Firmware v1.7.1 date format "
        f"{date_format} Filter Normal -----------",
        f"Serial Number: {serial}",
        f"Start Time {start:%H:%M:%S}",
        f"Start Date {start.strftime(python_date)}",
        f"Epoch Period (hh:mm:ss) {epoch_seconds // 3600:02d}:{epoch_seconds // 60 % 60:02d}:"
        f"{epoch_seconds % 60:02d}",
        "Download Time 00:32:29",
        f"Download Date {start.strftime(python_date)}",
        "Current Memory Address: 0",
        "Current Battery Voltage: 4.04     Mode = 12",
        "--------------------------------------------------",
    ]
    if columns is not None:
        lines.append(columns)
    for index, count in enumerate(counts):
        moment = start + index * epoch
        if columns is None:
            lines.append(f"{count:g},0,0")
        elif columns.startswith("Date,Time"):
            lines.append(f"{moment.strftime(python_date)},{moment:%H:%M:%S},{count:g},0,0")
        else:
            lines.append(f"{count:g},0,0,{count:g},{moment:%Y-%m-%d %H:%M:%S}")
    return ("\r\n".join(lines) + "\r\n").encode()


def tidy_csv_bytes(moments: Sequence[datetime], counts: Sequence[float], *, utc_suffix: bool) -> bytes:
    """A `timestamp,axis1,…` table such as `ActiSleepPlus-RawData-Day01.csv`."""
    lines = ["timestamp,axis1,axis2,axis3,steps"]
    for moment, count in zip(moments, counts, strict=True):
        stamp = moment.strftime("%Y-%m-%dT%H:%M:%S") + ("Z" if utc_suffix else "")
        lines.append(f"{stamp},{count:g},0,0,0")
    return ("\n".join(lines) + "\n").encode()


def awd_bytes(
    start: datetime, epoch_code: str, counts: Sequence[float], *, marker: bool = False, serial: str = "V00042"
) -> bytes:
    """An Actiwatch `.AWD` export: 7 header lines, then one count per line (optionally with a marker)."""
    lines = ["SUBJECT", f"{start:%d-%b-%Y}", f"{start:%H:%M}", epoch_code, "0", serial, "F"]
    lines += [
        f"{count:g} , M" if marker and index % 7 == 0 else f"{count:g}" for index, count in enumerate(counts)
    ]
    return ("\n".join(lines) + "\n").encode()
