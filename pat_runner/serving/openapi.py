"""The OpenAPI document clients see: BentoML's generated spec, rewritten into valid OpenAPI 3.1.

BentoML's document mixes OpenAPI versions (3.1-style `{"type": "null"}` in a 3.0.2 document, Swagger 2's
`"type": "file"`), flattens optional response fields into non-nullable ones, lists schemas no endpoint
uses and documents errors in a shape the service never sends. `enrich` rebuilds what clients rely on
from the service's own pydantic models: request and response schemas, the bearer-token security
scheme, every error status with its codes and an example per code, plain form fields for the upload,
request examples that succeed as sent, the limits the service enforces, tags and summaries, and the
`GET /v1/models` route (a mounted Starlette route BentoML does not know). Served at `/docs.json` and
exported to `docs/openapi.json` by `scripts/export_openapi.py`; `openapi-spec-validator` validates it.
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from pydantic import BaseModel

from pat_runner import __version__
from pat_runner.actigraphy.fhir_in import FHIR_EXAMPLE
from pat_runner.serving.schemas import (
    AnalyzeResponse,
    BatchResponse,
    EmbedResponse,
    ErrorBody,
    InvalidateResponse,
    ModelsResponse,
)
from pat_runner.settings import Settings

OPENAPI_VERSION = "3.1.0"
REF_PREFIX = "#/components/schemas/"
API_PREFIX = "/v1/"
OPEN_PATHS = ("/livez", "/readyz", "/healthz")
TAG_ANALYSIS = "Analysis"
TAG_ADMIN = "Administration"
TAG_INFRA = "Infrastructure"
TAGS = [
    {"name": TAG_ANALYSIS, "description": "Analyse recordings: clinical metrics, PAT embeddings, FHIR."},
    {"name": TAG_ADMIN, "description": "Operator actions (admin role)."},
    {"name": TAG_INFRA, "description": "Health probes and Prometheus metrics."},
]


class Operation(BaseModel):
    """How one BentoML API appears in the document."""

    operation_id: str
    summary: str
    tag: str
    request_schema: str
    response: type[BaseModel]


# Keyed by BentoML's `x-bentoml-name`; the operation ids are the method names of `bentoml.SyncHTTPClient`.
OPERATIONS = {
    "analyze": Operation(
        operation_id="analyze",
        summary="Analyse one recording",
        tag=TAG_ANALYSIS,
        request_schema="AnalyzeRequest",
        response=AnalyzeResponse,
    ),
    "analyze_batch": Operation(
        operation_id="analyze_batch",
        summary="Analyse several recordings in one request",
        tag=TAG_ANALYSIS,
        request_schema="AnalyzeBatchRequest",
        response=BatchResponse,
    ),
    "analyze_file": Operation(
        operation_id="analyze_file",
        summary="Analyse an uploaded device file",
        tag=TAG_ANALYSIS,
        request_schema="AnalyzeFileForm",
        response=AnalyzeResponse,
    ),
    "analyze_fhir": Operation(
        operation_id="analyze_fhir",
        summary="Analyse a recording stored as FHIR (Observation or Bundle)",
        tag=TAG_ANALYSIS,
        request_schema="AnalyzeFhirRequest",
        response=AnalyzeResponse,
    ),
    "embed": Operation(
        operation_id="embed",
        summary="PAT embeddings of one recording",
        tag=TAG_ANALYSIS,
        request_schema="EmbedRequest",
        response=EmbedResponse,
    ),
    "invalidate_cache": Operation(
        operation_id="invalidate_cache",
        summary="Drop cached results",
        tag=TAG_ADMIN,
        request_schema="InvalidateCacheRequest",
        response=InvalidateResponse,
    ),
}
INFRA_SUMMARIES = {
    "/healthz": "Liveness (deprecated alias of /livez)",
    "/livez": "Liveness probe",
    "/readyz": "Readiness probe",
    "/metrics": "Prometheus metrics",
}

# status -> (description, {code: example message}); the codes are every code the service answers with.
ERRORS: dict[str, tuple[str, dict[str, str]]] = {
    "401": (
        "Missing, malformed, expired, revoked or foreign Firebase ID token.",
        {"unauthenticated": "missing bearer token"},
    ),
    "403": (
        "Valid token without a role allowed on this endpoint.",
        {"forbidden": "this endpoint needs one of the roles: admin"},
    ),
    "404": ("No such endpoint.", {"not_found": "no such endpoint"}),
    "405": ("The endpoint exists but not with this method.", {"method_not_allowed": "method not allowed"}),
    "413": (
        "Body, upload or batch over the configured limit.",
        {"payload_too_large": "request body exceeds 16,777,216 bytes"},
    ),
    "415": (
        "Unsupported content type or device file format.",
        {"unsupported_media_type": "send the body as application/json, not text/plain"},
    ),
    "422": (
        "The request cannot be analysed; `message` says what and where.",
        {
            "malformed_json": "the body is not valid JSON",
            "validation_error": "recording.timezone: Value error, not a known IANA time zone name",
            "invalid_input": "values: the recording is 480 minutes, shorter than the minimum of 1,440",
            "malformed_multipart": "could not parse the multipart body: Too many files",
        },
    ),
    "429": (
        "At the concurrency limit; retry after a pause (`Retry-After` when sent).",
        {"overloaded": "the service is at its concurrency limit; retry later"},
    ),
    "500": (
        "Unexpected server error; the request id identifies it in the server log.",
        {"internal_error": "an unexpected error occurred; the request id identifies it in the server log"},
    ),
    "503": (
        "A dependency is unavailable or overloaded; retry later (`Retry-After`). Metrics-only requests "
        "work without the model.",
        {
            "model_unavailable": "the PAT model service is unavailable",
            "model_overloaded": "the PAT model service is overloaded (its queue is full); retry later",
            "auth_unavailable": "authentication is temporarily unavailable",
            "cache_unavailable": "the result cache is unavailable",
            "service_unavailable": "the service is temporarily unavailable; retry later",
        },
    ),
}
# Codes that only the upload endpoint, or only the admin endpoint, answers with.
UPLOAD_ONLY_CODES = {"malformed_multipart"}
ADMIN_ONLY_CODES = {"cache_unavailable"}
EXAMPLE_START = datetime(2024, 3, 4, tzinfo=ZoneInfo("America/New_York"))


def example_recording(minutes: int) -> dict[str, Any]:
    """A deterministic recording of `minutes` 60-s counts with a day/night rhythm: the shortest one the
    service analyses makes a request example small enough for the docs page that still succeeds."""
    values: list[float | None] = []
    for minute in range(minutes):
        hour = (EXAMPLE_START + timedelta(minutes=minute)).hour
        awake = 7 <= hour < 23
        values.append(float(round(300 + 250 * math.sin(minute / 29.0))) if awake else 0.0)
    return {
        "start": EXAMPLE_START.isoformat(),
        "timezone": "America/New_York",
        "epoch_seconds": 60,
        "values": values,
        "unit": "counts",
        "subject": "Patient/example-123",
    }


def example_observation(recording: dict[str, Any]) -> dict[str, Any]:
    """`recording` as the FHIR R4 Observation a health data service would store (`valueSampledData`)."""
    data = " ".join("E" if value is None else f"{value:g}" for value in recording["values"])
    return {
        **FHIR_EXAMPLE,
        "subject": {"reference": recording["subject"]},
        "effectivePeriod": {"start": recording["start"]},
        "valueSampledData": {
            **FHIR_EXAMPLE["valueSampledData"],
            "period": recording["epoch_seconds"] * 1000,
            "data": data,
        },
    }


def request_examples(settings: Settings) -> dict[str, dict[str, Any]]:
    """The documented JSON request example per operation id; each succeeds as sent."""
    recording = example_recording(settings.min_recording_minutes)
    return {
        "analyze": {"recording": recording, "options": {"outputs": ["metrics", "pat", "fhir"]}},
        "analyze_fhir": {
            "resource": example_observation(recording),
            "timezone": recording["timezone"],
            "options": {"outputs": ["metrics", "fhir"]},
        },
        "analyze_batch": {"recordings": [recording], "options": {"outputs": ["metrics"]}},
        "embed": {"recording": recording, "options": {"per_patch": False}},
        "invalidate_cache": {"model_tag": ""},
    }


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"{REF_PREFIX}{name}"}


def _description(settings: Settings) -> str:
    return f"""Real-time analysis of minute-level wrist actigraphy with the Pretrained Actigraphy Transformer
