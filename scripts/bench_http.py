"""Serving benchmark through HTTP, next to in-process encode throughput from the same run.

For each model and backend (`PAT_BACKEND`): cold start of `bentoml serve` (process start → /readyz
200), single-request latency of `/v1/embed` (p50/p95, one week), throughput and p50/p95/p99 latency
at each concurrency with distinct weeks, in JSON `values` and in compact `values_b64` form, next to
the same backend's in-process weeks/s (batch 1; the mean of one measurement before the server starts
and one after it stops, both reported, since a shared VM's speed drifts), and `/v1/analyze` with the
default outputs (metrics, PAT, FHIR): cache-miss and cache-hit latency, cache-hit throughput at the
highest concurrency, and BentoML's floor for the same body (`POST /v1/bench/floor`, served with
`PAT_BENCH_FLOOR=true`: the same middlewares, parsing and validation, no analysis); hits and the floor
are timed in alternating pairs (`--hit-pairs`), and the difference is reported both as the difference
of the medians and as the median of the pairs' differences. Every load also
reports the CPU time per answered request of the API workers, the model workers and this load
generator, which share the machine's cores. Auth is disabled (loopback server); the cache is the
in-process one unless PAT_REDIS_URL is set; the server logs at INFO as in production (`--log-level`;
earlier figures in docs/performance.md were taken at WARNING, without the audit records).

Request bodies are serialised once, before timing: the load generator shares the machine's cores with
the server, and encoding 10,080 numbers per request in it would be counted against the service.

    .venv/bin/python scripts/bench_http.py                       # demo PAT-S + PAT-M fixture if present
    .venv/bin/python scripts/bench_http.py --h5 models/PAT-M_29k_weights.h5 --concurrency 1 4 16 64 \
        --backends torch onnxruntime
"""

from __future__ import annotations

import argparse
import json
import os
import resource
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
from scripts.local_server import (  # noqa: E402
    cache_key_env,
    cpu_seconds,
    import_model,
    start_server,
    stop_server,
)

