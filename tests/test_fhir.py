"""FHIR R4 Bundle output: validity, codes, UCUM units, RiskAssessment and Device rules."""

from __future__ import annotations

import copy
import uuid
from datetime import datetime
from typing import Any

import pandas as pd
import pytest
from fhir.resources.R4B.bundle import Bundle
from pydantic import ValidationError

from pat_runner.actigraphy.fhir import (
    CODE_SYSTEM,
    DEMO_TAG,
    OWN_CODES,
    assemble_bundle,
    build_bundle,
    metric_observations,
)
from pat_runner.actigraphy.metrics import ActigraphyMetrics, actigraphy_metrics
from pat_runner.model import WEEK_MINUTES
from pat_runner.serving.schemas import DeviceInfo
from tests.factories import model_info, rest_activity_series

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"

# Every Observation kind the service emits: (code system, code) → UCUM code.
EXPECTED_KINDS = {
    (CODE_SYSTEM, "interdaily-stability"): "1",
    (CODE_SYSTEM, "intradaily-variability"): "1",
    (CODE_SYSTEM, "relative-amplitude"): "1",
    (CODE_SYSTEM, "l5"): "{counts}/min",
    (CODE_SYSTEM, "m10"): "{counts}/min",
    (LOINC, "93832-4"): "min",
    (CODE_SYSTEM, "sleep-efficiency"): "%",
    (CODE_SYSTEM, "wake-after-sleep-onset"): "min",
    (CODE_SYSTEM, "awakenings"): "1",
    (CODE_SYSTEM, "sedentary-duration"): "min",
    (LOINC, "101688-0"): "min",
    (LOINC, "101689-8"): "min",
    (LOINC, "101690-6"): "min",
}


def week(tz: str = "America/New_York", seed: int = 0) -> pd.Series:
    """A week from Wednesday 2024-03-06 local time (across the US DST change). A worn wrist at rest still
    gives the odd count (hours of exact zeros would be non-wear)."""
    return rest_activity_series(WEEK_MINUTES, seed, start="2024-03-06 00:00", tz=tz, asleep_mean=0.5)


def bundle_for(metrics: ActigraphyMetrics, series: pd.Series, **overrides: Any) -> dict[str, Any]:
    arguments: dict[str, Any] = {
        "period_start": series.index[0].to_pydatetime(),
        "period_end": (series.index[-1] + pd.Timedelta(minutes=1)).to_pydatetime(),
        "subject": "Patient/123",
        "model": model_info(tag="pat-m:20240301", size="M", demo=False),
        "request_id": "req-1",
    }
    arguments.update(overrides)
    return build_bundle(metrics, **arguments)


def resources(bundle: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == kind]


@pytest.fixture(scope="module")
def series() -> pd.Series:
    return week()


@pytest.fixture(scope="module")
def metrics(series: pd.Series) -> ActigraphyMetrics:
    return actigraphy_metrics(series)


def test_bundle_validates_and_every_observation_kind_has_its_code_and_unit(
    series: pd.Series, metrics: ActigraphyMetrics
) -> None:
    bundle = bundle_for(metrics, series)
    Bundle.model_validate(bundle)
    assert bundle["type"] == "collection"
    seen = set()
    for observation in resources(bundle, "Observation"):
        coding = observation["code"]["coding"][0]
        key = (coding["system"], coding["code"])
        assert key in EXPECTED_KINDS, key
        seen.add(key)
        quantity = observation["valueQuantity"]
        assert quantity["system"] == UCUM and quantity["code"] == EXPECTED_KINDS[key]
        assert observation["category"][0]["coding"][0]["code"] == "activity"
        assert observation["subject"] == {"reference": "Patient/123"}
        assert observation["effectivePeriod"]["start"].endswith("+00:00")
        assert observation["effectivePeriod"]["end"].endswith("+00:00")
        if coding["system"] == CODE_SYSTEM:
            assert coding["code"] in OWN_CODES
    assert seen == set(EXPECTED_KINDS)


def test_l5_and_m10_carry_their_local_onsets(series: pd.Series, metrics: ActigraphyMetrics) -> None:
    bundle = bundle_for(metrics, series)
    by_code = {o["code"]["coding"][0]["code"]: o for o in resources(bundle, "Observation")}
    assert by_code["l5"]["component"][0]["valueTime"] == f"{metrics.l5_onset}:00"
    assert by_code["m10"]["component"][0]["code"]["coding"][0]["code"] == "m10-onset"


def test_risk_assessment_names_task_and_model_and_needs_a_subject(
    series: pd.Series, metrics: ActigraphyMetrics
) -> None:
    bundle = bundle_for(
        metrics,
        series,
        probability=0.42,
        head_task="depression",
        model=model_info(tag="pat-m:20240301", size="M", demo=True),
    )
    Bundle.model_validate(bundle)
    (risk,) = resources(bundle, "RiskAssessment")
    assert risk["prediction"][0]["probabilityDecimal"] == 0.42
    assert risk["prediction"][0]["outcome"]["text"] == "depression"
    assert "pat-m:20240301" in risk["method"]["text"] and "depression" in risk["method"]["text"]
    assert risk["meta"]["tag"] == [DEMO_TAG] and bundle["meta"]["tag"] == [DEMO_TAG]
    anonymous = bundle_for(metrics, series, subject=None, probability=0.42, head_task="depression")
    Bundle.model_validate(anonymous)
    assert resources(anonymous, "RiskAssessment") == []
    assert all("subject" not in o for o in resources(anonymous, "Observation"))
    assert "meta" not in anonymous


