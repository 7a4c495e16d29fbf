"""Every setting of the service, read from environment variables in one place.

`docs/operations.md` is the reference for operators; keep the two in step. Read settings with
`get_settings()`; tests that change the environment call `get_settings.cache_clear()`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import lru_cache

DEMO_MODEL_NAME = "pat-demo"


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default).strip()


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ValueError(f"setting {name} must be an integer, got {raw!r}") from exc


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise ValueError(f"setting {name} must be a number, got {raw!r}") from exc


def _env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"setting {name} must be a boolean (true/false), got {raw!r}")


@dataclass(frozen=True)
class Settings:
    # model and runner
    model_tag: str = field(default_factory=lambda: _env("PAT_MODEL_TAG", f"{DEMO_MODEL_NAME}:latest"))
    device: str = field(default_factory=lambda: _env("PAT_DEVICE", "auto"))
    max_batch_size: int = field(default_factory=lambda: _env_int("PAT_MAX_BATCH_SIZE", 8))
    max_latency_ms: int = field(default_factory=lambda: _env_int("PAT_MAX_LATENCY_MS", 10_000))
    runner_workers: int = field(default_factory=lambda: _env_int("PAT_RUNNER_WORKERS", 1))
    api_workers: int = field(default_factory=lambda: _env_int("PAT_API_WORKERS", 1))
    torch_threads: int = field(default_factory=lambda: _env_int("PAT_TORCH_THREADS", 0))

    # preprocessing limits
    window_stride_minutes: int = field(default_factory=lambda: _env_int("PAT_WINDOW_STRIDE_MINUTES", 10_080))
    min_recording_minutes: int = field(default_factory=lambda: _env_int("PAT_MIN_RECORDING_MINUTES", 1_440))
    max_recording_minutes: int = field(
        default_factory=lambda: _env_int("PAT_MAX_RECORDING_MINUTES", 8 * 10_080)
    )
    max_missing_fraction: float = field(default_factory=lambda: _env_float("PAT_MAX_MISSING_FRACTION", 0.5))
    # runs of exact zeros at least this long are non-wear (missing); 0 disables
    nonwear_zero_run_minutes: int = field(
        default_factory=lambda: _env_int("PAT_NONWEAR_ZERO_RUN_MINUTES", 1_440)
    )

    # request limits
    max_request_bytes: int = field(default_factory=lambda: _env_int("PAT_MAX_REQUEST_BYTES", 16 * 2**20))
    max_upload_bytes: int = field(default_factory=lambda: _env_int("PAT_MAX_UPLOAD_BYTES", 32 * 2**20))
    max_batch_recordings: int = field(default_factory=lambda: _env_int("PAT_MAX_BATCH_RECORDINGS", 32))

    # cache
    redis_url: str = field(default_factory=lambda: _env("PAT_REDIS_URL", ""))
    redis_ca_file: str = field(default_factory=lambda: _env("PAT_REDIS_CA_FILE", ""))
    redis_password: str = field(default_factory=lambda: _env("PAT_REDIS_PASSWORD", ""))
    # prefix of every Redis key, so deployments (or tests) can share one Redis server
    cache_namespace: str = field(default_factory=lambda: _env("PAT_CACHE_NAMESPACE", "pat"))
    redis_timeout_ms: int = field(default_factory=lambda: _env_int("PAT_REDIS_TIMEOUT_MS", 100))
    redis_retry_after_s: float = field(default_factory=lambda: _env_float("PAT_REDIS_RETRY_AFTER_S", 5.0))
    cache_ttl_s: int = field(default_factory=lambda: _env_int("PAT_CACHE_TTL_S", 24 * 3600))
    cache_max_items: int = field(default_factory=lambda: _env_int("PAT_CACHE_MAX_ITEMS", 1024))
    # "kid:base64key[,kid:base64key...]"; the first key encrypts, all decrypt (rotation).
    cache_keys: str = field(default_factory=lambda: _env("PAT_CACHE_KEYS", ""))
    cache_hmac_key: str = field(default_factory=lambda: _env("PAT_CACHE_HMAC_KEY", ""))

    # authentication
    auth: str = field(default_factory=lambda: _env("PAT_AUTH", "firebase"))
    firebase_project_id: str = field(
        default_factory=lambda: _env("PAT_FIREBASE_PROJECT_ID", _env("GOOGLE_CLOUD_PROJECT", ""))
    )
    auth_check_revoked: bool = field(default_factory=lambda: _env_bool("PAT_AUTH_CHECK_REVOKED", True))
    allow_auth_emulator: bool = field(default_factory=lambda: _env_bool("PAT_ALLOW_AUTH_EMULATOR", False))
    # Application Default Credentials from the platform (GKE/Cloud Run metadata server) when
    # GOOGLE_APPLICATION_CREDENTIALS is unset; off by default so nothing probes the metadata address.
    firebase_adc: bool = field(default_factory=lambda: _env_bool("PAT_FIREBASE_ADC", False))
    protect_docs: bool = field(default_factory=lambda: _env_bool("PAT_PROTECT_DOCS", True))
    protect_metrics: bool = field(default_factory=lambda: _env_bool("PAT_PROTECT_METRICS", True))

    # transport
    host: str = field(default_factory=lambda: _env("PAT_HOST", "127.0.0.1"))
    tls_certfile: str = field(default_factory=lambda: _env("PAT_TLS_CERTFILE", ""))
    tls_keyfile: str = field(default_factory=lambda: _env("PAT_TLS_KEYFILE", ""))

    # logging
    log_level: str = field(default_factory=lambda: _env("PAT_LOG_LEVEL", "INFO"))


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
