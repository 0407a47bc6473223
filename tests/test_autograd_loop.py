"""The autograd loop uses the mechanics of seed notebooks 001 and 004 as they show them:
gradients accumulate until zeroed, so the loop zeroes them by hand every step, and its updates
under no_grad leave the parameters leaves. (Torch's own mechanics are torch's to test.)"""

from __future__ import annotations

import numpy as np
import pytest

from runner.loops.autograd_loop import AutogradLoop
from tests.helpers import compose_config


def test_autograd_loop_zeroes_gradients_by_hand_each_step():
    from runner.run import build_problem
    from runner.schema import TrainConf

    cfg = compose_config("experiment=autograd_gd", "train.dtype=float64")
    problem = build_problem(cfg, TrainConf(steps=10, dtype=cfg.train.dtype), "cpu")
    loop = AutogradLoop(problem)
    records = list(loop.steps(1, 3))
    # each step's gradient is that step's own (15 (w - 2)), not a running sum
    for record, w_before in zip(records, [0.0, 0.3, 0.555], strict=True):
        assert float(record.grads["weight"]) == pytest.approx(15 * (w_before - 2))
    assert all(float(p.grad) == 0.0 for p in loop.params.values())
    assert all(p.requires_grad and p.is_leaf for p in loop.params.values())
    # records are snapshots: later steps do not change what an earlier record holds
    np.testing.assert_allclose(float(records[0].params["weight"]), 0.3)
