"""The analysis pipeline in-process: `Analyzer` with the demo PAT run locally (no server), the
in-process encrypted cache, and the span tree of one request through the service's real middlewares."""

from __future__ import annotations

import functools
import json
from datetime import UTC, datetime, timedelta, timezone
from http import HTTPStatus
from zoneinfo import ZoneInfo

import httpx
import numpy as np
import pytest
from bentoml.exceptions import BentoMLException, NotFound
from opentelemetry.sdk.trace import ReadableSpan
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from pat_runner.actigraphy.synthetic import week_counts
from pat_runner.cache.cache import ResultCache
from pat_runner.errors import ModelUnavailable
from pat_runner.model import WEEK_MINUTES
from pat_runner.model.backends import TorchBackend
from pat_runner.model.store import StoredPAT, demo_pat
from pat_runner.serving.audit import AuditMiddleware
from pat_runner.serving.auth import FirebaseAuthMiddleware
from pat_runner.serving.pipeline import Analyzer, Infer, ModelOutput, to_raw
from pat_runner.serving.runner import local_infer, model_call, run_model
from pat_runner.serving.schemas import AnalyzeOptions, Recording
from tests.factories import (
    NEW_YORK,
    make_settings,
    model_info,
    raw_recording,
    recording,
    split_into_epochs,
)


def as_recording(body: dict) -> Recording:
    """Validated as the API validates it: from JSON, strictly."""
    return Recording.model_validate_json(json.dumps(body))


SETTINGS = make_settings()


@pytest.fixture(scope="module")
def stored() -> StoredPAT:
    model = demo_pat().eval()
    info = model_info(parameters=model.parameter_count())
    return StoredPAT(tag=info.tag, model=model, info=info, scaler=None)


def analyzer_with(stored: StoredPAT, infer: Infer) -> Analyzer:
    """The pipeline around `stored`'s model info, `infer` in place of the model service, a fresh cache."""
    return Analyzer(
        model=stored.info,
        scaler=None,
        infer=infer,
        cache=ResultCache.from_settings(SETTINGS),
        settings=SETTINGS,
    )


def make_analyzer(stored: StoredPAT, *, fail: bool = False) -> tuple[Analyzer, list[int]]:
    batches: list[int] = []
    model = local_infer(TorchBackend(stored.model, "cpu"))

    async def infer(windows: np.ndarray, output: ModelOutput) -> np.ndarray:
        if fail:
            raise ConnectionError("model service down")
        batches.append(len(windows))
        return await model(windows, output)

    return analyzer_with(stored, infer), batches


async def test_analysis_then_cache_hit(stored: StoredPAT) -> None:
    analyzer, batches = make_analyzer(stored)
    rec = as_recording(recording(1, minutes=3 * 10_080))
    analysis = await analyzer.analyze(to_raw(rec), AnalyzeOptions(), request_id="r1")
    first, audit = analysis.response, analysis.facts
    assert first.cache == "miss" and batches == [3]
    assert [w.index for w in first.pat.windows] == [0, 1, 2]
    assert first.fhir["resourceType"] == "Bundle"
    assert audit.cache == "miss" and len(audit.input_sha256) == 64
    second = (await analyzer.analyze(to_raw(rec), AnalyzeOptions(), request_id="r2")).response
    assert second.cache == "hit" and batches == [3]
    assert second.pat == first.pat and second.metrics == first.metrics
    patches = run_model(TorchBackend(stored.model, "cpu"), analyzer_windows(analyzer, rec), per_patch=True)
    np.testing.assert_allclose(first.pat.windows[0].embedding, patches["patches"][0].mean(axis=0), atol=1e-6)


def analyzer_windows(analyzer: Analyzer, rec: Recording) -> np.ndarray:
    from pat_runner.actigraphy.preprocess import preprocess

    return preprocess(to_raw(rec), settings=analyzer.settings).windows


async def test_model_failure_is_503_but_metrics_still_work(stored: StoredPAT) -> None:
    analyzer, _ = make_analyzer(stored, fail=True)
    rec = as_recording(recording(2))
    with pytest.raises(ModelUnavailable):
        await analyzer.analyze(to_raw(rec), AnalyzeOptions(outputs=["pat"]), request_id="r")
    metrics_only = (
        await analyzer.analyze(to_raw(rec), AnalyzeOptions(outputs=["metrics", "fhir"]), request_id="r")
    ).response
    assert metrics_only.metrics.interdaily_stability is not None and metrics_only.pat is None


