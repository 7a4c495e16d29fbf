"""Cohort back-fill, engine-independent half: one recording in, the service's outputs out.

Each step is the service's own code — `preprocess`, `actigraphy_metrics`, `run_model`, `build_bundle` —
split where the batch engine splits the work: `prepare` (preprocessing and metrics, CPU tasks),
`PatEncoder` (PAT on stacked windows, a long-lived actor holding the model) and `assemble` (embedding
rows, metrics row, FHIR resources). `pat_runner.batch.ray_backfill` runs them on Ray.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from pat_runner.actigraphy.fhir import build_bundle
from pat_runner.actigraphy.metrics import ActigraphyMetrics, actigraphy_metrics
from pat_runner.actigraphy.preprocess import PIPELINE_VERSION, RawRecording, preprocess
from pat_runner.errors import ServiceError
from pat_runner.model import WEEK_MINUTES
from pat_runner.model.backends import TorchBackend
from pat_runner.model.info import ModelInfo
from pat_runner.model.malloc import retain_freed_memory
from pat_runner.model.store import load_stored_pat, read_model_info, read_stored_scaler
from pat_runner.serving.runner import run_model
from pat_runner.settings import Settings

#: Columns an input Parquet file must have (`values`: per-epoch counts, null = missing); `unit`,
#: `subject` and `device` (JSON) are optional, as in the API's `Recording`.
REQUIRED_COLUMNS = ("recording_id", "start", "timezone", "epoch_seconds", "values")
_WEEK = timedelta(minutes=WEEK_MINUTES)


@dataclass(frozen=True)
class ModelContext:
    """What preprocessing and FHIR need to know about the model, without its weights."""

    tag: str
    info: ModelInfo
    scaler: tuple[np.ndarray, np.ndarray] | None

    @classmethod
    def load(cls, tag: str) -> ModelContext:
        info = read_model_info(tag)
        return cls(tag=info.tag, info=info, scaler=read_stored_scaler(tag))


def raw_recording(row: dict[str, Any]) -> RawRecording:
    start = row["start"]
    values = np.array([np.nan if v is None else v for v in row["values"]], dtype=np.float64)
    return RawRecording(
        start=datetime.fromisoformat(start) if isinstance(start, str) else start,
        timezone=row["timezone"],
        epoch_seconds=int(row["epoch_seconds"]),
        values=values,
        unit=row.get("unit") or "counts",
        subject=row.get("subject") or None,
        device=json.loads(row["device"]) if row.get("device") else None,
    )


def prepare(
    row: dict[str, Any], *, context: ModelContext, settings: Settings, sleep_method: str = "cole_kripke"
) -> dict[str, Any]:
    """Preprocess one recording and compute its metrics; a recording the service would reject (422)
    comes back with `error` set and no windows, so one bad file never stops a cohort."""
    out: dict[str, Any] = {"recording_id": str(row["recording_id"]), "subject": row.get("subject") or ""}
    try:
        raw = raw_recording(row)
        pre = preprocess(raw, scaler=context.scaler, settings=settings)
        # The service's defaults for a request without options (pipeline.Plan).
        metrics = actigraphy_metrics(
            pre.minutes,
            unit=raw.unit,
            sleep_method=sleep_method,  # type: ignore[arg-type]
            nonwear_algorithm=settings.nonwear_algorithm,
            min_night_coverage=settings.min_night_coverage,
        )
    except (ServiceError, ValueError) as exc:  # what the service answers with a 4xx
        return {**out, **_empty(), "error": f"{type(exc).__name__}: {exc}"}
    return {
        **out,
        "error": "",
        "windows": pre.windows.astype(np.float32),
        # JSON: ragged lists per row do not convert to Arrow columns reliably.
        "window_starts": json.dumps([s.isoformat() for s in pre.window_starts]),
        "window_observed": json.dumps([float(f) for f in pre.window_observed_fraction]),
        "quality": pre.quality.model_dump_json(),
        "metrics": metrics.model_dump_json(),
        "warnings": json.dumps(list(pre.warnings)),
        "device": json.dumps(raw.device) if raw.device else "",
    }


def _empty() -> dict[str, Any]:
    return {
        "windows": np.zeros((0, WEEK_MINUTES), dtype=np.float32),
        "window_starts": "[]",
        "window_observed": "[]",
        "quality": "",
        "metrics": "",
        "warnings": "[]",
        "device": "",
    }


class PatEncoder:
    """PAT on the stacked windows of a batch of prepared recordings: one forward pass per batch, as
    the model service's adaptive batching does; the mean-pooled embedding and the head's probability
    per window come back, split per recording."""

    def __init__(
        self,
        tag: str,
        device: str = "cpu",
        torch_threads: int = 0,
        malloc_trim_threshold_mb: int = Settings.model_fields["malloc_trim_threshold_mb"].default,
    ) -> None:
        retain_freed_memory(malloc_trim_threshold_mb)
        if torch_threads > 0:
            import torch

            torch.set_num_threads(torch_threads)
        # The fp32 reference backend: a back-fill's results must not depend on which fast path a
        # machine would pick.
        self.backend = TorchBackend(load_stored_pat(tag, device=device).model, device)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        windows = [np.asarray(w, dtype=np.float32).reshape(-1, WEEK_MINUTES) for w in batch["windows"]]
        counts = [len(w) for w in windows]
        embeddings: list[np.ndarray] = []
        probabilities: list[np.ndarray] = []
        if sum(counts):
            records = run_model(self.backend, np.concatenate(windows))
            flat_embeddings = records["embedding"]
            flat_probabilities = records["probability"]
        else:
            flat_embeddings = np.zeros((0, 0), dtype=np.float32)
            flat_probabilities = np.zeros(0, dtype=np.float32)
        offset = 0
        for n in counts:
            embeddings.append(flat_embeddings[offset : offset + n])
            probabilities.append(flat_probabilities[offset : offset + n])
            offset += n
        out = {key: value for key, value in batch.items() if key != "windows"}
        out["embeddings"] = _ragged(embeddings)
        out["probabilities"] = _ragged(probabilities)
        return out


def _ragged(arrays: list[np.ndarray]) -> np.ndarray:
    holder = np.empty(len(arrays), dtype=object)
    for i, array in enumerate(arrays):
        holder[i] = array
    return holder


def embedding_rows(row: dict[str, Any], context: ModelContext) -> Iterator[dict[str, Any]]:
    """One row per week window: the service's `pat.windows[i]` (embedding, probability, period)."""
    starts, observed_fractions = json.loads(row["window_starts"]), json.loads(row["window_observed"])
    for index, (start, observed) in enumerate(zip(starts, observed_fractions, strict=True)):
        probability = float(row["probabilities"][index])
        start_at = datetime.fromisoformat(start)
        yield {
            "recording_id": row["recording_id"],
            "window": index,
            "start": start_at,
            "end": start_at + _WEEK,
            "observed_fraction": float(observed),
            "embedding": np.asarray(row["embeddings"][index], dtype=np.float32).tolist(),
            "probability": None if np.isnan(probability) else probability,
            "model_tag": context.tag,
        }


