"""`call_model_service`: each attempt goes where `ModelRoutes` sends it; one retry after a transport
failure, with another worker's client or the shared one; none after an answer; 429 → 503."""

from __future__ import annotations

from http import HTTPStatus

import pytest
from bentoml.exceptions import BentoMLException, ServiceUnavailable

from pat_runner.errors import ModelUnavailable
from pat_runner.serving.backpressure import call_model_service
from pat_runner.serving.spread import ModelRoutes
from tests.factories import NamedClient

SHARED, FIRST, SECOND = NamedClient("shared"), NamedClient("first"), NamedClient("second")


class Calls:
    def __init__(self, *outcomes: object) -> None:
        self.outcomes = list(outcomes)
        self.clients: list[str] = []

    async def __call__(self, client: NamedClient) -> str:
        self.clients.append(client.name)
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return str(outcome)


async def test_a_call_lost_in_transport_is_retried_once_with_the_next_worker() -> None:
    routes = ModelRoutes(SHARED, [FIRST, SECOND])
    calls = Calls(ConnectionResetError("worker died"), "records")
    assert await call_model_service(calls, routes) == "records"
    assert calls.clients == ["first", "second"]
    # The worker that failed is set aside: the next calls go to the other one.
    after = Calls("records", "records")
    for _ in range(2):
        await call_model_service(after, routes)
    assert after.clients == ["second", "second"]


async def test_with_the_only_other_worker_set_aside_the_retry_takes_the_shared_client() -> None:
    routes = ModelRoutes(SHARED, [FIRST, SECOND])
    routes.failed(1)
    calls = Calls(ConnectionResetError(), "records")
    assert await call_model_service(calls, routes) == "records"
    assert calls.clients == ["first", "shared"]


async def test_without_worker_clients_every_attempt_takes_the_shared_client() -> None:
    calls = Calls(ConnectionResetError(), "records")
    assert await call_model_service(calls, ModelRoutes(SHARED)) == "records"
    assert calls.clients == ["shared", "shared"]


async def test_a_second_transport_failure_propagates() -> None:
    calls = Calls(ConnectionResetError(), ConnectionResetError())
    with pytest.raises(ConnectionResetError):
        await call_model_service(calls, ModelRoutes(SHARED, [FIRST, SECOND]))
    assert calls.clients == ["first", "second"]


async def test_an_answer_is_not_retried_and_a_full_queue_is_503() -> None:
    routes = ModelRoutes(SHARED, [FIRST, SECOND])
    failed = Calls(BentoMLException("boom", error_code=HTTPStatus.INTERNAL_SERVER_ERROR))
    with pytest.raises(BentoMLException):
        await call_model_service(failed, routes)
    assert failed.clients == ["first"]
    full = Calls(BentoMLException("queue full", error_code=HTTPStatus.TOO_MANY_REQUESTS))
    with pytest.raises(ModelUnavailable) as refused:
        await call_model_service(full, routes)
    assert refused.value.code == "model_overloaded" and full.clients == ["second"]


async def test_a_call_shed_by_the_model_batching_is_overload_not_unavailability() -> None:
    # BentoML's batching answers 503 "process is overloaded" when the queue would exceed max latency.
    shed = Calls(ServiceUnavailable("process is overloaded"))
    with pytest.raises(ModelUnavailable) as refused:
        await call_model_service(shed, ModelRoutes(SHARED, [FIRST, SECOND]))
    assert refused.value.code == "model_overloaded" and "PAT_MAX_LATENCY_MS" in refused.value.message
    assert shed.clients == ["first"]
