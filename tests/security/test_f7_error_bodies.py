"""Finding 7: error bodies echoed input — pydantic's raw text with `input_value=[…activity values…]`,
an `.agd` setting value unbounded (5 MB in, 5 MB out), the Firebase project id in the 401 message.
Now errors name the field and the rule, never the value, and are bounded in size."""

from __future__ import annotations

import sqlite3

import pytest

from tests.factories import recording
from tests.security.harness import assert_bounded_error, attack, bearer, upload
from tests.security.test_f3_agd_sql import SETTINGS_TABLE

pytestmark = pytest.mark.integration


def test_huge_agd_setting_is_not_echoed(pat_server, tokens, tmp_path) -> None:
    path = tmp_path / "big-setting.agd"
    with sqlite3.connect(path) as db:
        db.execute(SETTINGS_TABLE)
        db.execute(
            "INSERT INTO settings (settingName, settingValue) VALUES ('epochlength', ?)", ("7" * 5 * 2**20,)
        )
        db.execute("CREATE TABLE data (dataTimestamp INTEGER, axis1 REAL)")
    db.close()
    content = path.read_bytes()
    outcome = attack(pat_server, lambda c: upload(c, tokens["service"], content, "x.agd"))
    outcome.check(status=422, cpu_s=1.5, rss_mb=200)
    assert "7" * 64 not in assert_bounded_error(outcome.responses[0], code="invalid_input")


def test_rejected_values_are_not_echoed(pat_server, tokens) -> None:
    body = recording(5, minutes=1_440, subject=None)
    body["values"][100] = -424242.5
    outcome = attack(
        pat_server,
        lambda c: c.post("/v1/analyze", json={"recording": body}, headers=bearer(tokens["service"])),
    )
    outcome.check(status=422, cpu_s=1.5, rss_mb=100)
    message = assert_bounded_error(outcome.responses[0], code="invalid_input")
    assert "424242" not in outcome.responses[0].text and "values[100]" in message
    wrong_type = {"recording": {**body, "values": ["secret-value-31337"] * 3}}
    typed = attack(
        pat_server, lambda c: c.post("/v1/analyze", json=wrong_type, headers=bearer(tokens["service"]))
    )
    typed.check(status=422, cpu_s=1.0, rss_mb=100)
    assert "31337" not in typed.responses[0].text and "input_value" not in typed.responses[0].text


def test_401_does_not_name_the_project(pat_server, firebase_emulator) -> None:
    outcome = attack(pat_server, lambda c: c.get("/v1/models", headers=bearer("x.y.z")))
    outcome.check(status=401, cpu_s=1.0, rss_mb=100)
    assert firebase_emulator.project_id not in outcome.responses[0].text
    assert_bounded_error(outcome.responses[0], code="unauthenticated")
