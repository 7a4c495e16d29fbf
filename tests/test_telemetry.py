"""Spans (captured with the OpenTelemetry SDK's in-memory exporter) and Prometheus metrics."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from prometheus_client import REGISTRY, generate_latest

from pat_runner import telemetry
from tests.factories import model_info


@pytest.fixture
def spans(span_exporter: InMemorySpanExporter) -> InMemorySpanExporter:
    span_exporter.clear()
    return span_exporter


def by_name(finished: tuple[ReadableSpan, ...]) -> dict[str, ReadableSpan]:
    return {s.name: s for s in finished}


def parent_name(span: ReadableSpan, named: dict[str, ReadableSpan]) -> str | None:
    if span.parent is None:
        return None
    return next(s.name for s in named.values() if s.context.span_id == span.parent.span_id)


def test_span_records_errors(spans: InMemorySpanExporter) -> None:
    with pytest.raises(RuntimeError), telemetry.span("inference", windows=2):
        raise RuntimeError("model service down")
    (failed,) = spans.get_finished_spans()
    assert failed.status.status_code is StatusCode.ERROR
    assert [event.name for event in failed.events] == ["exception"]


@pytest.mark.parametrize("name", ["subject", "id_token", "patient_ref", "Authorization", "redis_password"])
def test_attributes_that_could_leak_identity_or_credentials_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="health data or credentials"), telemetry.span("auth", **{name: "x"}):
        pass
    with telemetry.span("auth"), pytest.raises(ValueError, match="health data or credentials"):
        telemetry.set_span_attributes(**{name: "x"})


def test_arrays_are_refused_as_attributes() -> None:
    with (
        pytest.raises(TypeError, match="must be str, bool, int or float"),
        telemetry.span("preprocess", minutes=[1, 2]),
    ):  # type: ignore[arg-type]
        pass


def sample(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


def test_metrics_are_recorded_and_exposed() -> None:
    requests_before = sample("pat_requests_total", {"endpoint": "/v1/analyze", "status": "200"})
    telemetry.record_request("/v1/analyze", 200, 0.120)
    telemetry.record_cache_lookup("bypass")
    telemetry.record_cache_error("get")
    telemetry.record_circuit_state("open")
    telemetry.record_inference(batch_size=4, seconds=0.8)
    telemetry.record_model_info(
        model_info(tag="pat-m:20250101", size="M", demo=False), backend="onnxruntime", device="cpu"
    )

    assert sample("pat_requests_total", {"endpoint": "/v1/analyze", "status": "200"}) == requests_before + 1
    assert sample("pat_request_duration_seconds_bucket", {"endpoint": "/v1/analyze", "le": "0.25"}) >= 1
    assert sample("pat_cache_circuit_state") == 2
    labels = {
        "tag": "pat-m:20250101",
        "size": "M",
        "demo": "false",
        "backend": "onnxruntime",
        "device": "cpu",
    }
    assert sample("pat_model_info", labels) == 1
    assert sample("pat_inference_batch_size_bucket", {"le": "4.0"}) >= 1
    exposition = generate_latest(REGISTRY).decode()
    for name in (
        "pat_requests_total",
        "pat_request_duration_seconds_bucket",
        "pat_cache_lookups_total",
        "pat_cache_errors_total",
        "pat_cache_circuit_state",
        "pat_cache_circuit_transitions_total",
        "pat_inference_batch_size_bucket",
        "pat_inference_duration_seconds_bucket",
        "pat_model_info",
    ):
        assert f"\n{name}" in exposition, name
    telemetry.record_circuit_state("closed")


def test_timer_measures_a_block() -> None:
    with telemetry.timer() as measured:
        sum(range(10_000))
    assert 0 < measured.seconds < 1


def test_tracing_stays_off_without_otel_exporter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_TRACES_EXPORTER", raising=False)
    assert telemetry.configure_tracing() is False
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    assert telemetry.configure_tracing() is False
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "no-such-exporter")
    with pytest.raises(RuntimeError, match="no-such-exporter"):
        telemetry.configure_tracing()


def test_otel_variables_configure_the_exporter() -> None:
    # a fresh process: the global tracer provider can be installed only once
    script = (
        "from opentelemetry import trace\n"
        "from pat_runner import telemetry\n"
        "assert telemetry.configure_tracing()\n"
        "with telemetry.span('preprocess', minutes=5):\n"
        "    pass\n"
        "trace.get_tracer_provider().shutdown()\n"
    )
    env = {**os.environ, "OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "pat-test"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    assert '"name": "pat.preprocess"' in done.stdout
    assert '"service.name": "pat-test"' in done.stdout
