"""cProfile of the service path of one `/v1/analyze` (cache miss) and one cache hit, in-process.

    python scripts/profile_service.py [--outputs metrics pat fhir] [--compact] [--top 25]

Runs what the API worker runs per request — JSON body → `Recording` validation → `Analyzer.analyze`
(preprocess, cache, PAT on the demo model with fp32 torch, metrics, FHIR) → response JSON — without
BentoML's HTTP layer, and prints the most expensive functions by cumulative time. Writes
`profile-miss.prof` / `profile-hit.prof` (open with `snakeviz` or `python -m pstats`).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import pstats
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pat_runner.actigraphy.synthetic import week_recording  # noqa: E402
from pat_runner.cache.cache import ResultCache  # noqa: E402
from pat_runner.model.backends import TorchBackend  # noqa: E402
from pat_runner.model.store import demo_pat, ensure_demo_model, read_model_info  # noqa: E402
from pat_runner.serving.compact import encode_values  # noqa: E402
from pat_runner.serving.pipeline import Analyzer, to_raw  # noqa: E402
from pat_runner.serving.runner import local_infer  # noqa: E402
from pat_runner.serving.schemas import AnalyzeOptions, Recording  # noqa: E402
from pat_runner.settings import Settings  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outputs", nargs="+", default=["metrics", "pat", "fhir"])
    parser.add_argument("--compact", action="store_true", help="send values_b64 instead of values")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    settings = Settings().replace(redis_url="", cache_keys="", cache_hmac_key="")
    backend = TorchBackend(demo_pat(), "cpu")

    analyzer = Analyzer(
        model=read_model_info(ensure_demo_model()),
        scaler=None,
        infer=local_infer(backend),
        cache=ResultCache.from_settings(settings),
        settings=settings,
    )
    body = week_recording(0, subject="Patient/profile")
    if args.compact:
        values = np.array([np.nan if v is None else v for v in body.pop("values")])
        body["values_b64"] = encode_values(values)
    payload = json.dumps({"recording": body, "options": {"outputs": args.outputs}}).encode()

    async def one(request_id: str, body: bytes = payload) -> bytes:
        parsed = json.loads(body)
        rec = Recording.model_validate_json(json.dumps(parsed["recording"]))
        analysis = await analyzer.analyze(
            to_raw(rec), AnalyzeOptions.model_validate(parsed["options"]), request_id=request_id
        )
        return analysis.response.model_dump_json().encode()

    print(f"request body {len(payload):,} bytes ({'values_b64' if args.compact else 'JSON values'})")
    # Warm-up on another recording: lazy imports and first-call allocations are not per-request costs.
    asyncio.run(
        one(
            "warm-up",
            json.dumps(
                {
                    "recording": week_recording(99, subject="Patient/profile"),
                    "options": {"outputs": args.outputs},
                }
            ).encode(),
        )
    )
    for name in ("miss", "hit"):
        profiler = cProfile.Profile()
        started = time.perf_counter()
        profiler.enable()
        out = asyncio.run(one(name))
        profiler.disable()
        print(f"\n== {name}: {1000 * (time.perf_counter() - started):.1f} ms, response {len(out):,} bytes")
        profiler.dump_stats(f"profile-{name}.prof")
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(args.top)


if __name__ == "__main__":
    main()
