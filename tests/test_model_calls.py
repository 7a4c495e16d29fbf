"""`call_model_service`: one retry after a transport failure, none after an answer, 429 → 503."""

from __future__ import annotations

from http import HTTPStatus

import pytest
from bentoml.exceptions import BentoMLException

from pat_runner.errors import ModelUnavailable
from pat_runner.serving.backpressure import call_model_service


class Calls:
    def __init__(self, *outcomes: object) -> None:
        self.outcomes = list(outcomes)
        self.made = 0

    async def __call__(self) -> str:
        self.made += 1
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return str(outcome)


async def test_a_call_lost_in_transport_is_retried_once() -> None:
    calls = Calls(ConnectionResetError("worker died"), "records")
    assert await call_model_service(calls) == "records" and calls.made == 2


async def test_a_second_transport_failure_propagates() -> None:
    calls = Calls(ConnectionResetError(), ConnectionResetError())
    with pytest.raises(ConnectionResetError):
        await call_model_service(calls)
    assert calls.made == 2


async def test_an_answer_is_not_retried_and_a_full_queue_is_503() -> None:
    failed = Calls(BentoMLException("boom", error_code=HTTPStatus.INTERNAL_SERVER_ERROR))
    with pytest.raises(BentoMLException):
        await call_model_service(failed)
    assert failed.made == 1
    full = Calls(BentoMLException("queue full", error_code=HTTPStatus.TOO_MANY_REQUESTS))
    with pytest.raises(ModelUnavailable) as refused:
        await call_model_service(full)
    assert refused.value.code == "model_overloaded" and full.made == 1
