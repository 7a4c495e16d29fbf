"""Errors a client can cause or see, each with an HTTP status and a stable machine-readable code.

Every error body the service sends is `{"error": {"code": ..., "message": ..., "request_id": ...}}`;
`service.py` turns these exceptions (and BentoML's own errors) into that shape.
"""

from __future__ import annotations


class ServiceError(Exception):
    """Base of every error that becomes an HTTP response."""

    status: int = 500
    code: str = "internal_error"

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
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
