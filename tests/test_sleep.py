"""Sleep/wake scoring and sleep periods on constructed sequences, epoch by epoch.

The reference implementations here are written straight from the papers' formulas (one epoch at a
time, no vectorisation) so they share no code with `pat_runner.actigraphy.sleep`.
"""

from __future__ import annotations

import math
import statistics

import numpy as np
import pandas as pd
import pytest

from pat_runner.actigraphy import sleep
from pat_runner.actigraphy.sleep import score_sleep, sleep_periods, summarise_period


def _series(values: list[float] | np.ndarray) -> pd.Series:
    index = pd.date_range("2024-01-01 20:00", periods=len(values), freq="1min", tz="Europe/Berlin")
    return pd.Series(np.asarray(values, dtype=float), index=index)


def sadeh_reference(counts: list[float]) -> list[bool]:
    """Sadeh 1994, Table 3, with ActiLife's cap at 300 and zero padding."""
    capped = [min(c, 300.0) for c in counts]
    n = len(capped)

    def at(i: int) -> float:
        return capped[i] if 0 <= i < n else 0.0

    scores = []
    for t in range(n):
        window = [at(i) for i in range(t - 5, t + 6)]
        mean_w5 = sum(window) / 11
        nat = sum(1 for c in window if 50 <= c < 100)
        sd_last6 = statistics.stdev([at(i) for i in range(t - 5, t + 1)])
        ps = 7.601 - 0.065 * mean_w5 - 1.08 * nat - 0.056 * sd_last6 - 0.703 * math.log(capped[t] + 1)
        scores.append(ps > -4)
    return scores


def cole_kripke_reference(counts: list[float]) -> list[bool]:
    """Cole–Kripke 1992 (p. 466, mean activity per minute) on ActiLife-scaled counts, zero padding."""
    scaled = [min(c / 100.0, 300.0) for c in counts]
    weights = {-4: 106, -3: 54, -2: 58, -1: 76, 0: 230, 1: 74, 2: 67}
    n = len(scaled)
    return [
        0.001 * sum(w * (scaled[t + k] if 0 <= t + k < n else 0.0) for k, w in weights.items()) < 1.0
        for t in range(n)
    ]


def test_published_coefficients() -> None:
    assert (
        sleep.SADEH_INTERCEPT,
        sleep.SADEH_MEAN_W5_WEIGHT,
        sleep.SADEH_NAT_WEIGHT,
        sleep.SADEH_SD_LAST6_WEIGHT,
        sleep.SADEH_LOG_ACT_WEIGHT,
    ) == (7.601, 0.065, 1.08, 0.056, 0.703)
    assert sleep.COLE_KRIPKE_WEIGHTS == (106, 54, 58, 76, 230, 74, 67)
    assert sleep.COLE_KRIPKE_SCALE == 0.001


@pytest.mark.parametrize("method", ["sadeh", "cole_kripke"])
def test_random_sequences_match_the_formula_epoch_by_epoch(method: str) -> None:
    rng = np.random.default_rng(7)
    reference = sadeh_reference if method == "sadeh" else cole_kripke_reference
    for _ in range(5):
        # Mix of quiet, NAT-band and very active epochs so every term of each formula matters.
        counts = rng.choice([0, 0, 0, 3, 49, 50, 75, 99, 100, 250, 300, 301, 434, 435, 1500, 9000], size=400)
        scored = score_sleep(_series(counts), method)
        assert scored.tolist() == reference([float(c) for c in counts])


def test_sadeh_hand_values() -> None:
    assert score_sleep(_series([0.0] * 30), "sadeh").all()  # PS = 7.601 everywhere
    # 300 counts/min: PS = 7.601 − 0.065·300 − 0.703·ln 301 ≈ −15.9 in the interior, wake; the cap makes
    # 10,000 counts identical to 300.
    high = score_sleep(_series([300.0] * 30), "sadeh")
    capped = score_sleep(_series([10_000.0] * 30), "sadeh")
    assert not high.iloc[5:25].any()
    assert high.tolist() == capped.tolist()


def test_sadeh_nat_band_is_half_open() -> None:
    # 11 epochs of exactly 50 (in the band) versus exactly 100 (not in it), centre epoch scored:
    # NAT = 11 → PS = 7.601 − 3.25 − 11.88 − 0.703·ln 51 < −4; with 100, NAT = 0 and PS ≈ −2.14 > −4.
    assert not score_sleep(_series([50.0] * 11), "sadeh").iloc[5]
    assert score_sleep(_series([100.0] * 11), "sadeh").iloc[5]


def test_cole_kripke_single_spike_thresholds() -> None:
    # A lone spike X at epoch 10: D(10) = 0.001·230·X/100, sleep iff X < 434.78…
    for spike, asleep_at_spike in ((434.0, True), (435.0, False)):
        counts = [0.0] * 20
        counts[10] = spike
        scored = score_sleep(_series(counts), "cole_kripke")
        assert bool(scored.iloc[10]) is asleep_at_spike
        assert scored.drop(scored.index[10]).all()
    # …and four epochs later its weight is 106: wake iff X ≥ 943.4…
    counts = [0.0] * 20
    counts[10] = 944.0
    scored = score_sleep(_series(counts), "cole_kripke")
    assert not scored.iloc[14] and scored.iloc[15] and scored.iloc[7]


def test_scoring_keeps_the_index_and_treats_missing_as_zero() -> None:
    values = _series([np.nan] * 10 + [2000.0] * 10)
    scored = score_sleep(values, "cole_kripke")
    assert scored.dtype == bool and scored.index.equals(values.index)
    assert scored.tolist() == score_sleep(values.fillna(0.0), "cole_kripke").tolist()
    with pytest.raises(ValueError, match="unknown sleep scoring method"):
        score_sleep(values, "oakley")  # type: ignore[arg-type]


def test_tudor_locke_periods_on_constructed_states() -> None:
    wake, asleep = False, True
    states = (
        [wake] * 30
        + [asleep] * 4  # too short to start a period
        + [wake] * 3
        + [asleep] * 100
        + [wake] * 9  # short wake: stays inside the period
        + [asleep] * 80
        + [wake] * 10  # ends it
        + [asleep] * 150  # 150 < 160 minutes: not a period
        + [wake] * 20
    )
    flags = np.array(states)
    periods = sleep_periods(flags)
    assert periods == [(37, 37 + 100 + 9 + 80)]
    summary = summarise_period(flags, np.ones(flags.size, dtype=bool), *periods[0])
    assert summary.total_sleep_minutes == 180
    assert summary.wake_after_sleep_onset_minutes == 9
    assert summary.awakenings == 1
    assert summary.sleep_efficiency_percent == pytest.approx(100 * 180 / 189)


def test_period_runs_to_the_end_of_the_data_and_missing_minutes_count_as_neither() -> None:
    flags = np.array([False] * 10 + [True] * 200)
    observed = np.ones(flags.size, dtype=bool)
    observed[50:60] = False
    assert sleep_periods(flags) == [(10, 210)]
    summary = summarise_period(flags, observed, 10, 210)
    assert summary.total_sleep_minutes == 190
    assert summary.sleep_efficiency_percent == 100.0
    assert summary.wake_after_sleep_onset_minutes == 0
