"""The new inputs over real HTTP (`bentoml serve`, Firebase Auth Emulator tokens): raw `.gt3x`,
NSRR/MESA CSV, FHIR in, and the `attention` output."""

from __future__ import annotations

import copy
import json
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import pytest

from pat_runner.actigraphy.fhir_in import FHIR_EXAMPLE
from pat_runner.actigraphy.synthetic import week_counts
from scripts.device_files.gt3x_files import days_of_bouts, gt3x_bytes
from scripts.device_files.mesa_files import mesa_csv_bytes
from tests.factories import recording

pytestmark = pytest.mark.integration

RAW = Path(__file__).resolve().parents[2] / "shared" / "data" / "raw"


@pytest.fixture(scope="module")
def token(tokens) -> str:
    return tokens["service"]


def post(server, path: str, token: str, *, timeout: float = 120, **kwargs) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"}
    return httpx.post(f"{server.url}{path}", headers=headers, timeout=timeout, verify=server.verify, **kwargs)


def upload(server, token: str, name: str, data: bytes, **form) -> httpx.Response:
    form = {"timezone": "America/New_York", "outputs": json.dumps(["metrics", "pat"]), **form}
    return post(server, "/v1/analyze/file", token, timeout=600, files={"file": (name, data)}, data=form)


def assert_422(response: httpx.Response, fragment: str) -> None:
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["request_id"] == response.headers["x-request-id"]
    assert fragment in error["message"], error


def test_eight_days_of_raw_gt3x_become_counts_and_two_windows(pat_server, token) -> None:
    data = gt3x_bytes(datetime(2024, 3, 4, 9, 0, 0), 30, days_of_bouts(8, 30))
    response = upload(pat_server, token, "week.gt3x", data)
    assert response.status_code == 200, response.text
    body = response.json()
    quality = body["quality"]
    assert quality["epoch_seconds"] == 60 and quality["total_minutes"] == 8 * 1_440
    assert quality["start"] == "2024-03-04T14:00:00Z"  # 09:00 EST
    assert quality["missing_minutes"] == 0 and quality["windows"] == 2
    assert body["metrics"]["interdaily_stability"] is not None
    assert len(body["pat"]["windows"]) == 2


def test_bad_gt3x_files_are_422(pat_server, token) -> None:
    assert_422(upload(pat_server, token, "x.gt3x", b"PK\x03\x04 damaged"), "not a readable zip archive")
    if (RAW / "small.gt3x").exists():
        # 13.6 h of real data: decoded, then refused by the service's minimum recording length.
        assert_422(upload(pat_server, token, "small.gt3x", (RAW / "small.gt3x").read_bytes()), "minutes")


def test_mesa_csv_with_recording_start(pat_server, token) -> None:
    counts = week_counts(3, minutes=2 * 1_440 * 2).tolist()
    data = mesa_csv_bytes(datetime(2010, 3, 4, 20, 30), [int(c) for c in counts])
    response = upload(pat_server, token, "mesa-sleep-0001.csv", data, recording_start="2010-03-04")
    assert response.status_code == 200, response.text
    quality = response.json()["quality"]
    assert quality["epoch_seconds"] == 30 and quality["total_minutes"] == 2 * 1_440
    assert quality["start"] == "2010-03-05T01:30:00Z"
    assert_422(upload(pat_server, token, "mesa.csv", data), "recording_start")


def test_fhir_bundle_in_with_attention(pat_server, token) -> None:
    counts = week_counts(4)
    entries = []
    for day in range(7):
        resource = copy.deepcopy(FHIR_EXAMPLE)
        start = datetime(2024, 3, 4) + timedelta(days=day)
        resource["effectivePeriod"] = {"start": f"{start:%Y-%m-%dT%H:%M:%S}-05:00"}
        part = counts[day * 1_440 : (day + 1) * 1_440]
        resource["valueSampledData"]["data"] = " ".join(f"{c:g}" for c in part)
        entries.append({"resource": resource})
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": entries}
    body = {"resource": bundle, "timezone": "America/New_York", "options": {"outputs": ["attention", "fhir"]}}
    response = post(pat_server, "/v1/analyze/fhir", token, json=body)
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["quality"]["total_minutes"] == 10_080 and result["quality"]["missing_minutes"] == 0
    (window,) = result["pat"]["windows"]
    assert len(window["attention"]) == 10_080 and sum(window["attention"]) == pytest.approx(1, abs=1e-3)
    assert result["fhir"]["resourceType"] == "Bundle"
    subjects = {e["resource"].get("subject", {}).get("reference") for e in result["fhir"]["entry"]}
    assert "Patient/123" in subjects

    broken = copy.deepcopy(bundle)
    broken["entry"][3]["resource"]["valueSampledData"]["period"] = 45_000
    response = post(pat_server, "/v1/analyze/fhir", token, json={"resource": broken, "timezone": "UTC"})
    assert_422(response, "Bundle.entry[3].resource.valueSampledData.period")
    response = post(
        pat_server,
        "/v1/analyze/fhir",
        token,
        json={"resource": {"resourceType": "Patient"}, "timezone": "UTC"},
    )
    assert_422(response, "resourceType")


def test_attention_path_gives_the_same_embeddings_over_http(pat_server, token) -> None:
    rec = recording(8)
    plain = post(pat_server, "/v1/analyze", token, json={"recording": rec, "options": {"outputs": ["pat"]}})
    explained = post(
        pat_server, "/v1/analyze", token, json={"recording": rec, "options": {"outputs": ["attention"]}}
    )
    assert plain.status_code == explained.status_code == 200, explained.text
    fast, slow = plain.json()["pat"]["windows"][0], explained.json()["pat"]["windows"][0]
    assert fast["attention"] == [] and len(slow["attention"]) == 10_080
    # Attention always comes from the fp32 reference path; the fast path is whichever backend passed
    # the accuracy gate at start-up (cosine ≥ 0.9999 per window), exact only when it is torch itself.
    if plain.json()["model"]["backend"] == "torch":
        np.testing.assert_allclose(slow["embedding"], fast["embedding"], atol=2e-5)
    else:
        a, b = np.asarray(slow["embedding"]), np.asarray(fast["embedding"])
        assert float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))) >= 0.9999
