"""The v1 routes and who may call them: one table, used by the handlers in `service.py`, the auth
middleware and every place a path is recorded (audit, metrics).

Deny by default: a path not in the table needs a valid token with a role (the app then 404s it).
"""

from __future__ import annotations

from dataclasses import dataclass

from pat_runner.settings import Settings

ROLES = frozenset({"clinician", "service", "admin"})
ADMIN_ONLY = frozenset({"admin"})
MONITORING = frozenset({"admin", "service"})

ANALYZE = "/v1/analyze"
ANALYZE_BATCH = "/v1/analyze/batch"
EMBED = "/v1/embed"
ANALYZE_FILE = "/v1/analyze/file"
ANALYZE_FHIR = "/v1/analyze/fhir"
MODELS = "/v1/models"
CACHE_INVALIDATE = "/v1/cache/invalidate"
# Only served with PAT_BENCH_FLOOR=true (scripts/bench_http.py).
BENCH_FLOOR = "/v1/bench/floor"
# BentoML's readiness probe: 200 once the model service answers its own.
READYZ = "/readyz"


@dataclass(frozen=True)
class Rule:
    """Who may call a path: always anyone (`open`), or the `roles`, unless `protected_by` names a
    boolean setting that is currently false (then anyone)."""

    roles: frozenset[str] = ROLES
    open: bool = False
    protected_by: str | None = None


ENDPOINT_POLICY: dict[str, Rule] = {
    "/livez": Rule(open=True),
    READYZ: Rule(open=True),
    "/healthz": Rule(open=True),
    ANALYZE: Rule(ROLES),
    ANALYZE_BATCH: Rule(ROLES),
    EMBED: Rule(ROLES),
    ANALYZE_FILE: Rule(ROLES),
    ANALYZE_FHIR: Rule(ROLES),
    MODELS: Rule(ROLES),
    CACHE_INVALIDATE: Rule(ADMIN_ONLY),
    BENCH_FLOOR: Rule(ROLES),
    "/metrics": Rule(MONITORING, protected_by="protect_metrics"),
    "/": Rule(ROLES, protected_by="protect_docs"),
    "/docs.json": Rule(ROLES, protected_by="protect_docs"),
}
# The Swagger UI's scripts and styles, served by BentoML under this prefix.
DOCS_ASSETS_PREFIX = "/static_content/"
DOCS_ASSETS_RULE = Rule(ROLES, protected_by="protect_docs")
# Deny by default: a path not in the table needs a valid token with a role (the app then 404s it).
DEFAULT_RULE = Rule(ROLES)


#: The model service's own routes (`serving/runner.py`), only ever called by the API service: named in
#: its access log and metrics like the API's routes, never in the API's policy table.
MODEL_SERVICE_ROUTES = frozenset({"/infer_pooled", "/infer", "/infer_attention", "/info"})


def endpoint_label(path: str) -> str:
    """The policy entry a path falls under: the table key, a model-service route, the docs-assets
    prefix, or `other`. Used wherever a path is recorded, so an arbitrary client-chosen path never
    reaches a log."""
    normalized = path.rstrip("/") or "/"
    if normalized in ENDPOINT_POLICY or normalized in MODEL_SERVICE_ROUTES:
        return normalized
    if path.startswith(DOCS_ASSETS_PREFIX):
        return DOCS_ASSETS_PREFIX + "*"
    return "other"


def rule_for(path: str) -> Rule:
    label = endpoint_label(path)
    if label in ENDPOINT_POLICY:
        return ENDPOINT_POLICY[label]
    if label == DOCS_ASSETS_PREFIX + "*":
        return DOCS_ASSETS_RULE
    return DEFAULT_RULE


def required_roles(path: str, settings: Settings) -> frozenset[str] | None:
    """The roles allowed on `path`, or None when the path is open without a token."""
    rule = rule_for(path)
    if rule.open or (rule.protected_by is not None and not getattr(settings, rule.protected_by)):
        return None
    return rule.roles
