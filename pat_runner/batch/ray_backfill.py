"""Cohort back-fill on Ray Data: preprocessing and metrics in Ray tasks, PAT in an actor pool
(`map_batches` with one actor per CPU core or GPU), outputs written by the driver in chunks.

Output directory layout (all chunk files share a chunk id; a chunk's `metrics/` file is written last and
marks its recordings done, so a rerun skips them and drops any half-written chunk):

    embeddings/<chunk>.parquet   one row per week window: recording_id, window, start, end,
                                 observed_fraction, embedding (96 floats), probability, model_tag
    metrics/<chunk>.parquet      one row per recording: recording_id, error, quality, metrics,
                                 warnings (JSON strings, exactly the service's), model_tag
    fhir/<Type>.<chunk>.ndjson   FHIR Bulk Data NDJSON, one resource per line (Observation, Device,
                                 RiskAssessment), as `$export` writes them
"""

from __future__ import annotations

import json
import os
import uuid
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pat_runner.actigraphy.uploads import read_upload
from pat_runner.batch.cohort import (
    REQUIRED_COLUMNS,
    ModelContext,
    PatEncoder,
    embedding_rows,
    fhir_resources,
    metrics_row,
    prepare,
)
from pat_runner.settings import Settings

SUBDIRS = ("embeddings", "metrics", "fhir")


@dataclass(frozen=True)
class BackfillReport:
    recordings: int
    skipped: int
    failed: int
    windows: int
    seconds: float


def done_recordings(out: Path) -> set[str]:
    """Recording ids of every complete chunk; half-written chunks (no metrics file) are removed."""
    complete = {path.stem for path in (out / "metrics").glob("*.parquet")}
    for path in [*(out / "embeddings").glob("*.parquet"), *(out / "fhir").glob("*.ndjson")]:
        if path.name.split(".")[-2] not in complete:
            path.unlink()
    for path in (out / "metrics").glob("*.tmp"):
        path.unlink()
    done: set[str] = set()
    for path in (out / "metrics").glob("*.parquet"):
        done.update(pq.read_table(path, columns=["recording_id"]).column(0).to_pylist())
    return done


