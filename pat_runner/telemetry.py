"""Traces and Prometheus metrics of the service — never health data. (JSON logs: `pat_runner.serving.audit`.)

Traces: spans come from the OpenTelemetry API (`tracer = trace.get_tracer("pat_runner")`). Without a
configured SDK they are no-ops. `configure_tracing()` installs an SDK `TracerProvider` only when the
standard `OTEL_TRACES_EXPORTER` variable names an exporter (OpenTelemetry SDK environment variable
specification); the exporter, resource (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`) and sampler
(`OTEL_TRACES_SAMPLER`) are then read from the `OTEL_*` variables. BentoML 1.4 keeps its own provider
for its HTTP server span (configured by its `tracing:` options, sample rate 0 by default) and never
installs a global one, so the two do not overwrite each other; our spans become children of BentoML's
request span when it is sampled — see docs/operations.md for the sampler settings that fit together.

Metrics: created with `prometheus_client` on first use, not at import. BentoML sets
`PROMETHEUS_MULTIPROC_DIR` in each worker after the service module is imported; creating metrics
earlier would bind them to single-process mode and hide them from `/metrics` (see the note in
`bentoml/metrics.py`, BentoML 1.4). Outside a server they land in the default registry.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING

from opentelemetry import trace

if TYPE_CHECKING:
    from prometheus_client import Counter, Gauge, Histogram

    from pat_runner.model.info import ModelInfo

TRACER_NAME = "pat_runner"
tracer = trace.get_tracer(TRACER_NAME)

AttributeValue = str | bool | int | float
SAFE_ATTRIBUTE_TYPES = (str, bool, int, float)
# Spans carry sizes, hashes, tags, outcomes; never values, results, subject ids or tokens. Only scalars
# are accepted (no arrays of activity), and names that point at identities or credentials are refused.
FORBIDDEN_ATTRIBUTE_WORDS = ("token", "subject", "patient", "authorization", "password", "secret")

CIRCUIT_STATE_CODES = {"closed": 0, "half_open": 1, "open": 2}
LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)

_tracing_lock = threading.Lock()
_tracing_configured = False


@contextmanager
def span(name: str, **attributes: AttributeValue) -> Iterator[trace.Span]:
    """A span named `pat.<name>` with scalar attributes; errors are recorded and re-raised.

    Attribute names that suggest health data or credentials are refused, so a careless call site fails
    in tests rather than leaking into a trace backend.
    """
    for key, value in attributes.items():
        if any(word in key.lower() for word in FORBIDDEN_ATTRIBUTE_WORDS):
            raise ValueError(f"span attribute {key!r} may carry health data or credentials")
        if not isinstance(value, SAFE_ATTRIBUTE_TYPES):
            raise TypeError(f"span attribute {key!r} must be str, bool, int or float")
    with tracer.start_as_current_span(f"pat.{name}", attributes=attributes) as current:
        yield current


def set_span_attributes(**attributes: AttributeValue) -> None:
    """Add attributes (e.g. an outcome known only at the end) to the current span, same rules as `span`."""
    current = trace.get_current_span()
    for key, value in attributes.items():
        if any(word in key.lower() for word in FORBIDDEN_ATTRIBUTE_WORDS):
            raise ValueError(f"span attribute {key!r} may carry health data or credentials")
        current.set_attribute(key, value)


def otlp_exporter_name() -> str:
    """The entry point behind `otlp`, chosen by the standard protocol variables (default
    `http/protobuf`, the one installed: `opentelemetry-exporter-otlp-proto-http`)."""
    protocol = (
        os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    ).strip()
    return {"http/protobuf": "otlp_proto_http", "grpc": "otlp_proto_grpc"}.get(protocol, f"otlp ({protocol})")


def configure_tracing() -> bool:
    """Install an SDK tracer provider when `OTEL_TRACES_EXPORTER` names exporters; idempotent.

    Exporters are looked up by name in the `opentelemetry_traces_exporter` entry-point group, the same
    registry the OpenTelemetry auto-configuration uses (`console` ships with the SDK; `otlp` is OTLP/HTTP
    from `opentelemetry-exporter-otlp-proto-http`, configured by the `OTEL_EXPORTER_OTLP_*` variables).
    Returns whether a provider was installed.
    """
    global _tracing_configured
    names = [
        name.strip()
        for name in os.environ.get("OTEL_TRACES_EXPORTER", "").split(",")
        if name.strip() and name.strip() != "none"
    ]
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true" or not names:
        return False
    with _tracing_lock:
        if _tracing_configured:
            return True
        from importlib.metadata import entry_points

        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        available = {ep.name: ep for ep in entry_points(group="opentelemetry_traces_exporter")}
        names = [otlp_exporter_name() if name == "otlp" else name for name in names]
        missing = [name for name in names if name not in available]
        if missing:
            raise RuntimeError(
                f"OTEL_TRACES_EXPORTER names {missing} but no such exporter is installed "
                f"(available: {sorted(available)})"
            )
        provider = TracerProvider(resource=Resource.create())
        for name in names:
            provider.add_span_processor(BatchSpanProcessor(available[name].load()()))
        trace.set_tracer_provider(provider)
        _tracing_configured = True
        logging.getLogger(__name__).info("tracing exporters configured: %s", ",".join(names))
        return True


@dataclass(frozen=True)
class _Metrics:
    requests: Counter
    request_latency: Histogram
    cache_lookups: Counter
    cache_errors: Counter
    circuit_state: Gauge
    circuit_transitions: Counter
    batch_size: Histogram
    inference_latency: Histogram
    worker_windows: Counter
    model_retries: Counter
    model_info: Gauge
    model_unavailable: Counter
    worker_starts: Counter
    rejections: Counter


@lru_cache(maxsize=1)
def metrics() -> _Metrics:
    """The service's Prometheus metrics, created once per process on first use (see module docstring)."""
    from prometheus_client import Counter, Gauge, Histogram

    return _Metrics(
        requests=Counter("pat_requests", "API requests by endpoint and HTTP status.", ["endpoint", "status"]),
        request_latency=Histogram(
            "pat_request_duration_seconds",
            "End-to-end latency of API requests, auth to response.",
            ["endpoint"],
            buckets=LATENCY_BUCKETS_S,
        ),
        cache_lookups=Counter(
            "pat_cache_lookups",
            "Result-cache lookups by outcome: hit, miss, bypass (cache degraded, served uncached).",
            ["outcome"],
        ),
        cache_errors=Counter(
            "pat_cache_errors",
            "Result-cache failures by operation (get, set, invalidate, decrypt); none fails a request.",
            ["operation"],
        ),
        circuit_state=Gauge(
            "pat_cache_circuit_state",
            "Redis circuit breaker: 0 closed, 1 half-open, 2 open (worst live worker).",
            multiprocess_mode="livemax",
        ),
        circuit_transitions=Counter(
            "pat_cache_circuit_transitions", "Redis circuit-breaker state changes by new state.", ["state"]
        ),
        batch_size=Histogram(
            "pat_inference_batch_size", "Windows per batch sent to the PAT model.", buckets=BATCH_SIZE_BUCKETS
        ),
        worker_windows=Counter(
            "pat_model_worker_windows",
            "Week windows run by each model-service worker (shows how load spreads across workers).",
            ["worker"],
        ),
        model_retries=Counter(
            "pat_model_retries", "API→model-service calls retried once after a transport failure."
        ),
        inference_latency=Histogram(
            "pat_inference_duration_seconds",
            "Latency of one PAT inference call (one batch).",
            buckets=LATENCY_BUCKETS_S,
        ),
        model_info=Gauge(
            "pat_model_info",
            "The served PAT model (value 1); labels tag, size, demo, inference backend and device.",
            ["tag", "size", "demo", "backend", "device"],
            multiprocess_mode="livemax",
        ),
        model_unavailable=Counter(
            "pat_model_unavailable",
            "Calls from the API to the model service that failed (answered 503 model_unavailable), by error.",
            ["error"],
        ),
        # Dead workers' counts stay in the multiprocess directory, so restarts add up.
        worker_starts=Counter(
            "pat_worker_starts", "Worker processes that finished start-up, by service.", ["service"]
        ),
        rejections=Counter(
            "pat_rejections",
            "Requests refused by backpressure, by reason (concurrency, model_queue, model_latency).",
            ["reason"],
        ),
    )


