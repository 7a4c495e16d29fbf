"""Two model-service workers behind one API service: load spreads across both (per-worker counters),
and killing one mid-traffic fails no request (a call lost in transport is retried once, reaching the
worker still alive)."""

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


def test_requests_spread_across_both_model_workers(server: Server, tokens: dict[str, str]) -> None:
    assert len(server.worker_pids("pat_model")) == 2
    stop = threading.Event()
    timer = threading.Timer(8.0, stop.set)
    timer.start()
    statuses = run_load(server, tokens["service"], threads=6, first_seed=40_000, stop=stop)
    assert statuses and set(statuses) == {200}
    served = worker_windows(server)
    assert len([w for w, windows in served.items() if windows > 0]) == 2, served


def test_killing_one_model_worker_fails_no_request(server: Server, tokens: dict[str, str]) -> None:
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
        time.sleep(4.0)
    finally:
        stop.set()
        loader.join()
    assert statuses and set(statuses) == {200}, sorted(set(statuses))
    assert analyze(server, tokens["service"], 99_999).status_code == 200
