"""The autograd loop: leaf tensors with requires_grad, loss.backward(), the hand-written update
rule applied under torch.no_grad(), and gradients zeroed by hand (they accumulate otherwise)."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from runner.loops import Problem, StepRecord
from runner.loops.torch_common import TorchData, pack_torch


class AutogradLoop:
    name = "autograd"
    to_host = staticmethod(pack_torch)

    def __init__(self, problem: Problem) -> None:
        self.problem = problem
        self.data = TorchData(problem)
        self.params = {k: self.data.tensor(v).requires_grad_() for k, v in problem.init.items()}
        with torch.no_grad():
            self.state = problem.optimizer.init_state(self._values(), torch)
        self.loss_fn = problem.loss.torch_loss()

    def _values(self) -> dict[str, torch.Tensor]:
        return {k: p.detach() for k, p in self.params.items()}

    def steps(self, first: int, last: int) -> Iterator[StepRecord]:
        model, rule = self.problem.model, self.problem.optimizer
        for step in range(first, last + 1):
            x, y = self.data.batch(step)
            loss = self.loss_fn(model.forward(self.params, x, torch), y)
            loss.backward()
            grads = {k: p.grad.clone() for k, p in self.params.items()}
            with torch.no_grad():
                new, self.state = rule.update(self._values(), grads, self.state, torch)
                for k, p in self.params.items():
                    p.copy_(new[k])
                    p.grad.zero_()
            yield StepRecord(step, loss.detach(), rule.lr, new, grads)
