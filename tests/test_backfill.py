"""The Ray back-fill (`scripts/backfill.py`, local Ray) on a small generated cohort: its Parquet and
FHIR Bulk NDJSON outputs equal what the service's `Analyzer` returns for the same recordings, a bad
recording is reported without stopping the cohort, and a rerun skips everything already written."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.ray
pytest.importorskip("ray", reason="the back-fill extra is installed by `make test-batch`")
pq = pytest.importorskip("pyarrow.parquet")

from pat_runner.batch.cohort import bulk_resources  # noqa: E402
from pat_runner.cache.cache import ResultCache  # noqa: E402
from pat_runner.model.backends import TorchBackend  # noqa: E402
from pat_runner.model.store import demo_pat  # noqa: E402
from pat_runner.serving.pipeline import Analyzer, to_raw  # noqa: E402
from pat_runner.serving.runner import local_infer  # noqa: E402
from pat_runner.serving.schemas import AnalyzeOptions, Recording  # noqa: E402
from pat_runner.settings import Settings  # noqa: E402
from scripts.bench_backfill import cohort_rows, write_cohort  # noqa: E402
from tests.factories import model_info  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = Settings().replace(redis_url="", cache_keys="", cache_hmac_key="")


def run_cli(source: Path, out: Path, home: Path) -> dict[str, Any]:
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true", "RAY_ADDRESS": ""}
    env["PAT_MODEL_TAG"] = "pat-demo:latest"
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "backfill.py"),
            str(source),
            str(out),
            "--workers",
            "1",
            "--cpus",
            "2",
            "--batch-size",
            "4",
            "--chunk-size",
            "3",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert result.returncode in (0, 3), result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def service_analyzer(tag: str) -> Analyzer:
    backend = TorchBackend(demo_pat().eval(), "cpu")

    return Analyzer(
        model=model_info(tag=tag),
        scaler=None,
        infer=local_infer(backend),
        cache=ResultCache.from_settings(SETTINGS),
        settings=SETTINGS,
    )


def _content(resource: dict[str, Any]) -> str:
    """A resource without its random id and its reference to the (equally random) Device id."""
    return json.dumps({k: v for k, v in resource.items() if k not in ("id", "device")}, sort_keys=True)


def read_table(directory: Path) -> list[dict[str, Any]]:
    return [row for path in sorted(directory.glob("*.parquet")) for row in pq.read_table(path).to_pylist()]


def test_backfill_equals_service(model_store: Path, tmp_path: Path) -> None:
    rows = cohort_rows(4, seed=3)
    rows[3]["values"] = rows[3]["values"] + rows[3]["values"][: 7 * 1440]  # 15 days: two windows
    rows.append({**rows[0], "recording_id": "too-short", "values": rows[0]["values"][:100]})
    source = write_cohort(tmp_path / "cohort.parquet", rows)
    out = tmp_path / "out"

    report = run_cli(source, out, model_store)
    assert (report["recordings"], report["skipped"], report["failed"]) == (5, 0, 1)

    metrics = {row["recording_id"]: row for row in read_table(out / "metrics")}
    embeddings = read_table(out / "embeddings")
    lines = [
        json.loads(line)
        for path in sorted((out / "fhir").glob("*.ndjson"))
        for line in path.read_text().splitlines()
    ]
    assert {line["resourceType"] for line in lines} == {"Observation"}
    assert "InvalidInput" in metrics["too-short"]["error"]
    tag = metrics["rec-00003"]["model_tag"]
    analyzer = service_analyzer(tag)
    assert report["windows"] == len(embeddings)

    service_windows = 0
    for row in rows[:4]:
        recording_id = row["recording_id"]
        recording = Recording.model_validate_json(
            json.dumps({k: v for k, v in row.items() if k != "recording_id"})
        )
        served = asyncio.run(
            analyzer.analyze(to_raw(recording), AnalyzeOptions(), request_id=recording_id)
        ).response.model_dump(mode="json")
        mine = metrics[recording_id]
        assert mine["error"] == ""
        assert json.loads(mine["quality"]) == served["quality"]
        assert json.loads(mine["metrics"]) == served["metrics"]
        assert [*json.loads(mine["warnings"]), served["warnings"][-1]] == served["warnings"]  # + demo notice
        windows = sorted(
            (e for e in embeddings if e["recording_id"] == recording_id), key=lambda e: e["window"]
        )
        assert len(windows) == len(served["pat"]["windows"])
        service_windows += len(windows)
        for batch_window, service_window in zip(windows, served["pat"]["windows"], strict=True):
            assert batch_window["start"].isoformat().replace("+00:00", "Z") == service_window["start"]
            assert batch_window["observed_fraction"] == service_window["observed_fraction"]
            assert batch_window["probability"] is None and service_window["probability"] is None
            # Same model and inputs; only the batch composition of the forward pass differs.
            np.testing.assert_allclose(
                batch_window["embedding"], service_window["embedding"], rtol=1e-5, atol=1e-6
            )
        # Resource ids are random per Bundle (as the service's are): compare everything else.
        expected = [r for r in bulk_resources(served["fhir"]) if r["resourceType"] == "Observation"]
        assert sorted(
            map(_content, (line for line in lines if line["subject"] == expected[0]["subject"]))
        ) == (sorted(map(_content, expected)))

    assert len(embeddings) == service_windows and len(windows) > 1  # rec-00003: 15 days
    files = sorted(p.name for p in out.rglob("*") if p.is_file())
    again = run_cli(source, out, model_store)
    assert (again["recordings"], again["skipped"]) == (0, 5)
    assert sorted(p.name for p in out.rglob("*") if p.is_file()) == files
