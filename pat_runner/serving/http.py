"""HTTP plumbing of the API service: one error body shape, request limits, safe uploads, the docs page.

All of these are plain ASGI middlewares added with `Service.add_asgi_middleware`, so BentoML's own
errors (validation, routing, overload) and ours leave the server in the same shape:
`{"error": {"code": ..., "message": ..., "request_id": ...}}`.
"""

from __future__ import annotations

import json
import logging
import secrets
import tempfile
from collections.abc import AsyncIterator, Callable
from importlib import resources
from typing import Any, BinaryIO

from pydantic import ValidationError
from starlette.datastructures import FormData, Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pat_runner.actigraphy.readers import MAX_FILENAME_CHARS
from pat_runner.errors import ServiceError
from pat_runner.serving.routes import READYZ

logger = logging.getLogger("pat.http")

# How long this service's servers keep an idle connection open (`--timeout-keep-alive` of `bentoml serve`
# and `start-http-server`, and the model workers' own sockets, `spread.py`): longer than their clients
# keep one (httpx under `bentoml.SyncHTTPClient`: 5 s; aiohttp under BentoML's dependency client: 15 s)
# and than a load balancer's usual idle timeout (60 s). Then only clients close idle connections, and no
# request is written onto a connection the server is closing: measured, 2 of 150 requests sent just as
# the server's keep-alive ran out failed with "Server disconnected" (docs/deployment.md).
KEEP_ALIVE_S = 75
UPLOAD_PATH = "/v1/analyze/file"
UPLOAD_CHUNK_BYTES = 1 << 20
CODE_BY_STATUS = {
    400: "invalid_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "timeout",
    413: "payload_too_large",
    414: "uri_too_long",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "overloaded",
    500: "internal_error",
    503: "service_unavailable",
    504: "timeout",
}
NOT_READY_MESSAGE = "the model service is not ready yet; retry later"
CODE_MESSAGES = {
    404: "no such endpoint",
    405: "method not allowed on this endpoint",
    429: "the service is at its concurrency limit; retry later",
    500: "an unexpected error occurred; the request id identifies it in the server log",
    503: "the service is temporarily unavailable; retry later",
    504: "the request took too long",
}
DOCS_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
API_CSP = "default-src 'none'; frame-ancestors 'none'"
# Our Swagger UI initializer, under BentoML's asset prefix so the docs CSP and the docs auth rule apply.
DOCS_SCRIPT_PATH = "/static_content/pat-docs.js"
#: Commas a JSON body may have beyond its values (fields, options, recordings of a batch).
VALUES_SLACK = 4096
#: Longest error message sent (messages name a field and a rule, never a value; this bounds them anyway).
MAX_ERROR_MESSAGE_CHARS = 1024


def request_id_of(scope: Scope) -> str | None:
    return scope.get("state", {}).get("request_id")


def error_body(code: str, message: str, request_id: str | None) -> dict[str, Any]:
    if len(message) > MAX_ERROR_MESSAGE_CHARS:
        message = message[: MAX_ERROR_MESSAGE_CHARS - 1] + "…"
    return {"error": {"code": code, "message": message, "request_id": request_id}}


def error_response(exc: ServiceError, request_id: str | None) -> JSONResponse:
    """The one rendering of every error the service raises: the envelope, the status, its headers."""
    return JSONResponse(
        error_body(exc.code, exc.message, request_id), status_code=exc.status, headers=exc.headers
    )


def validation_message(detail: Any) -> str:
    """BentoML's pydantic error list → one line naming each field (input values are never echoed)."""
    if not isinstance(detail, list):
        return "the request body does not match the schema"
    parts = []
    for item in detail[:10]:
        loc = ".".join(str(p) for p in item.get("loc", ()))
        parts.append(f"{loc}: {item.get('msg', 'invalid')}" if loc else str(item.get("msg", "invalid")))
    return "; ".join(parts)


