"""The committed OpenAPI document (equal to the served one: `test_openapi_document_is_current`) and the
HTTP helpers that keep clients and the server in agreement, without a server."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from bentoml.exceptions import InternalServerError, InvalidArgument
from openapi_spec_validator import validate
from pydantic import BaseModel, ValidationError
from starlette.datastructures import Headers
from starlette.formparsers import MultiPartParser

from pat_runner.serving.http import ClientErrorLogFilter, _check_upload, client_schema
from pat_runner.serving.openapi import OPERATIONS, example_recording, request_examples
from pat_runner.settings import Settings

DOCUMENT = json.loads((Path(__file__).resolve().parents[1] / "docs" / "openapi.json").read_text())


def operations() -> list[tuple[str, str, dict[str, Any]]]:
    return [(path, method, op) for path, ops in DOCUMENT["paths"].items() for method, op in ops.items()]


def walk(node: Any):
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def test_document_validates_as_openapi_3_1() -> None:
    validate(DOCUMENT)
    assert DOCUMENT["openapi"] == "3.1.0"


def test_every_operation_has_summary_tag_and_unique_id() -> None:
    declared = {tag["name"] for tag in DOCUMENT["tags"]}
    ids = []
    for path, method, op in operations():
        assert op["summary"], (path, method)
        assert op["tags"] and set(op["tags"]) <= declared, (path, method)
        ids.append(op["operationId"])
    assert len(ids) == len(set(ids))
    assert {op.operation_id for op in OPERATIONS.values()} | {"models"} <= set(ids)


def test_every_schema_is_used() -> None:
    used = {
        node["$ref"].rsplit("/", 1)[1]
        for node in walk(DOCUMENT)
        if isinstance(node.get("$ref"), str) and node["$ref"].startswith("#/components/schemas/")
    }
    assert set(DOCUMENT["components"]["schemas"]) == used


def test_no_swagger_2_or_mixed_version_syntax() -> None:
    for node in walk(DOCUMENT):
        assert node.get("type") != "file"
        assert "nullable" not in node
    for path, _method, op in operations():
        for media in op.get("requestBody", {}).get("content", {}).values():
            assert "encoding" not in media, path


def test_every_error_status_documents_its_codes_in_the_envelope() -> None:
    for path, _method, op in operations():
        for status, response in op["responses"].items():
            if not status.startswith(("4", "5")):
                continue
            content = response["content"]["application/json"]
            assert content["schema"] == {"$ref": "#/components/schemas/ErrorBody"}, (path, status)
            assert content["examples"], (path, status)
            for code, example in content["examples"].items():
                assert example["value"]["error"]["code"] == code
                assert f"`{code}`" in response["description"]
    all_codes = {
        code
        for _path, _method, op in operations()
        for status, response in op["responses"].items()
        if status[0] in "45"
        for code in response["content"]["application/json"]["examples"]
    }
    assert {"malformed_multipart", "method_not_allowed", "internal_error", "invalid_input"} <= all_codes


def test_examples_are_the_shortest_recording_the_settings_allow() -> None:
    settings = Settings(min_recording_minutes=2_000)
    examples = request_examples(settings)
    assert len(examples["analyze"]["recording"]["values"]) == 2_000
    assert examples["analyze_batch"]["recordings"][0] == example_recording(2_000)
    analyze = DOCUMENT["paths"]["/v1/analyze"]["post"]["requestBody"]["content"]["application/json"]
    assert len(analyze["example"]["recording"]["values"]) == Settings().min_recording_minutes


def test_limits_are_stated() -> None:
    settings = Settings()
    values = DOCUMENT["components"]["schemas"]["Recording"]["properties"]["values"]["description"]
    assert f"{settings.min_recording_minutes:,}" in values and f"{settings.max_recording_minutes:,}" in values
    assert f"{settings.max_batch_recordings:,} recordings per batch" in DOCUMENT["info"]["description"]


def test_client_schema_keeps_top_level_fields_and_forwards_nested_ones() -> None:
    schema = {
        "routes": [
            {
                "input": {
                    "properties": {
                        "recording": {"type": "object", "properties": {"values": {}}},
                        "recordings": {"type": "array", "items": {"type": "object", "properties": {}}},
                    }
                }
            }
        ]
    }
    out = client_schema(schema)["routes"][0]["input"]["properties"]
    assert set(out) == {"recording", "recordings"}
    assert "properties" not in out["recording"] and "properties" not in out["recordings"]["items"]
    assert "properties" in schema["routes"][0]["input"]["properties"]["recording"], "input not modified"


def _record(exc: BaseException) -> logging.LogRecord:
    record = logging.LogRecord(
        "bentoml._internal.server.http_app",
        logging.ERROR,
        __file__,
        1,
        "Exception on %s [%s]",
        ("/v1/analyze", "POST"),
        (type(exc), exc, None),
    )
    ClientErrorLogFilter().filter(record)
    return record


class _Model(BaseModel):
    n: int


@pytest.mark.parametrize("exc", [InvalidArgument("bad"), "validation"])
def test_client_errors_are_logged_at_info(exc) -> None:
    if exc == "validation":
        with pytest.raises(ValidationError) as caught:
            _Model.model_validate({"n": "x"})
        exc = caught.value
    record = _record(exc)
    assert record.levelno == logging.INFO and record.exc_info is None
    assert "/v1/analyze" in record.getMessage()


@pytest.mark.parametrize("exc", [InternalServerError("boom"), RuntimeError("boom")])
def test_server_errors_stay_errors(exc: BaseException) -> None:
    record = _record(exc)
    assert record.levelno == logging.ERROR and record.exc_info is not None


def _multipart(parts: list[tuple[str, str | None, bytes]]) -> tuple[Headers, bytes]:
    body = b""
    for name, filename, content in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        body += f"--b\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + content + b"\r\n"
    body += b"--b--\r\n"
    return Headers({"content-type": "multipart/form-data; boundary=b"}), body


async def _once(body: bytes) -> AsyncIterator[bytes]:
    yield body


async def test_repeated_text_fields_are_merged_into_a_json_array() -> None:
    headers, body = _multipart(
        [("file", "week.agd", b"\x00data"), ("outputs", None, b"metrics"), ("outputs", None, b"pat")]
    )
    problem, merged = await _check_upload(headers, _once(body))
    assert problem is None and merged is not None
    boundary = merged[2 : merged.index(b"\r\n")].decode()

    async def stream():
        yield merged

    form = await MultiPartParser(
        Headers({"content-type": f"multipart/form-data; boundary={boundary}"}), stream()
    ).parse()
    assert json.loads(form["outputs"]) == ["metrics", "pat"]
    assert await form["file"].read() == b"\x00data"


async def test_single_fields_pass_unchanged_and_text_file_field_is_refused() -> None:
    headers, body = _multipart([("file", "week.agd", b"x"), ("outputs", None, b"metrics,pat")])
    assert await _check_upload(headers, _once(body)) == (None, None)
    headers, body = _multipart([("file", None, b"https://example.test/x.agd")])
    problem, _ = await _check_upload(headers, _once(body))
    assert problem is not None and problem[:2] == (422, "validation_error")
