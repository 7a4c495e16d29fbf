"""The endpoint × role policy the auth tests hold the service to (in-process and over HTTP)."""

from __future__ import annotations

ANY_ROLE = {"clinician", "service", "admin"}
# (method, path, roles allowed with the default settings: docs and metrics protected)
ENDPOINTS: list[tuple[str, str, set[str]]] = [
    ("POST", "/v1/analyze", ANY_ROLE),
    ("POST", "/v1/analyze/batch", ANY_ROLE),
    ("POST", "/v1/embed", ANY_ROLE),
    ("POST", "/v1/analyze/file", ANY_ROLE),
    ("POST", "/v1/analyze/fhir", ANY_ROLE),
    ("GET", "/v1/models", ANY_ROLE),
    ("POST", "/v1/cache/invalidate", {"admin"}),
    ("GET", "/metrics", {"admin", "service"}),
    ("GET", "/", ANY_ROLE),
    ("GET", "/docs.json", ANY_ROLE),
    ("GET", "/static_content/swagger-ui.css", ANY_ROLE),
    ("GET", "/schema.json", ANY_ROLE),
    ("GET", "/v1/not-an-endpoint", ANY_ROLE),
]
OPEN_PATHS = ["/livez", "/readyz", "/healthz"]
