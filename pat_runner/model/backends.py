"""Inference backends for a loaded PAT and the start-up choice between them (`PAT_BACKEND`).

Which backend is fastest depends on the machine (docs/performance.md): ONNX Runtime roughly doubles
torch fp32 on AVX-512 EPYC CPUs, bf16 autocast pays off on CPUs with AMX and on GPUs, TensorRT on GPUs.
So the service offers them all and, with `auto`, measures them on the loaded model at start-up. Within
torch-bf16 on a CPU, the attention path (SDPA's kernel or `stepped_attention`) is measured the same way.

Every backend is checked against the fp32 PyTorch reference before it serves (`accuracy_gate`):
encoder cosine similarity >= 0.9999 per window and head probability within 1e-3. A backend that fails
the gate never serves: `auto` skips it, an explicit choice stops the start-up. The attention map
(`PAT.encode(return_attention=True)`) always comes from the reference model, never from a backend.

GPU paths (CUDA and TensorRT execution providers, bf16 on CUDA) are written for CUDA but verified only
where a GPU was available; `scripts/gpu_check.sh` is the one command that checks them.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from pat_runner.model import WEEK_MINUTES
from pat_runner.model.model import PAT

logger = logging.getLogger(__name__)

BACKENDS = ("torch", "torch-bf16", "onnxruntime", "tensorrt")
BACKEND_CHOICES = ("auto", *BACKENDS)
COSINE_GATE = 0.9999
PROBABILITY_GATE = 1e-3
#: Scores held by one step of torch-bf16's `stepped_attention` on a CPU: a whole head for PAT-S and -M
#: (0.6 MiB of bf16 scores), two blocks of 560 queries for PAT-L; fastest of 0.5, 1 and 2 MiB on the
#: AVX-512 EPYC VM (L2 1 MiB per core), docs/performance.md.
ATTENTION_STEP_BYTES = 2 << 20
#: Bumped when the exported graph changes, so cached ONNX files of an older export are not reused.
EXPORT_VERSION = "1"
ONNX_OPSET = 17


class BackendUnavailable(RuntimeError):
    """The requested backend cannot run here (package, provider or hardware missing)."""


class AccuracyGateFailed(RuntimeError):
    """A backend's outputs differ from the fp32 reference beyond the accuracy gate."""


Outputs = tuple[np.ndarray, np.ndarray | None]


class Backend(Protocol):
    name: str

    def run(self, windows: np.ndarray) -> Outputs:
        """`(n, T)` float32 standardized windows → per-patch embeddings `(n, P, E)` float32 and the
        head's probability `(n,)` float32 (None without a head)."""
        ...


class TorchBackend:
    """The PyTorch model, in fp32 or under bf16 autocast (weights stay fp32, matmuls run in bf16)."""

    def __init__(self, model: PAT, device: str, *, bf16: bool = False) -> None:
        self.model = model
        self.device = torch.device(device)
        self.bf16 = bf16
        self.name = "torch-bf16" if bf16 else "torch"
        #: what `torch_bf16_backend` measured of each attention path, weeks/s; empty when not measured
        self.attention_weeks_per_s: dict[str, float] = {}

    @property
    def attention(self) -> str:
        """`stepped` when the model computes attention with `stepped_attention`, else `sdpa`."""
        return "stepped" if self.model.blocks[0].attention.step_bytes is not None else "sdpa"

    def run(self, windows: np.ndarray) -> Outputs:
        x = torch.from_numpy(np.ascontiguousarray(windows, dtype=np.float32)).to(self.device)
        with torch.inference_mode():
            with torch.autocast(self.device.type, torch.bfloat16, enabled=self.bf16):
                patches = self.model.encode(x).float()
            # The head is tiny; fp32 keeps the probability as close to the reference as the encoder allows.
            probability = self.model.head_proba(patches) if self.model.config.has_head else None
        return (
            patches.float().cpu().numpy(),
            probability[:, 0].float().cpu().numpy() if probability is not None else None,
        )


