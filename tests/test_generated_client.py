"""The integration path of the health data service: a Python client generated from the served OpenAPI
document by a standard generator (`openapi-python-client`, from PyPI), calling analyze, embed, batch,
file upload and models against a live server with a real Firebase ID token."""

from __future__ import annotations

import importlib
import subprocess
import sys
from io import BytesIO
from pathlib import Path
from types import ModuleType

import httpx
import pytest

from tests.factories import device_export, recording

pytestmark = pytest.mark.integration

GENERATOR = str(Path(sys.executable).with_name("openapi-python-client"))
PACKAGE = "pat_generated_client"


@pytest.fixture(scope="module")
def generated(pat_server, tokens, tmp_path_factory: pytest.TempPathFactory) -> ModuleType:
    directory = tmp_path_factory.mktemp("generated-client")
    document = httpx.get(
        f"{pat_server.url}/docs.json", headers={"Authorization": f"Bearer {tokens['service']}"}, timeout=30
    )
    assert document.status_code == 200
    (directory / "openapi.json").write_bytes(document.content)
    # No post hooks: formatting the generated code is not what is tested.
    (directory / "config.yaml").write_text("post_hooks: []\n")
    completed = subprocess.run(
        [
            GENERATOR,
            "generate",
            "--path",
            str(directory / "openapi.json"),
            "--meta",
            "none",
            "--output-path",
            str(directory / PACKAGE),
            "--config",
            str(directory / "config.yaml"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output
    # A warning means part of the document could not be turned into client code.
    assert "Warning" not in output, output
    sys.path.insert(0, str(directory))
    try:
        yield importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(directory))
        for name in [name for name in sys.modules if name.split(".")[0] == PACKAGE]:
            del sys.modules[name]


@pytest.fixture(scope="module")
def client(generated, pat_server, tokens):
    return generated.AuthenticatedClient(
        base_url=pat_server.url,
        token=tokens["service"],
        timeout=httpx.Timeout(120),
        raise_on_unexpected_status=True,
    )


def api(name: str) -> ModuleType:
    return importlib.import_module(f"{PACKAGE}.api.analysis.{name}")


def model(name: str):
    return getattr(importlib.import_module(f"{PACKAGE}.models"), name)


def test_analyze(client) -> None:
    body = model("AnalyzeRequest").from_dict(
        {"recording": recording(seed=31), "options": {"outputs": ["metrics", "pat", "fhir"]}}
    )
    response = api("analyze").sync_detailed(client=client, body=body)
    assert response.status_code == 200, response.content
    result = response.parsed
    assert isinstance(result, model("AnalyzeResponse"))
    assert result.quality.total_minutes == 10_080
    assert len(result.pat.windows[0].embedding) == 96
    assert result.metrics.interdaily_stability is not None
    assert result.fhir.to_dict()["resourceType"] == "Bundle"


def test_analyze_error_is_parsed_into_the_envelope(client) -> None:
    body = model("AnalyzeRequest").from_dict({"recording": recording(minutes=60, gap=None)})
    response = api("analyze").sync_detailed(client=client, body=body)
    assert response.status_code == 422
    assert isinstance(response.parsed, model("ErrorBody"))
    assert response.parsed.error.code == "invalid_input"


def test_embed(client) -> None:
    body = model("EmbedRequest").from_dict({"recording": recording(seed=32), "options": {"per_patch": True}})
    result = api("embed").sync(client=client, body=body)
    assert isinstance(result, model("EmbedResponse"))
    window = result.pat.windows[0]
    assert len(window.embedding) == 96 and len(window.patches) > 0


def test_analyze_batch(client) -> None:
    body = model("AnalyzeBatchRequest").from_dict(
        {
            "recordings": [recording(seed=33), recording(minutes=60, gap=None)],
            "options": {"outputs": ["metrics"]},
        }
    )
    result = api("analyze_batch").sync(client=client, body=body)
    assert isinstance(result, model("BatchResponse"))
    first, second = result.results
    assert first.result.metrics is not None and first.error is None
    assert second.result is None and second.error.code == "invalid_input"


def test_analyze_file(client) -> None:
    name, content = device_export(".AWD")
    outputs = importlib.import_module(f"{PACKAGE}.models.analyze_file_form_outputs_item")
    form = model("AnalyzeFileForm")(
        file=importlib.import_module(f"{PACKAGE}.types").File(payload=BytesIO(content), file_name=name),
        timezone="Europe/London",
        outputs=[outputs.AnalyzeFileFormOutputsItem("metrics"), outputs.AnalyzeFileFormOutputsItem("fhir")],
    )
    result = api("analyze_file").sync(client=client, body=form)
    assert isinstance(result, model("AnalyzeResponse"))
    assert result.metrics is not None and result.fhir is not None and result.pat is None


def test_models(client) -> None:
    result = api("models").sync(client=client)
    assert isinstance(result, model("ModelsResponse"))
    assert result.models[0].to_dict()["tag"]