def metrics_row(row: dict[str, Any], context: ModelContext) -> dict[str, Any]:
    return {
        "recording_id": row["recording_id"],
        "error": row["error"],
        "quality": row["quality"],
        "metrics": row["metrics"],
        "warnings": row["warnings"],
        "model_tag": context.tag,
        "pipeline_version": PIPELINE_VERSION,
    }


def fhir_resources(row: dict[str, Any], context: ModelContext) -> list[dict[str, Any]]:
    """The recording's FHIR resources as `$export` writes them: each with an `id`, references as
    `Type/id` instead of the Bundle's `urn:uuid:` fullUrls (random ids, as the service's are)."""
    if row["error"]:
        return []
    quality = json.loads(row["quality"])
    probability = None
    if context.info.head_task:
        finite = [float(p) for p in row["probabilities"] if not np.isnan(p)]
        probability = float(np.mean(finite)) if finite else None
    bundle = build_bundle(
        ActigraphyMetrics.model_validate_json(row["metrics"]),
        period_start=datetime.fromisoformat(quality["start"].replace("Z", "+00:00")),
        period_end=datetime.fromisoformat(quality["end"].replace("Z", "+00:00")),
        subject=row["subject"] or None,
        model=context.info,
        probability=probability,
        head_task=context.info.head_task,
        device=json.loads(row["device"]) if row["device"] else None,
        request_id=row["recording_id"],
    )
    return bulk_resources(bundle)


def bulk_resources(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    """A collection Bundle's resources in Bulk Data form (ids set, internal references resolved)."""
    names = {}
    for entry in bundle["entry"]:
        resource_id = entry["fullUrl"].removeprefix("urn:uuid:")
        names[entry["fullUrl"]] = f"{entry['resource']['resourceType']}/{resource_id}"
    resources = []
    for entry in bundle["entry"]:
        resource = _resolve(entry["resource"], names)
        resources.append(
            {
                "resourceType": resource["resourceType"],
                "id": names[entry["fullUrl"]].split("/")[1],
                **{k: v for k, v in resource.items() if k != "resourceType"},
            }
        )
    return resources


def _resolve(node: Any, names: dict[str, str]) -> Any:
    if isinstance(node, dict):
        return {
            key: names.get(value, value)
            if key == "reference" and isinstance(value, str)
            else _resolve(value, names)
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_resolve(item, names) for item in node]
    return node
