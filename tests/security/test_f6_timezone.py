"""Finding 6: `timezone=America` (a directory), `Etc`, or a name over 255 characters on
`/v1/analyze/file` gave 500 with the full traceback and the input; a 1 MB zone made a 1 MB log line.
Now every path checks the name against `zoneinfo.available_timezones()` and caps its length."""

from __future__ import annotations

import pytest

from tests.factories import device_export, recording
from tests.security.harness import assert_bounded_error, attack, bearer, upload, wait_for_log

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("zone", ["America", "Etc", "Z" * 300, "Europe/" + "x" * (2**20 - 16)])
def test_bad_zone_names_are_422_without_echo(pat_server, tokens, zone) -> None:
    _, content = device_export(".agd")
    outcome = attack(pat_server, lambda c: upload(c, tokens["service"], content, "x.agd", timezone=zone))
    outcome.check(status=422, cpu_s=1.5, rss_mb=150)
    message = assert_bounded_error(outcome.responses[0])
    text = outcome.responses[0].text
    assert repr(zone)[:40] not in message and repr(zone)[:40] not in text
    if len(zone) > 64:
        assert zone[-40:] not in text
    logs = wait_for_log(pat_server, outcome.responses[0].headers["x-request-id"])
    assert max(map(len, logs.splitlines())) < 40_000


def test_json_recording_with_directory_zone_is_422(pat_server, tokens) -> None:
    body = {"recording": {**recording(4, minutes=1_440), "timezone": "America"}}
    outcome = attack(
        pat_server, lambda c: c.post("/v1/analyze", json=body, headers=bearer(tokens["service"]))
    )
    outcome.check(status=422, cpu_s=1.0, rss_mb=100)
    assert "'America'" not in assert_bounded_error(outcome.responses[0], code="validation_error")
