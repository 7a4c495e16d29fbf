"""Per-night sleep table of the multi-day TAS recordings, read the way `/v1/analyze/file` reads them.

    python scripts/night_table.py [--data ../shared/data/actigraphy] [--timezone UTC] [--sleep cole_kripke]

For each `TAS*_60sec.csv`: upload reader → preprocessing (default settings) → metrics, then one Markdown
row per night: onset, offset, total sleep time, WASO, efficiency, non-wear minutes of the night window
and the reason when the measures are null. A recording the service refuses (422) prints its message.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pat_runner.actigraphy.metrics import actigraphy_metrics  # noqa: E402
from pat_runner.actigraphy.preprocess import preprocess  # noqa: E402
from pat_runner.actigraphy.uploads import read_upload  # noqa: E402
from pat_runner.errors import InvalidInput  # noqa: E402
from pat_runner.settings import Settings  # noqa: E402


def _clock(moment: object) -> str:
    return "—" if moment is None else f"{moment:%m-%d %H:%M}"


def _value(value: object) -> str:
    return "—" if value is None else str(value)


def table(path: Path, zone: str, sleep: str, settings: Settings) -> list[str]:
    # The service's upload dispatch: every device format it accepts, with the same limits.
    raw = read_upload(
        path,
        path.name,
        timezone=zone,
        recording_start="",
        settings=settings,
        max_epochs=settings.max_recording_minutes * 60,
    )
    try:
        pre = preprocess(raw, settings=settings)
    except InvalidInput as exc:
        return [f"422: {exc}"]
    metrics = actigraphy_metrics(pre.minutes, unit=raw.unit, sleep_method=sleep)  # type: ignore[arg-type]
    lines = [
        "| night of | onset | offset | TST | WASO | efficiency % | non-wear min | reason |",
        "|---|---|---|---|---|---|---|---|",
    ]
    index = pre.minutes.index
    missing = pre.minutes.isna().to_numpy()
    for night in metrics.nights:
        nonwear = getattr(night, "nonwear_minutes", None)
        if nonwear is None:
            # Before the shared wear mask, non-wear only existed as missing minutes of preprocessing.
            lo, hi = index.searchsorted(night.window_start), index.searchsorted(night.window_end)
            nonwear = int(np.sum(missing[lo:hi]))
        lines.append(
            f"| {night.night_of} | {_clock(night.sleep_onset)} | {_clock(night.sleep_offset)} | "
            f"{_value(night.total_sleep_minutes)} | {_value(night.wake_after_sleep_onset_minutes)} | "
            f"{_value(night.sleep_efficiency_percent)} | {nonwear} | {night.reason or ''} |"
        )
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "actigraphy")
    parser.add_argument("--timezone", default="UTC")
    parser.add_argument("--sleep", default="cole_kripke", choices=["cole_kripke", "sadeh"])
    args = parser.parse_args(argv)
    settings = Settings()
    for path in sorted(args.data.glob("TAS*_60sec.csv")):
        print(f"\n### {path.name}\n")
        print("\n".join(table(path, args.timezone, args.sleep, settings)))


if __name__ == "__main__":
    main()
