"""In-process PAT encode throughput in weeks per second, per size, fp32, random weights (none needed).

    python scripts/bench_encode.py [--sizes S M L] [--batch 1 4] [--seconds 3] [--device cpu|cuda]

Each size/batch pair is warmed up, then timed for about `--seconds`; the table shows weeks/s and the
median latency of one call.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pat_runner.model import WEEK_MINUTES  # noqa: E402
from pat_runner.model.model import PAT, PATConfig  # noqa: E402


def measure(model: PAT, batch: int, seconds: float, device: str) -> tuple[float, float]:
    """(weeks per second, median milliseconds per call) for `batch` weeks per call."""
    weeks = torch.randn(batch, WEEK_MINUTES, device=device)

    def call() -> float:
        start = time.perf_counter()
        model.encode(weeks)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - start

    with torch.inference_mode():
        for _ in range(3):
            call()
        durations: list[float] = []
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline or len(durations) < 3:
            durations.append(call())
    return batch * len(durations) / sum(durations), 1000 * statistics.median(durations)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["S", "M", "L"], choices=["S", "M", "L"])
    parser.add_argument("--batch", nargs="+", type=int, default=[1])
    parser.add_argument("--seconds", type=float, default=3.0, help="timed seconds per size and batch")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch default)")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, device {args.device}, {torch.get_num_threads()} threads, fp32")
    print(f"{'size':<6}{'batch':>6}{'weeks/s':>12}{'ms/call':>12}")
    for size in args.sizes:
        model = PAT(PATConfig.for_size(size)).to(args.device).eval()
        for batch in args.batch:
            weeks_per_s, ms = measure(model, batch, args.seconds, args.device)
            print(f"PAT-{size:<2}{batch:>6}{weeks_per_s:>12.1f}{ms:>12.1f}", flush=True)


if __name__ == "__main__":
    main()
