"""Classical, interpretable actigraphy metrics from one recording's minute series.

Input contract (produced by `pat_runner.actigraphy.preprocess`): a pandas Series of activity per minute on a
timezone-aware DatetimeIndex in the wearer's IANA zone, one entry per elapsed minute (so a DST day has
1,380 or 1,500 entries), NaN for missing or off-wrist minutes. Clock-time quantities (hour of day,
L5/M10 onsets, calendar days, noon-to-noon nights) use the local wall clock.

Definitions and references:

* Rhythm (nonparametric circadian analysis) on hourly means of the raw counts, no binarisation —
  Witting W, Kwa IH, Eikelenboom P, Mirmiran M, Swaab DF. Alterations in the circadian rest-activity
  rhythm in aging and Alzheimer's disease. Biol Psychiatry 1990;27:563-572; Van Someren EJW, et al.
  Bright light therapy: improved sensitivity to its effects on rest-activity rhythms in Alzheimer
  patients by application of nonparametric methods. Chronobiol Int 1999;16(4):505-518.
* Intensity: NHANES count cut-points of Troiano RP, et al. Physical activity in the United States
  measured by accelerometer. Med Sci Sports Exerc 2008;40(1):181-188 — sedentary < 100, light
  100–2019, moderate 2020–5998, vigorous ≥ 5999 counts/min; wear time and the ≥ 10 h valid-day rule
  from the same paper.
* Non-wear: `pat_runner.actigraphy.wear` (Choi 2011 by default, or Troiano 2008). One wear mask serves
  the days (wear minutes) and the nights (a sleep period never spans non-wear).
* Sleep: `pat_runner.actigraphy.sleep` (Sadeh 1994, Cole–Kripke 1992 as ActiLife 6 applies them;
  Tudor-Locke 2014 or ActiGraph's variant for the main sleep period). A night is local noon to the next
  local noon of the zone's real calendar (a date the zone skips, such as 2011-12-30 in Pacific/Apia,
  has no night). It is scored when at least `min_night_coverage` of its window has data, at most half
  of the window is non-wear, and its main sleep period is not cut by the start or end of the recording.

Nothing is invented for thin data: a metric that cannot be computed is `null` and `reasons` says why.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta, tzinfo
from datetime import date as CalendarDate
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from pat_runner.actigraphy.sleep import (
    SLEEP_PERIOD_RULES,
    SleepMethod,
    SleepPeriodAlgorithm,
    score_sleep,
    sleep_periods,
    summarise_period,
)
from pat_runner.actigraphy.wear import NONWEAR_METHOD_TEXT, NonwearAlgorithm, nonwear_mask

COUNT_UNIT = "counts"
ONLY_COUNTS = "only defined for ActiGraph counts"

MIN_RHYTHM_HOURS = 48  # IS and the 24-h profile mean nothing with less than two days of data
MIN_IV_HOURS = 24
MIN_OBSERVED_MINUTES_PER_HOUR = 30
L5_MINUTES = 5 * 60
M10_MINUTES = 10 * 60

# Troiano et al. 2008.
SEDENTARY_BELOW = 100
LIGHT_BELOW = 2020
MODERATE_BELOW = 5999
VALID_DAY_WEAR_MINUTES = 600

DEFAULT_MIN_NIGHT_COVERAGE = 0.9
MAX_NIGHT_NONWEAR_FRACTION = 0.5
NIGHT_STARTS_AT = time(12, 0)


class NightSleep(BaseModel):
    """One night, local noon to the next local noon, and its main sleep period."""

    night_of: date = Field(description="Local calendar date of the evening that starts the night.")
    window_start: datetime = Field(description="Local noon that starts the night (with UTC offset).")
    window_end: datetime = Field(
        description="Local noon that ends the night, exclusive (23–25 h later on DST)."
    )
    window_minutes: int = Field(description="Elapsed minutes of the window (1,380–1,500 on DST days).")
    observed_minutes: int = Field(description="Minutes of the window with data (min).")
    missing_minutes: int = Field(
        description="Minutes of the window without data, inside or outside the recording (min)."
    )
    coverage_percent: float = Field(description="observed_minutes / window_minutes × 100 (%).")
    nonwear_minutes: int = Field(description="Minutes of the window marked non-wear (`nonwear_algorithm`).")
    sleep_onset: datetime | None = Field(None, description="Start of the main sleep period (local time).")
    sleep_offset: datetime | None = Field(
        None, description="End of the main sleep period, exclusive (local time)."
    )
    total_sleep_minutes: int | None = Field(
        None, description="Total sleep time in the main sleep period (min)."
    )
    sleep_efficiency_percent: float | None = Field(
        None, description="Sleep minutes / observed minutes of the main sleep period × 100 (%)."
    )
    wake_after_sleep_onset_minutes: int | None = Field(
        None, description="Wake minutes inside the main sleep period, after sleep onset (min)."
    )
    awakenings: int | None = Field(None, description="Number of wake bouts inside the main sleep period (1).")
    reason: str | None = Field(None, description="Why the sleep measures are null, when they are.")


class DayActivity(BaseModel):
    """One local calendar day: wear time and minutes in each NHANES intensity band."""

    date: CalendarDate = Field(description="Local calendar date.")
    start: datetime = Field(description="Local midnight that starts the day (with UTC offset).")
    end: datetime = Field(description="Next local midnight, exclusive.")
    total_minutes: int = Field(description="Minutes of the day inside the recording (min).")
    observed_minutes: int = Field(description="Minutes with data (min).")
    missing_minutes: int = Field(description="Minutes of the day inside the recording without data (min).")
    nonwear_minutes: int | None = Field(
        None, description="Minutes marked non-wear (`nonwear_algorithm`), missing ones included; counts only."
    )
    wear_minutes: int | None = Field(
        None,
        description="Observed minutes outside non-wear periods (`nonwear_algorithm`) (min); counts only.",
    )
    valid: bool = Field(description=f"At least {VALID_DAY_WEAR_MINUTES} wear minutes (Troiano 2008).")
    sedentary_minutes: int | None = Field(None, description="Wear minutes with < 100 counts/min (min).")
    light_minutes: int | None = Field(None, description="Wear minutes with 100–2019 counts/min (min).")
    moderate_minutes: int | None = Field(None, description="Wear minutes with 2020–5998 counts/min (min).")
    vigorous_minutes: int | None = Field(None, description="Wear minutes with ≥ 5999 counts/min (min).")
    reason: str | None = Field(None, description="Why the intensity minutes are null, when they are.")


class ActigraphyMetrics(BaseModel):
    """Classical actigraphy metrics of one recording; each null field has its reason in `reasons`."""

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "unit": "counts",
                "minutes": 10080,
                "observed_minutes": 10020,
                "interdaily_stability": 0.62,
                "intradaily_variability": 0.71,
                "relative_amplitude": 0.93,
                "l5": 8.4,
                "l5_onset": "01:17",
                "m10": 412.0,
                "m10_onset": "08:45",
                "sleep_method": "cole_kripke",
                "sleep_period_algorithm": "tudor_locke",
                "nonwear_algorithm": "choi",
                "nights": [],
                "days": [],
                "valid_days": 7,
                "reasons": {},
                "notes": [],
            }
        }
    )

    unit: str = Field(description="Unit of the input values (`counts`, `steps`, `other`).")
    minutes: int = Field(description="Elapsed minutes in the recording (min).")
    observed_minutes: int = Field(description="Minutes with data (min).")
    interdaily_stability: float | None = Field(
        None, description="IS, 0–1 (1): strength of coupling to the 24-h cycle (Van Someren 1999)."
    )
    intradaily_variability: float | None = Field(
        None, description="IV, 0–~2 (1): hour-to-hour fragmentation (Van Someren 1999)."
    )
    relative_amplitude: float | None = Field(None, description="RA = (M10 − L5)/(M10 + L5), 0–1 (1).")
    l5: float | None = Field(
        None, description="Mean activity of the least active 5 h of the average day ({counts}/min)."
    )
    l5_onset: str | None = Field(None, description="Local clock time (HH:MM) at which the L5 window starts.")
    m10: float | None = Field(
        None, description="Mean activity of the most active 10 h of the average day ({counts}/min)."
    )
    m10_onset: str | None = Field(
        None, description="Local clock time (HH:MM) at which the M10 window starts."
    )
    sleep_method: SleepMethod = Field(description="Sleep/wake scoring algorithm used for `nights`.")
    sleep_period_algorithm: SleepPeriodAlgorithm = Field(
        "tudor_locke",
        description="Sleep-period rule: `tudor_locke` (ActiLife Tudor-Locke Default) or `actigraph`.",
    )
    nonwear_algorithm: NonwearAlgorithm = Field(
        "choi",
        description="Non-wear rule shared by `days` and `nights`: `choi` (2011), `troiano` (2008) or `none`.",
    )
    nights: list[NightSleep] = Field(default_factory=list, description="Per-night sleep measures.")
    days: list[DayActivity] = Field(default_factory=list, description="Per-day wear and intensity minutes.")
    valid_days: int = Field(description=f"Days with ≥ {VALID_DAY_WEAR_MINUTES} wear minutes (Troiano 2008).")
    reasons: dict[str, str] = Field(default_factory=dict, description="Field name → why that field is null.")
    notes: list[str] = Field(default_factory=list, description="Definition choices that affect this result.")


def _local_hour_bins(index: pd.DatetimeIndex) -> tuple[np.ndarray, np.ndarray]:
    """Per minute: the UTC start of its local clock hour, and that hour of day (0–23).

    Binning on the local wall clock keeps hours aligned with clock time in zones with half-hour offsets;
    the repeated hour of a DST fall-back gives two bins with the same hour of day, as it should.
    """
    local_minute = index.minute.to_numpy()
    utc_ns = index.tz_convert("UTC").as_unit("ns").asi8
    bin_start = utc_ns - local_minute.astype(np.int64) * 60_000_000_000
    return bin_start, index.hour.to_numpy()


def hourly_means(series: pd.Series) -> pd.DataFrame:
    """Mean activity of each elapsed local clock hour with ≥ 30 observed minutes.

    Columns: `bin` (UTC ns of the hour start), `hour` (local hour of day), `mean`.
    """
    bin_start, hour = _local_hour_bins(series.index)
    frame = pd.DataFrame({"bin": bin_start, "hour": hour, "value": series.to_numpy(dtype=np.float64)})
    grouped = frame.groupby("bin", sort=True).agg(
        hour=("hour", "first"), mean=("value", "mean"), observed=("value", "count")
    )
    kept = grouped[grouped["observed"] >= MIN_OBSERVED_MINUTES_PER_HOUR]
    return kept.reset_index()[["bin", "hour", "mean"]]


def interdaily_stability(hourly: pd.DataFrame) -> float | None:
    """IS = n·Σₕ(x̄ₕ − x̄)² / (p·Σᵢ(xᵢ − x̄)²) (Witting 1990; Van Someren 1999).

    xᵢ are the n hourly means, x̄ₕ the mean of hour-of-day h over days, p the number of hours of the
    day present (24 without gaps). None when the data have no variance.
    """
    values = hourly["mean"].to_numpy()
    grand_mean = values.mean()
    total = float(((values - grand_mean) ** 2).sum())
    if total == 0.0:
        return None
    profile = hourly.groupby("hour")["mean"].mean().to_numpy()
    return float(values.size * ((profile - grand_mean) ** 2).sum() / (profile.size * total))


def intradaily_variability(hourly: pd.DataFrame) -> float | None:
    """IV = n·Σᵢ(xᵢ − xᵢ₋₁)² / ((n − 1)·Σᵢ(xᵢ − x̄)²) (Witting 1990; Van Someren 1999).

    Only pairs of hours adjacent in time enter the numerator, and (n − 1) becomes the number of such
    pairs, so a gap does not create a spurious jump. None when the data have no variance.
    """
    values = hourly["mean"].to_numpy()
    grand_mean = values.mean()
    total = float(((values - grand_mean) ** 2).sum())
    if total == 0.0 or values.size < 2:
        return None
    adjacent = np.diff(hourly["bin"].to_numpy()) == 3_600_000_000_000
    differences = np.diff(values)[adjacent]
    if differences.size == 0:
        return None
    return float(values.size * (differences**2).sum() / (differences.size * total))


def average_day_profile(series: pd.Series) -> np.ndarray:
    """Mean activity per local clock minute of the day (1,440 values; NaN where never observed)."""
    minute_of_day = series.index.hour.to_numpy() * 60 + series.index.minute.to_numpy()
    frame = pd.DataFrame({"minute": minute_of_day, "value": series.to_numpy(dtype=np.float64)})
    profile = frame.groupby("minute")["value"].mean().reindex(range(1440))
    return profile.to_numpy()


def extreme_window(profile: np.ndarray, minutes: int, *, lowest: bool) -> tuple[float, int, bool]:
    """Mean of the least (or most) active circular window of `minutes` on the 24-h profile.

    Returns (mean, onset minute of day, tie) where onset is the first (earliest clock time from
    midnight) of the tied windows and `tie` says whether another onset gives the same mean.
    The window wraps around midnight, as in the published L5/M10 (Van Someren 1999).
    """
    wrapped = np.concatenate([profile, profile[: minutes - 1]])
    cumulative = np.concatenate([[0.0], np.cumsum(wrapped)])
    means = (cumulative[minutes:] - cumulative[:-minutes])[: profile.size] / minutes
    target = means.min() if lowest else means.max()
    hits = np.flatnonzero(np.isclose(means, target, rtol=0.0, atol=1e-9))
    return float(means[hits[0]]), int(hits[0]), bool(hits.size > 1)


def _clock(minute_of_day: int) -> str:
    return f"{minute_of_day // 60:02d}:{minute_of_day % 60:02d}"


def _local_time(day: date, clock: time, zone: tzinfo) -> pd.Timestamp:
    """`day` at wall-clock `clock` in `zone`; a wall time skipped by DST moves forward, a repeated one
    takes its first occurrence."""
    naive = pd.Timestamp(datetime.combine(day, clock))
    return naive.tz_localize(zone, nonexistent="shift_forward", ambiguous=True)


def _date_exists(day: date, zone: tzinfo) -> bool:
    """Whether the zone's calendar has `day` at all (Pacific/Apia skipped 2011-12-30)."""
    return _local_time(day, time(0), zone).date() == day


