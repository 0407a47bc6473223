"""The autograd loop: leaf tensors with requires_grad, loss.backward(), the hand-written update
rule applied under torch.no_grad(), and gradients zeroed by hand (they accumulate otherwise)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from runner.loops import (
    GRAD_NORM_BEFORE_CLIP,
    NO_EXTRAS,
    VAL_LOSS,
    Problem,
    StepRecord,
    follow_schedule,
    job_slice,
    load_job_slice,
    manual_update,
)
from runner.loops.torch_common import TorchData, pack_torch
from runner.losses import torch_job_losses


class AutogradLoop:
    name = "autograd"
    backend = "torch"
    to_host = staticmethod(pack_torch)

    def __init__(self, problem: Problem) -> None:
        self.problem = problem
        self.data = TorchData(problem)
        jobs = problem.jobs
        # leaves of (K, *shape), or (*shape) for one job: every job starts from the same values
        self.params = {
            n: self.data.tensor(
                v if jobs == 1 else np.repeat(np.asarray(v)[None], jobs, 0)
            ).requires_grad_()
            for n, v in problem.init.items()
        }
        shapes = {n: np.shape(v) for n, v in problem.init.items()}
        self.schedule, self.rule = manual_update(problem, shapes)
        with torch.no_grad():
            self.opt_state = self.rule.init_state(self._values(), torch)
        # One job: the loss as a run alone computes it. K jobs: per-sample losses averaged per
        # job, (K,) losses whose sum has each job's own gradient in its row.
        self.loss_fn = problem.loss.torch_loss()
        if jobs > 1:
            self.loss_fn.reduction = "none"

    def _values(self) -> dict[str, torch.Tensor]:
        return {k: p.detach() for k, p in self.params.items()}

    def steps(self, first: int, last: int) -> Iterator[StepRecord]:
        records = self._steps(first, last)
        if self.schedule is None:
            return records
        return follow_schedule(records, self.schedule, self.problem.monitor)

    def _steps(self, first: int, last: int) -> Iterator[StepRecord]:
        model, rule, data = self.problem.model, self.rule, self.data
        full_batch, lrs, jobs = data.batches.full_batch, self.problem.lrs, self.problem.jobs
        accumulate, clip = self.problem.accumulate, self.problem.clip
        x, y = model.inputs(data.x), data.y
        extras = NO_EXTRAS
        classifies = self.problem.classifies
        for step in range(first, last + 1):
            if accumulate == 1:
                if not full_batch:
                    x, y = data.batch(step)
                    x = model.inputs(x)
                loss, right = self._backward(x, y)
            else:
                # As seed notebooks 001/004 show: .grad is not zeroed between the backward
                # calls, so it sums the micro-batches' gradients of loss / accumulate: their mean.
                loss, rights = None, []
                for number in self.problem.micro_batches(step):
                    x, y = data.batch(number)
                    part, right = self._backward(model.inputs(x), y, accumulate)
                    loss = part if loss is None else loss + part
                    rights.append(right)
                right = sum(rights) / accumulate if classifies else None
            grads = {k: p.grad.clone() for k, p in self.params.items()}
            if clip is not None:
                grads, norm = clip.clip(grads, torch, jobs > 1)
                extras = {GRAD_NORM_BEFORE_CLIP: norm}
            val_pred = None
            if data.val_x is not None:
                val_loss, val_pred = self._val_loss()
                extras = {**extras, VAL_LOSS: val_loss}
            if classifies:
                extras = self.problem.with_accuracy(extras, right, val_pred, data.val_y, torch)
            with torch.no_grad():
                # The leaves themselves: under no_grad the rule's arithmetic records nothing,
                # and it returns new tensors, never its inputs (every parameter has a gradient).
                new, self.opt_state = rule.update(self.params, grads, self.opt_state, torch)
                for k, p in self.params.items():
                    p.copy_(new[k])
                    p.grad.zero_()
            yield StepRecord(step, loss, lrs, new, grads, extras)

    @torch.no_grad()
    def _val_loss(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss on the held-out rows, without a graph, at the parameters before the update;
        and the predictions it was taken of."""
        model, data, jobs = self.problem.model, self.data, self.problem.jobs
        pred = model.forward(self.params, model.inputs(data.val_x), torch)
        if jobs == 1:
            return self.loss_fn(pred, data.val_y), pred
        return torch_job_losses(self.loss_fn, pred, data.val_y), pred

    def _backward(
        self, x: torch.Tensor, y: torch.Tensor, parts: int = 1
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Forward and backward of one batch, adding its gradients into .grad; its loss,
        detached, and for a classification loss its accuracy (else None). With `parts` > 1 the
        loss is divided by it first (one micro-batch's share of an accumulated step), as a
        torch user scales it."""
        jobs, loss_fn = self.problem.jobs, self.loss_fn
        pred = self.problem.model.forward(self.params, x, torch)  # (K, N), or (N,) for one job
        if jobs == 1:
            loss = loss_fn(pred, y)
            if parts > 1:
                loss = loss / parts
            loss.backward()
        else:
            loss = torch_job_losses(loss_fn, pred, y)  # (K,)
            if parts > 1:
                loss = loss / parts
            loss.sum().backward()  # the sum has each job's own gradient in its row
        right = None
        if self.problem.classifies:
            right = self.problem.loss.accuracy(pred.detach(), y, torch)
        return loss.detach(), right

    def state(self, job: int) -> dict:
        """One job's parameters and optimizer state after the last step."""
        if self.problem.jobs == 1:
            params = {k: p.detach().clone() for k, p in self.params.items()}
            state = {"params": params, "optimizer": self.opt_state}
        else:
            params = {k: p.detach()[job].clone() for k, p in self.params.items()}
            optimizer = job_slice(self.opt_state, job, lambda a: a[job].clone())
            state = {"params": params, "optimizer": optimizer}
        if self.schedule is not None:
            state["scheduler"] = self.schedule.state(job)
        return state

    def load_state(self, job: int, state: dict) -> None:
        one = self.problem.jobs == 1
        if self.schedule is not None:
            self.schedule.load_state(job, state["scheduler"])
        with torch.no_grad():
            for k, p in self.params.items():
                (p if one else p[job]).copy_(state["params"][k])
        if one:
            self.opt_state = state["optimizer"]
        else:
            self.opt_state = load_job_slice(self.opt_state, job, state["optimizer"], torch.clone)
