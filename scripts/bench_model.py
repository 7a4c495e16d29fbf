"""In-process PAT throughput per size × batch × backend, as a fraction of this machine's matmul peak.

    python scripts/bench_model.py [--sizes S M L] [--batches 1 8 32] [--backends torch onnxruntime ...]
                                  [--seconds 2] [--threads 0] [--device cpu|cuda] [--[no-]keras]
                                  [--[no-]auto] [--rounds 1] [--json out.json]

Each (size, backend) runs in a fresh child process, so its peak RSS is its own. The weights are the
shared reference fixtures (`../shared/fixtures/pat_reference`, the original Keras layout) when present,
else seeded random ones; throughput does not depend on the values. ONNX Runtime runs as the model
service configures it (`PAT_ORT_SPIN_WAIT` from the environment, off by default), and every child sets
glibc's malloc as the model service does (`PAT_MALLOC_TRIM_THRESHOLD_MB`). Before timing, every
backend is checked against fp32 torch with the service's accuracy gate (the `gate` column). The matmul
peak is measured in the same run (square fp32 and bf16 matmuls), and each row's achieved FLOP rate
(analytic FLOPs of one PAT forward pass) is shown as a fraction of the peak of its precision.

With `--auto` (the default when every candidate backend is measured), each size also starts the model
service's own choice, `select_backend(model, "auto")` with `PAT_BACKEND_BENCH_SECONDS` at its default, in
a child process, and prints what it chose against the fastest backend at batch 1 in this run (issue 15's
target: within 10 %).

With the optional `bench` extra installed (tensorflow + tf-keras; `make bench-keras`), or with `--keras`,
each size also runs the original Keras PAT (`scripts/keras_reference.py`, its own child process) on the
same weights and batches, with TF's intra- and inter-op threads set to torch's thread count. Its row is
`keras`, the `× keras` column is each row's weeks/s over Keras's at the same size and batch, and its
embeddings of the calibration windows are compared with the fp32 PyTorch port's (max |Δ|, printed and
in the JSON) to show the same weights were loaded. Keras needs the fixtures (it reads the H5 itself) and
runs where TensorFlow puts it: the CPU with the pinned wheel (a GPU needs `tensorflow[and-cuda]`); the
JSON records which.

With `--rounds N` the whole measurement (every size, Keras and each backend in turn) repeats N times
and ends with each backend's ratio to Keras per batch over the rounds: median, lowest and highest. On
a shared VM a single run's ratio moved by ±15 % (docs/performance.md, "Stepped bf16 attention"); the
rounds interleave the Keras and backend timings so that a slow minute falls on both.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pat_runner.model import WEEK_MINUTES  # noqa: E402
from pat_runner.model.backends import (  # noqa: E402
    TorchBackend,
    accuracy_gate,
    build_backend,
    calibration_windows,
    candidates,
    select_backend,
)
from pat_runner.model.malloc import retain_freed_memory  # noqa: E402
from pat_runner.model.model import PAT, PATConfig  # noqa: E402
from pat_runner.settings import Settings  # noqa: E402
from scripts.timing import time_batches  # noqa: E402

FIXTURES = ROOT.parent / "shared" / "fixtures" / "pat_reference"
KERAS_SCRIPT = ROOT / "scripts" / "keras_reference.py"


def keras_installed() -> bool:
    """Whether the `bench` extra is here, without importing tensorflow into this (torch) process."""
    return all(importlib.util.find_spec(name) is not None for name in ("tensorflow", "tf_keras"))


def forward_flops(config: PATConfig) -> float:
    """Multiply-adds × 2 of one week through the encoder (the head is negligible)."""
    patches = WEEK_MINUTES // config.patch_size
    inner = config.num_heads * config.key_dim
    embed = 2 * patches * config.patch_size * config.embed_dim
    per_block = (
        2 * patches * config.embed_dim * inner * 3  # query, key, value
        + 2 * 2 * config.num_heads * patches * patches * config.key_dim  # scores and context
        + 2 * patches * inner * config.embed_dim  # output projection
        + 2 * 2 * patches * config.embed_dim * config.ff_dim  # feed-forward
    )
    return embed + config.num_layers * per_block


def matmul_peak(dtype: torch.dtype, device: str, seconds: float = 1.0, n: int = 2048) -> float:
    """Sustained FLOP/s of square `n`×`n` matmuls in `dtype` on `device`."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    for _ in range(2):
        a @ b
    calls, started = 0, time.perf_counter()
    while calls < 3 or time.perf_counter() - started < seconds:
        a @ b
        calls += 1
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return 2 * n**3 * calls / (time.perf_counter() - started)


