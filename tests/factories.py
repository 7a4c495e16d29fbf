"""Shared builders for the tests: minute and epoch series, recordings, settings and model descriptions.

Counts come from `pat_runner.actigraphy.synthetic` (the same generator the benchmarks use); the builders
here only add what tests need on top (pandas series on a local clock, an API payload with a gap and a
sentinel value, settings that never touch a shared Redis or a real Firebase project).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

from pat_runner.actigraphy.preprocess import RawRecording
from pat_runner.actigraphy.synthetic import rest_activity_counts, week_counts
from pat_runner.model import PAT_SIZES, WEEK_MINUTES
from pat_runner.model.info import ModelInfo
from pat_runner.model.model import PAT, PATConfig
from pat_runner.settings import Settings
from scripts.device_files.export_files import agd_bytes, awd_bytes

DAY = 1_440
NEW_YORK = "America/New_York"
# A distinctive activity value planted in every API recording, so log scans can prove values never leak.
SENTINEL_VALUE = 7777.25
SENTINEL_INDEX = 500

# --- minute and epoch series -------------------------------------------------------------------------


def minutes_series(values: np.ndarray, start: str = "2024-01-01 00:00", tz: str = "UTC") -> pd.Series:
    """One value per elapsed minute from a local wall-clock start."""
    first = pd.Timestamp(start).tz_localize(tz)
    index = pd.DatetimeIndex(first.tz_convert("UTC") + pd.to_timedelta(np.arange(values.size), unit="min"))
    return pd.Series(values.astype(float), index=index.tz_convert(tz))


def rest_activity_series(
    minutes: int,
    seed: int,
    *,
    start: str = "2024-01-01 00:00",
    tz: str = "UTC",
    awake_shape: float = 2.0,
    awake_scale: float = 300.0,
    asleep_mean: float = 2.0,
) -> pd.Series:
    """Synthetic counts on the local clock of `tz` (awake 07:00–23:00 local time, DST included)."""
    template = minutes_series(np.zeros(minutes), start, tz)
    counts = rest_activity_counts(
        template.index.hour.to_numpy(),
        seed,
        awake_shape=awake_shape,
        awake_scale=awake_scale,
        asleep_mean=asleep_mean,
    )
    return pd.Series(counts, index=template.index)


def split_into_epochs(minutes: np.ndarray, epoch_seconds: int, seed: int = 1) -> np.ndarray:
    """Random non-negative integer epochs that sum to each minute's count."""
    per_minute = 60 // epoch_seconds
    rng = np.random.default_rng(seed)
    epochs = np.zeros((minutes.size, per_minute))
    for index, count in enumerate(minutes.astype(int)):
        epochs[index] = rng.multinomial(count, np.full(per_minute, 1 / per_minute))
    return epochs.ravel()


# --- recordings --------------------------------------------------------------------------------------


def raw_recording(
    values: np.ndarray | list[float | None],
    *,
    start: datetime | None = None,
    timezone: str = NEW_YORK,
    epoch_seconds: int = 60,
) -> RawRecording:
    """A `RawRecording` as a reader or the API hands it to preprocessing (default start: Monday
    2024-03-04 00:00 New York time, the week of a DST change)."""
    return RawRecording(
        start=start or datetime.fromisoformat("2024-03-04T00:00:00-05:00"),
        timezone=timezone,
        epoch_seconds=epoch_seconds,
        values=values,
    )


def recording(
    seed: int = 0,
    *,
    minutes: int = WEEK_MINUTES,
    timezone: str = NEW_YORK,
    start: datetime | None = None,
    subject: str | None = "Patient/test-0001",
    gap: tuple[int, int] | None = (3_000, 3_060),
) -> dict[str, Any]:
    """The JSON body of an API `Recording`: synthetic counts, a gap of nulls and `SENTINEL_VALUE`."""
    zone = ZoneInfo(timezone)
    start = start or datetime(2024, 3, 4, tzinfo=zone)
    values: list[float | None] = [float(v) for v in week_counts(seed, minutes, start_hour=start.hour)]
    if gap is not None:
        values[gap[0] : gap[1]] = [None] * (gap[1] - gap[0])
    if minutes > SENTINEL_INDEX:
        values[SENTINEL_INDEX] = SENTINEL_VALUE
    body: dict[str, Any] = {
        "start": start.isoformat(),
        "timezone": timezone,
        "epoch_seconds": 60,
        "values": values,
        "unit": "counts",
    }
    if subject is not None:
        body["subject"] = subject
    return body


def device_export(suffix: str) -> tuple[str, bytes]:
    """Two days of synthetic 60-s counts as a device export (`.agd` or `.AWD`): (file name, bytes), for
    upload tests that check the form, its fields and its errors; the readers' handling of real devices'
    files is tested on `../shared`."""
    counts = week_counts(3, 2 * DAY).tolist()
    start = datetime(2024, 3, 4)
    if suffix == ".agd":
        return "upload.agd", agd_bytes(start, 60, counts)
    if suffix == ".AWD":
        return "upload.AWD", awd_bytes(start, "4", counts)
    raise ValueError(f"no synthetic export for {suffix!r}")


# --- settings and model descriptions -----------------------------------------------------------------

# No shared cache, no configured keys, no authentication, loopback only: a test opts into each.
TEST_SETTINGS: dict[str, Any] = {
    "auth": "disabled",
    "host": "127.0.0.1",
    "redis_url": "",
    "cache_keys": "",
    "cache_hmac_key": "",
}


def make_settings(**overrides: Any) -> Settings:
    """`Settings(...)` with `TEST_SETTINGS`, then `overrides`; other fields keep their documented defaults
    unless the environment sets them."""
    return Settings(**{**TEST_SETTINGS, **overrides})


def model_info(**overrides: Any) -> ModelInfo:
    """The store's description of a model; by default the demo PAT-S. Architecture fields follow `size`
    (the published sizes) and `parameters` is the real count of that architecture unless given."""
    size = overrides.get("size", "S")
    patch_size, num_layers, num_heads = PAT_SIZES[size]
    fields: dict[str, Any] = {
        "tag": "pat-demo:test",
        "name": "pat-demo",
        "size": size,
        "layout": "demo",
        "demo": True,
        "head_task": None,
        "patch_size": patch_size,
        "num_layers": num_layers,
        "num_heads": num_heads,
        "source_file": None,
        "source_sha256": None,
        "dataset": None,
        "converter_version": "1",
        "has_scaler": False,
        **overrides,
    }
    if "parameters" not in fields:
        fields["parameters"] = PAT(PATConfig.for_size(size)).parameter_count()
    return ModelInfo(**fields)


class NamedClient:
    """Stands in for a model-service client in the routing tests: a name to tell the picks apart."""

    def __init__(self, name: str) -> None:
        self.name = name

    async def close(self) -> None:
        pass
