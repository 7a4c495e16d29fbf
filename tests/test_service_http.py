"""The whole service over real HTTP: `bentoml serve` in a subprocess, called through
`bentoml.SyncHTTPClient` and raw HTTP with real Firebase ID tokens from the Auth Emulator."""

from __future__ import annotations

import http.client
import json
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import bentoml
import httpx
import numpy as np
import pytest
from bentoml.exceptions import BentoMLException

from pat_runner.serving.compact import encode_values
from tests.factories import recording

pytestmark = pytest.mark.integration

SHARED = Path(__file__).resolve().parents[2] / "shared"
ACTIGRAPHY = SHARED / "data" / "actigraphy"


@pytest.fixture(scope="module")
def token(tokens) -> str:
    return tokens["service"]


def post(server, path: str, token: str | None, *, headers: dict | None = None, **kwargs) -> httpx.Response:
    headers = {**(headers or {}), **({"Authorization": f"Bearer {token}"} if token else {})}
    return httpx.post(f"{server.url}{path}", headers=headers, timeout=120, verify=server.verify, **kwargs)


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert body["error"]["request_id"] == response.headers["x-request-id"]
    if code is not None:
        assert body["error"]["code"] == code, body
    return body["error"]


def test_analyze_through_generated_client(pat_server, token) -> None:
    with bentoml.SyncHTTPClient(pat_server.url, token=token, timeout=120) as client:
        result = client.analyze(recording=recording(1), options={"outputs": ["metrics", "pat", "fhir"]})
    assert result["model"]["demo"] is True and result["model"]["size"] == "S"
    assert result["quality"]["windows"] == 1
    assert result["quality"]["missing_minutes"] == 60
    window = result["pat"]["windows"][0]
    assert len(window["embedding"]) == 96 and np.isfinite(window["embedding"]).all()
    assert result["metrics"]["interdaily_stability"] is not None
    assert result["fhir"]["resourceType"] == "Bundle" and result["fhir"]["type"] == "collection"
    assert any("demo" in w for w in result["warnings"])


def test_analyze_raw_http_fhir_only_and_cache(pat_server, token) -> None:
    body = {"recording": recording(2), "options": {"outputs": ["fhir"]}}
    first = post(pat_server, "/v1/analyze", token, json=body)
    second = post(pat_server, "/v1/analyze", token, json=body)
    assert first.status_code == 200, first.text
    assert first.json()["cache"] == "miss" and second.json()["cache"] == "hit"
    assert first.json()["metrics"] is None and first.json()["pat"] is None
    assert len(first.json()["fhir"]["entry"]) == len(second.json()["fhir"]["entry"]) > 0
    assert first.headers["cache-control"] == "no-store"


def test_embed_per_patch(pat_server, token) -> None:
    response = post(
        pat_server, "/v1/embed", token, json={"recording": recording(3), "options": {"per_patch": True}}
    )
    assert response.status_code == 200, response.text
    window = response.json()["pat"]["windows"][0]
    patches = np.array(window["patches"])
    assert patches.shape == (560, 96)
    np.testing.assert_allclose(patches.mean(axis=0), window["embedding"], atol=1e-5)


def test_batch_takes_compact_recordings(pat_server, token) -> None:
    week = recording(7, gap=None)
    values = np.array(week.pop("values"), dtype=np.float64)
    compact = {**week, "values_b64": encode_values(values)}
    response = post(pat_server, "/v1/analyze/batch", token, json={"recordings": [compact]})
    assert response.status_code == 200, response.text
    (item,) = response.json()["results"]
    assert item["error"] is None and item["result"]["quality"]["total_minutes"] == values.size


def test_batch_keeps_order_and_reports_item_errors(pat_server, token) -> None:
    too_short = recording(5, minutes=100, gap=None)
    with bentoml.SyncHTTPClient(pat_server.url, token=token, timeout=120) as client:
        result = client.analyze_batch(
            recordings=[recording(4), too_short, recording(6)], options={"outputs": ["pat"]}
        )
    items = result["results"]
    assert [item["error"] is None for item in items] == [True, False, True]
    assert items[1]["error"]["code"] == "invalid_input" and "recordings[1]" in items[1]["error"]["message"]
    single = post(pat_server, "/v1/embed", token, json={"recording": recording(6)}).json()
    np.testing.assert_allclose(
        items[2]["result"]["pat"]["windows"][0]["embedding"],
        single["pat"]["windows"][0]["embedding"],
        atol=1e-5,
    )


