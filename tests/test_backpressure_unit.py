"""`ConcurrencyLimitMiddleware` and the OTLP exporter choice, in process (the HTTP-level behaviour is in
test_faults_under_load.py and test_otlp_export.py)."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from starlette.types import Receive, Scope, Send

from pat_runner import telemetry
from pat_runner.serving.backpressure import ConcurrencyLimitMiddleware


def _app(release: asyncio.Event, status: int = 200):
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await release.wait()
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    return app


async def test_one_past_the_limit_is_refused_at_once_and_the_slot_is_freed() -> None:
    release = asyncio.Event()
    limited = ConcurrencyLimitMiddleware(_app(release), max_concurrency=2, retry_after_s=7)
    transport = httpx.ASGITransport(app=limited)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        admitted = [asyncio.create_task(client.post("/v1/analyze")) for _ in range(2)]
        await asyncio.sleep(0.05)
        refused = await client.post("/v1/analyze")
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "7"
        assert refused.json()["error"]["code"] == "overloaded"
        # Cheap and health endpoints are never limited.
        models = asyncio.create_task(client.get("/v1/models"))
        health = asyncio.create_task(client.get("/readyz"))
        await asyncio.sleep(0.05)
        release.set()
        assert [r.status_code for r in await asyncio.gather(*admitted, models, health)] == [200] * 4
        assert limited.in_progress == 0
        assert (await client.post("/v1/analyze")).status_code == 200


async def test_503_of_the_app_gets_retry_after() -> None:
    release = asyncio.Event()
    release.set()
    limited = ConcurrencyLimitMiddleware(_app(release, status=503), max_concurrency=2, retry_after_s=4)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=limited), base_url="http://t") as client:
        response = await client.post("/v1/embed")
    assert response.status_code == 503 and response.headers["retry-after"] == "4"


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({}, "otlp_proto_http"),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "otlp_proto_grpc"),
        (
            {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"},
            "otlp_proto_http",
        ),
    ],
)
def test_otlp_name_follows_the_standard_protocol_variables(
    monkeypatch, env: dict[str, str], name: str
) -> None:
    for key in ("OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert telemetry.otlp_exporter_name() == name
