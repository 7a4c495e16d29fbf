"""Accuracy gate of every inference backend available here, on the Keras reference fixtures and real
weeks, and the start-up choice (`select_backend`) that serves only backends passing it."""

from __future__ import annotations

import copy
import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from pat_runner import load_pat
from pat_runner.actigraphy.preprocess import preprocess
from pat_runner.actigraphy.readers import read_recording_file
from pat_runner.model import WEEK_MINUTES
from pat_runner.model.backends import (
    ATTENTION_STEP_BYTES,
    COSINE_GATE,
    PROBABILITY_GATE,
    AccuracyGateFailed,
    BackendUnavailable,
    ChunkedBackend,
    Outputs,
    TorchBackend,
    accuracy_gate,
    build_backend,
    calibration_windows,
    candidates,
    export_onnx,
    onnx_path,
    per_window_cosine,
    select_backend,
)
from pat_runner.model.model import PAT
from pat_runner.serving.runner import run_model, worker_threads
from pat_runner.settings import Settings

SHARED = Path(__file__).resolve().parents[2] / "shared"
FIXTURES = SHARED / "fixtures" / "pat_reference"
ACTIGRAPHY = SHARED / "data" / "actigraphy"
KERAS_TOLERANCE = 2e-4
AVAILABLE = candidates("cpu")
MODELS = {
    "S": ("PAT-S_random_seed0.h5", "PAT-S_random_seed0_reference.npz"),
    "M-head": ("PAT-M_finetuned_random_seed0.h5", "PAT-M_finetuned_random_seed0_reference.npz"),
    "L": ("PAT-L_random_seed0.h5", "PAT-L_random_seed0_reference.npz"),
}

pytestmark = pytest.mark.skipif(
    not (FIXTURES.is_dir() and ACTIGRAPHY.is_dir()), reason=f"shared fixtures/data not found under {SHARED}"
)


def reference(name: str) -> dict[str, np.ndarray]:
    with np.load(FIXTURES / name) as archive:
        return {key: archive[key] for key in archive.files}


@pytest.fixture(scope="module")
def real_weeks() -> np.ndarray:
    """Real minute counts as the service standardizes them: the five NHANES participant-weeks
    (z-scored per week) and the one-week ActiGraph wrist recording through the real preprocessing."""
    table = np.loadtxt(ACTIGRAPHY / "nhanes_2003_2004_unidata.csv", delimiter=",", skiprows=1)
    counts = table[:, 4].reshape(-1, WEEK_MINUTES)
    nhanes = (counts - counts.mean(1, keepdims=True)) / counts.std(1, keepdims=True)
    path = ACTIGRAPHY / "TAS1D47140221_2018-11-30_60sec.csv"
    settings = Settings()
    raw = read_recording_file(
        path.read_bytes(),
        path.name,
        timezone="UTC",
        max_bytes=settings.max_upload_bytes,
        max_minutes=settings.max_recording_minutes,
    )
    wrist = preprocess(raw, settings=settings).windows
    return np.concatenate([nhanes, wrist]).astype(np.float32)


@pytest.fixture(scope="module")
def models() -> dict[str, PAT]:
    return {key: load_pat(FIXTURES / h5) for key, (h5, _) in MODELS.items()}


@pytest.fixture(scope="module")
def fp32_outputs(models: dict[str, PAT], real_weeks: np.ndarray) -> dict[str, tuple[np.ndarray, Outputs]]:
    """Per model: the gate's windows (the fixture inputs and the real weeks) and the fp32 reference."""
    result = {}
    for key, model in models.items():
        windows = np.concatenate([reference(MODELS[key][1])["inputs"], real_weeks])
        result[key] = (windows, TorchBackend(model, "cpu").run(windows))
    return result


@pytest.mark.parametrize("backend_name", AVAILABLE)
@pytest.mark.parametrize("model_key", list(MODELS))
def test_backend_passes_the_accuracy_gate(
    backend_name: str,
    model_key: str,
    models: dict[str, PAT],
    fp32_outputs: dict[str, tuple[np.ndarray, Outputs]],
    tmp_path: Path,
) -> None:
    model = models[model_key]
    windows, fp32 = fp32_outputs[model_key]
    backend = build_backend(backend_name, model, "cpu", cache_dir=tmp_path, threads=1)
    outputs = backend.run(windows)
    assert outputs[0].shape == fp32[0].shape and outputs[0].dtype == np.float32
    gate = accuracy_gate(fp32, outputs)
    assert gate.min_cosine >= COSINE_GATE, gate
    if model.config.has_head:
        assert outputs[1] is not None and outputs[1].shape == (len(windows),)
        assert gate.max_probability_diff is not None and gate.max_probability_diff <= PROBABILITY_GATE
    else:
        assert outputs[1] is None and gate.max_probability_diff is None
    assert gate.passed


