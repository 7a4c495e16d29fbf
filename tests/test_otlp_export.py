"""OTLP/HTTP trace export from a real `bentoml serve`, configured only by standard `OTEL_*` variables.

A small OTLP/HTTP receiver in the test decodes the protobuf `ExportTraceServiceRequest`s; the test
checks the span tree of one analysis and that no attribute carries activity values, subject ids or the
bearer token.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from pat_runner.telemetry import FORBIDDEN_ATTRIBUTE_WORDS
from scripts.local_server import Server, free_port, start_server, stop_server
from tests.factories import SENTINEL_VALUE, recording

pytestmark = pytest.mark.integration

SUBJECT = "Patient/otlp-7f3a"


@dataclass
class Received:
    spans: list[Span] = field(default_factory=list)
    resources: list[dict[str, str]] = field(default_factory=list)
    content_types: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _value(value: AnyValue) -> object:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


@pytest.fixture(scope="module")
def collector() -> Iterator[tuple[str, Received]]:
    received = Received()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            request = ExportTraceServiceRequest.FromString(body)
            with received.lock:
                received.content_types.add(self.headers["Content-Type"])
                for resource_spans in request.resource_spans:
                    received.resources.append(
                        {a.key: str(_value(a.value)) for a in resource_spans.resource.attributes}
                    )
                    for scope_spans in resource_spans.scope_spans:
                        received.spans.extend(scope_spans.spans)
            reply = ExportTraceServiceResponse().SerializeToString()
            self.send_response(200 if self.path == "/v1/traces" else 404)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", received
    server.shutdown()
    thread.join()


@pytest.fixture(scope="module")
def traced_server(
    model_store: Path, firebase_emulator, collector, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    endpoint, _ = collector
    server = start_server(
        home=model_store,
        log_path=tmp_path_factory.mktemp("otlp-logs") / "server.log",
        extra_env={
            **firebase_emulator.env(),
            "PAT_AUTH": "firebase",
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
            "OTEL_SERVICE_NAME": "pat-otlp-test",
            # BentoML's own request span is unsampled by default; sample ours on their own.
            "OTEL_TRACES_SAMPLER": "always_on",
            "OTEL_BSP_SCHEDULE_DELAY": "200",
        },
    )
    yield server
    stop_server(server)


def _wait_for(received: Received, predicate, timeout_s: float = 30) -> list[Span]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with received.lock:
            spans = list(received.spans)
        if predicate(spans):
            return spans
        time.sleep(0.2)
    raise AssertionError(f"spans not received in {timeout_s} s: {[s.name for s in spans]}")


def test_analysis_spans_arrive_over_otlp_http_as_one_tree_without_health_data(
    traced_server: Server, collector, tokens
) -> None:
    _, received = collector
    token = tokens["service"]
    body = {"recording": recording(seed=4242, subject=SUBJECT)}
    response = httpx.post(
        f"{traced_server.url}/v1/analyze",
        json=body,
        headers={"Authorization": f"Bearer {token}"},
        timeout=120,
    )
    assert response.status_code == 200, response.text

    def is_analyze_request(span: Span) -> bool:
        return span.name == "pat.request" and any(
            a.key == "endpoint" and _value(a.value) == "/v1/analyze" for a in span.attributes
        )

    def has_request_tree(spans: list[Span]) -> bool:
        # The request span ends last; FHIR Observations are formatted (pat.format) inside the cache miss.
        return any(is_analyze_request(s) for s in spans)

    spans = _wait_for(received, has_request_tree)
    assert received.content_types == {"application/x-protobuf"}
    assert {"service.name": "pat-otlp-test"}.items() <= received.resources[0].items()

    (root,) = [s for s in spans if is_analyze_request(s)]
    tree = [s for s in spans if s.trace_id == root.trace_id]
    by_id = {s.span_id: s for s in tree}

    def ancestors(span: Span) -> list[str]:
        chain = []
        while span.parent_span_id in by_id:
            span = by_id[span.parent_span_id]
            chain.append(span.name)
        return chain

    names = {s.name for s in tree}
    assert {"pat.request", "pat.auth", "pat.preprocess", "pat.cache", "pat.inference", "pat.format"} <= names
    for span in tree:
        if span is not root:
            assert ancestors(span)[-1] == "pat.request", (span.name, ancestors(span))
        assert span.end_time_unix_nano >= span.start_time_unix_nano > 0
    inference = next(s for s in tree if s.name == "pat.inference")
    assert "pat.cache" in ancestors(inference)

    forbidden = [str(SENTINEL_VALUE), SUBJECT, "otlp-7f3a", token]
    for span in spans:
        for attribute in span.attributes:
            value = _value(attribute.value)
            assert isinstance(value, str | bool | int | float), (span.name, attribute.key)
            assert not any(word in attribute.key.lower() for word in FORBIDDEN_ATTRIBUTE_WORDS)
            assert not any(secret in str(value) for secret in forbidden), (span.name, attribute.key)
        for event in span.events:
            for attribute in event.attributes:
                assert not any(secret in str(_value(attribute.value)) for secret in forbidden)
