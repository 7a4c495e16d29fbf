"""`pat_runner.serving.auth` around a small Starlette app with the service's paths: real ID tokens from the
Firebase Auth Emulator for every credential case, the start-up configuration checks, and — offline —
RS256 signature verification of production-style tokens against certificates served locally."""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import firebase_admin._token_gen
import google.auth.crypt
import google.auth.jwt
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from pat_runner.serving.auth import (
    DEV_CALLER_UID,
    AuthConfigError,
    FirebaseAuthMiddleware,
    check_auth_config,
)
from pat_runner.serving.routes import endpoint_label
from pat_runner.settings import Settings
from tests.certs import self_signed
from tests.endpoints import ANY_ROLE, ENDPOINTS, OPEN_PATHS
from tests.factories import make_settings
from tests.firebase_emulator import FirebaseEmulator

# Each rejection for its own reason, not an earlier check catching it by accident.
REASON_IN_MESSAGE = {
    "none": "header is required",
    "garbage": "not a valid Firebase ID token",
    "basic_scheme": "must be `Bearer",
    "expired": "expired",
    "revoked": "revoked",
    "wrong_project": "not a valid Firebase ID token",
    "disabled": "disabled",
    "unknown_user": "does not exist",
    "no_role": "needs one of the roles",
}
REJECTED = [
    "none",
    "garbage",
    "basic_scheme",
    "expired",
    "revoked",
    "wrong_project",
    "disabled",
    "unknown_user",
]


async def echo_caller(request: Request) -> JSONResponse:
    caller = getattr(request.state, "caller", None)
    return JSONResponse({"uid": getattr(caller, "uid", None), "role": getattr(caller, "role", None)})


def service_shaped_app() -> Starlette:
    routes = [
        Route(path, echo_caller, methods=[method]) for method, path, _ in ENDPOINTS if "not-an" not in path
    ]
    routes += [Route(path, echo_caller, methods=["GET"]) for path in OPEN_PATHS]
    return Starlette(routes=routes)


def auth_settings(project_id: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "auth": "firebase",
        "firebase_project_id": project_id,
        "auth_check_revoked": True,
        "allow_auth_emulator": True,
        "protect_docs": True,
        "protect_metrics": True,
        "host": "127.0.0.1",
    }
    values.update(overrides)
    return make_settings(**values)


def with_environ(settings: Settings, environ: dict[str, str]) -> Settings:
    """The settings as the service would read them with exactly these Firebase variables set."""
    return settings.replace(
        firebase_auth_emulator_host=environ.get("FIREBASE_AUTH_EMULATOR_HOST", ""),
        google_application_credentials=environ.get("GOOGLE_APPLICATION_CREDENTIALS", ""),
    )


