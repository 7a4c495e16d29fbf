"""SIGTERM in the middle of a request: the shared step of the graceful-shutdown tests."""

from __future__ import annotations

import signal
import threading
import time
from dataclasses import dataclass

import httpx

from scripts.local_server import Server


@dataclass
class Drained:
    response: httpx.Response
    #: whether the response arrived after SIGTERM was sent (else nothing was drained)
    finished_after_sigterm: bool
    exit_code: int


def sigterm_during_batch(server: Server, body: dict, headers: dict[str, str], *, grace_s: float) -> Drained:
    """POST `body` to /v1/analyze/batch, send the server SIGTERM once the request is in progress, and wait
    for both the response and the server's exit."""
    outcome: dict[str, object] = {}

    def call() -> None:
        response = httpx.post(f"{server.url}/v1/analyze/batch", json=body, headers=headers, timeout=120)
        outcome["response"] = response
        outcome["done"] = time.monotonic()

    caller = threading.Thread(target=call)
    caller.start()
    deadline = time.monotonic() + 30
    while "response" not in outcome and time.monotonic() < deadline:
        in_progress = [
            line
            for line in server.metrics().splitlines()
            if line.startswith("bentoml_service_request_in_progress")
            and 'endpoint="/v1/analyze/batch"' in line
        ]
        if in_progress and float(in_progress[0].rsplit(" ", 1)[1]) >= 1:
            break
        time.sleep(0.05)
    server.process.send_signal(signal.SIGTERM)
    terminated = time.monotonic()
    caller.join()
    exit_code = server.process.wait(timeout=grace_s + 30)
    response = outcome["response"]
    assert isinstance(response, httpx.Response)
    done = outcome["done"]
    assert isinstance(done, float)
    return Drained(response=response, finished_after_sigterm=done > terminated, exit_code=exit_code)
