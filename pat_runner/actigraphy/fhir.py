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

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from fhir.resources.R4B.bundle import Bundle
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
# Fixed namespace so the same request always yields the same resource ids (urn:uuid fullUrls).
_ID_NAMESPACE = uuid.UUID("3b8f2c0e-6a47-5f1d-9a3e-6c1f4d2b7e90")


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


class _BundleWriter:
    def __init__(self, *, subject: str | None, device_url: str | None) -> None:
        self.subject = subject
        self.device_url = device_url
        # Resource ids are the server's own, fresh per Bundle: a client-chosen request id must not
        # decide them (two patients sent with one X-Request-ID would share urn:uuids).
        self.seed = uuid.uuid4().hex
        self.entries: list[dict[str, Any]] = []

    def full_url(self, key: str) -> str:
        return f"urn:uuid:{uuid.uuid5(_ID_NAMESPACE, f'{self.seed}/{key}')}"

    def add(self, key: str, resource: dict[str, Any]) -> str:
        url = self.full_url(key)
        self.entries.append({"fullUrl": url, "resource": resource})
        return url

    def observation(
        self, metric: str, period: dict[str, str], value: float | None, *, reason: str | None = None
    ) -> dict[str, Any]:
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
        if self.subject is not None:
            resource["subject"] = {"reference": self.subject}
        if self.device_url is not None:
            resource["device"] = {"reference": self.device_url}
        if value is None:
            resource["dataAbsentReason"] = {
                "coding": [
                    {"system": DATA_ABSENT_REASON, "code": "not-performed", "display": "Not Performed"}
                ],
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
    writer: _BundleWriter, metrics: ActigraphyMetrics, period: dict[str, str]
) -> None:
    for metric in RECORDING_METRICS:
        value = getattr(metrics, metric)
        resource = writer.observation(metric, period, value, reason=metrics.reasons.get(metric))
        if metric in ("l5", "m10") and "valueQuantity" in resource:
            unit = ACTIVITY_RATE_UNITS.get(metrics.unit, ACTIVITY_RATE_UNITS["other"])
            resource["valueQuantity"].update(code=unit, unit=unit.replace("{", "").replace("}", ""))
        onset = getattr(metrics, f"{metric}_onset", None)
        if onset is not None:
            resource["component"] = [_onset_component(metric, onset)]
        writer.add(f"recording/{metric}", resource)


def _night_observations(writer: _BundleWriter, night: NightSleep, method: str) -> None:
    if night.sleep_onset is None or night.sleep_offset is None:
        return
    period = _period(night.sleep_onset, night.sleep_offset)
    for metric in NIGHT_METRICS:
        resource = writer.observation(metric, period, getattr(night, metric))
        resource["method"] = {"text": method}
        writer.add(f"night/{night.night_of.isoformat()}/{metric}", resource)


def _day_observations(writer: _BundleWriter, day: DayActivity) -> None:
    if not day.valid or day.sedentary_minutes is None:
        return
    period = _period(day.start, day.end)
    for metric in DAY_METRICS:
        resource = writer.observation(metric, period, getattr(day, metric))
        resource["method"] = {"text": "NHANES count cut-points (Troiano et al. 2008)"}
        writer.add(f"day/{day.date.isoformat()}/{metric}", resource)


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
    """FHIR R4 `Bundle` (collection) JSON of one analysis, validated with `fhir.resources.R4B`.

    A `RiskAssessment` is added only when a head's probability, its task and a `subject` are all
    given: R4 requires `RiskAssessment.subject`, and an unidentified wearer is not invented.
    Raises ValueError for a probability outside 0–1 and pydantic's ValidationError for an invalid
    Bundle.
    """
    if probability is not None and not 0.0 <= probability <= 1.0:
        raise ValueError(f"probability must be within 0–1, got {probability}")
    writer = _BundleWriter(subject=subject, device_url=None)
    if device is not None and any(device.get(k) for k in ("manufacturer", "model", "serial")):
        writer.device_url = writer.add("device", _device_resource(device, subject))
    recording_period = _period(period_start, period_end)
    _recording_observations(writer, metrics, recording_period)
    for night in metrics.nights:
        _night_observations(writer, night, sleep_method_text(metrics))
    for day in metrics.days:
        _day_observations(writer, day)
    if probability is not None and head_task is not None and subject is not None:
        writer.add(
            "risk",
            _risk_assessment(
                subject=subject,
                model=model,
                head_task=head_task,
                probability=probability,
                period=recording_period,
            ),
        )
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "collection",
        "timestamp": datetime.now(UTC).isoformat(),
        "entry": writer.entries,
    }
    if request_id is not None:
        bundle["identifier"] = {"system": REQUEST_ID_SYSTEM, "value": request_id}
    if model.demo:
        bundle["meta"] = {"tag": [DEMO_TAG]}
    Bundle.model_validate(bundle)
    return bundle
