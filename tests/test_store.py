"""Import into, and load from, a real BentoML model store in a temporary BENTOML_HOME."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import bentoml
import h5py
import numpy as np
import pytest
import torch
from bentoml._internal.configuration.containers import BentoMLContainer
from bentoml._internal.models import ModelStore

from pat_runner.model import WEEK_MINUTES
from pat_runner.model.keras_h5 import MissingTensor, WeightsError
from pat_runner.model.store import (
    CONVERTER_VERSION,
    ModelNotFound,
    ScalerFileError,
    demo_pat,
    ensure_demo_model,
    import_h5,
    load_stored_pat,
    read_model_info,
    read_scaler,
)
from pat_runner.settings import DEMO_MODEL_NAME
from scripts.quickstart_models import prepare_models

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT.parent / "shared" / "fixtures" / "pat_reference"
M_WEIGHTS = FIXTURES / "PAT-M_random_seed0.h5"
M_FINETUNED = FIXTURES / "PAT-M_finetuned_random_seed0.h5"

needs_fixtures = pytest.mark.skipif(
    not FIXTURES.is_dir(), reason=f"PAT reference fixtures not found at {FIXTURES} (shared/ checkout missing)"
)


@pytest.fixture
def store_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh BENTOML_HOME. BentoML resolves the home once per process, so in-process calls reach the
    temporary store through its provider; subprocesses get it from the environment variable."""
    home = tmp_path / "bentoml"
    (home / "models").mkdir(parents=True)
    monkeypatch.setenv("BENTOML_HOME", str(home))
    monkeypatch.setenv("BENTOML_DO_NOT_TRACK", "true")
    with BentoMLContainer.model_store.patch(ModelStore(str(home / "models"))):
        yield home


def write_scaler(path: Path, *, length: int = WEEK_MINUTES, scale: float = 2.0, **arrays: np.ndarray) -> Path:
    rng = np.random.default_rng(0)
    contents = arrays or {"mean_": rng.normal(size=length), "scale_": np.full(length, scale)}
    np.savez(path, **contents)
    return path


@needs_fixtures
def test_import_records_provenance_and_is_idempotent(store_home: Path) -> None:
    first = import_h5(M_WEIGHTS)
    second = import_h5(M_WEIGHTS)
    assert first.tag == second.tag
    assert len(bentoml.models.list("pat-m")) == 1
    assert Path(first.path).is_relative_to(store_home / "models")
    meta = first.info.metadata
    assert meta["size"] == "M"
    assert meta["layout"] == "save_weights"
    assert meta["source_file"] == M_WEIGHTS.name
    assert meta["source_sha256"] == hashlib.sha256(M_WEIGHTS.read_bytes()).hexdigest()
    assert meta["converter_version"] == CONVERTER_VERSION
    assert meta["demo"] is False and meta["has_scaler"] is False
    assert "head_task" not in meta
    assert first.info.labels["size"] == "m"


@needs_fixtures
def test_stored_model_reproduces_keras(store_home: Path) -> None:
    import_h5(M_WEIGHTS)
    stored = load_stored_pat("pat-m:latest")
    expected = np.load(FIXTURES / "PAT-M_random_seed0_reference.npz")
    with torch.inference_mode():
        embeddings = stored.model.encode(torch.from_numpy(expected["inputs"]))
    assert np.abs(embeddings.numpy() - expected["encoder_output"]).max() < 2e-4
    assert not stored.model.training
    assert stored.scaler is None
    assert stored.info.size == "M" and stored.info.parameters == 993_440
    assert stored.tag == stored.info.tag and stored.tag.startswith("pat-m:")


@needs_fixtures
def test_finetuned_import_with_task_and_scaler(store_home: Path, tmp_path: Path) -> None:
    scaler_path = write_scaler(tmp_path / "cohort.npz")
    model = import_h5(M_FINETUNED, head_task="Depression (PHQ-9 >= 10)", scaler_path=scaler_path)
    assert model.tag.name == "pat-m-depression-phq-9-10"
    stored = load_stored_pat(model)
    assert stored.info.head_task == "Depression (PHQ-9 >= 10)"
    assert stored.info.layout == "finetuned" and stored.info.has_scaler
    assert stored.scaler is not None
    mean, scale = read_scaler(scaler_path)
    np.testing.assert_array_equal(stored.scaler[0], mean)
    np.testing.assert_array_equal(stored.scaler[1], scale)
    expected = np.load(FIXTURES / "PAT-M_finetuned_random_seed0_reference.npz")
    with torch.inference_mode():
        probability = stored.model.predict_proba(torch.from_numpy(expected["inputs"]))
    assert np.abs(probability.numpy() - expected["probability"]).max() < 2e-4


@needs_fixtures
def test_default_name_of_a_finetuned_file_without_task(store_home: Path) -> None:
    assert import_h5(M_FINETUNED).tag.name == "pat-m-classifier"


@needs_fixtures
def test_a_different_scaler_is_a_new_version(store_home: Path, tmp_path: Path) -> None:
    plain = import_h5(M_WEIGHTS, name="pat-m-cohort")
    scaled = import_h5(M_WEIGHTS, name="pat-m-cohort", scaler_path=write_scaler(tmp_path / "s.npz"))
    again = import_h5(M_WEIGHTS, name="pat-m-cohort", scaler_path=tmp_path / "s.npz")
    assert plain.tag != scaled.tag
    assert scaled.tag == again.tag
    assert len(bentoml.models.list("pat-m-cohort")) == 2


