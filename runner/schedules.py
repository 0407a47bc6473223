"""Learning-rate schedules: the `scheduler` config group, one dataclass per option.

Each schedule builds torch.optim.lr_scheduler's own class for the optim loop, and computes the same
rates by hand for the numpy and autograd loops (`ManualSchedule`), written once for both: each
mirrors its torch class's chainable `get_lr` (torch 2.13) operation by operation, SequentialLR's
construction and milestones included, so the rates equal torch's to the last bit. K jobs have a
float64 (K,) array of rates, one per job, and the arithmetic is elementwise; scalar factors such
as cosines are Python floats computed with `math` as torch computes them, so each element is
what the Python float arithmetic of its own run gives. One job (K = 1) keeps a Python float.

One scheduler step follows each optimizer step: step t runs at the rate the schedule held after
step t - 1 (step 1 at the rate it set when it was built). `plateau` steps with the value that
train.early_stop.monitor names at step t: `loss`, the loss at the parameters before that step's
update (the `loss` column).

A dataclass's fields and defaults are its config schema (runner.schema). This module must never
import torch at module level: the numpy loop runs without it.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from itertools import pairwise
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from runner.optim_rules import Finding, ScheduledRule, _problems

if TYPE_CHECKING:
    import torch

Rates = Any  # a Python float (one job) or a float64 (K,) ndarray (K jobs)


# --- the options of the `scheduler` group -------------------------------------------------
class _NoStepsDependence:
    """A schedule none of whose values depends on train.steps."""

    def resolved(self, steps: int) -> Any:
        """The schedule with every value that depends on train.steps filled in: itself."""
        return self


@dataclass(frozen=True)
class NoSchedule:
    """scheduler=none: every step runs at optimizer.lr."""

    def check(self, steps: int) -> list[Finding]:
        """Returns (field, value, what is allowed) for each out-of-range setting."""
        return []

    def resolved(self, steps: int) -> None:
        """No schedule: the loops run at their constant rates, with no per-step work."""
        return None


@dataclass(frozen=True)
class Step(_NoStepsDependence):
    """torch.optim.lr_scheduler.StepLR: the rate times gamma every step_size steps."""

    step_size: int
    gamma: float = 0.1

    def check(self, steps: int) -> list[Finding]:
        """Returns (field, value, what is allowed) for each out-of-range setting."""
        return _problems(
            ("step_size", self.step_size, self.step_size >= 1, "an integer >= 1"),
            ("gamma", self.gamma, self.gamma > 0, "a number > 0"),
        )

    def torch_scheduler(self, optimizer: torch.optim.Optimizer):
        """torch's scheduler of `optimizer`."""
        from torch.optim.lr_scheduler import StepLR

        return StepLR(optimizer, step_size=self.step_size, gamma=self.gamma)

    def mirror(self, group: _Group) -> _StepLR:
        return _StepLR(group, self)


@dataclass(frozen=True)
class MultiStep(_NoStepsDependence):
    """torch.optim.lr_scheduler.MultiStepLR: the rate times gamma at each milestone step."""

    milestones: tuple[int, ...]
    gamma: float = 0.1

    def __post_init__(self) -> None:
        # Configs give a list; a tuple keeps the schedule hashable.
        object.__setattr__(self, "milestones", tuple(self.milestones))

    def check(self, steps: int) -> list[Finding]:
        """Returns (field, value, what is allowed) for each out-of-range setting."""
        ms = self.milestones
        increasing = all(m >= 1 for m in ms) and all(a < b for a, b in pairwise(ms))
        return _problems(
            ("milestones", list(ms), increasing, "a list of increasing integers >= 1"),
            ("gamma", self.gamma, self.gamma > 0, "a number > 0"),
        )

    def torch_scheduler(self, optimizer: torch.optim.Optimizer):
        """torch's scheduler of `optimizer`."""
        from torch.optim.lr_scheduler import MultiStepLR

        return MultiStepLR(optimizer, milestones=list(self.milestones), gamma=self.gamma)

    def mirror(self, group: _Group) -> _MultiStepLR:
        return _MultiStepLR(group, self)