def load_model(size: str, device: str) -> PAT:
    path = FIXTURES / f"PAT-{size}_random_seed0.h5"
    if path.is_file():
        from pat_runner import load_pat

        return load_pat(path).to(device).eval()
    torch.manual_seed(0)
    return PAT(PATConfig.for_size(size)).to(device).eval()


def worker(size: str, backend_name: str, batches: list[int], seconds: float, device: str) -> dict[str, Any]:
    """Gate and time one backend on one size (runs in its own process)."""
    model = load_model(size, device)
    cache = Path(tempfile.gettempdir()) / "pat-bench-onnx"
    threads = torch.get_num_threads()
    backend = build_backend(
        backend_name, model, device, cache_dir=cache, threads=threads, spin_wait=Settings().ort_spin_wait
    )
    windows = calibration_windows()
    gate = accuracy_gate(TorchBackend(model, device).run(windows), backend.run(windows))
    rows = time_batches(backend.run, windows[0], batches, seconds)
    return {
        "size": size,
        "backend": backend_name,
        # torch-bf16's attention path and what it measured of both (empty where not measured)
        "attention": getattr(backend, "attention", None),
        "attention_weeks_per_s": getattr(backend, "attention_weeks_per_s", {}),
        "threads": threads,
        "gate_min_cosine": gate.min_cosine,
        "gate_passed": gate.passed,
        "flops_per_week": forward_flops(model.config),
        # ru_maxrss is in KiB on Linux
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rows": rows,
    }


