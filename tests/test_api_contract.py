"""The API contract a client relies on, checked against a live server: the served OpenAPI document is
valid, every documented request example succeeds as sent, the upload takes the form fields browsers and
generators send, `bentoml.SyncHTTPClient` and raw HTTP agree, one cause has one code, client errors are
not logged as server errors, and the documented example client runs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import bentoml
import httpx
import pytest
from bentoml.exceptions import BentoMLException
from openapi_spec_validator import validate

from tests.factories import device_export, recording

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
DEVICE_NAME, DEVICE_BYTES = device_export(".agd")


@pytest.fixture(scope="module")
def document(pat_server, tokens) -> dict[str, Any]:
    response = httpx.get(
        f"{pat_server.url}/docs.json", headers={"Authorization": f"Bearer {tokens['service']}"}, timeout=30
    )
    assert response.status_code == 200
    return response.json()


def post(server, path: str, token: str, *, headers: dict | None = None, **kwargs) -> httpx.Response:
    headers = {**(headers or {}), "Authorization": f"Bearer {token}"}
    return httpx.post(f"{server.url}{path}", headers=headers, timeout=120, **kwargs)


def test_served_document_is_valid_openapi(document) -> None:
    validate(document)
    assert document["openapi"].startswith("3.1")


def test_every_documented_request_example_succeeds(pat_server, tokens, document) -> None:
    sent = []
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            for media_type, media in operation.get("requestBody", {}).get("content", {}).items():
                if "example" not in media:
                    continue
                assert media_type == "application/json", path
                response = httpx.request(
                    method.upper(),
                    f"{pat_server.url}{path}",
                    json=media["example"],
                    headers={"Authorization": f"Bearer {tokens['admin']}"},
                    timeout=120,
                )
                assert 200 <= response.status_code < 300, (path, response.text)
                sent.append(path)
    assert set(sent) >= {"/v1/analyze", "/v1/analyze/batch", "/v1/embed", "/v1/cache/invalidate"}


@pytest.mark.parametrize(
    "fields",
    [
        {},  # the form's defaults, as Swagger UI sends them untouched
        {"timezone": "UTC", "subject": "", "outputs": "metrics,pat,fhir"},  # a browser's list encoding
        {"outputs": ["metrics", "pat"]},  # OpenAPI's default list encoding: the field repeated
        {"outputs": json.dumps(["metrics", "pat"]), "subject": "Patient/1"},  # BentoML's client
    ],
)
def test_upload_takes_plain_text_form_fields(pat_server, tokens, fields) -> None:
    response = post(
        pat_server,
        "/v1/analyze/file",
        tokens["service"],
        files={"file": (DEVICE_NAME, DEVICE_BYTES, "application/octet-stream")},
        data=fields,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    wanted = fields.get("outputs", "metrics,pat,fhir")
    for part in ("metrics", "pat", "fhir"):
        assert (body[part] is not None) == (part in wanted), part


def test_upload_documents_plain_form_fields(document) -> None:
    media = document["paths"]["/v1/analyze/file"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert "encoding" not in media
    form = document["components"]["schemas"][media["schema"]["$ref"].rsplit("/", 1)[1]]
    assert form["properties"]["file"] == {**form["properties"]["file"], "type": "string", "format": "binary"}
    codes = document["paths"]["/v1/analyze/file"]["post"]["responses"]["422"]["content"]["application/json"]
    assert "malformed_multipart" in codes["examples"]


def test_error_examples_carry_their_own_codes(pat_server, tokens, document) -> None:
    """Each documented code is one the service sends with that status (the ones a test can provoke
    here are provoked), in the envelope."""
    responses = document["paths"]["/v1/analyze"]["post"]["responses"]
    assert set(responses) >= {"200", "401", "403", "404", "405", "413", "415", "422", "429", "500", "503"}
    documented = {}
    for status, response in responses.items():
        if status == "200":
            continue
        content = response["content"]["application/json"]
        assert content["schema"] == {"$ref": "#/components/schemas/ErrorBody"}
        for code, example in content["examples"].items():
            assert example["value"]["error"]["code"] == code
            documented[code] = int(status)
    assert documented["unauthenticated"] == 401 and documented["forbidden"] == 403
    assert documented["internal_error"] == 500 and documented["validation_error"] == 422
    analyze = f"{pat_server.url}/v1/analyze"
    provoked = {
        "unauthenticated": httpx.post(analyze, json={}, timeout=30),
        "forbidden": post(pat_server, "/v1/cache/invalidate", tokens["service"], json={}),
        "malformed_json": post(pat_server, "/v1/analyze", tokens["service"], content=b"{"),
        "validation_error": post(pat_server, "/v1/analyze", tokens["service"], json={}),
        "invalid_input": post(
            pat_server, "/v1/analyze", tokens["service"], json={"recording": recording(minutes=60, gap=None)}
        ),
        "unsupported_media_type": post(
            pat_server, "/v1/analyze", tokens["service"], content=b"x", headers={"Content-Type": "text/plain"}
        ),
        "method_not_allowed": httpx.get(analyze, headers={"Authorization": f"Bearer {tokens['service']}"}),
    }
    for code, response in provoked.items():
        assert response.status_code == documented[code], (code, response.text)
        assert response.json()["error"]["code"] == code


def test_same_bad_timezone_same_code_on_every_endpoint(pat_server, tokens) -> None:
    bad = "Mars/Olympus_Mons"
    json_response = post(
        pat_server,
        "/v1/analyze",
        tokens["service"],
        json={"recording": recording(timezone="UTC") | {"timezone": bad}},
    )
    upload = post(
        pat_server,
        "/v1/analyze/file",
        tokens["service"],
        files={"file": (DEVICE_NAME, DEVICE_BYTES, "application/octet-stream")},
        data={"timezone": bad},
    )
    for response in (json_response, upload):
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] == "validation_error"
        assert "not a known IANA time zone" in response.json()["error"]["message"]


def test_client_and_raw_http_agree_on_unknown_fields(pat_server, tokens) -> None:
    week = recording(minutes=1_440, gap=None)
    cases = [
        {"recording": {**week, "epoch_second": 30}},
        {"recording": week, "options": {"output": ["metrics"]}},
        {"recording": week, "option": {}},
    ]
    with bentoml.SyncHTTPClient(pat_server.url, token=tokens["service"], timeout=120) as client:
        for body in cases:
            raw = post(pat_server, "/v1/analyze", tokens["service"], json=body)
            assert raw.status_code == 422, raw.text
            assert raw.json()["error"]["code"] == "validation_error"
            with pytest.raises((BentoMLException, TypeError)) as caught:
                client.analyze(**body)
            # Top-level unknowns the client refuses itself; nested ones it forwards for the server to refuse.
            assert isinstance(caught.value, TypeError) or "validation_error" in str(caught.value)


def test_client_errors_are_not_logged_as_errors(pat_server, tokens) -> None:
    post(pat_server, "/v1/analyze", tokens["service"], json={"recording": {"values": []}})
    post(pat_server, "/v1/analyze/batch", tokens["service"], json={"recordings": []})
    lines = pat_server.logs().splitlines()
    refused = [line for line in lines if re.search(r"on /v1/analyze(/batch)? \[POST\]", line)]
    assert refused, "the refusals are logged"
    assert not [line for line in refused if "[ERROR]" in line or '"ERROR"' in line]


def test_example_client_runs(pat_server, tokens) -> None:
    completed = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "client.py")],
        env={**os.environ, "PAT_URL": pat_server.url, "PAT_TOKEN": tokens["service"]},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "served model: " in completed.stdout and "batch: ['ok', 'ok']" in completed.stdout


def test_example_client_documented_upload_and_admin_calls(pat_server, tokens, tmp_path) -> None:
    local = tmp_path / DEVICE_NAME
    local.write_bytes(DEVICE_BYTES)
    with bentoml.SyncHTTPClient(pat_server.url, token=tokens["admin"], timeout=120) as client:
        result = client.analyze_file(file=local, timezone="America/Chicago", outputs=["metrics"])
        assert result["metrics"] is not None and result["pat"] is None
        assert client.invalidate_cache(model_tag="")["removed"] >= 0
        assert client.request("GET", "/v1/models").json()["models"][0]["tag"]


def test_docs_page_says_how_to_get_a_token_and_calls_no_validator(pat_server, tokens) -> None:
    headers = {"Authorization": f"Bearer {tokens['clinician']}"}
    page = httpx.get(f"{pat_server.url}/", headers=headers, timeout=30)
    assert page.status_code == 200
    assert "Authentication is on" in page.text and "pat_role" in page.text
    assert "static_content/pat-docs.js" in page.text and "swagger-initializer.js" not in page.text
    script = httpx.get(f"{pat_server.url}/static_content/pat-docs.js", headers=headers, timeout=30)
    assert script.status_code == 200
    assert "validatorUrl: null" in script.text