def test_probability_outside_unit_interval_is_rejected(series: pd.Series, metrics: ActigraphyMetrics) -> None:
    with pytest.raises(ValueError, match="probability"):
        bundle_for(metrics, series, probability=1.5, head_task="depression")


def test_device_is_referenced_by_observations(series: pd.Series, metrics: ActigraphyMetrics) -> None:
    device = DeviceInfo(manufacturer="ActiGraph", model="GT3X+", serial="TAS1D47140221")
    bundle = bundle_for(metrics, series, device=device.model_dump())
    Bundle.model_validate(bundle)
    (resource,) = resources(bundle, "Device")
    assert resource["serialNumber"] == "TAS1D47140221"
    assert resource["deviceName"] == [{"name": "GT3X+", "type": "model-name"}]
    device_url = bundle["entry"][0]["fullUrl"]
    assert all(o["device"] == {"reference": device_url} for o in resources(bundle, "Observation"))


def test_null_metrics_become_data_absent_observations_and_ids_are_per_bundle() -> None:
    short = week().iloc[:1500]
    metrics = actigraphy_metrics(short)
    bundle = bundle_for(metrics, short)
    Bundle.model_validate(bundle)
    by_code = {o["code"]["coding"][0]["code"]: o for o in resources(bundle, "Observation")}
    absent = by_code["interdaily-stability"]
    assert "valueQuantity" not in absent
    assert absent["dataAbsentReason"]["text"] == metrics.reasons["interdaily_stability"]
    # The same request id again: resource ids are generated server-side, never derived from it.
    again = bundle_for(metrics, short)
    assert not {e["fullUrl"] for e in again["entry"]} & {e["fullUrl"] for e in bundle["entry"]}


def test_steps_recording_has_only_rhythm_observations() -> None:
    series = week(tz="Europe/London")
    bundle = bundle_for(actigraphy_metrics(series, unit="steps"), series)
    Bundle.model_validate(bundle)
    codes = {o["code"]["coding"][0]["code"] for o in resources(bundle, "Observation")}
    assert codes == {"interdaily-stability", "intradaily-variability", "relative-amplitude", "l5", "m10"}
    units = {
        o["code"]["coding"][0]["code"]: o["valueQuantity"]["code"] for o in resources(bundle, "Observation")
    }
    assert units["l5"] == units["m10"] == "{steps}/min"


def test_naive_period_is_rejected(series: pd.Series, metrics: ActigraphyMetrics) -> None:
    with pytest.raises(ValueError, match="offset"):
        bundle_for(metrics, series, period_start=datetime(2024, 3, 6))


def test_one_computation_serves_requests_for_different_subjects(
    series: pd.Series, metrics: ActigraphyMetrics
) -> None:
    period = {
        "period_start": series.index[0].to_pydatetime(),
        "period_end": (series.index[-1] + pd.Timedelta(minutes=1)).to_pydatetime(),
    }
    observations = metric_observations(metrics, **period)
    pristine = copy.deepcopy(observations)
    device = DeviceInfo(manufacturer="ActiGraph", model="GT3X+").model_dump()
    bundles = [
        assemble_bundle(
            observations,
            subject=subject,
            model=model_info(tag="pat-m:20240301", size="M", demo=False),
            probability=0.3,
            head_task="depression",
            device=device,
            request_id=f"req-{i}",
            **period,
        )
        for i, subject in enumerate(["Patient/1", "Patient/2", None])
    ]
    # Every assembled Bundle is valid as a whole, though only the request's parts were validated.
    for bundle in bundles:
        Bundle.model_validate(bundle)
    assert {o["subject"]["reference"] for o in resources(bundles[0], "Observation")} == {"Patient/1"}
    assert {o["subject"]["reference"] for o in resources(bundles[1], "Observation")} == {"Patient/2"}
    assert all("subject" not in o for o in resources(bundles[2], "Observation"))
    # The cached Observations are shared by concurrent requests: assembling never changes them.
    assert observations == pristine
    assert all("subject" not in o and "device" not in o for o in observations)
    # Resource ids are fresh random UUIDs, unique within and across Bundles.
    urls = [e["fullUrl"] for bundle in bundles for e in bundle["entry"]]
    assert len(set(urls)) == len(urls)
    assert all(uuid.UUID(url.removeprefix("urn:uuid:")).version == 4 for url in urls)


def test_request_parts_are_validated_when_assembled(series: pd.Series, metrics: ActigraphyMetrics) -> None:
    with pytest.raises(ValidationError):
        bundle_for(metrics, series, subject="")
    with pytest.raises(ValidationError):
        bundle_for(metrics, series, request_id="")
