"""Finding 1: an unauthenticated `GET /?` + 96 KB of repeated `eyJ` made the JWT redaction regex
backtrack quadratically on the access-log line (3–4 s of CPU on the event loop; four at once froze
`/livez` for 12 s). Now: 414 before routing or logging, and redaction is linear on any input."""

from __future__ import annotations

import time

import pytest

from pat_runner.serving.audit import REDACTED, redact_secrets
from tests.security.harness import assert_bounded_error, attack, raw_get, wait_for_log

pytestmark = pytest.mark.integration

EYJ_FLOOD = "eyJ" * 32_000  # 96 KB


def test_long_jwt_shaped_path_is_414_without_stalling_the_worker(pat_server) -> None:
    outcome = attack(pat_server, lambda _: raw_get(pat_server, f"/?{EYJ_FLOOD}"), concurrency=4)
    outcome.check(status=414, cpu_s=1.5, rss_mb=100)
    assert_bounded_error(outcome.responses[0], code="uri_too_long")
    # Just under the URL limit the request is routed and logged (401: no token): still cheap.
    below = attack(pat_server, lambda c: c.get(f"/v1/models?t={EYJ_FLOOD[:7_000]}"), concurrency=4)
    below.check(status=401, cpu_s=1.5, rss_mb=100)
    logs = wait_for_log(pat_server, below.responses[-1].headers["x-request-id"])
    assert "eyJeyJ" not in logs


def test_redaction_is_linear_and_still_redacts() -> None:
    jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ1MSJ9.c2ln"
    hostile = [EYJ_FLOOD * 4, "eyJ" + "a." * 200_000, "bearer " * 50_000, ("Bearer%20" + jwt + " ") * 5_000]
    started = time.process_time()
    for text in hostile:
        redact_secrets(text)
    assert time.process_time() - started < 1.0  # the quadratic pattern took seconds on a tenth of this
    assert redact_secrets(f"token={jwt}&next=1") == f"token={REDACTED}&next=1"
    assert redact_secrets(f"Authorization: Bearer {jwt}") == f"Authorization: Bearer {REDACTED}"
    assert jwt not in redact_secrets(f"Bearer%20{jwt}")
