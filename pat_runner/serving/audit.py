"""One structured audit record per request, and the logging set-up that keeps health data and tokens
out of every log.

The record answers who called what, when, with what outcome: request id, caller uid and role,
method, endpoint, status, latency, request/response sizes, and what the handler reports about the
input (its SHA-256, number of recordings, minutes, model tag, cache outcome). It never holds a body,
query value, header, result or subject identifier — the HIPAA Security Rule's audit-control standard
(45 CFR 164.312(b)) asks for activity records, not the data itself.

Handlers add fields by writing into `scope["state"]["audit"]` (a dict; `request.state.audit` in
Starlette, `ctx.request.state.audit` in BentoML); only the names in `HANDLER_FIELDS` are recorded.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pat_runner import telemetry
from pat_runner.serving.routes import endpoint_label

audit_logger = logging.getLogger("pat.audit")

REQUEST_ID_HEADER = b"x-request-id"
# Upstream ids (a UUID, a trace id) are kept for correlation; anything else is replaced, so a client
# cannot write free text into the log through this header.
UPSTREAM_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{7,63}")
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# What a handler may add. An allow-list, so a stray field (a subject, a value) is dropped rather
# than logged; add names here deliberately.
HANDLER_FIELDS = frozenset(
    {
        "input_sha256",
        "inputs_sha256",
        "n_recordings",
        "minutes",
        "n_windows",
        "model_tag",
        "cache",
        "upload_bytes",
        "invalidated",
        "auth_failure",
    }
)
MAX_FIELD_CHARS = 128
# A batch's per-recording hashes; the batch size is bounded by PAT_MAX_BATCH_RECORDINGS anyway.
MAX_LIST_ITEMS = 256
JsonScalar = str | int | float | bool | None
AuditValue = JsonScalar | list[JsonScalar]


def _scalar(value: Any) -> JsonScalar:
    if value is None or isinstance(value, bool | int | float):
        return value
    return str(value)[:MAX_FIELD_CHARS]


def _field(value: Any) -> AuditValue:
    if isinstance(value, list | tuple):
        return [_scalar(item) for item in value[:MAX_LIST_ITEMS]]
    return _scalar(value)


def _request_id(scope: Scope) -> str:
    for name, value in scope.get("headers", []):
        if name.lower() == REQUEST_ID_HEADER:
            candidate = value.decode("latin-1")
            if UPSTREAM_REQUEST_ID.fullmatch(candidate):
                return candidate
    return uuid.uuid4().hex


class AuditMiddleware:
    """Pure ASGI middleware, outermost of the service's own: assigns the request id
    (`scope["state"]["request_id"]`, response header `X-Request-ID`), prepares
    `scope["state"]["audit"]`, and logs one record on `pat.audit` when the request ends."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        state = scope.setdefault("state", {})
        request_id = _request_id(scope)
        state["request_id"] = request_id
        state["audit"] = {}
        status = 500
        request_bytes = 0
        response_bytes = 0

        async def counting_receive() -> Message:
            nonlocal request_bytes
            message = await receive()
            if message["type"] == "http.request":
                request_bytes += len(message.get("body", b""))
            return message

        async def tagging_send(message: Message) -> None:
            nonlocal status, response_bytes
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != REQUEST_ID_HEADER]
                message["headers"] = [*headers, (REQUEST_ID_HEADER, request_id.encode())]
            elif message["type"] == "http.response.body":
                response_bytes += len(message.get("body", b""))
            await send(message)

        endpoint = endpoint_label(str(scope.get("path", "")))
        try:
            with telemetry.span("request", endpoint=endpoint, request_id=request_id):
                await self.app(scope, counting_receive, tagging_send)
        finally:
            seconds = time.perf_counter() - started
            telemetry.record_request(endpoint, status, seconds)
            audit_logger.info(
                "request",
                extra={
                    "audit": audit_record(
                        scope,
                        status=status,
                        latency_ms=seconds * 1000,
                        request_bytes=request_bytes,
                        response_bytes=response_bytes,
                    )
                },
            )


