"""The `attention` output: the explicit-attention path against the fused fast path, and through
`Analyzer` with the demo PAT run locally."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pat_runner.model import WEEK_MINUTES
from pat_runner.model.backends import TorchBackend
from pat_runner.model.store import StoredPAT
from pat_runner.serving.pipeline import ModelOutput, minute_attention, to_raw
from pat_runner.serving.runner import local_infer, run_attention, run_model
from pat_runner.serving.schemas import AnalyzeOptions
from tests.factories import recording
from tests.test_pipeline import analyzer_with, as_recording, stored  # noqa: F401  (fixture)


def windows(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, WEEK_MINUTES)).astype(np.float32)


def test_attention_path_gives_the_fast_paths_embeddings(stored: StoredPAT) -> None:  # noqa: F811
    x = windows(3)
    fast = run_model(TorchBackend(stored.model, "cpu"), x, per_patch=True)
    explicit = run_attention(stored, x, "cpu")
    assert "attention" not in fast.dtype.names
    np.testing.assert_allclose(explicit["patches"], fast["patches"], atol=2e-5, rtol=0)
    np.testing.assert_allclose(explicit["embedding"], fast["embedding"], atol=2e-5, rtol=0)
    received = explicit["attention"]
    assert received.shape == (3, WEEK_MINUTES // stored.model.config.patch_size)
    np.testing.assert_allclose(received.sum(axis=1), 1.0, atol=1e-4)
    assert (received >= 0).all()


def test_received_attention_is_the_column_mean_of_the_head_averaged_map(stored: StoredPAT) -> None:  # noqa: F811
    x = windows(1, seed=4)
    with torch.inference_mode():
        _, weights = stored.model.encode(torch.from_numpy(x), return_attention=True)
    expected = weights[0].mean(dim=0).numpy()
    np.testing.assert_allclose(run_attention(stored, x, "cpu")["attention"][0], expected, atol=1e-6)


def test_minute_attention_spreads_each_patch_over_its_minutes() -> None:
    received = np.array([0.5, 0.25, 0.25] + [0.0] * 557, dtype=np.float32)
    minutes = np.array(minute_attention(received))
    assert minutes.shape == (WEEK_MINUTES,)
    np.testing.assert_allclose(minutes[:18], 0.5 / 18)
    np.testing.assert_allclose(minutes[18:36], 0.25 / 18)
    assert minutes.sum() == pytest.approx(1.0)


async def test_analyzer_batches_attention_windows_and_keeps_embeddings(stored: StoredPAT) -> None:  # noqa: F811
    calls: dict[str, list[int]] = {"embedding": [], "attention": []}
    model = local_infer(TorchBackend(stored.model, "cpu"), stored)

    async def infer(x: np.ndarray, output: ModelOutput) -> np.ndarray:
        calls[output].append(len(x))
        return await model(x, output)

    analyzer = analyzer_with(stored, infer)
    raw = to_raw(as_recording(recording(5, minutes=2 * WEEK_MINUTES)))
    plain = (await analyzer.analyze(raw, AnalyzeOptions(outputs=["pat"]), request_id="a")).response
    with_attention = (
        await analyzer.analyze(raw, AnalyzeOptions(outputs=["attention"]), request_id="b")
    ).response
    assert calls == {"embedding": [2], "attention": [2]}
    assert with_attention.metrics is None and with_attention.fhir is None
    for fast, explained in zip(plain.pat.windows, with_attention.pat.windows, strict=True):
        assert fast.attention == []
        assert len(explained.attention) == WEEK_MINUTES
        assert sum(explained.attention) == pytest.approx(1.0, abs=1e-4)
        np.testing.assert_allclose(explained.embedding, fast.embedding, atol=2e-5)
