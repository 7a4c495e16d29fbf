"""Two model-service workers behind one API service: killing one under load fails no request (a call
lost in transport is retried once and reaches the live worker); the per-worker counter shows which
workers served."""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from scripts.local_server import Server, start_server, stop_server
from tests.factories import recording

pytestmark = pytest.mark.integration

WORKER_WINDOWS = re.compile(r'^pat_model_worker_windows_total\{worker="([^"]+)"\} ([0-9.e+]+)$', re.MULTILINE)


@pytest.fixture(scope="module")
def server(
    model_store: Path, firebase_emulator, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    running = start_server(
        home=model_store,
        log_path=tmp_path_factory.mktemp("model-workers-logs") / "server.log",
        extra_env={
            **firebase_emulator.env(),
            "PAT_AUTH": "firebase",
            "PAT_RUNNER_WORKERS": "2",
            "PAT_PROTECT_METRICS": "false",
            "PAT_MAX_CONCURRENCY": "64",
        },
    )
    yield running
    stop_server(running)


def analyze(server: Server, token: str, seed: int) -> httpx.Response:
    # PAT only, distinct weeks: every request reaches the model service (no cache hits).
    body = {"recording": recording(seed, gap=None), "options": {"outputs": ["pat"]}}
    return httpx.post(
        f"{server.url}/v1/analyze", json=body, headers={"Authorization": f"Bearer {token}"}, timeout=120
    )


def worker_windows(server: Server) -> dict[str, float]:
    return {worker: float(value) for worker, value in WORKER_WINDOWS.findall(server.metrics())}


def run_load(
    server: Server, token: str, *, threads: int, first_seed: int, stop: threading.Event
) -> list[int]:
    statuses: list[int] = []

    def client(index: int) -> None:
        seed = first_seed + 10_000 * index
        while not stop.is_set():
            seed += 1
            statuses.append(analyze(server, token, seed).status_code)

    workers = [threading.Thread(target=client, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    stop.wait()
    for worker in workers:
        worker.join()
    return statuses


def test_killing_a_model_worker_under_load_fails_no_request(server: Server, tokens: dict[str, str]) -> None:
    # Which worker holds the API's connections is the kernel's choice: when the killed one had calls in
    # flight, they are retried once and served by the other worker.
    victim = server.worker_pids("pat_model")[0]
    stop = threading.Event()
    statuses: list[int] = []
    loader = threading.Thread(
        target=lambda: statuses.extend(
            run_load(server, tokens["service"], threads=4, first_seed=90_000, stop=stop)
        )
    )
    loader.start()
    try:
        time.sleep(2.0)
        os.kill(victim, signal.SIGKILL)
        time.sleep(5.0)
    finally:
        stop.set()
        loader.join()
    assert statuses and set(statuses) == {200}, sorted(set(statuses))
    assert analyze(server, tokens["service"], 99_999).status_code == 200
    assert sum(worker_windows(server).values()) > 0
