"""Fault tests: the cache against its own `redis-server`, killed, frozen and restarted under traffic.

The analyses must never fail and must stay fast while Redis is gone or hangs; caching must come back by
itself once Redis does.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
from pydantic import BaseModel

from pat_runner.cache.cache import CacheKey, ResultCache
from pat_runner.settings import Settings
from tests.factories import make_settings
from tests.redis_server import RedisServer

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server binary not found")

TIMEOUT_MS = 100
RETRY_AFTER_S = 0.3
COMPUTE_S = 0.002
MODEL_TAG = "pat-m:fault"


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


def fault_settings(url: str) -> Settings:
    key = base64.b64encode(secrets.token_bytes(32)).decode()
    return make_settings(
        redis_url=url,
        cache_keys=f"k1:{key}",
        cache_hmac_key=base64.b64encode(secrets.token_bytes(32)).decode(),
        cache_namespace="pat-fault",
        redis_timeout_ms=TIMEOUT_MS,
        redis_retry_after_s=RETRY_AFTER_S,
    )


class Computed(BaseModel):
    metrics: dict[str, float]


@dataclass
class Traffic:
    """Concurrent clients replaying a small set of recordings; records every call's outcome and latency."""

    cache: ResultCache
    phase: str = "healthy"
    outcomes: dict[str, Counter[str]] = field(default_factory=dict)
    latencies: dict[str, list[float]] = field(default_factory=dict)
    failures: list[BaseException] = field(default_factory=list)
    computes: int = 0
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def _compute(self) -> Computed:
        self.computes += 1
        await asyncio.sleep(COMPUTE_S)
        return Computed(metrics={"total_sleep_minutes": 400.0})

    async def _client(self, client_id: int) -> None:
        n = 0
        while not self._stop.is_set():
            recording = f"recording-{(client_id * 7 + n) % 16}".encode()
            n += 1
            key = self.cache.make_key(CacheKey(recording, MODEL_TAG, "1", frozenset(["metrics"])))
            phase, started = self.phase, time.perf_counter()
            try:
                _, outcome = await self.cache.get_or_compute(key, MODEL_TAG, self._compute, Computed)
            except Exception as exc:  # the property under test: nothing may escape
                self.failures.append(exc)
                continue
            self.outcomes.setdefault(phase, Counter())[outcome] += 1
            self.latencies.setdefault(phase, []).append(time.perf_counter() - started)
            await asyncio.sleep(0.001)

    async def run_until_stopped(self, clients: int = 8) -> None:
        await asyncio.gather(*(self._client(i) for i in range(clients)))

    def stop(self) -> None:
        self._stop.set()

    def total(self) -> int:
        return sum(sum(c.values()) for c in self.outcomes.values())

    async def wait_for_hits(self, phase: str, hits: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while self.outcomes.get(phase, Counter())["hit"] < hits and time.monotonic() < deadline:
            await asyncio.sleep(0.05)


def p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def test_redis_killed_mid_run_then_restarted(redis_server: RedisServer) -> None:
    cache = ResultCache.from_settings(fault_settings(redis_server.url))
    traffic = Traffic(cache)
    runner = asyncio.create_task(traffic.run_until_stopped())
    try:
        await traffic.wait_for_hits("healthy", 50, timeout_s=5)
        traffic.phase = "outage"
        redis_server.kill()
        await asyncio.sleep(1.0)
        assert cache.state == "redis_degraded"
        traffic.phase = "restarted"
        redis_server.start()
        await traffic.wait_for_hits("restarted", 50, timeout_s=5)
    finally:
        traffic.stop()
        await runner
        await cache.close()

    print(
        f"\nkill/restart: {traffic.total()} calls, {len(traffic.failures)} failed, "
        f"{traffic.computes} computes; "
        + "; ".join(f"{phase}: {dict(counts)}" for phase, counts in traffic.outcomes.items())
        + f"; outage p95 latency {p(traffic.latencies['outage'], 0.95) * 1000:.1f} ms"
    )
    assert traffic.failures == []
    assert traffic.outcomes["healthy"]["hit"] >= 50
    assert traffic.outcomes["outage"]["bypass"] > 0
    assert traffic.outcomes["outage"]["hit"] == 0
    # served uncached at normal speed: connection refused is immediate and the open breaker skips Redis
    assert max(traffic.latencies["outage"]) < TIMEOUT_MS / 1000 + 0.2
    assert traffic.outcomes["restarted"]["hit"] >= 50
    assert cache.state == "redis"


async def test_frozen_redis_is_bypassed_within_the_timeout(redis_server: RedisServer) -> None:
    cache = ResultCache.from_settings(fault_settings(redis_server.url))
    traffic = Traffic(cache)
    runner = asyncio.create_task(traffic.run_until_stopped())
    try:
        await traffic.wait_for_hits("healthy", 50, timeout_s=5)
        traffic.phase = "frozen"
        redis_server.freeze()  # accepts connections, answers nothing: the slow-Redis case
        await asyncio.sleep(1.0)
        assert cache.state in ("redis_degraded", "redis_probing")
        traffic.phase = "thawed"
        redis_server.thaw()
        await traffic.wait_for_hits("thawed", 50, timeout_s=5)
    finally:
        traffic.stop()
        await runner
        await cache.close()

    frozen = traffic.latencies["frozen"]
    print(
        f"\nfreeze/thaw: {traffic.total()} calls, {len(traffic.failures)} failed; "
        + "; ".join(f"{phase}: {dict(counts)}" for phase, counts in traffic.outcomes.items())
        + f"; frozen p50/p95/max {p(frozen, 0.5) * 1000:.1f}/{p(frozen, 0.95) * 1000:.1f}/"
        f"{max(frozen) * 1000:.1f} ms"
    )
    assert traffic.failures == []
    assert traffic.outcomes["frozen"]["bypass"] > 0
    # each call waits at most one Redis timeout (read), plus the compute; the open breaker then skips Redis
    assert max(frozen) < 2 * TIMEOUT_MS / 1000 + 0.2
    assert traffic.outcomes["thawed"]["hit"] >= 50


async def test_password_protected_redis(tmp_path: Path) -> None:
    password = secrets.token_urlsafe(16)
    server = RedisServer(tmp_path, "--requirepass", password)
    server.start()
    try:
        assert redis.Redis.from_url(server.url, password=password).ping()
        settings = fault_settings(server.url).replace(redis_password=password)
        cache = ResultCache.from_settings(settings)
        key = cache.make_key(CacheKey(b"w", MODEL_TAG, "1", frozenset(["pat"])))
        traffic = Traffic(cache)
        assert (await cache.get_or_compute(key, MODEL_TAG, traffic._compute, Computed))[1] == "miss"
        assert (await cache.get_or_compute(key, MODEL_TAG, traffic._compute, Computed))[1] == "hit"
        await cache.close()

        # a wrong password is an unavailable cache, not a failed analysis
        unauthorised = ResultCache.from_settings(settings.replace(redis_password="wrong"))
        assert (await unauthorised.get_or_compute(key, MODEL_TAG, traffic._compute, Computed))[1] == "bypass"
        await unauthorised.close()
    finally:
        server.stop()
