"""The autograd mechanics of seed notebooks 001, 003 and 004 that the autograd loop relies on:
gradients accumulate until zeroed, backward on a vector needs a vector (a vector-Jacobian
product), and updates under no_grad are not tracked."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from runner.loops.autograd_loop import AutogradLoop
from tests.helpers import compose_config


def test_gradients_accumulate_until_zeroed():
    # notebook 001: three backward passes without zeroing give 3, 6, 9
    w = torch.ones(4, requires_grad=True)
    for k in (1, 2, 3):
        (w * 3).sum().backward()
        assert w.grad.tolist() == [3.0 * k] * 4
    w.grad.zero_()
    (w * 3).sum().backward()
    assert w.grad.tolist() == [3.0] * 4


def test_vector_backward_is_a_vector_jacobian_product():
    # notebook 003/004: d/dx of z = x^3 + 2x^2 + 8x at x = 4 is 72; for a vector output,
    # backward(v) gives v^T J, here with a weighting vector
    x = torch.tensor([4.0, 1.0], requires_grad=True)
    z = x**3 + 2 * x**2 + 8 * x
    z.backward(torch.tensor([1.0, 2.0]))
    assert x.grad.tolist() == [72.0, 2 * (3 + 4 + 8)]
    with pytest.raises(RuntimeError, match="grad can be implicitly created only for scalar"):
        (x * 2).backward()


def test_no_grad_and_detach_stop_tracking():
    x = torch.randn(3, requires_grad=True)
    with torch.no_grad():
        assert not (x + 2).requires_grad
    assert not x.detach().requires_grad


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
