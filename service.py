"""The PAT API service: wires authentication, preprocessing, caching, the batching model service,
clinical metrics and FHIR formatting into the v1 HTTP API. Logic lives in `pat_runner/`.

    bentoml serve .        # bentofile.yaml names `service:PATService`
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, Concatenate, ParamSpec, TypeVar

import bentoml
import numpy as np
from pydantic import Field, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from pat_runner import telemetry
from pat_runner.actigraphy.fhir_in import read_fhir_resource
from pat_runner.actigraphy.readers import NO_TIMEZONE_WARNING
from pat_runner.actigraphy.sleep import SleepMethod, SleepPeriodAlgorithm
from pat_runner.cache.cache import ResultCache
from pat_runner.errors import InvalidInput, PayloadTooLarge, ServiceError
from pat_runner.model.store import read_model_info, read_stored_scaler
from pat_runner.serving import routes
from pat_runner.serving.audit import AuditMiddleware, configure_logging
from pat_runner.serving.auth import FirebaseAuthMiddleware
from pat_runner.serving.backpressure import ConcurrencyLimitMiddleware, call_model_service
from pat_runner.serving.forms import FormOutputs, FormSubject, FormTimezone, forbid_unknown_fields
from pat_runner.serving.http import (
    DocsMiddleware,
    ErrorEnvelopeMiddleware,
    RequestLimitsMiddleware,
    SecurityHeadersMiddleware,
    TargetLengthMiddleware,
    downgrade_client_error_logs,
    error_response,
    validation_message,
)
from pat_runner.serving.lifecycle import (
    check_startup_config,
    install_fatal_exit,
    settle_heap,
    stop_server_on_failure,
)
from pat_runner.serving.openapi import enrich
from pat_runner.serving.pipeline import Analyzer, InputFacts, ModelOutput, to_raw
from pat_runner.serving.runner import PATModel, model_call
from pat_runner.serving.schemas import (
    MAX_VALUES,
    AnalyzeOptions,
    AnalyzeResponse,
    BatchItem,
    BatchResponse,
    EmbedOptions,
    EmbedResponse,
    ErrorDetail,
    InvalidateResponse,
    ModelsResponse,
    Recording,
)
from pat_runner.serving.spread import ModelRoutes, open_routes
from pat_runner.serving.upload import parse_upload
from pat_runner.settings import get_settings

DEFAULT_ANALYZE = AnalyzeOptions()
DEFAULT_EMBED = EmbedOptions()
MODEL_INFO_TIMEOUT_S = 5.0
settings = get_settings()
configure_logging(settings.log_level)
downgrade_client_error_logs()
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
P = ParamSpec("P")
R = TypeVar("R")


def enveloped(
    handler: Callable[Concatenate[Any, bentoml.Context, P], Awaitable[R]],
) -> Callable[Concatenate[Any, bentoml.Context, P], Awaitable[R | JSONResponse]]:
    """The one error path of every handler: a `ServiceError` becomes the error envelope."""

    @functools.wraps(handler)
    async def wrapper(self: Any, ctx: bentoml.Context, *args: P.args, **kwargs: P.kwargs) -> R | JSONResponse:
        try:
            return await handler(self, ctx, *args, **kwargs)
        except ServiceError as exc:
            # BentoML copies ctx.response.status_code onto any response of a handler that takes a context.
            ctx.response.status_code = exc.status
            return error_response(exc, _request_id(ctx))

    return wrapper


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
            self.model_info = read_model_info(self.model_ref)
            self.cache = ResultCache.from_settings(settings)
            self.analyzer = Analyzer(
                model=self.model_info,
                scaler=read_stored_scaler(self.model_ref),
                infer=self._infer,
                cache=self.cache,
                settings=settings,
            )
            # BentoML's client alone until start-up adds one per model worker (spread.py).
            self.model_routes: ModelRoutes[Any] = ModelRoutes(self.model_service)
        telemetry.record_worker_start("api")
        settle_heap(settings.gc_gen0_threshold)

    @bentoml.on_startup
    async def route_to_model_workers(self) -> None:
        self.model_routes = await open_routes(self.model_service, PATModel, settings.runner_workers)

    async def _infer(self, windows: np.ndarray, output: ModelOutput) -> np.ndarray:
        # The dependency's client gets its endpoints only after __init__, at server start-up.
        async def call(method: str) -> np.ndarray:
            return await call_model_service(
                lambda model: getattr(model.to_async, method)(windows), self.model_routes
            )

        return await model_call(call, output)

    @bentoml.on_shutdown
    async def close(self) -> None:
        await asyncio.gather(self.cache.close(), self.model_routes.close())

    @bentoml.api(route=routes.ANALYZE)
    @enveloped
    async def analyze(
        self, ctx: bentoml.Context, recording: Recording, options: AnalyzeOptions = DEFAULT_ANALYZE
    ) -> AnalyzeResponse:
        """Analyse one recording: clinical metrics, PAT outputs and a FHIR R4 Bundle."""
        analysis = await self.analyzer.analyze(to_raw(recording), options, request_id=_request_id(ctx))
        _audit(ctx, analysis.facts)
        return analysis.response

    @bentoml.api(route=routes.ANALYZE_BATCH)
    @enveloped
    async def analyze_batch(
        self,
        ctx: bentoml.Context,
        recordings: Annotated[list[Recording], Field(min_length=1, max_length=256)],
        options: AnalyzeOptions = DEFAULT_ANALYZE,
    ) -> BatchResponse:
        """Analyse several recordings independently (e.g. a nightly sync); one result or error each,
        in request order."""
        request_id = _request_id(ctx)
        if len(recordings) > settings.max_batch_recordings:
            raise PayloadTooLarge(
                f"{len(recordings)} recordings in one batch; the limit is {settings.max_batch_recordings}"
            )
        # The total work of the request, checked before any recording is preprocessed.
        minutes = sum(len(r.values_array()) * r.epoch_seconds // 60 for r in recordings)
        if minutes > settings.max_request_minutes:
            raise PayloadTooLarge(
                f"the batch spans {minutes:,} minutes in all; the limit is {settings.max_request_minutes:,}"
            )
        facts: list[InputFacts | None] = [None] * len(recordings)

        async def one(index: int, recording: Recording) -> BatchItem:
            try:
                analysis = await self.analyzer.analyze(
                    to_raw(recording), options, request_id=f"{request_id}.{index}"
                )
            except ServiceError as exc:
                where = f"recordings[{index}]: {exc.message}"
                return BatchItem(error=ErrorDetail(code=exc.code, message=where))
            facts[index] = analysis.facts
            return BatchItem(result=analysis.response)

        # Concurrently, so the model service batches the recordings' windows together.
        items = await asyncio.gather(*(one(i, recording) for i, recording in enumerate(recordings)))
        audit = ctx.request.state.audit
        audit["n_recordings"] = len(recordings)
        audit["inputs_sha256"] = [f.input_sha256 if f else None for f in facts]
        audit["minutes"] = sum(f.minutes for f in facts if f)
        audit["model_tag"] = self.model_info.tag
        return BatchResponse(request_id=request_id, results=list(items))

    @bentoml.api(route=routes.EMBED)
    @enveloped
    async def embed(
        self, ctx: bentoml.Context, recording: Recording, options: EmbedOptions = DEFAULT_EMBED
    ) -> EmbedResponse:
        """PAT embeddings: the mean-pooled 96-d vector per week window (per-patch on request)."""
        embedding = await self.analyzer.embed(
            to_raw(recording), per_patch=options.per_patch, request_id=_request_id(ctx)
        )
        _audit(ctx, embedding.facts)
        return embedding.response

    @bentoml.api(route=routes.ANALYZE_FILE)
    @enveloped
    async def analyze_file(
        self,
        ctx: bentoml.Context,
        file: Path,
        timezone: FormTimezone = "",
        subject: FormSubject = "",
        outputs: FormOutputs = DEFAULT_ANALYZE.outputs,
        sleep_algorithm: SleepMethod = DEFAULT_ANALYZE.sleep_algorithm,
        sleep_period_algorithm: SleepPeriodAlgorithm = DEFAULT_ANALYZE.sleep_period_algorithm,
        nonwear_algorithm: Annotated[str, Field(pattern="^(|choi|troiano|none)$")] = "",
        recording_start: Annotated[
            str,
            Field(
                max_length=32,
                description="NSRR/MESA CSVs only (they have no dates): local date of the first row, "
                "e.g. `2010-03-04` (or date and time, `2010-03-04T20:30:00`).",
            ),
        ] = "",
    ) -> AnalyzeResponse:
        """Analyse a device file uploaded as multipart/form-data: raw ActiGraph `.gt3x`, ActiGraph `.agd`
        or CSV, Actiwatch `.awd`, NSRR/MESA Actiwatch CSV (docs/inputs.md). Timestamps in the file are
        read as local clock time in `timezone` (UTC, with a warning, when it is not given); an empty
        `nonwear_algorithm` is the service's default."""
        ctx.request.state.audit["upload_bytes"] = file.stat().st_size
        try:
            raw = await parse_upload(
                file,
                file.name,
                timezone=timezone or "UTC",
                recording_start=recording_start,
                settings=settings,
                max_epochs=MAX_VALUES,
            )
            options = AnalyzeOptions(
                outputs=outputs,
                sleep_algorithm=sleep_algorithm,
                sleep_period_algorithm=sleep_period_algorithm,
                nonwear_algorithm=nonwear_algorithm or None,
            )
        except ValidationError as exc:
            # pydantic's own text quotes the input (activity values): only where and which rule.
            raise InvalidInput(
                validation_message(exc.errors(include_url=False, include_input=False))
            ) from exc
        except ValueError as exc:
            raise InvalidInput(f"the file's content cannot be analysed ({type(exc).__name__})") from exc
        # The reader's recording goes to the pipeline as it is; the form's subject is the only addition.
        raw = dataclasses.replace(raw, subject=subject or None)
        analysis = await self.analyzer.analyze(raw, options, request_id=_request_id(ctx))
        _audit(ctx, analysis.facts)
        if not timezone:
            analysis.response.warnings.append(NO_TIMEZONE_WARNING)
        return analysis.response

    @bentoml.api(route=routes.ANALYZE_FHIR)
    @enveloped
    async def analyze_fhir(
        self,
        ctx: bentoml.Context,
        resource: Annotated[
            dict[str, Any],
            Field(
                description="A FHIR R4 Observation whose valueSampledData is the epoch series, or a "
                "Bundle of them (docs/inputs.md).",
            ),
        ],
        timezone: Annotated[str, Field(description="IANA time zone of the wearer.", max_length=64)],
        options: AnalyzeOptions = DEFAULT_ANALYZE,
    ) -> AnalyzeResponse:
        """Analyse a recording stored as FHIR: an R4 `Observation` with `valueSampledData` (or a
        `Bundle` of them), as a health data service keeps device data."""
        try:
            raw = read_fhir_resource(
                resource,
                timezone=timezone,
                max_minutes=settings.max_recording_minutes,
                max_values=MAX_VALUES,
            )
        except ValueError as exc:
            raise InvalidInput(str(exc)) from exc
        analysis = await self.analyzer.analyze(raw, options, request_id=_request_id(ctx))
        _audit(ctx, analysis.facts)
        return analysis.response

    if settings.bench_floor:

        @bentoml.api(route=routes.BENCH_FLOOR)
        @enveloped
        async def bench_floor(
            self, ctx: bentoml.Context, recording: Recording, options: AnalyzeOptions = DEFAULT_ANALYZE
        ) -> dict[str, int]:
            """BentoML's floor, for benchmarks only (`PAT_BENCH_FLOOR=true`): the body of an analyze
            request through the same middlewares, parsing and validation, answered without analysis."""
            return {"values": len(recording.values_array())}

    @bentoml.api(route=routes.CACHE_INVALIDATE)
    @enveloped
    async def invalidate_cache(
        self,
        ctx: bentoml.Context,
        model_tag: Annotated[str, Field(description="Model tag whose results to drop; empty: all.")] = "",
    ) -> InvalidateResponse:
        """Remove cached results of one model tag, or all of them (admin role only)."""
        removed = await self.cache.invalidate(model_tag or None)
        ctx.request.state.audit["invalidated"] = removed
        return InvalidateResponse(removed=removed)


