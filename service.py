"""The PAT API service: wires authentication, preprocessing, caching, the batching model service,
clinical metrics and FHIR formatting into the v1 HTTP API. Logic lives in `pat_runner/`.

    bentoml serve .        # bentofile.yaml names `service:PATService`
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

import bentoml
import numpy as np
from pydantic import Field
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from pat_runner import telemetry
from pat_runner.actigraphy.readers import read_recording_file
from pat_runner.cache.cache import ResultCache
from pat_runner.errors import InvalidInput, PayloadTooLarge, ServiceError
from pat_runner.serving.audit import AuditMiddleware, configure_logging
from pat_runner.serving.auth import FirebaseAuthMiddleware
from pat_runner.serving.backpressure import ConcurrencyLimitMiddleware, shed_when_model_overloaded
from pat_runner.serving.http import (
    DocsMiddleware,
    ErrorEnvelopeMiddleware,
    RequestLimitsMiddleware,
    SecurityHeadersMiddleware,
    error_response,
)
from pat_runner.serving.lifecycle import check_startup_config, install_fatal_exit, stop_server_on_failure
from pat_runner.serving.openapi import enrich
from pat_runner.serving.pipeline import Analyzer, served_model
from pat_runner.serving.runner import PATModel
from pat_runner.serving.schemas import (
    SUBJECT_PATTERN,
    AnalyzeOptions,
    AnalyzeResponse,
    BatchItem,
    BatchResponse,
    EmbedOptions,
    EmbedResponse,
    ErrorDetail,
    InvalidateResponse,
    ModelsResponse,
    Output,
    Recording,
)
from pat_runner.settings import get_settings

DEFAULT_ANALYZE = AnalyzeOptions()
DEFAULT_EMBED = EmbedOptions()
settings = get_settings()
configure_logging(settings.log_level)
telemetry.configure_tracing()
# Fail closed before BentoML starts any worker: a misconfigured server must not come up at all.
check_startup_config(settings)
install_fatal_exit()

_ssl = (
    {"ssl": {"enabled": True, "certfile": settings.tls_certfile, "keyfile": settings.tls_keyfile}}
    if settings.tls_certfile
    else {}
)

models_app = Starlette()


@bentoml.service(
    name="pat_service",
    workers=settings.api_workers,
    traffic={"timeout": 300},
    http={"host": settings.host},
    **_ssl,
)
class PATService:
    """Real-time analysis of a week of minute-level wrist actigraphy with PAT."""

    model_service = bentoml.depends(PATModel)
    model_ref = bentoml.models.BentoModel(settings.model_tag)

    def __init__(self) -> None:
        with stop_server_on_failure("API"):
            self.served = served_model(self.model_ref)
            self.cache = ResultCache.from_settings(settings)
            self.analyzer = Analyzer(
                model=self.served, infer=self._infer, cache=self.cache, settings=settings
            )
            telemetry.record_model_info(self.served.summary)
        telemetry.record_worker_start("api")

    async def _infer(self, windows: np.ndarray) -> np.ndarray:
        # The dependency's client gets its endpoints only after __init__, at server start-up.
        return await shed_when_model_overloaded(self.model_service.to_async.infer(windows))

    @bentoml.on_shutdown
    async def close(self) -> None:
        await self.cache.close()

    @bentoml.api(route="/v1/analyze")
    async def analyze(
        self, ctx: bentoml.Context, recording: Recording, options: AnalyzeOptions = DEFAULT_ANALYZE
    ) -> AnalyzeResponse:
        """Analyse one recording: clinical metrics, PAT outputs and a FHIR R4 Bundle."""
        state = _state(ctx)
        try:
            return await self.analyzer.analyze(
                recording, options, request_id=state["request_id"], audit=state["audit"]
            )
        except ServiceError as exc:
            return _fail(ctx, exc)

    @bentoml.api(route="/v1/analyze/batch")
    async def analyze_batch(
        self,
        ctx: bentoml.Context,
        recordings: Annotated[list[Recording], Field(min_length=1, max_length=256)],
        options: AnalyzeOptions = DEFAULT_ANALYZE,
    ) -> BatchResponse:
        """Analyse several recordings independently (e.g. a nightly sync); one result or error each,
        in request order."""
        state = _state(ctx)
        if len(recordings) > settings.max_batch_recordings:
            return _fail(
                ctx,
                PayloadTooLarge(
                    f"{len(recordings)} recordings in one batch; the limit is {settings.max_batch_recordings}"
                ),
            )

        async def one(index: int, recording: Recording) -> BatchItem:
            try:
                result = await self.analyzer.analyze(
                    recording, options, request_id=f"{state['request_id']}.{index}", audit={}
                )
            except ServiceError as exc:
                where = f"recordings[{index}]: {exc.message}"
                return BatchItem(error=ErrorDetail(code=exc.code, message=where))
            return BatchItem(result=result)

        # Concurrently, so the model service batches the recordings' windows together.
        items = await asyncio.gather(*(one(i, recording) for i, recording in enumerate(recordings)))
        state["audit"]["n_recordings"] = len(recordings)
        return BatchResponse(request_id=state["request_id"], results=list(items))

    @bentoml.api(route="/v1/embed")
    async def embed(
        self, ctx: bentoml.Context, recording: Recording, options: EmbedOptions = DEFAULT_EMBED
    ) -> EmbedResponse:
        """PAT embeddings: the mean-pooled 96-d vector per week window (per-patch on request)."""
        state = _state(ctx)
        try:
            return await self.analyzer.embed(
                recording,
                per_patch=options.per_patch,
                request_id=state["request_id"],
                audit=state["audit"],
            )
        except ServiceError as exc:
            return _fail(ctx, exc)

    @bentoml.api(route="/v1/analyze/file")
    async def analyze_file(
        self,
        ctx: bentoml.Context,
        file: Path,
        timezone: str = "UTC",
        subject: Annotated[str, Field(pattern=f"^$|{SUBJECT_PATTERN}")] = "",
        outputs: list[Output] = DEFAULT_ANALYZE.outputs,
    ) -> AnalyzeResponse:
        """Analyse a device export uploaded as multipart/form-data: ActiGraph `.agd` or CSV, Actiwatch
        `.awd`. Timestamps in the file are read as local clock time in `timezone`."""
        state = _state(ctx)
        try:
            data = file.read_bytes()
            raw = read_recording_file(
                data,
                file.name,
                timezone=timezone,
                max_bytes=settings.max_upload_bytes,
                max_minutes=settings.max_recording_minutes,
            )
            recording = Recording.model_validate(
                {
                    "start": raw.start,
                    "timezone": raw.timezone,
                    "epoch_seconds": raw.epoch_seconds,
                    "values": [None if v != v else float(v) for v in raw.values],
                    "unit": raw.unit,
                    "subject": subject or None,
                    "device": raw.device,
                }
            )
            options = AnalyzeOptions(outputs=outputs)
            state["audit"]["upload_bytes"] = len(data)
            return await self.analyzer.analyze(
                recording, options, request_id=state["request_id"], audit=state["audit"]
            )
        except ServiceError as exc:
            return _fail(ctx, exc)
        except ValueError as exc:
            return _fail(ctx, InvalidInput(str(exc)))

    @bentoml.api(route="/v1/cache/invalidate")
    async def invalidate_cache(
        self,
        ctx: bentoml.Context,
        model_tag: Annotated[str, Field(description="Model tag whose results to drop; empty: all.")] = "",
    ) -> InvalidateResponse:
        """Remove cached results of one model tag, or all of them (admin role only)."""
        try:
            removed = await self.cache.invalidate(model_tag or None)
        except ServiceError as exc:
            return _fail(ctx, exc)
        _state(ctx)["audit"]["invalidated"] = removed
        return InvalidateResponse(removed=removed)


def _fail(ctx: bentoml.Context, exc: ServiceError) -> JSONResponse:
    # BentoML copies ctx.response.status_code onto any response of a handler that takes a context.
    ctx.response.status_code = exc.status
    return error_response(exc, _state(ctx)["request_id"])


def _state(ctx: bentoml.Context) -> dict[str, Any]:
    """Request id and the audit fields the handler adds (set up by AuditMiddleware)."""
    state = ctx.request.state
    return {"request_id": getattr(state, "request_id", None) or "", "audit": state.audit}


async def _get_models(request: Request) -> JSONResponse:
    service = bentoml.get_current_service()
    return JSONResponse(ModelsResponse(models=[service.served.info]).model_dump(mode="json"))


models_app.router.routes.append(Route("/v1/models", _get_models, methods=["GET"]))
PATService.mount_asgi_app(models_app, path="/")

# First added = outermost: audit sees every final status; errors are enveloped before audit logs them;
# backpressure refuses before authentication costs anything; authentication runs before the docs are
# served and before any body is read; limits run before BentoML parses the body.
PATService.add_asgi_middleware(AuditMiddleware)
PATService.add_asgi_middleware(SecurityHeadersMiddleware, tls=bool(settings.tls_certfile))
PATService.add_asgi_middleware(ErrorEnvelopeMiddleware)
PATService.add_asgi_middleware(
    ConcurrencyLimitMiddleware, max_concurrency=settings.max_concurrency, retry_after_s=settings.retry_after_s
)
PATService.add_asgi_middleware(FirebaseAuthMiddleware, settings=settings)
PATService.add_asgi_middleware(DocsMiddleware, openapi=lambda: enrich(PATService.openapi_spec.asdict()))
PATService.add_asgi_middleware(
    RequestLimitsMiddleware,
    max_request_bytes=settings.max_request_bytes,
    max_upload_bytes=settings.max_upload_bytes,
)
