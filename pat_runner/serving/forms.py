"""The text fields of the upload form (`/v1/analyze/file`) and the unknown-field rule of every endpoint.

A browser form (Swagger UI's included) sends a list as one comma-separated value, a client may send it as
a JSON array (BentoML decodes a field that parses as JSON) or repeat the field (OpenAPI's default, which
`RequestLimitsMiddleware` merges into a JSON array); all three mean the same. The time zone is checked
like `Recording.timezone`, so one cause answers with one code (`validation_error`) on every endpoint.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, Field

from pat_runner.serving.schemas import SUBJECT_PATTERN, Output, Recording


def _split_list(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def _known_zone(value: str) -> str:
    # The same validator as the JSON endpoints' `recording.timezone`, so the message is the same too.
    # Empty: not given (read as UTC, with a warning in the response).
    return Recording._known_zone(value) if value else value


FormTimezone = Annotated[str, Field(max_length=64), AfterValidator(_known_zone)]
FormSubject = Annotated[str, Field(pattern=f"^$|{SUBJECT_PATTERN}")]
FormOutputs = Annotated[list[Output], BeforeValidator(_split_list), Field(min_length=1, max_length=3)]


def forbid_unknown_fields(input_models: list[type[BaseModel]]) -> None:
    """Make BentoML's generated request models (one per endpoint, built from the handler's signature)
    reject unknown top-level fields, as the nested request models do: a misspelt option must fail
    loudly, not silently fall back to its default."""
    for model in input_models:
        model.model_config["extra"] = "forbid"
        model.model_rebuild(force=True)
