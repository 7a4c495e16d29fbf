"""Back-fill a cohort with the service's own pipeline on Ray: embeddings, metrics and quality to
Parquet, FHIR resources to Bulk Data NDJSON. Resumable: rerun the same command after an interruption.

    python scripts/backfill.py cohort.parquet out/ [--model pat-m:latest] [--workers 4]
    python scripts/backfill.py recordings_dir/ out/ --timezone America/New_York   # device files
    RAY_ADDRESS=ray://head:10001 python scripts/backfill.py s3://bucket/cohort/ /shared/out --workers 16

Without RAY_ADDRESS a local Ray instance starts on this machine (`--cpus` caps it). See docs/backfill.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pat_runner.batch.ray_backfill import run_backfill  # noqa: E402
from pat_runner.settings import Settings  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="Parquet file/directory, or a directory of device files")
    parser.add_argument("out", type=Path, help="output directory (created; reused to resume)")
    parser.add_argument("--model", help="model tag (default: PAT_MODEL_TAG)")
    parser.add_argument("--workers", type=int, default=1, help="PAT actors: one per CPU core or GPU")
    parser.add_argument("--batch-size", type=int, default=8, help="recordings per PAT forward pass")
    parser.add_argument("--chunk-size", type=int, default=64, help="recordings per output file")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (one GPU per actor)")
    parser.add_argument("--timezone", default="UTC", help="local zone of device files' clock times")
    parser.add_argument(
        "--cpus", type=int, help="local Ray only: CPUs Ray schedules on (at least --workers + 1 on CPU)"
    )
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    import ray

    args = parse_args(argv)
    settings = Settings()
    if os.environ.get("RAY_ADDRESS"):
        ray.init()
    else:
        # Local workers must import this checkout's pat_runner and see the same model store.
        env = {"PYTHONPATH": str(ROOT)}
        if os.environ.get("BENTOML_HOME"):
            env["BENTOML_HOME"] = os.environ["BENTOML_HOME"]
        ray.init(num_cpus=args.cpus, include_dashboard=False, runtime_env={"env_vars": env})
    report = run_backfill(
        args.source,
        args.out,
        model_tag=args.model or settings.model_tag,
        settings=settings,
        workers=args.workers,
        batch_size=args.batch_size,
        chunk_size=args.chunk_size,
        device=args.device,
        timezone=args.timezone,
        progress=not args.no_progress,
    )
    rate = report.recordings / report.seconds * 60 if report.seconds else 0.0
    print(json.dumps({**report.__dict__, "recordings_per_minute": round(rate, 1)}))
    # 3: finished, but some recordings were rejected (their metrics rows carry the error).
    return 3 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
