"""FHIR R4 output: one recording's metrics (and a PAT head's probability) as a validated Bundle.

The Bundle (`type: collection`) holds one `Observation` per metric, a `RiskAssessment` for a
fine-tuned head's probability and a `Device` for the wearable when known. Everything is validated with
`fhir.resources.R4B` (field-identical to R4 for these resources) before it is returned; that library
does not check code values, UCUM units or probability ranges, so this module keeps those fixed in
tables and checks the probability itself. `docs/fhir.md` lists every code with its source.

Code sources (LOINC, system http://loinc.org):
* 93832-4 "Sleep duration" — HL7 Personal Health Record IG sleep value set; https://loinc.org/93832-4/
* 101688-0 / 101689-8 / 101690-6 "Duration of light / moderate / vigorous activity" — LOINC group
  LG41761-4, https://loinc.org/LG41761-4 (LOINC 2.80).
Measures without a LOINC term (IS, IV, RA, L5, M10, sleep efficiency, sedentary time) and those whose
LOINC codes could not be verified (wake after sleep onset, number of awakenings) use `CODE_SYSTEM`.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.device import Device
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.reference import Reference
from fhir.resources.R4B.riskassessment import RiskAssessment
from pydantic import BaseModel

from pat_runner.actigraphy.metrics import ActigraphyMetrics, DayActivity, NightSleep
from pat_runner.actigraphy.sleep import SLEEP_PERIOD_RULES
from pat_runner.actigraphy.wear import NONWEAR_METHOD_TEXT
from pat_runner.model.info import ModelInfo

CODE_SYSTEM = "https://pat-service.example/fhir/CodeSystem/actigraphy"
REQUEST_ID_SYSTEM = "https://pat-service.example/fhir/NamingSystem/request-id"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
DATA_ABSENT_REASON = "http://terminology.hl7.org/CodeSystem/data-absent-reason"
DEMO_TAG = {
    "system": CODE_SYSTEM,
    "code": "demo-model",
    "display": "Produced by the randomly initialised demo PAT model; not for clinical use",
}


class Coded(BaseModel):
    """A metric's FHIR code and UCUM unit."""

    system: str
    code: str
    display: str
    unit: str
    unit_display: str


OWN_CODES: dict[str, str] = {
    "interdaily-stability": "Interdaily stability (IS) of hourly mean activity, 0–1 (Van Someren 1999).",
    "intradaily-variability": "Intradaily variability (IV) of hourly mean activity (Van Someren 1999).",
    "relative-amplitude": "Relative amplitude (M10 − L5)/(M10 + L5) of the average 24-h profile.",
    "l5": "Mean activity of the least active 5 h of the average 24-h profile.",
    "l5-onset": "Local clock time at which the L5 window starts.",
    "m10": "Mean activity of the most active 10 h of the average 24-h profile.",
    "m10-onset": "Local clock time at which the M10 window starts.",
    "sleep-efficiency": "Sleep minutes / observed minutes of the main sleep period × 100.",
    "wake-after-sleep-onset": "Wake minutes inside the main sleep period, after sleep onset.",
    "awakenings": "Number of wake bouts inside the main sleep period.",
    "sedentary-duration": "Wear minutes of the day with < 100 counts/min (Troiano 2008).",
    "pat-model": "Pretrained Actigraphy Transformer with a fine-tuned classification head.",
    "demo-model": DEMO_TAG["display"],
}


def _own(code: str, display: str, unit: str, unit_display: str) -> Coded:
    return Coded(system=CODE_SYSTEM, code=code, display=display, unit=unit, unit_display=unit_display)


def _loinc(code: str, display: str, unit: str, unit_display: str) -> Coded:
    return Coded(system=LOINC, code=code, display=display, unit=unit, unit_display=unit_display)


