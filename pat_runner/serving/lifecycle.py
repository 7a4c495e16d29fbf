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
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
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
