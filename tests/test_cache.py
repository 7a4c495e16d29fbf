"""The result cache against the real Redis (127.0.0.1:6379) and the embedded LRU.

Every test uses its own key namespace in DB 11 and removes it afterwards, so other suites sharing the
server are untouched.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis
import redis.asyncio as redis_asyncio
from prometheus_client import REGISTRY
from pydantic import BaseModel

from pat_runner.cache.cache import CacheKey, CacheUnavailable, MemoryStore, ResultCache
from pat_runner.cache.crypto import (
    CacheCipher,
    CacheConfigError,
    UndecryptableValue,
    parse_cipher_keys,
    secrets_from_settings,
)
from pat_runner.settings import Settings
from tests.factories import make_settings

REDIS_URL = "redis://127.0.0.1:6379/11"
PIPELINE = "pipeline-1"


class Result(BaseModel):
    """A stand-in for the pipeline's computed result: any pydantic model round-trips the same way."""

    quality: dict[str, int]
    metrics: dict[str, float]
    pat: None = None
    warnings: list[str] = []


RESULT = Result(quality={"minutes": 10080}, metrics={"total_sleep_minutes": 417.5})


def redis_reachable() -> bool:
    try:
        return bool(redis.Redis.from_url(REDIS_URL, socket_connect_timeout=0.5).ping())
    except redis.RedisError:
        return False


needs_redis = pytest.mark.skipif(not redis_reachable(), reason="no Redis server at 127.0.0.1:6379")


def b64_key() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


def cache_settings(**overrides: Any) -> Settings:
    base = make_settings(
        redis_url=REDIS_URL,
        cache_keys=f"k1:{b64_key()}",
        cache_hmac_key=b64_key(),
        cache_namespace=f"pat-test-{uuid.uuid4().hex[:12]}",
        cache_ttl_s=60,
        redis_timeout_ms=500,
    )
    return base.replace(**overrides)


@dataclass
class CountingCompute:
    """A stand-in for the analysis: returns a fixed JSON result and counts how often it ran."""

    result: Result = field(default_factory=lambda: RESULT.model_copy())
    delay_s: float = 0.0
    calls: int = 0

    def __call__(self) -> Callable[[], Awaitable[Result]]:
        async def compute() -> Result:
            self.calls += 1
            await asyncio.sleep(self.delay_s)
            return self.result

        return compute


def key_for(
    cache: ResultCache, data: bytes, tag: str = "pat-m:abc", outputs: tuple[str, ...] = ("pat",)
) -> str:
    return cache.make_key(CacheKey(data, tag, PIPELINE, frozenset(outputs)))


def lookups(outcome: str) -> float:
    return REGISTRY.get_sample_value("pat_cache_lookups_total", {"outcome": outcome}) or 0.0


@pytest.fixture
async def redis_cache() -> AsyncIterator[ResultCache]:
    cache = ResultCache.from_settings(cache_settings())
    yield cache
    await cache.invalidate(None)
    await cache.close()


@pytest.fixture
async def raw_redis() -> AsyncIterator[redis_asyncio.Redis]:
    client = redis_asyncio.Redis.from_url(REDIS_URL)
    yield client
    await client.aclose()


@needs_redis
async def test_miss_then_hit_and_metrics(redis_cache: ResultCache) -> None:
    compute = CountingCompute()
    key = key_for(redis_cache, b"week-1")
    hits_before, misses_before = lookups("hit"), lookups("miss")
    assert await redis_cache.get_or_compute(key, "pat-m:abc", compute(), Result) == (RESULT, "miss")
    assert await redis_cache.get_or_compute(key, "pat-m:abc", compute(), Result) == (RESULT, "hit")
    assert compute.calls == 1
    assert redis_cache.state == "redis"
    assert lookups("hit") - hits_before == 1 and lookups("miss") - misses_before == 1