async def test_embed_per_patch(stored: StoredPAT) -> None:
    analyzer, _ = make_analyzer(stored)
    result = (
        await analyzer.embed(to_raw(as_recording(recording(3))), per_patch=True, request_id="r")
    ).response
    patches = np.array(result.pat.windows[0].patches)
    assert patches.shape == (560, 96)
    np.testing.assert_allclose(patches.mean(axis=0), result.pat.windows[0].embedding, atol=1e-6)


def test_model_calls_carry_the_patches_only_when_asked(stored: StoredPAT) -> None:
    backend = TorchBackend(stored.model, "cpu")
    x = np.random.default_rng(2).standard_normal((3, WEEK_MINUTES)).astype(np.float32)
    pooled, per_patch = run_model(backend, x), run_model(backend, x, per_patch=True)
    # 96 floats a week instead of 560 x 96 through the model service's pickling and HTTP.
    assert pooled.dtype.names == ("embedding", "probability", "backend")
    assert pooled.itemsize < 1_000 < 200_000 < per_patch.itemsize
    # Pooling in the model service is the same float32 mean the pipeline took per window before.
    for i in range(3):
        assert np.array_equal(pooled["embedding"][i], per_patch["patches"][i].mean(axis=0))
    assert np.array_equal(pooled["embedding"], per_patch["embedding"])


async def test_an_earlier_model_service_without_infer_pooled_is_called_through_infer() -> None:
    calls: list[str] = []

    async def earlier_release(method: str) -> np.ndarray:
        calls.append(method)
        if method == "infer_pooled":
            raise NotFound("no such endpoint", error_code=HTTPStatus.NOT_FOUND)
        return np.zeros(1, dtype=[("patches", np.float32, (560, 96)), ("probability", np.float32)])

    records = await model_call(earlier_release, "embedding")
    assert calls == ["infer_pooled", "infer"] and records.dtype.names == ("patches", "probability")

    async def failing(status: HTTPStatus, method: str) -> np.ndarray:
        calls.append(method)
        raise BentoMLException("refused", error_code=status)

    # Any other refusal, or a 404 for another output, is the model service's own error, not retried.
    calls.clear()
    with pytest.raises(BentoMLException):
        await model_call(functools.partial(failing, HTTPStatus.SERVICE_UNAVAILABLE), "embedding")
    with pytest.raises(BentoMLException):
        await model_call(functools.partial(failing, HTTPStatus.NOT_FOUND), "attention")
    assert calls == ["infer_pooled", "infer_attention"]


async def test_the_pipeline_pools_the_patches_of_an_earlier_model_service(stored: StoredPAT) -> None:
    backend = TorchBackend(stored.model, "cpu")

    async def earlier_release(windows: np.ndarray, output: ModelOutput) -> np.ndarray:
        # What `infer` of the release before `infer_pooled` answered: no `embedding` field.
        full = run_model(backend, windows, per_patch=True)
        return full[["patches", "probability", "backend"]]

    raw = to_raw(as_recording(recording(3)))
    current, _ = make_analyzer(stored)
    earlier = analyzer_with(stored, earlier_release)
    expected = (await current.embed(raw, per_patch=False, request_id="a")).response.pat.windows
    got = (await earlier.embed(raw, per_patch=False, request_id="b")).response.pat.windows
    assert [w.embedding for w in got] == [w.embedding for w in expected]


# ---- the span tree of one real request ----


def parents(finished: tuple[ReadableSpan, ...]) -> dict[str, str | None]:
    by_id = {s.context.span_id: s.name for s in finished}
    return {s.name: by_id.get(s.parent.span_id) if s.parent else None for s in finished}