def _atomic_write(path: Path, write: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def write_chunk(out: Path, rows: list[dict[str, Any]], context: ModelContext) -> int:
    """Write one chunk of encoded recordings; returns the number of week windows written."""
    chunk = uuid.uuid4().hex
    embeddings = [e for row in rows for e in embedding_rows(row, context)]
    if embeddings:
        table = pa.Table.from_pylist(embeddings)
        _atomic_write(out / "embeddings" / f"{chunk}.parquet", lambda p: pq.write_table(table, p))
    by_type: dict[str, list[str]] = defaultdict(list)
    for row in rows:
        for resource in fhir_resources(row, context):
            by_type[resource["resourceType"]].append(json.dumps(resource, separators=(",", ":")))
    for resource_type, lines in by_type.items():
        text = "\n".join(lines) + "\n"
        _atomic_write(out / "fhir" / f"{resource_type}.{chunk}.ndjson", lambda p, t=text: p.write_text(t))
    metrics = pa.Table.from_pylist([metrics_row(row, context) for row in rows])
    _atomic_write(out / "metrics" / f"{chunk}.parquet", lambda p: pq.write_table(metrics, p))
    return len(embeddings)


def _rows(batch: dict[str, np.ndarray]) -> Iterable[dict[str, Any]]:
    keys = list(batch)
    for i in range(len(batch[keys[0]])):
        yield {key: batch[key][i] for key in keys}


def read_device_file(row: dict[str, Any], *, timezone: str, settings: Settings) -> dict[str, Any]:
    """A directory entry → an input row (recording id = file name without extension)."""
    path = Path(row["path"])
    # The service's upload dispatch: every device format it accepts, with the same limits.
    raw = read_upload(
        path,
        path.name,
        timezone=timezone,
        recording_start="",
        settings=settings,
        max_epochs=settings.max_recording_minutes * 60,
    )
    return {
        "recording_id": path.stem,
        "start": raw.start.isoformat(),
        "timezone": raw.timezone,
        "epoch_seconds": raw.epoch_seconds,
        "values": [None if v != v else float(v) for v in raw.values],
        "unit": raw.unit,
        "subject": "",
        "device": json.dumps(raw.device) if raw.device else "",
    }


def run_backfill(
    source: Path,
    out: Path,
    *,
    model_tag: str,
    settings: Settings,
    workers: int = 1,
    batch_size: int = 8,
    chunk_size: int = 64,
    device: str = "cpu",
    timezone: str = "UTC",
    progress: bool = True,
) -> BackfillReport:
    """Back-fill `source` (a Parquet file or directory with `cohort.REQUIRED_COLUMNS`, or a directory of
    device files) into `out`. Ray must be initialised (`ray.init()`); `workers` PAT actors run, each
    with one CPU core (or one GPU for `device="cuda"`)."""
    import time

    import ray
    from tqdm import tqdm

    started = time.perf_counter()
    gpu = device.startswith("cuda")
    cpus = ray.cluster_resources().get("CPU", 0)
    if not gpu and cpus < workers + 1:
        # Each CPU actor holds a core for good; preprocessing tasks would wait forever for one.
        raise ValueError(
            f"{workers} PAT workers need at least {workers + 1} Ray CPUs, the cluster has {cpus:g}"
        )
    for name in SUBDIRS:
        (out / name).mkdir(parents=True, exist_ok=True)
    done = done_recordings(out)
    context = ModelContext.load(model_tag)

    files = sorted(p for p in source.iterdir() if p.is_file()) if source.is_dir() else []
    if files and not any(p.suffix == ".parquet" for p in files):
        dataset = ray.data.from_items([{"path": str(p)} for p in files if p.stem not in done]).map(
            read_device_file, fn_kwargs={"timezone": timezone, "settings": settings}
        )
        todo = len(files) - len(done & {p.stem for p in files})
    else:
        dataset = ray.data.read_parquet(str(source))
        missing = set(REQUIRED_COLUMNS) - set(dataset.schema().names)
        if missing:
            raise ValueError(f"{source}: missing columns {sorted(missing)} (see docs/backfill.md)")
        dataset = dataset.filter(lambda row: row["recording_id"] not in done)
        todo = dataset.count()
    skipped = len(done)

    ray.data.DataContext.get_current().enable_progress_bars = False
    # SPREAD spreads the CPU-bound preprocessing over the cluster. The actors' explicit DEFAULT strategy
    # makes the two steps' remote args differ, which keeps Ray Data from fusing preprocessing into the
    # PAT actors: it runs in tasks of its own, in parallel with inference.
    prepared = dataset.map(
        prepare, fn_kwargs={"context": context, "settings": settings}, scheduling_strategy="SPREAD"
    )
    encoded = prepared.map_batches(
        PatEncoder,
        fn_constructor_kwargs={
            "tag": model_tag,
            "device": device,
            "torch_threads": 1,
            "malloc_trim_threshold_mb": settings.malloc_trim_threshold_mb,
        },
        batch_size=batch_size,
        concurrency=workers,
        num_cpus=0 if gpu else 1,
        num_gpus=1 if gpu else 0,
        scheduling_strategy="DEFAULT",
        batch_format="numpy",
    )
    recordings = failed = windows = 0
    with tqdm(total=todo, unit="rec", disable=not progress) as bar:
        for batch in encoded.iter_batches(batch_size=chunk_size, batch_format="numpy"):
            rows = list(_rows(batch))
            windows += write_chunk(out, rows, context)
            recordings += len(rows)
            failed += sum(1 for row in rows if row["error"])
            bar.update(len(rows))
    return BackfillReport(
        recordings=recordings,
        skipped=skipped,
        failed=failed,
        windows=windows,
        seconds=time.perf_counter() - started,
    )