@pytest.mark.skipif("torch-bf16" not in AVAILABLE, reason="no native bf16 on this CPU")
@pytest.mark.parametrize("model_key", list(MODELS))
def test_both_bf16_attention_paths_pass_the_gate(
    model_key: str, models: dict[str, PAT], fp32_outputs: dict[str, tuple[np.ndarray, Outputs]]
) -> None:
    """torch-bf16 serves whichever attention path ran faster at start-up, so both must pass the gate."""
    model = models[model_key]
    windows, fp32 = fp32_outputs[model_key]
    stepped_model = copy.deepcopy(model)
    stepped_model.use_stepped_attention(ATTENTION_STEP_BYTES)
    for backend in (TorchBackend(model, "cpu", bf16=True), TorchBackend(stepped_model, "cpu", bf16=True)):
        gate = accuracy_gate(fp32, backend.run(windows))
        assert gate.passed, (backend.attention, gate)


@pytest.mark.skipif("torch-bf16" not in AVAILABLE, reason="no native bf16 on this CPU")
def test_torch_bf16_serves_the_faster_attention_path(models: dict[str, PAT], tmp_path: Path) -> None:
    model = models["S"]
    served, choice = select_backend(
        model, "torch-bf16", "cpu", cache_dir=tmp_path, threads=1, bench_seconds=0.2
    )
    entry = choice.measurements["torch-bf16"]
    speeds = entry["attention_weeks_per_s"]
    assert set(speeds) == {"sdpa", "stepped"} and all(speed > 0 for speed in speeds.values())
    assert entry["attention"] == max(speeds, key=speeds.__getitem__)
    assert isinstance(served, ChunkedBackend) and isinstance(served.backend, TorchBackend)
    assert served.backend.attention == entry["attention"]
    # the stepped path runs on a copy: the fp32 reference keeps SDPA
    assert all(block.attention.step_bytes is None for block in model.blocks)


@pytest.mark.skipif("onnxruntime" not in AVAILABLE, reason="onnxruntime not installed")
@pytest.mark.parametrize("model_key", list(MODELS))
def test_onnxruntime_matches_keras(model_key: str, models: dict[str, PAT], tmp_path: Path) -> None:
    """The exported graph reproduces the original Keras outputs as closely as the torch port does."""
    expected = reference(MODELS[model_key][1])
    patches, probability = build_backend(
        "onnxruntime", models[model_key], "cpu", cache_dir=tmp_path, threads=1
    ).run(expected["inputs"])
    if "encoder_output" in expected:
        assert np.abs(patches - expected["encoder_output"]).max() < KERAS_TOLERANCE
    else:
        assert probability is not None
        assert np.abs(probability - expected["probability"][:, 0]).max() < KERAS_TOLERANCE


@pytest.mark.skipif("onnxruntime" not in AVAILABLE, reason="onnxruntime not installed")
def test_onnx_export_is_cached_per_weights(models: dict[str, PAT], tmp_path: Path) -> None:
    model = models["S"]
    path = export_onnx(model, tmp_path)
    modified = path.stat().st_mtime_ns
    assert export_onnx(model, tmp_path) == path and path.stat().st_mtime_ns == modified
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
    changed = load_pat(FIXTURES / MODELS["S"][0])
    with torch.no_grad():
        changed.patch_embedding.bias.add_(1.0)
    assert onnx_path(changed, tmp_path) != path


@pytest.mark.skipif("onnxruntime" not in AVAILABLE, reason="onnxruntime not installed")
@pytest.mark.parametrize("spin_wait", [False, True])
def test_onnxruntime_spin_wait_is_the_setting(
    spin_wait: bool, models: dict[str, PAT], tmp_path: Path
) -> None:
    """`spin_wait` (`PAT_ORT_SPIN_WAIT`, off by default) reaches the session: off, idle threads sleep."""
    assert Settings.model_fields["ort_spin_wait"].default is False
    backend = build_backend(
        "onnxruntime", models["S"], "cpu", cache_dir=tmp_path, threads=2, spin_wait=spin_wait
    )
    options = backend.session.get_session_options()  # type: ignore[attr-defined]
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == str(int(spin_wait))


def test_gate_rejects_a_perturbed_backend(models: dict[str, PAT]) -> None:
    """The gate is not vacuous: bf16-rounded weights of the head model fail it."""
    model = models["M-head"]
    windows = reference(MODELS["M-head"][1])["inputs"]
    fp32 = TorchBackend(model, "cpu").run(windows)
    rounded = load_pat(FIXTURES / MODELS["M-head"][0])
    with torch.no_grad():
        for parameter in rounded.parameters():
            parameter.copy_(parameter.to(torch.bfloat16).float() + 0.01 * torch.randn_like(parameter))
    gate = accuracy_gate(fp32, TorchBackend(rounded, "cpu").run(windows))
    assert not gate.passed
    assert per_window_cosine(fp32[0], fp32[0]).min() > 1 - 1e-12


