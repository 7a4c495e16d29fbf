"""A bound on how long BentoML's adaptive batching holds a call back to wait for more.

BentoML's `CorkDispatcher` (bentoml/_internal/marshal/dispatcher.py) holds a queued call while
`n · (wn + tick + o_a) <= 0.95 · optimizer.wait`, where `optimizer.wait` is the average time the first
call of each recent batch waited before it ran (its last 50 batches, refreshed at most every 5 s). Under
overload that average is queueing time, hundreds of milliseconds, and the dispatcher then holds every
lone call about as long once the load is gone: measured on the dev VM (demo PAT-S, bf16), a single
`/v1/analyze` cache miss took 35 ms before a burst of 256 calls at concurrency 64 and 160–250 ms after
it, still 15 s later (`scripts/bench_http.py` showed the same as a slow miss after its load phases).

`bound_batch_wait(max_wait_s)` caps `optimizer.wait` at `PAT_MAX_BATCH_WAIT_MS` each time the
optimizer refreshes it, so a call is held at most that long for company. Batches still form: while one
runs, the calls that arrive queue behind it and go together (the dispatcher runs one batch at a time).
The shedding of calls that cannot meet `PAT_MAX_LATENCY_MS` uses the optimizer's duration model
(`o_a`, `o_b`), not `wait`, and is unchanged.

A deliberate, documented patch of a BentoML internal, checked against BentoML 1.4.40;
`tests/test_batching.py` fails if the patched shape changes. Re-check on BentoML upgrades.
"""

from __future__ import annotations

import functools
from typing import Any

from bentoml._internal.marshal import dispatcher

_PATCHED = "_pat_bounded_wait_s"


def bound_batch_wait(max_wait_s: float) -> None:
    """Cap the dispatcher's learned wait at `max_wait_s` in this process (idempotent; the last bound wins)."""
    optimizer = dispatcher.Optimizer
    original = getattr(optimizer.trigger_refresh, "__wrapped__", optimizer.trigger_refresh)

    @functools.wraps(original)
    def trigger_refresh(self: Any) -> None:
        original(self)
        self.wait = min(self.wait, max_wait_s)

    setattr(trigger_refresh, _PATCHED, max_wait_s)
    optimizer.trigger_refresh = trigger_refresh