@needs_fixtures
def test_bad_file_stores_nothing(store_home: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.h5"
    shutil.copyfile(M_WEIGHTS, broken)
    with h5py.File(broken, "r+") as handle:
        del handle["dense/dense/bias:0"]
    with pytest.raises(MissingTensor, match="dense/dense/bias:0"):
        import_h5(broken)
    assert bentoml.models.list() == []


@needs_fixtures
def test_invalid_name_is_rejected(store_home: Path) -> None:
    with pytest.raises(ValueError, match="invalid model name 'PAT M:v1'"):
        import_h5(M_WEIGHTS, name="PAT M:v1")


@pytest.mark.parametrize(
    ("contents", "message"),
    [
        ({"mean_": np.zeros(100), "scale_": np.ones(100)}, r"mean_ has shape \(100,\), expected \(10080,\)"),
        ({"mean": np.zeros(10_080), "scale": np.zeros(10_080)}, "scale has values <= 0"),
        ({"mean_": np.zeros(10_080)}, "has no scale_ or scale array"),
        ({"mean_": np.full(10_080, np.nan), "scale_": np.ones(10_080)}, "NaN or infinite"),
        ({"mean_": np.array([{"a": 1}], dtype=object), "scale_": np.ones(10_080)}, "without pickled objects"),
    ],
)
def test_bad_scaler_files(tmp_path: Path, contents: dict[str, np.ndarray], message: str) -> None:
    path = tmp_path / "scaler.npz"
    np.savez(path, **contents)
    with pytest.raises(ScalerFileError, match=message) as raised:
        read_scaler(path)
    assert str(path) in str(raised.value)
    assert isinstance(raised.value, WeightsError)


def test_pickled_scaler_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "scaler.pkl"
    path.write_bytes(b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00K\x01.")
    with pytest.raises(ScalerFileError, match=re.escape(str(path))):
        read_scaler(path)


def test_demo_model_is_labelled_seeded_and_idempotent(store_home: Path) -> None:
    first = ensure_demo_model()
    second = ensure_demo_model()
    assert first.tag == second.tag and first.tag.name == DEMO_MODEL_NAME
    info = read_model_info(f"{DEMO_MODEL_NAME}:latest")
    assert info.demo and info.size == "S" and info.layout == "random_init"
    stored = load_stored_pat(bentoml.models.BentoModel(f"{DEMO_MODEL_NAME}:latest"))
    reference = demo_pat().state_dict()
    for name, tensor in stored.model.state_dict().items():
        assert torch.equal(tensor, reference[name]), name


def test_missing_tag_names_the_tag_and_the_import_command(store_home: Path) -> None:
    with pytest.raises(ModelNotFound, match=r"no PAT model 'pat-m:latest'.*scripts/import_weights.py"):
        load_stored_pat("pat-m:latest")


def run_script(script: str, *args: str, home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / script), *args],
        env={**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true"},
        capture_output=True,
        text=True,
        timeout=120,
    )


@needs_fixtures
def test_import_script_prints_tag_and_reimport_is_idempotent(store_home: Path) -> None:
    first = run_script("import_weights.py", str(M_WEIGHTS), "--name", "pat-m-cli", home=store_home)
    assert first.returncode == 0, first.stderr
    second = run_script("import_weights.py", str(M_WEIGHTS), "--name", "pat-m-cli", home=store_home)
    assert second.returncode == 0, second.stderr
    tag = first.stdout.strip()
    assert tag.startswith("pat-m-cli:") and second.stdout.strip() == tag
    assert [str(model.tag) for model in bentoml.models.list("pat-m-cli")] == [tag]


def test_import_script_fails_clearly_on_a_bad_file(store_home: Path, tmp_path: Path) -> None:
    noise = tmp_path / "noise.h5"
    noise.write_bytes(b"not hdf5 at all" * 100)
    result = run_script("import_weights.py", str(noise), home=store_home)
    assert result.returncode == 2
    assert f"error: {noise}: not an HDF5 file" in result.stderr
    assert result.stdout == ""


def test_quickstart_without_weights_serves_the_labelled_demo(
    store_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tag = prepare_models(str(tmp_path))
    assert tag.startswith(f"{DEMO_MODEL_NAME}:")
    banner = capsys.readouterr().out
    assert "NOT a trained model" in banner
    assert "https://www.dropbox.com/scl/fi/hlfbni5bzsfq0pynarjcn/PAT-M_29k_weights.h5" in banner


@needs_fixtures
def test_quickstart_imports_every_h5_and_prefers_a_head(
    store_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for source in (M_WEIGHTS, M_FINETUNED):
        shutil.copyfile(source, tmp_path / source.name)
    tag = prepare_models(str(tmp_path))
    assert tag.startswith("pat-m-classifier:")
    out = capsys.readouterr().out
    assert f"imported {M_WEIGHTS.name}" in out and f"imported {M_FINETUNED.name}" in out
    assert {model.tag.name for model in bentoml.models.list()} == {"pat-m", "pat-m-classifier"}
