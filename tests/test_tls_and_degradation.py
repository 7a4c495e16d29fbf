"""A second server: HTTPS with a self-signed certificate made here, and what clients see when the
model service dies (503 `model_unavailable` for PAT outputs, metrics-only requests still answered,
recovery once BentoML has restarted the model worker)."""

from __future__ import annotations

import ipaddress
import os
import signal
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from scripts.local_server import Server, cache_key_env, start_server, stop_server
from tests.certs import self_signed
from tests.factories import recording

pytestmark = pytest.mark.integration
LOOPBACK = ipaddress.IPv4Address("127.0.0.1")


def write_certificate(directory: Path) -> tuple[Path, Path]:
    private_pem, cert_pem = self_signed("127.0.0.1", ip="127.0.0.1")
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert_pem)
    key_path.write_bytes(private_pem)
    return cert_path, key_path


@pytest.fixture(scope="module")
def tls_server(model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    directory = tmp_path_factory.mktemp("tls")
    cert, key = write_certificate(directory)
    server = start_server(
        home=model_store,
        log_path=directory / "server.log",
        scheme="https",
        extra_env={
            "PAT_AUTH": "disabled",
            "PAT_TLS_CERTFILE": str(cert),
            "PAT_TLS_KEYFILE": str(key),
            **cache_key_env(),
        },
    )
    yield server
    stop_server(server)


def test_https_round_trip(tls_server: Server) -> None:
    response = httpx.post(
        f"{tls_server.url}/v1/analyze",
        json={"recording": recording(21), "options": {"outputs": ["pat"]}},
        verify=tls_server.verify,
        timeout=120,
    )
    assert response.status_code == 200, response.text
    assert response.json()["pat"]["windows"][0]["embedding"]
    assert response.headers["strict-transport-security"].startswith("max-age=")


def test_plain_http_and_untrusted_clients_are_refused(tls_server: Server) -> None:
    with pytest.raises(httpx.HTTPError):
        httpx.get(tls_server.url.replace("https://", "http://") + "/livez", timeout=10)
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{tls_server.url}/livez", timeout=10, verify=ssl.create_default_context())


def test_model_service_failure_is_503_while_metrics_still_work(tls_server: Server) -> None:
    client = httpx.Client(base_url=tls_server.url, verify=tls_server.verify, timeout=120)
    (runner,) = tls_server.worker_pids("pat_model")
    os.kill(runner, signal.SIGKILL)
    pat = client.post("/v1/analyze", json={"recording": recording(22), "options": {"outputs": ["pat"]}})
    metrics_only = client.post(
        "/v1/analyze", json={"recording": recording(22), "options": {"outputs": ["metrics"]}}
    )
    # The call lost with the worker is retried once (backpressure.call_model_service): it is served once
    # the restarted worker accepts, or, if it is not back yet, fails cleanly.
    if pat.status_code != 200:
        assert pat.status_code == 503, pat.text
        assert pat.json()["error"]["code"] == "model_unavailable"
    assert metrics_only.status_code == 200, metrics_only.text
    assert metrics_only.json()["metrics"]["interdaily_stability"] is not None
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        again = client.post("/v1/analyze", json={"recording": recording(23), "options": {"outputs": ["pat"]}})
        if again.status_code == 200:
            break
        assert again.status_code == 503, again.text
        time.sleep(1)
    assert again.status_code == 200, "the model service did not come back"
