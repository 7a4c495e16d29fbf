"""`ErrorEnvelopeMiddleware` in process: an unexpected exception is a 500 envelope logged as an error,
except in BentoML's readiness check, where it means the model service is not answering yet (measured:
PAT-L with `PAT_BACKEND=auto` answered /readyz with 500 for ~6 s of every start before this)."""

from __future__ import annotations

import logging

import aiohttp
import httpx
import pytest
from starlette.types import Receive, Scope, Send

from pat_runner.serving.http import ErrorEnvelopeMiddleware


def failing(exc: Exception):
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        raise exc

    return app


async def get(app, path: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=ErrorEnvelopeMiddleware(app), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await client.get(path)


@pytest.mark.parametrize("exc", [TimeoutError(), aiohttp.ClientConnectionError("refused")])
async def test_a_readiness_check_that_cannot_reach_the_model_is_503_not_ready(
    exc: Exception, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="pat.http"):
        response = await get(failing(exc), "/readyz")
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "service_unavailable"
    assert "not ready" in response.json()["error"]["message"]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_the_same_exception_elsewhere_is_an_internal_error(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="pat.http"):
        response = await get(failing(TimeoutError()), "/v1/analyze")
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "internal_error"
    assert [r.levelno for r in caplog.records] == [logging.ERROR]
