"""The container check's HTTP half: wait for the served image's `/readyz`, send one `/v1/analyze` and
require the result to equal the same analysis run in-process (same demo PAT from BENTOML_HOME, same
`pat_runner` code, same request id) — everything but the per-request `cache` outcome and the FHIR
Bundle's `timestamp`.

    python scripts/container_smoke.py --url http://127.0.0.1:3000 --started <epoch s> --facts facts.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pat_runner.cache.cache import ResultCache  # noqa: E402
from pat_runner.model import WEEK_MINUTES  # noqa: E402
from pat_runner.model.backends import TorchBackend  # noqa: E402
from pat_runner.model.store import load_stored_pat, read_model_info, read_stored_scaler  # noqa: E402
from pat_runner.serving.pipeline import Analyzer, to_raw  # noqa: E402
from pat_runner.serving.runner import local_infer  # noqa: E402
from pat_runner.serving.schemas import AnalyzeOptions, Recording  # noqa: E402
from pat_runner.settings import Settings  # noqa: E402

REQUEST_ID = "container-check-0001"
VOLATILE = {("cache",), ("fhir", "timestamp")}
# FHIR resource ids are random per Bundle (never derived from request ids): compared as placeholders.
RESOURCE_ID = re.compile(r"urn:uuid:[0-9a-f-]{36}")


def week_recording(seed: int = 13) -> dict[str, Any]:
    """Eight days of plausible minute counts (rest at night, gamma-distributed activity by day)."""
    rng = np.random.default_rng(seed)
    minutes = WEEK_MINUTES + 1_440
    hour = (np.arange(minutes) / 60.0) % 24
    counts = np.where((hour >= 7) & (hour < 23), rng.gamma(1.5, 250.0, minutes), rng.poisson(3.0, minutes))
    start = datetime(2024, 3, 4, tzinfo=UTC) - timedelta(hours=5)
    return {
        "start": start.isoformat(),
        "timezone": "America/New_York",
        "epoch_seconds": 60,
        "values": [float(v) for v in np.round(counts)],
        "unit": "counts",
        "subject": "Patient/container-check",
    }


def running(container: str) -> bool:
    state = subprocess.run(
        ["podman", "container", "inspect", "--format", "{{.State.Running}}", container],
        capture_output=True,
        text=True,
    )
    return state.stdout.strip() == "true"


def wait_ready(url: str, started: float, timeout_s: float, container: str | None) -> float:
    """Seconds from `started` (container start) until `/readyz` answers 200."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if container and not running(container):
            raise SystemExit(f"container {container} exited before /readyz answered")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return time.time() - started
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    raise SystemExit(f"/readyz did not answer 200 within {timeout_s:.0f} s")


def in_process(body: dict[str, Any], tag: str) -> dict[str, Any]:
    settings = Settings().replace(redis_url="", cache_keys="", cache_hmac_key="")
    # The container serves with PAT_BACKEND=torch (container_check.sh): the fp32 reference path here too.
    backend = TorchBackend(load_stored_pat(tag).model, "cpu")

    analyzer = Analyzer(
        model=read_model_info(tag),
        scaler=read_stored_scaler(tag),
        infer=local_infer(backend),
        cache=ResultCache.from_settings(settings),
        settings=settings,
    )
    recording = Recording.model_validate_json(json.dumps(body))
    analysis = asyncio.run(analyzer.analyze(to_raw(recording), AnalyzeOptions(), request_id=REQUEST_ID))
    return analysis.response.model_dump(mode="json")


def without_volatile(document: dict[str, Any]) -> dict[str, Any]:
    out = json.loads(RESOURCE_ID.sub("urn:uuid:*", json.dumps(document)))
    for path in VOLATILE:
        node = out
        for key in path[:-1]:
            node = node.get(key) or {}
        node.pop(path[-1], None)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--started", type=float, required=True, help="container start, epoch seconds")
    parser.add_argument("--facts", required=True, help="JSON file the measured figures are written to")
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--container", help="podman container to watch: stop waiting once it exits")
    parser.add_argument("--extra", action="append", default=[], help="KEY=VALUE added to the facts")
    args = parser.parse_args(argv)

    cold_start = wait_ready(args.url, args.started, args.timeout, args.container)
    body = week_recording()
    response = httpx.post(
        f"{args.url}/v1/analyze",
        json={"recording": body},
        headers={"X-Request-ID": REQUEST_ID},
        timeout=120,
    )
    if response.status_code != 200:
        raise SystemExit(f"/v1/analyze answered {response.status_code}: {response.text[:500]}")
    served = response.json()
    local = in_process(body, served["model"]["tag"])
    if without_volatile(served) != without_volatile(local):
        diff = {
            key: (served.get(key), local.get(key))
            for key in set(served) | set(local)
            if without_volatile(served).get(key) != without_volatile(local).get(key)
        }
        raise SystemExit(f"container result differs from the in-process result in {sorted(diff)}")
    facts = {
        "cold_start_to_readyz_s": round(cold_start, 1),
        "analyze_status": response.status_code,
        "model_tag": served["model"]["tag"],
        "equal_to_in_process": True,
        **dict(item.split("=", 1) for item in args.extra),
    }
    Path(args.facts).write_text(json.dumps(facts, indent=2) + "\n")
    print(f"/readyz 200 after {cold_start:.1f} s; /v1/analyze equals the in-process result")
    return 0


if __name__ == "__main__":
    sys.exit(main())
