"""PAT models in the BentoML model store: import from Keras H5, the labelled demo model, loading by tag.

A stored PAT is a BentoML model directory (`bentoml.models.create`) holding the converted PyTorch
`state_dict` (`weights.pt`), the `PATConfig` (`config.json`) and, when imported with one, the cohort
scaler (`scaler.npz`). Its metadata records where it came from (docs/architecture.md, "H5 layouts"):
size, layout, source file name and SHA-256, head task, dataset, scaler, converter version, demo flag.
Importing the same file again (same bytes, scaler, task and converter version) returns the model
already stored instead of adding a version.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bentoml
import numpy as np
import torch
from bentoml.exceptions import NotFound

from pat_runner.model import WEEK_MINUTES
from pat_runner.model.info import ModelInfo
from pat_runner.model.keras_h5 import (
    ConvertedWeights,
    WeightsError,
    WeightsFileNotFound,
    WeightsFileUnreadable,
    read_keras_h5,
)
from pat_runner.model.model import PAT, PATConfig, build_pat
from pat_runner.settings import DEMO_MODEL_NAME

#: Bumped whenever the conversion changes what a stored model holds; a new version re-imports.
CONVERTER_VERSION = "1"
WEIGHTS_FILE = "weights.pt"
CONFIG_FILE = "config.json"
SCALER_FILE = "scaler.npz"
DEMO_SEED = 0
IMPORT_COMMAND = "python scripts/import_weights.py models/PAT-M_29k_weights.h5"

#: Cohorts of the released encoders, recognised from their file names (PAT README, "Weights Download").
_RELEASED_DATASETS = {
    "29k": "NHANES 2003-04, 2005-06, 2011-12, 2013-14 actigraphy (N=29,307)",
    "21k": "NHANES 2003-04, 2005-06, 2011-12 actigraphy (N=21,538)",
}
#: BentoML's rule for the name part of a tag (`bentoml._internal.tag.validate_tag_str`).
_MODEL_NAME = re.compile(r"[a-z0-9](?:[a-z0-9._-]{0,61}[a-z0-9])?")
_RELEASED_NAME = re.compile(r"PAT-[SML]_(\d+k)_weights\.h5$", re.IGNORECASE)


class ModelNotFound(LookupError):
    """No model with the requested tag is in the BentoML model store."""


class ScalerFileError(WeightsError):
    """A cohort scaler file is missing, unreadable or inconsistent with PAT's input length."""


@dataclass
class StoredPAT:
    """A stored PAT loaded for inference."""

    tag: str
    model: PAT
    info: ModelInfo
    scaler: tuple[np.ndarray, np.ndarray] | None


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_scaler(path: str | Path, *, length: int = WEEK_MINUTES) -> tuple[np.ndarray, np.ndarray]:
    """A cohort `StandardScaler` as `(mean, scale)` float64 vectors of `length` (one per minute of the week).

    The file is an `.npz` with `mean_`/`scale_` (sklearn's attribute names) or `mean`/`scale`, e.g.
    `np.savez("scaler.npz", mean_=scaler.mean_, scale_=scaler.scale_)`. Pickles are refused: loading one
    runs arbitrary code.
    """
    path = Path(path)
    if not path.is_file():
        raise ScalerFileError(path, "no such scaler file")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError) as exc:
        raise ScalerFileError(path, f"not a readable .npz scaler without pickled objects ({exc})") from exc
    vectors = []
    for names in (("mean_", "mean"), ("scale_", "scale")):
        key = next((name for name in names if name in arrays), None)
        if key is None:
            raise ScalerFileError(path, f"has no {' or '.join(names)} array (found: {sorted(arrays)})")
        vector = np.asarray(arrays[key], dtype=np.float64)
        if vector.shape != (length,):
            raise ScalerFileError(path, f"{key} has shape {vector.shape}, expected ({length},)")
        if not np.isfinite(vector).all():
            raise ScalerFileError(path, f"{key} contains NaN or infinite values")
        vectors.append(vector)
    mean, scale = vectors
    if (scale <= 0).any():
        raise ScalerFileError(path, "scale has values <= 0; every minute-of-week needs a positive scale")
    return mean, scale