CODES: dict[str, Coded] = {
    "interdaily_stability": _own("interdaily-stability", "Interdaily stability", "1", "1"),
    "intradaily_variability": _own("intradaily-variability", "Intradaily variability", "1", "1"),
    "relative_amplitude": _own("relative-amplitude", "Relative amplitude", "1", "1"),
    "l5": _own("l5", "L5 mean activity", "{counts}/min", "counts/min"),
    "m10": _own("m10", "M10 mean activity", "{counts}/min", "counts/min"),
    "total_sleep_minutes": _loinc("93832-4", "Sleep duration", "min", "min"),
    "sleep_efficiency_percent": _own("sleep-efficiency", "Sleep efficiency", "%", "%"),
    "wake_after_sleep_onset_minutes": _own("wake-after-sleep-onset", "Wake after sleep onset", "min", "min"),
    "awakenings": _own("awakenings", "Number of awakenings", "1", "awakenings"),
    "sedentary_minutes": _own("sedentary-duration", "Duration of sedentary time", "min", "min"),
    "light_minutes": _loinc("101688-0", "Duration of light activity", "min", "min"),
    "moderate_minutes": _loinc("101689-8", "Duration of moderate activity", "min", "min"),
    "vigorous_minutes": _loinc("101690-6", "Duration of vigorous activity", "min", "min"),
}
# L5/M10 are means of the input values per minute; UCUM annotations name what was counted.
ACTIVITY_RATE_UNITS = {"counts": "{counts}/min", "steps": "{steps}/min", "other": "{activity}/min"}
RECORDING_METRICS = ("interdaily_stability", "intradaily_variability", "relative_amplitude", "l5", "m10")
NIGHT_METRICS = (
    "total_sleep_minutes",
    "sleep_efficiency_percent",
    "wake_after_sleep_onset_minutes",
    "awakenings",
)
DAY_METRICS = ("sedentary_minutes", "light_minutes", "moderate_minutes", "vigorous_minutes")
SLEEP_METHOD_TEXT = {
    "sadeh": "Sadeh 1994 sleep/wake scoring (ActiLife 6 variant)",
    "cole_kripke": "Cole–Kripke 1992 sleep/wake scoring (ActiLife 6 variant)",
}


def sleep_method_text(metrics: ActigraphyMetrics) -> str:
    """The Observation `method` of a night: epoch scoring, sleep-period rule and non-wear rule."""
    period = SLEEP_PERIOD_RULES[metrics.sleep_period_algorithm].text
    nonwear = NONWEAR_METHOD_TEXT[metrics.nonwear_algorithm]
    return f"{SLEEP_METHOD_TEXT[metrics.sleep_method]}; main sleep period: {period}; non-wear: {nonwear}"


def _utc(moment: datetime) -> str:
    if moment.tzinfo is None:
        raise ValueError("FHIR date-times need a UTC offset; got a naive datetime")
    return moment.astimezone(UTC).isoformat()


def _period(start: datetime, end: datetime) -> dict[str, str]:
    return {"start": _utc(start), "end": _utc(end)}


Resource = dict[str, Any]


def _fresh_urls(count: int) -> Iterator[str]:
    """`count` random (version 4) `urn:uuid:` fullUrls from one read of the system's random source;
    formatted directly because building ~60 `uuid.UUID` objects per request is a visible cost."""
    random = bytearray(secrets.token_bytes(16 * count))
    for start in range(0, 16 * count, 16):
        random[start + 6] = (random[start + 6] & 0x0F) | 0x40  # version 4
        random[start + 8] = (random[start + 8] & 0x3F) | 0x80  # RFC 9562 variant
    text = random.hex()
    for start in range(0, 32 * count, 32):
        h = text[start : start + 32]
        yield f"urn:uuid:{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _observation(
    metric: str, period: dict[str, str], value: float | None, *, reason: str | None = None
) -> dict[str, Any]:
    """One Observation without the request's subject and device references (see `assemble_bundle`)."""
    coded = CODES[metric]
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "status": "final",
        "category": [
            {"coding": [{"system": OBSERVATION_CATEGORY, "code": "activity", "display": "Activity"}]}
        ],
        "code": {
            "coding": [{"system": coded.system, "code": coded.code, "display": coded.display}],
            "text": coded.display,
        },
        "effectivePeriod": period,
    }
    if value is None:
        resource["dataAbsentReason"] = {
            "coding": [{"system": DATA_ABSENT_REASON, "code": "not-performed", "display": "Not Performed"}],
            "text": reason or "not computed",
        }
    else:
        resource["valueQuantity"] = {
            "value": value,
            "unit": coded.unit_display,
            "system": UCUM,
            "code": coded.unit,
        }
    return resource