def daily_activity(series: pd.Series, *, counts: bool, nonwear: np.ndarray) -> list[DayActivity]:
    """Per local calendar day: observed and wear minutes, validity and Troiano (2008) intensity minutes.

    `nonwear` is the recording's wear mask (`wear.nonwear_mask`). Intensity minutes are reported for
    valid days only and only for ActiGraph counts.
    """
    values = series.to_numpy(dtype=np.float64)
    observed = ~np.isnan(values)
    wear = observed & ~nonwear if counts else observed
    local_dates = series.index.date
    zone = series.index.tz
    days: list[DayActivity] = []
    for day in sorted(set(local_dates)):
        in_day = local_dates == day
        start = _local_time(day, time(0), zone)
        end = _local_time(day + timedelta(days=1), time(0), zone)
        wear_minutes = int((wear & in_day).sum())
        valid = wear_minutes >= VALID_DAY_WEAR_MINUTES
        observed_minutes = int((observed & in_day).sum())
        entry = DayActivity(
            date=day,
            start=start.to_pydatetime(),
            end=end.to_pydatetime(),
            total_minutes=int(in_day.sum()),
            observed_minutes=observed_minutes,
            missing_minutes=int(in_day.sum()) - observed_minutes,
            nonwear_minutes=int((nonwear & in_day).sum()) if counts else None,
            wear_minutes=wear_minutes if counts else None,
            valid=valid,
        )
        if not counts:
            entry.reason = ONLY_COUNTS
        elif not valid:
            entry.reason = f"fewer than {VALID_DAY_WEAR_MINUTES} wear minutes (Troiano 2008 valid-day rule)"
        else:
            day_counts = values[wear & in_day]
            entry.sedentary_minutes = int((day_counts < SEDENTARY_BELOW).sum())
            entry.light_minutes = int(((day_counts >= SEDENTARY_BELOW) & (day_counts < LIGHT_BELOW)).sum())
            entry.moderate_minutes = int(((day_counts >= LIGHT_BELOW) & (day_counts < MODERATE_BELOW)).sum())
            entry.vigorous_minutes = int((day_counts >= MODERATE_BELOW).sum())
        days.append(entry)
    return days


