"""FHIR R4 in: an `Observation` whose `valueSampledData` is the epoch series, or a `Bundle` of them.

This is how a health data service that keeps device data in FHIR stores actigraphy (HL7 FHIR R4,
`SampledData`: hl7.org/fhir/R4/datatypes.html#SampledData): `effectivePeriod.start` is the start of the
first epoch, `valueSampledData.period` the epoch length in milliseconds, `origin` the zero point and its
unit, `factor` (default 1) the scale, and `data` the space-separated values, `E` (error) for a missing
epoch; `L` and `U` (beyond the detection limits) are missing as well. Value = origin + factor × data.

Resources are validated with `fhir.resources.R4B`, whose Observation and SampledData are R4's
(`fhir.resources`' default R5 models have `interval`/`intervalUnit` instead of R4's `period` and would
refuse an R4 resource). A `Bundle` is one recording split into pieces (e.g. one Observation per day):
its Observations must share epoch length, unit and subject, and are placed by their start times; gaps
between them are missing epochs, overlaps are refused. Every error names the FHIR element that is wrong
(`Bundle.entry[2].resource.valueSampledData.period`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import numpy as np
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.observation import Observation
from pydantic import ValidationError

from pat_runner.actigraphy.preprocess import RawRecording, check_epoch_seconds, load_zone
from pat_runner.errors import InvalidInput

#: UCUM codes and units of `origin` that mean activity counts or steps; anything else is `other`.
COUNT_UNITS = frozenset({"{counts}", "{count}", "counts", "count", "{activity_counts}"})
STEP_UNITS = frozenset({"{steps}", "steps", "{step}", "step"})
MISSING_TOKENS = frozenset({"E", "L", "U"})
REFUSED_STATUS = frozenset({"entered-in-error", "cancelled"})
_NUMBER = re.compile(r"^-?\d+(\.\d+)?([eE][+-]?\d+)?$")
#: A FHIR literal relative reference `Type/id` (ids: hl7.org/fhir/R4/datatypes.html#id).
_REFERENCE = re.compile(r"^[A-Za-z]{1,64}/[A-Za-z0-9\-\.]{1,64}$")

#: A request example (the OpenAPI document and docs/inputs.md show it).
FHIR_EXAMPLE: dict[str, Any] = {
    "resourceType": "Observation",
    "status": "final",
    "category": [
        {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "activity"}
            ]
        }
    ],
    "code": {"text": "Wrist actigraphy activity counts per epoch"},
    "subject": {"reference": "Patient/123"},
    "effectivePeriod": {"start": "2024-03-04T00:00:00-05:00"},
    "valueSampledData": {
        "origin": {"value": 0, "unit": "counts", "system": "http://unitsofmeasure.org", "code": "{counts}"},
        "period": 60000,
        "dimensions": 1,
        "data": "0 12 E 340 512 95 0 0",
    },
}


@dataclass(frozen=True)
class _Piece:
    where: str
    start: datetime
    epoch_seconds: int
    unit: str
    subject: str | None
    values: np.ndarray


def read_fhir_resource(
    resource: dict[str, Any], *, timezone: str, max_minutes: int, max_values: int
) -> RawRecording:
    """An R4 Observation or Bundle of Observations (JSON) → one recording; 422 naming the element."""
    load_zone(timezone)
    kind = resource.get("resourceType")
    if kind == "Observation":
        pieces = [_piece(_validate(Observation, resource, "Observation"), "Observation", max_values)]
    elif kind == "Bundle":
        bundle = _validate(Bundle, resource, "Bundle")
        pieces = []
        for i, entry in enumerate(bundle.entry or []):
            where = f"Bundle.entry[{i}].resource"
            if entry.resource is None or entry.resource.get_resource_type() != "Observation":
                found = entry.resource.get_resource_type() if entry.resource is not None else "nothing"
                raise InvalidInput(f"{where}: expected an Observation, got {found}")
            pieces.append(_piece(entry.resource, where, max_values))
        if not pieces:
            raise InvalidInput("Bundle.entry: the Bundle has no Observations")
    else:
        raise InvalidInput(
            f"resourceType: expected 'Observation' or 'Bundle', got {str(kind)[:40]!r}"
            if kind
            else "resourceType: missing; send a FHIR R4 Observation or Bundle"
        )
    return _combine(pieces, timezone, max_minutes)


def _validate(model: type[Observation] | type[Bundle], resource: dict[str, Any], root: str) -> Any:
    try:
        return model.model_validate(resource)
    except ValidationError as exc:
        error = exc.errors(include_url=False, include_input=False)[0]
        raise InvalidInput(f"{_path(root, error['loc'])}: {error['msg']}") from None
    except Exception as exc:
        # Whatever else the FHIR models raise on an untrusted document is the document's fault.
        raise InvalidInput(f"{root}: not a valid FHIR R4 {root} ({type(exc).__name__})") from None


def _path(root: str, loc: tuple[Any, ...]) -> str:
    path = root
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def _piece(observation: Observation, where: str, max_values: int) -> _Piece:
    if observation.status in REFUSED_STATUS:
        raise InvalidInput(f"{where}.status: '{observation.status}' Observations are not data to analyse")
    sampled = observation.valueSampledData
    if sampled is None:
        raise InvalidInput(f"{where}.valueSampledData: required (the epoch series)")
    if observation.effectivePeriod is None or observation.effectivePeriod.start is None:
        raise InvalidInput(f"{where}.effectivePeriod.start: required (start of the first epoch)")
    start = observation.effectivePeriod.start
    if not isinstance(start, datetime) or start.tzinfo is None:
        raise InvalidInput(f"{where}.effectivePeriod.start: must be a date and time with a UTC offset")
    period_ms = Decimal(str(sampled.period))
    if period_ms <= 0 or period_ms % 1000:
        raise InvalidInput(
            f"{where}.valueSampledData.period: {period_ms} ms is not a whole number of seconds"
        )
    epoch = int(period_ms // 1000)
    check_epoch_seconds(epoch, where=f"{where}.valueSampledData.period (in seconds)")
    if sampled.dimensions != 1:
        raise InvalidInput(f"{where}.valueSampledData.dimensions: must be 1 (one activity value per epoch)")
    if sampled.data is None or not sampled.data.strip():
        raise InvalidInput(f"{where}.valueSampledData.data: no values")
    tokens = sampled.data.split()
    if len(tokens) > max_values:
        raise InvalidInput(f"{where}.valueSampledData.data: {len(tokens):,} values, more than {max_values:,}")
    values = np.empty(len(tokens), dtype=np.float64)
    for i, token in enumerate(tokens):
        if token in MISSING_TOKENS:
            values[i] = np.nan
        elif _NUMBER.match(token):
            values[i] = float(token)
        else:
            raise InvalidInput(
                f"{where}.valueSampledData.data: value {i + 1} {token[:20]!r} is not a number, E, L or U"
            )
    origin = sampled.origin
    if origin.value is None:
        raise InvalidInput(f"{where}.valueSampledData.origin.value: required")
    factor = float(sampled.factor) if sampled.factor is not None else 1.0
    values = float(origin.value) + factor * values
    if np.isinf(values).any():
        raise InvalidInput(f"{where}.valueSampledData: origin + factor × data is not finite")
    if (values < 0).any():
        raise InvalidInput(f"{where}.valueSampledData: origin + factor × data is negative (not activity)")
    unit_names = {str(u).strip().lower() for u in (origin.code, origin.unit) if u}
    unit = "counts" if unit_names & COUNT_UNITS else "steps" if unit_names & STEP_UNITS else "other"
    subject = observation.subject.reference if observation.subject is not None else None
    if subject is not None and not _REFERENCE.match(subject):
        raise InvalidInput(f"{where}.subject.reference: must be a relative reference such as Patient/123")
    return _Piece(where=where, start=start, epoch_seconds=epoch, unit=unit, subject=subject, values=values)


def _combine(pieces: list[_Piece], timezone: str, max_minutes: int) -> RawRecording:
    pieces = sorted(pieces, key=lambda piece: piece.start)
    first = pieces[0]
    epoch = first.epoch_seconds
    offsets = []
    for piece in pieces:
        for name, value, expected in (
            ("valueSampledData.period", piece.epoch_seconds, epoch),
            ("valueSampledData.origin", piece.unit, first.unit),
            ("subject", piece.subject, first.subject),
        ):
            if value != expected:
                raise InvalidInput(
                    f"{piece.where}.{name}: differs from {first.where}'s; one recording per request"
                )
        seconds = (piece.start - first.start).total_seconds()
        if seconds % epoch:
            raise InvalidInput(
                f"{piece.where}.effectivePeriod.start: not on the {epoch}-s epoch grid of {first.where}"
            )
        offsets.append(int(seconds // epoch))
    total = max(offset + len(piece.values) for offset, piece in zip(offsets, pieces, strict=True))
    if -(-total * epoch // 60) > max_minutes:
        raise InvalidInput(
            f"the Observations span {-(-total * epoch // 60):,} minutes, longer than the maximum of "
            f"{max_minutes:,}; send them in parts"
        )
    values = np.full(total, np.nan)
    end = 0
    for offset, piece in zip(offsets, pieces, strict=True):
        if offset < end:
            raise InvalidInput(
                f"{piece.where}.effectivePeriod.start: overlaps the previous Observation's epochs"
            )
        values[offset : offset + len(piece.values)] = piece.values
        end = offset + len(piece.values)
    return RawRecording(
        start=first.start,
        timezone=timezone,
        epoch_seconds=epoch,
        values=values,
        unit=first.unit,
        subject=first.subject,
    )