def client_for(settings: Settings, client_host: str = "127.0.0.1") -> httpx.AsyncClient:
    app = FirebaseAuthMiddleware(service_shaped_app(), settings=settings)
    transport = httpx.ASGITransport(app=app, client=(client_host, 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


async def call(client: httpx.AsyncClient, method: str, path: str, token: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return await client.request(method, path, headers=headers)


class ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def pat_logs() -> Iterator[ListHandler]:
    """Records of the `pat` loggers, captured on the logger itself (the service's logging set-up
    stops propagation to the root logger, where caplog listens)."""
    handler = ListHandler()
    logger = logging.getLogger("pat")
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(previous)


@pytest.fixture(scope="module")
def emulator_env(firebase_emulator: FirebaseEmulator) -> Iterator[FirebaseEmulator]:
    """firebase-admin reads FIREBASE_AUTH_EMULATOR_HOST on every verification."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FIREBASE_AUTH_EMULATOR_HOST", firebase_emulator.host)
        yield firebase_emulator


@pytest.fixture(scope="module")
def credentials(emulator_env: FirebaseEmulator, tokens: dict[str, str]) -> dict[str, str | None]:
    emulator = emulator_env
    revoked = emulator.create_user("auth-revoked", role="admin")
    disabled = emulator.create_user("auth-disabled", role="admin")
    emulator.create_user("auth-expired", role="admin")
    now = int(time.time())
    # Sessions valid since two hours ago, so the back-dated token below passes the revocation check
    # and only the expiry check can refuse it.
    emulator.set_valid_since("auth-expired", now - 7200)
    time.sleep(1.1)  # revocation applies to tokens at least one second old
    emulator.revoke("auth-revoked")
    emulator.disable("auth-disabled")
    return {
        "none": None,
        "garbage": "not-a-jwt",
        "basic_scheme": None,
        "expired": emulator.forged_token("auth-expired", role="admin", exp=now - 100),
        "revoked": revoked,
        "wrong_project": emulator.forged_token("test-admin", role="admin", project="demo-other"),
        "disabled": disabled,
        "unknown_user": emulator.forged_token("auth-never-created", role="admin"),
        "no_role": tokens["none"],
        **{role: tokens[role] for role in ANY_ROLE},
    }


@pytest.mark.parametrize(("method", "path", "roles"), ENDPOINTS, ids=[f"{m} {p}" for m, p, _ in ENDPOINTS])
async def test_auth_matrix(
    emulator_env: FirebaseEmulator,
    credentials: dict[str, str | None],
    method: str,
    path: str,
    roles: set[str],
) -> None:
    observed: dict[str, object] = {}
    async with client_for(auth_settings(emulator_env.project_id)) as client:
        for kind, token in credentials.items():
            if kind == "basic_scheme":
                response = await client.request(method, path, headers={"Authorization": "Basic dXNlcjpwYXNz"})
            else:
                response = await call(client, method, path, token)
            if response.status_code in (401, 403):
                error = response.json()["error"]
                assert error["code"] == ("unauthenticated" if response.status_code == 401 else "forbidden")
                assert REASON_IN_MESSAGE.get(kind, "") in error["message"]
                assert response.headers["www-authenticate"].startswith("Bearer")
                observed[kind] = response.status_code
            else:
                observed[kind] = "allowed"
                if response.status_code == 200:
                    assert response.json() == {"uid": f"test-{kind}", "role": kind}
                else:
                    assert response.status_code == 404 and path == "/v1/not-an-endpoint"
    expected: dict[str, object] = dict.fromkeys(REJECTED, 401)
    expected["no_role"] = 403
    expected.update({role: "allowed" if role in roles else 403 for role in ANY_ROLE})
    assert observed == expected


async def test_missing_token_challenge_has_no_error_code(emulator_env: FirebaseEmulator) -> None:
    """RFC 6750 §3.1: a request without credentials gets a bare challenge; a bad token gets
    `error="invalid_token"`."""
    async with client_for(auth_settings(emulator_env.project_id)) as client:
        missing = await call(client, "POST", "/v1/analyze", None)
        garbage = await call(client, "POST", "/v1/analyze", "not-a-jwt")
    assert missing.headers["www-authenticate"] == 'Bearer realm="pat"'
    assert 'error="invalid_token"' in garbage.headers["www-authenticate"]


@pytest.mark.parametrize("path", OPEN_PATHS)
async def test_probes_are_open(emulator_env: FirebaseEmulator, path: str) -> None:
    async with client_for(auth_settings(emulator_env.project_id)) as client:
        assert (await call(client, "GET", path, None)).status_code == 200
        assert (await call(client, "GET", path, "not-a-jwt")).status_code == 200


@pytest.mark.parametrize("path", ["/", "/docs.json", "/static_content/swagger-ui.css", "/metrics"])
async def test_docs_and_metrics_open_when_not_protected(emulator_env: FirebaseEmulator, path: str) -> None:
    settings = auth_settings(emulator_env.project_id, protect_docs=False, protect_metrics=False)
    async with client_for(settings) as client:
        assert (await call(client, "GET", path, None)).status_code == 200
        assert (await call(client, "POST", "/v1/analyze", None)).status_code == 401


async def test_emulator_trusts_forged_tokens_so_time_claims_are_checked_here(
    emulator_env: FirebaseEmulator, tokens: dict[str, str]
) -> None:
    """Why `PAT_ALLOW_AUTH_EMULATOR` exists: in emulator mode firebase-admin accepts an unsigned token
    with any claims. The middleware's own `exp`/`iat` checks still refuse stale or future tokens."""
    emulator = emulator_env
    now = int(time.time())
    settings = auth_settings(emulator.project_id, auth_check_revoked=False)
    async with client_for(settings) as client:
        forged = await call(client, "GET", "/v1/models", emulator.forged_token("nobody", role="admin"))
        expired = await call(
            client,
            "GET",
            "/v1/models",
            emulator.forged_token("nobody", role="admin", iat=now - 7200, exp=now - 3600),
        )
        future = await call(
            client, "GET", "/v1/models", emulator.forged_token("nobody", role="admin", iat=now + 600)
        )
    assert forged.status_code == 200 and forged.json() == {"uid": "nobody", "role": "admin"}
    assert expired.status_code == 401
    assert future.status_code == 401


async def test_revocation_check_can_be_turned_off(
    emulator_env: FirebaseEmulator, credentials: dict[str, str | None]
) -> None:
    settings = auth_settings(emulator_env.project_id, auth_check_revoked=False)
    async with client_for(settings) as client:
        assert (await call(client, "GET", "/v1/models", credentials["revoked"])).status_code == 200


async def test_unknown_role_claim_is_no_role(emulator_env: FirebaseEmulator) -> None:
    token = emulator_env.create_user("auth-superuser", role="superuser")
    async with client_for(auth_settings(emulator_env.project_id)) as client:
        assert (await call(client, "GET", "/v1/models", token)).status_code == 403


async def test_several_authorization_headers_are_refused(
    emulator_env: FirebaseEmulator, tokens: dict[str, str]
) -> None:
    headers = [("Authorization", f"Bearer {tokens['admin']}"), ("Authorization", "Bearer not-a-jwt")]
    async with client_for(auth_settings(emulator_env.project_id)) as client:
        assert (await client.get("/v1/models", headers=headers)).status_code == 401


async def test_auth_failure_reason_reaches_the_audit_fields(emulator_env: FirebaseEmulator) -> None:
    app = FirebaseAuthMiddleware(service_shaped_app(), settings=auth_settings(emulator_env.project_id))
    audit: dict[str, object] = {}

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b"", "more_body": False}

    sent: list[dict[str, object]] = []

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "GET",
        "path": "/v1/models",
        "headers": [(b"authorization", b"Bearer not-a-jwt")],
        "state": {"request_id": "req-12345678", "audit": audit},
    }
    await app(scope, receive, send)
    assert sent[0]["status"] == 401
    assert json.loads(sent[1]["body"])["error"]["request_id"] == "req-12345678"
    assert audit == {"auth_failure": "invalid"}


async def test_disabled_auth_serves_loopback_callers_as_dev_admin(pat_logs: ListHandler) -> None:
    settings = auth_settings("", auth="disabled")
    async with client_for(settings) as client:
        response = await call(client, "POST", "/v1/cache/invalidate", None)
    assert response.json() == {"uid": DEV_CALLER_UID, "role": "admin"}
    assert any(r.levelno == logging.WARNING and "DISABLED" in r.getMessage() for r in pat_logs.records)
    async with client_for(settings, client_host="203.0.113.7") as remote:
        assert (await call(remote, "GET", "/v1/models", None)).status_code == 401


def test_endpoint_labels_never_echo_arbitrary_paths() -> None:
    assert endpoint_label("/v1/analyze/") == "/v1/analyze"
    assert endpoint_label("/static_content/index.css") == "/static_content/*"
    assert endpoint_label("/v1/Patient/123") == "other"


# --- start-up configuration -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "environ", "message"),
    [
        ({"firebase_project_id": ""}, {}, "PAT_FIREBASE_PROJECT_ID or GOOGLE_CLOUD_PROJECT"),
        (
            {"allow_auth_emulator": False},
            {"FIREBASE_AUTH_EMULATOR_HOST": "127.0.0.1:9099"},
            "PAT_ALLOW_AUTH_EMULATOR=1",
        ),
        ({"auth": "disabled", "host": "0.0.0.0"}, {}, "loopback"),
        ({"auth": "none"}, {}, "PAT_AUTH must be"),
        ({"auth_check_revoked": True}, {}, "GOOGLE_APPLICATION_CREDENTIALS"),
        (
            {"auth_check_revoked": False},
            {"GOOGLE_APPLICATION_CREDENTIALS": "/nonexistent/key.json"},
            "not a file",
        ),
    ],
    ids=[
        "no-project",
        "emulator-not-allowed",
        "disabled-not-loopback",
        "unknown-mode",
        "revoked-no-creds",
        "bad-key",
    ],
)
def test_unsafe_configuration_fails_closed(
    overrides: dict[str, object], environ: dict[str, str], message: str
) -> None:
    settings = auth_settings("pat-prod", **{"allow_auth_emulator": False, **overrides})
    with pytest.raises(AuthConfigError, match=message):
        check_auth_config(with_environ(settings, environ))


