"""A short, bounded locust run (`loadtest/locustfile.py` through `scripts/loadtest.py`) against the
session's real server: zero unexpected errors, and a complete report. `make loadtest` runs the same test
longer (LOADTEST_SECONDS, LOADTEST_USERS, LOADTEST_RATE) and keeps the report in build/loadtest; with
LOADTEST_MODEL_H5 it serves those Keras weights (e.g. PAT-M) instead of the demo PAT-S."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from scripts.local_server import ROOT, Server, import_model, start_server, stop_server
from tests.server import session_server_env

pytestmark = pytest.mark.integration

# `make soak` runs the soak script (the load run plus its stability checks) through the same harness.
SCRIPT = "soak.py" if os.environ.get("LOADTEST_SOAK") else "loadtest.py"
UPLOAD = ROOT.parent / "shared" / "data" / "actigraphy" / "TAS1E25150490_2018-03-28_60sec.csv"


@pytest.fixture
def load_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The session's server, or with LOADTEST_MODEL_H5 one of its own serving those weights."""
    h5 = os.environ.get("LOADTEST_MODEL_H5")
    if not h5:
        yield request.getfixturevalue("pat_server")
        return
    home = tmp_path_factory.mktemp("loadtest-store")
    tag = import_model(home, Path(h5))
    server = start_server(
        home=home,
        log_path=tmp_path_factory.mktemp("loadtest-logs") / "server.log",
        extra_env={
            **session_server_env(request.getfixturevalue("firebase_emulator")),
            "PAT_MODEL_TAG": tag,
        },
        timeout_s=600,
    )
    yield server
    stop_server(server)


def test_short_load_run_has_no_unexpected_errors(load_server: Server, tokens, tmp_path: Path) -> None:
    out = Path(os.environ["LOADTEST_OUT"]) if os.environ.get("LOADTEST_OUT") else tmp_path
    seconds = os.environ.get("LOADTEST_SECONDS", "30")
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / SCRIPT),
            "--url",
            load_server.url,
            "--server-pid",
            str(load_server.process.pid),
            "--users",
            os.environ.get("LOADTEST_USERS", "4"),
            "--rate",
            os.environ.get("LOADTEST_RATE", "0.5"),
            "--run-time",
            seconds,
            "--out",
            str(out),
            "--upload-file",
            str(UPLOAD) if UPLOAD.exists() else "",
        ],
        env={**os.environ, "LOADTEST_TOKEN": tokens["service"], "LOADTEST_METRICS_TOKEN": tokens["admin"]},
        capture_output=True,
        text=True,
        timeout=int(seconds) + 240,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["failures"] == {}
    names = {row["name"] for row in report["endpoints"] if row["requests"] > 0}
    assert {"analyze (new week)", "analyze (repeat)", "analyze (too short, 422)"} <= names
    assert set(report["workers"]) == {"api", "model"}
    assert report["cache_lookups"].get("hit", 0) > 0
