"""Errors a client can cause or see, each with an HTTP status and a stable machine-readable code.

Every error body the service sends is `{"error": {"code": ..., "message": ..., "request_id": ...}}`;
`service.py` turns these exceptions (and BentoML's own errors) into that shape.
"""

from __future__ import annotations


class ServiceError(Exception):
    """Base of every error that becomes an HTTP response."""

    status: int = 500
    code: str = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status


class InvalidInput(ServiceError):
    """The request is well-formed JSON but its content cannot be analysed (422)."""

    status = 422
    code = "invalid_input"


class PayloadTooLarge(ServiceError):
    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(ServiceError):
    status = 415
    code = "unsupported_media_type"


class ModelUnavailable(ServiceError):
    status = 503
    code = "model_unavailable"


class Unauthenticated(ServiceError):
    """401: no usable credentials. `reason` is a fixed label for the audit record; neither it nor the
    message ever contains token content."""

    status = 401
    code = "unauthenticated"

    def __init__(self, reason: str, message: str) -> None:
        # RFC 6750 §3: no error code in the challenge when the request carried no credentials at all.
        challenge = 'Bearer realm="pat"'
        if reason != "missing":
            challenge += ', error="invalid_token"'
        super().__init__(message, headers={"WWW-Authenticate": challenge})
        self.reason = reason


class Forbidden(ServiceError):
    status = 403
    code = "forbidden"

    def __init__(self, message: str) -> None:
        challenge = 'Bearer realm="pat", error="insufficient_scope"'
        super().__init__(message, headers={"WWW-Authenticate": challenge})


class AuthUnavailable(ServiceError):
    """503: Firebase could not be reached to verify the token (certificates, revocation lookup)."""

    status = 503
    code = "auth_unavailable"
