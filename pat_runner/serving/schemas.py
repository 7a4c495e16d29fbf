"""Request and response models of the HTTP API (v1).

These pydantic models are the API's manual: BentoML turns them into the OpenAPI document served at
`/docs.json` and the Swagger UI at `/`. The shape of `/v1/analyze` is a contract (docs/architecture.md):
add fields freely, never rename these.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from zoneinfo import available_timezones

import numpy as np
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    field_validator,
    model_validator,
)

from pat_runner.actigraphy.metrics import ActigraphyMetrics
from pat_runner.actigraphy.preprocess import QualityReport
from pat_runner.actigraphy.sleep import SleepPeriodAlgorithm
from pat_runner.actigraphy.wear import NonwearAlgorithm
from pat_runner.model.info import ModelInfo
from pat_runner.serving.compact import ValuesDtype, decode_values
from pat_runner.settings import MAX_RECORDING_MINUTES_CAP

Output = Literal["metrics", "pat", "fhir", "attention"]
Unit = Literal["counts", "steps", "other"]

# Hard schema caps; the configurable, tighter limits are checked in preprocessing (422 with a reason).
# The length cap is in minutes: at most MAX_RECORDING_MINUTES_CAP × epochs per minute values.
MAX_VALUES = MAX_RECORDING_MINUTES_CAP * 60  # twelve weeks of 1-s epochs
SUBJECT_PATTERN = r"^[A-Za-z]{1,64}/[A-Za-z0-9\-\.]{1,64}$"

_EXAMPLE_VALUES: list[float | None] = [0, 12, None, 340, 512, 95, 0, 0]
_TIMEZONES = frozenset(available_timezones())


class _Strict(BaseModel):
    # Strict: JSON `false` is not a count, `"60"` is not an epoch length.
    model_config = ConfigDict(extra="forbid", strict=True)


class DeviceInfo(BaseModel):
    """The wearable that recorded the data (FHIR `Device`)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "example": {"manufacturer": "ActiGraph", "model": "GT3X+", "serial": "TAS1D47140221"}
        },
    )

    manufacturer: str | None = Field(None, description="Device manufacturer.", max_length=128)
    model: str | None = Field(None, description="Device model name.", max_length=128)
    serial: str | None = Field(None, description="Device serial number.", max_length=128)