@needs_redis
async def test_key_covers_input_outputs_pipeline_and_tag(redis_cache: ResultCache) -> None:
    base = key_for(redis_cache, b"week-1")
    variants = {
        key_for(redis_cache, b"week-2"),
        key_for(redis_cache, b"week-1", outputs=("pat", "metrics")),
        key_for(redis_cache, b"week-1", tag="pat-m:def"),
        redis_cache.make_key(CacheKey(b"week-1", "pat-m:abc", "2", frozenset(["pat"]))),
    }
    assert base not in variants and len(variants) == 4
    # the order and repetition of requested outputs do not matter
    assert key_for(redis_cache, b"w", outputs=("pat", "metrics")) == key_for(
        redis_cache, b"w", outputs=("metrics", "pat", "pat")
    )
    # keys are HMACs: neither the input nor the model tag appears
    assert "week" not in base and "pat-m" not in base
    assert base.count(":") == 2 and all(len(part) in (32, 64) for part in base.split(":")[1:])


@needs_redis
async def test_key_of_another_model_tag_is_refused(redis_cache: ResultCache) -> None:
    with pytest.raises(ValueError, match="model tag"):
        await redis_cache.get_or_compute(key_for(redis_cache, b"w"), "pat-l:xyz", CountingCompute()(), Result)


@needs_redis
async def test_ttl_expiry(raw_redis: redis_asyncio.Redis) -> None:
    cache = ResultCache.from_settings(cache_settings(cache_ttl_s=1))
    try:
        compute = CountingCompute()
        key = key_for(cache, b"week-ttl")
        assert (await cache.get_or_compute(key, "pat-m:abc", compute(), Result))[1] == "miss"
        assert 0 < await raw_redis.pttl(key) <= 1000
        assert (await cache.get_or_compute(key, "pat-m:abc", compute(), Result))[1] == "hit"
        await asyncio.sleep(1.1)
        assert (await cache.get_or_compute(key, "pat-m:abc", compute(), Result))[1] == "miss"
        assert compute.calls == 2
    finally:
        await cache.invalidate(None)
        await cache.close()


@needs_redis
async def test_invalidate_by_model_tag_and_everything(raw_redis: redis_asyncio.Redis) -> None:
    settings = cache_settings()
    cache = ResultCache.from_settings(settings)
    neighbour = ResultCache.from_settings(
        settings.replace(cache_namespace=settings.cache_namespace + "-other")
    )
    try:
        compute = CountingCompute()
        m_keys = [key_for(cache, f"m{i}".encode(), tag="pat-m:abc") for i in range(3)]
        l_keys = [key_for(cache, f"l{i}".encode(), tag="pat-l:xyz") for i in range(2)]
        for key in m_keys:
            await cache.get_or_compute(key, "pat-m:abc", compute(), Result)
        for key in l_keys:
            await cache.get_or_compute(key, "pat-l:xyz", compute(), Result)
        other_key = key_for(neighbour, b"m0")
        await neighbour.get_or_compute(other_key, "pat-m:abc", compute(), Result)

        assert await cache.invalidate("pat-m:abc") == 3
        assert (await cache.get_or_compute(m_keys[0], "pat-m:abc", compute(), Result))[1] == "miss"
        assert (await cache.get_or_compute(l_keys[0], "pat-l:xyz", compute(), Result))[1] == "hit"

        assert await cache.invalidate(None) == 3  # m_keys[0] again, and both pat-l keys
        assert [await raw_redis.exists(k) for k in (*m_keys, *l_keys)] == [0] * 5
        # another namespace on the same server is not touched by "everything"
        assert await raw_redis.exists(other_key) == 1
    finally:
        await neighbour.invalidate(None)
        await cache.close()
        await neighbour.close()


@needs_redis
async def test_single_flight_computes_once(redis_cache: ResultCache) -> None:
    compute = CountingCompute(delay_s=0.1)
    key = key_for(redis_cache, b"popular-week")
    results = await asyncio.gather(
        *(redis_cache.get_or_compute(key, "pat-m:abc", compute(), Result) for _ in range(25))
    )
    assert compute.calls == 1
    assert sorted(outcome for _, outcome in results) == ["hit"] * 24 + ["miss"]
    assert all(result == RESULT for result, _ in results)