class ChunkedBackend:
    """`backend` run on at most `chunk` windows at a time, the batch size the start-up measured fastest.

    On a CPU a week's throughput falls as the batch grows past a few windows (a batch's attention scores,
    `batch × heads × P × P`, leave the caches: PAT-L in fp32 ran 8.0 weeks/s at batch 1 and 6.7 at batch 8
    on the 2-core dev VM), while BentoML's batching gathers up to `PAT_MAX_BATCH_SIZE` calls into one. The
    gathered batch still saves a forward call's fixed costs; its windows run in chunks.
    """

    def __init__(self, backend: Backend, chunk: int) -> None:
        self.backend = backend
        self.chunk = chunk
        self.name = backend.name

    def run(self, windows: np.ndarray) -> Outputs:
        if len(windows) <= self.chunk:
            return self.backend.run(windows)
        parts = [self.backend.run(windows[i : i + self.chunk]) for i in range(0, len(windows), self.chunk)]
        patches = np.concatenate([p for p, _ in parts])
        if parts[0][1] is None:
            return patches, None
        return patches, np.concatenate([q for _, q in parts if q is not None])


class _Exported(nn.Module):
    """The graph ONNX sees: encoder, and the head when there is one, as one forward pass."""

    def __init__(self, model: PAT) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        patches = self.model.encode(x)
        if self.model.config.has_head:
            return patches, self.model.head_proba(patches)[:, 0]
        return (patches,)


def _state_digest(model: PAT) -> str:
    digest = hashlib.sha256(repr(model.config.to_dict()).encode())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def onnx_path(model: PAT, cache_dir: Path) -> Path:
    """Where the ONNX export of `model` is cached: named by weights, export version and torch version,
    so a changed model, exporter or torch never reuses a stale graph."""
    key = f"{_state_digest(model)[:16]}-e{EXPORT_VERSION}-o{ONNX_OPSET}-torch{torch.__version__}"
    return cache_dir / f"pat-{model.config.size.lower()}-{key}.onnx"


def export_onnx(model: PAT, cache_dir: Path) -> Path:
    """Export `model` once (dynamic batch axis) and return the cached file; atomic, so concurrent
    workers exporting the same model never read a half-written file."""
    path = onnx_path(model, cache_dir)
    if path.is_file():
        return path
    cache_dir.mkdir(parents=True, exist_ok=True)
    outputs = ["patches", "probability"] if model.config.has_head else ["patches"]
    example = torch.zeros(2, WEEK_MINUTES)
    cpu_model = model if next(model.parameters()).device.type == "cpu" else _cpu_copy(model)
    handle, temporary = tempfile.mkstemp(dir=cache_dir, suffix=".onnx.tmp")
    os.close(handle)
    try:
        with warnings.catch_warnings():
            # Tracing warns about Python control flow on shapes; the batch axis is declared dynamic.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            # The TorchScript-based exporter (dynamo=False) needs only `onnx`, not onnxscript.
            torch.onnx.export(
                _Exported(cpu_model),
                (example,),
                temporary,
                input_names=["windows"],
                output_names=outputs,
                dynamic_axes={name: {0: "batch"} for name in ["windows", *outputs]},
                opset_version=ONNX_OPSET,
                dynamo=False,
            )
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return path


def _cpu_copy(model: PAT) -> PAT:
    copy = PAT(model.config)
    copy.load_state_dict({k: v.cpu() for k, v in model.state_dict().items()})
    return copy.eval()