@pytest.mark.parametrize(
    ("overrides", "environ"),
    [
        ({"auth_check_revoked": False}, {}),
        ({"auth_check_revoked": True, "firebase_adc": True}, {}),
        ({"allow_auth_emulator": True}, {"FIREBASE_AUTH_EMULATOR_HOST": "127.0.0.1:9099"}),
        ({"auth": "disabled", "host": "::1"}, {}),
    ],
    ids=["no-revocation-check", "platform-credentials", "emulator-allowed", "disabled-on-loopback"],
)
def test_safe_configuration_starts(overrides: dict[str, object], environ: dict[str, str]) -> None:
    check_auth_config(
        with_environ(auth_settings("pat-prod", **{"allow_auth_emulator": False, **overrides}), environ)
    )


def test_credentials_file_satisfies_the_revocation_check(tmp_path: Path) -> None:
    key_file = tmp_path / "service-account.json"
    key_file.write_text("{}")
    check_auth_config(
        with_environ(auth_settings("pat-prod"), {"GOOGLE_APPLICATION_CREDENTIALS": str(key_file)})
    )


def test_emulator_mode_is_announced(pat_logs: ListHandler) -> None:
    check_auth_config(
        with_environ(auth_settings("demo-x"), {"FIREBASE_AUTH_EMULATOR_HOST": "127.0.0.1:9099"})
    )
    assert any(r.levelno == logging.WARNING and "NOT checked" in r.getMessage() for r in pat_logs.records)


