"""docs/operations.md is the operators' reference: every setting the service reads has its row there."""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices

from pat_runner.settings import Settings

OPERATIONS = Path(__file__).resolve().parents[1] / "docs" / "operations.md"


def _variables(name: str) -> list[str]:
    alias = Settings.model_fields[name].validation_alias
    if isinstance(alias, str):
        return [alias]
    if isinstance(alias, AliasChoices):
        return [choice for choice in alias.choices if isinstance(choice, str)]
    return [f"PAT_{name.upper()}"]


def test_every_setting_has_a_row_in_the_operations_table() -> None:
    table_rows = [line for line in OPERATIONS.read_text().splitlines() if line.startswith("| `")]
    undocumented = [
        name
        for name in Settings.model_fields
        if not any(row.startswith(f"| `{variable}`") for variable in _variables(name) for row in table_rows)
    ]
    assert undocumented == []
