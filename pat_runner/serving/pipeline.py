"""One analysis, step by step: preprocess → cache → PAT inference → clinical metrics → FHIR.

`Analyzer` is what `service.py` calls; it knows nothing about HTTP or BentoML. Inference is an injected
async callable (the batching model service in production, a local model in tests), so every step can
be exercised without a server. What a request computes is decided once, up front (`Plan`); the result
of that computation is one typed value (`ComputedResult`), cached under one key (`CacheKey`). FHIR is
built per request after the cache, so subject ids never enter cache keys or values. The facts an audit
record needs come back with the result (`InputFacts`); the caller decides where they go.
See docs/architecture.md.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Literal

import anyio.to_thread
import numpy as np

from pat_runner import telemetry
from pat_runner.actigraphy.fhir import assemble_bundle, metric_observations
from pat_runner.actigraphy.metrics import actigraphy_metrics
from pat_runner.actigraphy.preprocess import PIPELINE_VERSION, Preprocessed, RawRecording, preprocess
from pat_runner.actigraphy.wear import NonwearAlgorithm
from pat_runner.cache.cache import CacheKey, Outcome, ResultCache
from pat_runner.errors import ModelUnavailable
from pat_runner.model import WEEK_MINUTES
from pat_runner.model.info import ModelInfo
from pat_runner.serving.schemas import (
    AnalyzeOptions,
    AnalyzeResponse,
    ComputedResult,
    EmbedResponse,
    ModelSummary,
    PatOutput,
    PatWindow,
    Recording,
)
from pat_runner.settings import Settings

# What a model call returns per window besides the pooled embedding and the head's probability: nothing,
# the per-patch embeddings, or the attention each patch receives (`serving/runner.py`).
ModelOutput = Literal["embedding", "patches", "attention"]
Infer = Callable[[np.ndarray, ModelOutput], Awaitable[np.ndarray]]
Scaler = tuple[np.ndarray, np.ndarray]
WEEK = timedelta(minutes=WEEK_MINUTES)
DEMO_PAT_WARNING = (
    "served by the randomly initialised demo model: PAT outputs carry no meaning; "
    "import the official weights (models/README.md)"
)
DEMO_EMBED_WARNING = "served by the randomly initialised demo model: embeddings carry no meaning"
# Preprocessing a week of minutes takes ~0.5 ms, less than the thread hop that would keep it off the event
# loop costs a cache hit (BentoML parses the same body on the loop for longer); longer recordings (up to
# 12 weeks of 1-s epochs, seconds of work) go to a thread.
INLINE_PREPROCESS_VALUES = 2 * WEEK_MINUTES


@dataclass(frozen=True)
class Plan:
    """What one request computes and returns, decided once from its options and the served model."""

    metrics: bool
    pat: bool
    attention: bool
    sleep_algorithm: str
    sleep_period_algorithm: str
    nonwear_algorithm: NonwearAlgorithm
    return_metrics: bool
    return_pat: bool
    fhir: bool

    @classmethod
    def of(cls, options: AnalyzeOptions, model: ModelInfo, settings: Settings) -> Plan:
        outputs = set(options.outputs)
        fhir = "fhir" in outputs
        attention = "attention" in outputs
        return cls(
            metrics="metrics" in outputs or fhir,
            # FHIR carries PAT only as the head's RiskAssessment; an encoder-only model adds nothing there.
            pat="pat" in outputs or attention or (fhir and model.head_task is not None),
            attention=attention,
            sleep_algorithm=options.sleep_algorithm,
            sleep_period_algorithm=options.sleep_period_algorithm,
            nonwear_algorithm=options.nonwear_algorithm or settings.nonwear_algorithm,
            return_metrics="metrics" in outputs,
            return_pat="pat" in outputs or attention,
            fhir=fhir,
        )

    def result_options(self) -> frozenset[str]:
        """The choices that change the computed result: the cache key's options."""
        options = set()
        if self.metrics:
            options.update(
                {
                    "metrics",
                    f"sleep_algorithm={self.sleep_algorithm}",
                    f"sleep_period_algorithm={self.sleep_period_algorithm}",
                    f"nonwear_algorithm={self.nonwear_algorithm}",
                }
            )
        if self.fhir:
            options.add("fhir")
        if self.pat:
            options.add("pat")
        if self.attention:
            options.add("attention")
        return frozenset(options)


