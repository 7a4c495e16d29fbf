"""Convert PAT's Keras-2 (`tf.keras`) H5 files into PyTorch weights, with h5py only (no TensorFlow).

Three layouts exist (docs/architecture.md, "H5 layouts"; one of each in `shared/fixtures/pat_reference/`):

- `save_weights`: an encoder saved with `Model.save_weights`, the layout of the released
  `PAT-{S,M,L}_29k_weights.h5` — top-level `dense/dense/{kernel:0,bias:0}` and
  `encoder_layer_{i}_transformer/encoder_layer_{i}_{attention/{query,key,value,attention_output},ff1,ff2,
  norm1,norm2}/…`;
- `model_save`: the same encoder saved with `Model.save`, everything under `model_weights/`;
- `finetuned`: the classifier of `Fine-tuning/PAT_finetuning.ipynb` saved with `Model.save`:
  `model_weights/encoder_model/{dense,encoder_layer_{i}_attention,…}` (no `_transformer` level), plus the
  head `model_weights/dense_128` and `model_weights/output`.

The size is inferred from the file: the patch size from the patch-embedding kernel, the number of layers
from the encoder groups, the number of heads from the query kernel. `tensor_map` is the one explicit
name/shape mapping; every tensor the file should have is checked against it, and a tensor it does not
name is an error too, so a file from another network never loads silently.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import h5py
import numpy as np
import torch

from pat_runner.model.model import PAT, PATConfig, build_pat

Layout = Literal["save_weights", "model_save", "finetuned"]

_EMBED_DIM = 96
_KEY_DIM = 96
_FF_DIM = 256
_HEAD_HIDDEN = 128


class WeightsError(Exception):
    """A PAT weights file cannot be converted.

    `path` names the file and `tensor` the tensor at fault, when one is; both are in the message.
    """

    def __init__(self, path: str | Path, message: str, *, tensor: str | None = None) -> None:
        self.path = str(path)
        self.tensor = tensor
        where = f"{self.path}: tensor {tensor!r}" if tensor else self.path
        super().__init__(f"{where}: {message}")


class WeightsFileNotFound(WeightsError, FileNotFoundError):
    """There is no file at the given path."""


class WeightsFileUnreadable(WeightsError):
    """The file is not HDF5, is truncated, or cannot be read."""


class MissingTensor(WeightsError):
    """A tensor the PAT architecture needs is not in the file."""


class UnexpectedTensor(WeightsError):
    """The file holds a tensor PAT does not have (another network, or a different head)."""


class TensorShapeMismatch(WeightsError):
    """A tensor has a shape other than the architecture inferred from the file requires."""


class InvalidTensorValues(WeightsError):
    """A tensor holds NaN or infinite values."""


@dataclass(frozen=True)
class TensorSpec:
    """One Keras tensor (path relative to the layout's weights group) and the PyTorch parameter it becomes."""

    keras_name: str
    torch_name: str
    keras_shape: tuple[int, ...]
    to_torch: Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class ConvertedWeights:
    config: PATConfig
    layout: Layout
    state_dict: dict[str, torch.Tensor]


def _same(array: np.ndarray) -> np.ndarray:
    return array


def _dense_kernel(array: np.ndarray) -> np.ndarray:
    """Keras Dense kernels are `(in, out)`; torch Linear weights are `(out, in)`."""
    return array.T


def _projection_kernel(array: np.ndarray) -> np.ndarray:
    """Keras MHA query/key/value kernel `(embed, heads, key_dim)` → Linear weight `(heads·key_dim, embed)`."""
    return array.reshape(array.shape[0], -1).T


def _projection_bias(array: np.ndarray) -> np.ndarray:
    """Keras MHA query/key/value bias `(heads, key_dim)` → `(heads·key_dim,)`, head-major like the kernel."""
    return array.reshape(-1)


def _output_kernel(array: np.ndarray) -> np.ndarray:
    """Keras MHA output kernel `(heads, key_dim, embed)` → Linear weight `(embed, heads·key_dim)`."""
    return array.reshape(-1, array.shape[-1]).T


def _encoder_prefixes(layout: Layout) -> tuple[str, Callable[[int], str]]:
    """Path of the patch-embedding layer and of block `i`'s layers (`…{part}` is appended)."""
    if layout == "finetuned":
        return "encoder_model/dense/", lambda i: f"encoder_model/encoder_layer_{i}_"
    return "dense/dense/", lambda i: f"encoder_layer_{i}_transformer/encoder_layer_{i}_"


def tensor_map(config: PATConfig, layout: Layout) -> list[TensorSpec]:
    """Every tensor of a PAT with `config` in a file of `layout`, and where it goes in `PAT.state_dict()`."""
    e, h, d, f = config.embed_dim, config.num_heads, config.key_dim, config.ff_dim
    dense, block = _encoder_prefixes(layout)
    specs = [
        TensorSpec(f"{dense}kernel:0", "patch_embedding.weight", (config.patch_size, e), _dense_kernel),
        TensorSpec(f"{dense}bias:0", "patch_embedding.bias", (e,), _same),
    ]
    for i in range(1, config.num_layers + 1):
        keras = block(i)
        torch_block = f"blocks.{i - 1}."
        for part in ("query", "key", "value"):
            specs += [
                TensorSpec(
                    f"{keras}attention/{part}/kernel:0",
                    f"{torch_block}attention.{part}.weight",
                    (e, h, d),
                    _projection_kernel,
                ),
                TensorSpec(
                    f"{keras}attention/{part}/bias:0",
                    f"{torch_block}attention.{part}.bias",
                    (h, d),
                    _projection_bias,
                ),
            ]
        specs += [
            TensorSpec(
                f"{keras}attention/attention_output/kernel:0",
                f"{torch_block}attention.output.weight",
                (h, d, e),
                _output_kernel,
            ),
            TensorSpec(
                f"{keras}attention/attention_output/bias:0",
                f"{torch_block}attention.output.bias",
                (e,),
                _same,
            ),
            TensorSpec(f"{keras}ff1/kernel:0", f"{torch_block}ff1.weight", (e, f), _dense_kernel),
            TensorSpec(f"{keras}ff1/bias:0", f"{torch_block}ff1.bias", (f,), _same),
            TensorSpec(f"{keras}ff2/kernel:0", f"{torch_block}ff2.weight", (f, e), _dense_kernel),
            TensorSpec(f"{keras}ff2/bias:0", f"{torch_block}ff2.bias", (e,), _same),
        ]
        for norm in ("norm1", "norm2"):
            specs += [
                TensorSpec(f"{keras}{norm}/gamma:0", f"{torch_block}{norm}.weight", (e,), _same),
                TensorSpec(f"{keras}{norm}/beta:0", f"{torch_block}{norm}.bias", (e,), _same),
            ]
    if config.has_head:
        hidden = config.head_hidden
        specs += [
            TensorSpec("dense_128/dense_128/kernel:0", "head.dense_128.weight", (e, hidden), _dense_kernel),
            TensorSpec("dense_128/dense_128/bias:0", "head.dense_128.bias", (hidden,), _same),
            TensorSpec("output/output/kernel:0", "head.output.weight", (hidden, 1), _dense_kernel),
            TensorSpec("output/output/bias:0", "head.output.bias", (1,), _same),
        ]
    return specs


def _dataset(path: Path, group: h5py.Group, name: str) -> h5py.Dataset:
    item = group.get(name)
    if not isinstance(item, h5py.Dataset):
        raise MissingTensor(
            path, "not found in the file (is this a PAT weights file of a known layout?)", tensor=name
        )
    return item


def _infer_config(path: Path, weights: h5py.Group, layout: Layout) -> PATConfig:
    dense, block = _encoder_prefixes(layout)
    kernel_name = f"{dense}kernel:0"
    kernel = _dataset(path, weights, kernel_name)
    if kernel.ndim != 2 or kernel.shape[1] != _EMBED_DIM:
        raise TensorShapeMismatch(
            path, f"shape {kernel.shape}, expected (patch_size, {_EMBED_DIM})", tensor=kernel_name
        )
    encoder_group = weights["encoder_model"] if layout == "finetuned" else weights
    pattern = re.compile(
        r"encoder_layer_(\d+)_attention$" if layout == "finetuned" else r"encoder_layer_(\d+)_transformer$"
    )
    indices = [int(match.group(1)) for key in encoder_group if (match := pattern.match(key))]
    num_layers = max(indices, default=1)
    query_name = f"{block(1)}attention/query/kernel:0"
    query = _dataset(path, weights, query_name)
    if query.ndim != 3:
        raise TensorShapeMismatch(
            path, f"shape {query.shape}, expected ({_EMBED_DIM}, heads, {_KEY_DIM})", tensor=query_name
        )
    return PATConfig(
        patch_size=int(kernel.shape[0]),
        num_layers=num_layers,
        num_heads=int(query.shape[1]),
        embed_dim=_EMBED_DIM,
        key_dim=_KEY_DIM,
        ff_dim=_FF_DIM,
        has_head=layout == "finetuned",
        head_hidden=_HEAD_HIDDEN,
    )


def _all_tensors(group: h5py.Group) -> set[str]:
    names: set[str] = set()

    def collect(name: str, item: h5py.HLObject) -> None:
        if isinstance(item, h5py.Dataset):
            names.add(name)

    group.visititems(collect)
    return names


def _convert(path: Path, handle: h5py.File) -> ConvertedWeights:
    # `Model.save` nests the weights under `model_weights/`; `save_weights` puts them at the root.
    nested = handle.get("model_weights")
    weights = nested if isinstance(nested, h5py.Group) else handle
    layout: Layout
    if "encoder_model" in weights:
        layout = "finetuned"
    else:
        layout = "model_save" if weights is nested else "save_weights"
    config = _infer_config(path, weights, layout)
    specs = tensor_map(config, layout)
    unexpected = sorted(_all_tensors(weights) - {spec.keras_name for spec in specs})
    if unexpected:
        listed = ", ".join(unexpected[:5]) + (
            f" and {len(unexpected) - 5} more" if len(unexpected) > 5 else ""
        )
        raise UnexpectedTensor(
            path,
            f"not part of a PAT-{config.size} {layout} file ({listed})",
            tensor=unexpected[0],
        )
    state_dict: dict[str, torch.Tensor] = {}
    for spec in specs:
        dataset = _dataset(path, weights, spec.keras_name)
        if dataset.shape != spec.keras_shape:
            raise TensorShapeMismatch(
                path, f"shape {dataset.shape}, expected {spec.keras_shape}", tensor=spec.keras_name
            )
        array = np.asarray(dataset[()], dtype=np.float32)
        if not np.isfinite(array).all():
            raise InvalidTensorValues(path, "contains NaN or infinite values", tensor=spec.keras_name)
        state_dict[spec.torch_name] = torch.from_numpy(np.ascontiguousarray(spec.to_torch(array)))
    return ConvertedWeights(config=config, layout=layout, state_dict=state_dict)


def read_keras_h5(path: str | Path) -> ConvertedWeights:
    """Read and convert a PAT H5 file of any of the three layouts; raises a `WeightsError` subclass."""
    path = Path(path)
    if not path.exists():
        raise WeightsFileNotFound(path, "no such file")
    if not path.is_file():
        raise WeightsFileUnreadable(path, "not a regular file")
    try:
        if not h5py.is_hdf5(path):
            raise WeightsFileUnreadable(path, "not an HDF5 file (expected a Keras .h5 weights file)")
        with h5py.File(path, "r") as handle:
            return _convert(path, handle)
    except OSError as exc:
        # h5py reports truncation and corrupt B-trees as OSError, at open or at the first read.
        raise WeightsFileUnreadable(
            path, f"cannot be read as HDF5, possibly truncated or corrupt ({exc})"
        ) from exc


def load_pat(path: str | Path, *, device: str | torch.device = "cpu") -> PAT:
    """Load a Keras PAT H5 file (any layout) as a PyTorch PAT in eval mode."""
    converted = read_keras_h5(path)
    return build_pat(converted.config, converted.state_dict, device=device)
