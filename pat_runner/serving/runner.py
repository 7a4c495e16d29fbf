"""The model service: PAT behind BentoML's adaptive batching, on CUDA when there is one.

`PATModel.infer_pooled` is batchable: BentoML gathers concurrent calls (up to `PAT_MAX_BATCH_SIZE` week
windows or `PAT_MAX_LATENCY_MS`), stacks their `(n, T)` arrays along axis 0, runs one forward pass and
splits the result again. Its output is a NumPy structured array, one record per window, so the pooled
embedding and the head's probability travel together through the batching machinery, with the name of
the backend that computed them (`PAT_BACKEND`, chosen at start-up by
`pat_runner.model.backends.select_backend`).
The per-patch embeddings (215 KB a week for PAT-S, 430 KB for PAT-L) cross to the API service only when
a caller asked for them: `infer_pooled` is the default call, `infer` adds the per-patch embeddings and
`infer_attention` the attention each patch receives (`model_call` picks one per `ModelOutput`).
`infer` and `infer_attention` keep every field they have had, and the API falls back from
`infer_pooled` to `infer` on a model service that lacks it, so API and model pods of adjacent releases
work together during a rolling update.
With `PAT_RUNNER_WORKERS` > 1 the API service calls the workers in turn (`serving/spread.py`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from pathlib import Path
from typing import Any

import bentoml
import numpy as np
import torch
from bentoml.exceptions import BentoMLException

from pat_runner import telemetry
from pat_runner.model.backends import Backend, default_cache_dir, select_backend
from pat_runner.model.malloc import retain_freed_memory
from pat_runner.model.store import StoredPAT, load_stored_pat, resolve_model
from pat_runner.serving.batching import bound_batch_wait
from pat_runner.serving.lifecycle import drain_after, settle_heap, stop_server_on_failure
from pat_runner.serving.pipeline import Infer, ModelOutput
from pat_runner.serving.spread import WorkerSocketMiddleware
from pat_runner.settings import get_settings

logger = logging.getLogger(__name__)
# The API service (service.py) that calls this one; it must drain before this service stops.
API_SERVICE_NAME = "pat_service"
settings = get_settings()
bound_batch_wait(settings.max_batch_wait_ms / 1000)


def pin_output_media_types(service: Any) -> None:
    """Work out each endpoint's response media type once, at import.

    For an endpoint returning an array, BentoML derives the media type from the output's JSON schema,
    which pydantic rebuilds on every response: ~0.5 ms of each model call (py-spy on a model worker at
    concurrency 16). The type never changes, and a type set on the output spec is what BentoML uses.
    """
    for method in service.apis.values():
        if method.output_spec.media_type is None:
            method.output_spec.media_type = method.output_spec.mime_type()


def pick_device(requested: str) -> str:
    """`auto` → `cuda` when a GPU is visible, else `cpu`; an explicit `cuda` without a GPU is an error."""
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"PAT_DEVICE={requested} but torch sees no CUDA device")
    return requested


def worker_threads(configured: int, workers: int) -> int:
    """Intra-op threads of one model worker: `PAT_TORCH_THREADS` when set, else this process's CPUs shared
    among the workers, so that N workers never start N threads per CPU between them."""
    if configured > 0:
        return configured
    return max(1, len(os.sched_getaffinity(0)) // workers)


def output_dtype(
    num_patches: int, embed_dim: int, *, per_patch: bool = False, attention: bool = False
) -> np.dtype:
    """One record per week window: the mean-pooled embedding, the head's probability (NaN without head)
    and the backend that computed them; with `per_patch`, also the per-patch embeddings; with
    `attention`, also the last layer's head-averaged attention each patch receives."""
    fields = [
        ("embedding", np.float32, (embed_dim,)),
        ("probability", np.float32),
        ("backend", "S16"),
    ]
    if per_patch:
        fields.append(("patches", np.float32, (num_patches, embed_dim)))
    if attention:
        fields.append(("attention", np.float32, (num_patches,)))
    return np.dtype(fields)


