"""The optim loop: an nn.Module, a torch.nn loss and a torch.optim optimizer.

Every optimizer steps through `optimizer.step(closure)`, so LBFGS (which re-evaluates the loss)
uses the same code; a step's loss and gradients are those of the closure's first evaluation.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from runner.loops import Problem, StepRecord
from runner.loops.torch_common import TorchData, pack_torch


class OptimLoop:
    name = "optim"
    backend = "torch"
    to_host = staticmethod(pack_torch)

    def __init__(self, problem: Problem) -> None:
        self.data = TorchData(problem)
        self.module = problem.model.module(
            {k: self.data.tensor(v) for k, v in problem.init.items()}
        )
        self.named = dict(self.module.named_parameters())
        assert list(self.named) == list(problem.init), "module parameters out of order"
        self.optimizer = problem.optimizer.torch_optimizer(self.module.parameters())
        self.loss_fn = problem.loss.torch_loss()

    def steps(self, first: int, last: int) -> Iterator[StepRecord]:
        for step in range(first, last + 1):
            x, y = self.data.batch(step)
            first_eval: list = []

            def closure(x=x, y=y, first_eval=first_eval) -> torch.Tensor:
                self.optimizer.zero_grad()
                loss = self.loss_fn(self.module(x), y)
                loss.backward()
                if not first_eval:
                    grads = {k: p.grad.detach().clone() for k, p in self.named.items()}
                    first_eval.append((loss.detach(), grads))
                return loss

            self.optimizer.step(closure)
            loss, grads = first_eval[0]
            params = {k: p.detach().clone() for k, p in self.named.items()}
            yield StepRecord(step, loss, self.optimizer.param_groups[0]["lr"], params, grads)

    def state(self) -> dict:
        """Parameters and torch.optim state after the last step."""
        params = {k: p.detach().clone() for k, p in self.named.items()}
        return {"params": params, "optimizer": self.optimizer.state_dict()}

    def load_state(self, state: dict) -> None:
        with torch.no_grad():
            for k, p in self.named.items():
                p.copy_(state["params"][k])
        self.optimizer.load_state_dict(state["optimizer"])
