"""The autograd loop: leaf tensors with requires_grad, loss.backward(), the hand-written update
rule applied under torch.no_grad(), and gradients zeroed by hand (they accumulate otherwise)."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from runner.loops import Problem, StepRecord
from runner.loops.torch_common import TorchData, pack_torch


class AutogradLoop:
    name = "autograd"
    backend = "torch"
    to_host = staticmethod(pack_torch)

    def __init__(self, problem: Problem) -> None:
        self.problem = problem
        self.data = TorchData(problem)
        self.params = {k: self.data.tensor(v).requires_grad_() for k, v in problem.init.items()}
        with torch.no_grad():
            self.opt_state = problem.optimizer.init_state(self._values(), torch)
        self.loss_fn = problem.loss.torch_loss()

    def _values(self) -> dict[str, torch.Tensor]:
        return {k: p.detach() for k, p in self.params.items()}

    def steps(self, first: int, last: int) -> Iterator[StepRecord]:
        model, rule, data = self.problem.model, self.problem.optimizer, self.data
        full_batch = data.batches.full_batch
        x, y = model.inputs(data.x), data.y
        for step in range(first, last + 1):
            if not full_batch:
                x, y = data.batch(step)
                x = model.inputs(x)
            loss = self.loss_fn(model.forward(self.params, x, torch), y)
            loss.backward()
            grads = {k: p.grad.clone() for k, p in self.params.items()}
            with torch.no_grad():
                # The leaves themselves: under no_grad the rule's arithmetic records nothing,
                # and it returns new tensors, never its inputs (every parameter has a gradient).
                new, self.opt_state = rule.update(self.params, grads, self.opt_state, torch)
                for k, p in self.params.items():
                    p.copy_(new[k])
                    p.grad.zero_()
            yield StepRecord(step, loss.detach(), rule.lr, new, grads)

    def state(self) -> dict:
        """Parameters and optimizer state after the last step."""
        params = {k: p.detach().clone() for k, p in self.params.items()}
        return {"params": params, "optimizer": self.opt_state}

    def load_state(self, state: dict) -> None:
        with torch.no_grad():
            for k, p in self.params.items():
                p.copy_(state["params"][k])
        self.opt_state = state["optimizer"]