def _providers(name: str, device: str, cache_dir: Path) -> list[Any]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    gpu = device.startswith("cuda")
    index = int(device.split(":")[1]) if ":" in device else 0
    if name == "tensorrt":
        if not gpu or "TensorrtExecutionProvider" not in available:
            raise BackendUnavailable(
                f"tensorrt needs a CUDA device and onnxruntime-gpu with TensorRT (providers: {available})"
            )
        trt = {
            "device_id": index,
            "trt_fp16_enable": True,
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(cache_dir / "trt"),
            # One engine for every batch the service forms: 1 up to BentoML's largest batches.
            "trt_profile_min_shapes": f"windows:1x{WEEK_MINUTES}",
            "trt_profile_opt_shapes": f"windows:8x{WEEK_MINUTES}",
            "trt_profile_max_shapes": f"windows:64x{WEEK_MINUTES}",
        }
        return [("TensorrtExecutionProvider", trt), ("CUDAExecutionProvider", {"device_id": index})]
    if gpu:
        if "CUDAExecutionProvider" not in available:
            raise BackendUnavailable(
                f"onnxruntime on {device} needs onnxruntime-gpu (providers: {available})"
            )
        return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OnnxRuntimeBackend:
    """The exported graph in ONNX Runtime: CPU, CUDA or TensorRT (fp16) execution provider."""

    def __init__(
        self,
        model: PAT,
        device: str,
        *,
        cache_dir: Path,
        threads: int,
        spin_wait: bool = False,
        tensorrt: bool = False,
    ) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise BackendUnavailable("onnxruntime is not installed") from exc
        self.name = "tensorrt" if tensorrt else "onnxruntime"
        providers = _providers(self.name, device, cache_dir)
        path = export_onnx(model, cache_dir)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # One inference at a time per model service (BentoML batches), so all threads go to one op.
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # Without spinning, an idle pool thread sleeps instead of burning a core between ops and calls.
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin_wait else "0")
        self.session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        self.has_head = model.config.has_head
        self.providers = self.session.get_providers()

    def run(self, windows: np.ndarray) -> Outputs:
        x = np.ascontiguousarray(windows, dtype=np.float32)
        outputs = self.session.run(None, {"windows": x})
        return outputs[0], (outputs[1] if self.has_head else None)


def bf16_supported(device: str) -> bool:
    """Native bf16 arithmetic: a CUDA GPU that has it, or a CPU with AVX512-BF16 or AMX (oneDNN)."""
    if device.startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    # A private oneDNN probe; a torch build without it is treated as having no native bf16.
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(check()) if check is not None else False


def ort_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def candidates(device: str) -> list[str]:
    """The backends worth trying on `device`, the fp32 reference first."""
    names = ["torch"]
    if bf16_supported(device):
        names.append("torch-bf16")
    if ort_available():
        import onnxruntime as ort

        available = ort.get_available_providers()
        if not device.startswith("cuda") or "CUDAExecutionProvider" in available:
            names.append("onnxruntime")
        if device.startswith("cuda") and "TensorrtExecutionProvider" in available:
            names.append("tensorrt")
    return names


def torch_bf16_backend(model: PAT, device: str, *, bench_seconds: float) -> TorchBackend:
    """torch-bf16 with the faster attention path here: SDPA's kernel, or on a CPU `stepped_attention`.

    SDPA's CPU flash kernel ran bf16 no faster than fp32 on the AVX-512 EPYC VM (no AMX), where the
    stepped path made the whole model ~1.5× faster; with AMX its bf16 kernel may win. So both are timed
    on a calibration week for `bench_seconds` in all, and the stepped one runs on its own copy of the
    model, leaving `model` (the fp32 reference) as it is. On a GPU, SDPA is used as is.
    """
    sdpa = TorchBackend(model, device, bf16=True)
    if device.startswith("cuda"):
        return sdpa
    stepped_model = copy.deepcopy(model)
    stepped_model.use_stepped_attention(ATTENTION_STEP_BYTES)
    stepped = TorchBackend(stepped_model, device, bf16=True)
    week = calibration_windows()[:1]
    speeds = {
        backend.attention: weeks_per_second(backend.run, week, budget_s=bench_seconds / 2)
        for backend in (sdpa, stepped)
    }
    chosen = stepped if speeds["stepped"] > speeds["sdpa"] else sdpa
    chosen.attention_weeks_per_s = {path: round(speed, 3) for path, speed in speeds.items()}
    return chosen


