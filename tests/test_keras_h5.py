"""Keras H5 conversion: the three layouts, and every kind of bad file, made for real with h5py."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from pat_runner.model.keras_h5 import (
    InvalidTensorValues,
    MissingTensor,
    TensorShapeMismatch,
    UnexpectedTensor,
    WeightsError,
    WeightsFileNotFound,
    WeightsFileUnreadable,
    read_keras_h5,
    tensor_map,
)
from pat_runner.model.model import PAT, PATConfig

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "pat_reference"
S_WEIGHTS = FIXTURES / "PAT-S_random_seed0.h5"
QUERY_KERNEL = "encoder_layer_1_transformer/encoder_layer_1_attention/query/kernel:0"
FF2_KERNEL = "encoder_layer_1_transformer/encoder_layer_1_ff2/kernel:0"

pytestmark = pytest.mark.skipif(
    not FIXTURES.is_dir(), reason=f"PAT reference fixtures not found at {FIXTURES} (shared/ checkout missing)"
)


@pytest.fixture
def s_copy(tmp_path: Path) -> Path:
    target = tmp_path / "PAT-S_copy.h5"
    shutil.copyfile(S_WEIGHTS, target)
    return target


@pytest.mark.parametrize(
    ("name", "layout", "size", "has_head"),
    [
        ("PAT-S_random_seed0.h5", "save_weights", "S", False),
        ("PAT-M_random_seed0.h5", "save_weights", "M", False),
        ("PAT-L_random_seed0.h5", "save_weights", "L", False),
        ("PAT-S_random_seed0_fullmodel.h5", "model_save", "S", False),
        ("PAT-M_finetuned_random_seed0.h5", "finetuned", "M", True),
    ],
)
def test_layout_and_size_are_inferred(name: str, layout: str, size: str, has_head: bool) -> None:
    converted = read_keras_h5(FIXTURES / name)
    assert converted.layout == layout
    assert converted.config == PATConfig.for_size(size, has_head=has_head)
    expected_keys = set(PAT(converted.config).state_dict())
    assert set(converted.state_dict) == expected_keys


@pytest.mark.parametrize("layout", ["save_weights", "model_save", "finetuned"])
@pytest.mark.parametrize("size", ["S", "M", "L"])
def test_mapping_names_every_parameter_once(layout: str, size: str) -> None:
    config = PATConfig.for_size(size, has_head=layout == "finetuned")
    specs = tensor_map(config, layout)  # type: ignore[arg-type]
    parameters = PAT(config).state_dict()
    assert sorted(spec.torch_name for spec in specs) == sorted(parameters)
    assert len({spec.keras_name for spec in specs}) == len(specs)
    for spec in specs:
        converted = spec.to_torch(np.zeros(spec.keras_shape, dtype=np.float32))
        assert converted.shape == tuple(parameters[spec.torch_name].shape), spec.keras_name


def test_projection_kernels_keep_head_order() -> None:
    """Column h·96+d of the flattened query weight is Keras kernel[:, h, d]."""
    converted = read_keras_h5(S_WEIGHTS)
    with h5py.File(S_WEIGHTS, "r") as handle:
        kernel = handle[QUERY_KERNEL][()]
    weight = converted.state_dict["blocks.0.attention.query.weight"].numpy()
    np.testing.assert_array_equal(weight[2 * 96 + 5], kernel[:, 2, 5])


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "PAT-M_29k_weights.h5"
    with pytest.raises(WeightsFileNotFound, match=re.escape(f"{path}: no such file")) as raised:
        read_keras_h5(path)
    assert isinstance(raised.value, FileNotFoundError)
    assert raised.value.path == str(path)


def test_random_bytes_are_not_hdf5(tmp_path: Path) -> None:
    path = tmp_path / "noise.h5"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(WeightsFileUnreadable, match=re.escape(f"{path}: not an HDF5 file")):
        read_keras_h5(path)


@pytest.mark.parametrize("fraction", [0.5, 0.99])
def test_truncated_copy(tmp_path: Path, fraction: float) -> None:
    data = S_WEIGHTS.read_bytes()
    path = tmp_path / "truncated.h5"
    path.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(
        WeightsFileUnreadable, match=re.escape(f"{path}: cannot be read as HDF5, possibly truncated")
    ):
        read_keras_h5(path)


def test_directory_is_unreadable(tmp_path: Path) -> None:
    with pytest.raises(WeightsFileUnreadable, match="not a regular file"):
        read_keras_h5(tmp_path)


def test_removed_tensor(s_copy: Path) -> None:
    with h5py.File(s_copy, "r+") as handle:
        del handle[FF2_KERNEL]
    with pytest.raises(MissingTensor) as raised:
        read_keras_h5(s_copy)
    assert raised.value.tensor == FF2_KERNEL
    assert str(s_copy) in str(raised.value) and FF2_KERNEL in str(raised.value)


def test_reshaped_tensor(s_copy: Path) -> None:
    with h5py.File(s_copy, "r+") as handle:
        kernel = handle[FF2_KERNEL][()]
        del handle[FF2_KERNEL]
        handle[FF2_KERNEL] = kernel.reshape(128, 192)
    with pytest.raises(TensorShapeMismatch, match=r"shape \(128, 192\), expected \(256, 96\)") as raised:
        read_keras_h5(s_copy)
    assert raised.value.tensor == FF2_KERNEL
    assert str(s_copy) in str(raised.value)


def test_reshaped_query_kernel_is_a_shape_error(s_copy: Path) -> None:
    with h5py.File(s_copy, "r+") as handle:
        kernel = handle[QUERY_KERNEL][()]
        del handle[QUERY_KERNEL]
        handle[QUERY_KERNEL] = kernel.reshape(96, 576)
    with pytest.raises(TensorShapeMismatch, match="query/kernel:0"):
        read_keras_h5(s_copy)


def test_unexpected_tensor(s_copy: Path) -> None:
    extra = "mask_token/mask_token:0"
    with h5py.File(s_copy, "r+") as handle:
        handle[extra] = np.zeros((1, 1, 96), dtype=np.float32)
    with pytest.raises(UnexpectedTensor, match="not part of a PAT-S save_weights file") as raised:
        read_keras_h5(s_copy)
    assert raised.value.tensor == extra


def test_non_finite_values(s_copy: Path) -> None:
    bias = "dense/dense/bias:0"
    with h5py.File(s_copy, "r+") as handle:
        handle[bias][3] = np.nan
    with pytest.raises(InvalidTensorValues, match="NaN") as raised:
        read_keras_h5(s_copy)
    assert raised.value.tensor == bias


def test_hdf5_without_pat_groups(tmp_path: Path) -> None:
    path = tmp_path / "other_model.h5"
    with h5py.File(path, "w") as handle:
        handle["conv1d/conv1d/kernel:0"] = np.zeros((3, 1, 8), dtype=np.float32)
    with pytest.raises(MissingTensor, match=r"other_model.h5: tensor 'dense/dense/kernel:0': not found"):
        read_keras_h5(path)


def test_finetuned_file_without_head_tensor(tmp_path: Path) -> None:
    path = tmp_path / "finetuned.h5"
    shutil.copyfile(FIXTURES / "PAT-M_finetuned_random_seed0.h5", path)
    with h5py.File(path, "r+") as handle:
        del handle["model_weights/output/output/kernel:0"]
    with pytest.raises(MissingTensor, match="output/output/kernel:0"):
        read_keras_h5(path)


def test_every_error_is_a_weights_error() -> None:
    for error in (
        WeightsFileNotFound,
        WeightsFileUnreadable,
        MissingTensor,
        UnexpectedTensor,
        TensorShapeMismatch,
        InvalidTensorValues,
    ):
        assert issubclass(error, WeightsError)
