"""HTTP plumbing of the API service: one error body shape, request limits, safe uploads, the docs page.

All of these are plain ASGI middlewares added with `Service.add_asgi_middleware`, so BentoML's own
errors (validation, routing, overload) and ours leave the server in the same shape:
`{"error": {"code": ..., "message": ..., "request_id": ...}}`.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import AsyncIterator, Callable
from importlib import resources
from typing import Any, BinaryIO

from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pat_runner.errors import ServiceError

logger = logging.getLogger("pat.http")

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
    415: "unsupported_media_type",
    422: "validation_error",
    429: "overloaded",
    500: "internal_error",
    503: "service_unavailable",
    504: "timeout",
}
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


def request_id_of(scope: Scope) -> str | None:
    return scope.get("state", {}).get("request_id")


def error_body(code: str, message: str, request_id: str | None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "request_id": request_id}}


def error_response(exc: ServiceError, request_id: str | None) -> JSONResponse:
    return JSONResponse(error_body(exc.code, exc.message, request_id), status_code=exc.status)


def _validation_message(detail: Any) -> str:
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
        return 422, code, _validation_message(payload["detail"])
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


class RequestLimitsMiddleware:
    """413 for bodies over the limit, whether announced by Content-Length or streamed; checked
    before anything reads the body. Uploads (`/v1/analyze/file`) have their own, larger limit and must
    be real multipart file parts: BentoML would fetch a URL given in place of a file (SSRF)."""

    def __init__(self, app: ASGIApp, *, max_request_bytes: int, max_upload_bytes: int) -> None:
        self.app = app
        self.max_request_bytes = max_request_bytes
        self.max_upload_bytes = max_upload_bytes

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
        if is_upload:
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
        problem = _json_problem(headers)
        if problem is not None:
            await self._reject(scope, send, *problem)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)

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
            problem = await _upload_problem(headers, _chunks(spool))
            if problem is not None:
                await self._reject(scope, send, *problem)
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


async def _upload_problem(headers: Headers, body: AsyncIterator[bytes]) -> tuple[int, str, str] | None:
    """The upload must be multipart/form-data whose `file` field is a file part, not a string."""
    if headers.get("content-type", "").split(";")[0].strip().lower() != "multipart/form-data":
        return 415, "unsupported_media_type", "upload the device file as multipart/form-data (field `file`)"
    parser = MultiPartParser(headers, body, max_files=1, max_fields=16)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        return 422, "malformed_multipart", f"could not parse the multipart body: {exc.message}"
    try:
        file = form.get("file")
        if not isinstance(file, UploadFile):
            return (
                422,
                "validation_error",
                "field `file` must be an uploaded file part (URLs are not fetched)",
            )
    finally:
        await form.close()
    return None


class SecurityHeadersMiddleware:
    """Adds security headers to every response: no caching of health data, no sniffing, a strict
    CSP (the docs page gets one that allows its own scripts), HSTS when serving TLS."""

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
                names = {k.lower() for k, _ in message.get("headers", [])}
                message["headers"] = [*message.get("headers", []), *(h for h in extra if h[0] not in names)]
            await send(message)

        await self.app(scope, receive, with_headers)


class DocsMiddleware:
    """Serves the Swagger UI page without BentoML's Google Tag Manager script, and the enriched OpenAPI
    document (`pat_runner.serving.openapi`) at `/docs.json`. Sits behind authentication."""

    def __init__(self, app: ASGIApp, *, openapi: Callable[[], dict[str, Any]]) -> None:
        self.app = app
        self.page = resources.files("pat_runner.serving").joinpath("static/docs.html").read_bytes()
        self.openapi = openapi
        self._openapi_body: bytes | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        if scope["path"] in ("/", ""):
            await Response(self.page, media_type="text/html; charset=utf-8")(scope, receive, send)
        elif scope["path"] == "/docs.json":
            if self._openapi_body is None:
                self._openapi_body = json.dumps(self.openapi()).encode()
            await Response(self._openapi_body, media_type="application/json")(scope, receive, send)
        else:
            await self.app(scope, receive, send)