def _onset_component(name: str, onset: str) -> dict[str, Any]:
    code = f"{name}-onset"
    return {
        "code": {"coding": [{"system": CODE_SYSTEM, "code": code, "display": f"{name.upper()} onset"}]},
        "valueTime": f"{onset}:00",
    }


def _recording_observations(
    observations: list[Resource], metrics: ActigraphyMetrics, period: dict[str, str]
) -> None:
    for metric in RECORDING_METRICS:
        value = getattr(metrics, metric)
        resource = _observation(metric, period, value, reason=metrics.reasons.get(metric))
        if metric in ("l5", "m10") and "valueQuantity" in resource:
            unit = ACTIVITY_RATE_UNITS.get(metrics.unit, ACTIVITY_RATE_UNITS["other"])
            resource["valueQuantity"].update(code=unit, unit=unit.replace("{", "").replace("}", ""))
        onset = getattr(metrics, f"{metric}_onset", None)
        if onset is not None:
            resource["component"] = [_onset_component(metric, onset)]
        observations.append(resource)


def _night_observations(observations: list[Resource], night: NightSleep, method: str) -> None:
    if night.sleep_onset is None or night.sleep_offset is None:
        return
    period = _period(night.sleep_onset, night.sleep_offset)
    for metric in NIGHT_METRICS:
        resource = _observation(metric, period, getattr(night, metric))
        resource["method"] = {"text": method}
        observations.append(resource)


def _day_observations(observations: list[Resource], day: DayActivity) -> None:
    if not day.valid or day.sedentary_minutes is None:
        return
    period = _period(day.start, day.end)
    for metric in DAY_METRICS:
        resource = _observation(metric, period, getattr(day, metric))
        resource["method"] = {"text": "NHANES count cut-points (Troiano et al. 2008)"}
        observations.append(resource)


def _device_resource(device: Mapping[str, str | None], subject: str | None) -> dict[str, Any]:
    resource: dict[str, Any] = {"resourceType": "Device"}
    if device.get("manufacturer"):
        resource["manufacturer"] = device["manufacturer"]
    if device.get("model"):
        resource["deviceName"] = [{"name": device["model"], "type": "model-name"}]
    if device.get("serial"):
        resource["serialNumber"] = device["serial"]
    if subject is not None and subject.startswith("Patient/"):
        resource["patient"] = {"reference": subject}
    return resource


def _risk_assessment(
    *,
    subject: str,
    model: ModelInfo,
    head_task: str,
    probability: float,
    period: dict[str, str],
) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "RiskAssessment",
        "status": "final",
        "subject": {"reference": subject},
        "occurrencePeriod": period,
        "method": {
            "coding": [
                {"system": CODE_SYSTEM, "code": "pat-model", "display": "Pretrained Actigraphy Transformer"}
            ],
            "text": f"PAT-{model.size} model {model.tag}, fine-tuned head for task {head_task!r}",
        },
        "prediction": [{"outcome": {"text": head_task}, "probabilityDecimal": probability}],
    }
    if model.demo:
        resource["meta"] = {"tag": [DEMO_TAG]}
    return resource


