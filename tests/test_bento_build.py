"""`bentoml build` on the repository: the Bento holds the service, references the served model and
carries a generated Dockerfile. Runs offline (no package locking) against a temporary model store."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
BENTOML = str(Path(sys.executable).with_name("bentoml"))


@pytest.mark.parametrize("bentofile", ["bentofile.yaml", "bentofile.cuda.yaml"])
def test_bentoml_build(model_store: Path, tmp_path: Path, bentofile: str) -> None:
    home = tmp_path / "home"
    subprocess.run(["cp", "-r", str(model_store), str(home)], check=True)
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true", "PAT_AUTH": "disabled"}
    result = subprocess.run(
        [BENTOML, "build", "-f", bentofile, "--output", "tag", "."],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (bento_dir,) = [
        p for p in (home / "bentos" / "pat_service").iterdir() if p.is_dir() and p.name != "latest"
    ]
    manifest = yaml.safe_load((bento_dir / "bento.yaml").read_text())
    assert manifest["service"] == "service:PATService"
    services = {service["name"]: service for service in manifest["services"]}
    assert set(services) == {"pat_service", "pat_model"}
    for service in services.values():
        assert [m["tag"].split(":")[0] for m in service["models"]] == ["pat-demo"]
    assert services["pat_service"]["dependencies"] == [{"service": "pat_model"}]
    assert (bento_dir / "src" / "service.py").exists()
    assert (bento_dir / "src" / "pat_runner" / "serving" / "runner.py").exists()
    assert not (bento_dir / "src" / "tests").exists()
    dockerfile = (bento_dir / "env" / "docker" / "Dockerfile").read_text()
    assert "FROM " in dockerfile and "ENV BENTOML_DO_NOT_TRACK=$BENTOML_DO_NOT_TRACK" in dockerfile
    requirements = (bento_dir / "env" / "python" / "requirements.txt").read_text()
    assert "torch==2.13.0" in requirements
    if bentofile == "bentofile.cuda.yaml":
        assert "python:3.11-slim-bookworm" in dockerfile
