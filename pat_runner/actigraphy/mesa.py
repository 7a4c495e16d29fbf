"""NSRR / MESA Actiwatch epoch CSVs → `RawRecording`.

The Multi-Ethnic Study of Atherosclerosis sleep exam, as the National Sleep Research Resource ships it
(`mesa/actigraphy/mesa-sleep-NNNN.csv`; data dictionary at sleepdata.org/datasets/mesa): one row per
30-s epoch of a Philips Respironics Actiwatch Spectrum, with the columns

    mesaid,line,linetime,offwrist,activity,marker,whitelight,redlight,greenlight,bluelight,
    wake,interval,dayofweek,daybymidnight,daybynoon

`line` numbers the epochs from 1, `linetime` is the device's clock time (`HH:MM:SS`) without a date,
`offwrist` is 1 when the watch was not worn, `activity` is the epoch's count (empty = no data).

* **Start.** The file has no date, so the request names `recording_start`: the local date
  (`2010-03-04`) of the first row, or its local date and time (`2010-03-04T20:30:00`), which must then
  agree with that row's `linetime`. It is read in the request's `timezone`.
* **Epochs** are placed by `line`: missing lines become missing epochs, and every row's `linetime`
  must be the clock time its line number gives (30 s per line from the first), so a file whose rows
  were re-sorted or cut is refused rather than misplaced. Device clocks do not follow daylight-saving
  changes, so the check is on the naive clock.
* **Missing and non-wear.** `offwrist = 1` epochs and empty `activity` cells are missing (NaN).
"""

from __future__ import annotations

import io
from datetime import datetime, timedelta

import numpy as np
import pandas as pd

from pat_runner.actigraphy.preprocess import RawRecording, load_zone
from pat_runner.actigraphy.readers import _check_span, _device, localize
from pat_runner.errors import InvalidInput

EPOCH_SECONDS = 30
REQUIRED_COLUMNS = ("line", "linetime", "offwrist", "activity")


def looks_like_mesa(first_line: str) -> bool:
    """Whether a header line is that of an NSRR/MESA actigraphy CSV."""
    columns = {cell.strip().lower() for cell in first_line.split(",")}
    return "mesaid" in columns and set(REQUIRED_COLUMNS) <= columns


def read_mesa_csv(data: bytes, *, recording_start: str, timezone: str, max_minutes: int) -> RawRecording:
    """Read a MESA epoch CSV; `recording_start` is the local date (or date and time) of its first row."""
    zone = load_zone(timezone)
    if not recording_start:
        raise InvalidInput(
            "recording_start: MESA actigraphy files carry clock times only; send the local date of the "
            "first row (e.g. 2010-03-04) as the form field recording_start"
        )
    try:
        table = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as exc:
        raise InvalidInput(f"the MESA CSV cannot be parsed: {str(exc)[:200]}") from None
    table.columns = [str(column).strip().lower() for column in table.columns]
    for column in REQUIRED_COLUMNS:
        if column not in table.columns:
            raise InvalidInput(f"line 1: the MESA CSV has no '{column}' column")
    if table.empty:
        raise InvalidInput("the MESA CSV has a header but no rows")
    _check_span(len(table), EPOCH_SECONDS, max_minutes)
    lines = _integers(table["line"], "line", minimum=1)
    order_ok = np.diff(lines) > 0
    if not order_ok.all():
        row = int(np.argmin(order_ok)) + 1
        raise InvalidInput(f"line {row + 2}: 'line' {lines[row]} does not increase")
    offwrist = _integers(table["offwrist"], "offwrist", minimum=0)
    if (offwrist > 1).any():
        row = int(np.argmax(offwrist > 1))
        raise InvalidInput(f"line {row + 2}: 'offwrist' must be 0 or 1, got {offwrist[row]}")
    text = table["activity"].astype(str).str.strip()
    activity = pd.to_numeric(text.where(text != ""), errors="coerce").to_numpy(dtype=np.float64, copy=True)
    bad = np.isnan(activity) & (text != "").to_numpy()
    if bad.any() or (activity < 0).any():
        row = int(np.argmax(bad | (activity < 0)))
        raise InvalidInput(f"line {row + 2}: 'activity' {text.iloc[row][:20]!r} is not a count")
    activity[offwrist == 1] = np.nan

    clock = pd.to_datetime(table["linetime"].astype(str).str.strip(), format="%H:%M:%S", errors="coerce")
    if clock.isna().any():
        row = int(np.argmax(clock.isna().to_numpy()))
        raise InvalidInput(f"line {row + 2}: 'linetime' {table['linetime'].iloc[row][:20]!r} is not HH:MM:SS")
    seconds_of_day = (clock.dt.hour * 3600 + clock.dt.minute * 60 + clock.dt.second).to_numpy(dtype=np.int64)
    naive_start = _start(recording_start, int(seconds_of_day[0]))
    index = lines - lines[0]
    expected = (seconds_of_day[0] + index * EPOCH_SECONDS) % 86_400
    wrong = expected != seconds_of_day
    if wrong.any():
        row = int(np.argmax(wrong))
        raise InvalidInput(
            f"line {row + 2}: 'linetime' {table['linetime'].iloc[row]} is not {EPOCH_SECONDS} s per line "
            f"after the first row (line {lines[0]} at {table['linetime'].iloc[0]})"
        )
    _check_span(int(index[-1]) + 1, EPOCH_SECONDS, max_minutes)
    values = np.full(int(index[-1]) + 1, np.nan)
    values[index] = activity
    start = localize(naive_start, zone, timezone, "recording_start")
    device = _device("Philips Respironics", "Actiwatch Spectrum", None)
    return RawRecording(
        start=start, timezone=timezone, epoch_seconds=EPOCH_SECONDS, values=values, device=device
    )


def _integers(column: pd.Series, name: str, *, minimum: int) -> np.ndarray:
    text = column.astype(str).str.strip()
    numbers = pd.to_numeric(text, errors="coerce")
    bad = (numbers.isna() | (numbers % 1 != 0) | (numbers < minimum)).to_numpy()
    if bad.any():
        row = int(np.argmax(bad))
        raise InvalidInput(f"line {row + 2}: '{name}' {text.iloc[row][:20]!r} is not an integer ≥ {minimum}")
    return numbers.to_numpy(dtype=np.int64)


def _start(recording_start: str, first_clock_seconds: int) -> datetime:
    text = recording_start.strip()
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInput(
            f"recording_start: {text[:40]!r} is not a date (2010-03-04) or a local date and time"
        ) from None
    if moment.tzinfo is not None:
        raise InvalidInput(
            "recording_start: give the local date and time without a UTC offset; the zone is `timezone`"
        )
    first_clock = timedelta(seconds=first_clock_seconds)
    if len(text) <= 10:
        return moment + first_clock
    given = timedelta(hours=moment.hour, minutes=moment.minute, seconds=moment.second)
    if given != first_clock or moment.microsecond:
        raise InvalidInput(
            f"recording_start: {moment.time().isoformat()} is not the first row's linetime "
            f"{(datetime.min + first_clock).time().isoformat()}"
        )
    return moment
