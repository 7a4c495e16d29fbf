"""Sleep/wake scoring of 60-s ActiGraph count epochs and per-night sleep summaries.

Scoring follows the two algorithms as ActiLife 6 implements them for ActiGraph vertical-axis counts,
the reference most actigraphy research reports against:

* Sadeh A, Sharkey KM, Carskadon MA. Activity-based sleep-wake identification: an empirical test of
  methodological issues. Sleep 1994;17(3):201-207.
* Cole RJ, Kripke DF, Gruen W, Mullaney DJ, Gillin JC. Automatic sleep/wake identification from wrist
  activity. Sleep 1992;15(5):461-469.
* ActiGraph. ActiLife 6 User's Manual, "Sleep Scoring" (Sadeh on counts capped at 300 with the
  11-epoch window padded with zeros at the recording ends; Cole–Kripke on counts divided by 100 and
  capped at 300). The R package actigraph.sleepr (D. Petkova) reproduces ActiLife's epoch scores
  with exactly these conventions and documents them.

Sleep periods are found with one of two rules (`SleepPeriodAlgorithm`):

* `tudor_locke` — Tudor-Locke C, et al. Fully automated waist-worn accelerometer algorithm for
  detecting children's sleep-period time separate from 24-h physical activity or sedentary behaviors.
  Appl Physiol Nutr Metab 2014;39(1):53-57, as ActiLife's "Tudor-Locke Default": a period starts at the
  first of 5 consecutive sleep minutes, ends before the first of 10 consecutive wake minutes, and
  counts when it lasts at least 160 minutes.
* `actigraph` — ActiGraph's own variant used by ActiLife/CentrePoint batch exports (ActiGraph support,
  "How did ActiGraph develop the automatic sleep-detection algorithm used in CentrePoint to estimate
  in-bed and out-of-bed times?"): the same, except that wake is the first 12 consecutive wake minutes.

Both take ActiLife's maximum sleep-period length of 1,440 minutes: a longer "period" is not sleep
(almost always an undetected non-wear) and is dropped. A period never spans non-wear: the minutes
between non-wear periods are searched separately.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

SleepMethod = Literal["sadeh", "cole_kripke"]
SleepPeriodAlgorithm = Literal["tudor_locke", "actigraph"]

# Sadeh 1994, Table 3 (the published discriminant function, as ActiLife uses it).
SADEH_INTERCEPT = 7.601
SADEH_MEAN_W5_WEIGHT = 0.065
SADEH_NAT_WEIGHT = 1.08
SADEH_SD_LAST6_WEIGHT = 0.056
SADEH_LOG_ACT_WEIGHT = 0.703
SADEH_SLEEP_ABOVE = -4.0  # ActiLife: PS > -4 is sleep
SADEH_COUNT_CAP = 300.0
SADEH_HALF_WINDOW = 5

# Cole–Kripke 1992, p. 466: optimal weights for mean activity per minute, epochs t-4 … t+2.
COLE_KRIPKE_SCALE = 0.001
COLE_KRIPKE_WEIGHTS = (106.0, 54.0, 58.0, 76.0, 230.0, 74.0, 67.0)
COLE_KRIPKE_LAG = 4
COLE_KRIPKE_LEAD = 2
COLE_KRIPKE_SLEEP_BELOW = 1.0
ACTILIFE_COUNT_DIVISOR = 100.0  # ActiLife scales ActiGraph counts before applying Cole–Kripke
ACTILIFE_SCALED_CAP = 300.0


@dataclass(frozen=True)
class SleepPeriodRule:
    """Bedtime after `start_run` sleep minutes, wake at `end_run` wake minutes, length limits (min)."""

    start_run: int
    end_run: int
    min_minutes: int
    max_minutes: int
    text: str


SLEEP_PERIOD_MAX_MINUTES = 1_440  # ActiLife's cap on a sleep period
SLEEP_PERIOD_RULES: dict[SleepPeriodAlgorithm, SleepPeriodRule] = {
    "tudor_locke": SleepPeriodRule(
        5, 10, 160, SLEEP_PERIOD_MAX_MINUTES, "Tudor-Locke et al. 2014 (ActiLife Tudor-Locke Default)"
    ),
    "actigraph": SleepPeriodRule(
        5, 12, 160, SLEEP_PERIOD_MAX_MINUTES, "ActiGraph sleep-period detection (ActiLife/CentrePoint)"
    ),
}


def _window_sum(values: np.ndarray, before: int, after: int) -> np.ndarray:
    """Sum of values[t-before … t+after] for each t, the series padded with zeros at both ends."""
    padded = np.concatenate([np.zeros(before), values, np.zeros(after)])
    cumulative = np.concatenate([[0.0], np.cumsum(padded)])
    width = before + after + 1
    return cumulative[width:] - cumulative[:-width]


def sadeh_scores(counts: np.ndarray) -> np.ndarray:
    """Sadeh (1994) probability-of-sleep score PS per epoch, ActiLife variant (see module docstring).

    PS = 7.601 − 0.065·meanW5 − 1.08·NAT − 0.056·SDlast6 − 0.703·ln(count + 1), where counts are capped
    at 300; meanW5 is the mean of the 11 epochs centred on t and NAT the number of them with
    50 ≤ count < 100 (zero-padded at both ends); SDlast6 is the sample standard deviation of epochs
    t-5 … t (zero-padded at the start).
    """
    capped = np.minimum(np.asarray(counts, dtype=np.float64), SADEH_COUNT_CAP)
    half = SADEH_HALF_WINDOW
    mean_w5 = _window_sum(capped, half, half) / (2 * half + 1)
    in_nat_band = ((capped >= 50) & (capped < 100)).astype(np.float64)
    nat = _window_sum(in_nat_band, half, half)
    n_last = half + 1
    sum_last = _window_sum(capped, half, 0)
    sum_sq_last = _window_sum(capped**2, half, 0)
    variance = np.maximum((sum_sq_last - sum_last**2 / n_last) / (n_last - 1), 0.0)
    sd_last6 = np.sqrt(variance)
    return (
        SADEH_INTERCEPT
        - SADEH_MEAN_W5_WEIGHT * mean_w5
        - SADEH_NAT_WEIGHT * nat
        - SADEH_SD_LAST6_WEIGHT * sd_last6
        - SADEH_LOG_ACT_WEIGHT * np.log1p(capped)
    )


def cole_kripke_scores(counts: np.ndarray) -> np.ndarray:
    """Cole–Kripke (1992) activity score D per epoch on ActiLife-scaled counts (see module docstring).

    D = 0.001·(106·A₋₄ + 54·A₋₃ + 58·A₋₂ + 76·A₋₁ + 230·A₀ + 74·A₊₁ + 67·A₊₂) with A = min(count/100, 300),
    zero-padded at both ends; the epoch is sleep when D < 1.
    """
    scaled = np.minimum(np.asarray(counts, dtype=np.float64) / ACTILIFE_COUNT_DIVISOR, ACTILIFE_SCALED_CAP)
    padded = np.concatenate([np.zeros(COLE_KRIPKE_LAG), scaled, np.zeros(COLE_KRIPKE_LEAD)])
    # np.convolve flips its kernel; reversing the weights makes this a plain weighted window sum.
    kernel = np.asarray(COLE_KRIPKE_WEIGHTS)[::-1]
    return COLE_KRIPKE_SCALE * np.convolve(padded, kernel, mode="valid")


def score_sleep(counts: pd.Series, method: SleepMethod = "cole_kripke") -> pd.Series:
    """Score each 60-s epoch as sleep (True) or wake (False) with Sadeh or Cole–Kripke (ActiLife 6).

    `counts` are ActiGraph counts per minute, one entry per elapsed minute. Missing minutes (NaN) are
    scored as zero counts — ActiLife's own padding value — so callers must mask them
    (`counts.isna()`) before summarising; the per-night summaries here do.
    Returns a boolean Series on the same index.
    """
    values = counts.to_numpy(dtype=np.float64, na_value=np.nan)
    filled = np.nan_to_num(values, nan=0.0)
    if method == "sadeh":
        asleep = sadeh_scores(filled) > SADEH_SLEEP_ABOVE
    elif method == "cole_kripke":
        asleep = cole_kripke_scores(filled) < COLE_KRIPKE_SLEEP_BELOW
    else:
        raise ValueError(f"unknown sleep scoring method {method!r}; use 'sadeh' or 'cole_kripke'")
    return pd.Series(asleep, index=counts.index, name="sleep", dtype=bool)


def _runs(flags: np.ndarray) -> list[tuple[int, int, bool]]:
    """Maximal runs of equal values as (start, stop exclusive, value)."""
    if flags.size == 0:
        return []
    change = np.flatnonzero(np.diff(flags.astype(np.int8))) + 1
    starts = np.concatenate([[0], change])
    stops = np.concatenate([change, [flags.size]])
    return [(int(a), int(b), bool(flags[a])) for a, b in zip(starts, stops, strict=True)]


def sleep_periods(
    asleep: np.ndarray,
    algorithm: SleepPeriodAlgorithm = "tudor_locke",
    *,
    breaks: np.ndarray | None = None,
) -> list[tuple[int, int]]:
    """Sleep periods (start, stop exclusive) by the named rule (module docstring).

    A period starts at the first epoch of a run of ≥ `start_run` consecutive sleep epochs and ends at
    the last sleep epoch before the next run of ≥ `end_run` consecutive wake epochs (or the end of the
    data or of a segment between `breaks`, the non-wear minutes, which are never inside a period);
    periods shorter than `min_minutes` or longer than `max_minutes` are dropped.
    """
    rule = SLEEP_PERIOD_RULES[algorithm]
    if breaks is None or not breaks.any():
        return _periods_in(asleep, 0, rule)
    periods: list[tuple[int, int]] = []
    for segment_start, segment_stop, is_break in _runs(breaks.astype(bool)):
        if not is_break:
            periods += _periods_in(asleep[segment_start:segment_stop], segment_start, rule)
    return periods


def _periods_in(asleep: np.ndarray, offset: int, rule: SleepPeriodRule) -> list[tuple[int, int]]:
    periods: list[tuple[int, int]] = []
    start: int | None = None
    last_sleep_stop = 0
    for run_start, run_stop, is_sleep in _runs(asleep):
        length = run_stop - run_start
        if is_sleep:
            if start is None and length >= rule.start_run:
                start = run_start
            if start is not None:
                last_sleep_stop = run_stop
        elif start is not None and length >= rule.end_run:
            periods.append((start, last_sleep_stop))
            start = None
    if start is not None:
        periods.append((start, last_sleep_stop))
    return [(offset + a, offset + b) for a, b in periods if rule.min_minutes <= b - a <= rule.max_minutes]


@dataclass(frozen=True)
class NightSummary:
    """Sleep measures of one main sleep period (minutes unless stated)."""

    onset_index: int
    offset_index: int
    total_sleep_minutes: int
    sleep_efficiency_percent: float
    wake_after_sleep_onset_minutes: int
    awakenings: int


def summarise_period(asleep: np.ndarray, observed: np.ndarray, start: int, stop: int) -> NightSummary:
    """TST, sleep efficiency, WASO and awakenings of one sleep period [start, stop).

    The period begins and ends on a sleep epoch (Tudor-Locke rule), so every wake epoch inside it is
    after sleep onset: WASO = wake minutes in the period, awakenings = number of wake runs in it,
    sleep efficiency = TST / observed minutes of the period × 100 (ActiLife's definition for a
    detected period). Missing minutes count neither as sleep nor as wake.
    """
    period_sleep = asleep[start:stop] & observed[start:stop]
    period_wake = ~asleep[start:stop] & observed[start:stop]
    total_sleep = int(period_sleep.sum())
    observed_minutes = int(observed[start:stop].sum())
    awakenings = sum(1 for _, _, is_wake in _runs(period_wake) if is_wake)
    return NightSummary(
        onset_index=start,
        offset_index=stop,
        total_sleep_minutes=total_sleep,
        sleep_efficiency_percent=100.0 * total_sleep / observed_minutes if observed_minutes else 0.0,
        wake_after_sleep_onset_minutes=int(period_wake.sum()),
        awakenings=awakenings,
    )
