"""Parse time and peak memory of one week of data in each accepted input format.

    python scripts/bench_inputs.py [--formats gt3x,mesa,fhir,agd,actilife,tidy,awd] [--rate 30]

Each format is parsed in a fresh subprocess: peak RSS is that process's `ru_maxrss` (imports included;
the imports-only baseline is printed too), time is the reader's wall time. The files are generated
(`tests/gt3x_files.py`, `tests/mesa_files.py`, `tests/data_files.py`): the `.gt3x` is a week of
continuous 30-Hz movement with no idle sleep mode, the worst case for the decoder.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
WEEK = 10_080
START = datetime(2024, 3, 4, 0, 0)


def write(fmt: str, directory: Path, rate: int) -> Path:
    from pat_runner.actigraphy.synthetic import week_counts
    from scripts.device_files import export_files as data_files
    from scripts.device_files.gt3x_files import gt3x_bytes, walking
    from scripts.device_files.mesa_files import mesa_csv_bytes

    counts = week_counts(1)
    if fmt == "gt3x":
        hours = (("active", walking(3_600, rate, seed=h)) for h in range(WEEK // 60))
        data = gt3x_bytes(START, rate, hours)
        name = "week.gt3x"
    elif fmt == "mesa":
        data = mesa_csv_bytes(START, np.repeat(counts / 2, 2).round().astype(int).tolist())
        name = "mesa.csv"
    elif fmt == "fhir":
        from pat_runner.actigraphy.fhir_in import FHIR_EXAMPLE

        observation = json.loads(json.dumps(FHIR_EXAMPLE))
        observation["valueSampledData"]["data"] = " ".join(f"{c:g}" for c in counts)
        data = json.dumps(observation).encode()
        name = "observation.json"
    elif fmt == "agd":
        data, name = data_files.agd_bytes(START, 60, counts.tolist()), "week.agd"
    elif fmt == "actilife":
        data, name = data_files.actilife_csv_bytes(START, 60, counts.tolist()), "week.csv"
    elif fmt == "tidy":
        moments = [START + timedelta(minutes=i) for i in range(WEEK)]
        data, name = data_files.tidy_csv_bytes(moments, counts.tolist(), utc_suffix=False), "week.csv"
    elif fmt == "awd":
        data, name = data_files.awd_bytes(START, "4", counts.tolist()), "week.awd"
    else:
        raise SystemExit(f"unknown format {fmt}")
    path = directory / name
    path.write_bytes(data)
    return path


def measure(fmt: str, path: str) -> None:
    """Runs in the child: import, note the baseline, parse, report."""
    from pat_runner.actigraphy.fhir_in import read_fhir_resource
    from pat_runner.actigraphy.uploads import read_upload
    from pat_runner.settings import Settings

    settings = Settings().replace(max_raw_samples=10**9)
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    began = time.perf_counter()
    if fmt == "fhir":
        body = json.loads(Path(path).read_text())
        raw = read_fhir_resource(body, timezone="UTC", max_minutes=80_640, max_values=500_000)
    else:
        raw = read_upload(Path(path), path, timezone="UTC", recording_start="2024-03-04", settings=settings)
    seconds = time.perf_counter() - began
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {"epochs": len(raw.values), "seconds": seconds, "baseline_kib": baseline, "peak_kib": peak}
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--formats", default="gt3x,mesa,fhir,agd,actilife,tidy,awd")
    parser.add_argument("--rate", type=int, default=30)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        measure(*args.child)
        return
    print("| format | file size | epochs | parse time (s) | peak RSS (MiB) | of which imports (MiB) |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as directory:
        for fmt in args.formats.split(","):
            path = write(fmt, Path(directory), args.rate)
            result = subprocess.run(
                [sys.executable, __file__, "--child", fmt, str(path)],
                check=True,
                capture_output=True,
                text=True,
                cwd=ROOT,
            )
            got = json.loads(result.stdout.strip().splitlines()[-1])
            label = f"gt3x ({args.rate} Hz)" if fmt == "gt3x" else fmt
            size = path.stat().st_size / 2**20
            print(
                f"| {label} | {size:.1f} MiB | {got['epochs']:,} | {got['seconds']:.1f} "
                f"| {got['peak_kib'] / 1024:.0f} | {got['baseline_kib'] / 1024:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
