"""Recording → minute grid in absolute time → missing/non-wear mask → week windows → standardization.

The rules (docs/architecture.md, "Decisions so far" and "Model numerics"):

* **Minute grid.** Epochs of any divisor of 60 s are summed to whole UTC minutes. A minute is missing
  (NaN) when any of its epochs is null/NaN or absent — the recording starts or ends inside it — so
  every observed minute is a full count and never an under-count. Epochs longer than a minute are
  rejected (422): splitting a 2-minute count over two minutes would invent data PAT never saw.
* **Start alignment.** The grid starts at the UTC minute containing `start`. A `start` that is not on
  an epoch boundary of that minute (e.g. 10:00:07 with 15-s epochs) is rounded to the nearest one,
  with a warning; the offset of `start` defines the instant, the IANA zone only the local clock.
* **Time zones.** The grid is elapsed time: a week is always 10,080 minutes. `minutes` carries the
  local clock of the IANA zone (`zoneinfo`), so a spring-forward day has 1,380 local minutes and a
  fall-back day 1,500. A `start` whose non-zero offset disagrees with the zone is accepted with a
  warning (a UTC `Z` start is normal and not warned about).
* **Non-wear.** Devices record non-wear as 0 counts. A run of exact zeros of at least
  `settings.nonwear_zero_run_minutes` is marked missing (off-wrist). The default, one day, is far
  longer than the 60–90 min zero runs of the hip-worn, waking-hours rules (Troiano et al. 2008, Med Sci
  Sports Exerc 40:181; Choi et al. 2011, Med Sci Sports Exerc 43:357), because PAT's NHANES training
  data keep nightly zeros as zeros: only a whole day without a single count is taken as not worn.
  The clinical metrics apply one of those shorter rules on top (`pat_runner.actigraphy.wear`).
* **Windows.** PAT reads exactly one week (10,080 minutes). A shorter recording is padded at its end
  and flagged. A longer one is cut into weeks every `settings.window_stride_minutes`; when the last
  week ends before the recording does, the tail gets one more week aligned to the recording's end if
  the tail is at least `settings.min_recording_minutes` long (enough to be a recording on its own),
  otherwise the tail is left out of the windows with a warning (the metrics still use it).
* **Standardization.** Per-recording z-score by default: mean and population standard deviation
  (ddof=0, as scikit-learn's `StandardScaler`, which the PAT notebooks use) over the observed minutes.
  With a cohort scaler, `(x - mean_[t]) / scale_[t]` per minute-of-window `t`. A recording with zero
  variance gets scale 1 — scikit-learn's rule for constant features (`_handle_zeros_in_scale`) — so it
  standardizes to zeros, with a warning. Missing and padded minutes become 0, the standardized mean.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cache, cached_property
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from pat_runner.errors import InvalidInput
from pat_runner.model import WEEK_MINUTES
from pat_runner.settings import Settings

#: Bump whenever the same input gives different outputs or the cached result (`ComputedResult`) changes
#: shape: it is part of the result-cache key, so pods of adjacent releases never read each other's entries.
PIPELINE_VERSION = "3"
SUPPORTED_EPOCH_SECONDS = tuple(s for s in range(1, 61) if 60 % s == 0)
_CANONICAL_FORMAT = "pat-minutes/1"
_CANONICAL_NAN = np.frombuffer(b"\x00\x00\x00\x00\x00\x00\xf8\x7f", dtype="<f8")[0]

Standardization = Literal["per_recording", "cohort_scaler"]


@dataclass(frozen=True)
class RawRecording:
    """Per-epoch activity as a client or a device file describes it (NaN or None = missing)."""

    start: datetime
    timezone: str
    epoch_seconds: int
    values: Sequence[float | None] | np.ndarray
    unit: str = "counts"
    subject: str | None = None
    device: dict[str, str] | None = None


class QualityReport(BaseModel):
    """How much of the recording PAT and the metrics could use, and how it was prepared."""

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "total_minutes": 10_080,
                "observed_minutes": 10_020,
                "missing_minutes": 60,
                "missing_fraction": 0.006,
                "nonwear_minutes": 0,
                "longest_missing_run_minutes": 60,
                "padded_minutes": 0,
                "dropped_minutes": 0,
                "windows": 1,
                "window_stride_minutes": 10_080,
                "standardization": "per_recording",
                "epoch_seconds": 60,
                "timezone": "America/New_York",
                "start": "2024-03-04T05:00:00Z",
                "end": "2024-03-11T05:00:00Z",
            }
        }
    )

    total_minutes: int = Field(description="Elapsed minutes from the first to the last minute of the grid.")
    observed_minutes: int = Field(description="Minutes with a complete count.")
    missing_minutes: int = Field(
        description="Minutes without a complete count: null epochs, partial minutes at the ends, non-wear."
    )
    missing_fraction: float = Field(description="missing_minutes / total_minutes.", ge=0, le=1)
    nonwear_minutes: int = Field(
        description="Of the missing minutes, those in runs of zero counts long enough to be non-wear."
    )
    longest_missing_run_minutes: int = Field(description="Longest run of consecutive missing minutes.")
    padded_minutes: int = Field(
        description="Minutes added after a recording shorter than a week to fill PAT's week window."
    )
    dropped_minutes: int = Field(
        description="Minutes at the end not covered by any PAT window (too short for a window of their own)."
    )
    windows: int = Field(description="Number of week windows (10,080 minutes each) given to PAT.")
    window_stride_minutes: int = Field(description="Minutes between the starts of consecutive windows.")
    standardization: Standardization = Field(
        description="`per_recording` z-score, or the `cohort_scaler` stored with the model."
    )
    epoch_seconds: int = Field(description="Epoch length of the input before summing to minutes.")
    timezone: str = Field(description="IANA zone used for the local clock.")
    start: datetime = Field(description="Start of the first minute of the grid (UTC).")
    end: datetime = Field(description="End of the last minute of the grid, exclusive (UTC).")


@dataclass(frozen=True)
class Preprocessed:
    """The prepared recording: what the metrics, PAT and the cache key are computed from.

    Everything a cache hit needs (the key's canonical bytes, the quality report, the checks and their
    warnings) is computed up front; the local-clock series (`minutes`) and the standardized windows
    (`windows`) only when first used, since only a cache miss uses them.
    """

    #: Start of each window (UTC).
    window_starts: list[datetime]
    window_observed_fraction: list[float]
    quality: QualityReport
    warnings: list[str]
    _canonical: bytes = field(repr=False)
    #: counts per minute of the grid (NaN = missing), the zone and unit they are read in
    _values: np.ndarray = field(repr=False)
    _zone: ZoneInfo = field(repr=False)
    _unit: str = field(repr=False)
    #: window starts (minutes into the grid) and padding minutes at the end
    _starts: np.ndarray = field(repr=False)
    _padded: int = field(repr=False)
    #: (mean, scale) of every minute, or the cohort scaler's per-minute-of-week arrays
    _center: float | np.ndarray = field(repr=False)
    _scale: float | np.ndarray = field(repr=False)

    def canonical_bytes(self) -> bytes:
        """Deterministic encoding of the minutes, start, zone, unit and windowing settings.

        Two requests describing the same minutes (e.g. 15-s epochs and their 60-s sums) give the same
        bytes. It is the input of the result-cache key, never stored or logged itself.
        """
        return self._canonical

    @cached_property
    def minutes(self) -> pd.Series:
        """Counts per minute (NaN = missing), indexed by the local clock of the recording's zone."""
        index = pd.date_range(start=self.quality.start, periods=len(self._values), freq="min")
        return pd.Series(self._values, index=index.tz_convert(self._zone), name=self._unit)

    @cached_property
    def windows(self) -> np.ndarray:
        """Standardized week windows, float32 `(n_windows, 10080)`, missing and padded minutes 0."""
        padded = np.concatenate([self._values, np.full(self._padded, np.nan)])
        gather = self._starts[:, None] + np.arange(WEEK_MINUTES)[None, :]
        if isinstance(self._center, np.ndarray):
            # the cohort scaler is per minute of the week: applied to the gathered windows
            standardized = (padded[gather] - self._center) / self._scale
        else:
            standardized = ((padded - self._center) / self._scale)[gather]
        return np.nan_to_num(standardized, nan=0.0).astype(np.float32)


