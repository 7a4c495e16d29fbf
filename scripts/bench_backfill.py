"""Back-fill throughput: a generated cohort through `scripts/backfill.py` with 1 and 2 PAT workers.

    BENTOML_HOME=... python scripts/bench_backfill.py [--recordings 64] [--workers 1 2]

Recordings are 8 days of plausible minute counts (two week windows each after the stride default,
one here); the figure is recordings per minute end to end (Ray start-up excluded, reading, tasks,
actors and writing included). Results go into docs/backfill.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]


def cohort_rows(n: int, *, seed: int = 0, minutes: int = 8 * 1440) -> list[dict]:
    """`n` recordings of `minutes` minute counts: rest at night, gamma-distributed activity by day, a gap."""
    rows = []
    for i in range(n):
        rng = np.random.default_rng(seed + i)
        hour = (np.arange(minutes) / 60.0) % 24
        awake = (hour >= 7) & (hour < 23)
        counts = np.round(np.where(awake, rng.gamma(1.5, 250.0, minutes), rng.poisson(3.0, minutes)))
        values: list[float | None] = [float(v) for v in counts]
        values[3_000 + i : 3_060 + i] = [None] * 60
        start = datetime(2024, 3, 4, tzinfo=UTC) + timedelta(days=i)
        rows.append(
            {
                "recording_id": f"rec-{i:05d}",
                "start": start.isoformat(),
                "timezone": "America/New_York",
                "epoch_seconds": 60,
                "values": values,
                "unit": "counts",
                "subject": f"Patient/cohort-{i:05d}",
            }
        )
    return rows


def write_cohort(path: Path, rows: list[dict]) -> Path:
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recordings", type=int, default=64)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        source = write_cohort(Path(tmp) / "cohort.parquet", cohort_rows(args.recordings))
        for workers in args.workers:
            out = Path(tmp) / f"out-{workers}"
            result = subprocess.run(
                [
                    sys.executable,
                    str(ROOT / "scripts" / "backfill.py"),
                    str(source),
                    str(out),
                    "--workers",
                    str(workers),
                    "--cpus",
                    str(workers + 1),
                    "--no-progress",
                ],
                capture_output=True,
                text=True,
                check=True,
                env={**os.environ, "PAT_MODEL_TAG": os.environ.get("PAT_MODEL_TAG", "pat-demo:latest")},
            )
            report = json.loads(result.stdout.strip().splitlines()[-1])
            print(json.dumps({"workers": workers, "cores": os.cpu_count(), **report}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
