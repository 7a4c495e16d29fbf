"""`pat_runner.serving.audit`: one structured record per request, and no token, body value, query value or
subject identifier in any log record — checked on everything logged at DEBUG while requests with a
real Firebase ID token and health-data-shaped bodies pass through the middleware stack."""

from __future__ import annotations

import hashlib
import json
import logging
import sys
from collections.abc import Iterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from pat_runner.serving.audit import (
    JSON_HANDLER_NAME,
    AuditMiddleware,
    JsonFormatter,
    RedactSecretsFilter,
    configure_logging,
)
from pat_runner.serving.auth import FirebaseAuthMiddleware
from pat_runner.settings import Settings
from tests.factories import make_settings
from tests.firebase_emulator import FirebaseEmulator

REQUIRED_FIELDS = {
    "request_id",
    "caller_uid",
    "role",
    "auth_mode",
    "method",
    "endpoint",
    "status",
    "latency_ms",
    "request_bytes",
    "response_bytes",
}
SUBJECT = "Patient/subject-4f9a2c"
ACTIVITY_VALUES = [987654, 123457, None, 555333]


async def analyze(request: Request) -> JSONResponse:
    """Shaped like the service's handler: reads the body, reports hashes and sizes to the audit."""
    body = await request.body()
    recording = json.loads(body)["recording"]
    request.state.audit.update(
        {
            "input_sha256": hashlib.sha256(body).hexdigest(),
            "n_recordings": 1,
            "minutes": len(recording["values"]),
            "model_tag": "pat-demo:test",
            "cache": "miss",
            # Not an audit field: must be dropped, never logged.
            "subject": recording["subject"],
        }
    )
    return JSONResponse({"subject": recording["subject"], "values_echo": recording["values"]})


async def crash(request: Request) -> JSONResponse:
    raise RuntimeError("handler failed")


def audited_app(settings: Settings) -> AuditMiddleware:
    app = Starlette(
        routes=[Route("/v1/analyze", analyze, methods=["POST"]), Route("/v1/embed", crash, methods=["POST"])]
    )
    return AuditMiddleware(FirebaseAuthMiddleware(app, settings=settings))


def client_for(app: AuditMiddleware) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