def record_request(endpoint: str, status: int, seconds: float) -> None:
    m = metrics()
    m.requests.labels(endpoint=endpoint, status=str(status)).inc()
    m.request_latency.labels(endpoint=endpoint).observe(seconds)


def record_cache_lookup(outcome: str) -> None:
    metrics().cache_lookups.labels(outcome=outcome).inc()


def record_cache_error(operation: str) -> None:
    metrics().cache_errors.labels(operation=operation).inc()


def record_circuit_state(state: str) -> None:
    m = metrics()
    m.circuit_state.set(CIRCUIT_STATE_CODES[state])
    m.circuit_transitions.labels(state=state).inc()


def record_model_retry() -> None:
    metrics().model_retries.inc()


def record_inference(batch_size: int, seconds: float, *, worker: int | None = None) -> None:
    m = metrics()
    m.batch_size.observe(batch_size)
    m.inference_latency.observe(seconds)
    m.worker_windows.labels(worker="unknown" if worker is None else str(worker)).inc(batch_size)


def record_model_unavailable(error: str) -> None:
    metrics().model_unavailable.labels(error=error).inc()


def record_worker_start(service: str) -> None:
    metrics().worker_starts.labels(service=service).inc()


def record_rejection(reason: str) -> None:
    metrics().rejections.labels(reason=reason).inc()


def record_model_info(model: ModelInfo, *, backend: str, device: str) -> None:
    metrics().model_info.labels(
        tag=model.tag, size=model.size, demo=str(model.demo).lower(), backend=backend, device=device
    ).set(1)


@dataclass
class Timer:
    started: float = field(default_factory=time.perf_counter)
    seconds: float = 0.0


@contextmanager
def timer() -> Iterator[Timer]:
    """Measure a block: `with timer() as t: ...; t.seconds`."""
    measured = Timer()
    try:
        yield measured
    finally:
        measured.seconds = time.perf_counter() - measured.started