class Recording(_Strict):
    """Per-epoch activity from one wearable, starting at `start` (local clock of `timezone`)."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "example": {
                "start": "2024-03-04T00:00:00-05:00",
                "timezone": "America/New_York",
                "epoch_seconds": 60,
                "values": _EXAMPLE_VALUES,
                "unit": "counts",
                "subject": "Patient/123",
            }
        },
    )

    start: AwareDatetime = Field(description="Start of the first epoch, ISO-8601 with a UTC offset.")
    timezone: str = Field(
        description="IANA time zone of the wearer (e.g. `America/New_York`); clock-time metrics use it.",
        json_schema_extra={"example": "America/New_York"},
        max_length=64,
    )
    epoch_seconds: int = Field(
        60,
        description="Epoch length in seconds; epochs shorter than a minute must divide 60 and are "
        "summed to minutes.",
        ge=1,
        le=60,
    )
    values: list[float | None] | None = Field(
        None,
        description="Activity per epoch; `null` = missing or off-wrist. Give this or `values_b64`.",
        max_length=MAX_VALUES,
        min_length=1,
    )
    # ---- compact values (pat_runner/serving/compact.py) ----
    values_b64: str | None = Field(
        None,
        description="The values in compact form instead of `values`: base64 (standard alphabet, padded) "
        "of little-endian `values_dtype` numbers, one per epoch; float32 NaN = missing. Same results "
        "as `values` for integer counts; faster to send and parse (docs/performance.md).",
        min_length=4,
        max_length=4 * ((4 * MAX_VALUES + 2) // 3),
    )
    values_dtype: ValuesDtype = Field("float32", description="Number type of `values_b64`.")
    # ---- end compact values ----
    unit: Unit = Field(
        "counts",
        description="`counts` (ActiGraph-style activity counts; required for the cut-point and sleep "
        "metrics), `steps`, or `other`.",
    )
    subject: str | None = Field(
        None,
        description="FHIR reference of the wearer (e.g. `Patient/123`); echoed only into the FHIR output.",
        pattern=SUBJECT_PATTERN,
    )
    device: DeviceInfo | None = Field(None, description="The wearable, when known (FHIR `Device`).")
    _array: np.ndarray = PrivateAttr()

    @model_validator(mode="after")
    def _one_values_form(self) -> Recording:
        if (self.values is None) == (self.values_b64 is None):
            raise ValueError("give exactly one of `values` and `values_b64`")
        if self.values_b64 is not None:
            self._array = decode_values(self.values_b64, self.values_dtype, max_values=MAX_VALUES)
        return self

    def values_array(self) -> np.ndarray:
        """The values as float64, NaN for missing, whichever form they came in."""
        if self.values_b64 is not None:
            return self._array
        # numpy reads None as NaN for a float dtype, in C rather than a Python loop.
        return np.array(self.values, dtype=np.float64)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        if value not in _TIMEZONES:
            raise ValueError("not a known IANA time zone name")
        return value

    @model_validator(mode="after")
    def _length_in_minutes(self) -> Recording:
        # The schema caps at 1-s epochs; longer epochs allow proportionally fewer values.
        per_minute = max(60 // self.epoch_seconds, 1)
        limit = MAX_RECORDING_MINUTES_CAP * per_minute
        count = len(self.values) if self.values is not None else len(self._array)
        if count > limit:
            raise ValueError(
                f"values: {count:,} epochs of {self.epoch_seconds} s are more than "
                f"{MAX_RECORDING_MINUTES_CAP:,} minutes ({limit:,} values)"
            )
        return self


class AnalyzeOptions(_Strict):
    outputs: list[Output] = Field(
        default_factory=lambda: ["metrics", "pat", "fhir"],
        description="Which parts to compute. `fhir` alone returns only the Bundle (metrics and PAT "
        "outputs are still computed for it, but not returned separately). `attention` adds each PAT "
        "window's `attention` (and returns the `pat` part): what the model attends to, not a clinical "
        "explanation (docs/inputs.md).",
        min_length=1,
        max_length=4,
    )
    sleep_algorithm: Literal["cole_kripke", "sadeh"] = Field(
        "cole_kripke", description="Sleep/wake scoring algorithm for the sleep metrics."
    )
    sleep_period_algorithm: SleepPeriodAlgorithm = Field(
        "tudor_locke",
        description="Sleep-period rule: `tudor_locke` (ActiLife's Tudor-Locke Default: 5 sleep minutes "
        "start, 10 wake minutes end, 160-1,440 min) or `actigraph` (ActiGraph's variant: 12 wake minutes).",
    )
    nonwear_algorithm: NonwearAlgorithm | None = Field(
        None,
        description="Non-wear rule shared by days and nights: `choi` (Choi 2011), `troiano` (Troiano "
        "2008) or `none` (as ActiLife's sleep scoring); null: the service's default "
        "(`PAT_NONWEAR_ALGORITHM`).",
    )


class ModelSummary(BaseModel):
    tag: str = Field(description="BentoML model-store tag of the PAT that produced the outputs.")
    size: str = Field(description="PAT size: S, M or L.")
    demo: bool = Field(description="True for the randomly initialised demo model: outputs mean nothing.")
    head_task: str | None = Field(None, description="Task of the fine-tuned classification head, if any.")
    backend: str | None = Field(
        None,
        description="Inference backend that computed the PAT outputs (`torch`, `torch-bf16`, `onnxruntime`, "
        "`tensorrt`); null when the response holds no model output.",
    )

    @classmethod
    def of(cls, info: ModelInfo) -> ModelSummary:
        return cls(tag=info.tag, size=info.size, demo=info.demo, head_task=info.head_task)


class PatWindow(BaseModel):
    index: int = Field(description="Window number, 0-based, in time order.")
    start: datetime = Field(description="Start of the week window (UTC).")
    end: datetime = Field(description="End of the week window, exclusive (UTC).")
    observed_fraction: float = Field(description="Fraction of the window's minutes with data.")
    embedding: list[float] = Field(description="Mean-pooled 96-d PAT encoder embedding of the window.")
    probability: float | None = Field(
        None, description="Probability from the fine-tuned head, when the served model has one."
    )
    # An empty list rather than null when not requested: BentoML's generated client cannot decode a
    # null where the schema says array.
    patches: list[list[float]] = Field(
        default_factory=list,
        description="Per-patch 96-d embeddings (`/v1/embed` with `per_patch: true`); empty otherwise.",
    )
    attention: list[float] = Field(
        default_factory=list,
        description="With `options.outputs` containing `attention`: per minute of the window (10,080 "
        "values, summing to 1), the attention the minute's patch receives in PAT's last layer, averaged "
        "over heads and query patches and spread evenly over the patch's minutes. It shows where the "
        "model looked, not why, and is not a clinical explanation. Empty otherwise.",
    )


class PatOutput(BaseModel):
    standardization: str = Field(description="`per_recording` z-score or the model's `cohort_scaler`.")
    windows: list[PatWindow]


class AnalyzeResponse(BaseModel):
    """Result of one recording."""

    request_id: str
    model: ModelSummary
    quality: QualityReport
    metrics: ActigraphyMetrics | None = None
    pat: PatOutput | None = None
    fhir: dict[str, Any] | None = Field(None, description="FHIR R4 Bundle (type `collection`).")
    warnings: list[str] = Field(default_factory=list)
    cache: Literal["hit", "miss", "bypass"] = Field(
        "miss", description="Whether the result came from the encrypted result cache."
    )


class ComputedResult(BaseModel):
    """What one computation produced: the unit the result cache stores (no request or subject data).

    A response takes from it the parts the request asked for; each request's FHIR Bundle is assembled
    from its Observations (`fhir.assemble_bundle`). The quality report and warnings are not in it: they
    describe one request's input, which is preprocessed on every request (the cache key needs it).
    """

    metrics: ActigraphyMetrics | None = None
    pat: PatOutput | None = None
    fhir_observations: list[dict[str, Any]] | None = Field(
        None,
        description="The validated FHIR Observations of `metrics` (`fhir.metric_observations`), without "
        "subject, device or ids; each request's Bundle is assembled from them.",
    )
    backend: str | None = Field(None, description="The model backend that computed `pat`, if any.")


class ErrorDetail(BaseModel):
    code: str = Field(
        description="Stable machine-readable error code.", json_schema_extra={"example": "invalid_input"}
    )
    message: str = Field(description="What is wrong and where.")
    request_id: str | None = None


class ErrorBody(BaseModel):
    """Every error response has this body."""

    error: ErrorDetail


class BatchItem(BaseModel):
    result: AnalyzeResponse | None = None
    error: ErrorDetail | None = None


class BatchResponse(BaseModel):
    request_id: str
    results: list[BatchItem] = Field(description="One item per recording, in request order.")


class EmbedOptions(_Strict):
    per_patch: bool = Field(False, description="Also return the per-patch embeddings (560 or 1120 × 96).")


class EmbedResponse(BaseModel):
    request_id: str
    model: ModelSummary
    quality: QualityReport
    pat: PatOutput
    warnings: list[str] = Field(default_factory=list)


class ModelsResponse(BaseModel):
    models: list[dict[str, Any]] = Field(description="Metadata of the served PAT models.")


class InvalidateResponse(BaseModel):
    removed: int = Field(description="Number of cached results removed.")
