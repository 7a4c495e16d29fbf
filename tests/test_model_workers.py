"""Two model-service workers behind one API service, over real HTTP (`serving/spread.py`): the API's calls
take the workers in turn, so each runs its share of the windows (per-worker counter), sequential or
concurrent; calls that reach one worker still batch; killing one under load fails no request (a call
lost in transport is retried once, with the other worker) and the restarted worker is back in turn;
SIGTERM drains through the workers' own sockets."""

from __future__ import annotations

import os
import re
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

WORKER_WINDOWS = re.compile(r'^pat_model_worker_windows_total\{worker="([^"]+)"\} ([0-9.e+]+)$', re.MULTILINE)
BATCHES = re.compile(r"^pat_inference_batch_size_count ([0-9.e+]+)$", re.MULTILINE)
RETRIES = re.compile(r"^pat_model_retries_total ([0-9.e+]+)$", re.MULTILINE)
WORKERS = ("1", "2")
# Round robin gives each of the two workers half of the calls; a transport failure during a run sets
# its worker aside for spread.COOLDOWN_S, hence the margin below one half.
FAIR_SHARE = 0.4
CALLS = 40
GRACE_S = 25


@pytest.fixture(scope="module")
def headers(tokens: dict[str, str]) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens['service']}"}


@pytest.fixture(scope="module")
def server(
    model_store: Path,
    firebase_emulator,
    headers: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
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
        serve_args=["--timeout-graceful-shutdown", str(GRACE_S)],
    )
    try:
        # /readyz is 200 once one model worker serves; the other may still be loading the model.
        both_workers_take_calls(running, headers, first_seed=500)
        yield running
    finally:
        stop_server(running)


def analyze(server: Server, headers: dict[str, str], seed: int) -> httpx.Response:
    # PAT only, distinct weeks: every request reaches the model service (no cache hits), one window each.
    body = {"recording": recording(seed, gap=None), "options": {"outputs": ["pat"]}}
    return httpx.post(f"{server.url}/v1/analyze", json=body, headers=headers, timeout=120)


def worker_windows(server: Server) -> dict[str, float]:
    return {worker: float(value) for worker, value in WORKER_WINDOWS.findall(server.metrics())}


def ran_since(server: Server, before: dict[str, float]) -> dict[str, float]:
    """Windows each worker ran since `before`."""
    now = worker_windows(server)
    return {worker: now.get(worker, 0.0) - before.get(worker, 0.0) for worker in WORKERS}


def counter(server: Server, pattern: re.Pattern[str]) -> float:
    found = pattern.findall(server.metrics())
    return float(found[0]) if found else 0.0


def both_workers_take_calls(server: Server, headers: dict[str, str], *, first_seed: int) -> None:
    """Wait until both workers run calls: a worker that was not listening yet is set aside for
    spread.COOLDOWN_S after the call it refused."""
    deadline = time.monotonic() + 120
    seed = first_seed
    while time.monotonic() < deadline:
        before = worker_windows(server)
        for _ in range(4):
            seed += 1
            assert analyze(server, headers, seed).status_code == 200
        if all(ran > 0 for ran in ran_since(server, before).values()):
            return
        time.sleep(1.0)
    pytest.fail(f"a model worker took no calls: {worker_windows(server)}")


def assert_fair(ran: dict[str, float], windows: int) -> None:
    assert sum(ran.values()) == windows, ran
    for worker in WORKERS:
        assert ran[worker] >= FAIR_SHARE * windows, ran


def test_sequential_calls_take_the_workers_in_turn(server: Server, headers: dict[str, str]) -> None:
    # One call at a time over kept-alive connections: with one shared socket, one worker took them all.
    before = worker_windows(server)
    statuses = [analyze(server, headers, 1_000 + seed).status_code for seed in range(CALLS)]
    assert set(statuses) == {200}
    assert_fair(ran_since(server, before), CALLS)


def test_concurrent_calls_take_the_workers_in_turn(server: Server, headers: dict[str, str]) -> None:
    before = worker_windows(server)
    with ThreadPoolExecutor(8) as pool:
        statuses = [
            r.status_code for r in pool.map(lambda s: analyze(server, headers, 2_000 + s), range(CALLS))
        ]
    assert set(statuses) == {200}
    assert_fair(ran_since(server, before), CALLS)


def test_a_batch_reaches_both_workers_and_each_still_batches(server: Server, headers: dict[str, str]) -> None:
    recordings = 32
    body = {
        "recordings": [recording(3_000 + i, gap=None) for i in range(recordings)],
        "options": {"outputs": ["pat"]},
    }
    before, batches_before = worker_windows(server), counter(server, BATCHES)
    response = httpx.post(f"{server.url}/v1/analyze/batch", json=body, headers=headers, timeout=120)
    assert response.status_code == 200, response.text
    assert all(item["result"] is not None for item in response.json()["results"])
    assert_fair(ran_since(server, before), recordings)
    # Fewer forward passes than windows: the calls each worker received were batched together.
    assert counter(server, BATCHES) - batches_before < recordings


def run_load(
    server: Server, headers: dict[str, str], *, threads: int, first_seed: int, stop: threading.Event
) -> list[int]:
    statuses: list[int] = []

    def client(index: int) -> None:
        seed = first_seed + 10_000 * index
        while not stop.is_set():
            seed += 1
            statuses.append(analyze(server, headers, seed).status_code)

    workers = [threading.Thread(target=client, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    stop.wait()
    for worker in workers:
        worker.join()
    return statuses


def test_killing_a_model_worker_under_load_fails_no_request(server: Server, headers: dict[str, str]) -> None:
    # Calls in turn reach the killed worker: those in flight and the next one sent to its socket fail in
    # transport and are retried once with the other worker, which takes every call until the killed one
    # is back.
    victim = server.worker_pids("pat_model")[0]
    retries_before = counter(server, RETRIES)
    stop = threading.Event()
    statuses: list[int] = []
    loader = threading.Thread(
        target=lambda: statuses.extend(run_load(server, headers, threads=4, first_seed=90_000, stop=stop))
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
    assert counter(server, RETRIES) > retries_before

    # The restarted worker takes its turn again once it serves its socket.
    both_workers_take_calls(server, headers, first_seed=95_000)
    assert victim not in server.worker_pids("pat_model")


def test_sigterm_drains_through_the_worker_sockets(server: Server, headers: dict[str, str]) -> None:
    """Last in this module: it stops the server."""
    body = {
        "recordings": [recording(40_000 + i, gap=None) for i in range(24)],
        "options": {"outputs": ["pat"]},
    }
    drained = sigterm_during_batch(server, body, headers, grace_s=GRACE_S)
    assert drained.finished_after_sigterm, "the request finished before SIGTERM; nothing was drained"
    assert drained.response.status_code == 200, drained.response.text
    assert all(item["result"] is not None for item in drained.response.json()["results"])
    assert drained.exit_code == 0
