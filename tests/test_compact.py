"""`values_b64`: the compact recording form gives exactly the results of JSON `values`, through the
real Analyzer (demo PAT, in-process cache), and malformed input is refused with a reason."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
from pydantic import ValidationError

from pat_runner.cache.cache import ResultCache
from pat_runner.model.backends import TorchBackend
from pat_runner.model.store import demo_pat
from pat_runner.serving.compact import encode_values
from pat_runner.serving.pipeline import Analyzer, to_raw
from pat_runner.serving.runner import local_infer
from pat_runner.serving.schemas import AnalyzeOptions, Recording
from pat_runner.settings import Settings
from tests.factories import model_info, recording

SETTINGS = Settings().replace(redis_url="", cache_keys="", cache_hmac_key="")


def compact(body: dict, dtype: str) -> dict:
    values = np.array([np.nan if v is None else v for v in body["values"]])
    rest = {k: v for k, v in body.items() if k != "values"}
    return {**rest, "values_b64": encode_values(values, dtype), "values_dtype": dtype}  # type: ignore[arg-type]


def validate(body: dict) -> Recording:
    return Recording.model_validate_json(json.dumps(body))


@pytest.fixture(scope="module")
def analyzer() -> Analyzer:
    backend = TorchBackend(demo_pat(), "cpu")

    return Analyzer(
        model=model_info(),
        scaler=None,
        infer=local_infer(backend),
        cache=ResultCache.from_settings(SETTINGS),
        settings=SETTINGS,
    )


@pytest.mark.parametrize("dtype", ["float32", "int32"])
async def test_compact_values_give_exactly_the_json_results(analyzer: Analyzer, dtype: str) -> None:
    body = recording(21, minutes=2 * 10_080, gap=None if dtype == "int32" else (3_000, 3_060))
    if dtype == "int32":
        # int32 carries integer counts only (the planted sentinel has a fraction) and no missing marker.
        body["values"] = [float(round(v)) for v in body["values"]]
    from_json = validate(body)
    from_b64 = validate(compact(body, dtype))
    np.testing.assert_array_equal(from_json.values_array(), from_b64.values_array())
    options = AnalyzeOptions(outputs=["metrics", "pat"])
    first = (await analyzer.analyze(to_raw(from_json), options, request_id="a")).response
    second = (await analyzer.analyze(to_raw(from_b64), options, request_id="b")).response
    # Same minutes, same cache key: the compact request is served the JSON request's result.
    assert (first.cache, second.cache) == ("miss", "hit")
    fresh = (await analyzer.embed(to_raw(from_b64), per_patch=False, request_id="c")).response
    assert fresh.pat == first.pat and second.pat == first.pat and second.metrics == first.metrics
    assert fresh.model.backend == first.model.backend == "torch"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"values_b64": None}, "exactly one"),
        ({"values": [1.0, 2.0]}, "exactly one"),
        ({"values_b64": "AAAA*AAA"}, "not valid base64"),
        ({"values_b64": base64.b64encode(b"\0" * 6).decode()}, "whole number"),
        ({"values_b64": encode_values(np.array([1.0, np.inf]))}, "infinite"),
        ({"values_dtype": "float64"}, "values_dtype"),
    ],
)
def test_malformed_compact_values_are_refused(change: dict, message: str) -> None:
    body = compact(recording(22, minutes=1_440, gap=None), "float32")
    body.update(change)
    body = {k: v for k, v in body.items() if v is not None}
    with pytest.raises(ValidationError, match=message):
        validate(body)