JSON = {"Content-Type": "application/json"}
FIXTURE_M = ROOT.parent / "shared" / "fixtures" / "pat_reference" / "PAT-M_random_seed0.h5"


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def in_process_weeks_per_s(home: Path, tag: str, seconds: float, backend: str) -> tuple[str, float]:
    """(backend served, weeks/s at batch 1) in a fresh process, chosen as the model service chooses."""
    code = (
        "import sys, tempfile, torch; from pathlib import Path; "
        "from pat_runner.model.store import load_stored_pat; "
        "from pat_runner.model.backends import select_backend, weeks_per_second; "
        "from pat_runner.model.malloc import retain_freed_memory; "
        "from pat_runner.settings import Settings; "
        "retain_freed_memory(Settings().malloc_trim_threshold_mb); "
        "m = load_stored_pat(sys.argv[1]).model; "
        "b, c = select_backend(m, sys.argv[3], 'cpu', cache_dir=Path(tempfile.gettempdir()) / "
        "'pat-bench-onnx', threads=torch.get_num_threads(), bench_seconds=1.0, "
        "spin_wait=Settings().ort_spin_wait); "
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


def encoded(bodies: list[dict]) -> list[bytes]:
    return [json.dumps(body).encode() for body in bodies]


def post(client: httpx.Client, path: str, body: bytes) -> httpx.Response:
    response = client.post(path, content=body, headers=JSON)
    if response.is_error:
        raise RuntimeError(f"{path}: {response.status_code} {response.text[:300]}")
    return response


def timed(client: httpx.Client, path: str, bodies: list[bytes]) -> list[float]:
    """Seconds per request of `bodies` sent one after another."""
    latencies = []
    for body in bodies:
        started = time.perf_counter()
        post(client, path, body)
        latencies.append(time.perf_counter() - started)
    return latencies


def timed_pairs(
    client: httpx.Client, paths: tuple[str, str], bodies: list[bytes], pairs: int
) -> tuple[list[float], list[float]]:
    """Seconds per request of the two paths, sent as `pairs` back-to-back pairs of the same body, the
    order alternating: a shared VM's speed drifts within seconds, and both paths see the same drift."""
    first: list[float] = []
    second: list[float] = []
    for index in range(pairs):
        body = bodies[index % len(bodies)]
        order = ((paths[0], first), (paths[1], second))
        for path, latencies in order if index % 2 == 0 else order[::-1]:
            started = time.perf_counter()
            post(client, path, body)
            latencies.append(time.perf_counter() - started)
    return first, second


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def load(
    client: httpx.Client, path: str, bodies: list[bytes], concurrency: int, workers: dict[str, list[int]]
) -> dict[str, float]:
    """Throughput (answered requests/s, one week each), latency percentiles and refusals (429/503 under
    load: backpressure, not failures) of `bodies` at `concurrency`, and the CPU time per answered request
    of the API workers, the model workers and this load generator (all share the machine's cores)."""
    latencies: list[float] = []
    refused: list[int] = []

    def call(body: bytes) -> None:
        started = time.perf_counter()
        response = client.post(path, content=body, headers=JSON)
        if response.status_code in (429, 503):
            refused.append(response.status_code)
            return
        if response.is_error:
            raise RuntimeError(f"{path}: {response.status_code} {response.text[:300]}")
        latencies.append(time.perf_counter() - started)

    cpu_before = {name: sum(cpu_seconds(pid) for pid in pids) for name, pids in workers.items()}
    own_before = own_cpu_seconds()
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(call, bodies))
    elapsed = time.perf_counter() - started
    answered = max(1, len(latencies))
    cpu_ms = {
        f"{name}_cpu_ms": 1000 * (sum(cpu_seconds(pid) for pid in pids) - cpu_before[name]) / answered
        for name, pids in workers.items()
    }
    return {
        "weeks_per_s": len(latencies) / elapsed,
        "p50_ms": 1000 * percentile(latencies, 50),
        "p95_ms": 1000 * percentile(latencies, 95),
        "p99_ms": 1000 * percentile(latencies, 99),
        "refused": len(refused),
        **cpu_ms,
        "client_cpu_ms": 1000 * (own_cpu_seconds() - own_before) / answered,
    }