def to_records(
    patches: np.ndarray,
    probability: np.ndarray | None,
    backend: str,
    *,
    per_patch: bool = False,
    attention: np.ndarray | None = None,
) -> np.ndarray:
    """`(n, P, D)` per-patch embeddings (and what comes with them) → one record per window."""
    n, num_patches, embed_dim = patches.shape
    out = np.empty(
        n, dtype=output_dtype(num_patches, embed_dim, per_patch=per_patch, attention=attention is not None)
    )
    out["embedding"] = patches.mean(axis=1)
    out["probability"] = probability if probability is not None else np.nan
    out["backend"] = backend
    if per_patch:
        out["patches"] = patches
    if attention is not None:
        out["attention"] = attention
    return out


def run_model(backend: Backend, windows: np.ndarray, *, per_patch: bool = False) -> np.ndarray:
    """Encode `(n, T)` standardized windows with `backend`; the pure function behind the BentoML API,
    tested directly."""
    patches, probability = backend.run(windows)
    return to_records(patches, probability, backend.name, per_patch=per_patch)


def run_attention(stored: StoredPAT, windows: np.ndarray, device: str) -> np.ndarray:
    """As `run_model`, on the fp32 reference path, with the attention each patch receives: the last block
    computes its weights explicitly (not the fused kernel); their mean over query patches of the
    head-averaged map sums to 1. Attention is an explanation, so it never comes from a fast path."""
    model = stored.model
    x = torch.from_numpy(np.ascontiguousarray(windows, dtype=np.float32)).to(device)
    with torch.inference_mode():
        patches, weights = model.encode(x, return_attention=True)
        probability = model.head_proba(patches) if model.config.has_head else None
    return to_records(
        patches.float().cpu().numpy(),
        probability[:, 0].float().cpu().numpy() if probability is not None else None,
        "torch",
        per_patch=True,
        attention=weights.mean(dim=1).float().cpu().numpy(),
    )


def local_infer(backend: Backend, stored: StoredPAT | None = None, device: str = "cpu") -> Infer:
    """The model service's three calls, in this process: what tests and scripts use in
    place of `PATModel` (attention needs `stored`, the fp32 reference model)."""

    async def infer(windows: np.ndarray, output: ModelOutput) -> np.ndarray:
        if output == "attention":
            if stored is None:
                raise ValueError("the attention output needs the stored fp32 model")
            return run_attention(stored, windows, device)
        return run_model(backend, windows, per_patch=output == "patches")

    return infer


# The model service's batchable endpoint for each output the pipeline asks for.
MODEL_METHODS: dict[ModelOutput, str] = {
    "embedding": "infer_pooled",
    "patches": "infer",
    "attention": "infer_attention",
}


async def model_call(call: Callable[[str], Awaitable[np.ndarray]], output: ModelOutput) -> np.ndarray:
    """`call(endpoint name)` on the model service's endpoint for `output`. A model service of an earlier
    release (pods of both releases serve together during a rolling update) has no `infer_pooled` and
    answers 404: its `infer` answers with the per-patch records instead, which the pipeline pools."""
    try:
        return await call(MODEL_METHODS[output])
    except BentoMLException as exc:
        if output != "embedding" or exc.error_code != HTTPStatus.NOT_FOUND:
            raise
        logger.info("the model service has no infer_pooled (an earlier release): calling infer")
        return await call(MODEL_METHODS["patches"])