@pytest.mark.parametrize(
    ("filename", "timezone"),
    [
        ("ActiSleepPlus-RawData-Day01.agd", "America/Chicago"),
        ("TAS1E25150490_2018-03-28_60sec.csv", "America/New_York"),
        ("test_sample.AWD", "Europe/London"),
    ],
)
def test_analyze_file_real_device_exports(pat_server, token, filename: str, timezone: str) -> None:
    path = ACTIGRAPHY / filename
    if not path.exists():
        pytest.skip(f"{path} not present (../shared is provided in CI)")
    response = post(
        pat_server,
        "/v1/analyze/file",
        token,
        files={"file": (filename, path.read_bytes(), "application/octet-stream")},
        data={"timezone": timezone, "outputs": json.dumps(["metrics", "fhir"])},
    )
    assert response.status_code == 200, response.text
    assert response.json()["quality"]["total_minutes"] >= 1_440


def test_analyze_file_through_generated_client(pat_server, token, tmp_path) -> None:
    path = ACTIGRAPHY / "test_sample.AWD"
    if not path.exists():
        pytest.skip(f"{path} not present (../shared is provided in CI)")
    local = tmp_path / "upload.AWD"
    local.write_bytes(path.read_bytes())
    with bentoml.SyncHTTPClient(pat_server.url, token=token, timeout=120) as client:
        result = client.analyze_file(file=local, timezone="Europe/London", outputs=["metrics"])
    assert result["metrics"]["interdaily_stability"] is not None


def test_upload_without_timezone_warns_and_names_the_chosen_algorithms(pat_server, token) -> None:
    path = ACTIGRAPHY / "TAS1D47140221_2019-04-11_60sec.csv"
    if not path.exists():
        pytest.skip(f"{path} not present (../shared is provided in CI)")
    form = {
        "outputs": json.dumps(["metrics", "fhir"]),
        "sleep_period_algorithm": "actigraph",
        "nonwear_algorithm": "troiano",
    }
    files = {"file": (path.name, path.read_bytes(), "text/csv")}
    response = post(pat_server, "/v1/analyze/file", token, files=files, data=form)
    assert response.status_code == 200, response.text
    body = response.json()
    assert any("no timezone was given" in warning for warning in body["warnings"])
    metrics = body["metrics"]
    assert (metrics["sleep_period_algorithm"], metrics["nonwear_algorithm"]) == ("actigraph", "troiano")
    methods = {
        entry["resource"]["method"]["text"]
        for entry in body["fhir"]["entry"]
        if entry["resource"].get("method") and "sleep/wake" in entry["resource"]["method"]["text"]
    }
    assert methods and all("ActiGraph sleep-period" in m and "Troiano" in m for m in methods)
    with_zone = post(pat_server, "/v1/analyze/file", token, files=files, data={**form, "timezone": "UTC"})
    assert with_zone.status_code == 200, with_zone.text
    assert not any("no timezone" in warning for warning in with_zone.json()["warnings"])


def test_week_at_one_second_epochs_through_json_and_upload(pat_server, token) -> None:
    # Before: `values` capped at 483,840 items (5.6 days at 1 s) although the minute limit is 56 days.
    rng = np.random.default_rng(10)
    values = rng.poisson(3.0, 10_080 * 60).astype(float)
    body = {
        "recording": {
            "start": "2024-05-06T00:00:00Z",
            "timezone": "UTC",
            "epoch_seconds": 1,
            "values": values.tolist(),
        },
        "options": {"outputs": ["metrics"]},
    }
    response = post(pat_server, "/v1/analyze", token, json=body)
    assert response.status_code == 200, response.text[:500]
    quality = response.json()["quality"]
    assert (quality["epoch_seconds"], quality["total_minutes"], quality["missing_minutes"]) == (1, 10_080, 0)
    start = np.datetime64("2024-05-06T00:00:00")
    stamps = np.datetime_as_string(start + np.arange(values.size).astype("timedelta64[s]"), unit="s")
    csv = "timestamp,axis1\n" + "\n".join(f"{t},{v:g}" for t, v in zip(stamps, values, strict=True)) + "\n"
    files = {"file": ("week-1s.csv", csv.encode(), "text/csv")}
    upload = post(
        pat_server,
        "/v1/analyze/file",
        token,
        files=files,
        data={"timezone": "UTC", "outputs": json.dumps(["metrics"])},
    )
    assert upload.status_code == 200, upload.text[:500]
    assert upload.json()["quality"] == quality


