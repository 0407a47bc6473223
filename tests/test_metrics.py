"""Host rows and metric columns: the extra per-job values that features add to step records
(runner.loops.Problem.extras) come last, after the gradients and after `grad_norm`."""

from __future__ import annotations

import numpy as np

from runner.loops import StepRecord, pack_numpy
from runner.metrics import Layout

SHAPES = {"weight": (1, 2), "bias": (1,)}


def record(step: int, k: int, extras: dict) -> StepRecord:
    # K jobs: every value has the leading job axis; each value names its step and job
    lead = (k,) if k > 1 else ()
    value = float(step)
    params = {n: np.full(lead + s, value) for n, s in SHAPES.items()}
    grads = {n: np.full(lead + s, -value) for n, s in SHAPES.items()}
    extras = {n: np.full(lead, v * value) for n, v in extras.items()}
    return StepRecord(step, np.full(lead, 10 * value), np.full(k, 0.1), params, grads, extras)


def test_extras_follow_the_gradients_in_rows_and_grad_norm_in_columns():
    for k in (1, 3):
        rows = pack_numpy([record(s, k, {"first": 100.0, "second": 1000.0}) for s in (1, 2)])
        assert rows.shape == (k, 2, 2 + 3 + 3 + 2)
        np.testing.assert_array_equal(rows[:, :, -2:], [[[100, 1000], [200, 2000]]] * k)
        layout = Layout(SHAPES, 16, ("first", "second"))
        assert layout.columns[-3:] == ["grad_norm", "first", "second"]
        table = layout.table(rows[0])
        np.testing.assert_array_equal(table[:, -2:], [[100, 1000], [200, 2000]])
        np.testing.assert_allclose(table[:, -3], np.sqrt(3) * np.array([1, 2]))


def test_without_extras_rows_and_columns_are_as_before():
    rows = pack_numpy([record(1, 1, {})])
    assert rows.shape == (1, 1, 2 + 3 + 3)
    assert Layout(SHAPES, 16).columns == Layout(SHAPES, 16, ()).columns
    assert Layout(SHAPES, 16).columns[-1] == "grad_norm"
