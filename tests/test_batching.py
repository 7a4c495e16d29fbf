"""The bound on BentoML's learned batching wait (`serving/batching.py`): it caps what the optimizer learns,
and the BentoML internals it relies on still have the shape it was written against."""

from __future__ import annotations

import inspect

from bentoml._internal.marshal import dispatcher

from pat_runner.serving.batching import bound_batch_wait


def test_the_learned_wait_is_capped_and_the_duration_model_is_untouched() -> None:
    bound_batch_wait(0.005)
    optimizer = dispatcher.Optimizer(max_latency=10.0)
    # Batches whose first call waited 300 ms in a queue, as after a burst; a batch of n takes 10n + 2 ms.
    for n in range(1, 9):
        optimizer.o_stat.append((n, 0.010 * n + 0.002, 0.300))
    optimizer.trigger_refresh()
    assert optimizer.wait == 0.005
    assert abs(optimizer.o_a - 0.010) < 1e-9 and abs(optimizer.o_b - 0.002) < 1e-9
    # Short waits are kept as learned; applying the bound again does not stack wrappers.
    bound_batch_wait(1.0)
    optimizer.trigger_refresh()
    assert abs(optimizer.wait - 0.300) < 1e-9
    assert not hasattr(dispatcher.Optimizer.trigger_refresh.__wrapped__, "__wrapped__")
    bound_batch_wait(0.005)


def test_bentoml_internals_still_have_the_patched_shape() -> None:
    """Fails when a BentoML upgrade changes what `bound_batch_wait` relies on (checked against 1.4.40)."""
    assert {"o_stat", "o_a", "o_b", "wait"} <= set(vars(dispatcher.Optimizer(max_latency=1.0)))
    controller = inspect.getsource(dispatcher.CorkDispatcher.controller)
    assert "self.optimizer.wait" in controller
    refresh = inspect.getsource(dispatcher.Optimizer.trigger_refresh.__wrapped__)
    assert "self.wait" in refresh