def audit_record(
    scope: Scope, *, status: int, latency_ms: float, request_bytes: int, response_bytes: int
) -> dict[str, AuditValue]:
    """The audit fields of a finished request; see the module docstring for what is left out."""
    state = scope.get("state", {})
    caller = state.get("caller")
    method = str(scope.get("method", ""))
    record: dict[str, AuditValue] = {
        "request_id": state.get("request_id"),
        "caller_uid": getattr(caller, "uid", None),
        "role": getattr(caller, "role", None),
        "auth_mode": getattr(caller, "auth_mode", None),
        "method": method if method in KNOWN_METHODS else "OTHER",
        "endpoint": endpoint_label(str(scope.get("path", ""))),
        "status": status,
        "latency_ms": round(latency_ms, 1),
        "request_bytes": request_bytes,
        "response_bytes": response_bytes,
    }
    handler_fields = state.get("audit")
    if isinstance(handler_fields, dict):
        record.update(
            {name: _field(value) for name, value in handler_fields.items() if name in HANDLER_FIELDS}
        )
    return record


# A JWT's header is base64url of '{"' + ..., so every JWT starts with "eyJ"; Firebase ID tokens,
# custom tokens and Google access tokens are JWTs or follow a Bearer scheme.
# Linear time on any input (log lines can hold client-chosen text): a dotted run of base64url characters
# is matched once from its first character (the look-behind keeps the engine from restarting inside a
# run, the possessive quantifiers from backtracking into it), and the JWT inside it is found with str
# methods. A regex like `eyJ[…]{4,}\.[…]*\.` restarts at every "eyJ" of a long run: quadratic.
TOKEN_CHARS = "A-Za-z0-9_-"
DOTTED_RUN = re.compile(rf"(?<![.{TOKEN_CHARS}])[{TOKEN_CHARS}]++(?:\.[{TOKEN_CHARS}]*+)*+")
BEARER_PATTERN = re.compile(r"(bearer\s++)[A-Za-z0-9\-._~+/]++=*+", re.IGNORECASE)
JWT_MARK = "eyJ"
MIN_JWT_HEADER = 7  # "eyJ" and at least four more characters, as before
REDACTED = "[REDACTED]"
#: Longest message a log record keeps (after redaction); a client-chosen value cannot make a huge line.
MAX_LOG_MESSAGE_CHARS = 8192


def _redact_run(match: re.Match[str]) -> str:
    run = match.group(0)
    if JWT_MARK not in run:
        return run
    segments = run.split(".")
    kept: list[str] = []
    i = 0
    while i < len(segments):
        segment = segments[i]
        at = segment.find(JWT_MARK)
        # A JWT is a header segment (from "eyJ") and two more segments, the last possibly empty.
        if at != -1 and len(segment) - at >= MIN_JWT_HEADER and i + 2 < len(segments):
            kept.append(segment[:at] + REDACTED)
            i += 3
        else:
            kept.append(segment)
            i += 1
    return ".".join(kept)


def redact_secrets(text: str) -> str:
    """`text` without bearer tokens or JWTs, in time linear in its length."""
    return BEARER_PATTERN.sub(r"\1" + REDACTED, DOTTED_RUN.sub(_redact_run, text))


def bounded(text: str, limit: int = MAX_LOG_MESSAGE_CHARS) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… [{len(text) - limit:,} characters cut]"


class RedactSecretsFilter(logging.Filter):
    """Defence in depth: rewrites any bearer token or JWT in a record's message, exception or stack
    text before a handler formats it (the service never logs tokens on purpose; libraries might)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = bounded(redact_secrets(message))
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = bounded(redact_secrets(record.exc_text), 4 * MAX_LOG_MESSAGE_CHARS)
        if record.stack_info:
            record.stack_info = bounded(redact_secrets(record.stack_info), 4 * MAX_LOG_MESSAGE_CHARS)
        return True


ACCESS_LOGGERS = ("uvicorn.access", "bentoml.access")
#: uvicorn's access line says less than BentoML's (no latency, length or trace id), so it is off: one access
#: line per request and service, each ~0.1-0.25 ms of the worker's CPU (py-spy, docs/performance.md).
DUPLICATE_ACCESS_LOGGER = "uvicorn.access"


class AccessLogPathFilter(logging.Filter):
    """uvicorn's and BentoML's access lines quote the raw request target, query string included, so an
    identifier sent in a URL (`?subject=Patient/…`) would be logged verbatim. On those two loggers the
    target becomes the route template (`endpoint_label`: a policy entry or `other`) before any handler
    formats the line; the query is never kept. Installed on the loggers, so it runs before redaction; on
    uvicorn's too, which is off at INFO, so that a lower level set on it later never logs a raw target."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if not isinstance(args, tuple):
            return True
        if record.name == "uvicorn.access" and len(args) == 5:
            client, method, target, version, status = args
            record.args = (client, _method(method), _template(str(target)), version, status)
        elif record.name == "bentoml.access" and len(args) == 4:
            address, request, response, latency = args
            record.args = (address, _bentoml_request(str(request)), response, latency)
        return True


