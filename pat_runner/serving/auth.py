"""Firebase Authentication for the API service: who is calling, and may they call this endpoint.

Callers send `Authorization: Bearer <Firebase ID token>` (RFC 6750). The token is verified with the
Firebase Admin SDK (`firebase_admin.auth.verify_id_token`, see
https://firebase.google.com/docs/auth/admin/verify-id-tokens), and the caller's role comes from the
custom claim `pat_role` (https://firebase.google.com/docs/auth/admin/custom-claims). `ENDPOINT_POLICY`
is the one table that says which roles may call which path.

Failure modes the SDK leaves open and this module closes:
- With `FIREBASE_AUTH_EMULATOR_HOST` set the SDK accepts unsigned tokens and does not check `exp`;
  starting with that variable requires `PAT_ALLOW_AUTH_EMULATOR=1`, and `exp`/`iat`/`auth_time` are
  checked here on every token.
- `UserDisabledError` and `UserNotFoundError` (raised by the revocation check) are not
  `InvalidIdTokenError`s; both are 401 here.
- Without an explicit project id the Google auth library may probe the cloud metadata server; the
  project id is always passed, and credentials are only looked up where configured.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import time
import uuid
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import anyio.to_thread
import firebase_admin
import google.auth.credentials
from firebase_admin import auth as firebase_auth
from firebase_admin import credentials as firebase_credentials
from firebase_admin import exceptions as firebase_exceptions
from starlette.types import ASGIApp, Receive, Scope, Send

from pat_runner import telemetry
from pat_runner.settings import Settings

logger = logging.getLogger("pat.auth")

ROLE_CLAIM = "pat_role"
ROLES = frozenset({"clinician", "service", "admin"})
ADMIN_ONLY = frozenset({"admin"})
MONITORING = frozenset({"admin", "service"})
EMULATOR_HOST_ENV = "FIREBASE_AUTH_EMULATOR_HOST"
# Hosts synchronised by NTP differ by well under a second; 5 s tolerates a slow container clock
# without materially extending a token's one-hour life. Same bound for the SDK and our own checks.
CLOCK_SKEW_S = 5
# Firebase ID tokens are ~1 KB; anything far larger is not one and is refused before parsing.
MAX_TOKEN_CHARS = 8192
# RFC 6750 §2.1: credentials = "Bearer" 1*SP b64token
BEARER_PATTERN = re.compile(r"Bearer +([A-Za-z0-9\-._~+/]+=*)", re.IGNORECASE)
DEV_CALLER_UID = "anonymous-dev"


@dataclass(frozen=True)
class Caller:
    """The authenticated caller of one request; `role` is None for a valid token without `pat_role`."""

    uid: str
    role: str | None
    auth_mode: Literal["firebase", "disabled"]


@dataclass(frozen=True)
class Rule:
    """Who may call a path: always anyone (`open`), or the `roles`, unless `protected_by` names a
    boolean setting that is currently false (then anyone)."""

    roles: frozenset[str] = ROLES
    open: bool = False
    protected_by: str | None = None


ENDPOINT_POLICY: dict[str, Rule] = {
    "/livez": Rule(open=True),
    "/readyz": Rule(open=True),
    "/healthz": Rule(open=True),
    "/v1/analyze": Rule(ROLES),
    "/v1/analyze/batch": Rule(ROLES),
    "/v1/embed": Rule(ROLES),
    "/v1/analyze/file": Rule(ROLES),
    "/v1/analyze/fhir": Rule(ROLES),
    "/v1/models": Rule(ROLES),
    "/v1/cache/invalidate": Rule(ADMIN_ONLY),
    "/metrics": Rule(MONITORING, protected_by="protect_metrics"),
    "/": Rule(ROLES, protected_by="protect_docs"),
    "/docs.json": Rule(ROLES, protected_by="protect_docs"),
}
# The Swagger UI's scripts and styles, served by BentoML under this prefix.
DOCS_ASSETS_PREFIX = "/static_content/"
DOCS_ASSETS_RULE = Rule(ROLES, protected_by="protect_docs")
# Deny by default: a path not in the table needs a valid token with a role (the app then 404s it).
DEFAULT_RULE = Rule(ROLES)


def endpoint_label(path: str) -> str:
    """The policy entry a path falls under: the table key, the docs-assets prefix, or `other`. Used
    wherever a path is recorded, so an arbitrary client-chosen path never reaches a log."""
    normalized = path.rstrip("/") or "/"
    if normalized in ENDPOINT_POLICY:
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


class AuthConfigError(RuntimeError):
    """The authentication settings are unsafe or incomplete; the service must not start."""


class AuthenticationFailed(Exception):
    """401: no usable credentials. `reason` is a fixed label for the audit record; neither it nor
    `message` ever contains token content."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class AuthUnavailable(Exception):
    """503: Firebase could not be reached to verify the token (certificates, revocation lookup)."""


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_auth_config(settings: Settings, environ: Mapping[str, str] = os.environ) -> None:
    """Fail closed at start-up: raise `AuthConfigError` with the fix when the settings would let
    unverified callers in, and log a WARNING for each allowed-but-unsafe mode."""
    if settings.auth == "disabled":
        if not _is_loopback(settings.host):
            raise AuthConfigError(
                f"PAT_AUTH=disabled is only allowed for a server bound to loopback, but PAT_HOST is "
                f"{settings.host!r}. Set PAT_HOST=127.0.0.1, or configure Firebase (PAT_AUTH=firebase)."
            )
        logger.warning(
            "authentication is DISABLED (PAT_AUTH=disabled): every loopback caller is treated as "
            "admin. Development only; never with real health data."
        )
        return
    if settings.auth != "firebase":
        raise AuthConfigError(f"PAT_AUTH must be 'firebase' or 'disabled', got {settings.auth!r}.")
    if not settings.firebase_project_id:
        raise AuthConfigError(
            "Firebase authentication needs the project id: set PAT_FIREBASE_PROJECT_ID or "
            "GOOGLE_CLOUD_PROJECT (or PAT_AUTH=disabled for a loopback-only development server)."
        )
    emulator_host = environ.get(EMULATOR_HOST_ENV, "").strip()
    if emulator_host:
        if not settings.allow_auth_emulator:
            raise AuthConfigError(
                f"{EMULATOR_HOST_ENV} is set ({emulator_host!r}): firebase-admin would accept unsigned, "
                f"forged ID tokens. Unset it in production; for tests set PAT_ALLOW_AUTH_EMULATOR=1."
            )
        logger.warning(
            "accepting Firebase Auth Emulator tokens from %s (PAT_ALLOW_AUTH_EMULATOR=1): token "
            "signatures are NOT checked. Tests only.",
            emulator_host,
        )
        return
    credentials_file = environ.get("GOOGLE_APPLICATION_CREDENTIALS", "").strip()
    if credentials_file and not Path(credentials_file).is_file():
        raise AuthConfigError(
            f"GOOGLE_APPLICATION_CREDENTIALS names {credentials_file!r}, which is not a file."
        )
    if settings.auth_check_revoked and not credentials_file and not settings.firebase_adc:
        raise AuthConfigError(
            "PAT_AUTH_CHECK_REVOKED=true looks each caller up in Firebase, which needs credentials: set "
            "GOOGLE_APPLICATION_CREDENTIALS to a service-account key file, or PAT_FIREBASE_ADC=true to use "
            "the platform's default credentials (GKE/Cloud Run), or PAT_AUTH_CHECK_REVOKED=false."
        )


