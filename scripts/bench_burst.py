"""Concurrent bursts of distinct weeks on `/v1/analyze`: status counts and latency per status.

    python scripts/bench_burst.py http://127.0.0.1:3000 24 [TOKEN]

Used to find capacity (throughput levels off while latency grows) and to measure how fast requests past
`PAT_MAX_CONCURRENCY` are refused; results in docs/performance.md ("Load and soak").
"""

from __future__ import annotations

import asyncio
import collections
import sys
import time

import httpx

from pat_runner.actigraphy.synthetic import week_recording


async def one(client: httpx.AsyncClient, url: str, seed: int) -> tuple[int, float, str]:
    started = time.perf_counter()
    response = await client.post(f"{url}/v1/analyze", json={"recording": week_recording(seed)})
    code = response.json().get("error", {}).get("code", "") if response.status_code != 200 else ""
    return response.status_code, time.perf_counter() - started, code


async def main(url: str, n: int, token: str) -> None:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    limits = httpx.Limits(max_connections=n)
    async with httpx.AsyncClient(timeout=120, limits=limits, headers=headers) as client:
        started = time.perf_counter()
        results = await asyncio.gather(*(one(client, url, 5000 + i) for i in range(n)))
        elapsed = time.perf_counter() - started
    by_status: dict[tuple[int, str], list[float]] = collections.defaultdict(list)
    for status, seconds, code in results:
        by_status[(status, code)].append(seconds)
    print(f"{n} requests in {elapsed:.2f} s: {n / elapsed:.1f} req/s")
    for (status, code), times in sorted(by_status.items()):
        print(f"{status} {code or ''}: {len(times)}, {min(times):.2f}-{max(times):.2f} s")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else ""))
