"""The Prometheus alerting rules: every alert has a runbook section and promtool cases where it fires
and where it stays silent; `promtool test rules` runs them (also `make alerts-test`, part of lint)."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import yaml

from scripts.local_server import ROOT

MONITORING = ROOT / "deploy" / "monitoring"
RULES = MONITORING / "pat-alerts.yaml"
RULE_TESTS = MONITORING / "pat-alerts.test.yaml"
OPERATIONS = ROOT / "docs" / "operations.md"


def _alerts() -> dict[str, dict]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {rule["alert"]: rule for group in groups for rule in group["rules"]}


def test_every_alert_has_a_runbook_section() -> None:
    headings = set(re.findall(r"^#{3,4} (PAT\w+)$", OPERATIONS.read_text(), flags=re.MULTILINE))
    for name, rule in _alerts().items():
        assert name in headings, f"docs/operations.md has no runbook section '### {name}'"
        assert rule["annotations"]["runbook_url"] == f"docs/operations.md#{name.lower()}"
        assert rule["labels"]["severity"] in {"critical", "warning"}


def test_every_alert_is_tested_firing_and_silent() -> None:
    fired: set[str] = set()
    silent: set[str] = set()
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for check in case["alert_rule_test"]:
            (fired if check["exp_alerts"] else silent).add(check["alertname"])
    assert fired == set(_alerts()) == silent


def test_promtool_rule_tests_pass() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (make alerts-test installs it)")
    result = subprocess.run(
        [promtool, "test", "rules", str(RULE_TESTS)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