#: Largest value one epoch may hold (ActiGraph counts per minute stay below 10⁵).
MAX_EPOCH_VALUE = 1e7
#: Longest IANA zone name accepted (the longest real one has 32 characters).
MAX_ZONE_CHARS = 64


@cache
def known_zones() -> frozenset[str]:
    return frozenset(available_timezones())


def load_zone(name: str, *, where: str = "timezone") -> ZoneInfo:
    """The IANA zone `name`, or a 422 that names the field and never echoes the value.

    Checked against the zone list first: `ZoneInfo` would open any path under the zone directory
    (`America` is a directory, `Etc` too) and fail with an OSError."""
    if not isinstance(name, str) or len(name) > MAX_ZONE_CHARS or name not in known_zones():
        raise InvalidInput(f"{where}: not a known IANA time zone name (e.g. 'America/New_York')")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError, OSError):
        raise InvalidInput(f"{where}: not a known IANA time zone name (e.g. 'America/New_York')") from None


def check_epoch_seconds(epoch_seconds: int, *, where: str = "epoch_seconds") -> None:
    """Epochs must tile a minute exactly; longer ones cannot be split into minute counts."""
    if isinstance(epoch_seconds, bool) or not isinstance(epoch_seconds, int | np.integer):
        raise InvalidInput(f"{where}: must be a whole number of seconds, got {epoch_seconds!r}")
    if epoch_seconds > 60:
        raise InvalidInput(
            f"{where}: epochs of {epoch_seconds} s are longer than a minute; PAT needs counts per minute "
            "and a longer epoch cannot be split without inventing data"
        )
    if epoch_seconds not in SUPPORTED_EPOCH_SECONDS:
        raise InvalidInput(
            f"{where}: {epoch_seconds} s does not divide a minute; supported epochs are "
            f"{', '.join(map(str, SUPPORTED_EPOCH_SECONDS))} s"
        )