@bentoml.service(
    name="pat_model",
    workers=settings.runner_workers,
    traffic={"timeout": 300, "max_concurrency": settings.model_max_concurrency},
    # The API service's client to this service recycles its HTTP session every 100 calls by default,
    # which drops in-flight calls under concurrency (bentoml#5540).
    runner_connection={"max_requests": 1_000_000_000, "max_age": 10.0**9},
    resources={"gpu": 1} if settings.device.startswith("cuda") else {"cpu": "1"},
)
class PATModel:
    """Loads the PAT named by `PAT_MODEL_TAG` from the BentoML model store."""

    model_ref = bentoml.models.BentoModel(settings.model_tag)

    def __init__(self) -> None:
        with stop_server_on_failure("model"):
            # before the first tensor, so the start-up benchmark runs as the service will
            retains_memory = retain_freed_memory(settings.malloc_trim_threshold_mb)
            threads = worker_threads(settings.torch_threads, settings.runner_workers)
            torch.set_num_threads(threads)
            self.device = pick_device(settings.device)
            self.stored = load_stored_pat(self.model_ref, device=self.device)
            cache_dir = (
                Path(settings.onnx_cache_dir)
                if settings.onnx_cache_dir
                else default_cache_dir(resolve_model(self.model_ref).path)
            )
            self.backend, self.choice = select_backend(
                self.stored.model,
                settings.backend,
                self.device,
                cache_dir=cache_dir,
                threads=threads,
                bench_seconds=settings.backend_bench_seconds,
                spin_wait=settings.ort_spin_wait,
            )
            drain_after(API_SERVICE_NAME, settings.shutdown_grace_s)
        telemetry.record_worker_start("model")
        telemetry.record_model_info(self.stored.info, backend=self.choice.backend, device=self.device)
        logger.info(
            "PAT model loaded: %s (PAT-%s) on %s, backend %s, freed heap memory kept: %s",
            self.stored.tag,
            self.stored.info.size,
            self.device,
            self.choice.backend,
            retains_memory,
        )
        settle_heap(settings.gc_gen0_threshold)

    @bentoml.api(
        batchable=True,
        max_batch_size=settings.max_batch_size,
        max_latency_ms=settings.max_latency_ms,
    )
    def infer_pooled(self, windows: np.ndarray) -> np.ndarray:
        """`(n, T)` float32 standardized week windows → structured records (see `output_dtype`)."""
        return self._recorded(windows, lambda: run_model(self.backend, windows))

    @bentoml.api(
        batchable=True,
        max_batch_size=settings.max_batch_size,
        max_latency_ms=settings.max_latency_ms,
    )
    def infer(self, windows: np.ndarray) -> np.ndarray:
        """As `infer_pooled`, with the `patches` field (`/v1/embed` with `options.per_patch`)."""
        return self._recorded(windows, lambda: run_model(self.backend, windows, per_patch=True))

    @bentoml.api(
        batchable=True,
        max_batch_size=settings.max_batch_size,
        max_latency_ms=settings.max_latency_ms,
    )
    def infer_attention(self, windows: np.ndarray) -> np.ndarray:
        """As `infer`, with the `attention` field (`options.outputs` with `"attention"`), on the fp32
        reference path."""
        return self._recorded(windows, lambda: run_attention(self.stored, windows, self.device))

    @staticmethod
    def _recorded(windows: np.ndarray, compute: Callable[[], np.ndarray]) -> np.ndarray:
        """`compute()`, timed into the inference metrics of this worker."""
        with telemetry.timer() as elapsed:
            records = compute()
        telemetry.record_inference(len(windows), elapsed.seconds, worker=bentoml.server_context.worker_index)
        return records

    @bentoml.api
    def info(self) -> dict[str, Any]:
        """Metadata of the loaded model (tag, size, layout, source SHA-256, head task, demo flag, …), the
        served backend and the start-up measurements behind its choice."""
        return {
            **self.stored.info.to_dict(),
            "device": self.device,
            "backend": self.choice.backend,
            "backend_selection": self.choice.to_dict(),
        }


pin_output_media_types(PATModel)
# With several workers, each also listens on a socket of its own, which the API service's calls take in turn.
PATModel.add_asgi_middleware(
    WorkerSocketMiddleware,
    service_name=PATModel.name,
    workers=settings.runner_workers,
    grace_s=settings.shutdown_grace_s,
)