def _method(method: object) -> str:
    return method if isinstance(method, str) and method in KNOWN_METHODS else "OTHER"


def _template(target: str) -> str:
    return endpoint_label(target.partition("?")[0])


def _bentoml_request(request: str) -> str:
    # "scheme=http,method=POST,path=/v1/analyze,type=…,length=…": rebuilt from the scheme, the method and
    # the path's template; the client-chosen content type is dropped with the rest.
    fields = dict(part.partition("=")[::2] for part in request.split(",", 3)[:3])
    scheme = fields.get("scheme") if fields.get("scheme") in ("http", "https") else "other"
    return f"scheme={scheme},method={_method(fields.get('method'))},path={_template(fields.get('path', ''))}"


class ValidationInputFilter(logging.Filter):
    """BentoML logs a request's pydantic `ValidationError` with its traceback, and pydantic quotes the
    offending input (activity values, subject ids) in it: keep only where and why validation failed."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, ValidationError):
            places = "; ".join(
                f"{'.'.join(str(p) for p in error['loc'])}: {error['type']}" for error in exc.errors()[:10]
            )
            record.exc_info, record.exc_text = None, f"ValidationError ({exc.error_count()}): {places}"
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC), level, logger, message, the request id of a record about one
    request (`extra={"request_id": …}`), and the `audit` fields if any."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None)
        if isinstance(request_id, str):
            payload["request_id"] = request_id
        audit = getattr(record, "audit", None)
        if isinstance(audit, dict):
            payload["audit"] = audit
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            payload["exception"] = record.exc_text
        if record.stack_info:
            payload["stack"] = record.stack_info
        return json.dumps(payload, default=str)


JSON_HANDLER_NAME = "pat-json"


def configure_logging(level: str | int = "INFO") -> None:
    """JSON logs for the `pat.*` loggers on stderr at `level` (also the root level), the redaction
    filter on every handler configured so far (BentoML's and uvicorn's included), route templates
    instead of request targets on the access loggers, and uvicorn's access line off (BentoML's stays).
    Idempotent: calling it again replaces the service's handler."""
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name(JSON_HANDLER_NAME)
    handler.setFormatter(JsonFormatter())
    pat_logger = logging.getLogger("pat")
    for existing in [h for h in pat_logger.handlers if h.get_name() == JSON_HANDLER_NAME]:
        pat_logger.removeHandler(existing)
    pat_logger.addHandler(handler)
    pat_logger.setLevel(level)
    pat_logger.propagate = False
    logging.getLogger().setLevel(level)
    loggers = [
        logging.getLogger(),
        *(lg for lg in logging.root.manager.loggerDict.values() if isinstance(lg, logging.Logger)),
    ]
    logging.getLogger(DUPLICATE_ACCESS_LOGGER).setLevel(logging.WARNING)
    for name in ACCESS_LOGGERS:
        access_logger = logging.getLogger(name)
        if not any(isinstance(f, AccessLogPathFilter) for f in access_logger.filters):
            access_logger.addFilter(AccessLogPathFilter())
    for each in loggers:
        for each_handler in each.handlers:
            if not any(isinstance(f, ValidationInputFilter) for f in each_handler.filters):
                each_handler.addFilter(ValidationInputFilter())
            if not any(isinstance(f, RedactSecretsFilter) for f in each_handler.filters):
                each_handler.addFilter(RedactSecretsFilter())
