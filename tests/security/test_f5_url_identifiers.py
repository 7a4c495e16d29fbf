"""Finding 5: BentoML's and uvicorn's access lines printed the raw path and query
(`GET /v1/models?subject=Patient/…&ssn=…` verbatim). Now the route template is logged, never the query."""

from __future__ import annotations

import secrets

import pytest

from tests.security.harness import attack, bearer, wait_for_log

pytestmark = pytest.mark.integration


def test_identifiers_in_urls_reach_no_log(pat_server, tokens) -> None:
    subject = f"Patient/url-{secrets.token_hex(6)}"
    ssn = f"{secrets.randbelow(10**9):09d}"
    in_path = f"mrn-{secrets.token_hex(6)}"
    headers = bearer(tokens["clinician"])

    def send(client):
        return client.get("/v1/models", params={"subject": subject, "ssn": ssn}, headers=headers)

    outcome = attack(pat_server, send)
    outcome.check(status=200, cpu_s=1.0, rss_mb=100)
    missing = attack(pat_server, lambda c: c.get(f"/v1/Patient/{in_path}?ssn={ssn}", headers=headers))
    missing.check(status=404, cpu_s=1.0, rss_mb=100)
    logs = wait_for_log(pat_server, missing.responses[0].headers["x-request-id"])
    assert outcome.responses[0].headers["x-request-id"] in logs
    for planted in (subject, subject.split("/")[1], ssn, in_path):
        assert planted not in logs
    access = [
        line for line in logs.splitlines() if '"GET /v1/models HTTP' in line or "path=/v1/models)" in line
    ]
    assert access, "the access lines should name the route template"