class _NoGoogleCredential(firebase_credentials.Base):
    """Stands in for Application Default Credentials where none are configured: those would probe the
    cloud metadata server. Verifying signatures needs only Google's public certificates."""

    def get_credential(self) -> google.auth.credentials.Credentials:
        return google.auth.credentials.AnonymousCredentials()


def _credential(settings: Settings, environ: Mapping[str, str]) -> firebase_credentials.Base:
    if environ.get("GOOGLE_APPLICATION_CREDENTIALS", "").strip() or settings.firebase_adc:
        return firebase_credentials.ApplicationDefault()
    return _NoGoogleCredential()


def bearer_token(authorization: str | None) -> str:
    """The token of an `Authorization: Bearer <token>` header value (RFC 6750 §2.1)."""
    if authorization is None or not authorization.strip():
        raise AuthenticationFailed(
            "missing", "an `Authorization: Bearer <Firebase ID token>` header is required"
        )
    if len(authorization) > MAX_TOKEN_CHARS + 16:
        raise AuthenticationFailed("malformed", "the Authorization header is too long to hold an ID token")
    match = BEARER_PATTERN.fullmatch(authorization.strip())
    if match is None:
        raise AuthenticationFailed(
            "malformed", "the Authorization header must be `Bearer <Firebase ID token>`"
        )
    return match.group(1)