@dataclass(frozen=True)
class InputFacts:
    """What the audit trail records about one recording: a hash and sizes, never values."""

    input_sha256: str
    minutes: int
    model_tag: str
    cache: Outcome | None = None


@dataclass(frozen=True)
class Analysis:
    response: AnalyzeResponse
    facts: InputFacts


@dataclass(frozen=True)
class Embedding:
    response: EmbedResponse
    facts: InputFacts


def to_raw(recording: Recording) -> RawRecording:
    return RawRecording(
        start=recording.start,
        timezone=recording.timezone,
        epoch_seconds=recording.epoch_seconds,
        values=recording.values_array(),
        unit=recording.unit,
        subject=recording.subject,
        device=recording.device.model_dump() if recording.device else None,
    )


def minute_attention(received: np.ndarray) -> list[float]:
    """Attention a window's patches receive, each patch's share spread evenly over its minutes, so the
    window's 10,080 values sum to 1 like the patches' do."""
    patch_minutes = WEEK_MINUTES // len(received)
    return np.repeat(received.astype(np.float64) / patch_minutes, patch_minutes).tolist()


def input_digest(pre: Preprocessed) -> str:
    """SHA-256 of the canonical minutes, for audit records (never the values themselves)."""
    return hashlib.sha256(pre.canonical_bytes()).hexdigest()


