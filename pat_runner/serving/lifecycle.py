"""Start-up failures stop the whole server with a non-zero exit instead of a restart loop.

`bentoml serve` is a circus arbiter that respawns a worker whose process ends, so a worker whose
`__init__` raises (a configuration error, a model that does not load) would otherwise be restarted
every second for ever, and the server would neither serve nor exit. Here:

- `check_startup_config(settings)` runs the configuration checks in the serving process itself, when
  `service.py` is imported, before any worker exists (`bentoml serve` then exits with the reason);
- `stop_server_on_failure()` wraps a worker's `__init__`: on any exception it logs the reason and
  sends `SIGUSR2` to the arbiter (the worker's parent);
- `install_fatal_exit()`, called when `service.py` is imported, makes the arbiter handle `SIGUSR2`
  (circus leaves it alone): stop all workers as for `SIGTERM`, then exit with `EXIT_STARTUP_FAILED`.

An orchestrator (Kubernetes) then restarts the pod with its back-off, and the pod's status shows
the failure, instead of a Running pod that never becomes ready.

Once a worker has started, `settle_heap()` sets the garbage collector up for serving (below).

Graceful shutdown: on SIGTERM circus signals every worker at once. The API workers drain their
in-flight requests (uvicorn's `--timeout-graceful-shutdown`), but those requests still call the model
service, which would already be gone. `drain_after(api_service, grace_s)` in the model worker holds
its SIGTERM until the API workers have exited (at most `PAT_SHUTDOWN_GRACE_S`), then shuts down as
uvicorn would have. For that the model service's Unix socket must outlive the stop signal: BentoML
1.4's arbiter deletes its socket directory when the stop *begins*; `keep_sockets_until_stopped()`
defers that clean-up until every worker has exited.
"""

from __future__ import annotations

import atexit
import gc
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

from pat_runner.cache.crypto import secrets_from_settings
from pat_runner.serving.auth import check_auth_config
from pat_runner.settings import Settings

logger = logging.getLogger(__name__)

# EX_CONFIG from sysexits.h: "configuration error".
EXIT_STARTUP_FAILED = 78
FATAL_SIGNAL = signal.SIGUSR2
# `bentoml serve` starts every worker as `python -m _bentoml_impl.worker.service`, a child of the arbiter.
BENTOML_WORKER_MODULE = "_bentoml_impl.worker.service"

_fatal = False


def check_startup_config(settings: Settings) -> None:
    """Every check that needs no model: authentication and the result cache's keys."""
    check_auth_config(settings)
    secrets_from_settings(settings, shared_cache=bool(settings.redis_url))


def settle_heap(gen0_threshold: int) -> None:
    """Freeze what start-up built and collect the young generation less often.

    Start-up leaves a worker with ~360,000 long-lived objects (BentoML, pydantic and `fhir.resources`
    schemas, torch); every full collection walked all of them, a pause of ~185 ms (EPYC VM) for every
    request in flight. Frozen, the collector no longer visits them. A request allocates thousands of
    short-lived containers (its parsed body, a cached result, the response): at CPython's threshold of
    700 the collector ran several times per request and traversed them while still alive, ~0.25 ms
    of a 1.8 ms cache hit; at 10,000 reference counting has freed most of them before it runs.
    Measured in docs/performance.md ("Service path").
    """
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(gen0_threshold, older, oldest)


def _on_fatal_signal(signum: int, frame: FrameType | None) -> None:
    global _fatal
    _fatal = True
    # SIGTERM goes through circus' own handler: a graceful stop of every watcher.
    os.kill(os.getpid(), signal.SIGTERM)


def _exit_if_fatal() -> None:
    if _fatal:
        logging.shutdown()
        sys.stderr.write("bentoml serve stopped: a worker failed to start (see the log above)\n")
        sys.stderr.flush()
        # The only way to set the exit status once the interpreter is exiting with 0.
        os._exit(EXIT_STARTUP_FAILED)


def in_bentoml_worker() -> bool:
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return spec is not None and spec.name == BENTOML_WORKER_MODULE


def install_fatal_exit() -> None:
    """In the process that imports the service; a no-op in BentoML's workers."""
    if in_bentoml_worker() or threading.current_thread() is not threading.main_thread():
        return
    signal.signal(FATAL_SIGNAL, _on_fatal_signal)
    atexit.register(_exit_if_fatal)
    keep_sockets_until_stopped()


def keep_sockets_until_stopped() -> None:
    """Run the BentoML arbiter's exit stack (which removes the workers' Unix-socket directory) after its
    event loop has ended, i.e. after every worker has exited, instead of when `stop()` is called."""
    from bentoml._internal.utils.circus import Arbiter
    from circus.arbiter import Arbiter as CircusArbiter

    if getattr(Arbiter, "_pat_sockets_kept", False):
        return
    start = Arbiter.start

    def start_then_clean_up(self: Arbiter, cb: Callable[[object], object] | None = None) -> None:
        try:
            start(self, cb)
        finally:
            self.exit_stack.__exit__(None, None, None)

    def stop_keeping_sockets(self: Arbiter) -> object:
        return CircusArbiter.stop(self)

    Arbiter.start = start_then_clean_up  # type: ignore[method-assign]
    Arbiter.stop = stop_keeping_sockets  # type: ignore[method-assign]
    Arbiter._pat_sockets_kept = True  # type: ignore[attr-defined]


@contextmanager
def stop_server_on_failure(service: str) -> Iterator[None]:
    """Wrap a worker's `__init__`: a failure stops the server rather than looping on restarts."""
    try:
        yield
    except Exception as exc:
        # Start-up errors name settings, not their values; the type and message are safe to log.
        logger.critical(
            "%s worker failed to start, stopping the server: %s: %s", service, type(exc).__name__, exc
        )
        if in_bentoml_worker():
            os.kill(os.getppid(), FATAL_SIGNAL)
        raise


def sibling_pids(service_name: str) -> list[int]:
    """Live workers of `service_name` started by the same arbiter as this process."""
    parent, pids = os.getppid(), []
    for proc in os.scandir("/proc"):
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            with open(f"/proc/{proc.name}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
            with open(f"/proc/{proc.name}/cmdline", "rb") as cmdline:
                args = cmdline.read().split(b"\0")
        except OSError:
            continue
        # fields[0] is the state (Z: exited, not yet reaped), fields[1] the parent pid.
        if int(fields[1]) == parent and fields[0] != b"Z" and service_name.encode() in args:
            pids.append(int(proc.name))
    return pids


def drain_after(service_name: str, grace_s: float) -> None:
    """Call in a worker's `__init__` (BentoML runs it on the main thread, after uvicorn has installed
    its signal handlers): SIGTERM takes effect once `service_name`'s workers are gone or `grace_s`
    has passed."""
    if not in_bentoml_worker() or threading.current_thread() is not threading.main_thread():
        return
    shutdown = signal.getsignal(signal.SIGTERM)
    if not callable(shutdown):
        return

    def wait_then_shut_down(signum: int) -> None:
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and sibling_pids(service_name):
            time.sleep(0.1)
        logger.info("shutting down after the %s workers", service_name)
        # uvicorn's handler only sets flags its main loop polls; safe from this thread.
        shutdown(signum, None)

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        threading.Thread(target=wait_then_shut_down, args=(signum,), daemon=True).start()

    signal.signal(signal.SIGTERM, on_sigterm)
