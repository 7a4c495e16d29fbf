"""Peak memory of one request's CPU work for a week at 1-s epochs (604,800 values), per input path.

    python scripts/bench_memory.py [--days 7] [--epoch 1]

Each path runs in a fresh Python process: the request body is built first, then the process's resident
set is read (baseline), then the service's own steps run — `json`: strict validation of the JSON body
(`Recording.model_validate_json`) → `to_raw` → preprocessing → metrics → response serialisation;
`upload`: the CSV reader (`read_recording_file`) → the upload route's conversion to a `Recording` →
the same steps. The table gives the peak RSS of the process (`VmHWM`, reset after building the body)
and the peak above the
baseline, i.e. what one such request adds to an API worker. PAT inference runs in the model service
and is not included.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field} (Linux only)")


def _reset_peak() -> None:
    # Linux: writing 5 to clear_refs resets the high-water mark, so building the body does not count.
    Path("/proc/self/clear_refs").write_text("5")


def run_one(path: str, days: int, epoch: int) -> dict[str, float]:
    sys.path.insert(0, str(ROOT))
    import numpy as np

    from pat_runner.actigraphy.metrics import actigraphy_metrics
    from pat_runner.actigraphy.preprocess import preprocess
    from pat_runner.actigraphy.readers import read_recording_file
    from pat_runner.serving.pipeline import to_raw
    from pat_runner.serving.schemas import Recording
    from pat_runner.settings import Settings

    settings = Settings()
    n = days * 1440 * 60 // epoch
    values = np.random.default_rng(0).poisson(3.0, n).astype(float)
    if path == "json":
        body = json.dumps(
            {
                "start": "2024-05-06T00:00:00Z",
                "timezone": "UTC",
                "epoch_seconds": epoch,
                "values": values.tolist(),
            }
        ).encode()
    else:
        start = np.datetime64("2024-05-06T00:00:00")
        stamps = np.datetime_as_string(start + (np.arange(n) * epoch).astype("timedelta64[s]"), unit="s")
        body = (
            "timestamp,axis1\n" + "\n".join(f"{t},{v:g}" for t, v in zip(stamps, values, strict=True))
        ).encode()
    del values
    _reset_peak()
    baseline = _status_kib("VmRSS")
    if path == "json":
        recording = Recording.model_validate_json(body)
    else:
        raw = read_recording_file(
            body,
            "upload.csv",
            timezone="UTC",
            max_bytes=settings.max_upload_bytes,
            max_minutes=settings.max_recording_minutes,
        )
        recording = Recording.model_validate(
            {
                "start": raw.start,
                "timezone": raw.timezone,
                "epoch_seconds": raw.epoch_seconds,
                "values": [None if v != v else float(v) for v in raw.values],
                "unit": raw.unit,
            }
        )
        del raw
    raw = to_raw(recording)
    pre = preprocess(raw, settings=settings)
    metrics = actigraphy_metrics(pre.minutes, unit=raw.unit)
    metrics.model_dump_json()
    peak = _status_kib("VmHWM")
    return {"body_mib": len(body) / 2**20, "baseline_mib": baseline / 1024, "peak_mib": peak / 1024}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--epoch", type=int, default=1)
    parser.add_argument("--child", choices=["json", "upload"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(run_one(args.child, args.days, args.epoch)))
        return
    n = args.days * 1440 * 60 // args.epoch
    print(f"{args.days} days at {args.epoch}-s epochs = {n:,} values; one fresh process per path")
    print(f"{'path':<8}{'body MiB':>10}{'baseline MiB':>14}{'peak RSS MiB':>14}{'added MiB':>11}")
    for path in ("json", "upload"):
        command = [
            sys.executable,
            __file__,
            "--child",
            path,
            "--days",
            str(args.days),
            "--epoch",
            str(args.epoch),
        ]
        result = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
        added = result["peak_mib"] - result["baseline_mib"]
        print(
            f"{path:<8}{result['body_mib']:>10.1f}{result['baseline_mib']:>14.0f}"
            f"{result['peak_mib']:>14.0f}{added:>11.0f}"
        )


if __name__ == "__main__":
    main()
