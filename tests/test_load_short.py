"""A short, bounded locust run (`loadtest/locustfile.py` through `scripts/loadtest.py`) against the
session's real server: zero unexpected errors, and a complete report. `make loadtest` runs the same test
longer (LOADTEST_SECONDS, LOADTEST_USERS, LOADTEST_RATE) and keeps the report in build/loadtest."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from scripts.local_server import ROOT

pytestmark = pytest.mark.integration

# `make soak` runs the soak script (the load run plus its stability checks) through the same harness.
SCRIPT = "soak.py" if os.environ.get("LOADTEST_SOAK") else "loadtest.py"
UPLOAD = ROOT.parent / "shared" / "data" / "actigraphy" / "TAS1E25150490_2018-03-28_60sec.csv"


def test_short_load_run_has_no_unexpected_errors(pat_server, tokens, tmp_path: Path) -> None:
    out = Path(os.environ["LOADTEST_OUT"]) if os.environ.get("LOADTEST_OUT") else tmp_path
    seconds = os.environ.get("LOADTEST_SECONDS", "30")
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / SCRIPT),
            "--url",
            pat_server.url,
            "--server-pid",
            str(pat_server.process.pid),
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
