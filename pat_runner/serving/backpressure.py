"""Backpressure: past capacity the API refuses quickly instead of queueing until clients time out.

`ConcurrencyLimitMiddleware` counts the API requests (`/v1/…` except the cheap `GET /v1/models`) in
progress in this worker; one more than `PAT_MAX_CONCURRENCY` is answered at once with 429 `overloaded`
and `Retry-After: PAT_RETRY_AFTER_S`, in the error envelope, before authentication or body parsing
cost anything. It sits inside the audit and envelope middlewares, so rejections are logged, counted
(`pat_requests_total{status="429"}`, `pat_rejections_total{reason="concurrency"}`) and shaped like
every other error. No state outlives a request, so the service recovers as soon as load drops.

BentoML's own `traffic.max_concurrency` is not used on the API service: its middleware runs outside
every service middleware and answers a bare `{"error": "Too many requests"}` without `Retry-After`.
It does bound the model service's queue (`PAT_MODEL_MAX_CONCURRENCY`), where the caller is the API:
a refused model call becomes 503 `model_overloaded` (`call_model_service`). Every 429 and 503 of the
API gets `Retry-After` when it has none.

The model service refuses calls under load in two ways, both answered 503 `model_overloaded` with
`Retry-After`: its queue bound (BentoML `traffic.max_concurrency`, 429) and its batching's shedding of
calls that would wait past `PAT_MAX_LATENCY_MS` (503).

A model call that fails in transport (its worker died mid-call: connection reset or closed, or refused)
is retried once. Each attempt goes where `spread.ModelRoutes` sends it: with several model workers, the
next one in turn, which skips the worker that just failed, so losing a worker fails no request; with one,
BentoML's client to the shared socket. Inference is a pure function of its input, so the retry is safe.
Errors the model service answered (4xx, 5xx) are not retried.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import TypeVar

from bentoml.exceptions import BentoMLException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pat_runner import telemetry
from pat_runner.errors import ModelUnavailable
from pat_runner.serving.http import error_body, request_id_of
from pat_runner.serving.spread import Client, ModelRoutes

LIMITED_PREFIX = "/v1/"
UNLIMITED = frozenset({("GET", "/v1/models")})
RETRY_STATUSES = (429, 503)
# What the model service answers when it refuses a call under load: BentoML's `traffic.max_concurrency`
# (429) and its adaptive batching's shedding of calls it cannot serve within the batch's max latency
# (503 "process is overloaded"); both are load, not a missing model. Reasons are metric labels.
OVERLOAD_REASONS = {
    HTTPStatus.TOO_MANY_REQUESTS: "model_queue",
    HTTPStatus.SERVICE_UNAVAILABLE: "model_latency",
}
OVERLOAD_MESSAGES = {
    "model_queue": "its queue is full",
    "model_latency": "the queued work would exceed PAT_MAX_LATENCY_MS",
}

T = TypeVar("T")
C = TypeVar("C", bound=Client)


logger = logging.getLogger(__name__)


async def call_model_service(call: Callable[[C], Awaitable[T]], routes: ModelRoutes[C]) -> T:
    """Run `call` with the client `routes` picks; after a transport failure, once more with the next pick
    (another worker, or the shared client); the model service's refusals under load, 429 (queue full)
    and 503 (its batching shed the call: it could not run within `PAT_MAX_LATENCY_MS`), become 503
    `model_overloaded`."""
    index, client = routes.pick()
    try:
        try:
            return await call(client)
        except BentoMLException:
            raise
        except Exception as exc:
            routes.failed(index)
            logger.warning("model service call failed in transport (%s); retrying once", type(exc).__name__)
            telemetry.record_model_retry()
            return await call(routes.pick()[1])
    except BentoMLException as exc:
        reason = OVERLOAD_REASONS.get(exc.error_code)
        if reason is None:
            raise
        telemetry.record_rejection(reason)
        raise ModelUnavailable(
            f"the PAT model service is overloaded ({OVERLOAD_MESSAGES[reason]}); retry later",
            code="model_overloaded",
        ) from exc


class ConcurrencyLimitMiddleware:
    def __init__(self, app: ASGIApp, *, max_concurrency: int, retry_after_s: int) -> None:
        self.app = app
        self.max_concurrency = max_concurrency
        self.retry_after_s = retry_after_s
        # One event loop per worker: a plain counter is enough, no lock between await points.
        self.in_progress = 0

    def limited(self, scope: Scope) -> bool:
        path = str(scope.get("path", "")).rstrip("/")
        return (
            scope["type"] == "http"
            and path.startswith(LIMITED_PREFIX.rstrip("/"))
            and (scope.get("method"), path) not in UNLIMITED
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.limited(scope):
            await self.app(scope, receive, send)
            return
        if self.in_progress >= self.max_concurrency:
            telemetry.record_rejection("concurrency")
            response = JSONResponse(
                error_body(
                    "overloaded",
                    f"the service is at its limit of {self.max_concurrency} concurrent requests per "
                    f"worker; retry after {self.retry_after_s} s",
                    request_id_of(scope),
                ),
                status_code=429,
                headers={"Retry-After": str(self.retry_after_s)},
            )
            await response(scope, receive, send)
            return
        retry_after = (b"retry-after", str(self.retry_after_s).encode())

        async def send_with_retry_after(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] in RETRY_STATUSES:
                headers = list(message.get("headers", []))
                if not any(name.lower() == b"retry-after" for name, _ in headers):
                    message = {**message, "headers": [*headers, retry_after]}
            await send(message)

        self.in_progress += 1
        try:
            await self.app(scope, receive, send_with_retry_after)
        finally:
            self.in_progress -= 1
