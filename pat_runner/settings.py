"""Every setting of the service, read from `PAT_*` environment variables in one place.

`docs/operations.md` is the reference for operators; keep the two in step. Only the two service modules
(`service.py`, `pat_runner/serving/runner.py`) call `get_settings()`; every library function takes the
`Settings` it needs as an argument. Values are validated once, when the settings are read: a bad value
stops the service at start-up with the variable's name. Tests build `Settings(...)` directly (keyword
arguments win over the environment) or call `get_settings.cache_clear()` after changing the environment.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import AliasChoices, Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from pat_runner.model import WEEK_MINUTES

DEMO_MODEL_NAME = "pat-demo"
#: Longest recording any configuration may accept; the API schema's `values` cap follows from it.
MAX_RECORDING_MINUTES_CAP = 12 * WEEK_MINUTES


class SettingsError(ValueError):
    """A setting has an invalid value; names the variable and the rule, never the value (it may be a key)."""


class Settings(BaseSettings):
    """`PAT_` + the upper-case field name is the variable (`model_tag` ← `PAT_MODEL_TAG`)."""

    model_config = SettingsConfigDict(
        env_prefix="PAT_",
        # An empty variable means "the default", as an unset one does.
        env_ignore_empty=True,
        str_strip_whitespace=True,
        frozen=True,
        extra="ignore",
        validate_by_name=True,
        protected_namespaces=(),
    )

    # model and runner
    model_tag: str = Field(f"{DEMO_MODEL_NAME}:latest")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    # BentoML's adaptive batching needs at least 2
    max_batch_size: int = Field(8, ge=2)
    max_latency_ms: int = Field(10_000, ge=1)
    # longest a lone inference call is held back to wait for others to batch with (serving/batching.py)
    max_batch_wait_ms: float = Field(5.0, ge=0)
    runner_workers: int = Field(1, ge=1)
    api_workers: int = Field(1, ge=1)
    # 0: the CPUs this process may use, divided among the model workers (serving/runner.py)
    torch_threads: int = Field(0, ge=0)
    # inference backend (pat_runner/model/backends.py); auto: the fastest that passes the accuracy gate
    backend: Literal["auto", "torch", "torch-bf16", "onnxruntime", "tensorrt"] = Field("auto")
    # time per backend of auto's start-up benchmark
    backend_bench_seconds: float = Field(1.0, gt=0, le=60)
    # where ONNX exports (and TensorRT engines) are cached; empty: next to the stored model when
    # writable, else a per-user temporary folder
    onnx_cache_dir: str = Field("")
    # free memory glibc's heap keeps for the next forward pass instead of giving it back to the kernel
    # (pat_runner/model/malloc.py); 0 leaves glibc's adaptive default
    malloc_trim_threshold_mb: int = Field(256, ge=0, le=2047)
    # ONNX Runtime's intra-op threads spin while they wait for work: faster alone, but the spinning takes
    # the CPU an API worker on the same cores needs (docs/performance.md, "Chosen defaults and why")
    ort_spin_wait: bool = Field(False)

    # backpressure (measured: docs/performance.md "Load and soak")
    # in-progress /v1/ requests per API worker; one more is answered 429 at once
    max_concurrency: int = Field(16, ge=1)
    retry_after_s: int = Field(2, ge=1)
    # in-progress inference calls the model service accepts (BentoML traffic.max_concurrency)
    model_max_concurrency: int = Field(64, ge=1)
    # on SIGTERM the model worker keeps serving the draining API workers at most this long; keep it
    # equal to `bentoml serve --timeout-graceful-shutdown` and below Kubernetes' grace period (30 s)
    shutdown_grace_s: float = Field(25.0, gt=0)
    # young-generation threshold of the garbage collector once a worker has started (CPython: 700); see
    # lifecycle.settle_heap and docs/performance.md
    gc_gen0_threshold: int = Field(10_000, ge=1)

    # preprocessing limits
    window_stride_minutes: int = Field(WEEK_MINUTES, ge=1)
    min_recording_minutes: int = Field(1_440, ge=1)
    max_recording_minutes: int = Field(8 * WEEK_MINUTES, ge=1, le=MAX_RECORDING_MINUTES_CAP)
    max_missing_fraction: float = Field(0.5, ge=0, le=1)
    # runs of exact zeros at least this long are non-wear (missing); 0 disables
    nonwear_zero_run_minutes: int = Field(1_440, ge=0)

    # clinical metrics
    # non-wear rule of the days and nights unless a request names one; the names of
    # pat_runner.actigraphy.wear.NonwearAlgorithm, not imported because the model layer reads settings
    # and must not depend on actigraphy (a test keeps the two in step)
    nonwear_algorithm: Literal["choi", "troiano", "none"] = Field("choi")
    # a night is scored when at least this fraction of its noon-to-noon window has data
    min_night_coverage: float = Field(0.9, gt=0, le=1)

    # request limits
    max_request_bytes: int = Field(16 * 2**20, ge=1)
    max_upload_bytes: int = Field(32 * 2**20, ge=1)
    # raw .gt3x uploads: a week at 100 Hz is a few hundred MB; the body is spooled to a private file
    max_raw_upload_bytes: int = Field(512 * 2**20, ge=1)
    # decoded samples of one .gt3x (pygt3x needs ~160 B of memory per sample): 8 days at 30 Hz
    max_raw_samples: int = Field(8 * 1_440 * 60 * 30, ge=1)
    max_batch_recordings: int = Field(32, ge=1)
    # the total work of one request: minutes summed over a batch's recordings
    max_request_minutes: int = Field(4 * 8 * WEEK_MINUTES, ge=1)
    # values in one JSON body, estimated from its commas before it is parsed: two weeks of 1-s epochs
    # (a week at 1 s must fit; 17 eight-week minute recordings in one batch must not)
    max_request_values: int = Field(2 * WEEK_MINUTES * 60, ge=1)
    max_url_bytes: int = Field(8192, ge=256)
    # a device file is parsed in a child process under these budgets; past them → 422/413
    upload_parse_timeout_s: float = Field(10.0, gt=0)
    upload_parse_memory_mb: int = Field(1024, ge=64)

    # cache
    redis_url: str = Field("")
    redis_ca_file: str = Field("")
    redis_password: str = Field("")
    # prefix of every Redis key, so deployments (or tests) can share one Redis server
    cache_namespace: str = Field("pat")
    redis_timeout_ms: int = Field(100, ge=1)
    redis_retry_after_s: float = Field(5.0, gt=0)
    cache_ttl_s: int = Field(24 * 3600, ge=1)
    cache_max_items: int = Field(1024, ge=1)
    # "kid:base64key[,kid:base64key...]"; the first key encrypts, all decrypt (rotation).
    cache_keys: str = Field("")
    cache_hmac_key: str = Field("")

    # authentication
    auth: str = Field("firebase")
    firebase_project_id: str = Field(
        "", validation_alias=AliasChoices("PAT_FIREBASE_PROJECT_ID", "GOOGLE_CLOUD_PROJECT")
    )
    auth_check_revoked: bool = Field(True)
    allow_auth_emulator: bool = Field(False)
    # Application Default Credentials from the platform (GKE/Cloud Run metadata server) when
    # GOOGLE_APPLICATION_CREDENTIALS is unset; off by default so nothing probes the metadata address.
    firebase_adc: bool = Field(False)
    # Read by firebase-admin itself as well; mirrored here for the start-up safety checks.
    firebase_auth_emulator_host: str = Field("", validation_alias="FIREBASE_AUTH_EMULATOR_HOST")
    google_application_credentials: str = Field("", validation_alias="GOOGLE_APPLICATION_CREDENTIALS")
    protect_docs: bool = Field(True)
    protect_metrics: bool = Field(True)

    # transport
    host: str = Field("127.0.0.1")
    tls_certfile: str = Field("")
    tls_keyfile: str = Field("")

    # logging
    log_level: str = Field("INFO")

    # benchmarking: `POST /v1/bench/floor` parses and validates an analyze request and answers without
    # analysing it, so scripts/bench_http.py can measure BentoML's own cost next to a cache hit
    bench_floor: bool = Field(False)

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.min_recording_minutes > self.max_recording_minutes:
            raise ValueError(
                "PAT_MIN_RECORDING_MINUTES must not exceed PAT_MAX_RECORDING_MINUTES "
                f"({self.min_recording_minutes} > {self.max_recording_minutes})"
            )
        return self

    def replace(self, **changes: object) -> Settings:
        """A copy with `changes`, validated like the original."""
        return Settings.model_validate({**self.model_dump(), **changes})


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read from the environment once."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"{'PAT_' + str(error['loc'][0]).upper() if error['loc'] else 'settings'}: {error['msg']}"
            for error in exc.errors(include_input=False, include_url=False)
        )
        raise SettingsError(f"invalid settings: {problems}") from None
