"""Model calls in turn over the model workers (`serving/spread.py`): the routing rule, each worker's own
listener, and the shape of the BentoML 1.4.40 and uvicorn internals it relies on; these tests fail when
an upgrade changes them. Over real HTTP with two workers: tests/test_model_workers.py."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path

import bentoml
import httpx
import numpy as np
import pytest
from bentoml._internal.configuration.containers import BentoMLContainer
from bentoml._internal.utils.uri import path_to_uri
from bentoml.exceptions import BentoMLException
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from pat_runner.model import WEEK_MINUTES
from pat_runner.serving.http import KEEP_ALIVE_S
from pat_runner.serving.runner import PATModel
from pat_runner.serving.spread import (
    ModelRoutes,
    WorkerListener,
    WorkerSocketMiddleware,
    open_routes,
    worker_socket_paths,
)
from tests.factories import NamedClient

SHARED, FIRST, SECOND = NamedClient("shared"), NamedClient("first"), NamedClient("second")


def names(routes: ModelRoutes[NamedClient], calls: int) -> list[str]:
    return [routes.pick()[1].name for _ in range(calls)]


@contextlib.contextmanager
def runner_map(addresses: Mapping[str, str]) -> Iterator[None]:
    """This process's dependency addresses, as `bentoml serve` sets them in each worker."""
    before = BentoMLContainer.remote_runner_mapping.get()
    BentoMLContainer.remote_runner_mapping.set(dict(addresses))
    try:
        yield
    finally:
        BentoMLContainer.remote_runner_mapping.set(before)


def ping_app(**middleware: object) -> Starlette:
    async def ping(request: Request) -> PlainTextResponse:
        return PlainTextResponse("pong")

    stack = [Middleware(WorkerSocketMiddleware, **middleware)] if middleware else []
    return Starlette(routes=[Route("/ping", ping)], middleware=stack)


async def ping_over(path: Path) -> str:
    transport = httpx.AsyncHTTPTransport(uds=str(path))
    async with httpx.AsyncClient(transport=transport, base_url="http://worker") as client:
        return (await client.get("/ping")).text


@contextlib.asynccontextmanager
async def started(app: Starlette) -> AsyncIterator[None]:
    """The app between its lifespan start-up and shutdown, as uvicorn drives it."""
    to_app: asyncio.Queue[dict[str, str]] = asyncio.Queue()
    from_app: asyncio.Queue[dict[str, str]] = asyncio.Queue()
    scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
    running = asyncio.create_task(app(scope, to_app.get, from_app.put))
    await to_app.put({"type": "lifespan.startup"})
    assert (await from_app.get())["type"] == "lifespan.startup.complete"
    try:
        yield
    finally:
        await to_app.put({"type": "lifespan.shutdown"})
        assert (await from_app.get())["type"] == "lifespan.shutdown.complete"
        await running


# --- the routing rule ----------------------------------------------------------------------------------


def test_calls_go_to_the_workers_in_turn() -> None:
    routes = ModelRoutes(SHARED, [FIRST, SECOND])
    assert [routes.pick() for _ in range(4)] == [(0, FIRST), (1, SECOND), (0, FIRST), (1, SECOND)]


def test_a_worker_whose_call_failed_is_set_aside_for_the_cooldown() -> None:
    now = [100.0]
    routes = ModelRoutes(SHARED, [FIRST, SECOND], cooldown_s=5.0, clock=lambda: now[0])
    index, client = routes.pick()
    assert client is FIRST
    routes.failed(index)
    assert names(routes, 3) == ["second"] * 3
    now[0] += 5.0
    assert sorted(names(routes, 2)) == ["first", "second"]


def test_the_shared_client_serves_when_every_worker_is_set_aside_or_there_are_none() -> None:
    routes = ModelRoutes(SHARED, [FIRST, SECOND], clock=lambda: 0.0)
    routes.failed(0)
    routes.failed(1)
    assert routes.pick() == (None, SHARED)
    routes.failed(None)
    assert ModelRoutes(SHARED).pick() == (None, SHARED)


def test_worker_sockets_only_for_several_workers_behind_a_local_unix_socket() -> None:
    shared = {"pat_model": "file:///tmp/bentoml-uds-x/140.sock"}
    assert worker_socket_paths("pat_model", 2, shared) == [
        "/tmp/bentoml-uds-x/pat_model-1.sock",
        "/tmp/bentoml-uds-x/pat_model-2.sock",
    ]
    assert worker_socket_paths("pat_model", 1, shared) == []
    assert worker_socket_paths("pat_model", 2, {"pat_model": "tcp://127.0.0.1:4000"}) == []
    assert worker_socket_paths("pat_model", 2, {"pat_model": "http://pat-model:3000"}) == []
    assert worker_socket_paths("pat_model", 2, {}) == []