async def test_span_tree_of_one_request(
    stored, span_exporter, firebase_emulator, tokens, monkeypatch
) -> None:
    for name, value in firebase_emulator.env().items():
        monkeypatch.setenv(name, value)
    settings = SETTINGS.replace(
        firebase_project_id=firebase_emulator.project_id,
        auth="firebase",
        allow_auth_emulator=True,
        firebase_auth_emulator_host=firebase_emulator.host,
    )
    analyzer, _ = make_analyzer(stored)

    async def analyze(request: Request) -> JSONResponse:
        body = await request.json()
        state = request.scope["state"]
        analysis = await analyzer.analyze(
            to_raw(as_recording(body["recording"])), AnalyzeOptions(), request_id=state["request_id"]
        )
        return JSONResponse(analysis.response.model_dump(mode="json"))

    app = AuditMiddleware(
        FirebaseAuthMiddleware(
            Starlette(routes=[Route("/v1/analyze", analyze, methods=["POST"])]), settings=settings
        )
    )
    span_exporter.clear()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        response = await client.post(
            "/v1/analyze",
            json={"recording": recording(4)},
            headers={"Authorization": f"Bearer {tokens['clinician']}"},
            timeout=120,
        )
    assert response.status_code == 200, response.text
    finished = span_exporter.get_finished_spans()
    assert parents(finished) == {
        "pat.request": None,
        "pat.auth": "pat.request",
        "pat.preprocess": "pat.request",
        "pat.cache": "pat.request",
        "pat.metrics": "pat.cache",
        "pat.inference": "pat.cache",
        "pat.format": "pat.request",
    }
    assert len({s.context.trace_id for s in finished}) == 1
    named = {s.name: s for s in finished}
    assert named["pat.request"].attributes["endpoint"] == "/v1/analyze"
    assert named["pat.cache"].attributes["cache_outcome"] == "miss"
    assert named["pat.auth"].attributes["role"] == "clinician"
    for span in finished:
        for value in (span.attributes or {}).values():
            assert tokens["clinician"] not in str(value) and "Patient/" not in str(value)


async def test_requests_needing_the_same_computation_share_one_cache_entry(stored: StoredPAT) -> None:
    analyzer, batches = make_analyzer(stored)
    raw = to_raw(as_recording(recording(5)))
    fhir_only = await analyzer.analyze(raw, AnalyzeOptions(outputs=["fhir"]), request_id="a")
    with_metrics = await analyzer.analyze(raw, AnalyzeOptions(outputs=["metrics", "fhir"]), request_id="b")
    assert fhir_only.facts.cache == "miss" and with_metrics.facts.cache == "hit"
    assert fhir_only.response.metrics is None and with_metrics.response.metrics is not None
    # An encoder-only model adds nothing to FHIR, so neither request ran PAT.
    assert batches == []
    other_algorithm = AnalyzeOptions(outputs=["metrics"], sleep_algorithm="sadeh")
    assert (await analyzer.analyze(raw, other_algorithm, request_id="c")).facts.cache == "miss"
    with_pat = await analyzer.analyze(raw, AnalyzeOptions(outputs=["metrics", "pat"]), request_id="d")
    assert with_pat.facts.cache == "miss" and batches == [1]


async def test_a_hit_describes_its_own_input(stored: StoredPAT) -> None:
    # The same minutes as 60-s counts with a start at +01:00, then as 15-s epochs with New York's offset:
    # one computation, but each response reports its own epoch length and its own warnings.
    analyzer, batches = make_analyzer(stored)
    minutes = week_counts(9)
    start = datetime(2024, 3, 4, 5, 0, tzinfo=UTC)
    plus_one = timezone(timedelta(hours=1))
    first = await analyzer.analyze(
        raw_recording(minutes, start=start.astimezone(plus_one)), AnalyzeOptions(), request_id="a"
    )
    second = await analyzer.analyze(
        raw_recording(
            split_into_epochs(minutes, 15), start=start.astimezone(ZoneInfo(NEW_YORK)), epoch_seconds=15
        ),
        AnalyzeOptions(),
        request_id="b",
    )
    assert (first.facts.cache, second.facts.cache) == ("miss", "hit") and batches == [1]
    assert first.response.quality.epoch_seconds == 60 and second.response.quality.epoch_seconds == 15
    assert any("offset +01:00 differs" in w for w in first.response.warnings)
    assert not any("differs" in w for w in second.response.warnings)
    assert second.response.metrics == first.response.metrics and second.response.pat == first.response.pat


async def test_audit_facts_come_back_with_the_result(stored: StoredPAT) -> None:
    analyzer, _ = make_analyzer(stored)
    raw = to_raw(as_recording(recording(6)))
    analysis = await analyzer.analyze(raw, AnalyzeOptions(outputs=["metrics"]), request_id="r")
    embedding = await analyzer.embed(raw, per_patch=False, request_id="r")
    assert analysis.facts.input_sha256 == embedding.facts.input_sha256
    assert analysis.facts.minutes == analysis.response.quality.total_minutes
    assert analysis.facts.model_tag == stored.tag and embedding.facts.cache is None
