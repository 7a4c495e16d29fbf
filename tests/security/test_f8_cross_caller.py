"""Finding 8: a client-chosen `X-Request-ID` seeded the FHIR `fullUrl`s, so two patients sent with one
id got identical `urn:uuid`s. Now resource ids are generated server-side; the request id is only echoed
(`Bundle.identifier`, the header). The cache decision (shared across callers) is in docs/security.md."""

from __future__ import annotations

import pytest

from tests.factories import recording
from tests.security.harness import attack, bearer

pytestmark = pytest.mark.integration

CHOSEN_ID = "0f0e0d0c-client-chosen-id"


def test_same_request_id_gives_distinct_fhir_resource_ids(pat_server, tokens) -> None:
    bundles = []
    for index, subject in enumerate(("Patient/alpha-1", "Patient/beta-2")):
        body = {
            "recording": recording(10 + index, minutes=1_440, subject=subject),
            "options": {"outputs": ["fhir"]},
        }
        headers = {**bearer(tokens["clinician"]), "X-Request-ID": CHOSEN_ID}
        outcome = attack(pat_server, lambda c, b=body, h=headers: c.post("/v1/analyze", json=b, headers=h))
        outcome.check(status=200, cpu_s=5.0, rss_mb=200)
        response = outcome.responses[0]
        assert response.headers["x-request-id"] == CHOSEN_ID
        bundles.append(response.json()["fhir"])
    first, second = ({entry["fullUrl"] for entry in bundle["entry"]} for bundle in bundles)
    assert first and second and not first & second
    assert all(url.startswith("urn:uuid:") for url in first | second)
    assert bundles[0]["identifier"]["value"] == CHOSEN_ID  # echoed, never used as an identifier
