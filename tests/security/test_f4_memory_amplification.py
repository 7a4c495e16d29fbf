"""Finding 4: 32 MB of short lines reached 1.2 GB RSS (`splitlines()` ran before any check); a batch of
17 eight-week recordings took 7.7 s and +660 MB; a 30 MB 1-s CSV blocked the loop 5 s, then failed on a
schema limit the reader did not know. Now lines are counted before they are split, the reader knows
the schema's epoch limit, and one request's total work is bounded (`PAT_MAX_REQUEST_VALUES`, counted
before the body is parsed, and `PAT_MAX_REQUEST_MINUTES`)."""

from __future__ import annotations

import json

import pytest

from pat_runner.actigraphy.readers import read_recording_file
from pat_runner.errors import InvalidInput
from pat_runner.model import WEEK_MINUTES
from tests.factories import recording
from tests.security.harness import assert_bounded_error, attack, bearer, upload

pytestmark = pytest.mark.integration


def test_flood_of_short_lines_is_refused_before_splitting(pat_server, tokens) -> None:
    flood = b"timestamp,axis1\n" + b"\n" * (16 * 2**20)
    outcome = attack(pat_server, lambda c: upload(c, tokens["service"], flood), concurrency=2)
    outcome.check(status=422, cpu_s=3.0, rss_mb=400)
    assert "lines" in assert_bounded_error(outcome.responses[0], code="invalid_input")


def test_the_reader_counts_epochs_against_its_limit_before_parsing() -> None:
    # Over HTTP the upload byte limit binds first (a 1-s CSV line is ~22 bytes, the schema allows twelve
    # weeks of 1-s epochs); the reader's own count is what stops a file that fits the bytes but not the
    # epochs, before any line is split or parsed.
    rows = b"2024-03-04T00:00:00,1\n" * 5_000
    with pytest.raises(InvalidInput, match="more than 4,032 lines"):
        read_recording_file(
            b"timestamp,axis1\n" + rows,
            "week.csv",
            timezone="UTC",
            max_bytes=2**25,
            max_minutes=WEEK_MINUTES,
            max_epochs=4_000,
        )


def test_batch_beyond_the_request_minutes_is_refused_before_preprocessing(pat_server, tokens) -> None:
    week = recording(3, subject=None, gap=None)
    eight_weeks = {**week, "values": week["values"] * 8}
    body = json.dumps({"recordings": [eight_weeks] * 17}).encode()
    headers = {**bearer(tokens["service"]), "content-type": "application/json"}
    outcome = attack(pat_server, lambda c: c.post("/v1/analyze/batch", content=body, headers=headers))
    outcome.check(status=413, cpu_s=4.0, rss_mb=400)
    # 1,370,880 values: refused by counting commas, before BentoML parses the body on the event loop.
    message = assert_bounded_error(outcome.responses[0], code="payload_too_large")
    assert "more than 1,209,600 values" in message
