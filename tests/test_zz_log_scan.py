"""Runs after the other server tests (file order): every log record the server wrote during the whole
suite, at DEBUG, is scanned for tokens, subject identifiers and the activity value planted in every
submitted recording. Also the audit trail: one record per request with the required fields."""

from __future__ import annotations

import json

import pytest

from tests.factories import SENTINEL_VALUE

pytestmark = pytest.mark.integration

SUBJECTS = ("Patient/test-0001", "test-0001")


def test_server_logs_hold_no_health_data_or_tokens(pat_server, tokens) -> None:
    logs = pat_server.logs()
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
    assert len({r["request_id"] for r in records}) == len(records)