@dataclass(frozen=True)
class Exponential(_NoStepsDependence):
    """torch.optim.lr_scheduler.ExponentialLR: the rate times gamma every step."""

    gamma: float

    def check(self, steps: int) -> list[Finding]:
        """Returns (field, value, what is allowed) for each out-of-range setting."""
        return _problems(("gamma", self.gamma, self.gamma > 0, "a number > 0"))

    def torch_scheduler(self, optimizer: torch.optim.Optimizer):
        """torch's scheduler of `optimizer`."""
        from torch.optim.lr_scheduler import ExponentialLR

        return ExponentialLR(optimizer, gamma=self.gamma)

    def mirror(self, group: _Group) -> _ExponentialLR:
        return _ExponentialLR(group, self)


@dataclass(frozen=True)
class Cosine:
    """torch.optim.lr_scheduler.CosineAnnealingLR: from the rate down to eta_min over T_max
    steps (null: train.steps), and back up over the next T_max, as torch's recursion does."""

    T_max: int | None = None
    eta_min: float = 0.0

    def check(self, steps: int) -> list[Finding]:
        """Returns (field, value, what is allowed) for each out-of-range setting."""
        t_max = self.T_max
        return _problems(
            ("T_max", t_max, t_max is None or t_max >= 1, "an integer >= 1, or null"),
            ("eta_min", self.eta_min, self.eta_min >= 0, "a number >= 0"),
        )

    def resolved(self, steps: int) -> Cosine:
        """The schedule with every value that depends on train.steps filled in."""
        return Cosine(steps if self.T_max is None else self.T_max, self.eta_min)

    def torch_scheduler(self, optimizer: torch.optim.Optimizer):
        """torch's scheduler of `optimizer`."""
        from torch.optim.lr_scheduler import CosineAnnealingLR

        return CosineAnnealingLR(optimizer, T_max=self.T_max, eta_min=self.eta_min)

    def mirror(self, group: _Group) -> _CosineAnnealingLR:
        return _CosineAnnealingLR(group, self)


@dataclass(frozen=True)
class Linear(_NoStepsDependence):
    """torch.optim.lr_scheduler.LinearLR: the rate times a factor going linearly from
    start_factor to end_factor over total_iters steps, then constant."""

    start_factor: float = 1.0 / 3
    end_factor: float = 1.0
    total_iters: int = 5

    def check(self, steps: int) -> list[Finding]:
        """Returns (field, value, what is allowed) for each out-of-range setting."""
        start, end, total = self.start_factor, self.end_factor, self.total_iters
        return _problems(
            ("start_factor", start, 0 < start <= 1, "a number in (0, 1]"),
            ("end_factor", end, 0 <= end <= 1, "a number in [0, 1]"),
            ("total_iters", total, total >= 1, "an integer >= 1"),
        )

    def torch_scheduler(self, optimizer: torch.optim.Optimizer):
        """torch's scheduler of `optimizer`."""
        from torch.optim.lr_scheduler import LinearLR

        return LinearLR(
            optimizer,
            start_factor=self.start_factor,
            end_factor=self.end_factor,
            total_iters=self.total_iters,
        )

    def mirror(self, group: _Group) -> _LinearLR:
        return _LinearLR(group, self)


@dataclass(frozen=True)
class WarmupCosine:
    """A linear warm-up from start_factor times the rate to the rate over warmup_steps steps,
    then cosine annealing to eta_min over the train.steps - warmup_steps steps left: torch's
    SequentialLR(LinearLR, CosineAnnealingLR) with milestones [warmup_steps]."""

    warmup_steps: int
    start_factor: float = 1.0 / 3
    eta_min: float = 0.0

    def check(self, steps: int) -> list[Finding]:
        """Returns (field, value, what is allowed) for each out-of-range setting."""
        warmup, start = self.warmup_steps, self.start_factor
        return _problems(
            (
                "warmup_steps",
                warmup,
                0 <= warmup < steps,
                f"an integer >= 0 and < train.steps ({steps}): the cosine part lasts "
                "train.steps - warmup_steps",
            ),
            ("start_factor", start, 0 < start <= 1, "a number in (0, 1]"),
            ("eta_min", self.eta_min, self.eta_min >= 0, "a number >= 0"),
        )

    def resolved(self, steps: int) -> Sequential:
        """The schedule with every value that depends on train.steps filled in."""
        warmup = Linear(self.start_factor, 1.0, self.warmup_steps)
        return Sequential((warmup, Cosine(steps - self.warmup_steps, self.eta_min)),
                          (self.warmup_steps,))  # fmt: skip