def _night_dates(first: pd.Timestamp, last: pd.Timestamp, zone: tzinfo) -> list[date]:
    """Dates of the evenings whose noon-to-noon window overlaps [first, last], skipped dates left out."""
    day = first.date() - timedelta(days=1) if first.time() < NIGHT_STARTS_AT else first.date()
    dates = []
    while _local_time(day, NIGHT_STARTS_AT, zone) <= last:
        if _date_exists(day, zone):
            dates.append(day)
        day += timedelta(days=1)
    return dates


def _next_date(day: date, zone: tzinfo) -> date:
    following = day + timedelta(days=1)
    while not _date_exists(following, zone):
        following += timedelta(days=1)
    return following


def nightly_sleep(
    series: pd.Series,
    method: SleepMethod,
    *,
    nonwear: np.ndarray,
    period_algorithm: SleepPeriodAlgorithm = "tudor_locke",
    min_coverage: float = DEFAULT_MIN_NIGHT_COVERAGE,
) -> list[NightSleep]:
    """Sleep measures per local noon-to-noon night from the main (longest) sleep period that starts in
    the night; missing minutes inside it count as neither sleep nor wake, non-wear ends it. A night
    gets null measures with the reason when less than `min_coverage` of its window has data, when most
    of the window is non-wear, when no period starts in it, or when its main period is cut by the start
    or end of the recording (its true length is unknown)."""
    asleep = score_sleep(series, method).to_numpy()
    observed = series.notna().to_numpy()
    # A short gap neither starts nor ends a sleep period: missing minutes carry the last observed state
    # (wake before the first observation); summaries then leave them out of sleep and wake alike.
    carried = pd.Series(asleep).where(observed).ffill().fillna(False).to_numpy(dtype=bool)
    periods = sleep_periods(carried & ~nonwear, period_algorithm, breaks=nonwear)
    rule = SLEEP_PERIOD_RULES[period_algorithm]
    index = series.index
    zone = index.tz
    nights: list[NightSleep] = []
    for day in _night_dates(index[0], index[-1], zone):
        window_start = _local_time(day, NIGHT_STARTS_AT, zone)
        window_end = _local_time(_next_date(day, zone), NIGHT_STARTS_AT, zone)
        lo = int(index.searchsorted(window_start))
        hi = int(index.searchsorted(window_end))
        window_minutes = int((window_end - window_start) / pd.Timedelta(minutes=1))
        observed_minutes = int(observed[lo:hi].sum())
        night = NightSleep(
            night_of=day,
            window_start=window_start.to_pydatetime(),
            window_end=window_end.to_pydatetime(),
            window_minutes=window_minutes,
            observed_minutes=observed_minutes,
            missing_minutes=window_minutes - observed_minutes,
            coverage_percent=round(100 * observed_minutes / window_minutes, 2),
            nonwear_minutes=int(nonwear[lo:hi].sum()),
        )
        candidates = [(a, b) for a, b in periods if lo <= a < hi]
        if night.nonwear_minutes > MAX_NIGHT_NONWEAR_FRACTION * window_minutes:
            night.reason = "most of the night window is non-wear"
        elif observed_minutes < min_coverage * window_minutes:
            night.reason = (
                f"only {observed_minutes / window_minutes:.1%} of the night window has data, "
                f"less than the {min_coverage:.0%} required"
            )
        elif not candidates:
            night.reason = (
                f"no sleep period of {rule.min_minutes}-{rule.max_minutes:,} min starts in this night "
                f"(rule: {rule.text})"
            )
        else:
            start, stop = max(candidates, key=lambda p: p[1] - p[0])
            if start == 0 or stop == len(index):
                night.reason = "the main sleep period is cut by the start or end of the recording"
            else:
                summary = summarise_period(asleep, observed, start, stop)
                night.sleep_onset = index[start].to_pydatetime()
                night.sleep_offset = (index[stop - 1] + pd.Timedelta(minutes=1)).to_pydatetime()
                night.total_sleep_minutes = summary.total_sleep_minutes
                night.sleep_efficiency_percent = round(summary.sleep_efficiency_percent, 2)
                night.wake_after_sleep_onset_minutes = summary.wake_after_sleep_onset_minutes
                night.awakenings = summary.awakenings
        nights.append(night)
    return nights