@needs_redis
async def test_compute_failure_reaches_every_waiter_and_is_not_cached(redis_cache: ResultCache) -> None:
    calls = 0

    async def failing() -> dict[str, Any]:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        raise RuntimeError("model service down")

    key = key_for(redis_cache, b"week-f")
    outcomes = await asyncio.gather(
        *(redis_cache.get_or_compute(key, "pat-m:abc", failing, Result) for _ in range(5)),
        return_exceptions=True,
    )
    assert calls == 1
    assert all(isinstance(o, RuntimeError) for o in outcomes)
    compute = CountingCompute()
    assert (await redis_cache.get_or_compute(key, "pat-m:abc", compute(), Result))[1] == "miss"


@needs_redis
async def test_cancelled_leader_does_not_cancel_followers(redis_cache: ResultCache) -> None:
    compute = CountingCompute(delay_s=0.1)
    key = key_for(redis_cache, b"week-c")
    leader = asyncio.create_task(redis_cache.get_or_compute(key, "pat-m:abc", compute(), Result))
    await asyncio.sleep(0.01)
    follower = asyncio.create_task(redis_cache.get_or_compute(key, "pat-m:abc", compute(), Result))
    await asyncio.sleep(0.01)
    leader.cancel()
    assert await follower == (RESULT, "hit")
    assert compute.calls == 1


@needs_redis
async def test_raw_value_is_encrypted_and_a_wrong_key_cannot_read_it(raw_redis: redis_asyncio.Redis) -> None:
    settings = cache_settings()
    cache = ResultCache.from_settings(settings)
    try:
        key = key_for(cache, b"week-secret")
        await cache.get_or_compute(key, "pat-m:abc", CountingCompute()(), Result)
        raw = await raw_redis.get(key)
        assert raw is not None and raw.startswith(b"v1|k1|")
        # The header is the only plaintext; a random 12-byte nonce follows, so no byte test on it.
        assert b"total_sleep_minutes" not in raw and b"417.5" not in raw
        assert RESULT.model_dump_json().encode() not in raw and len(raw) > len("v1|k1|") + 12 + 16
        assert (
            Result.model_validate_json(
                CacheCipher(parse_cipher_keys(settings.cache_keys)).decrypt(raw, cache_key=key)
            )
            == RESULT
        )

        with pytest.raises(UndecryptableValue):
            CacheCipher([("k1", secrets.token_bytes(32))]).decrypt(raw, cache_key=key)

        # a service holding another key (same HMAC key, so the same cache keys) recomputes, never fails
        wrong = ResultCache.from_settings(settings.replace(cache_keys=f"k1:{b64_key()}"))
        errors_before = REGISTRY.get_sample_value("pat_cache_errors_total", {"operation": "decrypt"}) or 0.0
        compute = CountingCompute()
        assert (await wrong.get_or_compute(key, "pat-m:abc", compute(), Result))[1] == "miss"
        assert compute.calls == 1
        assert (
            REGISTRY.get_sample_value("pat_cache_errors_total", {"operation": "decrypt"}) == errors_before + 1
        )
        await wrong.close()
    finally:
        await cache.invalidate(None)
        await cache.close()


@needs_redis
async def test_key_rotation_keeps_old_values_readable(raw_redis: redis_asyncio.Redis) -> None:
    old_settings = cache_settings(cache_keys=f"2025:{b64_key()}")
    rotated_settings = old_settings.replace(cache_keys=f"2026:{b64_key()},{old_settings.cache_keys}")
    old = ResultCache.from_settings(old_settings)
    rotated = ResultCache.from_settings(rotated_settings)
    try:
        compute = CountingCompute()
        old_key, new_key = key_for(old, b"before-rotation"), key_for(old, b"after-rotation")
        await old.get_or_compute(old_key, "pat-m:abc", compute(), Result)
        assert (await rotated.get_or_compute(old_key, "pat-m:abc", compute(), Result))[1] == "hit"
        await rotated.get_or_compute(new_key, "pat-m:abc", compute(), Result)
        assert (await raw_redis.get(new_key) or b"").startswith(b"v1|2026|")
        assert (await raw_redis.get(old_key) or b"").startswith(b"v1|2025|")
        assert compute.calls == 2
    finally:
        await rotated.invalidate(None)
        await old.close()
        await rotated.close()