@dataclass(frozen=True)
class Plateau(_NoStepsDependence):
    """torch.optim.lr_scheduler.ReduceLROnPlateau, with its defaults: the rate times factor
    once train.early_stop.monitor (the step's loss) has not improved for `patience` steps."""

    mode: str = "min"
    factor: float = 0.1
    patience: int = 10
    threshold: float = 1e-4
    threshold_mode: str = "rel"
    cooldown: int = 0
    min_lr: float = 0.0
    eps: float = 1e-8

    def check(self, steps: int) -> list[Finding]:
        """Returns (field, value, what is allowed) for each out-of-range setting."""
        return _problems(
            ("mode", self.mode, self.mode in ("min", "max"), "min or max"),
            ("factor", self.factor, 0 <= self.factor < 1, "a number in [0, 1)"),
            ("patience", self.patience, self.patience >= 0, "an integer >= 0"),
            ("threshold", self.threshold, self.threshold >= 0, "a number >= 0"),
            (
                "threshold_mode",
                self.threshold_mode,
                self.threshold_mode in ("rel", "abs"),
                "rel or abs",
            ),
            ("cooldown", self.cooldown, self.cooldown >= 0, "an integer >= 0"),
            ("min_lr", self.min_lr, self.min_lr >= 0, "a number >= 0"),
            ("eps", self.eps, self.eps >= 0, "a number >= 0"),
        )

    def torch_scheduler(self, optimizer: torch.optim.Optimizer):
        """torch's scheduler of `optimizer`."""
        from torch.optim.lr_scheduler import ReduceLROnPlateau

        return ReduceLROnPlateau(
            optimizer,
            mode=self.mode,
            factor=self.factor,
            patience=self.patience,
            threshold=self.threshold,
            threshold_mode=self.threshold_mode,
            cooldown=self.cooldown,
            min_lr=self.min_lr,
            eps=self.eps,
        )

    def mirror(self, group: _Group) -> _ReduceLROnPlateau:
        return _ReduceLROnPlateau(group, self)


@dataclass(frozen=True)
class Sequential:
    """torch.optim.lr_scheduler.SequentialLR of resolved schedules (what warmup_cosine is)."""

    parts: tuple[Any, ...]
    milestones: tuple[int, ...]

    def torch_scheduler(self, optimizer: torch.optim.Optimizer):
        """torch's scheduler of `optimizer`."""
        from torch.optim.lr_scheduler import SequentialLR

        parts = [part.torch_scheduler(optimizer) for part in self.parts]
        return SequentialLR(optimizer, parts, milestones=list(self.milestones))

    def mirror(self, group: _Group) -> _SequentialLR:
        return _SequentialLR(group, self)


# --- torch's schedulers, by hand ------------------------------------------------------------
class _Group:
    """What a scheduler sees of its optimizer: the param group's `lr` and `initial_lr`, one value
    per job. `lr` is replaced, never written into: records hold the arrays of earlier steps."""

    __slots__ = ("initial_lr", "lr")

    def __init__(self, lr: Rates) -> None:
        self.lr = lr
        self.initial_lr = lr


