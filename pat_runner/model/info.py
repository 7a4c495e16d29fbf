"""What the service knows about a stored PAT without loading its weights: the one model description
used by the model store, the pipeline, FHIR provenance, `GET /v1/models` and telemetry.

Light on purpose (no torch, no BentoML), so FHIR and telemetry can import it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class ModelInfo:
    """What the service reports about a stored PAT (`GET /v1/models`, logs, FHIR provenance)."""

    tag: str
    name: str
    size: str
    layout: str
    demo: bool
    head_task: str | None
    patch_size: int
    num_layers: int
    num_heads: int
    parameters: int
    source_file: str | None
    source_sha256: str | None
    dataset: str | None
    converter_version: str
    has_scaler: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_metadata(cls, tag: str, meta: Mapping[str, Any]) -> ModelInfo:
        """From a stored model's tag (`name:version`) and its BentoML metadata."""
        return cls(
            tag=tag,
            name=tag.split(":", 1)[0],
            size=str(meta["size"]),
            layout=str(meta["layout"]),
            demo=bool(meta["demo"]),
            head_task=meta.get("head_task"),
            patch_size=int(meta["patch_size"]),
            num_layers=int(meta["num_layers"]),
            num_heads=int(meta["num_heads"]),
            parameters=int(meta["parameters"]),
            source_file=meta.get("source_file"),
            source_sha256=meta.get("source_sha256"),
            dataset=meta.get("dataset"),
            converter_version=str(meta["converter_version"]),
            has_scaler=bool(meta["has_scaler"]),
        )
