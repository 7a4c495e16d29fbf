"""One analysis, step by step: preprocess → cache → PAT inference → clinical metrics → FHIR.

`Analyzer` is what `service.py` calls; it knows nothing about HTTP or BentoML. Inference is an injected
async callable (the batching model service in production, a local model in tests), so every step can
be exercised without a server.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import anyio.to_thread
import bentoml
import numpy as np

from pat_runner import telemetry
from pat_runner.actigraphy.fhir import build_bundle
from pat_runner.actigraphy.metrics import ActigraphyMetrics, actigraphy_metrics
from pat_runner.actigraphy.preprocess import PIPELINE_VERSION, Preprocessed, RawRecording, preprocess
from pat_runner.cache.cache import ResultCache
from pat_runner.errors import ModelUnavailable
from pat_runner.model import WEEK_MINUTES
from pat_runner.model.store import read_model_info, read_stored_scaler
from pat_runner.serving.schemas import (
    AnalyzeOptions,
    AnalyzeResponse,
    EmbedResponse,
    ModelSummary,
    PatOutput,
    PatWindow,
    Recording,
)
from pat_runner.settings import Settings

Infer = Callable[[np.ndarray], Awaitable[np.ndarray]]
WEEK = timedelta(minutes=WEEK_MINUTES)


@dataclass(frozen=True)
class ServedModel:
    """What the API service knows about the served PAT without loading its weights."""

    summary: ModelSummary
    info: dict[str, Any]
    scaler: tuple[np.ndarray, np.ndarray] | None


def served_model(model: str | bentoml.Model) -> ServedModel:
    info = read_model_info(model)
    return ServedModel(
        summary=ModelSummary(tag=info.tag, size=info.size, demo=info.demo, head_task=info.head_task),
        info=info.to_dict(),
        scaler=read_stored_scaler(model),
    )


def to_raw(recording: Recording) -> RawRecording:
    return RawRecording(
        start=recording.start,
        timezone=recording.timezone,
        epoch_seconds=recording.epoch_seconds,
        values=np.array([np.nan if v is None else v for v in recording.values], dtype=np.float64),
        unit=recording.unit,
        subject=recording.subject,
        device=recording.device.model_dump() if recording.device else None,
    )


def input_digest(pre: Preprocessed) -> str:
    """SHA-256 of the canonical minutes, for audit records (never the values themselves)."""
    return hashlib.sha256(pre.canonical_bytes()).hexdigest()


class Analyzer:
    def __init__(self, *, model: ServedModel, infer: Infer, cache: ResultCache, settings: Settings) -> None:
        self.model = model
        self.infer = infer
        self.cache = cache
        self.settings = settings

    async def preprocess(self, raw: RawRecording, audit: dict[str, Any]) -> Preprocessed:
        """Preprocess off the event loop and add the input's hash and size to the audit record."""
        with telemetry.span("preprocess", epoch_seconds=raw.epoch_seconds, n_values=len(raw.values)):
            pre = await anyio.to_thread.run_sync(
                lambda: preprocess(raw, scaler=self.model.scaler, settings=self.settings)
            )
        audit.update(
            input_sha256=input_digest(pre), minutes=len(pre.minutes), model_tag=self.model.summary.tag
        )
        return pre

    async def run_pat(self, pre: Preprocessed, *, per_patch: bool) -> PatOutput:
        with telemetry.span("inference", windows=len(pre.windows), model_tag=self.model.summary.tag):
            try:
                records = await self.infer(pre.windows)
            except ModelUnavailable:
                raise
            except Exception as exc:
                telemetry.record_model_unavailable(type(exc).__name__)
                raise ModelUnavailable(
                    f"the PAT model service did not answer ({type(exc).__name__}); "
                    "metrics-only requests (options.outputs without 'pat') still work"
                ) from exc
        windows = []
        for i, (start, observed) in enumerate(
            zip(pre.window_starts, pre.window_observed_fraction, strict=True)
        ):
            patches = records["patches"][i]
            probability = float(records["probability"][i])
            windows.append(
                PatWindow(
                    index=i,
                    start=start,
                    end=start + WEEK,
                    observed_fraction=float(observed),
                    embedding=patches.mean(axis=0).tolist(),
                    probability=None if np.isnan(probability) else probability,
                    patches=patches.tolist() if per_patch else [],
                )
            )
        return PatOutput(standardization=pre.quality.standardization, windows=windows)

    def _needs_model(self, outputs: Sequence[str]) -> bool:
        # FHIR carries PAT only as the head's RiskAssessment; an encoder-only model adds nothing there.
        return "pat" in outputs or ("fhir" in outputs and self.model.summary.head_task is not None)

    async def _compute(self, pre: Preprocessed, raw: RawRecording, options: AnalyzeOptions) -> dict[str, Any]:
        metrics = None
        if "metrics" in options.outputs or "fhir" in options.outputs:
            with telemetry.span("metrics", minutes=len(pre.minutes)):
                metrics = await anyio.to_thread.run_sync(
                    lambda: actigraphy_metrics(
                        pre.minutes, unit=raw.unit, sleep_method=options.sleep_algorithm
                    )
                )
        pat = await self.run_pat(pre, per_patch=False) if self._needs_model(options.outputs) else None
        return {
            "quality": pre.quality.model_dump(mode="json"),
            "metrics": metrics.model_dump(mode="json") if metrics else None,
            "pat": pat.model_dump(mode="json") if pat else None,
            "warnings": list(pre.warnings),
        }

    async def analyze(
        self, recording: Recording, options: AnalyzeOptions, *, request_id: str, audit: dict[str, Any]
    ) -> AnalyzeResponse:
        raw = to_raw(recording)
        pre = await self.preprocess(raw, audit)
        key = self.cache.make_key(
            canonical_input=pre.canonical_bytes() + options.sleep_algorithm.encode(),
            model_tag=self.model.summary.tag,
            pipeline_version=PIPELINE_VERSION,
            outputs=sorted(options.outputs),
        )
        with telemetry.span("cache"):
            computed, outcome = await self.cache.get_or_compute(
                key, self.model.summary.tag, lambda: self._compute(pre, raw, options)
            )
        audit["cache"] = outcome
        response = AnalyzeResponse(
            request_id=request_id,
            model=self.model.summary,
            quality=computed["quality"],
            metrics=computed["metrics"] if "metrics" in options.outputs else None,
            pat=computed["pat"] if "pat" in options.outputs else None,
            warnings=computed["warnings"],
            cache=outcome,
        )
        if "fhir" in options.outputs:
            with telemetry.span("format"):
                response.fhir = self._bundle(response, computed, recording, pre, request_id)
        if self.model.summary.demo and ("pat" in options.outputs or response.fhir):
            response.warnings.append(
                "served by the randomly initialised demo model: PAT outputs carry no meaning; "
                "import the official weights (models/README.md)"
            )
        return response

    def _bundle(
        self,
        response: AnalyzeResponse,
        computed: dict[str, Any],
        recording: Recording,
        pre: Preprocessed,
        request_id: str,
    ) -> dict[str, Any]:
        probability = None
        if computed["pat"] and self.model.summary.head_task:
            probabilities = [
                w["probability"] for w in computed["pat"]["windows"] if w["probability"] is not None
            ]
            probability = float(np.mean(probabilities)) if probabilities else None
        return build_bundle(
            ActigraphyMetrics.model_validate(computed["metrics"]),
            period_start=pre.quality.start,
            period_end=pre.quality.end,
            subject=recording.subject,
            model=self.model.summary,
            probability=probability,
            head_task=self.model.summary.head_task,
            device=recording.device,
            request_id=request_id,
        )

    async def embed(
        self, recording: Recording, *, per_patch: bool, request_id: str, audit: dict[str, Any]
    ) -> EmbedResponse:
        raw = to_raw(recording)
        pre = await self.preprocess(raw, audit)
        pat = await self.run_pat(pre, per_patch=per_patch)
        warnings = list(pre.warnings)
        if self.model.summary.demo:
            warnings.append("served by the randomly initialised demo model: embeddings carry no meaning")
        return EmbedResponse(
            request_id=request_id, model=self.model.summary, quality=pre.quality, pat=pat, warnings=warnings
        )
