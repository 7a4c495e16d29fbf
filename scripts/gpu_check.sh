#!/usr/bin/env bash
# Parity and throughput of every GPU backend, in one short command (a few minutes on one GPU):
#
#     scripts/gpu_check.sh [PYTHON]        # default: $PYTHON, else .venv/bin/python, else python3
#
# Needs a CUDA build of torch (see bentofile.cuda.yaml) and, for the onnxruntime/tensorrt backends,
# onnxruntime-gpu==1.31.1 (with TensorRT libraries for `tensorrt`) instead of the CPU onnxruntime.
# 1. the accuracy gate of torch, torch-bf16, onnxruntime (CUDA EP) and tensorrt (TRT EP, fp16) against
#    fp32 torch on the CUDA device, on the Keras reference fixtures and the calibration weeks; an
#    unavailable backend is listed with the reason;
# 2. what `PAT_BACKEND=auto` would choose on PAT-S;
# 3. scripts/bench_model.py on cuda, batch 1/8/32/64, results also in gpu_bench.json.
# Exit status is non-zero when a backend that runs fails the gate.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${1:-${PYTHON:-}}"
if [[ -z "$PY" ]]; then
    if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
timeout 300 "$PY" - <<'PYEOF'
import sys, tempfile, time
from pathlib import Path
import numpy as np, torch
from pat_runner import load_pat
from pat_runner.model import backends as b

assert torch.cuda.is_available(), f"torch {torch.__version__} sees no CUDA device"
print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}; candidates on cuda: {b.candidates('cuda')}")
try:
    import onnxruntime as ort
    print(f"onnxruntime {ort.__version__}, providers {ort.get_available_providers()}")
except ImportError:
    print("onnxruntime not installed")
fixtures = Path("..") / "shared" / "fixtures" / "pat_reference"
cache = Path(tempfile.mkdtemp(prefix="pat-gpu-check-"))
failed = []
for h5, npz in [("PAT-S_random_seed0.h5", "PAT-S_random_seed0_reference.npz"),
                ("PAT-M_finetuned_random_seed0.h5", "PAT-M_finetuned_random_seed0_reference.npz"),
                ("PAT-L_random_seed0.h5", "PAT-L_random_seed0_reference.npz")]:
    if not (fixtures / h5).is_file():
        print(f"skip {h5}: fixtures not found at {fixtures}")
        continue
    model = load_pat(fixtures / h5).to("cuda").eval()
    windows = np.concatenate([np.load(fixtures / npz)["inputs"], b.calibration_windows()])
    reference = b.TorchBackend(model, "cuda").run(windows)
    for name in b.BACKENDS:
        try:
            started = time.perf_counter()
            backend = b.build_backend(name, model, "cuda", cache_dir=cache, threads=1)
            gate = b.accuracy_gate(reference, backend.run(windows))
        except b.BackendUnavailable as exc:
            print(f"{h5:34} {name:12} unavailable: {exc}")
            continue
        status = "ok" if gate.passed else "FAIL"
        if not gate.passed:
            failed.append((h5, name))
        print(f"{h5:34} {name:12} {status:4} min cosine {gate.min_cosine:.7f} "
              f"max |dp| {gate.max_probability_diff} setup {time.perf_counter() - started:.1f}s "
              f"{getattr(backend, 'providers', '')}")
model = load_pat(fixtures / "PAT-S_random_seed0.h5").to("cuda").eval()
_, choice = b.select_backend(model, "auto", "cuda", cache_dir=cache, threads=1, bench_seconds=1.0)
print(f"auto on PAT-S: {choice.backend}; {choice.measurements}")
sys.exit(1 if failed else 0)
PYEOF
timeout 420 "$PY" scripts/bench_model.py --device cuda --batches 1 8 32 64 --seconds 1 --json gpu_bench.json