def preprocess(
    recording: RawRecording,
    *,
    scaler: tuple[np.ndarray, np.ndarray] | None = None,
    settings: Settings,
) -> Preprocessed:
    """Prepare one recording for the metrics and PAT (rules in the module docstring).

    Raises `InvalidInput` (422) for anything a client sent that cannot be analysed, naming what and where.
    """
    zone = load_zone(recording.timezone)
    check_epoch_seconds(recording.epoch_seconds)
    epoch = int(recording.epoch_seconds)
    values = _epoch_values(recording.values)
    warnings: list[str] = []

    grid_start, lead_epochs = _align_start(recording.start, epoch, warnings)
    _check_offset_matches_zone(recording.start, zone, recording.timezone, warnings)
    per_minute = 60 // epoch
    total_minutes = -(-(lead_epochs + len(values)) // per_minute)
    _check_length(total_minutes, settings)

    sums = _minute_sums(values, lead_epochs, per_minute, total_minutes)
    canonical = _canonical_bytes(sums, grid_start, recording, settings)
    minutes, nonwear, longest_run = _mask_and_check(sums, grid_start, settings, warnings)
    missing = np.isnan(minutes)

    starts, padded, dropped = _window_starts(total_minutes, settings)
    observed_fraction = _window_coverage(missing, starts, padded, dropped, total_minutes, settings, warnings)
    center, scale, standardization = _standardization(minutes, missing, scaler, warnings)

    grid_end = grid_start + timedelta(minutes=total_minutes)
    quality = QualityReport(
        total_minutes=total_minutes,
        observed_minutes=int(total_minutes - missing.sum()),
        missing_minutes=int(missing.sum()),
        missing_fraction=float(missing.mean()),
        nonwear_minutes=nonwear,
        longest_missing_run_minutes=longest_run,
        padded_minutes=padded,
        dropped_minutes=dropped,
        windows=len(starts),
        window_stride_minutes=settings.window_stride_minutes,
        standardization=standardization,
        epoch_seconds=epoch,
        timezone=recording.timezone,
        start=grid_start,
        end=grid_end,
    )
    return Preprocessed(
        window_starts=[grid_start + timedelta(minutes=int(s)) for s in starts],
        window_observed_fraction=[float(f) for f in observed_fraction],
        quality=quality,
        warnings=warnings,
        _canonical=canonical,
        _values=minutes,
        _zone=zone,
        _unit=recording.unit,
        _starts=starts,
        _padded=padded,
        _center=center,
        _scale=scale,
    )


def _mask_and_check(
    sums: np.ndarray, grid_start: datetime, settings: Settings, warnings: list[str]
) -> tuple[np.ndarray, int, int]:
    """Minutes with day-long zero runs masked as non-wear, after checking what is left is enough:
    (minutes, non-wear minutes, longest missing run)."""
    minutes, nonwear = _mask_nonwear(sums, settings.nonwear_zero_run_minutes)
    if nonwear:
        warnings.append(
            f"{nonwear:,} minutes in runs of at least {settings.nonwear_zero_run_minutes:,} zero-count "
            "minutes were treated as non-wear (missing)"
        )
    missing = np.isnan(minutes)
    run_start, longest_run = _longest_run(missing)
    _check_missing(missing, nonwear, run_start, longest_run, grid_start, settings)
    return minutes, nonwear, longest_run


def _standardization(
    minutes: np.ndarray,
    missing: np.ndarray,
    scaler: tuple[np.ndarray, np.ndarray] | None,
    warnings: list[str],
) -> tuple[float | np.ndarray, float | np.ndarray, Standardization]:
    """(center, scale, kind) of the z-score: per recording, or the model's cohort scaler (checked here,
    so a bad scaler fails before anything is computed)."""
    if scaler is None:
        mean, std = _zscore_parameters(minutes[~missing], warnings)
        return mean, std, "per_recording"
    mean, scale = _checked_cohort_scaler(scaler)
    return mean, scale, "cohort_scaler"


def _window_coverage(
    missing: np.ndarray,
    starts: np.ndarray,
    padded: int,
    dropped: int,
    total_minutes: int,
    settings: Settings,
    warnings: list[str],
) -> np.ndarray:
    """Observed fraction of each week window; warns about padding, a dropped tail and thin windows."""
    if padded:
        warnings.append(
            f"the recording is {total_minutes:,} minutes, shorter than PAT's week of {WEEK_MINUTES:,}: "
            f"{padded:,} minutes of padding were added at the end"
        )
    if dropped:
        warnings.append(
            f"the last {dropped:,} minutes are shorter than {settings.min_recording_minutes:,} minutes and "
            "are not in any PAT window (the metrics use them)"
        )
    observed = np.concatenate([~missing, np.zeros(padded, dtype=bool)])
    observed_per_window = observed[starts[:, None] + np.arange(WEEK_MINUTES)[None, :]].sum(axis=1)
    # Padding is already reported; warn only about windows whose recorded minutes are mostly missing.
    recorded_per_window = WEEK_MINUTES - np.maximum(starts + WEEK_MINUTES - total_minutes, 0)
    recorded_observed = observed_per_window / recorded_per_window
    for index in np.flatnonzero(recorded_observed < 1 - settings.max_missing_fraction):
        warnings.append(
            f"window {index} has only {recorded_observed[index]:.0%} observed minutes; "
            "its PAT outputs rest on little data"
        )
    return observed_per_window / WEEK_MINUTES


def _epoch_values(values: Sequence[float | None] | np.ndarray) -> np.ndarray:
    try:
        # None becomes NaN under a float dtype, which is the missing marker from here on.
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise InvalidInput("values: every value must be a number or null") from None
    if array.ndim != 1:
        raise InvalidInput(f"values: must be a flat list, got an array of shape {array.shape}")
    if array.size == 0:
        raise InvalidInput("values: the recording has no epochs")
    infinite = np.flatnonzero(np.isinf(array))
    if infinite.size:
        raise InvalidInput(f"values[{infinite[0]}]: infinite values are not activity counts")
    negative = np.flatnonzero(array < 0)
    if negative.size:
        raise InvalidInput(
            f"values[{negative[0]}]: negative; activity counts are >= 0 "
            f"({negative.size:,} negative values in all)"
        )
    # Far above any device's counts per epoch, far below where sums and means overflow.
    huge = np.flatnonzero(array > MAX_EPOCH_VALUE)
    if huge.size:
        raise InvalidInput(
            f"values[{huge[0]}]: above {MAX_EPOCH_VALUE:,.0f}, not a physical activity count per epoch "
            f"({huge.size:,} such values in all)"
        )
    return array


def _align_start(start: datetime, epoch: int, warnings: list[str]) -> tuple[datetime, int]:
    """The UTC minute the grid starts at, and how many epochs of that minute precede `start`."""
    if not isinstance(start, datetime):
        raise InvalidInput(f"start: expected a date-time, got {type(start).__name__}")
    if start.tzinfo is None or start.utcoffset() is None:
        raise InvalidInput(
            f"start: {start.isoformat()} has no UTC offset; send ISO-8601 with an offset, "
            "e.g. 2024-03-04T00:00:00-05:00"
        )
    start_utc = start.astimezone(UTC)
    minute = start_utc.replace(second=0, microsecond=0)
    into_minute = (start_utc - minute).total_seconds()
    lead_epochs = round(into_minute / epoch)
    if not math.isclose(lead_epochs * epoch, into_minute):
        aligned = minute + timedelta(seconds=lead_epochs * epoch)
        warnings.append(
            f"start {start_utc.isoformat()} is not on a {epoch}-s epoch boundary of its minute; "
            f"read as {aligned.isoformat()}"
        )
    per_minute = 60 // epoch
    if lead_epochs == per_minute:
        return minute + timedelta(minutes=1), 0
    return minute, lead_epochs


def _check_offset_matches_zone(start: datetime, zone: ZoneInfo, name: str, warnings: list[str]) -> None:
    offset = start.utcoffset()
    zone_offset = start.astimezone(zone).utcoffset()
    if offset and offset != zone_offset:
        warnings.append(
            f"start offset {_format_offset(offset)} differs from {name}'s offset "
            f"{_format_offset(zone_offset)} at that instant; the offset defines the instant, "
            f"{name} the local clock"
        )


def _format_offset(offset: timedelta | None) -> str:
    total = int((offset or timedelta()).total_seconds() // 60)
    sign = "-" if total < 0 else "+"
    return f"{sign}{abs(total) // 60:02d}:{abs(total) % 60:02d}"


def _check_length(total_minutes: int, settings: Settings) -> None:
    if total_minutes < settings.min_recording_minutes:
        raise InvalidInput(
            f"values: the recording is {total_minutes:,} minutes, shorter than the minimum of "
            f"{settings.min_recording_minutes:,}"
        )
    if total_minutes > settings.max_recording_minutes:
        raise InvalidInput(
            f"values: the recording is {total_minutes:,} minutes, longer than the maximum of "
            f"{settings.max_recording_minutes:,}; send it in parts"
        )


def _minute_sums(values: np.ndarray, lead_epochs: int, per_minute: int, total_minutes: int) -> np.ndarray:
    epochs = np.full(total_minutes * per_minute, np.nan)
    epochs[lead_epochs : lead_epochs + values.size] = values
    # A plain sum propagates NaN: a minute with any missing or absent epoch is missing.
    return epochs.reshape(total_minutes, per_minute).sum(axis=1)


def _runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Starts and lengths of the runs of True in `mask`."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    starts = np.flatnonzero(edges == 1)
    return starts, np.flatnonzero(edges == -1) - starts


def _mask_nonwear(sums: np.ndarray, min_zero_run: int) -> tuple[np.ndarray, int]:
    if min_zero_run <= 0:
        return sums, 0
    starts, lengths = _runs(sums == 0)
    long_runs = lengths >= min_zero_run
    if not long_runs.any():
        return sums, 0
    change = np.zeros(sums.size + 1, dtype=np.int64)
    np.add.at(change, starts[long_runs], 1)
    np.add.at(change, starts[long_runs] + lengths[long_runs], -1)
    nonwear = np.cumsum(change[:-1]) > 0
    return np.where(nonwear, np.nan, sums), int(nonwear.sum())


def _longest_run(mask: np.ndarray) -> tuple[int, int]:
    starts, lengths = _runs(mask)
    if not lengths.size:
        return 0, 0
    longest = int(np.argmax(lengths))
    return int(starts[longest]), int(lengths[longest])


def _check_missing(
    missing: np.ndarray,
    nonwear: int,
    run_start: int,
    longest_run: int,
    grid_start: datetime,
    settings: Settings,
) -> None:
    fraction = float(missing.mean())
    if fraction <= settings.max_missing_fraction:
        return
    run_at = grid_start + timedelta(minutes=run_start)
    nonwear_note = f", {nonwear:,} of them non-wear zero runs" if nonwear else ""
    raise InvalidInput(
        f"values: {fraction:.1%} of the {missing.size:,} minutes are missing{nonwear_note}, more than the "
        f"maximum of {settings.max_missing_fraction:.0%}; the longest gap is {longest_run:,} minutes from "
        f"minute {run_start:,} ({run_at:%Y-%m-%dT%H:%MZ})"
    )


def _window_starts(total_minutes: int, settings: Settings) -> tuple[np.ndarray, int, int]:
    """Window starts (minutes into the grid), padded minutes and minutes left out at the end."""
    if total_minutes <= WEEK_MINUTES:
        return np.array([0]), WEEK_MINUTES - total_minutes, 0
    starts = np.arange(0, total_minutes - WEEK_MINUTES + 1, settings.window_stride_minutes)
    tail = total_minutes - (int(starts[-1]) + WEEK_MINUTES)
    if tail == 0:
        return starts, 0, 0
    if tail >= settings.min_recording_minutes:
        return np.append(starts, total_minutes - WEEK_MINUTES), 0, 0
    return starts, 0, tail


def _zscore_parameters(observed: np.ndarray, warnings: list[str]) -> tuple[float, float]:
    mean = float(observed.mean())
    std = float(observed.std())
    if std == 0:
        warnings.append("every observed minute has the same count; the standardized input is all zeros")
        std = 1.0
    return mean, std


def _checked_cohort_scaler(scaler: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    mean, scale = (np.asarray(part, dtype=np.float64) for part in scaler)
    if mean.shape != (WEEK_MINUTES,) or scale.shape != (WEEK_MINUTES,):
        raise ValueError(f"the cohort scaler must have mean_ and scale_ of shape ({WEEK_MINUTES},)")
    if not (np.isfinite(mean).all() and np.isfinite(scale).all() and (scale > 0).all()):
        raise ValueError("the cohort scaler has non-finite values or a scale <= 0")
    return mean, scale


def _canonical_bytes(
    sums: np.ndarray, grid_start: datetime, recording: RawRecording, settings: Settings
) -> bytes:
    header = {
        "format": _CANONICAL_FORMAT,
        "start": grid_start.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "timezone": recording.timezone,
        "unit": recording.unit,
        "minutes": int(sums.size),
        # Settings that change the outputs for the same minutes.
        "window_stride_minutes": settings.window_stride_minutes,
        "window_tail_minutes": settings.min_recording_minutes,
        "nonwear_zero_run_minutes": settings.nonwear_zero_run_minutes,
        "min_night_coverage": settings.min_night_coverage,
    }
    # One NaN bit pattern and little-endian floats, so equal minutes always give equal bytes.
    body = np.where(np.isnan(sums), _CANONICAL_NAN, sums).astype("<f8").tobytes()
    return json.dumps(header, sort_keys=True, separators=(",", ":")).encode() + b"\n" + body