def test_standard_google_variables_set_the_project(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PAT_FIREBASE_PROJECT_ID", raising=False)
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "pat-from-google-env")
    assert Settings().firebase_project_id == "pat-from-google-env"
    monkeypatch.setenv("PAT_FIREBASE_PROJECT_ID", "pat-explicit")
    assert Settings().firebase_project_id == "pat-explicit"


def test_middleware_refuses_to_start_misconfigured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FIREBASE_AUTH_EMULATOR_HOST", "127.0.0.1:9099")
    with pytest.raises(AuthConfigError):
        FirebaseAuthMiddleware(
            service_shaped_app(), settings=auth_settings("pat-prod", allow_auth_emulator=False)
        )


# --- production tokens: RS256 signatures, verified offline -------------------------------------------

PROD_PROJECT = "pat-offline-prod"


@pytest.fixture(scope="module")
def signing_keys() -> dict[str, bytes]:
    trusted_key, trusted_cert = self_signed("securetoken-test")
    attacker_key, _ = self_signed("attacker")
    return {"trusted_key": trusted_key, "trusted_cert": trusted_cert, "attacker_key": attacker_key}


@pytest.fixture(scope="module")
def cert_endpoint(signing_keys: dict[str, bytes]) -> Iterator[str]:
    """Google's `securetoken@system.gserviceaccount.com` x509 endpoint, served from loopback: a JSON
    object of key id → PEM certificate."""
    body = json.dumps({"test-kid-1": signing_keys["trusted_cert"].decode()}).encode()

    class CertHandler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Cache-Control", "public, max-age=3600")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), CertHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/robot/v1/metadata/x509/securetoken"
    server.shutdown()
    server.server_close()


