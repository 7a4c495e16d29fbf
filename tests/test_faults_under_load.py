"""Backpressure and crash recovery of a real `bentoml serve` under concurrent load.

One server with a deliberately small concurrency limit (`PAT_MAX_CONCURRENCY=2`): a burst past it is
refused quickly with 429 in the error envelope, with `Retry-After`, and the service recovers by itself;
killing the model worker mid-load gives clean 503s (or successes), readiness false then true, and a
served model again; finally SIGTERM mid-request lets the request complete before the server exits.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from scripts.local_server import Server, start_server, stop_server
from tests.drain import sigterm_during_batch
from tests.factories import recording

pytestmark = pytest.mark.integration

LIMIT = 2
RETRY_AFTER_S = 3
GRACE_S = 25


@pytest.fixture(scope="module")
def server(
    model_store: Path, firebase_emulator, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    running = start_server(
        home=model_store,
        log_path=tmp_path_factory.mktemp("faults-logs") / "server.log",
        extra_env={
            **firebase_emulator.env(),
            "PAT_AUTH": "firebase",
            "PAT_MAX_CONCURRENCY": str(LIMIT),
            "PAT_RETRY_AFTER_S": str(RETRY_AFTER_S),
            "PAT_PROTECT_METRICS": "false",
        },
        # Drain within Kubernetes' default 30 s grace period before SIGKILL (single-container layout).
        serve_args=["--timeout-graceful-shutdown", str(GRACE_S)],
    )
    yield running
    stop_server(running)


@pytest.fixture(scope="module")
def headers(tokens) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens['service']}"}


def analyze(server: Server, headers: dict[str, str], seed: int) -> httpx.Response:
    return httpx.post(
        f"{server.url}/v1/analyze", json={"recording": recording(seed)}, headers=headers, timeout=120
    )


def test_past_the_limit_requests_are_refused_fast_with_retry_after_then_service_recovers(
    server: Server, headers: dict[str, str]
) -> None:
    burst = 8 * LIMIT
    # Bodies encoded and one client built before the burst: 16 threads encoding 10,080 values each, or
    # building an SSL context each, under the GIL would time the test process rather than the server.
    bodies = [json.dumps({"recording": recording(9000 + i)}).encode() for i in range(burst)]
    with httpx.Client(
        base_url=server.url,
        headers={**headers, "Content-Type": "application/json"},
        timeout=120,
        limits=httpx.Limits(max_connections=burst),
    ) as client:

        def timed(body: bytes) -> tuple[httpx.Response, float]:
            started = time.perf_counter()
            response = client.post("/v1/analyze", content=body)
            return response, time.perf_counter() - started

        with ThreadPoolExecutor(burst) as pool:
            results = list(pool.map(timed, bodies))
    statuses = [response.status_code for response, _ in results]
    assert set(statuses) <= {200, 429}, statuses
    assert statuses.count(200) >= LIMIT
    rejected = [(response, seconds) for response, seconds in results if response.status_code == 429]
    assert rejected, "no request was refused past the concurrency limit"
    slowest_admitted = max(seconds for response, seconds in results if response.status_code == 200)
    for response, seconds in rejected:
        assert response.headers["retry-after"] == str(RETRY_AFTER_S)
        error = response.json()["error"]
        assert error["code"] == "overloaded"
        assert error["request_id"] == response.headers["x-request-id"]
        # Refused without queueing: answered before the work it would have waited for was done.
        assert seconds < slowest_admitted

    # Recovery needs nothing but lower load.
    for seed in range(4):
        response = analyze(server, headers, 9100 + seed)
        assert response.status_code == 200, response.text
    assert f'pat_rejections_total{{reason="concurrency"}} {float(len(rejected))}' in server.metrics()


def _ready(server: Server) -> bool:
    try:
        return httpx.get(f"{server.url}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_killing_the_model_worker_under_load_gives_clean_503s_and_it_comes_back(
    server: Server, headers: dict[str, str]
) -> None:
    (model_pid,) = server.worker_pids("pat_model")
    responses: list[httpx.Response] = []
    stop = threading.Event()

    def load(worker: int) -> None:
        seed = 20_000 + 1_000 * worker
        while not stop.is_set():
            seed += 1
            responses.append(analyze(server, headers, seed))

    threads = [threading.Thread(target=load, args=(i,)) for i in range(LIMIT)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(1.0)
        os.kill(model_pid, signal.SIGKILL)
        readiness = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            readiness.append(_ready(server))
            if False in readiness and readiness[-1]:
                break
            time.sleep(0.2)
        time.sleep(1.0)
    finally:
        stop.set()
        for thread in threads:
            thread.join()

    assert False in readiness, "readiness never went false while the model worker was down"
    assert readiness[-1], "readiness did not come back"
    (new_pid,) = server.worker_pids("pat_model")
    assert new_pid != model_pid
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 503}, statuses
    for response in responses:
        if response.status_code == 503:
            assert response.json()["error"]["code"] in {"model_unavailable", "model_overloaded"}
            assert response.headers["retry-after"] == str(RETRY_AFTER_S)
    response = analyze(server, headers, 31_337)
    assert response.status_code == 200, response.text
    assert 'pat_worker_starts_total{service="model"} 2.0' in server.metrics()


def test_sigterm_mid_request_lets_the_request_complete(server: Server, headers: dict[str, str]) -> None:
    """Last in this module: it stops the server."""
    body = {"recordings": [recording(40_000 + i) for i in range(24)]}
    drained = sigterm_during_batch(server, body, headers, grace_s=GRACE_S)
    assert drained.finished_after_sigterm, "the request finished before SIGTERM; nothing was drained"
    assert drained.response.status_code == 200, drained.response.text
    assert all(item["result"] is not None for item in drained.response.json()["results"])
    assert drained.exit_code == 0
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{server.url}/readyz", timeout=2)


def test_in_a_container_a_dead_model_worker_stops_the_server_so_the_orchestrator_restarts_it(
    model_store: Path, tmp_path: Path
) -> None:
    """Inside a container BentoML does not respawn workers (BENTOML_CONTAINERIZED): with its only model
    worker gone, the server must exit non-zero, so the container restarts, rather than stay up unready."""
    running = start_server(
        home=model_store,
        log_path=tmp_path / "server.log",
        extra_env={"PAT_AUTH": "disabled", "BENTOML_CONTAINERIZED": "true"},
    )
    try:
        (model_pid,) = running.worker_pids("pat_model")
        os.kill(model_pid, signal.SIGKILL)
        returncode = running.process.wait(timeout=60)
    finally:
        stop_server(running)
    assert returncode != 0
    assert "No active process found for watcher" in running.logs()