def actigraphy_metrics(
    series: pd.Series,
    *,
    unit: str = COUNT_UNIT,
    sleep_method: SleepMethod = "cole_kripke",
    sleep_period_algorithm: SleepPeriodAlgorithm = "tudor_locke",
    nonwear_algorithm: NonwearAlgorithm = "choi",
    min_night_coverage: float = DEFAULT_MIN_NIGHT_COVERAGE,
) -> ActigraphyMetrics:
    """All classical metrics of one recording (see the module docstring for definitions)."""
    if not isinstance(series.index, pd.DatetimeIndex) or series.index.tz is None:
        raise ValueError("series needs a timezone-aware DatetimeIndex (the wearer's local zone)")
    counts = unit == COUNT_UNIT
    reasons: dict[str, str] = {}
    notes: list[str] = []
    result = ActigraphyMetrics(
        unit=unit,
        minutes=int(series.size),
        observed_minutes=int(series.notna().sum()),
        sleep_method=sleep_method,
        sleep_period_algorithm=sleep_period_algorithm,
        nonwear_algorithm=nonwear_algorithm,
        valid_days=0,
    )
    if series.size == 0:
        return result.model_copy(update={"reasons": dict.fromkeys(_RHYTHM_FIELDS, "no data")})

    hourly = hourly_means(series)
    if len(hourly) < MIN_IV_HOURS:
        reasons["intradaily_variability"] = f"fewer than {MIN_IV_HOURS} valid hours of data"
    else:
        result.intradaily_variability = intradaily_variability(hourly)
        if result.intradaily_variability is None:
            reasons["intradaily_variability"] = "activity has no variance (constant signal)"
    if len(hourly) < MIN_RHYTHM_HOURS:
        for name in ("interdaily_stability", "relative_amplitude", "l5", "l5_onset", "m10", "m10_onset"):
            reasons[name] = f"fewer than {MIN_RHYTHM_HOURS} valid hours of data (two days)"
    else:
        result.interdaily_stability = interdaily_stability(hourly)
        if result.interdaily_stability is None:
            reasons["interdaily_stability"] = "activity has no variance (constant signal)"
        _fill_l5_m10(result, average_day_profile(series), reasons, notes)

    nonwear = nonwear_mask(series.to_numpy(dtype=np.float64), nonwear_algorithm)
    if counts:
        result.nights = nightly_sleep(
            series,
            sleep_method,
            nonwear=nonwear,
            period_algorithm=sleep_period_algorithm,
            min_coverage=min_night_coverage,
        )
        notes.append(f"non-wear: {NONWEAR_METHOD_TEXT[nonwear_algorithm]}")
    else:
        reasons["nights"] = ONLY_COUNTS
    result.days = daily_activity(series, counts=counts, nonwear=nonwear)
    result.valid_days = sum(day.valid for day in result.days)
    if not counts:
        notes.append(f"unit {unit!r}: intensity cut-points and sleep scoring are {ONLY_COUNTS}")
    result.reasons = reasons
    result.notes = notes
    return result