@pytest.fixture
def production_mode(monkeypatch: pytest.MonkeyPatch, cert_endpoint: str) -> Settings:
    """No emulator; the SDK's certificate URL (module configuration read when a verifier is built)
    points at the loopback endpoint instead of www.googleapis.com."""
    monkeypatch.delenv("FIREBASE_AUTH_EMULATOR_HOST", raising=False)
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    monkeypatch.setattr(firebase_admin._token_gen, "ID_TOKEN_CERT_URI", cert_endpoint)
    return auth_settings(PROD_PROJECT, auth_check_revoked=False, allow_auth_emulator=False)


def signed_token(
    key_pem: bytes, *, kid: str = "test-kid-1", project: str = PROD_PROJECT, **claims: object
) -> str:
    now = int(time.time())
    payload: dict[str, object] = {
        "iss": f"https://securetoken.google.com/{project}",
        "aud": project,
        "auth_time": now,
        "user_id": "prod-user",
        "sub": "prod-user",
        "iat": now,
        "exp": now + 3600,
        "pat_role": "clinician",
        **claims,
    }
    signer = google.auth.crypt.RSASigner.from_string(key_pem, key_id=kid)
    return google.auth.jwt.encode(signer, payload).decode()


def _tamper_role(token: str) -> str:
    """The same signature over a payload whose role was raised to admin."""
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["pat_role"] = "admin"
    raised = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{raised}.{signature}"


async def test_correctly_signed_production_token_is_accepted(
    production_mode: Settings, signing_keys: dict[str, bytes]
) -> None:
    async with client_for(production_mode) as client:
        response = await call(client, "GET", "/v1/models", signed_token(signing_keys["trusted_key"]))
    assert response.status_code == 200
    assert response.json() == {"uid": "prod-user", "role": "clinician"}


async def test_bad_production_tokens_are_refused(
    production_mode: Settings, signing_keys: dict[str, bytes]
) -> None:
    trusted, attacker = signing_keys["trusted_key"], signing_keys["attacker_key"]
    now = int(time.time())
    bad = {
        "forged_signature": signed_token(attacker),
        "unknown_kid": signed_token(trusted, kid="no-such-kid"),
        "tampered_claims": _tamper_role(signed_token(trusted)),
        "unsigned_emulator_style": FirebaseEmulator(host="unused", project_id=PROD_PROJECT).forged_token(
            "prod-user", project=PROD_PROJECT, role="admin"
        ),
        "expired": signed_token(trusted, iat=now - 7200, exp=now - 3600, auth_time=now - 7200),
        "other_project": signed_token(trusted, project="pat-someone-else"),
    }
    async with client_for(production_mode) as client:
        statuses = {
            name: (await call(client, "GET", "/v1/models", token)).status_code for name, token in bad.items()
        }
    assert statuses == dict.fromkeys(bad, 401)


async def test_unreachable_certificates_fail_closed(
    monkeypatch: pytest.MonkeyPatch, production_mode: Settings, signing_keys: dict[str, bytes]
) -> None:
    monkeypatch.setattr(firebase_admin._token_gen, "ID_TOKEN_CERT_URI", "http://127.0.0.1:9/unreachable")
    async with client_for(production_mode) as client:
        response = await call(client, "GET", "/v1/models", signed_token(signing_keys["trusted_key"]))
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "auth_unavailable"
