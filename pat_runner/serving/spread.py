"""Model calls spread over the model service's workers in turn (round robin), within one `bentoml serve`.

BentoML starts the model service's N workers on one shared Unix socket, and the API service's client keeps
its connections to it alive. Which worker accepts a connection is the kernel's choice, and it tends to be
the same one: measured, 60 of 60 sequential calls ran on one of two workers (bentoml#5426 reports the
same for API workers). So, when the model service is a local dependency on a Unix socket with more than
one worker (`PAT_RUNNER_WORKERS` > 1 under `bentoml serve`):

- model side, `WorkerSocketMiddleware` (an ASGI middleware of `PATModel`): once the worker's app has
  started, the worker also serves it on a Unix socket of its own, `<service>-<worker index>.sock` next to
  the shared socket, in the directory BentoML creates (mode 0700) and removes after the workers have
  exited (`lifecycle.keep_sockets_until_stopped`). It closes that listener before the app shuts down;
  until then the draining API workers can still reach it.
- API side, `ModelRoutes`: one client per worker socket, used in turn, so every worker gets its share of
  the calls whatever the kernel does. A call that fails in transport (its worker died or is restarting)
  sets that worker aside for `COOLDOWN_S`, and its one retry (`backpressure.call_model_service`) takes
  the next worker in turn; the shared socket, which whichever worker is alive accepts, when every
  worker is set aside.

A worker keeps an idle connection longer than the API's client does (`http.KEEP_ALIVE_S`), so only the
client closes idle connections: no call is written onto a connection the worker is closing. (On the
shared socket BentoML's uvicorn closes after 5 s, since `bentoml serve --timeout-keep-alive` reaches the
API service only, and the client keeps 15 s; a call that loses that race fails in transport and is
retried.)

Otherwise (one worker, `BENTOML_NO_UDS`, the model service reached by URL as in `deploy/k8s`) there are no
worker sockets and every call takes BentoML's own client, as before.

Nothing of BentoML is patched. Internals used, checked against BentoML 1.4.40 and uvicorn 0.55
(`tests/test_spread.py` fails when they change shape): the dependency's address in
`BentoMLContainer.remote_runner_mapping` (a `file://` URI, from `_bentoml_impl.server.serving.
_get_server_socket`, for a Unix socket), BentoML's `path_to_uri`/`uri_to_path`, and
`_bentoml_impl.client.RemoteProxy`, the client `bentoml.depends` builds, with its session settings
(`runner_connection`, aiohttp's 15-s keep-alive). From uvicorn, `Server._serve`, which `Server.serve`
runs inside its own signal handling: the worker's signals stay BentoML's and `lifecycle.drain_after`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import bentoml
import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pat_runner.serving.http import KEEP_ALIVE_S

logger = logging.getLogger(__name__)

# How long a worker whose call failed in transport gets no calls: long enough that a dead worker costs one
# retried call per period, short enough that a restarted one is back in turn within seconds.
COOLDOWN_S = 5.0
BACKLOG = 2048


class Client(Protocol):
    async def close(self) -> None: ...


M = TypeVar("M", bound=Client)


def runner_map() -> Mapping[str, str]:
    """Where this process reaches each dependency (BentoML's `BENTOML_RUNNER_MAP`, parsed)."""
    from bentoml._internal.configuration.containers import BentoMLContainer

    return BentoMLContainer.remote_runner_mapping.get()


def worker_socket_paths(service_name: str, workers: int, addresses: Mapping[str, str]) -> list[str]:
    """The worker sockets of `service_name`, the first for worker index 1; none unless it runs more than
    one worker behind a local Unix socket."""
    address = addresses.get(service_name, "")
    if workers < 2 or not address.startswith("file://"):
        return []
    from bentoml._internal.utils.uri import uri_to_path

    directory = Path(uri_to_path(address)).parent
    return [str(directory / f"{service_name}-{index}.sock") for index in range(1, workers + 1)]


class ModelRoutes(Generic[M]):
    """API side: which client the next model call takes. The worker clients in turn, skipping a worker
    for `cooldown_s` after a transport failure; the shared client when there are none or all are set
    aside. One event loop per API worker: no lock between await points."""

    def __init__(
        self,
        shared: M,
        workers: Sequence[M] = (),
        *,
        cooldown_s: float = COOLDOWN_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.shared = shared
        self.workers = list(workers)
        self.cooldown_s = cooldown_s
        self.clock = clock
        self._next = 0
        self._set_aside_until = [0.0] * len(self.workers)

    def pick(self) -> tuple[int | None, M]:
        """(worker index or None for the shared client, client) of the next call."""
        now = self.clock()
        for _ in self.workers:
            index = self._next
            self._next = (index + 1) % len(self.workers)
            if self._set_aside_until[index] <= now:
                return index, self.workers[index]
        return None, self.shared

    def failed(self, index: int | None) -> None:
        """The call sent by `pick()` to worker `index` failed in transport."""
        if index is not None:
            self._set_aside_until[index] = self.clock() + self.cooldown_s

    async def close(self) -> None:
        await asyncio.gather(*(client.close() for client in self.workers))


async def open_routes(shared: Any, service: Any, workers: int) -> ModelRoutes[Any]:
    """`ModelRoutes` of the API service: `shared` is BentoML's client to `service`; one client like it per
    worker socket, with the same media type, timeout and connection settings."""
    from _bentoml_impl.client import RemoteProxy
    from bentoml._internal.utils.uri import path_to_uri

    clients = [
        RemoteProxy(path_to_uri(path), service=service, media_type=shared.to_async.media_type)
        for path in worker_socket_paths(service.name, workers, runner_map())
    ]
    for client in clients:
        await client.__aenter__()
    if clients:
        logger.info("model calls go to the %d %s workers in turn", len(clients), service.name)
    return ModelRoutes(shared, clients)


def bind_unix_socket(path: str) -> socket.socket:
    """A listening socket at `path`, replacing the file a dead predecessor left."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


class WorkerListener:
    """The app served on one more socket by a uvicorn server in this worker's event loop; without a
    lifespan of its own (the app has one, run by BentoML's server) and without signal handling."""

    def __init__(self, app: ASGIApp, path: str, grace_s: float) -> None:
        self.path = path
        self.sock = bind_unix_socket(path)
        # uvicorn closes the socket when it stops; the inode tells whether the file is still ours.
        self.inode = os.stat(path).st_ino
        config = uvicorn.Config(
            app,
            lifespan="off",
            log_config=None,
            server_header=False,
            backlog=BACKLOG,
            timeout_keep_alive=KEEP_ALIVE_S,
            timeout_graceful_shutdown=math.ceil(grace_s),
        )
        self.server = uvicorn.Server(config)
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.task = asyncio.create_task(self.server._serve(sockets=[self.sock]))
        while not self.server.started and not self.task.done():
            await asyncio.sleep(0.01)
        if self.task.done():
            self.sock.close()
            self.task.result()

    async def stop(self) -> None:
        """Stop accepting, let the calls in progress finish (uvicorn's graceful shutdown), remove the file."""
        self.server.should_exit = True
        if self.task is not None:
            await self.task
        with contextlib.suppress(OSError):
            if os.stat(self.path).st_ino == self.inode:
                os.unlink(self.path)


class WorkerSocketMiddleware:
    """Model side: serve the app on this worker's own socket between the app's start-up and shutdown
    (a no-op where `worker_socket_paths` has none)."""

    def __init__(self, app: ASGIApp, *, service_name: str, workers: int, grace_s: float) -> None:
        self.app = app
        self.service_name = service_name
        self.workers = workers
        self.grace_s = grace_s
        self.listener: WorkerListener | None = None

    def own_path(self) -> str | None:
        paths = worker_socket_paths(self.service_name, self.workers, runner_map())
        index = bentoml.server_context.worker_index
        return paths[index - 1] if index is not None and 1 <= index <= len(paths) else None

    async def start_listener(self, app: ASGIApp) -> None:
        path = self.own_path()
        if path is None:
            return
        try:
            listener = WorkerListener(app, path, self.grace_s)
            await listener.start()
        except Exception as exc:
            # The worker still serves the shared socket; the API's calls in turn to this one cannot
            # connect and are retried with the next worker.
            logger.error("model worker socket %s not served: %s: %s", path, type(exc).__name__, exc)
            return
        self.listener = listener

    async def stop_listener(self) -> None:
        if self.listener is not None:
            listener, self.listener = self.listener, None
            await listener.stop()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def receive_then_stop() -> Message:
            message = await receive()
            if message["type"] == "lifespan.shutdown":
                await self.stop_listener()
            return message

        async def start_then_send(message: Message) -> None:
            if message["type"] == "lifespan.startup.complete":
                # Starlette puts itself in the scope: the whole app, BentoML's middlewares included.
                await self.start_listener(scope["app"])
            await send(message)

        await self.app(scope, receive_then_stop, start_then_send)
