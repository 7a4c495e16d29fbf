"""glibc's malloc, set up so a process running PAT keeps the memory one forward pass freed for the next.

torch takes every activation, projection and score block from the C heap. glibc's default thresholds
adapt to the sizes it sees: a freed block of a few MiB at the top of the heap is given back to the
kernel (trim) and the next pass faults the same pages in again, zeroed. Whether that happens depends
on the order of the first allocations, so it differs from one process start to the next: PAT-M took
from none to ~5,800 page faults per week, up to ~11 ms of kernel time and 27 % of its throughput
(docs/performance.md, "Memory given back to the kernel between passes"). Fixed thresholds make every
start behave as the good case: blocks up to `MMAP_THRESHOLD_MAX` come from the heap, and the heap
keeps up to `trim_threshold_mb` of free memory at its top instead of trimming it.

Only glibc has these knobs; elsewhere (musl, macOS) this does nothing and says so.
"""

from __future__ import annotations

import ctypes
import logging

logger = logging.getLogger(__name__)

# mallopt parameters, <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: glibc's ceiling for M_MMAP_THRESHOLD on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX); larger blocks, a big
#: batch's projections, are mapped and unmapped per pass whatever is set
MMAP_THRESHOLD_MAX = 32 * 2**20


def retain_freed_memory(trim_threshold_mb: int) -> bool:
    """Fix glibc's mmap threshold at its ceiling and its trim threshold at `trim_threshold_mb`, for this
    process; True when glibc took both. 0 leaves glibc's adaptive defaults (and returns False)."""
    if trim_threshold_mb <= 0:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        logger.info("no glibc mallopt in this process: malloc thresholds left as they are")
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    applied = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)) and bool(
        mallopt(M_TRIM_THRESHOLD, trim_threshold_mb * 2**20)
    )
    if not applied:
        logger.warning("glibc refused the malloc thresholds: freed memory may go back to the kernel")
    return applied
