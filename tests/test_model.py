"""PAT in PyTorch against the outputs of the original Keras network (`shared/fixtures/pat_reference`)."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from pat_runner import load_pat
from pat_runner.model import WEEK_MINUTES
from pat_runner.model.model import (
    PAT,
    MissingHeadError,
    PATConfig,
    sinusoidal_positions,
    stepped_attention,
)

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "pat_reference"
ENCODER_TOLERANCE = 2e-4
ATTENTION_TOLERANCE = 1e-4
PROBABILITY_TOLERANCE = 2e-4

needs_fixtures = pytest.mark.skipif(
    not FIXTURES.is_dir(), reason=f"PAT reference fixtures not found at {FIXTURES} (shared/ checkout missing)"
)


def reference(name: str) -> dict[str, np.ndarray]:
    with np.load(FIXTURES / name) as archive:
        return {key: archive[key] for key in archive.files}


@needs_fixtures
@pytest.mark.parametrize("size", ["S", "M", "L"])
def test_encoder_matches_keras(size: str) -> None:
    model = load_pat(FIXTURES / f"PAT-{size}_random_seed0.h5")
    expected = reference(f"PAT-{size}_random_seed0_reference.npz")
    with torch.inference_mode():
        embeddings = model.encode(torch.from_numpy(expected["inputs"]))
        first, attention = model.encode(torch.from_numpy(expected["inputs"][:1]), return_attention=True)
    assert embeddings.shape == expected["encoder_output"].shape
    assert np.abs(embeddings.numpy() - expected["encoder_output"]).max() < ENCODER_TOLERANCE
    assert np.abs(first.numpy() - expected["encoder_output"][:1]).max() < ENCODER_TOLERANCE
    head_mean = expected["last_layer_attention_head_mean_input0"]
    assert attention.shape == (1, *head_mean.shape)
    assert np.abs(attention[0].numpy() - head_mean).max() < ATTENTION_TOLERANCE


@needs_fixtures
def test_whole_model_file_matches_keras() -> None:
    model = load_pat(FIXTURES / "PAT-S_random_seed0_fullmodel.h5")
    expected = reference("PAT-S_random_seed0_reference.npz")
    with torch.inference_mode():
        embeddings = model.encode(torch.from_numpy(expected["inputs"]))
    assert np.abs(embeddings.numpy() - expected["encoder_output"]).max() < ENCODER_TOLERANCE


@needs_fixtures
def test_finetuned_probabilities_match_keras() -> None:
    model = load_pat(FIXTURES / "PAT-M_finetuned_random_seed0.h5")
    expected = reference("PAT-M_finetuned_random_seed0_reference.npz")
    with torch.inference_mode():
        probability = model.predict_proba(torch.from_numpy(expected["inputs"]))
        from_embeddings = model.head_proba(model.encode(torch.from_numpy(expected["inputs"])))
    assert probability.shape == (3, 1)
    assert np.abs(probability.numpy() - expected["probability"]).max() < PROBABILITY_TOLERANCE
    assert torch.equal(probability, from_embeddings)


@needs_fixtures
def test_positional_table_is_the_keras_float32_table() -> None:
    """The whole-model file stores the table Keras added (a TFOpLambda constant) in its config."""
    with h5py.File(FIXTURES / "PAT-S_random_seed0_fullmodel.h5", "r") as handle:
        config = json.loads(handle.attrs["model_config"])
    add = next(layer for layer in config["config"]["layers"] if layer["name"] == "tf.__operators__.add")
    keras_table = np.asarray(add["inbound_nodes"][0][3]["y"], dtype=np.float32)
    ours = sinusoidal_positions(560, 96).numpy()
    assert ours.shape == keras_table.shape == (560, 96)
    assert np.abs(ours - keras_table).max() < 1e-6


@needs_fixtures
def test_parameter_counts_match_manifest() -> None:
    manifest = json.loads((FIXTURES / "manifest_seed0.json").read_text())
    for size, entry in manifest.items():
        model = load_pat(FIXTURES / entry["weights"])
        assert model.config.size == size
        assert model.parameter_count() == entry["params"]
        assert PAT(PATConfig.for_size(size)).parameter_count() == entry["params"]


def test_published_parameter_counts() -> None:
    counts = {size: PAT(PATConfig.for_size(size)).parameter_count() for size in "SML"}
    assert counts == {"S": 274_720, "M": 993_440, "L": 1_984_192}


def test_fast_attention_path_equals_explicit_softmax() -> None:
    torch.manual_seed(1)
    model = PAT(PATConfig.for_size("M")).eval()
    weeks = torch.randn(2, WEEK_MINUTES)
    with torch.inference_mode():
        fast = model.encode(weeks)
        explicit, attention = model.encode(weeks, return_attention=True)
    assert torch.allclose(fast, explicit, atol=1e-5)
    assert attention.shape == (2, 560, 560)
    assert torch.allclose(attention.sum(dim=-1), torch.ones(2, 560), atol=1e-5)


@pytest.mark.parametrize(
    ("batch", "heads", "length", "step_bytes"),
    [
        (1, 12, 560, 2 << 20),  # every query of a head in one step
        (2, 3, 60, 60 * 4),  # one query row per step
        (3, 4, 100, 37 * 100 * 4),  # uneven query blocks (3 steps of 34, 34, 32 rows)
        (1, 2, 1120, 2 << 20),  # PAT-L's 1,120 patches: two blocks of 560 queries
    ],
)
def test_stepped_attention_equals_sdpa(batch: int, heads: int, length: int, step_bytes: int) -> None:
    generator = torch.Generator().manual_seed(batch * heads + length)
    # projections as the Linear layers give them: (batch, length, heads·96), head-major columns
    q, k, v = (torch.randn(batch, length, heads * 96, generator=generator) for _ in range(3))
    per_head = [t.view(batch, length, heads, 96).transpose(1, 2) for t in (q, k, v)]
    expected = torch.nn.functional.scaled_dot_product_attention(*per_head)
    stepped = stepped_attention(q, k, v, heads, step_bytes)
    assert stepped.shape == (batch, length, heads * 96)
    merged = expected.transpose(1, 2).reshape(batch, length, heads * 96)
    torch.testing.assert_close(stepped, merged, atol=2e-6, rtol=1e-5)


def test_a_model_with_stepped_attention_encodes_as_the_reference() -> None:
    torch.manual_seed(2)
    model = PAT(PATConfig.for_size("L", has_head=True)).eval()
    weeks = torch.randn(2, WEEK_MINUTES)
    with torch.inference_mode():
        reference_patches = model.encode(weeks)
        model.use_stepped_attention(1 << 20)
        stepped = model.encode(weeks)
        _, attention = model.encode(weeks, return_attention=True)
        model.use_stepped_attention(None)
        _, reference_attention = model.encode(weeks, return_attention=True)
    torch.testing.assert_close(stepped, reference_patches, atol=1e-5, rtol=1e-5)
    # the map is still the explicit softmax of the last block (its input differs by rounding only)
    torch.testing.assert_close(attention, reference_attention, atol=1e-7, rtol=1e-5)
    assert all(block.attention.step_bytes is None for block in model.blocks)


def test_any_multiple_of_the_patch_size_works() -> None:
    model = PAT(PATConfig.for_size("L")).eval()
    with torch.inference_mode():
        one_day = model.encode(torch.zeros(3, 1440))
        two_weeks = model.encode(torch.zeros(1, 2 * WEEK_MINUTES))
    assert one_day.shape == (3, 160, 96)
    assert two_weeks.shape == (1, 2240, 96)


@pytest.mark.parametrize("length", [10_081, 17, 0])
def test_other_lengths_are_a_clear_value_error(length: int) -> None:
    model = PAT(PATConfig.for_size("S")).eval()
    with pytest.raises(
        ValueError, match=f"input length {length} is not a positive multiple of the patch size 18"
    ):
        model.encode(torch.zeros(1, length))


def test_input_must_be_batch_by_minutes() -> None:
    model = PAT(PATConfig.for_size("S")).eval()
    with pytest.raises(ValueError, match=r"\(batch, minutes\)"):
        model.encode(torch.zeros(WEEK_MINUTES))


@needs_fixtures
def test_probability_from_an_encoder_only_file_is_a_clear_error() -> None:
    model = load_pat(FIXTURES / "PAT-S_random_seed0.h5")
    assert not model.training
    with pytest.raises(MissingHeadError, match="no fine-tuned classifier head"):
        model.predict_proba(torch.zeros(1, WEEK_MINUTES))


def test_unknown_size_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown PAT size 'XL'"):
        PATConfig.for_size("XL")