def normalize_error(status: int, body: bytes) -> tuple[int, str, str]:
    """Map any error body BentoML or Starlette produced to (status, code, message)."""
    try:
        payload = json.loads(body) if body else None
    except (ValueError, UnicodeDecodeError):
        payload = None
    if isinstance(payload, dict) and "detail" in payload and status == 400:
        # BentoML answers pydantic validation errors (schema and malformed JSON) with 400; we use 422.
        types = {item.get("type") for item in payload["detail"] if isinstance(item, dict)}
        code = "malformed_json" if "json_invalid" in types else "validation_error"
        return 422, code, validation_message(payload["detail"])
    message = CODE_MESSAGES.get(status)
    if message is None and isinstance(payload, dict | list):
        first = payload[0] if isinstance(payload, list) and payload else payload
        message = str(first.get("error", "")) if isinstance(first, dict) else ""
    return status, CODE_BY_STATUS.get(status, "error"), message or "request failed"


class ErrorEnvelopeMiddleware:
    """Rewrites every error response that is not already in the service's envelope."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start: Message | None = None
        chunks: list[bytes] = []
        forwarded = False

        async def capture(message: Message) -> None:
            nonlocal start, forwarded
            if message["type"] == "http.response.start":
                if message["status"] < 400:
                    forwarded = True
                    await send(message)
                    return
                start = message
                return
            if start is None:
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                forwarded = True
                await self._send_error(scope, start, b"".join(chunks), send)

        try:
            await self.app(scope, receive, capture)
        except Exception as exc:
            if scope.get("path") == READYZ and not forwarded:
                # BentoML's readiness check lets the errors of its call to the model service through
                # (a timeout while that service still loads the model, a refused connection): that is
                # "not ready", expected at every start, not a fault of this service.
                logger.info("readiness: the model service did not answer (%s)", type(exc).__name__)
                body = error_body(CODE_BY_STATUS[503], NOT_READY_MESSAGE, request_id_of(scope))
                await JSONResponse(body, status_code=503)(scope, _no_receive, send)
                return
            # The traceback may quote request data: log the type only, with the request id.
            logger.error(
                "unhandled %s answered with 500",
                type(exc).__name__,
                extra={"request_id": request_id_of(scope)},
            )
            if not forwarded:
                response = JSONResponse(
                    error_body("internal_error", CODE_MESSAGES[500], request_id_of(scope)), status_code=500
                )
                await response(scope, _no_receive, send)

    @staticmethod
    async def _send_error(scope: Scope, start: Message, body: bytes, send: Send) -> None:
        try:
            existing = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            existing = None
        if (
            isinstance(existing, dict)
            and isinstance(existing.get("error"), dict)
            and "code" in existing["error"]
        ):
            await send(start)
            await send({"type": "http.response.body", "body": body})
            return
        status, code, message = normalize_error(start["status"], body)
        kept = [
            (k, v)
            for k, v in start.get("headers", [])
            if k.lower() in (b"www-authenticate", b"retry-after", b"allow")
        ]
        response = JSONResponse(error_body(code, message, request_id_of(scope)), status_code=status)
        response.raw_headers.extend(kept)
        await response(scope, _no_receive, send)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


class TargetLengthMiddleware:
    """414 for a request target (path and query) over `max_url_bytes`, before anything inspects, routes
    or logs it: a long client-chosen path is otherwise copied into every access-log line."""

    def __init__(self, app: ASGIApp, *, max_url_bytes: int) -> None:
        self.app = app
        self.max_url_bytes = max_url_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            raw_path = scope.get("raw_path") or scope.get("path", "").encode("utf-8", "replace")
            if len(raw_path) + len(scope.get("query_string", b"")) > self.max_url_bytes:
                message = f"the request URL exceeds {self.max_url_bytes:,} bytes"
                response = JSONResponse(
                    error_body("uri_too_long", message, request_id_of(scope)), status_code=414
                )
                await response(scope, _no_receive, send)
                return
        await self.app(scope, receive, send)


class RequestLimitsMiddleware:
    """413 for bodies over the limit, whether announced by Content-Length or streamed, and for JSON
    bodies with more values than `max_request_values`; checked before anything parses the body.
    Uploads (`/v1/analyze/file`) have their own, larger limit and must be real multipart file parts:
    BentoML would fetch a URL given in place of a file (SSRF)."""

    def __init__(
        self, app: ASGIApp, *, max_request_bytes: int, max_upload_bytes: int, max_request_values: int
    ) -> None:
        self.app = app
        self.max_request_bytes = max_request_bytes
        self.max_upload_bytes = max_upload_bytes
        self.max_request_values = max_request_values

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        is_upload = scope["path"].rstrip("/") == UPLOAD_PATH
        limit = self.max_upload_bytes if is_upload else self.max_request_bytes
        headers = Headers(scope=scope)
        declared = headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await self._reject(scope, send, 413, "payload_too_large", f"request body exceeds {limit:,} bytes")
            return
        if is_upload and scope["method"] == "POST":
            await self._upload(scope, receive, send, headers, limit)
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body.extend(message.get("body", b""))
            if len(body) > limit:
                await self._reject(
                    scope, send, 413, "payload_too_large", f"request body exceeds {limit:,} bytes"
                )
                return
            if not message.get("more_body", False):
                break
        if scope["method"] == "POST":
            # Other methods are BentoML's 405; a check here would answer them with a 4xx of the body.
            problem = _json_problem(headers) or self._values_problem(body)
            if problem is not None:
                await self._reject(scope, send, *problem)
                return
        await self.app(scope, _replay_once(bytes(body), receive), send)

    def _values_problem(self, body: bytearray) -> tuple[int, str, str] | None:
        # BentoML parses and validates the whole body on the event loop before any handler runs; a
        # comma count (C speed) bounds that work first. Every value but the last of a list has a comma;
        # the slack covers the other fields.
        if body.count(b",") > self.max_request_values + VALUES_SLACK:
            return (
                413,
                "payload_too_large",
                f"the request carries more than {self.max_request_values:,} values",
            )
        return None

    async def _upload(self, scope: Scope, receive: Receive, send: Send, headers: Headers, limit: int) -> None:
        """Uploads (raw `.gt3x` files run to hundreds of MB) are spooled to an unnamed private temporary
        file, checked, and replayed from it in chunks, so no copy of the body is held in memory."""
        with tempfile.TemporaryFile() as spool:
            size = 0
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    await self._reject(
                        scope, send, 413, "payload_too_large", f"request body exceeds {limit:,} bytes"
                    )
                    return
                spool.write(chunk)
                if not message.get("more_body", False):
                    break
            spool.seek(0)
            problem, merged = await _check_upload(headers, _chunks(spool))
            if problem is not None:
                await self._reject(scope, send, *problem)
                return
            if merged is not None:
                await self.app(_with_body_headers(scope, merged), _replay_once(merged, receive), send)
                return
            spool.seek(0)
            finished = False

            async def replay() -> Message:
                nonlocal finished
                if finished:
                    return await receive()
                chunk = spool.read(UPLOAD_CHUNK_BYTES)
                finished = len(chunk) < UPLOAD_CHUNK_BYTES
                return {"type": "http.request", "body": chunk, "more_body": not finished}

            await self.app(scope, replay, send)

    @staticmethod
    async def _reject(scope: Scope, send: Send, status: int, code: str, message: str) -> None:
        response = JSONResponse(error_body(code, message, request_id_of(scope)), status_code=status)
        await response(scope, _no_receive, send)


def _json_problem(headers: Headers) -> tuple[int, str, str] | None:
    """JSON endpoints take JSON (BentoML would try to parse other declared types and fail with 500)."""
    media_type = headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if media_type != "application/json":
        return 415, "unsupported_media_type", f"send the body as application/json, not {media_type[:64]}"
    return None


async def _chunks(spool: BinaryIO) -> AsyncIterator[bytes]:
    while chunk := spool.read(UPLOAD_CHUNK_BYTES):
        yield chunk


def _replay_once(body: bytes, receive: Receive) -> Receive:
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if replayed:
            return await receive()
        replayed = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


async def _check_upload(
    headers: Headers, body: AsyncIterator[bytes]
) -> tuple[tuple[int, str, str] | None, bytes | None]:
    """The upload must be multipart/form-data whose `file` field is a file part, not a string. Returns
    the problem, if any, and a rewritten body when a text field is repeated (`_merge_repeated`)."""
    if headers.get("content-type", "").split(";")[0].strip().lower() != "multipart/form-data":
        return (
            415,
            "unsupported_media_type",
            "upload the device file as multipart/form-data (field `file`)",
        ), None
    parser = MultiPartParser(headers, body, max_files=1, max_fields=16)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        return (422, "malformed_multipart", f"could not parse the multipart body: {exc.message}"), None
    try:
        file = form.get("file")
        if not isinstance(file, UploadFile):
            message = "field `file` must be an uploaded file part (URLs are not fetched)"
            return (422, "validation_error", message), None
        # BentoML stores the part under its file name: a longer one than the file system allows is a 500.
        if len(file.filename or "") > MAX_FILENAME_CHARS:
            return (422, "validation_error", f"file name: longer than {MAX_FILENAME_CHARS} characters"), None
        if all(len(form.getlist(name)) == 1 for name in form):
            return None, None
        return None, await _merge_repeated(form)
    finally:
        await form.close()


async def _merge_repeated(form: FormData) -> bytes:
    """OpenAPI's default multipart encoding of a list repeats the field (`outputs=metrics`,
    `outputs=pat`), but BentoML keeps only a repeated field's last value. The body is rebuilt with each
    repeated text field as one JSON array, which BentoML decodes (a repeated scalar then fails
    validation, as it should)."""
    boundary = secrets.token_hex(16)
    parts: list[bytes] = []
    for name in dict.fromkeys(form.keys()):
        values = form.getlist(name)
        quoted = name.replace('"', "%22")
        if isinstance(values[0], UploadFile):
            upload = values[0]
            await upload.seek(0)
            filename = (upload.filename or "upload").replace('"', "%22")
            media_type = upload.content_type or "application/octet-stream"
            head = (
                f'Content-Disposition: form-data; name="{quoted}"; filename="{filename}"\r\n'
                f"Content-Type: {media_type}\r\n\r\n"
            )
            content = await upload.read()
        else:
            text = [str(value) for value in values]
            head = f'Content-Disposition: form-data; name="{quoted}"\r\n\r\n'
            content = (json.dumps(text) if len(text) > 1 else text[0]).encode()
        parts.append(f"--{boundary}\r\n{head}".encode() + content + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode()


def _with_body_headers(scope: Scope, body: bytes) -> Scope:
    boundary = body[2 : body.index(b"\r\n")]
    headers = [(k, v) for k, v in scope["headers"] if k not in (b"content-type", b"content-length")]
    headers += [
        (b"content-type", b"multipart/form-data; boundary=" + boundary),
        (b"content-length", str(len(body)).encode()),
    ]
    return {**scope, "headers": headers}


class SecurityHeadersMiddleware:
    """Adds security headers to every response: no caching of health data, no sniffing, a strict
    CSP (the docs page gets one that allows its own scripts), HSTS when serving TLS; drops `Server`."""

    def __init__(self, app: ASGIApp, *, tls: bool) -> None:
        self.app = app
        self.tls = tls

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        is_docs = scope["path"] in ("/", "") or scope["path"].startswith("/static_content")
        extra = [
            (b"content-security-policy", (DOCS_CSP if is_docs else API_CSP).encode()),
            (b"x-content-type-options", b"nosniff"),
            (b"referrer-policy", b"no-referrer"),
            (b"cache-control", b"no-store"),
        ]
        if self.tls:
            extra.append((b"strict-transport-security", b"max-age=31536000; includeSubDomains"))

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                # BentoML names itself and its version in `Server`: nothing a client needs.
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"server"]
                names = {k.lower() for k, _ in headers}
                message["headers"] = [*headers, *(h for h in extra if h[0] not in names)]
            await send(message)

        await self.app(scope, receive, with_headers)


AUTH_NOTE_ON = (
    "Authentication is on: every call needs <code>Authorization: Bearer &lt;Firebase ID token&gt;</code> of "
    "a user whose custom claim <code>pat_role</code> is <code>clinician</code>, <code>service</code> or "
    "<code>admin</code>. Sign the user in with the Firebase Auth SDK (web: <code>getIdToken()</code>; "
    "REST: <code>accounts:signInWithPassword</code> → <code>idToken</code>) and paste the token into "
    "<em>Authorize</em>. An administrator grants the role (docs/api.md)."
)
AUTH_NOTE_OFF = (
    "Authentication is <strong>disabled</strong> on this server (<code>PAT_AUTH=disabled</code>, a "
    "loopback-only development server): calls need no token and act with the admin role."
)


def client_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """`/schema.json` for `bentoml.SyncHTTPClient`: its encoder keeps only the properties a nested input
    schema lists, so an unknown field would be dropped silently on the client while raw HTTP gets 422.
    Nested input objects are listed without their properties, so the client forwards them as given and
    the server's validation answers both alike."""
    schema = json.loads(json.dumps(schema))
    for route in schema.get("routes", []):
        for prop in route.get("input", {}).get("properties", {}).values():
            _opaque(prop)
    return schema


