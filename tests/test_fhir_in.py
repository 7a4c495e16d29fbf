"""FHIR R4 in: Observations with valueSampledData, Bundles of them, and 422s naming the element."""

from __future__ import annotations

import copy
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from pat_runner.actigraphy.fhir_in import FHIR_EXAMPLE, read_fhir_resource
from pat_runner.errors import InvalidInput

EST = timezone(timedelta(hours=-5))


def read(resource: dict):
    return read_fhir_resource(resource, timezone="America/New_York", max_minutes=80_640, max_values=500_000)


def observation(start: str, data: str, *, period: int = 60_000, **changes) -> dict:
    resource = copy.deepcopy(FHIR_EXAMPLE)
    resource["effectivePeriod"] = {"start": start}
    resource["valueSampledData"].update(period=period, data=data)
    resource.update(changes)
    return resource


def bundle(*resources: dict) -> dict:
    return {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in resources]}


def test_example_observation() -> None:
    recording = read(FHIR_EXAMPLE)
    assert recording.start == datetime(2024, 3, 4, tzinfo=EST)
    assert recording.epoch_seconds == 60 and recording.unit == "counts"
    assert recording.subject == "Patient/123" and recording.timezone == "America/New_York"
    np.testing.assert_array_equal(recording.values, [0, 12, np.nan, 340, 512, 95, 0, 0])


def test_origin_and_factor_scale_the_data() -> None:
    resource = observation("2024-03-04T00:00:00Z", "1 2 L 3", period=30_000)
    resource["valueSampledData"].update(origin={"value": 10, "unit": "steps"}, factor=2)
    recording = read(resource)
    assert recording.epoch_seconds == 30 and recording.unit == "steps"
    np.testing.assert_array_equal(recording.values, [12, 14, np.nan, 16])


def test_bundle_pieces_are_placed_by_start_with_gaps_missing() -> None:
    later = observation("2024-03-04T00:05:00-05:00", "5 6")
    earlier = observation("2024-03-04T00:00:00-05:00", "1 2 3")
    recording = read(bundle(later, earlier))
    np.testing.assert_array_equal(recording.values, [1, 2, 3, np.nan, np.nan, 5, 6])


@pytest.mark.parametrize(
    ("resource", "message"),
    [
        ({"resourceType": "Patient"}, "resourceType: expected 'Observation' or 'Bundle'"),
        ({"status": "final"}, "resourceType: missing"),
        ({k: v for k, v in FHIR_EXAMPLE.items() if k != "status"}, r"^Observation\.status: "),
        ({**FHIR_EXAMPLE, "colour": "red"}, r"^Observation\.colour: Extra inputs"),
        ({**FHIR_EXAMPLE, "status": "entered-in-error"}, r"^Observation\.status: 'entered-in-error'"),
        (
            {k: v for k, v in FHIR_EXAMPLE.items() if k != "valueSampledData"},
            r"Observation\.valueSampledData: required",
        ),
        (
            {k: v for k, v in FHIR_EXAMPLE.items() if k != "effectivePeriod"},
            r"Observation\.effectivePeriod\.start: required",
        ),
        (observation("2024-03-04", "1 2"), r"Observation\.effectivePeriod\.start: must be a date and time"),
        (
            observation("2024-03-04T00:00:00Z", "1 2", period=1500),
            r"Observation\.valueSampledData\.period: 1500 ms",
        ),
        (
            observation("2024-03-04T00:00:00Z", "1 2", period=120_000),
            r"Observation\.valueSampledData\.period \(in seconds\)",
        ),
        (observation("2024-03-04T00:00:00Z", "1 x 2"), r"Observation\.valueSampledData\.data: value 2 'x'"),
        (observation("2024-03-04T00:00:00Z", "1 -5"), r"Observation\.valueSampledData: origin \+ factor"),
        (
            observation("2024-03-04T00:00:00Z", "1", subject={"reference": "http://x/Patient/1"}),
            r"Observation\.subject\.reference",
        ),
        (
            bundle(observation("2024-03-04T00:00:00Z", "1 2"), {"resourceType": "Patient"}),
            r"^Bundle\.entry\[1\]\.resource: expected an Observation, got Patient",
        ),
        (
            bundle(
                observation("2024-03-04T00:00:00Z", "1 2"),
                observation("2024-03-04T00:01:00Z", "1", period=30_000),
            ),
            r"Bundle\.entry\[1\]\.resource\.valueSampledData\.period: differs",
        ),
        (
            bundle(observation("2024-03-04T00:00:00Z", "1 2 3"), observation("2024-03-04T00:02:00Z", "4")),
            r"Bundle\.entry\[1\]\.resource\.effectivePeriod\.start: overlaps",
        ),
        (
            bundle(observation("2024-03-04T00:00:00Z", "1"), observation("2024-03-04T00:01:30Z", "4")),
            r"Bundle\.entry\[1\]\.resource\.effectivePeriod\.start: not on the 60-s epoch grid",
        ),
        ({"resourceType": "Bundle", "type": "collection"}, r"Bundle\.entry: the Bundle has no Observations"),
        (
            {
                "resourceType": "Bundle",
                "type": "collection",
                "entry": [{"resource": {**FHIR_EXAMPLE, "status": 5}}],
            },
            r"^Bundle\.entry\[0\]\.resource",
        ),
    ],
)
def test_bad_resources_are_422_naming_the_element(resource: dict, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        read(resource)


def test_unknown_timezone_is_422() -> None:
    with pytest.raises(InvalidInput, match="timezone"):
        read_fhir_resource(FHIR_EXAMPLE, timezone="Mars/Olympus", max_minutes=80_640, max_values=10)


def test_overflowing_values_are_422() -> None:
    with pytest.raises(InvalidInput, match="not finite"):
        read(observation("2024-03-04T00:00:00Z", "1 1e999"))
