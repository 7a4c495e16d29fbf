"""The Keras rebuild of the original PAT (`scripts/keras_reference.py`, the benchmark's baseline) loads the
reference fixtures and gives the outputs the original Keras code gave. Needs the `bench` extra
(tensorflow + tf-keras), which `make test` does not install: skipped there, run by `make bench-keras`."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("tf_keras")

from scripts import keras_reference  # after the skips: it imports tensorflow

FIXTURES = keras_reference.FIXTURES
# The same Keras code on the same weights; only kernel choices (oneDNN version, CPU) can move the float32
# result, by a few ulps.
ATOL = 1e-5

pytestmark = pytest.mark.skipif(
    not FIXTURES.is_dir(), reason=f"PAT reference fixtures not found at {FIXTURES} (shared/ checkout missing)"
)


def test_pat_s_encoder_reproduces_the_keras_reference() -> None:
    reference = np.load(FIXTURES / "PAT-S_random_seed0_reference.npz")
    encoder = keras_reference.load_encoder("S", FIXTURES / "PAT-S_random_seed0.h5")
    manifest = json.loads((FIXTURES / "manifest_seed0.json").read_text())
    assert encoder.count_params() == manifest["S"]["params"]

    embeddings, scores = encoder(reference["inputs"], training=False)
    np.testing.assert_allclose(embeddings.numpy(), reference["encoder_output"], rtol=0, atol=ATOL)
    head_mean = scores[0].numpy().mean(axis=0)
    np.testing.assert_allclose(
        head_mean, reference["last_layer_attention_head_mean_input0"], rtol=0, atol=ATOL
    )


def test_embeddings_only_view_is_the_same_network() -> None:
    """What the benchmark times: the encoder's layers with only the embeddings as output."""
    reference = np.load(FIXTURES / "PAT-S_random_seed0_reference.npz")
    encoder = keras_reference.load_encoder("S", FIXTURES / "PAT-S_random_seed0.h5")
    embeddings = keras_reference.embeddings_only(encoder)(reference["inputs"], training=False)
    np.testing.assert_allclose(embeddings.numpy(), reference["encoder_output"], rtol=0, atol=ATOL)


def test_finetuned_classifier_reproduces_the_keras_reference() -> None:
    reference = np.load(FIXTURES / "PAT-M_finetuned_random_seed0_reference.npz")
    classifier = keras_reference.load_classifier("M", FIXTURES / "PAT-M_finetuned_random_seed0.h5")
    probability = classifier(reference["inputs"], training=False).numpy()
    np.testing.assert_allclose(probability, reference["probability"], rtol=0, atol=ATOL)


def test_weights_of_another_size_do_not_load() -> None:
    """load_weights matches by structure: PAT-M weights must not silently fill a PAT-S."""
    with pytest.raises(ValueError):
        keras_reference.load_encoder("S", FIXTURES / "PAT-M_random_seed0.h5")
