"""pytest plugin: the session's real `bentoml serve` for the integration tests (the launcher is
`scripts/local_server.py`, shared with the HTTP benchmark).

`pat_server` (session-scoped) serves the demo PAT from a temporary model store, with Firebase auth
against the Auth Emulator, the real Redis for the cache and DEBUG logs captured to a file that the
log-scan test reads. Start-up is paid once per test run.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from scripts.local_server import Server, cache_key_env, prepare_store, start_server, stop_server

REDIS_TEST_DB = 7


@pytest.fixture(scope="session")
def model_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("bentoml-home")
    prepare_store(home)
    return home


def session_server_env(firebase_emulator) -> dict[str, str]:
    """The settings of the session's server: Firebase auth on the Auth Emulator, the real Redis, `auto`."""
    return {
        **firebase_emulator.env(),
        "PAT_AUTH": "firebase",
        "PAT_REDIS_URL": f"redis://127.0.0.1:6379/{REDIS_TEST_DB}",
        "PAT_MAX_BATCH_SIZE": "8",
        "PAT_MAX_LATENCY_MS": "20000",
        "PAT_BACKEND": "auto",
        "PAT_BACKEND_BENCH_SECONDS": "0.2",
        # The batching tests send 32 at once; the limit itself is tested on its own server.
        "PAT_MAX_CONCURRENCY": "64",
        **cache_key_env(),
    }


@pytest.fixture(scope="session")
def pat_server(
    model_store: Path, firebase_emulator, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    log_path = tmp_path_factory.mktemp("server-logs") / "server.log"
    env = session_server_env(firebase_emulator)
    server = start_server(home=model_store, log_path=log_path, extra_env=env)
    yield server
    stop_server(server)