(PAT; Ruan et al., arXiv 2411.15240): classical clinical actigraphy metrics, PAT embeddings (and a fine-tuned
head's probability) and an HL7 FHIR R4 Bundle. Usage guidelines: `docs/api.md`.

**Authentication**: `Authorization: Bearer <Firebase ID token>`; the token's custom claim `pat_role`
(`clinician`, `service`, `admin`) grants access. Use *Authorize* to try calls here.

**Limits of this server**: a recording spans {settings.min_recording_minutes:,} to
{settings.max_recording_minutes:,} minutes with at most {settings.max_missing_fraction:.0%} of them missing;
PAT reads it in week windows of 10,080 minutes (shorter recordings are padded). JSON bodies up to
{settings.max_request_bytes:,} bytes, uploads up to {settings.max_upload_bytes:,} bytes, up to
{settings.max_batch_recordings:,} recordings per batch.

**Errors**: every error is `{{"error": {{"code", "message", "request_id"}}}}` with a stable `code`;
each status lists its codes and an example.

**Demo model**: responses with `model.demo: true` come from a randomly initialised PAT and carry no meaning.
"""


def _values_description(settings: Settings) -> str:
    return (
        "Activity per epoch; `null` = missing or off-wrist. The recording must span "
        f"{settings.min_recording_minutes:,} to {settings.max_recording_minutes:,} minutes "
        f"(`len(values) × epoch_seconds / 60`) with at most {settings.max_missing_fraction:.0%} missing; "
        "runs of zeros of at least "
        f"{settings.nonwear_zero_run_minutes:,} minutes count as missing (non-wear)."
    )


def _model_schemas(model: type[BaseModel], schemas: dict[str, Any]) -> None:
    schema = model.model_json_schema(ref_template=REF_PREFIX + "{model}", mode="serialization")
    schemas.update(schema.pop("$defs", {}))
    schemas[model.__name__] = schema


def _fix_schema(node: Any) -> Any:
    """JSON Schema 2020-12 as OpenAPI 3.1 takes it: files are binary strings, and a `null` default
    is allowed by the schema it belongs to."""
    if isinstance(node, list):
        return [_fix_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: _fix_schema(value) for key, value in node.items()}
    if node.get("type") == "file":
        node["type"] = "string"
        node["format"] = "binary"
    if "default" in node and node["default"] is None and not _allows_null(node):
        annotations = {k: node.pop(k) for k in ("default", "description", "title") if k in node}
        node = {"anyOf": [node, {"type": "null"}], **annotations}
    return node


def _allows_null(schema: dict[str, Any]) -> bool:
    kind = schema.get("type")
    if kind == "null" or (isinstance(kind, list) and "null" in kind):
        return True
    return any(
        isinstance(option, dict) and _allows_null(option)
        for option in schema.get("anyOf", []) + schema.get("oneOf", [])
    )


def _referenced(node: Any, found: set[str]) -> None:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith(REF_PREFIX):
            found.add(ref.removeprefix(REF_PREFIX))
        for value in node.values():
            _referenced(value, found)
    elif isinstance(node, list):
        for value in node:
            _referenced(value, found)


def _drop_unused(doc: dict[str, Any]) -> None:
    schemas = doc["components"]["schemas"]
    used: set[str] = set()
    _referenced(doc["paths"], used)
    pending = set(used)
    while pending:
        found: set[str] = set()
        _referenced([schemas[name] for name in pending if name in schemas], found)
        pending = found - used
        used |= found
    doc["components"]["schemas"] = {name: schemas[name] for name in sorted(used) if name in schemas}


def _error_responses(path: str, name: str | None) -> dict[str, Any]:
    responses = {}
    for status, (description, codes) in ERRORS.items():
        if not path.startswith(API_PREFIX) and status not in ("401", "403", "500"):
            continue
        kept = {
            code: message
            for code, message in codes.items()
            if (code not in UPLOAD_ONLY_CODES or name == "analyze_file")
            and (code not in ADMIN_ONLY_CODES or name == "invalidate_cache")
        }
        listed = ", ".join(f"`{code}`" for code in kept)
        examples = {
            code: {
                "summary": code,
                "value": {"error": {"code": code, "message": message, "request_id": "3f2c9d0e8b7a4f61"}},
            }
            for code, message in kept.items()
        }
        responses[status] = {
            "description": f"{description} Codes: {listed}.",
            "content": {"application/json": {"schema": _ref("ErrorBody"), "examples": examples}},
        }
    return responses


def _upload_form(schema: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """Plain text form fields, as a browser form (and Swagger UI) sends them."""
    props = schema["properties"]
    props["file"] = {
        "type": "string",
        "format": "binary",
        "description": "ActiGraph `.agd` or CSV, or Actiwatch `.awd` export, at most "
        f"{settings.max_upload_bytes:,} bytes.",
    }
    props["timezone"]["description"] = (
        "IANA time zone the file's clock times are read in; empty: UTC, with a warning in the response "
        "(device clocks are usually local)."
    )
    props["subject"]["description"] = "FHIR reference of the wearer (e.g. `Patient/123`), or empty."
    props["outputs"]["description"] = (
        "Which parts to compute: the field repeated, one comma-separated value (`metrics,pat,fhir`) or "
        'a JSON array (`["metrics"]`).'
    )
    schema["additionalProperties"] = False
    return schema


def enrich(spec: dict[str, Any], settings: Settings) -> dict[str, Any]:
    # Through JSON, as served: BentoML keys responses by int status codes, JSON by strings.
    bento = json.loads(json.dumps(spec))
    schemas: dict[str, Any] = dict(bento.get("components", {}).get("schemas", {}))
    for model in (ErrorBody, ModelsResponse, *(op.response for op in OPERATIONS.values())):
        _model_schemas(model, schemas)
    examples = request_examples(settings)
    paths: dict[str, Any] = {}
    for path, operations in bento.get("paths", {}).items():
        paths[path] = {}
        for method, operation in operations.items():
            name = operation.get("x-bentoml-name")
            if name in OPERATIONS:
                paths[path][method] = _api_operation(
                    path, name, operation, schemas, examples.get(name), settings
                )
            else:
                paths[path][method] = _infra_operation(path, operation)
    paths["/v1/models"] = {
        "get": {
            "tags": [TAG_ANALYSIS],
            "summary": "The served PAT model and its metadata",
            "description": "Tag, size, layout, demo flag, head task, source file and SHA-256, converter "
            "version and whether a cohort scaler is used.",
            "operationId": "models",
            "responses": {
                "200": {
                    "description": "Successful Response",
                    "content": {"application/json": {"schema": _ref("ModelsResponse")}},
                },
                **_error_responses("/v1/models", None),
            },
        }
    }
    recording = schemas["Recording"]
    recording["example"] = example_recording(settings.min_recording_minutes)
    recording["properties"]["values"]["description"] = _values_description(settings)
    doc = {
        "openapi": OPENAPI_VERSION,
        "info": {"title": "PAT model service", "version": __version__, "description": _description(settings)},
        "tags": TAGS,
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "firebaseIdToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "Firebase ID token of a user whose custom claim `pat_role` is "
                    "`clinician`, `service` or `admin` (docs/api.md: how to get one).",
                }
            },
        },
        "security": [{"firebaseIdToken": []}],
    }
    doc = _fix_schema(doc)
    _drop_unused(doc)
    return doc


def _api_operation(
    path: str,
    name: str,
    operation: dict[str, Any],
    schemas: dict[str, Any],
    example: dict[str, Any] | None,
    settings: Settings,
) -> dict[str, Any]:
    spec = OPERATIONS[name]
    body = operation["requestBody"]
    media_type, content = next(iter(body["content"].items()))
    request_schema = dict(content["schema"])
    request_schema["title"] = spec.request_schema
    # The service rejects unknown fields at every level (`validation_error`).
    request_schema["additionalProperties"] = False
    if media_type == "multipart/form-data":
        request_schema = _upload_form(request_schema, settings)
    schemas[spec.request_schema] = request_schema
    media: dict[str, Any] = {"schema": _ref(spec.request_schema)}
    if example is not None:
        media["example"] = example
    description = " ".join(operation.get("description", "").split())
    return {
        "tags": [spec.tag],
        "summary": spec.summary,
        "description": description,
        "operationId": spec.operation_id,
        # A body whose every field has a default may be omitted (`/v1/cache/invalidate`).
        "requestBody": {"required": bool(request_schema.get("required")), "content": {media_type: media}},
        "responses": {
            "200": {
                "description": "Successful Response",
                "content": {"application/json": {"schema": _ref(spec.response.__name__)}},
            },
            **_error_responses(path, name),
        },
    }


def _infra_operation(path: str, operation: dict[str, Any]) -> dict[str, Any]:
    result = {
        "tags": [TAG_INFRA],
        "summary": INFRA_SUMMARIES.get(path, path),
        "description": operation.get("description", ""),
        "operationId": path.strip("/").replace("/", "_") or "root",
        "responses": {"200": operation.get("responses", {}).get("200", {"description": "OK"})},
    }
    if path in OPEN_PATHS:
        result["security"] = []
    else:
        result["responses"].update(_error_responses(path, None))
    return result
