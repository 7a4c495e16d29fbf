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
import logging
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
from pat_runner.errors import AuthUnavailable, Forbidden, ServiceError, Unauthenticated
from pat_runner.serving.http import error_response, request_id_of
from pat_runner.serving.routes import ROLES, required_roles
from pat_runner.settings import Settings

logger = logging.getLogger("pat.auth")

ROLE_CLAIM = "pat_role"
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


class AuthConfigError(RuntimeError):
    """The authentication settings are unsafe or incomplete; the service must not start."""


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_auth_config(settings: Settings) -> None:
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
    emulator_host = settings.firebase_auth_emulator_host
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
    credentials_file = settings.google_application_credentials
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


def _credential(settings: Settings) -> firebase_credentials.Base:
    if settings.google_application_credentials or settings.firebase_adc:
        return firebase_credentials.ApplicationDefault()
    return _NoGoogleCredential()


def bearer_token(authorization: str | None) -> str:
    """The token of an `Authorization: Bearer <token>` header value (RFC 6750 §2.1)."""
    if authorization is None or not authorization.strip():
        raise Unauthenticated("missing", "an `Authorization: Bearer <Firebase ID token>` header is required")
    if len(authorization) > MAX_TOKEN_CHARS + 16:
        raise Unauthenticated("malformed", "the Authorization header is too long to hold an ID token")
    match = BEARER_PATTERN.fullmatch(authorization.strip())
    if match is None:
        raise Unauthenticated("malformed", "the Authorization header must be `Bearer <Firebase ID token>`")
    return match.group(1)


class FirebaseTokenVerifier:
    """Verifies Firebase ID tokens for one project with its own `firebase_admin` App."""

    def __init__(self, settings: Settings) -> None:
        self.project_id = settings.firebase_project_id
        self.check_revoked = settings.auth_check_revoked
        # A private App per verifier: the project id is explicit (no environment or metadata lookup),
        # and several verifiers (tests, reloads) never share or clash over the default App.
        self.app = firebase_admin.initialize_app(
            credential=_credential(settings),
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
            raise Unauthenticated("expired", "the ID token has expired") from exc
        except firebase_auth.RevokedIdTokenError as exc:
            raise Unauthenticated("revoked", "the ID token has been revoked") from exc
        except firebase_auth.UserDisabledError as exc:
            raise Unauthenticated("disabled", "the user account is disabled") from exc
        except firebase_auth.UserNotFoundError as exc:
            raise Unauthenticated("unknown_user", "the token's user does not exist") from exc
        except firebase_auth.CertificateFetchError as exc:
            raise AuthUnavailable("could not fetch the Firebase token certificates") from exc
        except (firebase_exceptions.InvalidArgumentError, ValueError) as exc:
            raise Unauthenticated(
                "invalid", "the token is not a valid Firebase ID token for this service"
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
            raise Unauthenticated("invalid", "the ID token lacks `exp` or `iat`")
        if expires <= now - CLOCK_SKEW_S:
            raise Unauthenticated("expired", "the ID token has expired")
        if issued > now + CLOCK_SKEW_S or expires <= issued:
            raise Unauthenticated("invalid", "the ID token's issue time is not valid")
        if authenticated is not None and (
            not isinstance(authenticated, int | float) or authenticated > now + CLOCK_SKEW_S
        ):
            raise Unauthenticated("invalid", "the ID token's authentication time is not valid")
        uid = claims.get("uid") or claims.get("sub")
        if not isinstance(uid, str) or not uid:
            raise Unauthenticated("invalid", "the ID token has no subject")
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
        raise Unauthenticated("malformed", "send exactly one Authorization header")
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
            state["caller"] = caller
            if caller.role not in roles:
                raise Forbidden(f"this endpoint needs one of the roles: {', '.join(sorted(roles))}")
        except Unauthenticated as exc:
            _note_audit(state, "auth_failure", exc.reason)
            await _reject(scope, receive, send, exc)
            return
        except AuthUnavailable as exc:
            logger.warning("token verification unavailable: %s (%s)", exc, type(exc.__cause__).__name__)
            _note_audit(state, "auth_failure", "unavailable")
            await _reject(scope, receive, send, AuthUnavailable("authentication is temporarily unavailable"))
            return
        except Forbidden as exc:
            _note_audit(state, "auth_failure", "forbidden")
            await _reject(scope, receive, send, exc)
            return
        await self.app(scope, receive, send)

    async def _authenticate(self, scope: Scope) -> Caller:
        if self.verifier is None:
            # Auth disabled: the start-up check held the bind address to loopback; this holds the
            # actual connection to loopback too (a `--host 0.0.0.0` on the command line overrides it).
            client = scope.get("client")
            if not client or not _is_loopback(str(client[0])):
                raise Unauthenticated(
                    "not_loopback", "authentication is disabled; only loopback callers are served"
                )
            return Caller(uid=DEV_CALLER_UID, role="admin", auth_mode="disabled")
        return await self.verifier.authenticate(_authorization_header(scope))


def _note_audit(state: MutableMapping[str, Any], name: str, value: str) -> None:
    audit = state.get("audit")
    if isinstance(audit, dict):
        audit[name] = value


async def _reject(scope: Scope, receive: Receive, send: Send, exc: ServiceError) -> None:
    if scope["type"] == "websocket":
        # RFC 6455 §7.4.1: 1008 = policy violation.
        await send({"type": "websocket.close", "code": 1008})
        return
    await error_response(exc, request_id_of(scope))(scope, receive, send)
