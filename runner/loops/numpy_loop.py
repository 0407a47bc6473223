"""The NumPy loop: hand-derived gradients and the hand-written update rules. Never imports torch."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

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
    pack_numpy,
)


class NumpyLoop:
    name = "numpy"
    backend = "numpy"
    to_host = staticmethod(pack_numpy)

    def __init__(self, problem: Problem) -> None:
        self.problem = problem
        jobs, dtype = problem.jobs, problem.dtype
        # every job starts from the same values: (K, *shape), or (*shape) for one job
        self.params = {
            n: np.array(v, dtype=dtype)
            if jobs == 1
            else np.repeat(np.asarray(v, dtype)[None], jobs, 0)
            for n, v in problem.init.items()
        }
        shapes = {n: np.shape(v) for n, v in problem.init.items()}
        self.schedule, self.rule = manual_update(problem, shapes)
        self.opt_state = self.rule.init_state(self.params, np)

    def steps(self, first: int, last: int) -> Iterator[StepRecord]:
        records = self._steps(first, last)
        if self.schedule is None:
            return records
        return follow_schedule(records, self.schedule, self.problem.monitor)

    def _steps(self, first: int, last: int) -> Iterator[StepRecord]:
        p = self.problem
        model, loss_fn, rule, batches = p.model, p.loss, self.rule, p.batches
        full_batch, lrs, clip, jobs_axis = batches.full_batch, p.lrs, p.clip, p.jobs > 1
        accumulate = p.accumulate
        x, y = model.inputs(p.x), p.y
        val_x = None if p.val_x is None else model.inputs(p.val_x)
        extras = NO_EXTRAS
        accuracy = loss_fn.accuracy if p.classifies else None
        for step in range(first, last + 1):
            if accumulate == 1:
                if not full_batch:
                    idx = batches.indices(step)
                    x, y = model.inputs(p.x[idx]), p.y[idx]
                # written out (as in _accumulated): a call costs 2% of a step this small
                pred = model.forward(self.params, x, np)  # (K, N), or (N,) for one job
                loss, dpred = loss_fn.value_and_grad(pred, y)  # (K,), (K, N)
                # Every array here stays in the run's dtype (NumPy 2's promotion rules: Python
                # scalars never widen an array), which tests/test_gradients.py checks.
                grads = model.backward(self.params, x, dpred)
                if accuracy is not None:
                    right = accuracy(pred, y, np)
            else:
                loss, grads, right = self._accumulated(step)
            if clip is not None:
                grads, norm = clip.clip(grads, np, jobs_axis)
                extras = {GRAD_NORM_BEFORE_CLIP: norm}
            val_pred = None
            if val_x is not None:  # at the parameters `loss` was taken at, before the update
                val_pred = model.forward(self.params, val_x, np)
                extras = {**extras, VAL_LOSS: loss_fn.value_and_grad(val_pred, p.val_y)[0]}
            if accuracy is not None:
                extras = p.with_accuracy(extras, right, val_pred, p.val_y, np)
            self.params, self.opt_state = rule.update(self.params, grads, self.opt_state, np)
            yield StepRecord(step, loss, lrs, self.params, grads, extras)

    def _accumulated(self, step: int) -> tuple:
        """The mean loss and mean gradients of the step's micro-batches, summed in batch order
        as autograd accumulates them into .grad: each batch's share of loss / accumulate; and
        for a classification loss their mean accuracy (else None)."""
        p = self.problem
        model, parts = p.model, p.accumulate
        loss = grads = None
        right = [] if p.classifies else None
        for number in p.micro_batches(step):
            idx = p.batches.indices(number)
            x, y = model.inputs(p.x[idx]), p.y[idx]
            pred = model.forward(self.params, x, np)
            if right is not None:
                right.append(p.loss.accuracy(pred, y, np))
            part, dpred = p.loss.value_and_grad(pred, y)
            # What backward of loss / parts computes: dL/dloss = 1/parts in the dtype, times
            # the loss's own gradient (torch's MSE backward multiplies in this order).
            part, dpred = part / parts, dpred * (1.0 / parts)
            part_grads = model.backward(self.params, x, dpred)
            if grads is None:
                loss, grads = part, part_grads
            else:
                loss = loss + part
                grads = {n: grads[n] + g for n, g in part_grads.items()}
        return loss, grads, None if right is None else sum(right) / parts

    def state(self, job: int) -> dict:
        """One job's parameters and optimizer state after the last step (arrays are never
        mutated, so views are safe)."""
        if self.problem.jobs == 1:
            state = {"params": dict(self.params), "optimizer": self.opt_state}
        else:
            state = {
                "params": {n: v[job] for n, v in self.params.items()},
                "optimizer": job_slice(self.opt_state, job, lambda a: a[job]),
            }
        if self.schedule is not None:
            state["scheduler"] = self.schedule.state(job)
        return state

    def load_state(self, job: int, state: dict) -> None:
        dtype = self.problem.dtype
        if self.schedule is not None:
            self.schedule.load_state(job, state["scheduler"])
        if self.problem.jobs == 1:
            self.params = {n: np.asarray(state["params"][n], dtype=dtype) for n in self.params}
            self.opt_state = state["optimizer"]
            return
        self.params = {n: v.copy() for n, v in self.params.items()}
        for n, v in self.params.items():
            v[job] = np.asarray(state["params"][n], dtype=dtype)
        self.opt_state = load_job_slice(self.opt_state, job, state["optimizer"], np.copy)
