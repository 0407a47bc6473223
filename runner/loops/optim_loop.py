"""The optim loop: an nn.Module, a torch.nn loss and a torch.optim optimizer.

Each step is the loop a user writes: zero_grad, forward, loss, backward, step. LBFGS, which
evaluates the loss several times per step, steps through `optimizer.step(closure)` instead, and
its step's loss and gradients are those of the closure's first evaluation. With
train.accumulate = A, zero_grad comes once every A micro-batches, each backward of loss / A
adding into .grad; with clipping, torch.nn.utils clips .grad just before optimizer.step().

K jobs keep K modules and K optimizers, each job's own, at its own rate. Their parameters are
views of the rows of one (K, *shape) tensor per parameter, so one forward of the module over
those rows (torch.func.vmap of functional_call) and one backward serve every job; then each
optimizer steps its job's rows in place. A job whose step raises fails alone, as its run would.

Under a learning-rate schedule each job's optimizer has its torch.optim.lr_scheduler scheduler,
stepped after it (ReduceLROnPlateau with the job's loss of that step); a record's `lr` is each
job's `param_groups[0]["lr"]` at its step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import torch
from torch import nn

from runner.loops import (
    ACCURACY,
    GRAD_NORM_BEFORE_CLIP,
    NO_EXTRAS,
    VAL_LOSS,
    Problem,
    StepRecord,
    monitored,
)
from runner.loops.torch_common import TorchData, pack_torch, step_or_overflow
from runner.losses import torch_job_losses


class OptimLoop:
    name = "optim"
    backend = "torch"
    to_host = staticmethod(pack_torch)

    def __init__(self, problem: Problem) -> None:
        self.problem = problem
        # A one-output module's output is (N, 1), so such targets are kept as (N, 1) too.
        self.data = TorchData(problem, column_targets=True)
        init = {k: self.data.tensor(v) for k, v in problem.init.items()}
        jobs = problem.jobs
        self.modules = [problem.model.module(init) for _ in range(jobs)]
        if jobs == 1:  # the module's own parameters: the job axis is left out
            self.stacked = {k: p.detach() for k, p in self.modules[0].named_parameters()}
        else:
            self.stacked = {
                k: torch.stack([m.get_parameter(k).detach() for m in self.modules]).requires_grad_()
                for k in init
            }
            for j, module in enumerate(self.modules):
                for k, rows in self.stacked.items():
                    _set_parameter(module, k, nn.Parameter(rows.detach()[j]))
        self.named = [dict(m.named_parameters()) for m in self.modules]
        assert list(self.named[0]) == list(problem.init), "module parameters out of order"
        self.optimizers = [
            dataclasses.replace(problem.optimizer, lr=float(lr)).torch_optimizer(m.parameters())
            for m, lr in zip(self.modules, problem.lrs, strict=True)
        ]
        self.loss_fn = problem.loss.torch_loss()
        if jobs > 1:
            from torch.func import functional_call, vmap

            module = self.modules[0]
            # the module's forward over every job's rows of the stacked parameters: (K, N, O)
            self.forward_jobs = vmap(lambda params, x: functional_call(module, params, (x,)),
                                     in_dims=(0, None))  # fmt: skip
            self.per_sample_loss = problem.loss.torch_loss()
            self.per_sample_loss.reduction = "none"
        # LBFGS evaluates the loss several times per step, so it needs step(closure). Every
        # other optimizer would call the closure once, first thing: those run the plain loop.
        self.needs_closure = isinstance(self.optimizers[0], torch.optim.LBFGS)
        assert jobs == 1 or not self.needs_closure, "LBFGS evaluates each job's loss apart"
        self.failed: dict[int, tuple[int, BaseException]] = {}  # job -> (step, what it raised)
        # One torch.optim.lr_scheduler scheduler per job's optimizer, stepped after it.
        schedule = problem.schedule
        self.schedulers = (
            None if schedule is None else [schedule.torch_scheduler(o) for o in self.optimizers]
        )

    def steps(self, first: int, last: int) -> Iterator[StepRecord]:
        records = self._steps(first, last)
        return records if self.schedulers is None else self._scheduled(records)

    def _scheduled(self, records: Iterator[StepRecord]) -> Iterator[StepRecord]:
        """`records` with each job's rate at its step, every job's scheduler stepping after its
        optimizer (ReduceLROnPlateau with the job's loss of that step)."""
        from torch.optim.lr_scheduler import ReduceLROnPlateau

        plateau = isinstance(self.schedulers[0], ReduceLROnPlateau)
        jobs, monitor = self.problem.jobs, self.problem.monitor
        for record in records:
            rates = tuple([o.param_groups[0]["lr"] for o in self.optimizers])
            # plateau watches train.early_stop.monitor: the step's loss, or its val_loss
            losses = monitored(record, monitor).reshape(jobs).tolist() if plateau else None
            for j, scheduler in enumerate(self.schedulers):
                if j in self.failed:
                    continue
                if plateau:
                    scheduler.step(losses[j])
                else:
                    scheduler.step()
            yield StepRecord(record.step, record.loss, rates, record.params, record.grads,
                             record.extras)  # fmt: skip

    def _steps(self, first: int, last: int) -> Iterator[StepRecord]:
        step_jobs = self._step_one if self.problem.jobs == 1 else self._step_many
        data, lrs, accumulate = self.data, self.problem.lrs, self.problem.accumulate
        full_batch = data.batches.full_batch
        batches = [(data.x, data.y)]
        for step in range(first, last + 1):
            if not full_batch:
                batches = [data.batch(n) for n in self.problem.micro_batches(step)]
            # before the update: the held-out loss and the predictions it was taken of
            val_loss, val_pred = (None, None) if data.val_x is None else self._val_loss()
            loss, grads, extras = step_jobs(step, batches, accumulate)
            if val_loss is not None:
                extras = {**extras, VAL_LOSS: val_loss}
            if self.problem.classifies:
                right = extras.pop(ACCURACY)  # the step's, kept apart until the order is known
                extras = self.problem.with_accuracy(extras, right, val_pred, data.val_y, torch)
            params = {k: p.detach().clone() for k, p in self.stacked.items()}
            yield StepRecord(step, loss, lrs, params, grads, extras)

    @torch.no_grad()
    def _val_loss(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss on the held-out rows, without a graph: (K,), or a scalar for one job; and
        the predictions it was taken of."""
        data = self.data
        if self.problem.jobs == 1:
            pred = self.modules[0](data.val_x)
            return self.loss_fn(pred, data.val_y), pred
        preds = self.forward_jobs(self.stacked, data.val_x)
        return torch_job_losses(self.per_sample_loss, preds, data.val_y), preds

    def _accuracy(self, rights: list, parts: int) -> dict:
        """{ACCURACY: the micro-batches' mean accuracy} for a classification loss, else {}."""
        return {ACCURACY: sum(rights) / parts} if self.problem.classifies else {}

    def _step_one(self, step: int, batches: list, parts: int) -> tuple[torch.Tensor, dict, dict]:
        """One job: the plain user loop on its module."""
        module, optimizer, named = self.modules[0], self.optimizers[0], self.named[0]
        if self.needs_closure:
            return self._step_with_closure(*batches[0])
        # set_to_none: each step's first backward makes new gradient tensors, the next ones
        # add into them, and the optimizer only reads them, so the record can keep them as
        # they are, without a copy.
        optimizer.zero_grad(set_to_none=True)
        loss, rights, classifies = None, [], self.problem.classifies
        for x, y in batches:
            out = module(x)
            part = self.loss_fn(out, y)
            if parts > 1:
                part = part / parts
            part.backward()
            loss = part.detach() if loss is None else loss + part.detach()
            if classifies:
                rights.append(self.problem.loss.accuracy(out.detach(), y, torch))
        extras = NO_EXTRAS
        if self.problem.clip is not None:
            extras = {GRAD_NORM_BEFORE_CLIP: self.problem.clip.clip_torch(named.values())}
        if classifies:
            extras = {**extras, **self._accuracy(rights, parts)}
        grads = {k: p.grad for k, p in named.items()}
        self._step(0, step, optimizer, named)
        return loss, grads, extras

    def _step_many(self, step: int, batches: list, parts: int) -> tuple[torch.Tensor, dict, dict]:
        """K jobs: one forward of the module over every job's parameters, one backward (per
        micro-batch), then every job's optimizer steps its rows."""
        for rows in self.stacked.values():
            rows.grad = None
        loss, rights, classifies = None, [], self.problem.classifies
        for x, y in batches:
            preds = self.forward_jobs(self.stacked, x)  # (K, N, O)
            # (K,): each job's mean over its elements; the sum's gradient is each job's own
            part = torch_job_losses(self.per_sample_loss, preds, y)
            if parts > 1:
                part = part / parts
            part.sum().backward()
            loss = part.detach() if loss is None else loss + part.detach()
            if classifies:
                rights.append(self.problem.loss.accuracy(preds.detach(), y, torch))
        clip, norms = self.problem.clip, []
        for j, (optimizer, named) in enumerate(zip(self.optimizers, self.named, strict=True)):
            if clip is None and j in self.failed:
                continue
            for k, p in named.items():
                p.grad = self.stacked[k].grad[j]
            if clip is not None:  # in place, on views of the job's rows: the job's own norm
                norms.append(clip.clip_torch(named.values()))
            if j not in self.failed:
                self._step(j, step, optimizer, named)
        extras = NO_EXTRAS if clip is None else {GRAD_NORM_BEFORE_CLIP: torch.stack(norms)}
        if classifies:
            extras = {**extras, **self._accuracy(rights, parts)}
        return loss, {k: rows.grad for k, rows in self.stacked.items()}, extras

    def _step(self, job: int, step: int, optimizer: torch.optim.Optimizer, named: dict) -> None:
        try:
            step_or_overflow(optimizer, named.values())  # an overflow: this job diverges
        except Exception as err:
            self.failed[job] = (step, err)

    def _step_with_closure(
        self, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, dict, dict]:
        """One optimizer.step(closure); the loss and gradients of the closure's first call
        (clipped in the closure, where a torch user clips them for LBFGS)."""
        first_eval: list = []
        module, optimizer, named = self.modules[0], self.optimizers[0], self.named[0]
        clip = self.problem.clip

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            out = module(x)
            loss = self.loss_fn(out, y)
            loss.backward()
            extras = NO_EXTRAS
            if clip is not None:
                extras = {GRAD_NORM_BEFORE_CLIP: clip.clip_torch(named.values())}
            if not first_eval and self.problem.classifies:
                accuracy = self.problem.loss.accuracy(out.detach(), y, torch)
                extras = {**extras, ACCURACY: accuracy}
            if not first_eval:
                grads = {k: p.grad.detach().clone() for k, p in named.items()}
                first_eval.append((loss.detach(), grads, extras))
            return loss

        optimizer.step(closure)
        return first_eval[0]

    def state(self, job: int) -> dict:
        """One job's parameters and torch.optim state after the last step."""
        params = {k: p.detach().clone() for k, p in self.named[job].items()}
        state = {"params": params, "optimizer": self.optimizers[job].state_dict()}
        if self.schedulers is not None:
            state["scheduler"] = self.schedulers[job].state_dict()
        return state

    def load_state(self, job: int, state: dict) -> None:
        with torch.no_grad():
            for k, p in self.named[job].items():
                p.copy_(state["params"][k])
        # The scheduler was built with the optimizer, before this load: as torch asks.
        self.optimizers[job].load_state_dict(state["optimizer"])
        if self.schedulers is not None:
            self.schedulers[job].load_state_dict(state["scheduler"])


def _set_parameter(module: nn.Module, name: str, value: nn.Parameter) -> None:
    owner, _, leaf = name.rpartition(".")
    setattr(module.get_submodule(owner) if owner else module, leaf, value)
