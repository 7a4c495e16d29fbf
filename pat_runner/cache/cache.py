"""Encrypted cache of analysis results: Redis when `PAT_REDIS_URL` is set, an in-process LRU otherwise.

Keys are `{namespace}:{tag_hash}:{entry_hash}`: both hashes are HMAC-SHA256 (`pat_runner.cache.crypto`), the
entry hash over one frozen `CacheKey` (canonical preprocessed input, model tag, pipeline version and the
options that change the result), so a new model or pipeline misses automatically and invalidating one
model tag is a prefix scan. Values are one pydantic model of the computed result, as JSON
(`model_dump_json` / `model_validate_json`) sealed with AES-GCM at one place (`ResultCache._seal` /
`_open`) for both stores.

The cache never fails an analysis: Redis calls have a short timeout, and a circuit breaker (Nygard,
"Release It!", 2nd ed., ch. 5) stops calling a failing Redis for `PAT_REDIS_RETRY_AFTER_S` seconds, then
lets one probe through. While Redis is unavailable results are computed and served uncached ("bypass").
Identical concurrent requests are computed once per process (single flight); across processes and pods
each process computes at most once and the shared Redis catches the rest.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar

import redis.asyncio as redis_asyncio
from pydantic import BaseModel, ValidationError
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError

from pat_runner import telemetry
from pat_runner.cache.crypto import CacheConfigError, CacheSecrets, UndecryptableValue, secrets_from_settings
from pat_runner.errors import ServiceError
from pat_runner.settings import Settings

logger = logging.getLogger(__name__)

Outcome = Literal["hit", "miss", "bypass"]
CacheState = Literal["embedded", "redis", "redis_degraded", "redis_probing"]
BreakerState = Literal["closed", "open", "half_open"]
T = TypeVar("T")
R = TypeVar("R", bound=BaseModel)

FAILURES_TO_OPEN = 3  # consecutive Redis failures before the breaker opens
SCAN_BATCH = 500
TAG_HASH_CHARS = 32  # 128 bits: enough to keep model tags apart, short enough for cheap prefix scans
_NAMESPACE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
#: Largest cached value read back (results are tens of kB); a larger one is treated as foreign.
MAX_VALUE_BYTES = 8 * 2**20
#: What the store returns for a key it cannot read as ours: opening it fails, so the result is recomputed
#: and the key overwritten.
FOREIGN_VALUE = b"foreign"


@dataclass(frozen=True)
class CacheKey:
    """Everything that decides a cached result; two requests with equal keys share one entry.

    `options` names the result-changing choices (what is computed, which algorithm), order-free.
    """

    canonical_input: bytes
    model_tag: str
    pipeline_version: str
    options: frozenset[str] = frozenset()


class CacheUnavailable(ServiceError):
    """An explicit cache operation (invalidation) could not reach Redis; analyses are never affected."""

    status = 503
    code = "cache_unavailable"


class StoreUnavailable(Exception):
    """The store could not serve this call (error, timeout or open circuit); the caller degrades."""


class CircuitBreaker:
    """closed → (N consecutive failures) → open → (retry_after) → half_open → one probe → closed or open."""

    def __init__(
        self,
        *,
        failures_to_open: int,
        retry_after_s: float,
        on_change: Callable[[BreakerState], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._failures_to_open = failures_to_open
        self._retry_after_s = retry_after_s
        self._on_change = on_change
        self._clock = clock
        self._state: BreakerState = "closed"
        self._failures = 0
        self._changed_at = clock()

    @property
    def state(self) -> BreakerState:
        return self._state

    def _move(self, state: BreakerState) -> None:
        self._changed_at = self._clock()
        if state != self._state:
            self._state = state
            self._on_change(state)

    def allow(self) -> bool:
        if self._state == "closed":
            return True
        if self._clock() - self._changed_at < self._retry_after_s:
            return False
        # open: time for one probe. half_open: the last probe never reported (its caller was cancelled),
        # so after another retry_after let a new one through instead of staying stuck.
        self._changed_at = self._clock()
        if self._state == "open":
            self._state = "half_open"
            self._on_change("half_open")
        return True

    def success(self) -> None:
        self._failures = 0
        if self._state != "closed":
            self._move("closed")

    def failure(self) -> None:
        self._failures += 1
        if self._state == "half_open" or self._failures >= self._failures_to_open:
            self._move("open")


class Store(Protocol):
    @property
    def state(self) -> CacheState: ...

    async def get(self, key: str) -> bytes | None: ...

    async def set(self, key: str, blob: bytes, ttl_s: int) -> None: ...

    async def delete_prefix(self, prefix: str) -> int: ...

    async def close(self) -> None: ...


class MemoryStore:
    """A bounded LRU of sealed values with per-item expiry, for one process (the embedded default)."""

    def __init__(self, max_items: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        if max_items < 1:
            raise CacheConfigError("PAT_CACHE_MAX_ITEMS must be at least 1")
        self._max_items = max_items
        self._clock = clock
        self._items: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    @property
    def state(self) -> CacheState:
        return "embedded"

    def __len__(self) -> int:
        return len(self._items)

    async def get(self, key: str) -> bytes | None:
        item = self._items.get(key)
        if item is None:
            return None
        expires_at, blob = item
        if expires_at <= self._clock():
            del self._items[key]
            return None
        self._items.move_to_end(key)
        return blob

    async def set(self, key: str, blob: bytes, ttl_s: int) -> None:
        self._items[key] = (self._clock() + ttl_s, blob)
        self._items.move_to_end(key)
        while len(self._items) > self._max_items:
            self._items.popitem(last=False)

    async def delete_prefix(self, prefix: str) -> int:
        doomed = [key for key in self._items if key.startswith(prefix)]
        for key in doomed:
            del self._items[key]
        return len(doomed)

    async def close(self) -> None:
        self._items.clear()


class RedisStore:
    """Redis behind a per-call timeout and a circuit breaker; every failure becomes `StoreUnavailable`."""

    def __init__(self, client: redis_asyncio.Redis, *, timeout_s: float, retry_after_s: float) -> None:
        self._client = client
        self._timeout_s = timeout_s
        self._breaker = CircuitBreaker(
            failures_to_open=FAILURES_TO_OPEN, retry_after_s=retry_after_s, on_change=self._breaker_changed
        )

    @staticmethod
    def _breaker_changed(state: BreakerState) -> None:
        telemetry.record_circuit_state(state)
        if state == "open":
            logger.warning("redis cache unavailable: serving uncached results until it recovers")
        elif state == "half_open":
            logger.info("redis cache: probing whether it is back")
        else:
            logger.warning("redis cache available again: caching resumed")

    @property
    def state(self) -> CacheState:
        return {"closed": "redis", "open": "redis_degraded", "half_open": "redis_probing"}[
            self._breaker.state
        ]

    async def _call(self, operation: str, command: Callable[[], Awaitable[T]]) -> T:
        if not self._breaker.allow():
            raise StoreUnavailable(f"{operation}: circuit open")
        try:
            result = await asyncio.wait_for(command(), self._timeout_s)
        except (RedisError, OSError, TimeoutError) as exc:
            self._breaker.failure()
            telemetry.record_cache_error(operation)
            raise StoreUnavailable(f"{operation}: {type(exc).__name__}") from exc
        self._breaker.success()
        return result

    async def get(self, key: str) -> bytes | None:
        # STRLEN first, in the same round trip, and never more than MAX_VALUE_BYTES read: a key of
        # another type (WRONGTYPE) or an oversized value is a foreign value to overwrite, not a Redis
        # failure that would leave that input uncached ("bypass") for as long as the key lives.
        async def read() -> list[Any]:
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.strlen(key)
                pipe.getrange(key, 0, MAX_VALUE_BYTES - 1)
                return await pipe.execute(raise_on_error=False)

        length, value = await self._call("get", read)
        if isinstance(length, ResponseError) or (isinstance(length, int) and length > MAX_VALUE_BYTES):
            telemetry.record_cache_error("foreign_value")
            return FOREIGN_VALUE
        return value or None

    async def set(self, key: str, blob: bytes, ttl_s: int) -> None:
        await self._call("set", lambda: self._client.set(key, blob, ex=ttl_s))

    async def delete_prefix(self, prefix: str) -> int:
        # SCAN in batches (each a bounded call) instead of KEYS, which blocks Redis on a large keyspace.
        pattern = prefix + "*"
        removed = 0
        cursor = 0
        while True:
            cursor, keys = await self._call(
                "invalidate", lambda c=cursor: self._client.scan(cursor=c, match=pattern, count=SCAN_BATCH)
            )
            if keys:
                removed += await self._call("invalidate", lambda k=keys: self._client.unlink(*k))
            if cursor == 0:
                return removed

    async def close(self) -> None:
        await self._client.aclose()
        await self._client.connection_pool.disconnect()


def redis_client(settings: Settings) -> redis_asyncio.Redis:
    """A pooled asyncio client that fails fast: no client-side retries, timeouts from the settings."""
    timeout_s = settings.redis_timeout_ms / 1000
    options: dict[str, Any] = {
        "socket_timeout": timeout_s,
        "socket_connect_timeout": timeout_s,
        "retry": Retry(NoBackoff(), 0),
        "health_check_interval": 30,
    }
    if settings.redis_password:
        options["password"] = settings.redis_password
    if settings.redis_ca_file:
        if not settings.redis_url.startswith("rediss://"):
            raise CacheConfigError("PAT_REDIS_CA_FILE needs a TLS URL: PAT_REDIS_URL=rediss://…")
        options["ssl_ca_certs"] = settings.redis_ca_file
    pool = redis_asyncio.ConnectionPool.from_url(settings.redis_url, **options)
    return redis_asyncio.Redis(connection_pool=pool)


class ResultCache:
    """The analysis result cache: keyed hashes, sealed values, TTL, single flight, graceful degradation."""

    def __init__(self, *, store: Store, secrets: CacheSecrets, namespace: str, ttl_s: int) -> None:
        if not _NAMESPACE.match(namespace):
            raise CacheConfigError("PAT_CACHE_NAMESPACE must be 1-64 characters from [A-Za-z0-9_.-]")
        if ttl_s < 1:
            raise CacheConfigError("PAT_CACHE_TTL_S must be at least 1 second")
        self._store = store
        self._cipher = secrets.cipher
        self._hasher = secrets.hasher
        self._namespace = namespace
        self._ttl_s = ttl_s
        self._inflight: dict[str, asyncio.Task[tuple[BaseModel, Outcome]]] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> ResultCache:
        shared = bool(settings.redis_url)
        cache_secrets = secrets_from_settings(settings, shared_cache=shared)
        store: Store
        if shared:
            store = RedisStore(
                redis_client(settings),
                timeout_s=settings.redis_timeout_ms / 1000,
                retry_after_s=settings.redis_retry_after_s,
            )
            logger.info(
                "result cache: redis (tls=%s, timeout=%dms, ttl=%ds)",
                settings.redis_url.startswith("rediss://"),
                settings.redis_timeout_ms,
                settings.cache_ttl_s,
            )
        else:
            store = MemoryStore(settings.cache_max_items)
            logger.info(
                "result cache: embedded LRU (max %d items, ttl=%ds)",
                settings.cache_max_items,
                settings.cache_ttl_s,
            )
        return cls(
            store=store, secrets=cache_secrets, namespace=settings.cache_namespace, ttl_s=settings.cache_ttl_s
        )

    @property
    def state(self) -> CacheState:
        return self._store.state

    def _tag_prefix(self, model_tag: str | None) -> str:
        if model_tag is None:
            return f"{self._namespace}:"
        return (
            f"{self._namespace}:{self._hasher.hexdigest(b'model-tag', model_tag.encode())[:TAG_HASH_CHARS]}:"
        )

    def make_key(self, key: CacheKey) -> str:
        """The store key of one computation; HMACs only, so it reveals nothing about the input."""
        entry = self._hasher.hexdigest(
            b"entry",
            key.canonical_input,
            key.model_tag.encode(),
            key.pipeline_version.encode(),
            ",".join(sorted(key.options)).encode(),
        )
        return self._tag_prefix(key.model_tag) + entry

    def _seal(self, key: str, result: BaseModel) -> bytes:
        return self._cipher.encrypt(result.model_dump_json().encode(), cache_key=key)

    def _open(self, key: str, blob: bytes, result_type: type[R]) -> R:
        return result_type.model_validate_json(self._cipher.decrypt(blob, cache_key=key))

    async def get_or_compute(
        self, key: str, model_tag: str, compute: Callable[[], Awaitable[R]], result_type: type[R]
    ) -> tuple[R, Outcome]:
        """The cached result for `key`, or `compute()`'s, stored for next time.

        Outcome: "hit" (served without computing — from the store, or from an identical request already
        in flight), "miss" (computed and stored), "bypass" (computed; the store was unavailable).
        Errors of `compute` propagate to every waiter and nothing is stored.
        """
        if not key.startswith(self._tag_prefix(model_tag)):
            raise ValueError("cache key was not made for this model tag")
        leader = self._inflight.get(key)
        if leader is not None:
            result, outcome = await asyncio.shield(leader)
            outcome = "bypass" if outcome == "bypass" else "hit"
        else:
            task = asyncio.ensure_future(self._load(key, compute, result_type))
            self._inflight[key] = task
            task.add_done_callback(lambda done: self._forget(key, done))
            # Shielded: a caller that gives up (client disconnect) must not cancel the others' result.
            result, outcome = await asyncio.shield(task)
        telemetry.record_cache_lookup(outcome)
        telemetry.set_span_attributes(cache_outcome=outcome)
        return result, outcome

    def _forget(self, key: str, done: asyncio.Task[tuple[BaseModel, Outcome]]) -> None:
        self._inflight.pop(key, None)
        # Mark a failure as retrieved: when every waiter was cancelled nobody else reads it, and asyncio
        # would log "exception was never retrieved".
        if not done.cancelled():
            done.exception()

    async def _load(
        self, key: str, compute: Callable[[], Awaitable[R]], result_type: type[R]
    ) -> tuple[R, Outcome]:
        store_available = True
        try:
            blob = await self._store.get(key)
        except StoreUnavailable:
            blob, store_available = None, False
        if blob is not None:
            try:
                return self._open(key, blob, result_type), "hit"
            except (UndecryptableValue, ValidationError, ValueError) as exc:
                # Retired key or foreign value: recompute and overwrite rather than fail the request.
                telemetry.record_cache_error("decrypt")
                logger.warning("cached value unreadable (%s); recomputing", exc)
        result = await compute()
        if not store_available:
            return result, "bypass"
        try:
            await self._store.set(key, self._seal(key, result), self._ttl_s)
        except StoreUnavailable:
            return result, "bypass"
        return result, "miss"

    async def invalidate(self, model_tag: str | None = None) -> int:
        """Remove the cached results of one model tag, or of every tag (this namespace only)."""
        try:
            removed = await self._store.delete_prefix(self._tag_prefix(model_tag))
        except StoreUnavailable as exc:
            raise CacheUnavailable("the result cache is unreachable; retry the invalidation later") from exc
        logger.info("cache invalidated: %d entries (%s)", removed, "one model tag" if model_tag else "all")
        return removed

    async def close(self) -> None:
        await self._store.close()
