"""PAT model service: the Pretrained Actigraphy Transformer, its pre- and post-processing,
served by BentoML."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pat_runner.model.keras_h5 import load_pat

__all__ = ["__version__", "load_pat"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # Imported on first use so that light modules (settings, errors) do not pull in torch and h5py.
    if name == "load_pat":
        from pat_runner.model.keras_h5 import load_pat

        return load_pat
    raise AttributeError(f"module 'pat_runner' has no attribute {name!r}")
