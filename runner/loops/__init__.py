"""The three training loops and what they share.

A loop is built from a `Problem` (plain arrays and small specs, no config) and yields one
`StepRecord` per optimizer update. Loops do no I/O, no logging and no host syncs of their own:
the runner decides when records move to the host and where they go. Import a loop from its own
module (`runner.loops.numpy_loop`, ...): this package imports no torch.

Every loop trains K jobs at once: jobs that share the problem and differ only in per-job
hyperparameters (`Problem.lrs`, shape (K,)). Parameters, losses and gradients carry a leading
job axis of K; a single run is K = 1, and there the axis is left out: one job computes exactly
what a run alone computes, at its speed (the axis costs a run of these tiny models 10-40% per
step). The update rules are elementwise, so a job's numbers do not depend on the others.

Under a learning-rate schedule (`Problem.schedule`) the rates change from step to step: the
manual loops step a `runner.schedules.ManualSchedule`, the optim loop torch's schedulers, and each
record carries the rates its step used. Without one a loop does no per-step schedule work at all.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, NamedTuple, Protocol

import numpy as np

from runner.data import BatchSchedule
from runner.optim_rules import for_jobs

Array = Any  # numpy.ndarray or torch.Tensor

NO_EXTRAS: Mapping[str, Array] = MappingProxyType({})

# The extra per-job values a feature adds to each StepRecord (see Problem.extras).
GRAD_NORM_BEFORE_CLIP = "grad_norm_before_clip"
VAL_LOSS = "val_loss"  # the loss on the held-out rows, at the parameters `loss` was taken at
# classification losses (runner.losses: `classifies`): the fraction of the step's (or the
# held-out) rows classified right, at the parameters `loss` was taken at
ACCURACY = "accuracy"
VAL_ACCURACY = "val_accuracy"


class StepRecord(NamedTuple):
    """One optimizer update of every job. Values stay in the loop's own arrays (on its device).

    loss (K,): at the parameters before this update; lr (K,): the rate each job used (float64
    on the host: an array, or a tuple of floats); params (K, *shape): after the update; grads
    (K, *shape): the ones it used.
    extras: more per-job scalars (K,) that features add (Problem.extras names them, in order),
    e.g. the gradient norm before clipping; empty when none is on.
    With one job (K = 1), loss, params, grads and extras are that job's own, without the job
    axis. A NamedTuple: one is made every step, and it is the cheapest immutable record Python
    has.
    """

    step: int
    loss: Array
    lr: np.ndarray | tuple[float, ...]
    params: Mapping[str, Array]
    grads: Mapping[str, Array]
    extras: Mapping[str, Array] = NO_EXTRAS


@dataclass(frozen=True)
class Problem:
    """Everything a loop needs, built once by the runner and shared by all loops."""

    x: np.ndarray  # (N, F) in `dtype`
    # (N,) or (N, O) in `dtype`; class ids (loss.class_targets): (N,) int64
    y: np.ndarray
    init: Mapping[str, np.ndarray]  # initial parameters in `dtype`, drawn once, the same per job
    model: Any  # runner.models.ScalarModel | LinearModel | MLPModel
    loss: Any  # runner.losses.MSE | L1 | Huber | BCEWithLogits | CrossEntropy
    optimizer: Any  # a rule from runner.optim_rules, with job 0's hyperparameters
    batches: BatchSchedule
    dtype: str  # "float32" | "float64"
    device: str  # resolved: "cpu", "cuda", "mps"
    lrs: np.ndarray  # (K,) float64: each job's learning rate (its base rate, under a schedule)
    val_x: np.ndarray | None = None  # held-out rows (data.val_fraction), like x and y
    val_y: np.ndarray | None = None
    clip: Any = None  # runner.clipping.ClipNorm | ClipValue, applied before the update; or None
    accumulate: int = 1  # mini-batches whose mean gradient makes one optimizer step
    # a resolved learning-rate schedule (runner.schedules), or None: constant rates
    schedule: Any = None
    monitor: str = "loss"  # train.early_stop.monitor: `loss` or an extra (`val_loss`)

    @property
    def jobs(self) -> int:
        """K, the number of jobs trained side by side."""
        return len(self.lrs)

    @property
    def extras(self) -> tuple[str, ...]:
        """The names of the per-job scalars every StepRecord of this problem carries in
        `extras`, in this order. Host rows append them after the gradients, and metrics.csv
        and TensorBoard after `grad_norm` (runner.metrics.Layout), so a run with none of these
        features on writes exactly the columns it always did. A feature that logs a value of
        its own adds its name here and its value to the records."""
        names = (GRAD_NORM_BEFORE_CLIP,) if self.clip is not None else ()
        names += (VAL_LOSS,) if self.val_x is not None else ()
        if self.classifies:
            names += (ACCURACY,) + ((VAL_ACCURACY,) if self.val_x is not None else ())
        return names

    @property
    def classifies(self) -> bool:
        """Whether the loss classifies (bce_logits, cross_entropy): its records carry
        `accuracy` (and `val_accuracy`)."""
        return getattr(self.loss, "classifies", False)

    def with_accuracy(
        self, extras: Mapping[str, Array], accuracy: Array, val_pred: Array, val_y: Array, xp: Any
    ) -> dict[str, Array]:
        """`extras` followed by the step's accuracy and, with held-out rows (their predictions
        `val_pred`, else None), theirs against `val_y`: the order of `extras` above."""
        out = {**extras, ACCURACY: accuracy}
        if val_pred is not None:
            out[VAL_ACCURACY] = self.loss.accuracy(val_pred, val_y, xp)
        return out

    def micro_batches(self, step: int) -> range:
        """The batch numbers (1-based, in runner.data.BatchSchedule's order) whose gradients
        step `step` averages: `accumulate` consecutive ones, so any accumulate walks the data
        in the same order. A checkpoint after step t continues at batch t * accumulate + 1:
        the position follows from the step, with no state of its own to save."""
        return range((step - 1) * self.accumulate + 1, step * self.accumulate + 1)


class Loop(Protocol):
    name: str
    backend: str  # "numpy" | "torch": the kind of arrays in its records and state

    def __init__(self, problem: Problem) -> None: ...

    def steps(self, first: int, last: int) -> Iterator[StepRecord]:
        """Yields the records of steps first..last (1-based, inclusive)."""
        ...

    @staticmethod
    def to_host(records: list[StepRecord]) -> np.ndarray:
        """Packs T records into rows [loss, lr, params..., grads..., extras...]: (K, T, D)
        float64."""
        ...

    def state(self, job: int) -> dict:
        """{"params": ..., "optimizer": ...} of one job after the last step, for its checkpoint:
        the same tree as a run of that job alone."""
        ...

    def load_state(self, job: int, state: dict) -> None:
        """Continues one job from a state() taken earlier (same problem)."""
        ...


def manual_update(problem: Problem, shapes: Mapping[str, tuple[int, ...]]) -> tuple[Any, Any]:
    """The manual loops' (schedule, update rule) for `problem`: without a schedule, (None, the
    rule at each job's rate); with one, its runner.schedules.ManualSchedule, which holds the
    rule at its current rates."""
    if problem.schedule is None:
        return None, for_jobs(problem.optimizer, problem.lrs, shapes)
    from runner.schedules import ManualSchedule

    schedule = ManualSchedule(problem.schedule, problem.lrs, problem.optimizer, shapes)
    return schedule, schedule.rule


def monitored(record: StepRecord, monitor: str) -> Array:
    """The value train.early_stop.monitor names in `record`: its loss, or one of its extras
    (val_loss): what scheduler=plateau watches."""
    return record.loss if monitor == "loss" else record.extras[monitor]


def follow_schedule(
    records: Iterator[StepRecord], schedule: Any, monitor: str
) -> Iterator[StepRecord]:
    """`records` with the rates their steps used: `schedule` (a ManualSchedule) steps after each
    step, with its `monitor` value, before the loop computes the next one at its new rates."""
    for r in records:
        rates = schedule.rates
        schedule.step(monitored(r, monitor))
        yield StepRecord(r.step, r.loss, rates, r.params, r.grads, r.extras)


def pack_rows(records: list[StepRecord], xp: Any, to_numpy: Any) -> np.ndarray:
    """Host rows [loss, lr, params..., grads..., extras...] of records holding `xp` arrays (see
    Loop.to_host): one stack per parameter across the records, one transfer for them all."""
    t, k = len(records), len(records[0].lr)
    names = list(records[0].params)
    # (T, K, ...) whether or not the records carry the job axis (K = 1 leaves it out)
    blocks = [xp.stack([r.loss for r in records]).reshape(t, k, 1)]
    blocks += [xp.stack([r.params[n] for r in records]).reshape(t, k, -1) for n in names]
    blocks += [xp.stack([r.grads[n] for r in records]).reshape(t, k, -1) for n in names]
    blocks += [xp.stack([r.extras[n] for r in records]).reshape(t, k, 1) for n in records[0].extras]
    values = to_numpy(xp.concatenate(blocks, axis=2))  # (T, K, 1 + 2P + E), the loop's dtype
    rows = np.empty((k, t, values.shape[2] + 1))
    rows[..., 0] = values[..., 0].T
    rows[..., 1] = np.array([r.lr for r in records], dtype=np.float64).T
    rows[..., 2:] = values[..., 1:].transpose(1, 0, 2)
    return rows


def pack_numpy(records: list[StepRecord]) -> np.ndarray:
    """Host rows of records whose values are NumPy arrays."""
    return pack_rows(records, np, np.asarray)


def job_slice(opt_state: dict, job: int, take) -> dict:
    """One job's part of a rule's state: the step count as it is, each buffer's row `job`."""
    return {
        name: {k: (v if k == "step" else take(v)) for k, v in buffers.items()}
        for name, buffers in opt_state.items()
    }


def load_job_slice(opt_state: dict, job: int, saved: dict, copy) -> dict:
    """`opt_state` with job `job`'s buffers (and the shared step count) from `saved`."""
    out = {}
    for name, buffers in opt_state.items():
        out[name] = {}
        for k, v in buffers.items():
            if k == "step":
                out[name][k] = int(saved[name][k])
            else:
                v = copy(v)
                v[job] = saved[name][k]
                out[name][k] = v
    return out
