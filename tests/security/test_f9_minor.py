"""Finding 9 (minor): `1e308` counts were accepted and then failed deep in FHIR validation; file names
over 255 characters gave 500; a Redis key of the wrong type or an oversized value left that input on
"bypass" forever; responses carried `Server: BentoML Service/…`."""

from __future__ import annotations

import asyncio
import base64
import resource
import secrets
import time
import uuid

import pytest
import redis.asyncio as redis_asyncio
from pydantic import BaseModel

from pat_runner.cache.cache import MAX_VALUE_BYTES, CacheKey, ResultCache
from pat_runner.settings import Settings
from tests.factories import recording
from tests.security.harness import assert_bounded_error, attack, bearer, upload

REDIS_URL = "redis://127.0.0.1:6379/11"
CSV = b"timestamp,axis1\n2024-03-04T00:00:00,1\n2024-03-04T00:01:00,2\n"


@pytest.mark.integration
def test_non_physical_counts_are_422_up_front(pat_server, tokens) -> None:
    body = recording(6, minutes=1_440, subject=None)
    body["values"][42] = 1e308
    outcome = attack(
        pat_server,
        lambda c: c.post("/v1/analyze", json={"recording": body}, headers=bearer(tokens["service"])),
    )
    outcome.check(status=422, cpu_s=1.5, rss_mb=100)
    assert "values[42]" in assert_bounded_error(outcome.responses[0], code="invalid_input")


@pytest.mark.integration
def test_overlong_file_name_is_422_and_no_server_header(pat_server, tokens) -> None:
    outcome = attack(pat_server, lambda c: upload(c, tokens["service"], CSV, "a" * 300 + ".csv"))
    outcome.check(status=422, cpu_s=1.0, rss_mb=100)
    assert "file name" in assert_bounded_error(outcome.responses[0], code="validation_error")
    models = attack(pat_server, lambda c: c.get("/v1/models", headers=bearer(tokens["service"])))
    models.check(status=200, cpu_s=1.0, rss_mb=100)
    for response in (*outcome.responses, *models.responses):
        assert "server" not in response.headers


def _b64() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


@pytest.mark.parametrize("plant", ["wrong_type", "oversized"])
async def test_foreign_redis_value_is_overwritten_not_bypassed(plant: str) -> None:
    settings = Settings(auth="disabled", host="127.0.0.1").replace(
        redis_url=REDIS_URL,
        cache_keys=f"k1:{_b64()}",
        cache_hmac_key=_b64(),
        cache_namespace=f"pat-sec-{uuid.uuid4().hex[:12]}",
        redis_timeout_ms=2000,
    )
    cache = ResultCache.from_settings(settings)
    raw = redis_asyncio.Redis.from_url(REDIS_URL)
    try:
        await raw.ping()
    except OSError:
        pytest.skip("no Redis server at 127.0.0.1:6379")
    key = cache.make_key(CacheKey(b"x", "m:1", "1", frozenset(["metrics"])))
    if plant == "wrong_type":
        await raw.hset(key, "field", "value")
    else:
        await raw.set(key, b"\0" * (MAX_VALUE_BYTES + 1))

    class Answer(BaseModel):
        answer: int

    async def compute() -> Answer:
        return Answer(answer=42)

    # "Worker responsive": the loop's worst delay while the cache reads the planted key.
    worst = 0.0

    async def tick() -> None:
        nonlocal worst
        for _ in range(20):
            started = time.perf_counter()
            await asyncio.sleep(0.01)
            worst = max(worst, time.perf_counter() - started - 0.01)

    cpu_before, peak_before = time.process_time(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        (result, first), _ = await asyncio.gather(cache.get_or_compute(key, "m:1", compute, Answer), tick())
        _, second = await cache.get_or_compute(key, "m:1", compute, Answer)
        assert (result, first, second) == (Answer(answer=42), "miss", "hit")
        assert await raw.type(key) == b"string" and await raw.strlen(key) < MAX_VALUE_BYTES
    finally:
        await raw.delete(key)
        await raw.aclose()
        await cache.close()
    assert worst < 1.0 and time.process_time() - cpu_before < 1.0
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before) / 1024 < 100