def _opaque(node: dict[str, Any]) -> None:
    node.pop("properties", None)
    items = node.get("items")
    if isinstance(items, dict):
        _opaque(items)
    for option in node.get("anyOf", []):
        if isinstance(option, dict):
            _opaque(option)


class ClientErrorLogFilter(logging.Filter):
    """BentoML logs every request it refuses with ERROR and a traceback ("Exception on /v1/analyze"),
    validation failures included. Those are the client's errors: INFO without the traceback, so an
    alert on ERROR means a server fault."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if isinstance(record.exc_info, tuple) else None
        if record.levelno >= logging.ERROR and exc is not None and _is_client_error(exc):
            record.levelno = logging.INFO
            record.levelname = "INFO"
            record.msg = f"client error ({type(exc).__name__}) on %s [%s]"
            record.exc_info = None
            record.exc_text = None
        return True


def _is_client_error(exc: BaseException) -> bool:
    from bentoml.exceptions import BentoMLException

    if isinstance(exc, ValidationError):
        return True
    return isinstance(exc, BentoMLException) and 400 <= int(exc.error_code.value) < 500


def downgrade_client_error_logs() -> None:
    """Installs `ClientErrorLogFilter` on the logger of BentoML's request handler."""
    handler_logger = logging.getLogger("bentoml._internal.server.http_app")
    if not any(isinstance(f, ClientErrorLogFilter) for f in handler_logger.filters):
        handler_logger.addFilter(ClientErrorLogFilter())


