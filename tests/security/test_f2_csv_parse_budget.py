"""Finding 2: a 0.6 MB CSV header of 100,000 duplicate column names made pandas spend 107 s renaming
columns inside the async handler. Now: line-length and column caps before parsing, and the parse runs
in a child process under a time and memory budget; past it the request fails and the worker answers."""

from __future__ import annotations

import asyncio
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pat_runner.serving.upload import ParseTimeout, parse_upload
from pat_runner.settings import Settings
from tests.security.harness import assert_bounded_error, attack, upload

ROOT = Path(__file__).resolve().parents[2]

DUPLICATE_HEADER = ("timestamp," + ",".join(["axis1"] * 100_000) + "\n2024-03-04T00:00:00,1\n").encode()


@pytest.mark.integration
def test_duplicate_column_header_is_refused_before_parsing(pat_server, tokens) -> None:
    assert len(DUPLICATE_HEADER) > 600_000
    outcome = attack(pat_server, lambda c: upload(c, tokens["service"], DUPLICATE_HEADER), concurrency=4)
    outcome.check(status=422, cpu_s=2.0, rss_mb=150)
    message = assert_bounded_error(outcome.responses[0], code="invalid_input")
    assert "longer than 4,096 characters" in message


def legitimate_csv(rows: int) -> bytes:
    """A real tidy CSV (15-s epochs) big enough that parsing it takes well over the budgets below."""
    stamps = np.datetime_as_string(np.datetime64("2024-03-04T00:00:00") + np.arange(rows) * 15, unit="s")
    counts = (np.arange(rows) % 500).astype(str)
    body = "\n".join(np.char.add(np.char.add(stamps, ","), counts).tolist())
    return f"timestamp,axis1\n{body}\n".encode()


async def parse_with_loop_probe(path: Path, settings: Settings) -> tuple[Exception, float, float, float]:
    """Parse under `settings`, measuring the event loop's worst delay (our /livez: a handler on this
    loop), this process's CPU time and its peak-RSS growth meanwhile."""
    worst = 0.0
    done = asyncio.Event()

    async def tick() -> None:
        nonlocal worst
        while not done.is_set():
            started = time.perf_counter()
            await asyncio.sleep(0.01)
            worst = max(worst, time.perf_counter() - started - 0.01)

    ticker = asyncio.create_task(tick())
    cpu_before, peak_before = time.process_time(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        await parse_upload(
            path, "big.csv", timezone="UTC", recording_start="", settings=settings, max_epochs=483_840
        )
    except Exception as exc:  # the assertion below names the expected type
        error = exc
    else:
        raise AssertionError("the parse should have been stopped")
    finally:
        done.set()
        await ticker
    peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before) / 1024
    return error, worst, time.process_time() - cpu_before, peak_mb


async def test_parse_past_its_time_budget_is_stopped_and_the_loop_keeps_running(tmp_path: Path) -> None:
    path = tmp_path / "big.csv"
    path.write_bytes(legitimate_csv(300_000))
    settings = Settings(auth="disabled", host="127.0.0.1", upload_parse_timeout_s=0.2)
    error, worst_lag, cpu_s, peak_mb = await parse_with_loop_probe(path, settings)
    assert isinstance(error, ParseTimeout) and (error.status, error.code) == (422, "parse_timeout")
    assert worst_lag < 1.0 and cpu_s < 1.0 and peak_mb < 100


MEMORY_CASE = """
import asyncio, json, sys
from pathlib import Path
from pat_runner.settings import Settings
from tests.security.test_f2_csv_parse_budget import parse_with_loop_probe
settings = Settings(auth="disabled", host="127.0.0.1", upload_parse_memory_mb=64)
error, lag, cpu, peak = asyncio.run(parse_with_loop_probe(Path(sys.argv[1]), settings))
summary = {"type": type(error).__name__, "status": error.status, "lag": lag, "cpu": cpu, "peak": peak}
print(json.dumps(summary))
"""


def test_parse_past_its_memory_budget_is_stopped_and_the_loop_keeps_running(tmp_path: Path) -> None:
    # The child's limit is its address space at the fork plus the budget, so heap the parent has freed
    # but kept mapped counts as room: measured from a fresh process, which has none to speak of.
    path = tmp_path / "big.csv"
    path.write_bytes(legitimate_csv(300_000))
    run = subprocess.run(
        [sys.executable, "-c", MEMORY_CASE, str(path)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout.splitlines()[-1])
    assert (result["type"], result["status"]) == ("ParseMemoryExceeded", 413)
    assert result["lag"] < 1.0 and result["cpu"] < 1.0 and result["peak"] < 100