def bench_model(h5: Path | None, backend: str, args: argparse.Namespace) -> dict[str, Any]:
    home = Path(tempfile.mkdtemp(prefix="pat-bench-"))
    tag = import_model(home, h5)
    served_backend, encode_before = in_process_weeks_per_s(home, tag, args.seconds, backend)
    started = time.perf_counter()
    top = max(args.concurrency)
    server = start_server(
        home=home,
        log_path=Path(tempfile.mkdtemp(prefix="pat-bench-logs-")) / "server.log",
        extra_env={
            "PAT_AUTH": "disabled",
            "PAT_MODEL_TAG": tag,
            "PAT_LOG_LEVEL": args.log_level,
            "PAT_RUNNER_WORKERS": str(args.runner_workers),
            "PAT_API_WORKERS": str(args.api_workers),
            "PAT_MAX_BATCH_SIZE": str(args.max_batch_size),
            "PAT_BACKEND": backend,
            "PAT_BENCH_FLOOR": "true",
            # The benchmark measures throughput at each concurrency, not the 429s past the limit.
            "PAT_MAX_CONCURRENCY": str(max(top, 16)),
            **cache_key_env(),
        },
        # `auto` benchmarks every backend before the model service is ready.
        timeout_s=600,
    )
    cold_start = time.perf_counter() - started
    try:
        client = httpx.Client(base_url=server.url, timeout=300)
        weeks = [{"recording": week_recording(1000 + i)} for i in range(args.requests)]
        bodies = encoded(weeks)
        post(client, "/v1/embed", bodies[0])
        single = timed(client, "/v1/embed", bodies[: args.single])

        http_backend = client.get("/v1/models").json()["models"][0]["backend"]
        workers = {"api": server.worker_pids("pat_service"), "model": server.worker_pids("pat_model")}
        loads = {f"c{c}": load(client, "/v1/embed", bodies, c, workers) for c in args.concurrency}
        loads[f"c{top}_b64"] = load(
            client, "/v1/embed", encoded([compact_body(w) for w in weeks]), top, workers
        )

        # /v1/analyze with the default outputs: a few weeks one after another (misses, then hits), the
        # rest at the top concurrency (misses: capacity without cache hits), then all of them again at
        # the top concurrency (hits); the floor is the same bodies, not analysed.
        analyses = encoded([{"recording": week_recording(5000 + i)} for i in range(args.requests)])
        miss = timed(client, "/v1/analyze", analyses[: args.single])
        assert post(client, "/v1/analyze", analyses[0]).json()["cache"] == "hit"
        hit, floor = timed_pairs(
            client, ("/v1/analyze", "/v1/bench/floor"), analyses[: args.single], args.hit_pairs
        )
        misses = load(client, "/v1/analyze", analyses[args.single :], top, workers)
        hits = load(client, "/v1/analyze", analyses, top, workers)
        floors = load(client, "/v1/bench/floor", analyses, top, workers)
    finally:
        stop_server(server)
    # Measured again once the server has stopped: on a shared VM the machine's speed drifts during the
    # minutes of HTTP loads, and the ratios below divide by the mean of both ends.
    _, encode_after = in_process_weeks_per_s(home, tag, args.seconds, served_backend)
    encode_rate = (encode_before + encode_after) / 2
    return {
        "model": tag,
        "backend": f"{backend}->{http_backend}",
        "in_process_backend": served_backend,
        "runner_workers": args.runner_workers,
        "encode_weeks_per_s": encode_rate,
        "encode_weeks_per_s_before": encode_before,
        "encode_weeks_per_s_after": encode_after,
        "cold_start_s": cold_start,
        "single_p50_ms": 1000 * statistics.median(single),
        "single_p95_ms": 1000 * percentile(single, 95),
        **{f"{name}_{key}": value for name, figures in loads.items() for key, value in figures.items()},
        **{f"{name}_of_in_process": figures["weeks_per_s"] / encode_rate for name, figures in loads.items()},
        "analyze_miss_p50_ms": 1000 * statistics.median(miss),
        "analyze_miss_p95_ms": 1000 * percentile(miss, 95),
        "analyze_hit_p50_ms": 1000 * statistics.median(hit),
        "analyze_hit_p95_ms": 1000 * percentile(hit, 95),
        "floor_p50_ms": 1000 * statistics.median(floor),
        "floor_p95_ms": 1000 * percentile(floor, 95),
        "hit_minus_floor_p50_ms": 1000 * (statistics.median(hit) - statistics.median(floor)),
        "hit_minus_floor_paired_p50_ms": 1000
        * statistics.median(h - f for h, f in zip(hit, floor, strict=True)),
        f"c{top}_misses_per_s": misses["weeks_per_s"],
        f"c{top}_misses_p99_ms": misses["p99_ms"],
        f"c{top}_hits_per_s": hits["weeks_per_s"],
        f"c{top}_hits_p99_ms": hits["p99_ms"],
        f"c{top}_floor_per_s": floors["weeks_per_s"],
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
    parser.add_argument(
        "--hit-pairs", type=int, default=200, help="cache hit / floor request pairs, alternating"
    )
    parser.add_argument("--seconds", type=float, default=3.0, help="in-process encode timing")
    parser.add_argument("--runner-workers", type=int, default=1)
    parser.add_argument("--api-workers", type=int, default=1)
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument(
        "--log-level",
        default="INFO",
        help="PAT_LOG_LEVEL of the server; INFO, the service's default, writes the audit and access lines",
    )
    args = parser.parse_args()
    models: list[Path | None] = (
        list(args.h5) if args.h5 else [None, *([FIXTURE_M] if FIXTURE_M.exists() else [])]
    )
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, concurrency {args.concurrency}")
    rows = []
    for h5 in models:
        for backend in args.backends:
            row = bench_model(h5, backend, args)
            print()
            for key, value in row.items():
                shown = f"{value:.2f}" if isinstance(value, float) else value
                print(f"{key:28} {shown}", flush=True)
            rows.append(row)
            if args.json:
                args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