def test_auto_serves_the_fastest_backend_that_passes(models: dict[str, PAT], tmp_path: Path) -> None:
    backend, choice = select_backend(
        models["M-head"], "auto", "cpu", cache_dir=tmp_path, threads=1, bench_seconds=0.05
    )
    assert choice.requested == "auto" and backend.name == choice.backend
    assert set(choice.measurements) == set(AVAILABLE)
    passed = {name: m for name, m in choice.measurements.items() if m.get("passed_gate")}
    assert "torch" in passed
    score = {name: np.sqrt(m["weeks_per_s"]["1"] * m["weeks_per_s"]["4"]) for name, m in passed.items()}
    assert choice.backend == max(score, key=score.get)
    records = run_model(backend, np.zeros((2, WEEK_MINUTES), np.float32))
    assert records["backend"].tolist() == [choice.backend.encode()] * 2
    assert np.isfinite(records["probability"]).all()


def test_the_choice_and_its_figures_are_in_the_log_line(
    models: dict[str, PAT], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The model worker's lines go through BentoML's text formatter, which drops `extra` fields, so an
    operator reads the choice and the start-up figures in the message itself."""
    with caplog.at_level(logging.INFO, logger="pat_runner.model.backends"):
        _, choice = select_backend(
            models["S"], "torch", "cpu", cache_dir=tmp_path, threads=1, bench_seconds=0.05
        )
    [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("PAT backend chosen")]
    assert line.startswith("PAT backend chosen: torch (requested torch, device cpu, chunk ")
    figures = json.loads(line.split("start-up measurements: ", 1)[1])
    assert figures == json.loads(json.dumps(choice.measurements))
    assert set(figures["torch"]["weeks_per_s"]) == {"1", "4"} and figures["torch"]["passed_gate"]


def test_explicit_backend_is_gated_and_unavailable_ones_refused(
    models: dict[str, PAT], tmp_path: Path
) -> None:
    backend, choice = select_backend(
        models["S"], "torch", "cpu", cache_dir=tmp_path, threads=1, bench_seconds=0.05
    )
    assert backend.name == choice.backend == "torch" and choice.measurements["torch"]["passed_gate"]
    # On a CPU even an explicit backend is timed, to size its chunks: the fastest batch size measured.
    throughput = choice.measurements["torch"]["weeks_per_s"]
    assert choice.chunk == int(max(throughput, key=throughput.get))
    assert isinstance(backend, ChunkedBackend) and backend.chunk == choice.chunk
    with pytest.raises(BackendUnavailable):
        select_backend(models["S"], "tensorrt", "cpu", cache_dir=tmp_path, threads=1, bench_seconds=0.05)
    with pytest.raises(ValueError, match="unknown backend"):
        select_backend(models["S"], "tflite", "cpu", cache_dir=tmp_path, threads=1, bench_seconds=0.05)


def test_gate_failure_stops_an_explicit_backend(models: dict[str, PAT], tmp_path: Path) -> None:
    """A head that amplifies reduced-precision noise is refused rather than served silently."""
    if "torch-bf16" not in AVAILABLE:
        pytest.skip("no native bf16 on this CPU")
    model = load_pat(FIXTURES / MODELS["M-head"][0])
    with torch.no_grad():
        # A steep head centred on the calibration weeks (probabilities near 0.5, where the sigmoid is
        # steepest) turns bf16's encoder noise into probability differences far beyond the gate.
        model.head.output.weight.mul_(30)
        hidden = torch.relu(
            model.head.dense_128(model.encode(torch.from_numpy(calibration_windows())).mean(1))
        )
        model.head.output.bias.copy_(-(hidden @ model.head.output.weight.T).mean(0))
    with pytest.raises(AccuracyGateFailed, match="accuracy gate"):
        select_backend(model, "torch-bf16", "cpu", cache_dir=tmp_path, threads=1, bench_seconds=0.05)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only answer of the GPU paths")
def test_gpu_backends_are_refused_without_a_gpu(models: dict[str, PAT], tmp_path: Path) -> None:
    """Without CUDA (and without onnxruntime-gpu) only the fp32 reference is a candidate on `cuda`,
    and the GPU execution providers are refused with the reason instead of silently running on CPU."""
    assert candidates("cuda") == ["torch"]
    for name in ("onnxruntime", "tensorrt", "torch-bf16"):
        with pytest.raises(BackendUnavailable):
            build_backend(name, models["S"], "cuda", cache_dir=tmp_path, threads=1)


def test_a_chunked_backend_gives_the_outputs_of_one_forward_pass(models: dict[str, PAT]) -> None:
    windows = np.concatenate([calibration_windows(), calibration_windows(seed=1)[:3]])
    for name in ("S", "M-head"):
        whole = TorchBackend(models[name], "cpu")
        patches, probability = ChunkedBackend(whole, 3).run(windows)
        reference = whole.run(windows)
        assert patches.shape == reference[0].shape
        np.testing.assert_allclose(patches, reference[0], rtol=1e-5, atol=1e-5)
        if reference[1] is None:
            assert probability is None
        else:
            assert probability is not None
            np.testing.assert_allclose(probability, reference[1], rtol=1e-5, atol=1e-6)


def test_model_workers_share_the_cpus_unless_threads_are_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    assert worker_threads(0, 1) == 8
    assert worker_threads(0, 2) == 4
    assert worker_threads(0, 16) == 1
    assert worker_threads(3, 2) == 3
