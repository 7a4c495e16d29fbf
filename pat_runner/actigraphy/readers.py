"""Device export files → `RawRecording`: ActiGraph `.agd` and CSV exports, Actiwatch `.AWD`.

Formats (`../shared/data/actigraphy/README.md`; ActiGraph, "ActiLife data file formats"):

* **ActiGraph `.agd`** — an SQLite database: `settings(settingName, settingValue)` with `epochlength`
  (seconds), `startdatetime` (.NET ticks: 100-ns units since 0001-01-01), `devicename`, `deviceserial`;
  `data(dataTimestamp, axis1, …)` with one row per epoch, `axis1` the vertical-axis counts that NHANES and
  the classic sleep algorithms use.
* **ActiLife CSV export** — 10 header lines (`… date format M/d/yyyy …`, `Serial Number:`, `Start Time`,
  `Start Date`, `Epoch Period (hh:mm:ss)`, …), then epochs, with or without a column header line
  (`Axis1,Axis2,…` or `Date,Time,Axis1,…`); without one the first column is axis 1.
* **Tidy CSV** — a `timestamp` column and an `axis1` column, one row per epoch (the form R packages such as
  actigraph.sleepr write); the epoch is the most common step between timestamps, so one stray row cannot
  change it: rows off that epoch grid are a 422 naming their lines.
* **Actiwatch `.AWD`** — 7 header lines (name, start date `dd-Mon-yyyy`, start time, epoch code, age,
  serial, sex), then one count per line, optionally followed by a marker column.

A file's naive timestamps are local time in the client's `timezone` at the start, and later epochs
follow in elapsed time; rows are placed by their timestamps where the file has them, so gaps become
missing epochs. A device whose clock follows the zone jumps forward by the DST gap at the
spring-forward instant (01:59 → 03:00 in America/New_York): consecutive rows that are exactly one epoch
apart in real time across that transition are read as continuous, never as a gap; any other jump stays
a gap and nothing is shifted. A clock that goes back (fall-back) repeats times and is refused (422).
Timestamps that carry an offset (`…Z`) are absolute and used as such. The client's file name only
selects the format by its extension; it is never used as a path.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import re
import sqlite3
import tempfile
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import PurePath
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

from pat_runner.actigraphy.preprocess import (
    SUPPORTED_EPOCH_SECONDS,
    RawRecording,
    check_epoch_seconds,
    load_zone,
)
from pat_runner.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType

SQLITE_MAGIC = b"SQLite format 3\x00"
ACTILIFE_BANNER = "Data File Created By ActiGraph"
ACTILIFE_HEADER_LINES = 10
AWD_HEADER_LINES = 7
#: Actiwatch epoch codes (line 4 of an .AWD header) → seconds.
AWD_EPOCH_CODES = {"1": 15, "2": 30, "4": 60, "8": 120, "20": 300, "81": 2, "C1": 5}
DOTNET_EPOCH = datetime(1, 1, 1)
TICKS_PER_SECOND = 10_000_000
OFF_GRID_ROWS_NAMED = 5
NO_TIMEZONE_WARNING = (
    "no timezone was given: the file's clock times were read as UTC, but device clocks are usually "
    "local time; send the wearer's IANA zone (e.g. timezone=America/New_York) for correct clock-time "
    "metrics and nights"
)
SUPPORTED_FORMATS = "ActiGraph .agd, ActiGraph ActiLife CSV export, timestamp/axis1 CSV, Actiwatch .awd"
# Limits checked before any parser runs, so a hostile file costs time and memory in proportion to what a
# real one may hold: a header of 100,000 duplicate column names or millions of empty lines never
# reaches pandas.
MAX_LINE_CHARS = 4096
MAX_COLUMNS = 64
#: Lines a text file may have beyond its epochs (headers, a column line, blank lines at the end).
EXTRA_LINES = 32
MAX_FILENAME_CHARS = 255
# SQLite limits for an uploaded .agd: no value, statement or table beyond what an ActiLife file holds,
# and a read that runs too many virtual-machine steps is aborted.
AGD_TABLES = ("settings", "data")
AGD_COLUMNS = {"settings": ("settingName", "settingValue"), "data": ("dataTimestamp", "axis1")}
AGD_NUMERIC_TYPES = ("INT", "REAL", "FLOA", "DOUB", "NUMERIC", "DECIMAL")
AGD_MAX_SETTINGS = 1000
AGD_SQLITE_LIMITS = {
    sqlite3.SQLITE_LIMIT_LENGTH: 1_000_000,
    sqlite3.SQLITE_LIMIT_SQL_LENGTH: 100_000,
    sqlite3.SQLITE_LIMIT_COLUMN: 200,
    sqlite3.SQLITE_LIMIT_EXPR_DEPTH: 64,
    sqlite3.SQLITE_LIMIT_COMPOUND_SELECT: 4,
    sqlite3.SQLITE_LIMIT_FUNCTION_ARG: 8,
    sqlite3.SQLITE_LIMIT_ATTACHED: 0,
    sqlite3.SQLITE_LIMIT_TRIGGER_DEPTH: 1,
}
#: VM instructions between progress checks, and the most checks one file may use (≈ 2·10⁹ steps).
AGD_PROGRESS_STEP = 10_000
AGD_MAX_PROGRESS_CALLS = 200_000

_DOTNET_DATE_TOKENS = {"yyyy": "%Y", "MM": "%m", "M": "%m", "dd": "%d", "d": "%d", "MMM": "%b"}


def read_recording_file(
    data: bytes,
    filename: str,
    *,
    timezone: str,
    max_bytes: int,
    max_minutes: int,
    max_epochs: int | None = None,
) -> RawRecording:
    """Read an uploaded device export into a recording of per-epoch vertical-axis counts.

    Raises `PayloadTooLarge` (413) above `max_bytes`, `InvalidInput` for a file spanning more than
    `max_minutes` or holding more than `max_epochs` epochs (default: `max_minutes` of 1-s epochs), or
    with a line over `MAX_LINE_CHARS` or more than `MAX_COLUMNS` columns, `UnsupportedMediaType` (415)
    for a format that is not one of `SUPPORTED_FORMATS`, and `InvalidInput` (422) for a corrupt file,
    naming where. Error messages quote at most a few characters of the file.
    """
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"the file is {len(data):,} bytes, more than the maximum of {max_bytes:,}")
    if len(filename or "") > MAX_FILENAME_CHARS:
        raise InvalidInput(f"file name: longer than {MAX_FILENAME_CHARS} characters")
    zone = load_zone(timezone)
    if not data:
        raise InvalidInput("the file is empty")
    epochs_limit = max_minutes * 60 if max_epochs is None else max_epochs
    extension = PurePath(filename or "").suffix.lower()
    if data.startswith(SQLITE_MAGIC):
        return _read_agd(data, zone, timezone, max_minutes, epochs_limit)
    if extension == ".agd":
        raise InvalidInput("the .agd file is not an SQLite database (ActiLife .agd files are)")
    if b"\x00" in data[:4096]:
        raise UnsupportedMediaType(f"binary file of an unsupported format; supported: {SUPPORTED_FORMATS}")
    lines = _text_lines(data, epochs_limit + EXTRA_LINES)
    if lines and ACTILIFE_BANNER in lines[0]:
        return _read_actilife_csv(lines, zone, timezone, max_minutes)
    if extension == ".awd" or (extension not in {".csv", ".txt"} and _looks_like_awd(lines)):
        return _read_awd(lines, zone, timezone, max_minutes)
    header = [cell.strip().lower() for cell in lines[0].split(",")] if lines else []
    if "timestamp" in header and "axis1" in header:
        return _read_tidy_csv(lines, zone, timezone, max_minutes)
    raise UnsupportedMediaType(f"unrecognised file layout; supported: {SUPPORTED_FORMATS}")


def _text_lines(data: bytes, max_lines: int) -> list[str]:
    """The file's lines, after checking their number and length (both cheap C-level scans) so that
    neither a flood of short lines nor one huge line is split and parsed."""
    newlines = max(data.count(b"\n"), data.count(b"\r"))
    if newlines > max_lines:
        raise InvalidInput(
            f"the file has more than {max_lines:,} lines: more epochs than one recording may have"
        )
    text = data.decode("utf-8-sig", errors="replace")
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    lines = text.split("\n")
    if lines and not lines[-1]:
        lines.pop()
    if len(lines) > max_lines:
        raise InvalidInput(
            f"the file has more than {max_lines:,} lines: more epochs than one recording may have"
        )
    longest = max(map(len, lines), default=0)
    if longest > MAX_LINE_CHARS:
        row = next(i for i, line in enumerate(lines) if len(line) > MAX_LINE_CHARS)
        raise InvalidInput(f"line {row + 1}: longer than {MAX_LINE_CHARS:,} characters")
    return lines


def localize(naive: datetime, zone: ZoneInfo, name: str, where: str) -> datetime:
    """A device's naive local start time as an aware instant; nonexistent or repeated clock times
    (DST changes) are refused, because they do not say which instant the recording began."""
    aware = naive.replace(tzinfo=zone)
    first, second = aware.replace(fold=0).utcoffset(), aware.replace(fold=1).utcoffset()
    if first != second:
        exists = aware.astimezone(ZoneInfo("UTC")).astimezone(zone).replace(tzinfo=None) == naive
        problem = "occurs twice" if exists else "does not exist"
        raise InvalidInput(
            f"{where}: local time {naive.isoformat()} {problem} in {name} (daylight-saving change); "
            "the start instant is ambiguous; name a fixed-offset zone instead (e.g. Etc/GMT+5 for UTC-5)"
        )
    return aware


# --- ActiGraph .agd (SQLite) ---------------------------------------------------------------------


def _read_agd(data: bytes, zone: ZoneInfo, name: str, max_minutes: int, max_epochs: int) -> RawRecording:
    # sqlite3 opens files, not bytes: a private temporary file, read-only, removed afterwards.
    with tempfile.TemporaryDirectory(prefix="pat-agd-") as directory:
        path = os.path.join(directory, "upload.agd")
        with open(path, "wb") as handle:
            handle.write(data)
        try:
            connection = sqlite3.connect(f"{PurePath(path).as_uri()}?mode=ro&immutable=1", uri=True)
        except sqlite3.Error as exc:
            raise InvalidInput(f"the .agd file cannot be opened as SQLite ({exc})") from None
        try:
            _limit_agd_connection(connection)
            return _agd_recording(connection, zone, name, max_minutes, max_epochs)
        except sqlite3.Error as exc:
            reason = "it takes too long to read" if "interrupt" in str(exc) else str(exc)[:120]
            raise InvalidInput(f"the .agd file is not a readable ActiLife database ({reason})") from None
        except UnicodeDecodeError:
            # SQLite's own error text about a damaged schema can hold bytes that are not UTF-8.
            raise InvalidInput("the .agd file is not a readable ActiLife database (damaged schema)") from None
        finally:
            connection.close()


def _limit_agd_connection(connection: sqlite3.Connection) -> None:
    for limit, value in AGD_SQLITE_LIMITS.items():
        connection.setlimit(limit, value)
    calls = 0

    def progress() -> int:
        nonlocal calls
        calls += 1
        return int(calls > AGD_MAX_PROGRESS_CALLS)  # non-zero aborts the statement ("interrupted")

    connection.set_progress_handler(progress, AGD_PROGRESS_STEP)


def _check_agd_schema(connection: sqlite3.Connection) -> None:
    """Refuse a schema that could compute anything while we read: the two tables must be ordinary
    tables (not views or virtual tables), without generated or hidden columns, without triggers, and the
    columns we read must be declared, the numeric ones with a numeric type."""
    rows = connection.execute(
        "SELECT type, name, tbl_name, sql FROM sqlite_schema WHERE tbl_name IN (?, ?) OR name IN (?, ?)",
        (*AGD_TABLES, *AGD_TABLES),
    ).fetchall()
    for table in AGD_TABLES:
        kinds = [(kind, sql or "") for kind, name, _, sql in rows if name == table]
        if not kinds:
            raise InvalidInput(f"the .agd file has no '{table}' table")
        kind, sql = kinds[0]
        if kind != "table" or sql.lstrip().upper().startswith("CREATE VIRTUAL"):
            raise InvalidInput(f"the .agd file's '{table}' is not an ordinary table")
        columns = {
            str(name).lower(): (str(declared or "").upper(), hidden)
            for _, name, declared, _, _, _, hidden in connection.execute(f"PRAGMA table_xinfo({table})")
        }
        if any(hidden for _, hidden in columns.values()):
            raise InvalidInput(f"the .agd file's '{table}' table has generated or hidden columns")
        for column in AGD_COLUMNS[table]:
            if column.lower() not in columns:
                raise InvalidInput(f"the .agd file's '{table}' table has no '{column}' column")
        if table == "data":
            for column in AGD_COLUMNS["data"]:
                declared = columns[column.lower()][0]
                if not any(kind in declared for kind in AGD_NUMERIC_TYPES):
                    raise InvalidInput(f"data.{column}: must be declared with a numeric type")
    if any(kind == "trigger" for kind, *_ in rows):
        raise InvalidInput("the .agd file has triggers on its 'settings' or 'data' table")


def _agd_recording(
    connection: sqlite3.Connection, zone: ZoneInfo, name: str, max_minutes: int, max_epochs: int
) -> RawRecording:
    # An uploaded database is untrusted: its schema must not run functions, and only real tables count.
    connection.execute("PRAGMA trusted_schema = OFF")
    connection.text_factory = _decode_text
    connection.execute("PRAGMA cell_size_check = ON")
    _check_agd_schema(connection)
    (n_settings,) = connection.execute("SELECT count(*) FROM settings").fetchone()
    (n_rows,) = connection.execute("SELECT count(*) FROM data").fetchone()
    if n_settings > AGD_MAX_SETTINGS:
        raise InvalidInput(f"the .agd file has more than {AGD_MAX_SETTINGS:,} settings")
    if n_rows > max_epochs:
        raise InvalidInput(f"the .agd file has more than {max_epochs:,} epochs: longer than allowed")
    settings = dict(connection.execute("SELECT settingName, settingValue FROM settings").fetchall())
    epoch = _agd_int(settings, "epochlength")
    check_epoch_seconds(epoch, where="settings.epochlength")
    start_ticks = _agd_int(settings, "startdatetime")
    start = localize(_from_ticks(start_ticks, "settings.startdatetime"), zone, name, "settings.startdatetime")
    rows = connection.execute("SELECT dataTimestamp, axis1 FROM data ORDER BY dataTimestamp").fetchall()
    if not rows:
        raise InvalidInput("the .agd file has no epochs in its 'data' table")
    try:
        ticks = np.array([row[0] for row in rows], dtype=np.int64)
        counts = np.array([np.nan if row[1] is None else row[1] for row in rows], dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        raise InvalidInput("data: dataTimestamp and axis1 must be numbers") from None
    naive_start = _from_ticks(start_ticks, "settings.startdatetime")
    offsets = ticks - start_ticks
    # The DST correction is whole microseconds; sub-microsecond ticks stay for the epoch-grid check.
    offsets_us = offsets // 10
    offsets -= 10 * (
        offsets_us - _continuous_across_spring_forward(offsets_us, naive_start, zone, epoch * 1_000_000)
    )
    values = _place(
        offsets,
        epoch * TICKS_PER_SECOND,
        counts,
        epoch,
        lambda i: f"data row {i + 1}",
        max_minutes,
    )
    device = _device("ActiGraph", settings.get("devicename"), settings.get("deviceserial"))
    return RawRecording(start=start, timezone=name, epoch_seconds=epoch, values=values, device=device)


def _decode_text(raw: bytes) -> str:
    # Text cells of a damaged file may not be valid UTF-8; they only ever end up in error messages.
    return raw.decode("utf-8", errors="replace")


def _agd_int(settings: dict[str, str], key: str) -> int:
    raw = settings.get(key)
    try:
        return int(str(raw).strip())
    except ValueError:
        raise InvalidInput(f"settings.{key}: expected an integer, got {str(raw)[:20]!r}") from None


def _from_ticks(ticks: int, where: str) -> datetime:
    try:
        return DOTNET_EPOCH + timedelta(microseconds=ticks // 10)
    except OverflowError:
        raise InvalidInput(f"{where}: {ticks} is not a valid .NET tick count") from None


# --- CSV exports -----------------------------------------------------------------------------------


def _read_actilife_csv(lines: list[str], zone: ZoneInfo, name: str, max_minutes: int) -> RawRecording:
    header = lines[:ACTILIFE_HEADER_LINES]
    text = "\n".join(header)
    banner = header[0]
    date_format = _strptime_format(_search(r"date format\s+(\S+)", banner) or "M/d/yyyy", "line 1")
    start_time = _search(r"Start Time\s+(\d{1,2}:\d{2}:\d{2})", text)
    start_date = _search(r"Start Date\s+(\S+)", text)
    epoch_hms = re.search(r"Epoch Period \(hh:mm:ss\)\s+(\d{1,2}):(\d{2}):(\d{2})", text)
    if start_time is None or start_date is None or epoch_hms is None:
        raise InvalidInput(
            "ActiLife CSV header: lines 1-10 must give 'Start Time', 'Start Date' and "
            "'Epoch Period (hh:mm:ss)'"
        )
    try:
        naive_start = datetime.strptime(f"{start_date} {start_time}", f"{date_format} %H:%M:%S")
    except ValueError:
        raise InvalidInput(
            f"ActiLife CSV header: start {start_date} {start_time} does not match the file's date format"
        ) from None
    hours, minutes, seconds = (int(part) for part in epoch_hms.groups())
    epoch = hours * 3600 + minutes * 60 + seconds
    check_epoch_seconds(epoch, where="ActiLife CSV header 'Epoch Period'")
    start = localize(naive_start, zone, name, "ActiLife CSV header 'Start Date'/'Start Time'")

    body = lines[ACTILIFE_HEADER_LINES:]
    first_line = ACTILIFE_HEADER_LINES + 1
    has_columns = bool(body) and re.search(r"[A-Za-z]", body[0]) is not None
    _check_span(len(body) - int(has_columns), epoch, max_minutes)
    table = _read_table(body, header=has_columns, first_line=first_line)
    columns = {str(column).strip().lower(): column for column in table.columns}
    data_line = first_line + (1 if has_columns else 0)
    if not has_columns:
        counts = _numbers(table[table.columns[0]], "axis 1 (column 1)", data_line)
        values = counts
    else:
        if "axis1" not in columns:
            raise InvalidInput(f"line {first_line}: the column header has no 'Axis1' column")
        counts = _numbers(table[columns["axis1"]], "Axis1", data_line)
        stamps = _csv_timestamps(table, columns, date_format, data_line)
        if stamps is None:
            values = counts
        else:
            offsets = _continuous_across_spring_forward(
                _offsets_us(stamps, pd.Timestamp(naive_start)), naive_start, zone, epoch * 1_000_000
            )
            values = _place(
                offsets, epoch * 1_000_000, counts, epoch, lambda i: f"line {data_line + i}", max_minutes
            )
    device = _device(
        "ActiGraph", _search(r"ActiGraph\s+(\S+)", banner), _search(r"Serial Number:\s*(\S+)", text)
    )
    return RawRecording(start=start, timezone=name, epoch_seconds=epoch, values=values, device=device)


def _read_tidy_csv(lines: list[str], zone: ZoneInfo, name: str, max_minutes: int) -> RawRecording:
    _check_span(len(lines) - 1, min(SUPPORTED_EPOCH_SECONDS), max_minutes)
    # Only the two columns used: device tables carry many more (axes, steps, lux), each a string column.
    table = _read_table(
        lines, header=True, first_line=1, usecols=lambda name: name.strip().lower() in {"timestamp", "axis1"}
    )
    columns = {str(column).strip().lower(): column for column in table.columns}
    if table.empty:
        raise InvalidInput("the CSV file has a header but no rows")
    counts = _numbers(table[columns["axis1"]], "axis1", 2)
    raw = table[columns["timestamp"]].astype(str).str.strip()
    # Parsed as UTC first to find unreadable rows; naive stamps are taken back to wall-clock time below.
    stamps = pd.to_datetime(raw, format="ISO8601", errors="coerce", utc=True)
    bad = stamps.isna().to_numpy()
    if bad.any():
        row = int(np.argmax(bad))
        raise InvalidInput(f"line {row + 2}: {raw.iloc[row][:40]!r} is not an ISO-8601 timestamp")
    aware = raw.str.contains(r"(?:Z|[+-]\d{2}:?\d{2})$", regex=True).to_numpy()
    if aware.any() and not aware.all():
        row = int(np.argmax(aware != aware[0]))
        raise InvalidInput(f"line {row + 2}: timestamps must all have a UTC offset or all have none")
    if not aware.all():
        stamps = stamps.dt.tz_localize(None)
    first = stamps.iloc[0]
    offsets = _offsets_us(stamps, first)
    steps = np.diff(offsets)
    positive = steps[steps > 0]
    if not positive.size:
        raise InvalidInput("timestamp: need at least two distinct timestamps to know the epoch length")
    # The most common step (the smallest of equally common ones): a stray row cannot redefine the epoch.
    distinct, occurrences = np.unique(positive, return_counts=True)
    epoch_us = int(distinct[np.argmax(occurrences)])
    if epoch_us % 1_000_000:
        raise InvalidInput(f"timestamp: the epoch of {epoch_us / 1e6:g} s is not a whole number of seconds")
    epoch = epoch_us // 1_000_000
    check_epoch_seconds(epoch, where="timestamp (epoch inferred from the most common step)")
    if not aware.all():
        offsets = _continuous_across_spring_forward(offsets, first.to_pydatetime(), zone, epoch_us)
    values = _place(offsets, epoch_us, counts, epoch, lambda i: f"line {i + 2}", max_minutes)
    if aware.all():
        start = first.to_pydatetime().astimezone(zone)
    else:
        start = localize(first.to_pydatetime(), zone, name, "line 2")
    return RawRecording(start=start, timezone=name, epoch_seconds=epoch, values=values)


def _read_table(
    lines: list[str], *, header: bool, first_line: int, usecols: Callable[[str], bool] | None = None
) -> pd.DataFrame:
    if lines and lines[0].count(",") >= MAX_COLUMNS:
        raise InvalidInput(f"line {first_line}: more than {MAX_COLUMNS} columns")
    try:
        return pd.read_csv(
            io.StringIO("\n".join(lines)),
            header=0 if header else None,
            usecols=usecols,
            dtype=str,
            keep_default_na=False,
            skip_blank_lines=True,
            on_bad_lines="error",
        )
    except pd.errors.EmptyDataError:
        raise InvalidInput(f"line {first_line}: the file has no epochs") from None
    except (pd.errors.ParserError, csv.Error, ValueError) as exc:
        # pandas' message names the line and the field counts; cut in case it quotes more.
        reason = str(exc)[:160]
        raise InvalidInput(f"the CSV table from line {first_line} cannot be parsed: {reason}") from None


def _numbers(column: pd.Series, label: str, first_line: int) -> np.ndarray:
    text = column.astype(str).str.strip()
    numbers = pd.to_numeric(text.where(text != ""), errors="coerce").to_numpy(dtype=np.float64)
    unparsable = np.isnan(numbers) & (text != "").to_numpy()
    if unparsable.any():
        row = int(np.argmax(unparsable))
        raise InvalidInput(f"line {first_line + row}: {label} value {text.iloc[row][:32]!r} is not a number")
    if not numbers.size:
        raise InvalidInput(f"line {first_line}: the file has no epochs")
    return numbers


def _csv_timestamps(
    table: pd.DataFrame, columns: dict[str, str], date_format: str, first_line: int
) -> pd.Series | None:
    if "timestamp" in columns:
        raw = table[columns["timestamp"]].astype(str).str.strip()
        time_format = "ISO8601"
    elif "date" in columns and "time" in columns:
        raw = (
            table[columns["date"]].astype(str).str.strip()
            + " "
            + table[columns["time"]].astype(str).str.strip()
        )
        time_format = f"{date_format} %H:%M:%S"
    else:
        return None
    try:
        parsed = pd.to_datetime(raw, format=time_format, errors="coerce")
    except (ValueError, TypeError):
        # pandas refuses a column mixing UTC offsets outright instead of coercing row by row.
        raise InvalidInput(
            f"line {first_line}: ActiLife exports carry local times without a UTC offset"
        ) from None
    bad = parsed.isna().to_numpy()
    if bad.any():
        row = int(np.argmax(bad))
        raise InvalidInput(f"line {first_line + row}: {raw.iloc[row][:40]!r} is not a date and time")
    if parsed.dt.tz is not None:
        raise InvalidInput(f"line {first_line}: ActiLife exports carry local times without a UTC offset")
    return parsed


def _offsets_us(stamps: pd.Series, start: pd.Timestamp) -> np.ndarray:
    return ((stamps - start) // pd.Timedelta(microseconds=1)).to_numpy(dtype=np.int64)


def _strptime_format(dotnet: str, where: str) -> str:
    """A .NET date pattern such as `M/d/yyyy` or `dd-MM-yyyy` as a `strptime` format."""
    parts = re.findall(r"y+|M+|d+|[^yMd]+", dotnet)
    converted = []
    for part in parts:
        if part[0] in "yMd":
            if part not in _DOTNET_DATE_TOKENS:
                raise InvalidInput(f"{where}: unsupported date format {dotnet!r}")
            converted.append(_DOTNET_DATE_TOKENS[part])
        else:
            converted.append(part.replace("%", "%%"))
    return "".join(converted)


# --- Actiwatch .AWD ------------------------------------------------------------------------------


def _looks_like_awd(lines: list[str]) -> bool:
    return (
        len(lines) > AWD_HEADER_LINES
        and re.fullmatch(r"\d{1,2}-[A-Za-z]{3}-\d{4}", lines[1].strip()) is not None
        and lines[3].strip().upper() in AWD_EPOCH_CODES
    )


def _read_awd(lines: list[str], zone: ZoneInfo, name: str, max_minutes: int) -> RawRecording:
    if len(lines) <= AWD_HEADER_LINES:
        raise InvalidInput(f"the .awd file has {len(lines)} lines; it needs a 7-line header and epochs")
    date_text, time_text, code = (lines[i].strip() for i in (1, 2, 3))
    try:
        day = datetime.strptime(date_text, "%d-%b-%Y")
    except ValueError:
        raise InvalidInput(f"line 2: start date {date_text[:20]!r} is not like 01-Jan-2018") from None
    clock = None
    for pattern in ("%H:%M", "%H:%M:%S"):
        with contextlib.suppress(ValueError):
            clock = datetime.strptime(time_text, pattern)
    if clock is None:
        raise InvalidInput(f"line 3: start time {time_text[:20]!r} is not like 08:30")
    if code.upper() not in AWD_EPOCH_CODES:
        raise InvalidInput(
            f"line 4: epoch code {code[:8]!r} is not one of {', '.join(AWD_EPOCH_CODES)} "
            "(1 = 15 s, 2 = 30 s, 4 = 1 min, …)"
        )
    epoch = AWD_EPOCH_CODES[code.upper()]
    check_epoch_seconds(epoch, where=f"line 4 (epoch code {code})")
    naive_start = day.replace(hour=clock.hour, minute=clock.minute, second=clock.second)
    start = localize(naive_start, zone, name, "lines 2-3")

    body = lines[AWD_HEADER_LINES:]
    # A count, optionally followed by a marker (e.g. "M") or further columns: the count comes first.
    while body and not body[-1].strip():
        body = body[:-1]
    _check_span(len(body), epoch, max_minutes)
    first_fields = pd.Series(body, dtype=str).str.extract(r"^\s*([^,\s]*)", expand=False).fillna("")
    values = _numbers(first_fields, "activity count", AWD_HEADER_LINES + 1)
    device = _device("Philips Respironics", "Actiwatch", lines[5])
    return RawRecording(start=start, timezone=name, epoch_seconds=epoch, values=values, device=device)


# --- shared ------------------------------------------------------------------------------------


def _place(
    offsets: np.ndarray,
    per_epoch: int,
    counts: np.ndarray,
    epoch: int,
    row_label: Callable[[int], str],
    max_minutes: int,
) -> np.ndarray:
    """Counts placed on the epoch grid by their time offsets from the start; absent epochs are NaN."""
    off_grid = np.flatnonzero((offsets < 0) | (offsets % per_epoch != 0))
    if off_grid.size:
        named = ", ".join(row_label(int(row)) for row in off_grid[:OFF_GRID_ROWS_NAMED])
        more = (
            f" and {off_grid.size - OFF_GRID_ROWS_NAMED:,} more"
            if off_grid.size > OFF_GRID_ROWS_NAMED
            else ""
        )
        raise InvalidInput(
            f"{named}{more}: the timestamp is not on the {epoch}-s epoch grid that starts at the "
            f"recording's start ({off_grid.size:,} row(s) off the grid)"
        )
    index = offsets // per_epoch
    not_increasing = np.diff(index) <= 0
    if not_increasing.any():
        row = int(np.argmax(not_increasing)) + 1
        raise InvalidInput(f"{row_label(row)}: the timestamp repeats or goes back in time")
    _check_span(int(index[-1]) + 1, epoch, max_minutes)
    values = np.full(int(index[-1]) + 1, np.nan)
    values[index] = counts
    return values


def _continuous_across_spring_forward(
    offsets_us: np.ndarray, naive_start: datetime, zone: ZoneInfo, epoch_us: int
) -> np.ndarray:
    """Elapsed offsets of naive local timestamps, with a clock that followed a spring-forward read as
    continuous: where two consecutive rows are exactly one epoch apart in real time but one epoch plus
    the zone's DST gap apart on the clock, the gap is taken out of every later offset."""
    if offsets_us.size < 2:
        return offsets_us
    naive = pd.DatetimeIndex(pd.Timestamp(naive_start) + pd.to_timedelta(offsets_us, unit="us"))
    # Clock times that do not exist or occur twice in the zone give NaT: they prove nothing here.
    instants = naive.tz_localize(zone, nonexistent="NaT", ambiguous="NaT")
    valid = ~instants.isna()
    if valid.all() and instants[0] - instants[-1] == naive[0] - naive[-1]:
        return offsets_us
    utc_us = np.where(valid, instants.as_unit("us").asi8, 0)
    elapsed = np.diff(utc_us)
    clock = np.diff(offsets_us)
    pair = valid[:-1] & valid[1:]
    jumps = np.flatnonzero(pair & (elapsed == epoch_us) & (clock > epoch_us))
    if not jumps.size:
        return offsets_us
    shift = np.zeros(offsets_us.size, dtype=np.int64)
    np.add.at(shift, jumps + 1, clock[jumps] - elapsed[jumps])
    return offsets_us - np.cumsum(shift)


def _check_span(epochs: int, epoch: int, maximum: int) -> None:
    # Checked here as well as in preprocessing so a hostile timestamp cannot make us allocate a huge grid.
    minutes = -(-epochs * epoch // 60)
    if minutes > maximum:
        raise InvalidInput(
            f"the file spans {minutes:,} minutes, longer than the maximum of {maximum:,}; send it in parts"
        )


def _device(manufacturer: str, model: object, serial: object) -> dict[str, str]:
    """The wearable as FHIR `Device` fields (`fhir.DeviceInfo`, at most 128 characters each)."""
    device = {"manufacturer": manufacturer}
    for key, value in (("model", model), ("serial", serial)):
        text = str(value).strip() if value is not None else ""
        if text:
            device[key] = text[:128]
    return device


def _search(pattern: str, text: str) -> str | None:
    match = re.search(pattern, text)
    return match.group(1) if match else None