def _request_id(ctx: bentoml.Context) -> str:
    """The request id AuditMiddleware assigned."""
    return getattr(ctx.request.state, "request_id", None) or ""


def _audit(ctx: bentoml.Context, facts: InputFacts) -> None:
    """The pipeline's facts about the input, into the audit record AuditMiddleware writes."""
    ctx.request.state.audit.update(dataclasses.asdict(facts))


async def _get_models(request: Request) -> JSONResponse:
    service = bentoml.get_current_service()
    info = service.model_info.to_dict()
    # The backend is chosen in the model service at its start-up; ask it, but never hang on it.
    try:
        runtime = await asyncio.wait_for(service.model_service.to_async.info(), MODEL_INFO_TIMEOUT_S)
    except Exception:
        info.update(backend=None, backend_selection=None)
    else:
        info.update({key: runtime[key] for key in ("device", "backend", "backend_selection")})
    return JSONResponse(ModelsResponse(models=[info]).model_dump(mode="json"))


models_app.router.routes.append(Route(routes.MODELS, _get_models, methods=["GET"]))
PATService.mount_asgi_app(models_app, path="/")
# Unknown top-level fields are refused like nested ones (BentoML's generated input models ignore them).
forbid_unknown_fields([api.input_spec for api in PATService.apis.values()])
# First added = outermost: audit sees every final status; an over-long URL is refused (414) before
# anything else looks at it; errors are enveloped before audit logs them; backpressure refuses before
# authentication costs anything; authentication runs before the docs are served and before any body is
# read; limits run before BentoML parses the body.
PATService.add_asgi_middleware(AuditMiddleware)
PATService.add_asgi_middleware(TargetLengthMiddleware, max_url_bytes=settings.max_url_bytes)
PATService.add_asgi_middleware(SecurityHeadersMiddleware, tls=bool(settings.tls_certfile))
PATService.add_asgi_middleware(ErrorEnvelopeMiddleware)
PATService.add_asgi_middleware(
    ConcurrencyLimitMiddleware, max_concurrency=settings.max_concurrency, retry_after_s=settings.retry_after_s
)
PATService.add_asgi_middleware(FirebaseAuthMiddleware, settings=settings)
PATService.add_asgi_middleware(
    DocsMiddleware,
    openapi=lambda: enrich(PATService.openapi_spec.asdict(), settings),
    client_schema=PATService.schema,
    auth_enabled=settings.auth != "disabled",
)
PATService.add_asgi_middleware(
    RequestLimitsMiddleware,
    max_request_bytes=settings.max_request_bytes,
    # The body limit of uploads is the raw-file one; text exports are held to theirs once read.
    max_upload_bytes=max(settings.max_upload_bytes, settings.max_raw_upload_bytes),
    max_request_values=settings.max_request_values,
)