def test_models(pat_server, token) -> None:
    got = httpx.get(f"{pat_server.url}/v1/models", headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert got.status_code == 200, got.text
    (model,) = got.json()["models"]
    assert model["demo"] is True and model["tag"].startswith("pat-demo:") and model["size"] == "S"
    # PAT_BACKEND defaults to auto: the model service measured every backend available here and
    # serves the fastest one that passed the accuracy gate against fp32 torch.
    selection = model["backend_selection"]
    assert selection["requested"] == "auto" and model["backend"] == selection["backend"]
    assert "torch" in selection["measurements"]
    assert selection["measurements"][model["backend"]]["passed_gate"] is True
    body = {"recording": recording(11), "options": {"outputs": ["pat"]}}
    responses = [post(pat_server, "/v1/analyze", token, json=body).json() for _ in range(2)]
    assert [r["cache"] for r in responses] == ["miss", "hit"]
    assert [r["model"]["backend"] for r in responses] == [model["backend"]] * 2
    metrics_only = {"recording": recording(12), "options": {"outputs": ["metrics"]}}
    assert post(pat_server, "/v1/analyze", token, json=metrics_only).json()["model"]["backend"] is None
    info = [line for line in pat_server.metrics(token).splitlines() if line.startswith("pat_model_info{")]
    assert len(info) == 1 and f'backend="{model["backend"]}"' in info[0], info


def test_cache_invalidate_admin(pat_server, tokens) -> None:
    body = {"recording": recording(7), "options": {"outputs": ["metrics"]}}
    assert post(pat_server, "/v1/analyze", tokens["clinician"], json=body).json()["cache"] == "miss"
    assert post(pat_server, "/v1/analyze", tokens["clinician"], json=body).json()["cache"] == "hit"
    removed = post(pat_server, "/v1/cache/invalidate", tokens["admin"], json={})
    assert removed.status_code == 200 and removed.json()["removed"] >= 1
    assert post(pat_server, "/v1/analyze", tokens["clinician"], json=body).json()["cache"] == "miss"


# ---- errors: one body shape, stable codes, never a 500 ----


def test_malformed_json_is_422(pat_server, token) -> None:
    response = post(
        pat_server,
        "/v1/analyze",
        token,
        content=b'{"recording": {"start": ',
        headers={"Content-Type": "application/json"},
    )
    assert_error(response, 422, "malformed_json")


def test_schema_violation_is_422_naming_the_field(pat_server, token) -> None:
    body = {"recording": {**recording(8), "timezone": "Mars/Olympus_Mons"}}
    error = assert_error(post(pat_server, "/v1/analyze", token, json=body), 422, "validation_error")
    assert "recording.timezone" in error["message"]


def test_preprocessing_violation_is_422(pat_server, token) -> None:
    body = {"recording": recording(9, minutes=600, gap=None)}
    error = assert_error(post(pat_server, "/v1/analyze", token, json=body), 422, "invalid_input")
    assert "1,440" in error["message"] or "minimum" in error["message"]


def test_body_too_large_is_413(pat_server, token) -> None:
    huge = b'{"recording": {"values": [' + b"1," * 9_000_000 + b"1]}}"
    assert_error(post(pat_server, "/v1/analyze", token, content=huge), 413, "payload_too_large")


def test_unsupported_file_is_415(pat_server, token) -> None:
    response = post(
        pat_server,
        "/v1/analyze/file",
        token,
        files={"file": ("notes.pdf", b"%PDF-1.7 not actigraphy", "application/pdf")},
        data={"timezone": "UTC"},
    )
    assert_error(response, 415, "unsupported_media_type")


def test_url_in_place_of_upload_is_refused(pat_server, token) -> None:
    url = "http://127.0.0.1:9/secret"
    form = post(pat_server, "/v1/analyze/file", token, data={"file": url, "timezone": "UTC"})
    assert_error(form, 415, "unsupported_media_type")
    multipart = post(
        pat_server,
        "/v1/analyze/file",
        token,
        data={"file": url, "timezone": "UTC"},
        files={"note": ("note.txt", b"not the file field", "text/plain")},
    )
    assert_error(multipart, 422, "validation_error")


def test_unknown_path_is_enveloped_404(pat_server, token) -> None:
    assert_error(post(pat_server, "/v1/nope", token, json={}), 404, "not_found")


# ---- batching ----


def test_concurrent_requests_are_batched_without_errors(pat_server, token) -> None:
    bodies = [{"recording": recording(100 + i, subject=None)} for i in range(256)]
    client = httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=300)

    def call(body: dict) -> httpx.Response:
        return client.post(f"{pat_server.url}/v1/embed", json=body)

    with ThreadPoolExecutor(max_workers=32) as pool:
        responses = list(pool.map(call, bodies))
    assert [r.status_code for r in responses] == [200] * 256, {r.status_code for r in responses}
    for i in (0, 127, 255):
        alone = call(bodies[i]).json()
        np.testing.assert_allclose(
            responses[i].json()["pat"]["windows"][0]["embedding"],
            alone["pat"]["windows"][0]["embedding"],
            atol=1e-5,
        )
    # Only the histogram of `infer_pooled` (/v1/embed without per_patch); `infer` and `infer_attention`
    # have their own.
    metrics = "\n".join(
        line for line in pat_server.metrics(token).splitlines() if 'method_name="infer_pooled"' in line
    )
    buckets = {
        float(le): float(count)
        for le, count in re.findall(
            r'bentoml_service_adaptive_batch_size_bucket\{[^}]*le="([0-9.]+)"[^}]*\} ([0-9.e+]+)', metrics
        )
    }
    assert buckets, "no adaptive batch size histogram on /metrics"
    single_or_less = buckets.get(1.0, 0.0)
    total = max(buckets.values())
    assert total > single_or_less, f"no batch larger than 1 was formed: {buckets}"


