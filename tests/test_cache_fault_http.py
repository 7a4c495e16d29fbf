"""The cache fault test through the whole service: `bentoml serve` with its own `redis-server`, steady
traffic, Redis killed mid-run and restarted. No request may fail; caching must come back by itself."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from scripts.local_server import Server, cache_key_env, start_server, stop_server
from tests.factories import recording
from tests.redis_server import RedisServer

pytestmark = pytest.mark.integration

PHASE_S = 3.0
BODIES = [{"recording": recording(300 + i), "options": {"outputs": ["metrics"]}} for i in range(4)]


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def cached_server(model_store: Path, redis_server: RedisServer, tmp_path_factory) -> Iterator[Server]:
    server = start_server(
        home=model_store,
        log_path=tmp_path_factory.mktemp("fault") / "server.log",
        extra_env={
            "PAT_AUTH": "disabled",
            "PAT_REDIS_URL": redis_server.url,
            "PAT_REDIS_TIMEOUT_MS": "100",
            "PAT_REDIS_RETRY_AFTER_S": "0.5",
            **cache_key_env(),
        },
    )
    yield server
    stop_server(server)


def test_redis_killed_and_restarted_under_traffic(cached_server: Server, redis_server: RedisServer) -> None:
    outcomes: list[tuple[str, int, str]] = []
    phase = ["healthy"]
    stop = threading.Event()

    def traffic() -> None:
        with httpx.Client(base_url=cached_server.url, timeout=60) as client:
            i = 0
            while not stop.is_set():
                started_in = phase[0]  # a request is counted in the phase it started in
                response = client.post("/v1/analyze", json=BODIES[i % len(BODIES)])
                cache = response.json().get("cache", "") if response.status_code == 200 else ""
                outcomes.append((started_in, response.status_code, cache))
                i += 1

    threads = [threading.Thread(target=traffic) for _ in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(PHASE_S)
    redis_server.kill()
    phase[0] = "down"
    time.sleep(PHASE_S)
    redis_server.start()
    phase[0] = "restarted"
    time.sleep(PHASE_S)
    stop.set()
    for thread in threads:
        thread.join()

    counts = Counter(outcomes)
    statuses = Counter(status for _, status, _ in outcomes)
    assert statuses == {200: len(outcomes)}, counts
    by_phase = {
        name: Counter(c for p, _, c in outcomes if p == name) for name in ("healthy", "down", "restarted")
    }
    assert by_phase["healthy"]["hit"] > 0, by_phase
    # A request that starts just after the kill can still join (single-flight) a lookup that began
    # before it and share its hit: at most one per client thread.
    assert by_phase["down"]["bypass"] > 0 and by_phase["down"]["hit"] <= len(threads), by_phase
    assert by_phase["restarted"]["hit"] > 0, by_phase
    print(f"fault test through HTTP: {len(outcomes)} requests, 0 failed; {by_phase}")