class FirebaseTokenVerifier:
    """Verifies Firebase ID tokens for one project with its own `firebase_admin` App."""

    def __init__(self, settings: Settings, environ: Mapping[str, str] = os.environ) -> None:
        self.project_id = settings.firebase_project_id
        self.check_revoked = settings.auth_check_revoked
        # A private App per verifier: the project id is explicit (no environment or metadata lookup),
        # and several verifiers (tests, reloads) never share or clash over the default App.
        self.app = firebase_admin.initialize_app(
            credential=_credential(settings, environ),
            options={"projectId": self.project_id, "httpTimeout": 10},
            name=f"pat-auth-{uuid.uuid4().hex}",
        )

    def verify(self, token: str) -> Caller:
        """Blocking: may fetch Google's certificates and, with `check_revoked`, look the user up."""
        try:
            claims = firebase_auth.verify_id_token(
                token, app=self.app, check_revoked=self.check_revoked, clock_skew_seconds=CLOCK_SKEW_S
            )
        except firebase_auth.ExpiredIdTokenError as exc:
            raise AuthenticationFailed("expired", "the ID token has expired") from exc
        except firebase_auth.RevokedIdTokenError as exc:
            raise AuthenticationFailed("revoked", "the ID token has been revoked") from exc
        except firebase_auth.UserDisabledError as exc:
            raise AuthenticationFailed("disabled", "the user account is disabled") from exc
        except firebase_auth.UserNotFoundError as exc:
            raise AuthenticationFailed("unknown_user", "the token's user does not exist") from exc
        except firebase_auth.CertificateFetchError as exc:
            raise AuthUnavailable("could not fetch the Firebase token certificates") from exc
        except (firebase_exceptions.InvalidArgumentError, ValueError) as exc:
            raise AuthenticationFailed(
                "invalid", f"the token is not a valid Firebase ID token for project {self.project_id}"
            ) from exc
        except firebase_exceptions.FirebaseError as exc:
            raise AuthUnavailable("Firebase could not be reached to check the token") from exc
        return self._caller(claims)

    @staticmethod
    def _caller(claims: Mapping[str, Any]) -> Caller:
        # The emulator-mode SDK checks neither signature nor time; production tokens pass these
        # trivially, so they run on every token.
        now = time.time()
        expires, issued, authenticated = claims.get("exp"), claims.get("iat"), claims.get("auth_time")
        if not isinstance(expires, int | float) or not isinstance(issued, int | float):
            raise AuthenticationFailed("invalid", "the ID token lacks `exp` or `iat`")
        if expires <= now - CLOCK_SKEW_S:
            raise AuthenticationFailed("expired", "the ID token has expired")
        if issued > now + CLOCK_SKEW_S or expires <= issued:
            raise AuthenticationFailed("invalid", "the ID token's issue time is not valid")
        if authenticated is not None and (
            not isinstance(authenticated, int | float) or authenticated > now + CLOCK_SKEW_S
        ):
            raise AuthenticationFailed("invalid", "the ID token's authentication time is not valid")
        uid = claims.get("uid") or claims.get("sub")
        if not isinstance(uid, str) or not uid:
            raise AuthenticationFailed("invalid", "the ID token has no subject")
        role = claims.get(ROLE_CLAIM)
        return Caller(
            uid=uid, role=role if isinstance(role, str) and role in ROLES else None, auth_mode="firebase"
        )

    async def authenticate(self, authorization: str | None) -> Caller:
        with telemetry.span("auth"):
            token = bearer_token(authorization)
            # Verification is blocking network I/O (certificates, revocation lookup): keep it off the loop.
            caller = await anyio.to_thread.run_sync(self.verify, token)
            telemetry.set_span_attributes(role=caller.role or "none")
            return caller


