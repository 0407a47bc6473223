"""The optim loop: an nn.Module, a torch.nn loss and a torch.optim optimizer.

Each step is the loop a user writes: zero_grad, forward, loss, backward, step. LBFGS, which
evaluates the loss several times per step, steps through `optimizer.step(closure)` instead, and
its step's loss and gradients are those of the closure's first evaluation.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from runner.loops import Problem, StepRecord
from runner.loops.torch_common import TorchData, pack_torch, step_or_overflow


class OptimLoop:
    name = "optim"
    backend = "torch"
    to_host = staticmethod(pack_torch)

    def __init__(self, problem: Problem) -> None:
        # The module's output is (N, 1), so the targets are kept as (N, 1) too.
        self.data = TorchData(problem, column_targets=True)
        self.module = problem.model.module(
            {k: self.data.tensor(v) for k, v in problem.init.items()}
        )
        self.named = dict(self.module.named_parameters())
        assert list(self.named) == list(problem.init), "module parameters out of order"
        self.optimizer = problem.optimizer.torch_optimizer(self.module.parameters())
        self.loss_fn = problem.loss.torch_loss()
        # LBFGS evaluates the loss several times per step, so it needs step(closure). Every
        # other optimizer would call the closure once, first thing: those run the plain loop.
        self.needs_closure = isinstance(self.optimizer, torch.optim.LBFGS)

    def steps(self, first: int, last: int) -> Iterator[StepRecord]:
        module, loss_fn, optimizer, data = self.module, self.loss_fn, self.optimizer, self.data
        full_batch, group = data.batches.full_batch, optimizer.param_groups[0]
        x, y = data.x, data.y
        for step in range(first, last + 1):
            if not full_batch:
                x, y = data.batch(step)
            if self.needs_closure:
                loss, grads = self._step_with_closure(x, y)
            else:
                # set_to_none: each backward makes new gradient tensors and the optimizer only
                # reads them, so the record can keep them as they are, without a copy.
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(module(x), y)
                loss.backward()
                grads = {k: p.grad for k, p in self.named.items()}
                step_or_overflow(optimizer, self.named.values())
                loss = loss.detach()
            params = {k: p.detach().clone() for k, p in self.named.items()}
            yield StepRecord(step, loss, group["lr"], params, grads)

    def _step_with_closure(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """One optimizer.step(closure); the loss and gradients of the closure's first call."""
        first_eval: list = []

        def closure() -> torch.Tensor:
            self.optimizer.zero_grad()
            loss = self.loss_fn(self.module(x), y)
            loss.backward()
            if not first_eval:
                grads = {k: p.grad.detach().clone() for k, p in self.named.items()}
                first_eval.append((loss.detach(), grads))
            return loss

        self.optimizer.step(closure)
        return first_eval[0]

    def state(self) -> dict:
        """Parameters and torch.optim state after the last step."""
        params = {k: p.detach().clone() for k, p in self.named.items()}
        return {"params": params, "optimizer": self.optimizer.state_dict()}

    def load_state(self, state: dict) -> None:
        with torch.no_grad():
            for k, p in self.named.items():
                p.copy_(state["params"][k])
        self.optimizer.load_state_dict(state["optimizer"])