def test_redis_without_keys_fails_closed() -> None:
    with pytest.raises(CacheConfigError, match="PAT_REDIS_URL is set"):
        ResultCache.from_settings(cache_settings(cache_keys="", cache_hmac_key=""))


def test_ca_file_needs_a_tls_url() -> None:
    with pytest.raises(CacheConfigError, match="rediss://"):
        ResultCache.from_settings(cache_settings(redis_ca_file="/etc/ssl/certs/ca-certificates.crt"))


def test_tls_url_and_password_reach_the_connection_pool() -> None:
    cache = ResultCache.from_settings(
        cache_settings(
            redis_url="rediss://cache.internal:6380/0",
            redis_ca_file="/etc/ssl/certs/ca-certificates.crt",
            redis_password="s3cret",
        )
    )
    pool = cache._store._client.connection_pool  # type: ignore[attr-defined]
    assert pool.connection_class is redis_asyncio.SSLConnection
    assert pool.connection_kwargs["ssl_ca_certs"] == "/etc/ssl/certs/ca-certificates.crt"
    assert pool.connection_kwargs["password"] == "s3cret"


async def test_embedded_lru_evicts_least_recently_used() -> None:
    cache = ResultCache.from_settings(cache_settings(redis_url="", cache_max_items=2))
    compute = CountingCompute()
    a, b, c = (key_for(cache, name) for name in (b"a", b"b", b"c"))
    for key in (a, b):
        await cache.get_or_compute(key, "pat-m:abc", compute(), Result)
    assert (await cache.get_or_compute(a, "pat-m:abc", compute(), Result))[1] == "hit"  # a is now most recent
    await cache.get_or_compute(c, "pat-m:abc", compute(), Result)  # evicts b
    assert (await cache.get_or_compute(a, "pat-m:abc", compute(), Result))[1] == "hit"
    assert (await cache.get_or_compute(b, "pat-m:abc", compute(), Result))[1] == "miss"
    assert cache.state == "embedded"
    assert await cache.invalidate("pat-m:abc") == 2
    await cache.close()


async def test_embedded_lru_expires_and_stores_sealed_values() -> None:
    now = [1000.0]
    store = MemoryStore(8, clock=lambda: now[0])
    settings = cache_settings(redis_url="", cache_keys="", cache_hmac_key="")
    cache = ResultCache(
        store=store, secrets=secrets_from_settings(settings, shared_cache=False), namespace="pat", ttl_s=5
    )
    key = key_for(cache, b"week")
    await cache.get_or_compute(key, "pat-m:abc", CountingCompute()(), Result)
    sealed = await store.get(key)
    assert sealed is not None and sealed.startswith(b"v1|ephemeral|") and b"417.5" not in sealed
    now[0] += 4.9
    assert (await cache.get_or_compute(key, "pat-m:abc", CountingCompute()(), Result))[1] == "hit"
    now[0] += 0.2
    assert (await cache.get_or_compute(key, "pat-m:abc", CountingCompute()(), Result))[1] == "miss"


async def test_invalidation_of_an_unreachable_redis_is_a_503() -> None:
    cache = ResultCache.from_settings(cache_settings(redis_url="redis://127.0.0.1:1/0", redis_timeout_ms=100))
    with pytest.raises(CacheUnavailable) as raised:
        await cache.invalidate(None)
    assert raised.value.status == 503 and raised.value.code == "cache_unavailable"
    # while analyses degrade instead of failing
    assert (await cache.get_or_compute(key_for(cache, b"w"), "pat-m:abc", CountingCompute()(), Result))[
        1
    ] == "bypass"
    await cache.close()
