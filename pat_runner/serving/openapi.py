"""The OpenAPI document clients see: BentoML's generated spec plus what BentoML cannot know.

BentoML documents request/response models; this adds the bearer-token security scheme, the error body
and every error status the service can answer (so schema-based clients and fuzzers know them), and the
`GET /v1/models` route (BentoML APIs are POST only; this one is a mounted Starlette route). Served at
`/docs.json` and exported to `docs/openapi.json` by `scripts/export_openapi.py`.
"""

from __future__ import annotations

import json
from typing import Any

from pat_runner import __version__
from pat_runner.serving.schemas import ErrorBody, ModelsResponse

API_PREFIX = "/v1/"
ERROR_STATUSES = {
    "401": "Missing, malformed, expired, revoked or foreign Firebase ID token (`unauthenticated`).",
    "403": "Valid token without a role allowed on this endpoint (`forbidden`).",
    "404": "No such endpoint (`not_found`).",
    "413": "Body, upload or batch over the configured limit (`payload_too_large`).",
    "415": "Unsupported upload type or content type (`unsupported_media_type`).",
    "422": "Malformed JSON (`malformed_json`), schema violation (`validation_error`) or a recording that "
    "cannot be analysed (`invalid_input`); the message says what and where.",
    "429": "At the concurrency limit (`overloaded`); retry later.",
    "503": "The PAT model service is unavailable (`model_unavailable`); metrics-only requests still work.",
}
OPEN_PATHS = ("/livez", "/readyz", "/healthz")
DESCRIPTION = """Real-time analysis of one week of minute-level wrist actigraphy (10,080 minutes) with the
Pretrained Actigraphy Transformer (PAT; Ruan et al., arXiv 2411.15240): classical clinical actigraphy
metrics, PAT embeddings (and a fine-tuned head's probability) and an HL7 FHIR R4 Bundle.

**Authentication**: `Authorization: Bearer <Firebase ID token>`; the custom claim `pat_role` (`clinician`,
`service`, `admin`) grants access. Use *Authorize* above to try calls here.

**Errors**: every error is `{"error": {"code", "message", "request_id"}}` with a stable `code`; body problems
are 422 (`malformed_json`, `validation_error`, `invalid_input`).

**Demo model**: responses with `model.demo: true` come from a randomly initialised PAT and carry no meaning.
"""


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def enrich(spec: dict[str, Any]) -> dict[str, Any]:
    # Through JSON, as served: BentoML keys responses by int status codes, JSON by strings.
    doc = json.loads(json.dumps(spec))
    # BentoML's default description links badges and chat rooms on third-party hosts.
    doc["info"] = {"title": "PAT model service", "version": __version__, "description": DESCRIPTION}
    components = doc.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for model in (ErrorBody, ModelsResponse):
        model_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(model_schema.pop("$defs", {}))
        schemas[model.__name__] = model_schema
    components.setdefault("securitySchemes", {})["firebaseIdToken"] = {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": "Firebase ID token; its custom claim `pat_role` (clinician, service, admin) "
        "grants access.",
    }
    doc["security"] = [{"firebaseIdToken": []}]
    doc.setdefault("paths", {})["/v1/models"] = {
        "get": {
            "summary": "The served PAT model and its metadata",
            "description": "Tag, size, layout, demo flag, head task, source file and SHA-256, converter "
            "version and whether a cohort scaler is used.",
            "operationId": "models__get",
            "responses": {
                "200": {
                    "description": "Successful Response",
                    "content": {"application/json": {"schema": _ref("ModelsResponse")}},
                }
            },
        }
    }
    error_content = {"application/json": {"schema": _ref("ErrorBody")}}
    for path, operations in doc.get("paths", {}).items():
        for operation in operations.values():
            if not isinstance(operation, dict):
                continue
            if path in OPEN_PATHS:
                operation["security"] = []
                continue
            responses = operation.setdefault("responses", {})
            responses.pop("400", None)  # BentoML's 400 for validation errors is answered as 422 here
            for status, description in ERROR_STATUSES.items():
                if path.startswith(API_PREFIX) or status in ("401", "403"):
                    responses[status] = {"description": description, "content": error_content}
    return doc
