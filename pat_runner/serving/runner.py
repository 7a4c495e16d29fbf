"""The model service: PAT behind BentoML's adaptive batching, on CUDA when there is one.

`PATModel.infer` is batchable: BentoML gathers concurrent calls (up to `PAT_MAX_BATCH_SIZE` week windows
or `PAT_MAX_LATENCY_MS`), stacks their `(n, T)` arrays along axis 0, runs one forward pass and splits
the result again. Its output is a NumPy structured array, one record per window, so embeddings and the
head's probability travel together through the batching machinery.
"""

from __future__ import annotations

import logging
from typing import Any

import bentoml
import numpy as np
import torch

from pat_runner import telemetry
from pat_runner.model.store import StoredPAT, load_stored_pat
from pat_runner.serving.lifecycle import drain_after, stop_server_on_failure
from pat_runner.settings import get_settings

logger = logging.getLogger(__name__)
# The API service (service.py) that calls this one; it must drain before this service stops.
API_SERVICE_NAME = "pat_service"
settings = get_settings()


def pick_device(requested: str) -> str:
    """`auto` → `cuda` when a GPU is visible, else `cpu`; an explicit `cuda` without a GPU is an error."""
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"PAT_DEVICE={requested} but torch sees no CUDA device")
    return requested


def output_dtype(num_patches: int, embed_dim: int) -> np.dtype:
    """One record per week window: per-patch embeddings and the head's probability (NaN without head)."""
    return np.dtype([("patches", np.float32, (num_patches, embed_dim)), ("probability", np.float32)])


def run_model(stored: StoredPAT, windows: np.ndarray, device: str) -> np.ndarray:
    """Encode `(n, T)` standardized windows; the pure function behind the BentoML API, tested directly."""
    model = stored.model
    x = torch.from_numpy(np.ascontiguousarray(windows, dtype=np.float32)).to(device)
    with torch.inference_mode():
        patches = model.encode(x)
        probability = model.head_proba(patches) if model.config.has_head else None
    out = np.empty(len(windows), dtype=output_dtype(patches.shape[1], patches.shape[2]))
    out["patches"] = patches.float().cpu().numpy()
    out["probability"] = probability[:, 0].float().cpu().numpy() if probability is not None else np.nan
    return out


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
            if settings.torch_threads > 0:
                torch.set_num_threads(settings.torch_threads)
            self.device = pick_device(settings.device)
            self.stored = load_stored_pat(self.model_ref, device=self.device)
            drain_after(API_SERVICE_NAME, settings.shutdown_grace_s)
        telemetry.record_worker_start("model")
        logger.info(
            "PAT model loaded",
            extra={"model_tag": self.stored.tag, "device": self.device, "size": self.stored.info.size},
        )

    @bentoml.api(
        batchable=True,
        max_batch_size=settings.max_batch_size,
        max_latency_ms=settings.max_latency_ms,
    )
    def infer(self, windows: np.ndarray) -> np.ndarray:
        """`(n, T)` float32 standardized week windows → structured records (see `output_dtype`)."""
        with telemetry.timer() as elapsed:
            records = run_model(self.stored, windows, self.device)
        telemetry.record_inference(len(windows), elapsed.seconds)
        return records

    @bentoml.api
    def info(self) -> dict[str, Any]:
        """Metadata of the loaded model (tag, size, layout, source SHA-256, head task, demo flag, …)."""
        return {**self.stored.info.to_dict(), "device": self.device}