def build_backend(
    name: str,
    model: PAT,
    device: str,
    *,
    cache_dir: Path,
    threads: int,
    spin_wait: bool = False,
    bench_seconds: float = 0.5,
) -> Backend:
    """One backend by name; `BackendUnavailable` when it cannot run here. `spin_wait`: ONNX Runtime's
    threads spin while waiting for work (`PAT_ORT_SPIN_WAIT`); `bench_seconds`: time torch-bf16 spends
    choosing its attention path (`torch_bf16_backend`)."""
    if name == "torch":
        return TorchBackend(model, device)
    if name == "torch-bf16":
        if not bf16_supported(device):
            raise BackendUnavailable(f"torch-bf16 needs native bf16 on {device} (AVX512-BF16, AMX or a GPU)")
        return torch_bf16_backend(model, device, bench_seconds=bench_seconds)
    if name in ("onnxruntime", "tensorrt"):
        return OnnxRuntimeBackend(
            model,
            device,
            cache_dir=cache_dir,
            threads=threads,
            spin_wait=spin_wait,
            tensorrt=name == "tensorrt",
        )
    raise ValueError(f"unknown backend {name!r}; expected one of {', '.join(BACKEND_CHOICES)}")


def calibration_windows(count: int = 4, *, seed: int = 0) -> np.ndarray:
    """Standardized synthetic weeks (rest/activity rhythm, one all-zero week) for the gate and timing:
    deterministic, so every start-up checks the same inputs; no health data is needed at start-up."""
    rng = np.random.default_rng(seed)
    hour = (np.arange(WEEK_MINUTES) / 60.0) % 24
    awake = (hour >= 7) & (hour < 23)
    weeks = []
    for _ in range(count - 1):
        counts = np.where(awake, rng.gamma(1.5, 250.0, WEEK_MINUTES), rng.poisson(3.0, WEEK_MINUTES))
        weeks.append((counts - counts.mean()) / counts.std())
    weeks.append(np.zeros(WEEK_MINUTES))
    return np.stack(weeks).astype(np.float32)


@dataclass(frozen=True)
class GateResult:
    min_cosine: float
    max_probability_diff: float | None

    @property
    def passed(self) -> bool:
        probability_ok = self.max_probability_diff is None or self.max_probability_diff <= PROBABILITY_GATE
        return self.min_cosine >= COSINE_GATE and probability_ok


