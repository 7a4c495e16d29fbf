"""The model service's endpoints answer with the media type BentoML would derive, worked out once."""

from __future__ import annotations

import pytest
from _bentoml_sdk.io_models import IODescriptor

from pat_runner.serving.runner import PATModel


@pytest.mark.parametrize("name", sorted(PATModel.apis))
def test_a_response_does_not_rebuild_the_output_schema(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = PATModel.apis[name].output_spec

    def rebuilt(*args: object, **kwargs: object) -> dict[str, object]:
        raise AssertionError("the output's JSON schema was rebuilt for a response")

    monkeypatch.setattr(spec, "model_json_schema", rebuilt)
    # What BentoML derives from the schema for a fresh spec of the same method: the pinned type is the same.
    derived = IODescriptor.from_output(PATModel.apis[name].func).mime_type()
    assert spec.mime_type() == derived == "application/json"