_RHYTHM_FIELDS = (
    "interdaily_stability",
    "intradaily_variability",
    "relative_amplitude",
    "l5",
    "l5_onset",
    "m10",
    "m10_onset",
)


def _fill_l5_m10(
    result: ActigraphyMetrics, profile: np.ndarray, reasons: dict[str, str], notes: list[str]
) -> None:
    if np.isnan(profile).any():
        for name in ("relative_amplitude", "l5", "l5_onset", "m10", "m10_onset"):
            reasons[name] = "the average 24-h profile has clock minutes never observed"
        return
    windows: dict[Literal["l5", "m10"], tuple[float, int, bool]] = {
        "l5": extreme_window(profile, L5_MINUTES, lowest=True),
        "m10": extreme_window(profile, M10_MINUTES, lowest=False),
    }
    for name, (mean, onset, tie) in windows.items():
        setattr(result, name, mean)
        setattr(result, f"{name}_onset", _clock(onset))
        if tie:
            notes.append(f"{name.upper()} onset ties with later clock times; the earliest is reported")
    denominator = windows["m10"][0] + windows["l5"][0]
    if denominator == 0.0:
        reasons["relative_amplitude"] = "M10 + L5 is zero (no activity)"
    else:
        result.relative_amplitude = (windows["m10"][0] - windows["l5"][0]) / denominator