def _authorization_header(scope: Scope) -> str | None:
    """The single Authorization header; several are ambiguous and treated as malformed."""
    values = [value for name, value in scope.get("headers", []) if name.lower() == b"authorization"]
    if not values:
        return None
    if len(values) > 1:
        raise AuthenticationFailed("malformed", "send exactly one Authorization header")
    return values[0].decode("latin-1")


class FirebaseAuthMiddleware:
    """Pure ASGI middleware: authenticates every HTTP/WebSocket request under `ENDPOINT_POLICY`.

    Added with `Service.add_asgi_middleware(FirebaseAuthMiddleware, settings=settings)`. On success the
    caller is `scope["state"]["caller"]` (Starlette's `request.state.caller`); failures are 401/403/503
    with the service's error body. The configuration is checked (`check_auth_config`) on construction,
    so a misconfigured worker fails to start rather than serving.
    """

    def __init__(self, app: ASGIApp, *, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        check_auth_config(self.settings)
        self.verifier = FirebaseTokenVerifier(self.settings) if self.settings.auth == "firebase" else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        roles = required_roles(scope["path"], self.settings)
        if roles is None:
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        try:
            caller = await self._authenticate(scope)
        except AuthenticationFailed as exc:
            _note_audit(state, "auth_failure", exc.reason)
            await _reject(
                scope, send, 401, "unauthenticated", exc.message, invalid_token=exc.reason != "missing"
            )
            return
        except AuthUnavailable as exc:
            logger.warning("token verification unavailable: %s (%s)", exc, type(exc.__cause__).__name__)
            _note_audit(state, "auth_failure", "unavailable")
            await _reject(scope, send, 503, "auth_unavailable", "authentication is temporarily unavailable")
            return
        state["caller"] = caller
        if caller.role not in roles:
            _note_audit(state, "auth_failure", "forbidden")
            await _reject(
                scope,
                send,
                403,
                "forbidden",
                f"this endpoint needs one of the roles: {', '.join(sorted(roles))}",
            )
            return
        await self.app(scope, receive, send)

    async def _authenticate(self, scope: Scope) -> Caller:
        if self.verifier is None:
            # Auth disabled: the start-up check held the bind address to loopback; this holds the
            # actual connection to loopback too (a `--host 0.0.0.0` on the command line overrides it).
            client = scope.get("client")
            if not client or not _is_loopback(str(client[0])):
                raise AuthenticationFailed(
                    "not_loopback", "authentication is disabled; only loopback callers are served"
                )
            return Caller(uid=DEV_CALLER_UID, role="admin", auth_mode="disabled")
        return await self.verifier.authenticate(_authorization_header(scope))


def _note_audit(state: MutableMapping[str, Any], name: str, value: str) -> None:
    audit = state.get("audit")
    if isinstance(audit, dict):
        audit[name] = value


async def _reject(
    scope: Scope, send: Send, status: int, code: str, message: str, *, invalid_token: bool = False
) -> None:
    if scope["type"] == "websocket":
        # RFC 6455 §7.4.1: 1008 = policy violation.
        await send({"type": "websocket.close", "code": 1008})
        return
    request_id = scope.get("state", {}).get("request_id")
    body = json.dumps({"error": {"code": code, "message": message, "request_id": request_id}}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 401:
        # RFC 6750 §3: no error code when the request carried no credentials at all.
        challenge = 'Bearer realm="pat", error="invalid_token"' if invalid_token else 'Bearer realm="pat"'
        headers.append((b"www-authenticate", challenge.encode()))
    elif status == 403:
        headers.append((b"www-authenticate", b'Bearer realm="pat", error="insufficient_scope"'))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
