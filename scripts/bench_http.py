"""Serving benchmark through HTTP, next to in-process encode throughput from the same run.

For each model and backend (`PAT_BACKEND`): cold start of `bentoml serve` (process start → /readyz
200), single-request latency of `/v1/embed` (p50/p95, one week), throughput and p50/p95/p99 latency
at each concurrency with distinct weeks, in JSON `values` and in compact `values_b64` form, next to
the same backend's in-process weeks/s, and the cache-miss vs cache-hit latency of `/v1/analyze`
(metrics + PAT). Auth is disabled (loopback server); the cache is the in-process one unless
PAT_REDIS_URL is set.

    .venv/bin/python scripts/bench_http.py                       # demo PAT-S + PAT-M fixture if present
    .venv/bin/python scripts/bench_http.py --h5 models/PAT-M_29k_weights.h5 --concurrency 1 4 16 64 \
        --backends torch onnxruntime
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pat_runner.actigraphy.synthetic import week_recording  # noqa: E402
from pat_runner.serving.compact import encode_values  # noqa: E402
from scripts.local_server import cache_key_env, start_server, stop_server  # noqa: E402

FIXTURE_M = ROOT.parent / "shared" / "fixtures" / "pat_reference" / "PAT-M_random_seed0.h5"


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def import_model(home: Path, h5: Path | None) -> str:
    code = (
        "from pat_runner.model.store import ensure_demo_model, import_h5; import sys; "
        "m = import_h5(sys.argv[1]) if sys.argv[1] else ensure_demo_model(); print(m.tag)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(h5 or "")],
        env={**os.environ, "BENTOML_HOME": str(home)},
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return out.stdout.strip().splitlines()[-1]


def in_process_weeks_per_s(home: Path, tag: str, seconds: float, backend: str) -> tuple[str, float]:
    """(backend served, weeks/s at batch 1) in a fresh process, chosen as the model service chooses."""
    code = (
        "import sys, tempfile, torch; from pathlib import Path; "
        "from pat_runner.model.store import load_stored_pat; "
        "from pat_runner.model.backends import select_backend, weeks_per_second; "
        "m = load_stored_pat(sys.argv[1]).model; "
        "b, c = select_backend(m, sys.argv[3], 'cpu', cache_dir=Path(tempfile.gettempdir()) / "
        "'pat-bench-onnx', threads=torch.get_num_threads(), bench_seconds=1.0); "
        "x = torch.randn(1, 10080).numpy(); "
        "print(c.backend, weeks_per_second(b.run, x, budget_s=float(sys.argv[2])))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, tag, str(seconds), backend],
        env={**os.environ, "BENTOML_HOME": str(home)},
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    name, rate = out.stdout.strip().splitlines()[-1].split()
    return name, float(rate)


def compact_body(body: dict) -> dict:
    values = np.array([np.nan if v is None else v for v in body["recording"]["values"]])
    rest = {k: v for k, v in body["recording"].items() if k != "values"}
    return {**body, "recording": {**rest, "values_b64": encode_values(values)}}


def load(client: httpx.Client, bodies: list[dict], concurrency: int) -> dict[str, float]:
    """Throughput (weeks/s) and latency percentiles of `/v1/embed` for `bodies` at `concurrency`."""
    latencies: list[float] = []

    def call(body: dict) -> None:
        t = time.perf_counter()
        client.post("/v1/embed", json=body).raise_for_status()
        latencies.append(time.perf_counter() - t)

    t = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(call, bodies))
    return {
        "weeks_per_s": len(bodies) / (time.perf_counter() - t),
        "p50_ms": 1000 * percentile(latencies, 50),
        "p95_ms": 1000 * percentile(latencies, 95),
        "p99_ms": 1000 * percentile(latencies, 99),
    }


def bench_model(h5: Path | None, backend: str, args: argparse.Namespace) -> dict[str, Any]:
    home = Path(tempfile.mkdtemp(prefix="pat-bench-"))
    tag = import_model(home, h5)
    served_backend, encode_rate = in_process_weeks_per_s(home, tag, args.seconds, backend)
    started = time.perf_counter()
    server = start_server(
        home=home,
        log_path=Path(tempfile.mkdtemp(prefix="pat-bench-logs-")) / "server.log",
        extra_env={
            "PAT_AUTH": "disabled",
            "PAT_MODEL_TAG": tag,
            "PAT_LOG_LEVEL": "WARNING",
            "PAT_RUNNER_WORKERS": str(args.runner_workers),
            "PAT_API_WORKERS": str(args.api_workers),
            "PAT_MAX_BATCH_SIZE": str(args.max_batch_size),
            "PAT_BACKEND": backend,
            **cache_key_env(),
        },
        # `auto` benchmarks every backend before the model service is ready.
        timeout_s=600,
    )
    cold_start = time.perf_counter() - started
    try:
        client = httpx.Client(base_url=server.url, timeout=300)
        bodies = [{"recording": week_recording(1000 + i)} for i in range(args.requests)]
        client.post("/v1/embed", json=bodies[0]).raise_for_status()
        single = []
        for body in bodies[: args.single]:
            t = time.perf_counter()
            client.post("/v1/embed", json=body).raise_for_status()
            single.append(time.perf_counter() - t)

        http_backend = client.get("/v1/models").json()["models"][0]["backend"]
        loads = {}
        for concurrency in args.concurrency:
            loads[f"c{concurrency}"] = load(client, bodies, concurrency)
        loads[f"c{args.concurrency[-1]}_b64"] = load(
            client, [compact_body(b) for b in bodies], args.concurrency[-1]
        )

        miss, hit = [], []
        for i in range(args.single):
            body = {
                "recording": week_recording(5000 + i),
                "options": {"outputs": ["metrics", "pat"]},
            }
            for bucket in (miss, hit):
                t = time.perf_counter()
                response = client.post("/v1/analyze", json=body)
                response.raise_for_status()
                bucket.append(time.perf_counter() - t)
                assert response.json()["cache"] == ("miss" if bucket is miss else "hit")
    finally:
        stop_server(server)
    return {
        "model": tag,
        "backend": f"{backend}->{http_backend}",
        "in_process_backend": served_backend,
        "encode_weeks_per_s": encode_rate,
        "cold_start_s": cold_start,
        "single_p50_ms": 1000 * statistics.median(single),
        "single_p95_ms": 1000 * percentile(single, 95),
        **{f"{name}_{key}": value for name, figures in loads.items() for key, value in figures.items()},
        **{f"{name}_of_in_process": figures["weeks_per_s"] / encode_rate for name, figures in loads.items()},
        "miss_p50_ms": 1000 * statistics.median(miss),
        "miss_p95_ms": 1000 * percentile(miss, 95),
        "hit_p50_ms": 1000 * statistics.median(hit),
        "hit_p95_ms": 1000 * percentile(hit, 95),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--h5", type=Path, action="append", help="weights to benchmark (repeatable)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--backends", nargs="+", default=["auto"], help="PAT_BACKEND values to serve")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    parser.add_argument("--requests", type=int, default=128)
    parser.add_argument("--single", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=3.0, help="in-process encode timing")
    parser.add_argument("--runner-workers", type=int, default=1)
    parser.add_argument("--api-workers", type=int, default=1)
    parser.add_argument("--max-batch-size", type=int, default=8)
    args = parser.parse_args()
    models: list[Path | None] = (
        list(args.h5) if args.h5 else [None, *([FIXTURE_M] if FIXTURE_M.exists() else [])]
    )
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, concurrency {args.concurrency}")
    rows = [bench_model(h5, backend, args) for h5 in models for backend in args.backends]
    for row in rows:
        print()
        for key, value in row.items():
            print(f"{key:28} {value:.2f}" if isinstance(value, float) else f"{key:28} {value}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