class Analyzer:
    def __init__(
        self,
        *,
        model: ModelInfo,
        scaler: Scaler | None,
        infer: Infer,
        cache: ResultCache,
        settings: Settings,
    ) -> None:
        self.model = model
        self.summary = ModelSummary.of(model)
        self.scaler = scaler
        self.infer = infer
        self.cache = cache
        self.settings = settings

    async def preprocess(self, raw: RawRecording) -> tuple[Preprocessed, InputFacts]:
        """Preprocess (off the event loop unless the recording is small); the input's hash and size come
        back for the audit record."""
        with telemetry.span("preprocess", epoch_seconds=raw.epoch_seconds, n_values=len(raw.values)):
            if len(raw.values) <= INLINE_PREPROCESS_VALUES:
                pre = preprocess(raw, scaler=self.scaler, settings=self.settings)
            else:
                pre = await anyio.to_thread.run_sync(
                    lambda: preprocess(raw, scaler=self.scaler, settings=self.settings)
                )
        facts = InputFacts(
            input_sha256=input_digest(pre), minutes=pre.quality.total_minutes, model_tag=self.model.tag
        )
        return pre, facts

    async def run_pat(self, pre: Preprocessed, output: ModelOutput) -> tuple[PatOutput, str | None]:
        """PAT outputs per window and the name of the backend that computed them."""
        with telemetry.span("inference", windows=len(pre.windows), model_tag=self.model.tag):
            try:
                records = await self.infer(pre.windows, output)
            except ModelUnavailable:
                raise
            except Exception as exc:
                telemetry.record_model_unavailable(type(exc).__name__)
                raise ModelUnavailable(
                    f"the PAT model service did not answer ({type(exc).__name__}); "
                    "metrics-only requests (options.outputs without 'pat') still work"
                ) from exc
        # A model service of an earlier release sends only the per-patch embeddings (`runner.model_call`).
        names = records.dtype.names or ()
        embeddings = records["embedding"] if "embedding" in names else records["patches"].mean(axis=1)
        windows = []
        for i, (start, observed) in enumerate(
            zip(pre.window_starts, pre.window_observed_fraction, strict=True)
        ):
            probability = float(records["probability"][i])
            windows.append(
                PatWindow(
                    index=i,
                    start=start,
                    end=start + WEEK,
                    observed_fraction=float(observed),
                    embedding=embeddings[i].tolist(),
                    probability=None if np.isnan(probability) else probability,
                    patches=records["patches"][i].tolist() if output == "patches" else [],
                    attention=minute_attention(records["attention"][i]) if output == "attention" else [],
                )
            )
        backend = records["backend"][0].decode() if len(records) else None
        return PatOutput(standardization=pre.quality.standardization, windows=windows), backend

    async def _compute(self, pre: Preprocessed, raw: RawRecording, plan: Plan) -> ComputedResult:
        metrics, observations = None, None
        if plan.metrics:
            with telemetry.span("metrics", minutes=pre.quality.total_minutes):
                metrics = await anyio.to_thread.run_sync(
                    lambda: actigraphy_metrics(
                        pre.minutes,
                        unit=raw.unit,
                        sleep_method=plan.sleep_algorithm,
                        sleep_period_algorithm=plan.sleep_period_algorithm,
                        nonwear_algorithm=plan.nonwear_algorithm,
                        min_night_coverage=self.settings.min_night_coverage,
                    )
                )
        if plan.fhir:
            assert metrics is not None, "a plan with FHIR always computes the metrics"
            with telemetry.span("format"):
                observations = await anyio.to_thread.run_sync(
                    lambda: metric_observations(
                        metrics, period_start=pre.quality.start, period_end=pre.quality.end
                    )
                )
        pat, backend = (
            await self.run_pat(pre, "attention" if plan.attention else "embedding")
            if plan.pat
            else (None, None)
        )
        return ComputedResult(metrics=metrics, pat=pat, fhir_observations=observations, backend=backend)

    async def analyze(self, raw: RawRecording, options: AnalyzeOptions, *, request_id: str) -> Analysis:
        """Analyse one recording (from JSON via `to_raw`, or straight from a device-file reader)."""
        plan = Plan.of(options, self.model, self.settings)
        pre, facts = await self.preprocess(raw)
        key = self.cache.make_key(
            CacheKey(
                canonical_input=pre.canonical_bytes(),
                model_tag=self.model.tag,
                pipeline_version=PIPELINE_VERSION,
                options=plan.result_options(),
            )
        )
        with telemetry.span("cache"):
            computed, outcome = await self.cache.get_or_compute(
                key, self.model.tag, lambda: self._compute(pre, raw, plan), ComputedResult
            )
        # The quality report and warnings describe this request's input: another request with the same
        # minutes (say, 15-s epochs where the cached one sent their 60-s sums) shares the computation only.
        response = AnalyzeResponse(
            request_id=request_id,
            model=self.summary.model_copy(update={"backend": computed.backend}),
            quality=pre.quality,
            metrics=computed.metrics if plan.return_metrics else None,
            pat=computed.pat if plan.return_pat else None,
            warnings=list(pre.warnings),
            cache=outcome,
        )
        if plan.fhir:
            with telemetry.span("format"):
                response.fhir = self._bundle(computed, pre, raw, request_id)
        if self.model.demo and (plan.return_pat or plan.fhir):
            response.warnings.append(DEMO_PAT_WARNING)
        return Analysis(response=response, facts=replace(facts, cache=outcome))

    def _bundle(
        self, computed: ComputedResult, pre: Preprocessed, raw: RawRecording, request_id: str
    ) -> dict:
        probability = None
        if computed.pat and self.model.head_task:
            probabilities = [w.probability for w in computed.pat.windows if w.probability is not None]
            probability = float(np.mean(probabilities)) if probabilities else None
        assert computed.fhir_observations is not None, "a plan with FHIR computes its Observations"
        return assemble_bundle(
            computed.fhir_observations,
            subject=raw.subject,
            model=self.model,
            period_start=pre.quality.start,
            period_end=pre.quality.end,
            probability=probability,
            head_task=self.model.head_task,
            device=raw.device,
            request_id=request_id,
        )

    async def embed(self, raw: RawRecording, *, per_patch: bool, request_id: str) -> Embedding:
        pre, facts = await self.preprocess(raw)
        pat, backend = await self.run_pat(pre, "patches" if per_patch else "embedding")
        warnings = list(pre.warnings)
        if self.model.demo:
            warnings.append(DEMO_EMBED_WARNING)
        response = EmbedResponse(
            request_id=request_id,
            model=self.summary.model_copy(update={"backend": backend}),
            quality=pre.quality,
            pat=pat,
            warnings=warnings,
        )
        return Embedding(response=response, facts=facts)