def test_generated_client_raises_on_error_body(pat_server, token) -> None:
    with (
        bentoml.SyncHTTPClient(pat_server.url, token=token, timeout=60) as client,
        pytest.raises(BentoMLException, match="invalid_input"),
    ):
        client.analyze(recording=recording(11, minutes=500, gap=None))


def test_metrics_endpoint_exposes_service_metrics(pat_server, token) -> None:
    post(pat_server, "/v1/analyze", token, json={"recording": recording(12), "options": {"outputs": ["pat"]}})
    text = pat_server.metrics(token)
    for name in (
        "pat_requests_total",
        "pat_request_duration_seconds_bucket",
        "pat_cache_lookups_total",
        "pat_inference_batch_size_bucket",
        "pat_inference_duration_seconds_bucket",
        "pat_model_info",
        "bentoml_service_adaptive_batch_size_bucket",
    ):
        assert name in text, f"{name} missing from /metrics"
    assert re.search(r'pat_requests_total\{[^}]*endpoint="/v1/analyze"[^}]*status="200"', text)
    assert re.search(r'pat_model_info\{[^}]*demo="true"', text)


def test_an_idle_connection_outlives_the_clients_keep_alive(pat_server) -> None:
    # httpx (under bentoml.SyncHTTPClient) reuses a connection idle for up to 5 s, uvicorn's default
    # keep-alive: the server must not be closing it by then (docs/deployment.md, "Keep-alive").
    url = urlsplit(pat_server.url)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    try:
        connection.request("GET", "/livez")
        assert connection.getresponse().read() is not None
        local_address = connection.sock.getsockname()
        time.sleep(6)
        connection.request("GET", "/livez")
        # A closed connection fails here (RemoteDisconnected), on the same socket: no silent reconnect.
        assert connection.getresponse().status == 200
        assert connection.sock.getsockname() == local_address
    finally:
        connection.close()