class _LRScheduler:
    """torch.optim.lr_scheduler.LRScheduler: `last_epoch`, `_step_count`, `_is_initial`, and
    the step the constructor takes."""

    closed_form: ClassVar[bool] = False

    def __init__(self, group: _Group) -> None:
        self.group = group
        self.last_epoch = -1
        self._is_initial = False
        self._initial_step()

    @property
    def base_lrs(self) -> Rates:
        return self.group.initial_lr  # torch's `base_lrs`: each group's initial_lr

    def _initial_step(self) -> None:
        self._step_count = 0
        self._is_initial = True
        self.step()
        self._is_initial = False

    def step(self, metrics: Any = None) -> None:
        self._step_count += 1
        self.last_epoch += 1  # torch: _update_lr(None)
        self.group.lr = self.get_lr()

    def _update_lr(self, epoch: int) -> None:
        # SequentialLR at a milestone: the closed form, where the class has one
        self.last_epoch = epoch
        self.group.lr = self.get_closed_form_lr() if self.closed_form else self.get_lr()

    def get_lr(self) -> Rates:
        raise NotImplementedError

    def get_closed_form_lr(self) -> Rates:
        raise NotImplementedError

    def state(self) -> dict[str, Any]:
        return {"last_epoch": self.last_epoch, "step_count": self._step_count}

    def load_state(self, state: Mapping[str, Any]) -> None:
        self.last_epoch = int(state["last_epoch"])
        self._step_count = int(state["step_count"])


class _StepLR(_LRScheduler):
    def __init__(self, group: _Group, s: Step) -> None:
        self.step_size, self.gamma = s.step_size, s.gamma
        super().__init__(group)

    def get_lr(self) -> Rates:
        if self.last_epoch == 0 or self.last_epoch % self.step_size != 0:
            return self.group.lr
        return self.group.lr * self.gamma


class _MultiStepLR(_LRScheduler):
    def __init__(self, group: _Group, s: MultiStep) -> None:
        self.milestones, self.gamma = Counter(s.milestones), s.gamma
        super().__init__(group)

    def get_lr(self) -> Rates:
        if self.last_epoch not in self.milestones:
            return self.group.lr
        return self.group.lr * self.gamma ** self.milestones[self.last_epoch]


class _ExponentialLR(_LRScheduler):
    def __init__(self, group: _Group, s: Exponential) -> None:
        self.gamma = s.gamma
        super().__init__(group)

    def get_lr(self) -> Rates:
        if self._is_initial:
            return self.group.lr
        return self.group.lr * self.gamma


class _CosineAnnealingLR(_LRScheduler):
    closed_form = True

    def __init__(self, group: _Group, s: Cosine) -> None:
        self.T_max, self.eta_min = s.T_max, s.eta_min
        super().__init__(group)

    def get_lr(self) -> Rates:
        # torch's branch for `_step_count == 1 and last_epoch > 0` is taken only by a scheduler
        # constructed with last_epoch >= 0, which nothing here does.
        lr, eta_min, t_max, epoch = self.group.lr, self.eta_min, self.T_max, self.last_epoch
        if self._is_initial:
            return lr
        if (epoch - 1 - t_max) % (2 * t_max) == 0:
            return lr + (self.base_lrs - eta_min) * (1 - math.cos(math.pi / t_max)) / 2
        factor = (1 + math.cos(math.pi * epoch / t_max)) / (
            1 + math.cos(math.pi * (epoch - 1) / t_max)
        )
        return factor * (lr - eta_min) + eta_min

    def get_closed_form_lr(self) -> Rates:
        eta_min = self.eta_min
        cos = math.cos(math.pi * self.last_epoch / self.T_max)
        return eta_min + (self.base_lrs - eta_min) * (1 + cos) / 2


class _LinearLR(_LRScheduler):
    closed_form = True

    def __init__(self, group: _Group, s: Linear) -> None:
        self.start_factor, self.end_factor = s.start_factor, s.end_factor
        self.total_iters = s.total_iters
        super().__init__(group)

    def get_lr(self) -> Rates:
        start, end = self.start_factor, self.end_factor
        if self.last_epoch == 0:
            return self.group.lr * start
        if self._is_initial or self.last_epoch > self.total_iters:
            return self.group.lr
        factor = 1.0 + (end - start) / (
            self.total_iters * start + (self.last_epoch - 1) * (end - start)
        )
        return self.group.lr * factor

    def get_closed_form_lr(self) -> Rates:
        start, end, total = self.start_factor, self.end_factor, self.total_iters
        return self.base_lrs * (start + (end - start) * min(total, self.last_epoch) / total)


