"""Finding 4: 32 MB of short lines reached 1.2 GB RSS (`splitlines()` ran before any check); a batch of
17 eight-week recordings took 7.7 s and +660 MB; a 30 MB 1-s CSV blocked the loop 5 s, then failed on a
schema limit the reader did not know. Now lines are counted before they are split, the reader knows
the schema's epoch limit, and one request's total work is bounded (`PAT_MAX_REQUEST_VALUES`, counted
before the body is parsed, and `PAT_MAX_REQUEST_MINUTES`)."""

from __future__ import annotations

import json

import pytest

from tests.payloads import recording
from tests.security.harness import assert_bounded_error, attack, bearer, upload

pytestmark = pytest.mark.integration


def test_flood_of_short_lines_is_refused_before_splitting(pat_server, tokens) -> None:
    flood = b"timestamp,axis1\n" + b"\n" * (16 * 2**20)
    outcome = attack(pat_server, lambda c: upload(c, tokens["service"], flood), concurrency=2)
    outcome.check(status=422, cpu_s=3.0, rss_mb=400)
    assert "lines" in assert_bounded_error(outcome.responses[0], code="invalid_input")


def test_one_second_csv_over_the_schema_limit_fails_in_the_reader(pat_server, tokens) -> None:
    rows = b"2024-03-04T00:00:00,1\n" * 600_000  # more epochs than the schema's 483,840
    outcome = attack(pat_server, lambda c: upload(c, tokens["service"], b"timestamp,axis1\n" + rows))
    outcome.check(status=422, cpu_s=3.0, rss_mb=300)
    assert "more than 483,872 lines" in assert_bounded_error(outcome.responses[0], code="invalid_input")


def test_batch_beyond_the_request_minutes_is_refused_before_preprocessing(pat_server, tokens) -> None:
    week = recording(3, subject=None, gap=None)
    eight_weeks = {**week, "values": week["values"] * 8}
    body = json.dumps({"recordings": [eight_weeks] * 17}).encode()
    headers = {**bearer(tokens["service"]), "content-type": "application/json"}
    outcome = attack(pat_server, lambda c: c.post("/v1/analyze/batch", content=body, headers=headers))
    outcome.check(status=413, cpu_s=4.0, rss_mb=400)
    # 1,370,880 values: refused by counting commas, before BentoML parses the body on the event loop.
    message = assert_bounded_error(outcome.responses[0], code="payload_too_large")
    assert "more than 483,840 values" in message
