"""glibc's malloc keeps the memory a forward pass freed, so the next pass takes no page faults."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from pat_runner.model.malloc import retain_freed_memory

ROOT = Path(__file__).resolve().parents[1]

# A fresh interpreter per case: the thresholds are process-wide and would change this session's heap.
# PAT-M under bf16 autocast with stepped attention as torch-bf16 serves it (2,400-6,200 page faults per
# warm pass with glibc's adaptive thresholds in three process starts; none in some other starts).
PASSES = """
import json, resource, sys, torch
from pat_runner.model.backends import ATTENTION_STEP_BYTES
from pat_runner.model.malloc import retain_freed_memory
from pat_runner.model.model import PAT, PATConfig
applied = retain_freed_memory(int(sys.argv[1]))
torch.manual_seed(0)
model = PAT(PATConfig.for_size("M")).eval()
model.use_stepped_attention(ATTENTION_STEP_BYTES)
weeks = torch.randn(2, 10080)
with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
    for _ in range(5):
        model.encode(weeks)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        model.encode(weeks)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"applied": applied, "faults_per_pass": faults / 20}))
"""


def _passes(trim_threshold_mb: int) -> dict[str, float]:
    completed = subprocess.run(
        [sys.executable, "-c", PASSES, str(trim_threshold_mb)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    return json.loads(completed.stdout.splitlines()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt thresholds are glibc's")
def test_warm_passes_take_no_page_faults_when_freed_memory_is_retained() -> None:
    result = _passes(256)
    assert result["applied"] is True
    # Given back to the kernel, a pass's activations are 2,400-6,200 faults. Retained, a pass takes
    # none, but the heap may still grow once by a few pages as it settles (strace: one brk, ~600 faults).
    assert result["faults_per_pass"] < 200


def test_zero_leaves_glibc_as_it_is() -> None:
    assert retain_freed_memory(0) is False
