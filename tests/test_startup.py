"""Production start fails closed: `bentoml serve` exits non-zero, with a message saying why, before any
worker serves a request, whenever the authentication configuration is unsafe or incomplete."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pat_runner.serving.lifecycle import EXIT_STARTUP_FAILED
from scripts.local_server import BENTOML, ROOT, free_port

pytestmark = pytest.mark.integration

UNSAFE = {
    "no project id": ({"PAT_AUTH": "firebase"}, "project id"),
    "emulator without opt-in": (
        {
            "PAT_AUTH": "firebase",
            "GOOGLE_CLOUD_PROJECT": "demo-x",
            "FIREBASE_AUTH_EMULATOR_HOST": "127.0.0.1:9",
        },
        "FIREBASE_AUTH_EMULATOR_HOST",
    ),
    "auth disabled on a public interface": ({"PAT_AUTH": "disabled", "PAT_HOST": "0.0.0.0"}, "loopback"),
    "unknown auth mode": ({"PAT_AUTH": "none"}, "PAT_AUTH"),
}


@pytest.mark.parametrize("case", list(UNSAFE))
def test_unsafe_configuration_refuses_to_start(model_store: Path, case: str) -> None:
    extra, reason = UNSAFE[case]
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"GOOGLE_CLOUD_PROJECT", "PAT_FIREBASE_PROJECT_ID", "FIREBASE_AUTH_EMULATOR_HOST"}
    }
    env.update({"BENTOML_HOME": str(model_store), "BENTOML_DO_NOT_TRACK": "true", **extra})
    result = subprocess.run(
        [BENTOML, "serve", ".", "--host", "127.0.0.1", "--port", str(free_port())],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert reason in result.stderr + result.stdout


def _serve(model_store: Path, extra: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BENTOML_HOME": str(model_store), "BENTOML_DO_NOT_TRACK": "true", **extra}
    return subprocess.run(
        [BENTOML, "serve", ".", "--host", "127.0.0.1", "--port", str(free_port())],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_shared_cache_without_keys_refuses_to_start(model_store: Path) -> None:
    env = {"PAT_AUTH": "disabled", "PAT_REDIS_URL": "redis://127.0.0.1:6379/7"}
    env |= {"PAT_CACHE_KEYS": "", "PAT_CACHE_HMAC_KEY": ""}
    result = _serve(model_store, env)
    assert result.returncode != 0
    assert "PAT_CACHE_KEYS and PAT_CACHE_HMAC_KEY" in result.stderr + result.stdout


def test_worker_start_up_failure_stops_the_server(model_store: Path) -> None:
    """A failure only a worker can find (here: a CUDA device ordinal that does not exist, on a machine
    with or without a GPU) stops `bentoml serve` with EX_CONFIG instead of respawning the worker."""
    result = _serve(model_store, {"PAT_AUTH": "disabled", "PAT_DEVICE": "cuda:99"})
    output = result.stderr + result.stdout
    assert result.returncode == EXIT_STARTUP_FAILED
    assert output.count("model worker failed to start, stopping the server") == 1
    assert "PAT_DEVICE=cuda:99" in output or "invalid device ordinal" in output


def test_settle_heap_hides_the_start_up_heap_from_the_collector() -> None:
    # In a fresh interpreter: freezing is process-wide and would change this test session's collector.
    code = (
        "import gc, json, pat_runner.serving.pipeline; "
        "from pat_runner.serving.lifecycle import settle_heap; "
        "settle_heap(5000); "
        "print(json.dumps([gc.get_freeze_count(), len(gc.get_objects()), gc.get_threshold()]))"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    frozen, visible, threshold = json.loads(completed.stdout)
    assert frozen > 50_000 and visible < 1_000
    assert threshold[0] == 5000