def per_window_cosine(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """Cosine similarity of each window's flattened per-patch embeddings (float64)."""
    a = reference.reshape(len(reference), -1).astype(np.float64)
    b = candidate.reshape(len(candidate), -1).astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def accuracy_gate(reference: Outputs, candidate: Outputs) -> GateResult:
    """Compare a backend's outputs with the fp32 reference's on the same windows."""
    cosine = per_window_cosine(reference[0], candidate[0])
    probability_diff = None
    if reference[1] is not None:
        if candidate[1] is None:
            raise AccuracyGateFailed("the backend returned no head probability")
        probability_diff = float(np.abs(reference[1].astype(np.float64) - candidate[1]).max())
    min_cosine = float(cosine.min()) if np.isfinite(cosine).all() else float("nan")
    return GateResult(min_cosine=min_cosine, max_probability_diff=probability_diff)


def weeks_per_second(run: Callable[[np.ndarray], Outputs], windows: np.ndarray, *, budget_s: float) -> float:
    """Throughput of `run` on `windows`: one warm-up call, then repeats until `budget_s` (at least 2)."""
    run(windows)
    repeats, elapsed = 0, 0.0
    started = time.perf_counter()
    while repeats < 2 or elapsed < budget_s:
        run(windows)
        repeats += 1
        elapsed = time.perf_counter() - started
    return repeats * len(windows) / elapsed


@dataclass
class BackendChoice:
    """The served backend and what the start-up measured (logged, `GET /v1/models`, `pat_model_info`)."""

    backend: str
    requested: str
    device: str
    #: per backend tried: weeks/s by batch size, gate figures, or why it was skipped
    measurements: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: windows per forward pass on a CPU (the fastest batch size measured, `ChunkedBackend`); None on a
    #: GPU, where a forward pass takes the whole batch
    chunk: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _score(throughput: dict[str, float]) -> float:
    """Geometric mean of weeks/s over the batch sizes measured: single requests and batches count alike."""
    return math.exp(sum(math.log(v) for v in throughput.values()) / len(throughput))


def select_backend(
    model: PAT,
    requested: str,
    device: str,
    *,
    cache_dir: Path,
    threads: int,
    bench_seconds: float,
    bench_batches: Sequence[int] = (1, 4),
    spin_wait: bool = False,
) -> tuple[Backend, BackendChoice]:
    """The backend to serve `model` with: `requested`, or with `auto` the fastest that passes the gate.

    Every backend, the explicit one too, is gated against fp32 torch on `calibration_windows`. On a CPU
    the served backend runs in chunks of its fastest measured batch size (`ChunkedBackend`).
    """
    if requested not in BACKEND_CHOICES:
        raise ValueError(f"unknown backend {requested!r}; expected one of {', '.join(BACKEND_CHOICES)}")
    names = candidates(device) if requested == "auto" else [requested]
    windows = calibration_windows()
    reference_backend = TorchBackend(model, device)
    reference = reference_backend.run(windows)
    choice = BackendChoice(backend="", requested=requested, device=device)
    built: dict[str, Backend] = {}
    for name in names:
        started = time.perf_counter()
        try:
            backend = (
                reference_backend
                if name == "torch"
                else build_backend(
                    name,
                    model,
                    device,
                    cache_dir=cache_dir,
                    threads=threads,
                    spin_wait=spin_wait,
                    bench_seconds=bench_seconds,
                )
            )
            gate = accuracy_gate(reference, backend.run(windows))
        except (BackendUnavailable, AccuracyGateFailed) as exc:
            if requested != "auto":
                raise
            choice.measurements[name] = {"skipped": str(exc)}
            continue
        entry: dict[str, Any] = {
            "min_cosine": gate.min_cosine,
            "max_probability_diff": gate.max_probability_diff,
            "passed_gate": gate.passed,
            "setup_s": round(time.perf_counter() - started, 3),
        }
        if isinstance(backend, TorchBackend) and backend.attention_weeks_per_s:
            entry["attention"] = backend.attention
            entry["attention_weeks_per_s"] = backend.attention_weeks_per_s
        choice.measurements[name] = entry
        if not gate.passed:
            if requested != "auto":
                raise AccuracyGateFailed(
                    f"backend {name} fails the accuracy gate on this model: min cosine "
                    f"{gate.min_cosine:.6f} (>= {COSINE_GATE}), max probability diff "
                    f"{gate.max_probability_diff} (<= {PROBABILITY_GATE})"
                )
            continue
        # Timed to rank several backends, and on a CPU also to size the chunks of the served one.
        if len(names) > 1 or not device.startswith("cuda"):
            entry["weeks_per_s"] = {
                str(batch): round(
                    weeks_per_second(backend.run, windows[:1].repeat(batch, 0), budget_s=bench_seconds / 2), 3
                )
                for batch in bench_batches
            }
        built[name] = backend
    if requested != "auto" or len(built) == 1:
        choice.backend = next(iter(built))
    else:
        choice.backend = max(built, key=lambda name: _score(choice.measurements[name]["weeks_per_s"]))
    served = built[choice.backend]
    if not device.startswith("cuda"):
        throughput = choice.measurements[choice.backend]["weeks_per_s"]
        choice.chunk = int(max(throughput, key=throughput.__getitem__))
        served = ChunkedBackend(served, choice.chunk)
    # In the message, not in `extra`: BentoML's text formatter, which writes the model worker's log
    # lines, drops a record's extra fields.
    logger.info(
        "PAT backend chosen: %s (requested %s, device %s, chunk %s); start-up measurements: %s",
        choice.backend,
        requested,
        device,
        choice.chunk,
        json.dumps(choice.measurements, sort_keys=True),
    )
    return served, choice


def default_cache_dir(model_dir: str | None) -> Path:
    """`<stored model>/onnx` when the model store is writable, else a per-user temporary folder."""
    if model_dir is not None and os.access(model_dir, os.W_OK):
        return Path(model_dir) / "onnx"
    return Path(tempfile.gettempdir()) / f"pat-onnx-{os.getuid()}"
