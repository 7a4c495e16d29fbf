"""The layering rule of docs/architecture.md holds, and the lint step would catch a break of it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = str(Path(sys.executable).with_name("lint-imports"))


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """`lint-imports` on the `pat_runner` package found under `root` (its PYTHONPATH)."""
    return subprocess.run(
        [LINT_IMPORTS, "--no-cache"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
    )


def test_contracts_hold() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize(
    ("module", "forbidden"),
    [
        ("actigraphy/sleep.py", "pat_runner.serving.schemas"),
        ("model/model.py", "pat_runner.cache.cache"),
        # the original Keras PAT is a benchmark baseline only (scripts/keras_reference.py)
        ("serving/runner.py", "tensorflow"),
    ],
)
def test_a_forbidden_import_fails_the_lint_step(tmp_path: Path, module: str, forbidden: str) -> None:
    shutil.copytree(
        ROOT / "pat_runner", tmp_path / "pat_runner", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / "pat_runner" / module
    target.write_text(target.read_text() + f"\nimport {forbidden}  # noqa: E402,F401\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert "BROKEN" in result.stdout and forbidden in result.stdout