class _SequentialLR:
    """torch.optim.lr_scheduler.SequentialLR: its parts are built first (each taking its own
    initial step), then it resets the rate, undoes their steps and re-runs the initial step of
    the part that step 0 belongs to. At a milestone the next part jumps to its step 0 in closed
    form (`_update_lr(0)`)."""

    def __init__(self, group: _Group, s: Sequential) -> None:
        self.group = group
        self.schedulers = [part.mirror(group) for part in s.parts]
        self.milestones = list(s.milestones)
        self.last_epoch = 0
        group.lr = group.initial_lr
        for scheduler in self.schedulers:  # recursive_undo (no SequentialLR nests here)
            scheduler.last_epoch -= 1
        self.schedulers[bisect_right(self.milestones, 0)]._initial_step()

    def step(self, metrics: Any = None) -> None:
        self.last_epoch += 1
        idx = bisect_right(self.milestones, self.last_epoch)
        scheduler = self.schedulers[idx]
        if idx > 0 and self.milestones[idx - 1] == self.last_epoch:
            scheduler._update_lr(0)
        else:
            scheduler.step()

    def state(self) -> dict[str, Any]:
        parts = {str(i): s.state() for i, s in enumerate(self.schedulers)}
        return {"last_epoch": self.last_epoch, **parts}

    def load_state(self, state: Mapping[str, Any]) -> None:
        self.last_epoch = int(state["last_epoch"])
        for i, scheduler in enumerate(self.schedulers):
            scheduler.load_state(state[str(i)])


class _ReduceLROnPlateau:
    """torch.optim.lr_scheduler.ReduceLROnPlateau, each job watching its own loss: `best`,
    `num_bad_epochs` and `cooldown_counter` are one value per job, compared and updated per job.
    One job's are Python numbers, as torch's are; K jobs' are (K,) arrays, updated with NumPy's
    elementwise `where` where torch's `if` is (the same comparisons, the same results)."""

    watches_loss = True

    def __init__(self, group: _Group, s: Plateau) -> None:
        self.group, self.s = group, s
        self.last_epoch = 0
        worse = math.inf if s.mode == "min" else -math.inf
        if isinstance(group.lr, float):
            self.best, self.num_bad_epochs, self.cooldown_counter = worse, 0, 0
            self._where, self._maximum, self._any = _if, max, bool
            self._current = float
        else:
            jobs = len(group.lr)
            self.best = np.full(jobs, worse)
            self.num_bad_epochs = np.zeros(jobs, dtype=np.int64)
            self.cooldown_counter = np.zeros(jobs, dtype=np.int64)
            self._where, self._maximum, self._any = np.where, np.maximum, np.any
            self._current = partial(np.array, dtype=np.float64)

    def step(self, metrics: Any = None) -> None:
        s, where = self.s, self._where
        current = self._current(metrics)  # torch: float(metrics)
        self.last_epoch += 1
        better = self._is_better(current, self.best)
        self.best = where(better, current, self.best)
        num_bad = where(better, 0, self.num_bad_epochs + 1)
        in_cooldown = self.cooldown_counter > 0
        cooldown = where(in_cooldown, self.cooldown_counter - 1, self.cooldown_counter)
        num_bad = where(in_cooldown, 0, num_bad)  # ignore any bad epochs in cooldown
        reduce = num_bad > s.patience
        if self._any(reduce):  # torch's _reduce_lr, for the jobs that reduce
            old = self.group.lr
            new = self._maximum(old * s.factor, s.min_lr)
            self.group.lr = where(reduce & (old - new > s.eps), new, old)
            cooldown = where(reduce, s.cooldown, cooldown)
            num_bad = where(reduce, 0, num_bad)
        self.cooldown_counter, self.num_bad_epochs = cooldown, num_bad

    def _is_better(self, a: Any, best: Any) -> Any:
        mode, threshold = self.s.mode, self.s.threshold
        if self.s.threshold_mode == "rel":
            if mode == "min":
                return a < best * (1.0 - threshold)
            return a > best * (threshold + 1.0)
        if mode == "min":
            return a < best - threshold
        return a > best + threshold

    def state(self) -> dict[str, Any]:
        return {
            "last_epoch": self.last_epoch,
            "best": self.best,
            "num_bad_epochs": self.num_bad_epochs,
            "cooldown_counter": self.cooldown_counter,
        }

    def load_state(self, state: Mapping[str, Any]) -> None:
        self.last_epoch = int(state["last_epoch"])
        self.best = state["best"]
        self.num_bad_epochs = state["num_bad_epochs"]
        self.cooldown_counter = state["cooldown_counter"]


