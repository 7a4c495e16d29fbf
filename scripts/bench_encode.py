"""In-process PAT encode throughput in weeks per second, per size, fp32, random weights (none needed).

    python scripts/bench_encode.py [--sizes S M L] [--batch 1 4] [--seconds 3] [--device cpu|cuda]

Each size/batch pair is warmed up (3 calls), then timed for about `--seconds` (`scripts/timing.py`); the
table shows weeks/s and the median latency of one call, from host memory as the service calls the model.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pat_runner.model import WEEK_MINUTES  # noqa: E402
from pat_runner.model.model import PAT, PATConfig  # noqa: E402
from scripts.timing import time_batches  # noqa: E402


def encoder(model: PAT, device: str) -> Callable[[np.ndarray], None]:
    """One encode of host-memory weeks, as the service calls the model, finished on the device."""

    def run(weeks: np.ndarray) -> None:
        with torch.inference_mode():
            model.encode(torch.from_numpy(weeks).to(device))
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    return run


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
        window = np.random.default_rng(0).standard_normal(WEEK_MINUTES).astype(np.float32)
        for row in time_batches(encoder(model, args.device), window, args.batch, args.seconds, warmups=3):
            rate, ms = row["weeks_per_s"], row["latency_ms_p50"]
            print(f"PAT-{size:<2}{row['batch']:>6}{rate:>12.1f}{ms:>12.1f}", flush=True)


if __name__ == "__main__":
    main()