def metric_observations(
    metrics: ActigraphyMetrics, *, period_start: datetime, period_end: datetime
) -> list[Resource]:
    """The part of a Bundle that depends only on the computation: every Observation of one analysis,
    without the request's subject and device, each validated as an R4 `Observation`.

    Validating a week's ~60 Observations costs ~20 ms, most of a cache hit's time, so the pipeline
    computes this once, with the metrics, and caches it with them; `assemble_bundle` then validates
    only what each request adds. Raises ValueError for a naive period and pydantic's ValidationError
    for an invalid Observation.
    """
    observations: list[Resource] = []
    _recording_observations(observations, metrics, _period(period_start, period_end))
    for night in metrics.nights:
        _night_observations(observations, night, sleep_method_text(metrics))
    for day in metrics.days:
        _day_observations(observations, day)
    for resource in observations:
        Observation.model_validate(resource)
    return observations


def assemble_bundle(
    observations: list[Resource],
    *,
    subject: str | None,
    model: ModelInfo,
    period_start: datetime,
    period_end: datetime,
    probability: float | None = None,
    head_task: str | None = None,
    device: Mapping[str, str | None] | None = None,
    request_id: str | None = None,
) -> dict[str, Any]:
    """FHIR R4 `Bundle` (collection) JSON of one analysis for one request, from `metric_observations`.

    The request's parts are validated here with `fhir.resources.R4B`: the subject reference, the
    `Device`, the `RiskAssessment` and the Bundle's own fields. Adding a valid reference to a valid
    Observation keeps it valid, so the whole Bundle is valid without validating the Observations again
    (`tests/test_fhir.py` validates whole Bundles to hold this). The Observations are not modified:
    one cached computation serves concurrent requests for different subjects.

    A `RiskAssessment` is added only when a head's probability, its task and a `subject` are all
    given: R4 requires `RiskAssessment.subject`, and an unidentified wearer is not invented.
    Raises ValueError for a probability outside 0–1 and pydantic's ValidationError for an invalid part.
    """
    if probability is not None and not 0.0 <= probability <= 1.0:
        raise ValueError(f"probability must be within 0–1, got {probability}")
    # Resource ids are the server's own, random per Bundle: a client-chosen request id must not decide
    # them (two patients sent with one X-Request-ID would share urn:uuids).
    urls = _fresh_urls(len(observations) + 2)
    entries: list[dict[str, Any]] = []
    references: dict[str, dict[str, str]] = {}
    if subject is not None:
        references["subject"] = {"reference": subject}
        Reference.model_validate(references["subject"])
    if device is not None and any(device.get(k) for k in ("manufacturer", "model", "serial")):
        resource = _device_resource(device, subject)
        Device.model_validate(resource)
        entries.append({"fullUrl": next(urls), "resource": resource})
        references["device"] = {"reference": entries[0]["fullUrl"]}
    entries.extend(
        {"fullUrl": next(urls), "resource": {**resource, **references}} for resource in observations
    )
    if probability is not None and head_task is not None and subject is not None:
        risk = _risk_assessment(
            subject=subject,
            model=model,
            head_task=head_task,
            probability=probability,
            period=_period(period_start, period_end),
        )
        RiskAssessment.model_validate(risk)
        entries.append({"fullUrl": next(urls), "resource": risk})
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "collection",
        "timestamp": datetime.now(UTC).isoformat(),
    }
    if request_id is not None:
        bundle["identifier"] = {"system": REQUEST_ID_SYSTEM, "value": request_id}
    if model.demo:
        bundle["meta"] = {"tag": [DEMO_TAG]}
    Bundle.model_validate(bundle)
    bundle["entry"] = entries
    return bundle


def build_bundle(
    metrics: ActigraphyMetrics,
    *,
    period_start: datetime,
    period_end: datetime,
    subject: str | None,
    model: ModelInfo,
    probability: float | None = None,
    head_task: str | None = None,
    device: Mapping[str, str | None] | None = None,
    request_id: str | None = None,
) -> dict[str, Any]:
    """FHIR R4 `Bundle` of one analysis in one step: `metric_observations` then `assemble_bundle`."""
    return assemble_bundle(
        metric_observations(metrics, period_start=period_start, period_end=period_end),
        subject=subject,
        model=model,
        period_start=period_start,
        period_end=period_end,
        probability=probability,
        head_task=head_task,
        device=device,
        request_id=request_id,
    )
