"""The autograd loop uses the mechanics of seed notebooks 001 and 004 as they show them:
gradients accumulate until zeroed, so the loop zeroes them by hand every step (and, with
train.accumulate, lets them add up over the micro-batches of a step first), and its updates
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


def test_accumulation_adds_micro_batch_gradients_into_grad(monkeypatch):
    # train.accumulate=3: .grad is not zeroed between the three backward calls (of loss / 3),
    # so after them it holds the mean of the three batches' gradients; it is zeroed by hand
    # once, after the update.
    import torch

    from runner.run import build_problem
    from runner.schema import TrainConf

    cfg = compose_config("model=linear", "data=synthetic", "data.n_features=2",
                         "train.dtype=float64")  # fmt: skip
    train = TrainConf(steps=2, dtype=cfg.train.dtype, batch_size=5, accumulate=3)
    problem = build_problem(cfg, train, "cpu")
    loop = AutogradLoop(problem)
    seen = []
    real = AutogradLoop._backward

    def backward(self, x, y, parts=1):
        loss = real(self, x, y, parts)
        seen.append({k: p.grad.clone() for k, p in self.params.items()})
        return loss

    monkeypatch.setattr(AutogradLoop, "_backward", backward)
    start = {k: torch.from_numpy(v) for k, v in problem.init.items()}
    (record,) = list(loop.steps(1, 1))
    # each batch's gradient at the step's starting parameters, computed apart
    per_batch, losses = [], []
    for number in (1, 2, 3):
        idx = torch.from_numpy(problem.batches.indices(number))
        params = {k: v.clone().requires_grad_() for k, v in start.items()}
        x, y = torch.from_numpy(problem.x)[idx], torch.from_numpy(problem.y)[idx]
        loss = torch.mean((x @ params["weight"][0] + params["bias"] - y) ** 2)
        grads = torch.autograd.grad(loss, list(params.values()))
        per_batch.append(dict(zip(params, grads, strict=True)))
        losses.append(float(loss.detach()))
    for i, grads in enumerate(seen):  # after backward i + 1: the running sum, divided by 3
        for k, g in grads.items():
            want = sum(b[k] for b in per_batch[: i + 1]) / 3
            torch.testing.assert_close(g, want, rtol=1e-12, atol=0)
    for k, g in record.grads.items():
        torch.testing.assert_close(g, seen[-1][k], rtol=0, atol=0)
    assert float(record.loss) == pytest.approx(np.mean(losses), rel=1e-12)
    assert all(not p.grad.any() for p in loop.params.values())