# --- BentoML internals ----------------------------------------------------------------------------------


def test_bentoml_serves_a_local_dependency_on_a_unix_socket_in_its_own_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`bentoml serve` gives the model service the address this function returns, in the directory it
    removes at exit; the worker sockets sit next to it."""
    from _bentoml_impl.server.serving import _get_server_socket

    monkeypatch.delenv("BENTOML_NO_UDS", raising=False)
    with contextlib.ExitStack() as ports:
        uri, sock = _get_server_socket(PATModel, str(tmp_path), ports, 16)
    sock.close()
    assert uri.startswith("file://")
    paths = worker_socket_paths(PATModel.name, 2, {PATModel.name: uri})
    assert [Path(p).parent for p in paths] == [tmp_path, tmp_path]


async def test_a_worker_client_like_bentomls_fails_in_transport_where_nothing_listens(tmp_path: Path) -> None:
    """`open_routes` builds one client per worker socket as `bentoml.depends` builds the shared one; a call
    to a socket nobody serves (a dead worker) fails in transport, not with an answer, so it is retried."""
    from _bentoml_impl.client import RemoteProxy

    # What every BentoML worker does when it builds its app: the services' configuration, which the
    # clients read (timeout, runner_connection).
    PATModel.inject_config()
    shared = RemoteProxy(
        path_to_uri(str(tmp_path / "140.sock")), service=PATModel, media_type="application/vnd.bentoml+pickle"
    )
    with runner_map({PATModel.name: path_to_uri(str(tmp_path / "140.sock"))}):
        routes = await open_routes(shared, PATModel, 2)
    try:
        assert len(routes.workers) == 2 and routes.shared is shared
        _, worker = routes.pick()
        assert worker.to_async.media_type == "application/vnd.bentoml+pickle"
        # PATModel's runner_connection: no session recycling under load (bentoml#5540), as for `shared`.
        assert worker.to_async._session_manager.max_requests == shared.to_async._session_manager.max_requests
        assert worker.to_async._session_manager.max_requests >= 1_000_000_000
        # The client gives up idle connections before the worker would (no call on a closing connection).
        session = await worker.to_async._session_manager.get_session()
        assert session.connector is not None
        assert 2 * session.connector._keepalive_timeout < KEEP_ALIVE_S
        with pytest.raises(Exception) as failure:
            await worker.to_async.infer(np.zeros((1, WEEK_MINUTES), dtype=np.float32))
        assert not isinstance(failure.value, BentoMLException)
    finally:
        await routes.close()
        await shared.close()


# --- the worker's own listener -------------------------------------------------------------------------


async def test_the_listener_serves_the_app_leaves_the_signals_alone_and_removes_its_file(
    tmp_path: Path,
) -> None:
    path = tmp_path / "pat_model-1.sock"
    path.touch()  # a file left by a dead predecessor
    sigterm = signal.getsignal(signal.SIGTERM)
    listener = WorkerListener(ping_app(), str(path), grace_s=1.0)
    await listener.start()
    try:
        assert await ping_over(path) == "pong"
        assert signal.getsignal(signal.SIGTERM) is sigterm
    finally:
        await listener.stop()
    assert not path.exists()
    assert signal.getsignal(signal.SIGTERM) is sigterm


async def test_a_model_worker_serves_its_own_socket_from_start_up_to_shutdown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bentoml.server_context, "worker_index", 2)
    app = ping_app(service_name="pat_model", workers=2, grace_s=1.0)
    own = tmp_path / "pat_model-2.sock"
    with runner_map({"pat_model": path_to_uri(str(tmp_path / "140.sock"))}):
        async with started(app):
            assert await ping_over(own) == "pong"
            assert sorted(path.name for path in tmp_path.iterdir()) == [own.name]
    assert not own.exists()


async def test_one_model_worker_serves_only_the_shared_socket(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bentoml.server_context, "worker_index", 1)
    app = ping_app(service_name="pat_model", workers=1, grace_s=1.0)
    with runner_map({"pat_model": path_to_uri(str(tmp_path / "140.sock"))}):
        async with started(app):
            assert list(tmp_path.iterdir()) == []
