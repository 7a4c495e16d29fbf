"""Traffic of a health-data API client, for `locust` (run by `scripts/loadtest.py`, `make loadtest`).

Mostly `/v1/analyze` on distinct weeks, some repeats of a few weeks (cache hits), some batch calls,
some device-file uploads and a few bad requests (one per user at its start, then by weight), all with
a Firebase ID token. Environment:

    LOADTEST_TOKEN        bearer token (required; an Auth Emulator token in tests)
    LOADTEST_UPLOAD_FILE  device export for `/v1/analyze/file` (optional; the task is skipped without)
    LOADTEST_RATE         requests/s per simulated user (constant throughput; default 0.5)

Expected refusals (429/503 with `Retry-After`, from backpressure) are counted as their own
"expected" entries, not as failures; every other non-2xx except the deliberate 422s is a failure.
"""

from __future__ import annotations

import itertools
import json
import os
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

from locust import HttpUser, constant_throughput, events, task

from pat_runner.actigraphy.synthetic import week_counts

WEEK = 10_080
REPEAT_POOL = 8
EXPECTED_REFUSALS = (429, 503)
_seeds = itertools.count(random.SystemRandom().randrange(1, 2**31))


def week(seed: int, minutes: int = WEEK) -> dict[str, object]:
    """A plausible counts-per-minute week (`synthetic.week_counts`), starting on a day of its own."""
    counts = week_counts(seed, minutes)
    start = datetime(2024, 1, 1, tzinfo=UTC) + timedelta(days=seed % 365)
    return {
        "start": start.isoformat(),
        "timezone": "UTC",
        "epoch_seconds": 60,
        "values": counts.tolist(),
        "unit": "counts",
    }


# Serialized once per process: the load generator must not be the bottleneck on a 2-core machine.
REPEATS = [json.dumps({"recording": week(seed)}) for seed in range(1, REPEAT_POOL + 1)]
UPLOAD = Path(os.environ["LOADTEST_UPLOAD_FILE"]) if os.environ.get("LOADTEST_UPLOAD_FILE") else None


class HealthDataClient(HttpUser):
    wait_time = constant_throughput(float(os.environ.get("LOADTEST_RATE", "0.5")))

    def on_start(self) -> None:
        self.client.headers["Authorization"] = f"Bearer {os.environ['LOADTEST_TOKEN']}"
        self.client.headers["Content-Type"] = "application/json"
        # Once per user, whatever the weights draw: every run, however short, checks that a deliberate
        # 422 is counted as expected (a 30-s run draws the 1-in-17 task not at all in a few % of runs).
        self.bad_request()

    def _post(self, path: str, name: str, *, expect: int = 200, **kwargs: object) -> None:
        with self.client.post(path, name=name, catch_response=True, timeout=120, **kwargs) as response:
            if response.status_code == expect:
                response.success()
            elif response.status_code in EXPECTED_REFUSALS and response.headers.get("Retry-After"):
                # Backpressure working as designed; reported separately from failures.
                response.success()
                events.request.fire(
                    request_type="REFUSED",
                    name=f"{name} {response.status_code}",
                    response_time=response.elapsed.total_seconds() * 1000,
                    response_length=len(response.content),
                    exception=None,
                    context={},
                )
            else:
                response.failure(f"status {response.status_code}")

    @task(10)
    def analyze_new_week(self) -> None:
        self._post("/v1/analyze", "analyze (new week)", data=json.dumps({"recording": week(next(_seeds))}))

    @task(4)
    def analyze_repeat(self) -> None:
        self._post("/v1/analyze", "analyze (repeat)", data=random.choice(REPEATS))

    @task(1)
    def analyze_batch(self) -> None:
        recordings = [week(next(_seeds)) for _ in range(4)]
        self._post("/v1/analyze/batch", "analyze/batch (4)", data=json.dumps({"recordings": recordings}))

    @task(1)
    def analyze_file(self) -> None:
        if UPLOAD is None:
            return
        self._post(
            "/v1/analyze/file",
            "analyze/file",
            files={"file": (UPLOAD.name, UPLOAD.read_bytes(), "application/octet-stream")},
            data={"timezone": "America/New_York", "outputs": json.dumps(["metrics"])},
            headers={"Content-Type": None},
        )

    @task(1)
    def bad_request(self) -> None:
        short = week(next(_seeds), minutes=60)
        self._post(
            "/v1/analyze", "analyze (too short, 422)", expect=422, data=json.dumps({"recording": short})
        )