class ListHandler(logging.Handler):
    """Keeps every record with its text as logged: it runs first, before any handler's redaction
    filter rewrites the shared record, so the scan sees what the code actually logged."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.texts: list[str] = []
        self.seen: set[int] = set()

    def handle(self, record: logging.LogRecord) -> bool:
        if id(record) in self.seen:  # installed on `pat` and on the root, where `pat` propagates
            return True
        self.seen.add(id(record))
        self.records.append(record)
        exception = logging.Formatter().formatException(record.exc_info) if record.exc_info else ""
        self.texts.append(f"{record.getMessage()}\n{json.dumps(getattr(record, 'audit', None))}\n{exception}")
        return True

    def emit(self, record: logging.LogRecord) -> None:
        self.handle(record)

    def audit_records(self) -> list[dict[str, object]]:
        return [r.audit for r in self.records if r.name == "pat.audit"]


@pytest.fixture
def logs() -> Iterator[ListHandler]:
    """Every record of the `pat` loggers and of the root logger at DEBUG; the global logging state is
    restored afterwards (configure_logging changes it)."""
    handler = ListHandler()
    root, pat = logging.getLogger(), logging.getLogger("pat")
    saved = (root.level, pat.level, pat.propagate, list(pat.handlers))
    for logger in (root, pat):
        logger.handlers.insert(0, handler)
    root.setLevel(logging.DEBUG)
    pat.setLevel(logging.DEBUG)
    yield handler
    root.removeHandler(handler)
    root.setLevel(saved[0])
    pat.setLevel(saved[1])
    pat.propagate = saved[2]
    pat.handlers[:] = saved[3]


def dev_settings() -> Settings:
    return make_settings()


def analyze_body() -> dict[str, object]:
    return {
        "recording": {
            "start": "2024-03-04T00:00:00-05:00",
            "timezone": "America/New_York",
            "epoch_seconds": 60,
            "values": ACTIVITY_VALUES,
            "unit": "counts",
            "subject": SUBJECT,
        }
    }


async def test_one_record_per_request_with_the_required_fields(logs: ListHandler) -> None:
    async with client_for(audited_app(dev_settings())) as client:
        ok = await client.post("/v1/analyze", json=analyze_body())
        missing = await client.get("/v1/Patient/123?subject=x")
        failed = await client.post("/v1/embed", json={})
    records = logs.audit_records()
    assert len(records) == 3
    for record in records:
        assert set(record) >= REQUIRED_FIELDS
    first, second, third = records
    assert first["request_id"] == ok.headers["x-request-id"]
    assert (first["caller_uid"], first["role"], first["auth_mode"]) == ("anonymous-dev", "admin", "disabled")
    assert (first["method"], first["endpoint"], first["status"]) == ("POST", "/v1/analyze", 200)
    assert first["request_bytes"] == len(ok.request.content)
    assert first["response_bytes"] == len(ok.content)
    assert first["input_sha256"] == hashlib.sha256(ok.request.content).hexdigest()
    assert (first["n_recordings"], first["minutes"], first["model_tag"], first["cache"]) == (
        1,
        len(ACTIVITY_VALUES),
        "pat-demo:test",
        "miss",
    )
    assert "subject" not in first
    assert isinstance(first["latency_ms"], float) and first["latency_ms"] >= 0
    # An arbitrary path is recorded as `other`, never echoed; its query string is never recorded.
    assert (second["endpoint"], second["status"]) == ("other", missing.status_code)
    assert (third["endpoint"], third["status"]) == ("/v1/embed", 500)
    assert failed.status_code == 500
    assert len({r["request_id"] for r in records}) == 3


@pytest.mark.parametrize(
    ("sent", "kept"),
    [("3f2b8c1e-9d4a-4e7b-8a6f-1c2d3e4f5a6b", True), ("evil id\nforged log line", False), ("short", False)],
)
async def test_upstream_request_id_is_kept_only_when_well_formed(
    logs: ListHandler, sent: str, kept: bool
) -> None:
    async with client_for(audited_app(dev_settings())) as client:
        response = await client.post("/v1/analyze", json=analyze_body(), headers={"X-Request-ID": sent})
    assert (response.headers["x-request-id"] == sent) is kept
    assert logs.audit_records()[0]["request_id"] == response.headers["x-request-id"]


async def test_rejected_request_is_audited_with_the_reason(
    logs: ListHandler, firebase_emulator: FirebaseEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FIREBASE_AUTH_EMULATOR_HOST", firebase_emulator.host)
    settings = make_settings(
        auth="firebase", firebase_project_id=firebase_emulator.project_id, allow_auth_emulator=True
    )
    async with client_for(audited_app(settings)) as client:
        response = await client.post(
            "/v1/analyze", json=analyze_body(), headers={"Authorization": "Bearer x.y.z"}
        )
    assert response.status_code == 401
    assert response.json()["error"]["request_id"] == response.headers["x-request-id"]
    (record,) = logs.audit_records()
    assert (record["status"], record["auth_failure"], record["caller_uid"]) == (401, "invalid", None)


async def test_logs_hold_no_token_body_value_or_subject(
    logs: ListHandler,
    firebase_emulator: FirebaseEmulator,
    tokens: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("FIREBASE_AUTH_EMULATOR_HOST", firebase_emulator.host)
    configure_logging("DEBUG")
    settings = make_settings(
        auth="firebase", firebase_project_id=firebase_emulator.project_id, allow_auth_emulator=True
    )
    token = tokens["clinician"]
    async with client_for(audited_app(settings)) as client:
        for headers in ({"Authorization": f"Bearer {token}"}, {"Authorization": f"Bearer {token}x"}):
            response = await client.post(
                "/v1/analyze", json=analyze_body(), params={"subject": SUBJECT}, headers=headers
            )
    assert response.status_code == 401
    emitted = capsys.readouterr().err
    audit_lines = [json.loads(line) for line in emitted.splitlines() if '"logger": "pat.audit"' in line]
    assert [line["audit"]["role"] for line in audit_lines] == ["clinician", None]
    assert audit_lines[0]["audit"]["caller_uid"] == "test-clinician"
    # The test's own HTTP client (httpx) logs the URL it calls, query included; it is not the service.
    service_texts = [
        text for record, text in zip(logs.records, logs.texts, strict=True) if record.name != "httpx"
    ]
    everything = "\n".join([emitted, *service_texts])
    forbidden = [
        token,
        token.split(".")[1],
        SUBJECT,
        "subject-4f9a2c",
        *(str(v) for v in ACTIVITY_VALUES if v),
    ]
    assert not [value for value in forbidden if value in everything]
    assert len(logs.records) > len(audit_lines)  # DEBUG output from the libraries was scanned too


def test_redaction_filter_removes_tokens_from_messages_and_tracebacks() -> None:
    jwt = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ1MSJ9."
    try:
        raise ValueError(f"Illegal ID token provided: {jwt}")
    except ValueError:
        record = logging.LogRecord(
            "lib", logging.ERROR, __file__, 1, "header was %s", ("Bearer abc.DEF-123",), None
        )
        record.exc_info = sys.exc_info()
    assert RedactSecretsFilter().filter(record)
    line = JsonFormatter().format(record)
    assert "abc.DEF-123" not in line and jwt not in line
    assert json.loads(line)["message"] == "header was Bearer [REDACTED]"
    assert "Illegal ID token provided: [REDACTED]" in json.loads(line)["exception"]


def test_a_records_request_id_is_in_its_json_line() -> None:
    """The 500 runbook (docs/operations.md) finds a failing request by the id in `unhandled … answered
    with 500`, which `ErrorEnvelopeMiddleware` passes as `extra`."""
    record = logging.LogRecord(
        "pat.http", logging.ERROR, __file__, 1, "unhandled %s answered with 500", ("KeyError",), None
    )
    record.request_id = "3f2a9c"
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "unhandled KeyError answered with 500" and line["request_id"] == "3f2a9c"
    assert "request_id" not in json.loads(JsonFormatter().format(logging.makeLogRecord({"msg": "x"})))


def test_configure_logging_emits_json_and_is_idempotent(
    logs: ListHandler, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("INFO")
    configure_logging("INFO")
    pat = logging.getLogger("pat")
    assert [h.get_name() for h in pat.handlers].count(JSON_HANDLER_NAME) == 1
    logging.getLogger("pat.test").info("hello %s", "world", extra={"audit": {"status": 200}})
    (line,) = capsys.readouterr().err.splitlines()
    payload = json.loads(line)
    assert (payload["level"], payload["logger"], payload["message"], payload["audit"]) == (
        "INFO",
        "pat.test",
        "hello world",
        {"status": 200},
    )
    assert payload["ts"].endswith("+00:00")


def test_one_access_line_per_request(logs: ListHandler) -> None:
    """uvicorn's access line is off, even at DEBUG; BentoML's, which says more, is left to BentoML."""
    uvicorn_access = logging.getLogger("uvicorn.access")
    saved = uvicorn_access.level
    try:
        configure_logging("DEBUG")
        assert not uvicorn_access.isEnabledFor(logging.INFO)
        assert logging.getLogger("bentoml.access").isEnabledFor(logging.INFO)
    finally:
        uvicorn_access.setLevel(saved)