def default_model_name(config: PATConfig, head_task: str | None) -> str:
    """`pat-s`, `pat-m`, `pat-l` for encoders; `pat-m-<task>` (`pat-m-classifier` without one) for heads."""
    base = f"pat-{config.size.lower()}"
    if not config.has_head:
        return base
    return f"{base}-{_slug(head_task) if head_task else 'classifier'}"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "classifier"


def _valid_name(name: str) -> str:
    if not _MODEL_NAME.fullmatch(name):
        raise ValueError(
            f"invalid model name {name!r}: use 1-63 lowercase letters, digits, '-', '_' or '.', starting and "
            "ending with a letter or digit, and no ':version'"
        )
    return name


def _existing_versions(name: str) -> list[bentoml.Model]:
    try:
        models = bentoml.models.list(name)
    except NotFound:
        return []
    return sorted(models, key=lambda model: model.info.creation_time, reverse=True)


def _released_dataset(filename: str) -> str | None:
    match = _RELEASED_NAME.search(filename)
    return _RELEASED_DATASETS.get(match.group(1).lower()) if match else None


def _metadata(config: PATConfig, **fields: Any) -> dict[str, Any]:
    parameters = PAT(config).parameter_count()
    metadata: dict[str, Any] = {
        "size": config.size,
        "patch_size": config.patch_size,
        "num_layers": config.num_layers,
        "num_heads": config.num_heads,
        "parameters": parameters,
        "converter_version": CONVERTER_VERSION,
        **fields,
    }
    # BentoML metadata cannot hold None; an absent key reads back as None.
    return {key: value for key, value in metadata.items() if value is not None}


def _save(
    name: str,
    *,
    config: PATConfig,
    state_dict: dict[str, torch.Tensor],
    scaler: tuple[np.ndarray, np.ndarray] | None,
    metadata: dict[str, Any],
) -> bentoml.Model:
    labels = {
        "project": "pat",
        "size": str(metadata["size"]).lower(),
        "layout": str(metadata["layout"]),
        "demo": "true" if metadata["demo"] else "false",
    }
    with bentoml.models.create(name, labels=labels, metadata=metadata) as created:
        torch.save(state_dict, created.path_of(WEIGHTS_FILE))
        Path(created.path_of(CONFIG_FILE)).write_text(json.dumps(config.to_dict(), indent=2))
        if scaler is not None:
            np.savez(created.path_of(SCALER_FILE), mean=scaler[0], scale=scaler[1])
    return bentoml.models.get(created.tag)


def import_h5(
    path: str | Path,
    *,
    name: str | None = None,
    scaler_path: str | Path | None = None,
    head_task: str | None = None,
    dataset: str | None = None,
) -> bentoml.Model:
    """Convert a Keras PAT H5 file and save it in the BentoML model store; idempotent per file content.

    `head_task` names what a fine-tuned head predicts (e.g. "depression"); `dataset` the pre-training
    cohort, recognised automatically for the released `PAT-*_29k/21k_weights.h5` files.
    """
    path = Path(path)
    converted: ConvertedWeights = read_keras_h5(path)
    source_sha256 = file_sha256(path)
    scaler = read_scaler(scaler_path) if scaler_path is not None else None
    scaler_sha256 = file_sha256(scaler_path) if scaler_path is not None else None
    task = head_task if converted.config.has_head else None
    model_name = _valid_name(name) if name else default_model_name(converted.config, task)

    for existing in _existing_versions(model_name):
        meta = existing.info.metadata
        if (
            meta.get("source_sha256") == source_sha256
            and meta.get("scaler_sha256") == scaler_sha256
            and meta.get("head_task") == task
            and meta.get("converter_version") == CONVERTER_VERSION
        ):
            return existing

    metadata = _metadata(
        converted.config,
        layout=converted.layout,
        demo=False,
        source_file=path.name,
        source_sha256=source_sha256,
        head_task=task,
        dataset=dataset or _released_dataset(path.name),
        has_scaler=scaler is not None,
        scaler_file=Path(scaler_path).name if scaler_path is not None else None,
        scaler_sha256=scaler_sha256,
    )
    return _save(
        model_name, config=converted.config, state_dict=converted.state_dict, scaler=scaler, metadata=metadata
    )