def run_keras(size: str, args: argparse.Namespace) -> dict[str, Any] | None:
    """Time the original Keras PAT in its own process and check its embeddings against the fp32 port."""
    weights = FIXTURES / f"PAT-{size}_random_seed0.h5"
    if not weights.is_file():
        print(f"PAT-{size:<2}keras        skipped: no Keras weights at {weights}", flush=True)
        return None
    model = load_model(size, "cpu")
    windows = calibration_windows()
    with tempfile.TemporaryDirectory() as tmp:
        windows_path, out_path = Path(tmp) / "windows.npy", Path(tmp) / "keras.npy"
        np.save(windows_path, windows)
        command = [sys.executable, str(KERAS_SCRIPT), "bench", "--size", size, "--weights", str(weights)]
        command += ["--windows", str(windows_path), "--out", str(out_path), "--seconds", str(args.seconds)]
        # the same thread count as every torch child (whose default is this process's)
        command += ["--threads", str(torch.get_num_threads()), "--batches", *map(str, args.batches)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            print(f"PAT-{size:<2}keras        failed: {done.stderr.strip().splitlines()[-1:]}", flush=True)
            return None
        embeddings = np.load(out_path)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    reference = TorchBackend(model, "cpu").run(windows)
    gate = accuracy_gate(reference, (embeddings, None))
    result["gate_min_cosine"] = gate.min_cosine
    result["gate_passed"] = gate.passed
    result["max_abs_diff_vs_torch_fp32"] = float(np.abs(embeddings - reference[0]).max())
    result["flops_per_week"] = forward_flops(model.config)
    print(
        f"PAT-{size}: Keras vs the fp32 PyTorch port on the calibration windows: max |Δ| "
        f"{result['max_abs_diff_vs_torch_fp32']:.1e}, min cosine {gate.min_cosine:.9f}",
        flush=True,
    )
    return result


def print_rows(result: dict[str, Any], peak: float, keras_speed: dict[int, float] | None) -> None:
    """One table line per batch; fills in each row's fraction of peak and, unless `keras_speed` is None
    (Keras not run), its ratio to Keras's weeks/s at the same batch."""
    for row in result["rows"]:
        row["fraction_of_peak"] = row["weeks_per_s"] * result["flops_per_week"] / peak
        ratio = ""
        if keras_speed is not None:
            base = keras_speed.get(row["batch"])
            row["vs_keras"] = row["weeks_per_s"] / base if base else None
            ratio = f"{row['vs_keras']:>9.2f}" if base else f"{'–':>9}"
        print(
            f"PAT-{result['size']:<2}{result['backend']:<13}{row['batch']:>6}{row['weeks_per_s']:>10.1f}"
            f"{row['latency_ms_p50']:>10.1f}{row['fraction_of_peak']:>9.2f}"
            f"{result['peak_rss_mib']:>9.0f}{'ok' if result['gate_passed'] else 'FAIL':>6}{ratio}",
            flush=True,
        )
    if result.get("attention_weeks_per_s"):
        measured = ", ".join(f"{path} {speed:.1f}" for path, speed in result["attention_weeks_per_s"].items())
        label = f"PAT-{result['size']:<2}{result['backend']}"
        print(f"{label}: {result['attention']} attention ({measured} weeks/s)", flush=True)


def print_keras_ratios(results: list[dict[str, Any]]) -> None:
    """Each backend's ratio to Keras per size and batch over the rounds: median (lowest–highest)."""
    ratios: dict[tuple[str, str, int], list[float]] = {}
    for result in results:
        for row in result["rows"]:
            if result["backend"] != "keras" and row.get("vs_keras") is not None:
                key = (result["size"], result["backend"], row["batch"])
                ratios.setdefault(key, []).append(row["vs_keras"])
    print("× keras over the rounds: median (lowest–highest)")
    for (size, backend, batch), values in ratios.items():
        print(
            f"PAT-{size:<2}{backend:<13}{batch:>6}{statistics.median(values):>9.2f} "
            f"({min(values):.2f}–{max(values):.2f}, {len(values)} rounds)",
            flush=True,
        )


def auto_worker(size: str, device: str) -> dict[str, Any]:
    """What the model service's `auto` chooses for `size` here (runs in its own process)."""
    model = load_model(size, device)
    _, choice = select_backend(
        model,
        "auto",
        device,
        cache_dir=Path(tempfile.gettempdir()) / "pat-bench-onnx",
        threads=torch.get_num_threads(),
        bench_seconds=Settings.model_fields["backend_bench_seconds"].default,
        spin_wait=Settings().ort_spin_wait,
    )
    return choice.to_dict()


def compare_auto(size: str, results: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any] | None:
    """Run `auto_worker` for `size` and set its choice against this run's fastest backend at batch 1."""
    command = [sys.executable, __file__, "--auto-worker", size, "--device", args.device]
    command += ["--threads", str(args.threads)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        print(f"PAT-{size}: auto failed: {done.stderr.strip().splitlines()[-1:]}", flush=True)
        return None
    choice = json.loads(done.stdout.strip().splitlines()[-1])
    batch1 = {
        r["backend"]: next(row["weeks_per_s"] for row in r["rows"] if row["batch"] == 1)
        for r in results
        if r["size"] == size and r["backend"] != "keras" and r["gate_passed"]
    }
    best = max(batch1, key=batch1.__getitem__)
    ratio = batch1.get(choice["backend"], float("nan")) / batch1[best]
    print(
        f"PAT-{size}: auto chose {choice['backend']}; at batch 1 it runs at {ratio:.2f} of the fastest "
        f"here ({best}, {batch1[best]:.1f} weeks/s)",
        flush=True,
    )
    return {"size": size, "choice": choice, "fastest_batch1": best, "chosen_over_fastest_batch1": ratio}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["S", "M", "L"], choices=["S", "M", "L"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8, 32])
    parser.add_argument("--backends", nargs="+", default=None, help="default: every one available here")
    parser.add_argument("--seconds", type=float, default=2.0, help="timed seconds per size, backend, batch")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0: torch default)")
    parser.add_argument(
        "--keras",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also time the original Keras PAT (default: when tensorflow and tf-keras are installed)",
    )
    parser.add_argument(
        "--auto",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also show what PAT_BACKEND=auto chooses (default: when every candidate backend is measured)",
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="repeat the measurement; summarises the ratios to Keras"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--worker", nargs=2, metavar=("SIZE", "BACKEND"), help=argparse.SUPPRESS)
    parser.add_argument("--auto-worker", metavar="SIZE", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    retain_freed_memory(Settings().malloc_trim_threshold_mb)
    if args.worker:
        result = worker(*args.worker, args.batches, args.seconds, args.device)
        print(json.dumps(result))
        return
    if args.auto_worker:
        print(json.dumps(auto_worker(args.auto_worker, args.device)))
        return

    if args.keras is None:
        args.keras = keras_installed()
    elif args.keras and not keras_installed():
        parser.error("--keras needs tensorflow and tf-keras: `make bench-keras` installs the bench extra")
    backends = args.backends or candidates(args.device)
    if args.auto is None:
        args.auto = set(candidates(args.device)) <= set(backends) and 1 in args.batches
    peak = {
        "fp32": matmul_peak(torch.float32, args.device),
        "bf16": matmul_peak(torch.bfloat16, args.device),
    }
    print(
        f"torch {torch.__version__}, device {args.device}, {torch.get_num_threads()} threads; matmul peak "
        f"fp32 {peak['fp32'] / 1e9:.0f} GFLOP/s, bf16 {peak['bf16'] / 1e9:.0f} GFLOP/s"
    )
    print(
        f"{'size':<6}{'backend':<13}{'batch':>6}{'weeks/s':>10}{'p50 ms':>10}{'of peak':>9}"
        f"{'RSS MiB':>9}{'gate':>6}" + (f"{'× keras':>9}" if args.keras else "")
    )
    results = []
    autos: list[dict[str, Any]] = []
    keras_meta: dict[str, Any] = {}
    for round_index, size in ((r, size) for r in range(args.rounds) for size in args.sizes):
        if args.rounds > 1 and size == args.sizes[0]:
            print(f"round {round_index + 1} of {args.rounds}", flush=True)
        keras_speed: dict[int, float] | None = None
        if args.keras:
            baseline = run_keras(size, args)
            keras_speed = {}
            if baseline is not None:
                keras_speed = {row["batch"]: row["weeks_per_s"] for row in baseline["rows"]}
                print_rows(baseline, peak["fp32"], keras_speed)
                results.append({**baseline, "round": round_index})
                keras_meta = {k: baseline[k] for k in ("tensorflow", "tf_keras", "call", "device")}
        for name in backends:
            command = [sys.executable, __file__, "--worker", size, name, "--device", args.device]
            command += ["--seconds", str(args.seconds), "--threads", str(args.threads), "--batches"]
            command += [str(b) for b in args.batches]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                print(f"PAT-{size:<2}{name:<13} failed: {done.stderr.strip().splitlines()[-1:]}", flush=True)
                continue
            result = json.loads(done.stdout.strip().splitlines()[-1])
            reference_peak = peak["bf16"] if name in ("torch-bf16", "tensorrt") else peak["fp32"]
            print_rows(result, reference_peak, keras_speed)
            results.append({**result, "round": round_index})
        if args.auto:
            auto = compare_auto(size, [r for r in results if r["round"] == round_index], args)
            if auto is not None:
                autos.append({**auto, "round": round_index})
    if args.rounds > 1 and args.keras:
        print_keras_ratios(results)
    if args.json:
        payload = {
            "torch": torch.__version__,
            "device": args.device,
            "matmul_peak_flops": peak,
            "keras": keras_meta or None,
            "runs": results,
            "auto": autos,
        }
        args.json.write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
