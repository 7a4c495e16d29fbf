"""Runs after the other server tests (file order): every log record the server wrote during the whole
suite, at DEBUG, is scanned for tokens, subject identifiers and the activity value planted in every
submitted recording. Also the audit trail: one record per request with the required fields."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from tests.factories import SENTINEL_VALUE
from tests.security.test_f8_cross_caller import CHOSEN_ID as REUSED_REQUEST_ID

pytestmark = pytest.mark.integration

SUBJECTS = ("Patient/test-0001", "test-0001")
# Planted in URL queries and paths below: access lines must carry the route template, never these.
URL_SUBJECT = "Patient/url-planted-5150"
URL_SSN = "078051120"


def plant_identifiers_in_urls(server, token: str) -> str:
    """Requests with identifiers in the query and the path; returns the last one's request id."""
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=server.url, verify=server.verify, timeout=30) as client:
        client.get("/v1/models", params={"subject": URL_SUBJECT, "ssn": URL_SSN}, headers=headers)
        client.get("/livez", params={"subject": URL_SUBJECT})
        client.post("/v1/analyze", params={"subject": URL_SUBJECT}, json={}, headers=headers)
        last = client.get(f"/v1/{URL_SUBJECT}", params={"ssn": URL_SSN}, headers=headers)
    return last.headers["x-request-id"]


def test_server_logs_hold_no_health_data_or_tokens(pat_server, tokens) -> None:
    marker = plant_identifiers_in_urls(pat_server, tokens["clinician"])
    deadline = time.monotonic() + 5
    while marker not in pat_server.logs() and time.monotonic() < deadline:
        time.sleep(0.1)
    logs = pat_server.logs()
    assert marker in logs, "the planted requests should have been logged"
    for planted in (URL_SUBJECT, "url-planted-5150", URL_SSN):
        assert planted not in logs, "an identifier from a URL reached the logs"
    assert len(logs.splitlines()) > 100, "the suite should have produced plenty of log records"
    assert "DEBUG" in logs or '"level": "DEBUG"' in logs, "the server must log at DEBUG for this scan"
    for token in tokens.values():
        assert token not in logs
        assert token.split(".")[1] not in logs  # not even the claims part
    assert "eyJ" not in logs, "something JWT-shaped reached the logs"
    assert "Bearer " not in logs
    for subject in SUBJECTS:
        assert subject not in logs
    assert str(SENTINEL_VALUE) not in logs
    assert "input_value" not in logs, "a pydantic error quoted request input"


def test_audit_trail_has_one_record_per_request(pat_server) -> None:
    records = []
    for line in pat_server.logs().splitlines():
        if line.startswith("{") and '"pat.audit"' in line:
            records.append(json.loads(line)["audit"])
    analyses = [r for r in records if r["endpoint"] == "/v1/analyze" and r["status"] == 200]
    assert analyses, "no audit record of a successful analysis"
    required = {"request_id", "caller_uid", "role", "endpoint", "status", "latency_ms", "request_bytes"}
    for record in analyses:
        assert required <= record.keys()
        assert len(record["input_sha256"]) == 64 and record["model_tag"].startswith("pat-demo:")
        assert record["caller_uid"] and record["role"] in {"clinician", "service", "admin"}
    # Server-assigned ids are unique; tests/security sends one client-chosen id twice on purpose.
    assigned = [r["request_id"] for r in records if r["request_id"] != REUSED_REQUEST_ID]
    assert len(set(assigned)) == len(assigned)
