"""Non-wear detection on 60-s counts: the one wear mask the day metrics and the nights share.

* **Choi** — Choi L, Liu Z, Matthews CE, Buchowski MS. Validation of accelerometer wear and nonwear
  time classification algorithm. Med Sci Sports Exerc 2011;43(2):357-364, the algorithm ActiLife
  applies to counts: a non-wear period is at least 90 consecutive minutes of zero counts, in which an
  interruption of at most 2 minutes of non-zero counts is allowed when the 30 minutes before and the
  30 minutes after it are zero counts.
* **Troiano** — Troiano RP, et al. Physical activity in the United States measured by accelerometer.
  Med Sci Sports Exerc 2008;40(1):181-188: at least 60 consecutive minutes of zero counts, allowing
  interruptions of at most 2 consecutive minutes of 1–100 counts.

Missing minutes (NaN: null epochs, partial minutes, and the day-long zero runs preprocessing already
took as off-wrist) count as zero counts here: a gap inside a zero run does not make the device worn,
and a gap of at least the rule's length is itself non-wear. A sleep period never spans non-wear.

`none` turns detection off (only preprocessing's day-long zero runs remain off-wrist). ActiLife's
sleep scoring does not apply its wear-time validation, so `none` reproduces its sleep exports; with
`choi`, a still sleeper on a hip-worn device (90+ min of exact zeros) loses that part of the night.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

NonwearAlgorithm = Literal["choi", "troiano", "none"]
NONWEAR_ALGORITHMS: tuple[NonwearAlgorithm, ...] = ("choi", "troiano", "none")

NONWEAR_METHOD_TEXT: dict[NonwearAlgorithm, str] = {
    "choi": "Choi et al. 2011 (90-min zero-count window, 2-min spike tolerance, 30-min zeros around it)",
    "troiano": "Troiano et al. 2008 (60-min zero-count window, up to 2 min of 1-100 counts)",
    "none": "none (every minute with data counts as worn, as in ActiLife's sleep scoring alone)",
}

CHOI_MIN_PERIOD_MINUTES = 90
CHOI_SPIKE_TOLERANCE_MINUTES = 2
CHOI_WINDOW_MINUTES = 30

TROIANO_MIN_MINUTES = 60
TROIANO_MAX_INTERRUPTION_MINUTES = 2
TROIANO_INTERRUPTION_MAX_COUNTS = 100


def _runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Maximal runs of equal values: starts, lengths, values."""
    if mask.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0, dtype=bool)
    change = np.flatnonzero(np.diff(mask.astype(np.int8))) + 1
    starts = np.concatenate([[0], change])
    lengths = np.diff(np.concatenate([starts, [mask.size]]))
    return starts, lengths, mask[starts]


def choi_nonwear(counts: np.ndarray) -> np.ndarray:
    """Non-wear minutes by Choi et al. (2011); NaN counts as zero (module docstring)."""
    zero = np.nan_to_num(np.asarray(counts, dtype=np.float64), nan=0.0) == 0
    starts, lengths, is_zero = _runs(zero)
    merged = is_zero.copy()
    for k in np.flatnonzero(~is_zero):
        # A short burst of counts is an artefact when 30 zero minutes precede and follow it.
        if (
            lengths[k] <= CHOI_SPIKE_TOLERANCE_MINUTES
            and 0 < k < lengths.size - 1
            and lengths[k - 1] >= CHOI_WINDOW_MINUTES
            and lengths[k + 1] >= CHOI_WINDOW_MINUTES
        ):
            merged[k] = True
    nonwear = np.zeros(zero.size, dtype=bool)
    run_start = None
    for k in range(lengths.size + 1):
        if k < lengths.size and merged[k]:
            if run_start is None:
                run_start = k
            continue
        if run_start is not None:
            first, stop = int(starts[run_start]), int(starts[k - 1] + lengths[k - 1])
            if stop - first >= CHOI_MIN_PERIOD_MINUTES:
                nonwear[first:stop] = True
            run_start = None
    return nonwear


def troiano_nonwear(counts: np.ndarray) -> np.ndarray:
    """Non-wear minutes by Troiano et al. (2008); NaN counts as zero (module docstring)."""
    values = np.nan_to_num(np.asarray(counts, dtype=np.float64), nan=0.0)
    zero = values == 0
    small = (values > 0) & (values <= TROIANO_INTERRUPTION_MAX_COUNTS)
    nonwear = np.zeros(values.size, dtype=bool)
    i = 0
    n = values.size
    while i < n:
        if not zero[i]:
            i += 1
            continue
        start = i
        last_zero = i
        j = i + 1
        while j < n:
            if zero[j]:
                last_zero = j
                j += 1
            elif small[j] and j - last_zero <= TROIANO_MAX_INTERRUPTION_MINUTES:
                j += 1
            else:
                break
        if last_zero + 1 - start >= TROIANO_MIN_MINUTES:
            nonwear[start : last_zero + 1] = True
        i = last_zero + 1
    return nonwear


def nonwear_mask(counts: np.ndarray, algorithm: NonwearAlgorithm) -> np.ndarray:
    """Boolean non-wear mask of per-minute counts by the named algorithm."""
    if algorithm == "choi":
        return choi_nonwear(counts)
    if algorithm == "troiano":
        return troiano_nonwear(counts)
    if algorithm == "none":
        return np.zeros(np.asarray(counts).size, dtype=bool)
    raise ValueError(f"unknown non-wear algorithm {algorithm!r}; use one of {', '.join(NONWEAR_ALGORITHMS)}")