def _if(condition: bool, a: Any, b: Any) -> Any:
    return a if condition else b


# --- what the manual loops use --------------------------------------------------------------
class ManualSchedule:
    """A resolved schedule for K jobs at base rates `lrs` (float64, (K,)), computed by hand, and
    the update rule at its rates (`rule`, which the loop steps with).

    `rates` (K float64 values) are the rates of the next step; `step(loss)` follows each optimizer
    step. `state(job)` and `load_state(job, state)` carry one job's part of it, as plain ints and
    floats: the same as a run of that job alone holds.
    """

    def __init__(
        self, schedule: Any, lrs: np.ndarray, rule: Any, shapes: Mapping[str, tuple[int, ...]]
    ) -> None:
        self.jobs = len(lrs)
        self.group = _Group(float(lrs[0]) if self.jobs == 1 else np.array(lrs, np.float64))
        self.scheduler = schedule.mirror(self.group)
        self.watches_loss = getattr(self.scheduler, "watches_loss", False)
        self.rule = ScheduledRule(rule, shapes)
        self._lr: Rates = None
        self._sync()

    def _sync(self) -> None:
        """The rule and the records take the group's rates."""
        self._lr = lr = self.group.lr
        self.rates = (lr,) if self.jobs == 1 else lr  # K float64 values, for the records
        self.rule.at(lr)

    def step(self, loss: Any = None) -> None:
        """One scheduler step, after an optimizer step whose monitored value (K,) was `loss`:
        what plateau watches (train.early_stop.monitor: the step's loss, or its val_loss)."""
        self.scheduler.step(loss.tolist() if self.watches_loss else None)
        if self.group.lr is not self._lr:
            self._sync()

    def state(self, job: int) -> dict[str, Any]:
        """Job `job`'s rate, base rate and scheduler state, as ints and floats."""
        tree = {"lr": self.group.lr, "initial_lr": self.group.initial_lr}
        tree.update(self.scheduler.state())
        return _job_part(tree, job)

    def load_state(self, job: int, state: Mapping[str, Any]) -> None:
        """Continues job `job` from a `state(job)` taken earlier."""
        tree = {"lr": self.group.lr, "initial_lr": self.group.initial_lr}
        tree.update(self.scheduler.state())
        tree = _with_job_part(tree, job, state)
        self.group.lr, self.group.initial_lr = tree.pop("lr"), tree.pop("initial_lr")
        self.scheduler.load_state(tree)
        self._sync()


def _job_part(tree: Mapping[str, Any], job: int) -> dict[str, Any]:
    # per-job values are arrays (K,); ints shared by every job (step counts) stay as they are
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out[key] = _job_part(value, job)
        elif isinstance(value, np.ndarray):
            out[key] = value[job].item()
        else:
            out[key] = value
    return out


def _with_job_part(tree: Mapping[str, Any], job: int, saved: Mapping[str, Any]) -> dict[str, Any]:
    # `tree` with job `job`'s values from `saved` (a _job_part), arrays copied, never written into
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out[key] = _with_job_part(value, job, saved[key])
        elif isinstance(value, np.ndarray):
            value = value.copy()
            value[job] = saved[key]
            out[key] = value
        elif isinstance(value, float):
            out[key] = float(saved[key])
        else:
            out[key] = int(saved[key])
    return out


SCHEDULES: dict[str, type] = {
    "none": NoSchedule,
    "step": Step,
    "multistep": MultiStep,
    "exponential": Exponential,
    "cosine": Cosine,
    "linear": Linear,
    "warmup_cosine": WarmupCosine,
    "plateau": Plateau,
}
