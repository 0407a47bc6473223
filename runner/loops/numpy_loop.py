"""The NumPy loop: hand-derived gradients and the hand-written update rules. Never imports torch."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from runner.loops import Problem, StepRecord, pack_numpy


class NumpyLoop:
    name = "numpy"
    backend = "numpy"
    to_host = staticmethod(pack_numpy)

    def __init__(self, problem: Problem) -> None:
        self.problem = problem
        self.params = {k: np.array(v, dtype=problem.dtype) for k, v in problem.init.items()}
        self.opt_state = problem.optimizer.init_state(self.params, np)

    def steps(self, first: int, last: int) -> Iterator[StepRecord]:
        p = self.problem
        model, loss_fn, rule, batches = p.model, p.loss, p.optimizer, p.batches
        full_batch, lr = batches.full_batch, rule.lr
        x, y = model.inputs(p.x), p.y
        for step in range(first, last + 1):
            if not full_batch:
                idx = batches.indices(step)
                x, y = model.inputs(p.x[idx]), p.y[idx]
            pred = model.forward(self.params, x, np)
            loss, dpred = loss_fn.value_and_grad(pred, y)
            # Every array here stays in the run's dtype (NumPy 2's promotion rules: Python
            # scalars never widen an array), which tests/test_gradients.py checks.
            grads = model.backward(self.params, x, dpred)
            self.params, self.opt_state = rule.update(self.params, grads, self.opt_state, np)
            yield StepRecord(step, loss, lr, self.params, grads)

    def state(self) -> dict:
        """Parameters and optimizer state after the last step (arrays are never mutated)."""
        return {"params": dict(self.params), "optimizer": self.opt_state}

    def load_state(self, state: dict) -> None:
        dtype = self.problem.dtype
        self.params = {k: np.asarray(state["params"][k], dtype=dtype) for k in self.params}
        self.opt_state = state["optimizer"]