class DocsMiddleware:
    """Serves the Swagger UI page (without BentoML's Google Tag Manager script, with our initializer:
    no third-party validator, the auth note), the OpenAPI document (`pat_runner.serving.openapi`) at
    `/docs.json` and BentoML's client schema at `/schema.json` (`client_schema`). Sits behind
    authentication."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        openapi: Callable[[], dict[str, Any]],
        client_schema: Callable[[], dict[str, Any]],
        auth_enabled: bool,
    ) -> None:
        self.app = app
        static = resources.files("pat_runner.serving").joinpath("static")
        note = AUTH_NOTE_ON if auth_enabled else AUTH_NOTE_OFF
        self.page = static.joinpath("docs.html").read_text().replace("{{auth_note}}", note).encode()
        self.script = static.joinpath("docs.js").read_bytes()
        self.openapi = openapi
        self.client_schema = client_schema
        self._bodies: dict[str, bytes] = {}

    def _body(self, path: str) -> bytes:
        if path not in self._bodies:
            document = self.openapi() if path == "/docs.json" else client_schema(self.client_schema())
            self._bodies[path] = json.dumps(document).encode()
        return self._bodies[path]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if path in ("/", ""):
            response = Response(self.page, media_type="text/html; charset=utf-8")
        elif path == DOCS_SCRIPT_PATH:
            response = Response(self.script, media_type="text/javascript; charset=utf-8")
        elif path in ("/docs.json", "/schema.json"):
            response = Response(self._body(path), media_type="application/json")
        else:
            await self.app(scope, receive, send)
            return
        await response(scope, receive, send)
