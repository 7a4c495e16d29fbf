"""Acceptance: metrics on real multi-week recordings against pyActigraphy 1.2.2 and ActiLife 6 output.

Recordings: `shared/data/actigraphy/` (ActiGraph 60-s CSVs from arctools, NHANES 2003–2004 weeks; see
its README). pyActigraphy is a test-only dependency installed with `pip install --no-deps
pyActigraphy==1.2.2`: its package `__init__` imports every reader, one of which needs `accelerometer`
(pinned to scikit-learn 1.0.1, not installable on Python 3.11), so only the submodules compared here are
loaded (their own deps — numba, scipy, statsmodels, pyexcel — are in the `test` extra).

Known definition differences, each handled explicitly rather than by a loose tolerance:
* IS/IV: pyActigraphy uses pandas' sample variances (ddof = 1) and centres the 24-h profile on its own
  mean; the published formulas (Van Someren 1999) use n and p and the grand mean. On whole days the two
  means coincide and the results differ by the exact factors 24/23·(n−1)/n (IS) and (n−1)/n (IV).
* Hourly bins: pyActigraphy bins hours from the first sample, this module on the local clock; the
  recordings are cut to whole local days so the bins coincide.
* Cole–Kripke: pyActigraphy's `CK(settings="mean")` divides counts by 30 (2-s epochs, as in the paper)
  and does not cap; ActiLife divides by 100 and caps at 300. Its window function gives the same scores on
  ActiLife-scaled counts, except at the edges, where it has no padding (NaN → wake).
* Sadeh: pyActigraphy has no 300 cap, counts NAT as 50 < x < 100 (ActiLife 50 ≤ x < 100), takes
  ln(x + 1) of the *next* epoch and uses PS > 0 by default (ActiLife PS > −4). With capped input and
  threshold −4 the scores must agree exactly wherever the remaining two differences cannot matter (no
  count of exactly 50 in the 11-epoch window and the next epoch's count equals the current one); the
  overall agreement is reported in the assertion message.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from pat_runner.actigraphy.metrics import actigraphy_metrics
from pat_runner.actigraphy.sleep import score_sleep, sleep_periods, summarise_period
from pat_runner.actigraphy.wear import troiano_nonwear

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "actigraphy"
TAS_FILES = sorted(DATA.glob("TAS*_60sec.csv"))
NHANES = DATA / "nhanes_2003_2004_unidata.csv"

pytestmark = pytest.mark.skipif(not TAS_FILES, reason=f"real recordings not found under {DATA}")


def _load_pyactigraphy() -> tuple[Any, Any]:
    spec = importlib.util.find_spec("pyActigraphy")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("pyActigraphy not installed (pip install --no-deps pyActigraphy==1.2.2)")
    root = Path(next(iter(spec.submodule_search_locations)))
    # Register bare packages so importing the submodules skips the readers' imports in __init__.
    for name in ("pyActigraphy", "pyActigraphy.sleep"):
        if name not in sys.modules:
            package = types.ModuleType(name)
            package.__path__ = [str(root.joinpath(*name.split(".")[1:]))]
            sys.modules[name] = package
    from pyActigraphy.metrics import metrics as pa_metrics
    from pyActigraphy.sleep import scoring_base as pa_scoring

    return pa_metrics, pa_scoring


@pytest.fixture(scope="module")
def pyactigraphy() -> tuple[Any, Any]:
    return _load_pyactigraphy()


def read_tas(path: Path) -> pd.Series:
    frame = pd.read_csv(path, skiprows=10)
    index = pd.DatetimeIndex(pd.to_datetime(frame["timestamp"], format="%Y-%m-%d %H:%M:%S"))
    return pd.Series(frame["Axis1"].astype(float).to_numpy(), index=index).asfreq("1min")


def read_nhanes() -> list[pd.Series]:
    frame = pd.read_csv(NHANES)
    weeks = []
    for _, person in frame.groupby("seqn"):
        # No dates in NHANES: paxday 1 = Sunday, so start on a Sunday (2004-01-04) plus the first paxday.
        first = pd.Timestamp("2004-01-04") + pd.Timedelta(days=int(person["paxday"].iloc[0]) - 1)
        index = pd.date_range(first, periods=len(person), freq="1min")
        weeks.append(pd.Series(person["paxinten"].astype(float).to_numpy(), index=index))
    return weeks


def whole_days(series: pd.Series) -> pd.Series:
    start = series.index[0].ceil("D")
    days = int((series.index[-1] + pd.Timedelta(minutes=1) - start) / pd.Timedelta(days=1))
    return series[(series.index >= start) & (series.index < start + pd.Timedelta(days=days))]


def recordings() -> list[tuple[str, pd.Series]]:
    found = [(path.stem, whole_days(read_tas(path))) for path in TAS_FILES]
    if NHANES.exists():
        found += [(f"nhanes-{i}", week) for i, week in enumerate(read_nhanes())]
    return found


RECORDINGS = recordings() if TAS_FILES else []


@pytest.mark.parametrize(("name", "series"), RECORDINGS, ids=[name for name, _ in RECORDINGS])
def test_rhythm_metrics_match_pyactigraphy(
    pyactigraphy: tuple[Any, Any], name: str, series: pd.Series
) -> None:
    pa_metrics, _ = pyactigraphy
    ours = actigraphy_metrics(series.tz_localize("UTC"))
    hours = len(series) // 60
    if hours < 48:
        assert ours.interdaily_stability is None and ours.l5 is None, name
        assert ours.reasons["interdaily_stability"].startswith("fewer than 48")
        return
    hourly = series.resample("1h").mean()
    expected_is = pa_metrics._interdaily_stability(hourly) * 23 / 24 * hours / (hours - 1)
    expected_iv = pa_metrics._intradaily_variability(hourly) * hours / (hours - 1)
    assert ours.interdaily_stability == pytest.approx(expected_is, rel=1e-9)
    assert ours.intradaily_variability == pytest.approx(expected_iv, rel=1e-9)
    l5_start, l5 = pa_metrics._lmx(series, "5h", lowest=True)
    m10_start, m10 = pa_metrics._lmx(series, "10h", lowest=False)
    assert ours.l5 == pytest.approx(l5, rel=1e-9, abs=1e-9)
    assert ours.m10 == pytest.approx(m10, rel=1e-9)
    assert ours.l5_onset == _clock(l5_start) and ours.m10_onset == _clock(m10_start)
    assert ours.relative_amplitude == pytest.approx((m10 - l5) / (m10 + l5), rel=1e-9)


def _clock(offset: pd.Timedelta) -> str:
    minutes = int(offset / pd.Timedelta(minutes=1)) % 1440
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


@pytest.mark.parametrize("path", TAS_FILES, ids=[p.stem for p in TAS_FILES])
def test_sleep_scoring_matches_pyactigraphy_where_definitions_agree(
    pyactigraphy: tuple[Any, Any], path: Path
) -> None:
    _, pa_scoring = pyactigraphy
    counts = read_tas(path)
    interior = slice(10, len(counts) - 10)

    cole_kripke = score_sleep(counts, "cole_kripke").to_numpy()
    window = np.array([106, 54, 58, 76, 230, 74, 67, 0, 0])
    reference_ck = pa_scoring._cole_kripke((counts / 100).clip(upper=300), 0.001, window, 1.0).to_numpy()
    assert np.array_equal(cole_kripke[interior], reference_ck[interior].astype(bool))

    sadeh = score_sleep(counts, "sadeh").to_numpy()
    capped = counts.clip(upper=300)
    weights = np.array([-0.065, -1.08, -0.056, -0.703])
    reference_sadeh = pa_scoring._sadeh(capped, 7.601, weights, -4.0).to_numpy().astype(bool)
    values = capped.to_numpy()
    next_equal = np.r_[values[:-1] == values[1:], False]
    fifty_nearby = pd.Series(values == 50).rolling(11, center=True, min_periods=1).max().to_numpy() > 0
    comparable = next_equal & ~fifty_nearby
    comparable[:10] = comparable[-10:] = False
    overall = float((sadeh[interior] == reference_sadeh[interior]).mean())
    assert comparable.sum() > len(counts) // 3
    assert np.array_equal(sadeh[comparable], reference_sadeh[comparable]), f"overall agreement {overall:.4f}"


def test_intensity_minutes_on_nhanes_weeks() -> None:
    if not NHANES.exists():
        pytest.skip(f"{NHANES} not found")
    for week in read_nhanes():
        metrics = actigraphy_metrics(week.tz_localize("UTC"), nonwear_algorithm="troiano")
        assert len(metrics.days) == 7
        wear = ~troiano_nonwear(week.to_numpy())
        for day in metrics.days:
            in_day = np.asarray(week.index.date == day.date)
            counts = week.to_numpy()[in_day & wear]
            assert day.wear_minutes == counts.size
            if not day.valid:
                assert day.sedentary_minutes is None
                continue
            bands = pd.cut(counts, [-np.inf, 100, 2020, 5999, np.inf], right=False).value_counts().to_numpy()
            assert [
                day.sedentary_minutes,
                day.light_minutes,
                day.moderate_minutes,
                day.vigorous_minutes,
            ] == list(bands)
        assert metrics.valid_days == sum(day.valid for day in metrics.days) > 0


ACTILIFE = {
    "sadeh": DATA / "GT3XPlus-RawData-Day01-Sadeh.csv",
    "cole_kripke": DATA / "GT3XPlus-RawData-Day01-ColeKripke.csv",
}
ACTILIFE_PERIODS = DATA / "GT3XPlus-RawData-Day01-sleep-periods.csv"


@pytest.mark.parametrize("method", sorted(ACTILIFE))
def test_sleep_scoring_matches_actilife_epoch_by_epoch(method: str) -> None:
    path = ACTILIFE[method]
    if not path.exists():
        pytest.skip(
            f"ActiLife 6 scoring export {path.name} not in shared data (it ships in actigraph.sleepr "
            "inst/extdata/, GPL ≥ 2)"
        )
    export = pd.read_csv(path)
    scored = score_sleep(pd.Series(export["Axis1"].astype(float)), method)  # type: ignore[arg-type]
    assert scored.tolist() == export["Sleep or Awake?"].eq("S").tolist()


def test_sleep_period_matches_actilife_tudor_locke_default() -> None:
    if not (ACTILIFE_PERIODS.exists() and ACTILIFE["sadeh"].exists()):
        pytest.skip("ActiLife 6 sleep-period export not in shared data (actigraph.sleepr inst/extdata/)")
    export = pd.read_csv(ACTILIFE["sadeh"])
    stamps = pd.to_datetime(export["Date"] + " " + export["Time"], format="%m/%d/%Y %I:%M %p")
    asleep = score_sleep(pd.Series(export["Axis1"].astype(float)), "sadeh").to_numpy()
    periods = pd.read_csv(ACTILIFE_PERIODS)
    expected = periods[
        (periods["sleep_algorithm"] == "Sadeh") & (periods["period_algorithm"] == "Tudor-Locke Default")
    ]
    found = sleep_periods(asleep)
    assert len(found) == len(expected)
    for (start, stop), (_, row) in zip(found, expected.iterrows(), strict=True):
        summary = summarise_period(asleep, np.ones(asleep.size, dtype=bool), start, stop)
        assert stamps[start] == pd.Timestamp(row["in_bed_time"]).tz_localize(None)
        assert stop - start == row["duration"]
        assert summary.total_sleep_minutes == row["total_sleep_time"]
        assert summary.wake_after_sleep_onset_minutes == row["wake_after_onset"]
        assert summary.awakenings == row["nb_awakenings"]
        assert summary.sleep_efficiency_percent == pytest.approx(row["efficiency"], abs=0.005)
