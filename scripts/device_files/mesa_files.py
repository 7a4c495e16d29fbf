"""NSRR/MESA Actiwatch epoch CSVs written from known counts, in the column layout NSRR ships."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

HEADER = (
    "mesaid,line,linetime,offwrist,activity,marker,whitelight,redlight,greenlight,bluelight,"
    "wake,interval,dayofweek,daybymidnight,daybynoon"
)


def mesa_csv_bytes(
    start: datetime,
    activity: Sequence[float | None],
    *,
    offwrist: Sequence[int] | None = None,
    lines: Sequence[int] | None = None,
) -> bytes:
    """One row per 30-s epoch from the naive local `start`; `None` activity is an empty cell."""
    numbers = list(lines) if lines is not None else list(range(1, len(activity) + 1))
    rows = [HEADER]
    for i, (line, count) in enumerate(zip(numbers, activity, strict=True)):
        moment = start + timedelta(seconds=30 * (line - numbers[0]))
        off = offwrist[i] if offwrist is not None else 0
        cell = "" if count is None else f"{count:g}"
        day = (moment.date() - start.date()).days + 1
        noon_day = ((moment - timedelta(hours=12)).date() - (start - timedelta(hours=12)).date()).days + 1
        rows.append(
            f"1234,{line},{moment:%H:%M:%S},{off},{cell},0,12.5,1.1,2.2,3.3,"
            f"{0 if count else 1},ACTIVE,{moment.isoweekday() % 7 + 1},{day},{noon_day}"
        )
    return ("\n".join(rows) + "\n").encode()
