"""Every endpoint of the running service × every kind of credential, with real Firebase ID tokens
from the Auth Emulator (and forged ones for the cases the emulator cannot issue)."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.endpoints import ANY_ROLE, ENDPOINTS, OPEN_PATHS

pytestmark = pytest.mark.integration

REJECTED = ["none", "garbage", "expired", "revoked", "wrong_project", "disabled"]


@pytest.fixture(scope="module")
def credentials(firebase_emulator, tokens) -> dict[str, str | None]:
    revoked = firebase_emulator.create_user("matrix-revoked", role="admin")
    disabled = firebase_emulator.create_user("matrix-disabled", role="admin")
    # An existing, enabled admin whose token expired a minute ago: only the expiry can refuse it.
    firebase_emulator.create_user("matrix-expired", role="admin")
    now = int(time.time())
    firebase_emulator.set_valid_since("matrix-expired", now - 7200)
    expired = firebase_emulator.forged_token("matrix-expired", role="admin", exp=now - 60)
    time.sleep(1.1)  # revocation applies to tokens at least one second old
    firebase_emulator.revoke("matrix-revoked")
    firebase_emulator.disable("matrix-disabled")
    return {
        "none": None,
        "garbage": "not-a-jwt",
        "expired": expired,
        "revoked": revoked,
        "wrong_project": firebase_emulator.forged_token("matrix-foreign", role="admin", project="demo-other"),
        "disabled": disabled,
        "no_role": tokens["none"],
        **{role: tokens[role] for role in ANY_ROLE},
    }


def call(server, method: str, path: str, token: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    kwargs = {"json": {}} if method == "POST" and path != "/v1/analyze/file" else {}
    return httpx.request(method, f"{server.url}{path}", headers=headers, timeout=60, **kwargs)


@pytest.mark.parametrize(("method", "path", "roles"), ENDPOINTS, ids=[f"{m} {p}" for m, p, _ in ENDPOINTS])
def test_endpoint_auth_matrix(pat_server, credentials, method: str, path: str, roles: set[str]) -> None:
    outcome = {}
    for kind in [*REJECTED, "no_role", *sorted(ANY_ROLE)]:
        response = call(pat_server, method, path, credentials[kind])
        outcome[kind] = response.status_code
        if response.status_code in (401, 403):
            body = response.json()["error"]
            assert body["code"] == ("unauthenticated" if response.status_code == 401 else "forbidden")
        if response.status_code == 401:
            assert response.headers["www-authenticate"].lower().startswith("bearer")
    expected = {kind: 401 for kind in REJECTED}
    expected["no_role"] = 403
    for role in ANY_ROLE:
        expected[role] = "allowed" if role in roles else 403
    observed = {kind: ("allowed" if status not in (401, 403) else status) for kind, status in outcome.items()}
    assert observed == expected, outcome


@pytest.mark.parametrize("path", OPEN_PATHS)
def test_probes_are_open(pat_server, path: str) -> None:
    assert httpx.get(f"{pat_server.url}{path}", timeout=30).status_code == 200