def demo_pat() -> PAT:
    """The seeded, randomly initialised PAT-S of the quick start (PyTorch's default initialisation)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(DEMO_SEED)
        return PAT(PATConfig.for_size("S")).eval()


def ensure_demo_model() -> bentoml.Model:
    """The labelled demo model (`demo=True`, NOT trained) under `pat-demo`, created on first use."""
    for existing in _existing_versions(DEMO_MODEL_NAME):
        meta = existing.info.metadata
        if meta.get("demo") is True and meta.get("converter_version") == CONVERTER_VERSION:
            return existing
    model = demo_pat()
    metadata = _metadata(
        model.config,
        layout="random_init",
        demo=True,
        seed=DEMO_SEED,
        has_scaler=False,
        dataset="none: randomly initialised, not trained",
    )
    return _save(
        DEMO_MODEL_NAME, config=model.config, state_dict=model.state_dict(), scaler=None, metadata=metadata
    )


def resolve_model(model: str | bentoml.Model | bentoml.models.BentoModel) -> bentoml.Model:
    """The stored model for a tag (`pat-m:latest`, `pat-m`), a `BentoModel` reference or a stored model."""
    if isinstance(model, bentoml.Model):
        return model
    tag = str(model.tag) if isinstance(model, bentoml.models.BentoModel) else model
    try:
        return bentoml.models.get(tag)
    except NotFound as exc:
        raise ModelNotFound(
            f"no PAT model {tag!r} in the BentoML model store ({exc}); import weights with "
            f"`{IMPORT_COMMAND}` or run `make serve` for the labelled demo model"
        ) from exc
    except ValueError as exc:
        raise ModelNotFound(f"{tag!r} is not a valid model tag: {exc}") from exc


def read_model_info(model: str | bentoml.Model | bentoml.models.BentoModel) -> ModelInfo:
    """Metadata of a stored PAT without loading its weights."""
    stored = resolve_model(model)
    return ModelInfo.from_metadata(str(stored.tag), stored.info.metadata)


def read_stored_scaler(
    model: str | bentoml.Model | bentoml.models.BentoModel,
) -> tuple[np.ndarray, np.ndarray] | None:
    """The cohort scaler imported with a stored PAT, or None when it has none."""
    stored = resolve_model(model)
    if not stored.info.metadata.get("has_scaler"):
        return None
    return read_scaler(stored.path_of(SCALER_FILE))


def load_stored_pat(
    model: str | bentoml.Model | bentoml.models.BentoModel, *, device: str | torch.device = "cpu"
) -> StoredPAT:
    """Load a stored PAT (eval mode, on `device`) with its metadata and scaler."""
    stored = resolve_model(model)
    info = ModelInfo.from_metadata(str(stored.tag), stored.info.metadata)
    weights_path = Path(stored.path_of(WEIGHTS_FILE))
    if not weights_path.is_file():
        raise WeightsFileNotFound(weights_path, f"stored model {stored.tag} has no weights file")
    try:
        config = PATConfig.from_dict(json.loads(Path(stored.path_of(CONFIG_FILE)).read_text()))
        state_dict = torch.load(weights_path, map_location="cpu", weights_only=True)
        pat = build_pat(config, state_dict, device=device)
    except (OSError, ValueError, TypeError, RuntimeError, KeyError) as exc:
        raise WeightsFileUnreadable(
            weights_path, f"stored model {stored.tag} cannot be loaded ({exc})"
        ) from exc
    return StoredPAT(
        tag=str(stored.tag),
        model=pat,
        info=info,
        scaler=read_stored_scaler(stored),
    )
