"""Optimizer update rules shared by the numpy and autograd loops, each mirroring torch.optim.

One rule serves both manual loops: it only touches arrays through `xp` (the numpy or the torch
module) and arithmetic operators, so the numpy loop runs it on ndarrays and the autograd loop on
tensors under `torch.no_grad()`. Each rule follows its torch.optim class's single-tensor code path
(foreach=False) operation by operation, so all three loops agree to a few ulps per step; what
cannot be mirrored is torch's fused multiply-adds and its 1-ulp-off CPU sqrt.

Rules are pure: `update` returns new params and a new state and never writes into its inputs.
The state is a plain dict per parameter name holding a Python int `step` and arrays of the
parameter's dtype and shape, so it checkpoints as is. Every array expression is elementwise, so a
leading axis (say one per learning rate, with `lr` an array of shape (K, 1, ...)) broadcasts
through. torch keeps a few scalars per parameter besides its step (NAdam's `mu_product`, ASGD's
`eta`): these are arrays of the parameter's shape too, so a job axis slices them like any buffer,
holding the values torch's float32 scalar would.

This module must never import torch at module level: the numpy loop runs without it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

if TYPE_CHECKING:
    import torch

Array = Any  # a numpy.ndarray or a torch.Tensor; `xp` is the numpy or torch module
Finding = tuple[str, object, str]  # an out-of-range hyperparameter: (field, value, allowed)


def _problems(*rows: tuple[str, object, bool, str]) -> list[Finding]:
    # Conditions are written as "what is valid" so that NaN, which fails every comparison,
    # is reported too.
    return [(field, value, allowed) for field, value, valid, allowed in rows if not valid]


def _same(value: Array) -> Array:
    return value


def _lerp(start: Array, end: Array, weight: float) -> Array:
    # torch.lerp picks its formula by the size of the weight, to stay exact at both ends.
    if abs(weight) < 0.5:
        return start + weight * (end - start)
    return end - (end - start) * (1 - weight)


def _full_like(param: Array, value: Any, xp) -> Array:
    # `value` is a number, or Rates (one per job) that broadcast along the job axis
    if isinstance(value, Rates):
        return xp.zeros_like(param) + value
    return xp.full_like(param, value)


def _first(array: Array) -> float:
    # a per-parameter scalar that is kept as an array of equal elements
    return float(array.reshape(-1)[0])


def _as_torch_scalar(value: Any) -> Any:
    """`value` rounded as torch stores a per-parameter scalar state: a 0-d tensor of its default
    scalar dtype, float32 (the runner never changes torch's default dtype)."""
    if isinstance(value, Rates):
        return Rates(value.values.astype(np.float32).astype(np.float64))
    return float(np.float32(value))


def _pair_valid(pair: tuple, valid: Any) -> bool:
    return len(pair) == 2 and bool(valid(*pair))


def _betas_problem(betas: tuple) -> tuple[str, object, bool, str]:
    valid = _pair_valid(betas, lambda b1, b2: 0 <= b1 < 1 and 0 <= b2 < 1)
    return ("betas", list(betas), valid, "two numbers, each in [0, 1)")


@dataclass(frozen=True)
class _ManualRule:
    """Shared driver of the manual rules: subclasses say what state one parameter needs and how
    one parameter takes one step. Their fields are their torch.optim class's hyperparameters,
    under the same names, `maximize` among them."""

    manual: ClassVar[bool] = True  # usable by the numpy and autograd loops

    def __post_init__(self) -> None:
        # Configs give pairs (betas, etas, ...) as lists; tuples keep the rule hashable and are
        # what torch takes.
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):
                object.__setattr__(self, f.name, tuple(value))

    def check(self) -> list[Finding]:
        """Returns (field, value, what is allowed) for each out-of-range hyperparameter."""
        raise NotImplementedError

    def init_state(self, params: Mapping[str, Array], xp) -> dict:
        """Returns the state before the first step: one plain dict per parameter name."""
        return {name: {"step": 0, **self._buffers(param, xp)} for name, param in params.items()}

    def update(
        self, params: Mapping[str, Array], grads: Mapping[str, Array], state: dict, xp
    ) -> tuple[dict[str, Array], dict]:
        """Pure function: returns (new_params, new_state); never mutates its inputs.

        Like torch.optim, a parameter whose gradient is missing or None is left as it is. Arrays
        that a step leaves unchanged are shared between the old and new dicts, not copied. With
        `maximize`, every rule steps along the negated gradient, as torch's do.
        """
        new_params: dict[str, Array] = {}
        new_state: dict[str, dict] = {}
        # numpy turns 0-d results into scalars; asarray restores the array (torch needs nothing)
        asarray = _same if xp.__name__ == "torch" else xp.asarray
        for name, param in params.items():
            grad = grads.get(name)
            old = state[name]
            if grad is None:
                new_params[name], new_state[name] = param, dict(old)
                continue
            if self.maximize:
                grad = -grad
            step = int(old["step"]) + 1
            param, buffers = self._step(param, grad, step, old, xp)
            new_params[name] = asarray(param)
            new_state[name] = {"step": step, **{k: asarray(v) for k, v in buffers.items()}}
        return new_params, new_state

    def _buffers(self, param: Array, xp) -> dict[str, Array]:
        raise NotImplementedError

    def _step(
        self, param: Array, grad: Array, step: int, state: Mapping[str, Any], xp
    ) -> tuple[Array, dict[str, Array]]:
        raise NotImplementedError

    def torch_optimizer(self, parameters: Iterable) -> torch.optim.Optimizer:
        """Builds the torch.optim class of the rule's name, with every field under torch's own
        name, on torch's single-tensor path (foreach=False)."""
        import torch

        return getattr(torch.optim, type(self).__name__)(parameters, **self._torch_kwargs())

    def _torch_kwargs(self) -> dict[str, Any]:
        # Every field under torch's own name, on torch's single-tensor path (foreach=False).
        kwargs: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            # torch rejects a mix of int and float betas, which a YAML `[0, 0.999]` would give
            kwargs[f.name] = tuple(float(v) for v in value) if isinstance(value, tuple) else value
        return {**kwargs, "foreach": False}


@dataclass(frozen=True)
class SGD(_ManualRule):
    """torch.optim.SGD: momentum, dampening, nesterov and coupled (L2) weight decay."""

    lr: float = 0.01  # the project's one deliberate difference from torch's defaults (1e-3)
    momentum: float = 0.0
    dampening: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    maximize: bool = False

    def check(self) -> list[Finding]:
        """Returns (field, value, what is allowed) for each out-of-range hyperparameter."""
        return _problems(
            ("lr", self.lr, self.lr > 0, "a number > 0"),
            ("momentum", self.momentum, self.momentum >= 0, "a number >= 0"),
            ("weight_decay", self.weight_decay, self.weight_decay >= 0, "a number >= 0"),
            (
                "nesterov",
                self.nesterov,
                not self.nesterov or (self.momentum > 0 and self.dampening == 0),
                "false unless momentum > 0 and dampening = 0",
            ),
        )

    def _buffers(self, param: Array, xp) -> dict[str, Array]:
        # torch creates the buffer from the first gradient; a zero placeholder keeps the state
        # all arrays, and step 1 marks where torch would create it.
        return {"momentum_buffer": xp.zeros_like(param)} if self.momentum != 0 else {}

    def _step(self, param, grad, step, state, xp):
        if self.weight_decay != 0:
            grad = grad + self.weight_decay * param
        buffers = {}
        if self.momentum != 0:
            if step == 1:
                # The buffer starts as the gradient itself, with no dampening; `* 1` copies it so
                # a caller reusing its gradient arrays in place cannot reach into the state.
                buf = grad * 1
            else:
                buf = state["momentum_buffer"] * self.momentum + (1 - self.dampening) * grad
            buffers["momentum_buffer"] = buf
            grad = grad + self.momentum * buf if self.nesterov else buf
        return param - self.lr * grad, buffers


@dataclass(frozen=True)
class _AdamFamily(_ManualRule):
    """Adam's rule, with weight decay coupled (Adam) or decoupled (AdamW) by the subclass."""

    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    amsgrad: bool = False
    maximize: bool = False

    decoupled_weight_decay: ClassVar[bool] = False

    def check(self) -> list[Finding]:
        """Returns (field, value, what is allowed) for each out-of-range hyperparameter."""
        return _problems(
            ("lr", self.lr, self.lr > 0, "a number > 0"),
            _betas_problem(self.betas),
            ("eps", self.eps, self.eps >= 0, "a number >= 0"),
            ("weight_decay", self.weight_decay, self.weight_decay >= 0, "a number >= 0"),
        )

    def _buffers(self, param: Array, xp) -> dict[str, Array]:
        names = ["exp_avg", "exp_avg_sq", *(["max_exp_avg_sq"] if self.amsgrad else [])]
        return {name: xp.zeros_like(param) for name in names}

    def _step(self, param, grad, step, state, xp):
        beta1, beta2 = self.betas
        if self.weight_decay != 0:
            if self.decoupled_weight_decay:
                param = param * (1 - self.lr * self.weight_decay)
            else:
                grad = grad + self.weight_decay * param
        exp_avg = _lerp(state["exp_avg"], grad, 1 - beta1)
        exp_avg_sq = state["exp_avg_sq"] * beta2 + (1 - beta2) * grad * grad
        buffers = {"exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}

        # Python-float scalars, computed as torch computes them (its step is a float).
        bias_correction1 = 1 - beta1 ** float(step)
        bias_correction2 = 1 - beta2 ** float(step)
        step_size = self.lr / bias_correction1
        bias_correction2_sqrt = bias_correction2**0.5

        second_moment = exp_avg_sq
        if self.amsgrad:
            # torch keeps the running max of the raw (not bias-corrected) second moments.
            second_moment = xp.maximum(state["max_exp_avg_sq"], exp_avg_sq)
            buffers["max_exp_avg_sq"] = second_moment
        # eps is added after the bias-corrected sqrt, as torch does, not inside it.
        denom = xp.sqrt(second_moment) / bias_correction2_sqrt + self.eps
        return param + (-step_size) * exp_avg / denom, buffers


@dataclass(frozen=True)
class Adam(_AdamFamily):
    """torch.optim.Adam: bias-corrected moments, coupled (L2) weight decay, optional amsgrad."""


@dataclass(frozen=True)
class AdamW(_AdamFamily):
    """torch.optim.AdamW: Adam with decoupled weight decay, `param *= 1 - lr * weight_decay`."""

    weight_decay: float = 1e-2

    decoupled_weight_decay: ClassVar[bool] = True


@dataclass(frozen=True)
class RMSprop(_ManualRule):
    """torch.optim.RMSprop: eps added after the sqrt, optional centering and momentum buffer."""

    lr: float = 1e-2
    alpha: float = 0.99
    eps: float = 1e-8
    momentum: float = 0.0
    centered: bool = False
    weight_decay: float = 0.0
    maximize: bool = False

    def check(self) -> list[Finding]:
        """Returns (field, value, what is allowed) for each out-of-range hyperparameter."""
        return _problems(
            ("lr", self.lr, self.lr > 0, "a number > 0"),
            ("alpha", self.alpha, self.alpha >= 0, "a number >= 0"),
            ("eps", self.eps, self.eps >= 0, "a number >= 0"),
            ("momentum", self.momentum, self.momentum >= 0, "a number >= 0"),
            ("weight_decay", self.weight_decay, self.weight_decay >= 0, "a number >= 0"),
        )

    def _buffers(self, param: Array, xp) -> dict[str, Array]:
        buffers = {"square_avg": xp.zeros_like(param)}
        if self.momentum > 0:  # unlike SGD's, this buffer starts at zero
            buffers["momentum_buffer"] = xp.zeros_like(param)
        if self.centered:
            buffers["grad_avg"] = xp.zeros_like(param)
        return buffers

    def _step(self, param, grad, step, state, xp):
        if self.weight_decay != 0:
            grad = grad + self.weight_decay * param
        square_avg = state["square_avg"] * self.alpha + (1 - self.alpha) * grad * grad
        buffers = {"square_avg": square_avg}
        if self.centered:
            grad_avg = _lerp(state["grad_avg"], grad, 1 - self.alpha)
            buffers["grad_avg"] = grad_avg
            avg = xp.sqrt(square_avg - grad_avg * grad_avg) + self.eps
        else:
            avg = xp.sqrt(square_avg) + self.eps
        if self.momentum > 0:
            buf = state["momentum_buffer"] * self.momentum + grad / avg
            buffers["momentum_buffer"] = buf
            return param - self.lr * buf, buffers
        return param + (-self.lr) * grad / avg, buffers


@dataclass(frozen=True)
class Adagrad(_ManualRule):
    """torch.optim.Adagrad: accumulated squared gradients, lr decayed as lr / (1 + (t-1)*decay)."""

    lr: float = 1e-2
    lr_decay: float = 0.0
    eps: float = 1e-10
    weight_decay: float = 0.0
    initial_accumulator_value: float = 0.0
    maximize: bool = False

    def check(self) -> list[Finding]:
        """Returns (field, value, what is allowed) for each out-of-range hyperparameter."""
        init = self.initial_accumulator_value
        return _problems(
            ("lr", self.lr, self.lr > 0, "a number > 0"),
            ("lr_decay", self.lr_decay, self.lr_decay >= 0, "a number >= 0"),
            ("eps", self.eps, self.eps >= 0, "a number >= 0"),
            ("weight_decay", self.weight_decay, self.weight_decay >= 0, "a number >= 0"),
            ("initial_accumulator_value", init, init >= 0, "a number >= 0"),
        )

    def _buffers(self, param: Array, xp) -> dict[str, Array]:
        return {"sum": xp.full_like(param, self.initial_accumulator_value)}

    def _step(self, param, grad, step, state, xp):
        if self.weight_decay != 0:
            grad = grad + self.weight_decay * param
        clr = self.lr / (1 + (float(step) - 1) * self.lr_decay)
        state_sum = state["sum"] + grad * grad
        std = xp.sqrt(state_sum) + self.eps
        return param + (-clr) * grad / std, {"sum": state_sum}


@dataclass(frozen=True)
class NAdam(_ManualRule):
    """torch.optim.NAdam: Adam with Nesterov momentum, whose coefficient mu warms up with the step
    (momentum_decay); coupled (L2) or decoupled weight decay."""

    lr: float = 2e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    momentum_decay: float = 4e-3
    decoupled_weight_decay: bool = False
    maximize: bool = False

    def check(self) -> list[Finding]:
        """Returns (field, value, what is allowed) for each out-of-range hyperparameter."""
        return _problems(
            ("lr", self.lr, self.lr > 0, "a number > 0"),
            _betas_problem(self.betas),
            ("eps", self.eps, self.eps >= 0, "a number >= 0"),
            ("weight_decay", self.weight_decay, self.weight_decay >= 0, "a number >= 0"),
            ("momentum_decay", self.momentum_decay, self.momentum_decay >= 0, "a number >= 0"),
        )

    def _buffers(self, param: Array, xp) -> dict[str, Array]:
        # mu_product is one number per parameter, the product of every step's mu so far
        return {
            "mu_product": xp.full_like(param, 1.0),
            "exp_avg": xp.zeros_like(param),
            "exp_avg_sq": xp.zeros_like(param),
        }

    def _step(self, param, grad, step, state, xp):
        beta1, beta2 = self.betas
        bias_correction2 = 1 - beta2 ** float(step)
        if self.weight_decay != 0:
            if self.decoupled_weight_decay:
                param = param * (1 - self.lr * self.weight_decay)
            else:
                grad = grad + self.weight_decay * param
        # the momentum coefficients of this step and the next
        mu = beta1 * (1.0 - 0.5 * 0.96 ** (float(step) * self.momentum_decay))
        mu_next = beta1 * (1.0 - 0.5 * 0.96 ** ((float(step) + 1) * self.momentum_decay))
        # torch multiplies its float32 scalar tensor by mu, rounding the product to float32
        mu_product = _as_torch_scalar(_first(state["mu_product"]) * _as_torch_scalar(mu))
        exp_avg = _lerp(state["exp_avg"], grad, 1 - beta1)
        exp_avg_sq = state["exp_avg_sq"] * beta2 + (1 - beta2) * grad * grad
        denom = xp.sqrt(exp_avg_sq / bias_correction2) + self.eps

        # Python-float coefficients, as torch computes them from the scalar's value
        mu_product_next = mu_product * mu_next
        grad_coef = -self.lr * (1.0 - mu) / (1.0 - mu_product)
        exp_avg_coef = (-self.lr * mu_next) / (1.0 - mu_product_next)
        param = param + grad_coef * grad / denom
        param = param + exp_avg_coef * exp_avg / denom
        buffers = {
            "mu_product": xp.full_like(param, mu_product),
            "exp_avg": exp_avg,
            "exp_avg_sq": exp_avg_sq,
        }
        return param, buffers


@dataclass(frozen=True)
class RAdam(_ManualRule):
    """torch.optim.RAdam: Adam whose adaptive step is rectified once the variance estimate is
    trustworthy (rho_t > 5) and left out before; coupled (L2) or decoupled weight decay."""

    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    decoupled_weight_decay: bool = False
    maximize: bool = False

    def check(self) -> list[Finding]:
        """Returns (field, value, what is allowed) for each out-of-range hyperparameter."""
        return _problems(
            ("lr", self.lr, self.lr > 0, "a number > 0"),
            _betas_problem(self.betas),
            ("eps", self.eps, self.eps >= 0, "a number >= 0"),
            ("weight_decay", self.weight_decay, self.weight_decay >= 0, "a number >= 0"),
        )

    def _buffers(self, param: Array, xp) -> dict[str, Array]:
        return {"exp_avg": xp.zeros_like(param), "exp_avg_sq": xp.zeros_like(param)}

    def _step(self, param, grad, step, state, xp):
        beta1, beta2 = self.betas
        if self.weight_decay != 0:
            if self.decoupled_weight_decay:
                param = param * (1 - self.lr * self.weight_decay)
            else:
                grad = grad + self.weight_decay * param
        exp_avg = _lerp(state["exp_avg"], grad, 1 - beta1)
        exp_avg_sq = state["exp_avg_sq"] * beta2 + (1 - beta2) * grad * grad
        buffers = {"exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}

        t = float(step)
        bias_correction1 = 1 - beta1**t
        bias_correction2 = 1 - beta2**t
        bias_corrected_exp_avg = exp_avg / bias_correction1
        # the length of the approximated simple moving average: its limit, and at this step
        rho_inf = 2 / (1 - beta2) - 1
        rho_t = rho_inf - 2 * t * (beta2**t) / bias_correction2
        if rho_t > 5.0:
            rect = (
                (rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)
            ) ** 0.5
            # torch divides a number by a tensor as reciprocal-then-multiply; so does this
            adaptive_lr = (1 / (xp.sqrt(exp_avg_sq) + self.eps)) * bias_correction2**0.5
            return param - bias_corrected_exp_avg * self.lr * adaptive_lr * rect, buffers
        return param - bias_corrected_exp_avg * self.lr, buffers


@dataclass(frozen=True)
class Adamax(_ManualRule):
    """torch.optim.Adamax: Adam with the infinity norm, a running max of |grad| + eps, in place of
    the second moment; coupled (L2) weight decay."""

    lr: float = 2e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    maximize: bool = False

    def check(self) -> list[Finding]:
        """Returns (field, value, what is allowed) for each out-of-range hyperparameter."""
        return _problems(
            ("lr", self.lr, self.lr > 0, "a number > 0"),
            _betas_problem(self.betas),
            ("eps", self.eps, self.eps >= 0, "a number >= 0"),
            ("weight_decay", self.weight_decay, self.weight_decay >= 0, "a number >= 0"),
        )

    def _buffers(self, param: Array, xp) -> dict[str, Array]:
        return {"exp_avg": xp.zeros_like(param), "exp_inf": xp.zeros_like(param)}

    def _step(self, param, grad, step, state, xp):
        beta1, beta2 = self.betas
        if self.weight_decay != 0:
            grad = grad + self.weight_decay * param
        exp_avg = _lerp(state["exp_avg"], grad, 1 - beta1)
        exp_inf = xp.maximum(state["exp_inf"] * beta2, xp.abs(grad) + self.eps)
        clr = self.lr / (1 - beta1 ** float(step))
        return param + (-clr) * exp_avg / exp_inf, {"exp_avg": exp_avg, "exp_inf": exp_inf}


@dataclass(frozen=True)
class Adadelta(_ManualRule):
    """torch.optim.Adadelta: steps scaled by the ratio of running RMS of past updates to that of
    gradients, then by lr; coupled (L2) weight decay."""

    lr: float = 1.0
    rho: float = 0.9
    eps: float = 1e-6
    weight_decay: float = 0.0
    maximize: bool = False

    def check(self) -> list[Finding]:
        """Returns (field, value, what is allowed) for each out-of-range hyperparameter."""
        return _problems(
            ("lr", self.lr, self.lr > 0, "a number > 0"),
            ("rho", self.rho, 0 <= self.rho <= 1, "a number in [0, 1]"),
            ("eps", self.eps, self.eps >= 0, "a number >= 0"),
            ("weight_decay", self.weight_decay, self.weight_decay >= 0, "a number >= 0"),
        )

    def _buffers(self, param: Array, xp) -> dict[str, Array]:
        return {"square_avg": xp.zeros_like(param), "acc_delta": xp.zeros_like(param)}

    def _step(self, param, grad, step, state, xp):
        if self.weight_decay != 0:
            grad = grad + self.weight_decay * param
        square_avg = state["square_avg"] * self.rho + (1 - self.rho) * grad * grad
        std = xp.sqrt(square_avg + self.eps)
        delta = xp.sqrt(state["acc_delta"] + self.eps) / std * grad
        acc_delta = state["acc_delta"] * self.rho + (1 - self.rho) * delta * delta
        return param + (-self.lr) * delta, {"square_avg": square_avg, "acc_delta": acc_delta}


@dataclass(frozen=True)
class Rprop(_ManualRule):
    """torch.optim.Rprop: a step size per element, grown by etaplus while the gradient keeps its
    sign and shrunk by etaminus when it flips, within step_sizes; only the gradient's sign moves
    the parameter."""

    lr: float = 1e-2  # only the initial step size: later rates do not reach the state
    etas: tuple[float, float] = (0.5, 1.2)  # (etaminus, etaplus)
    step_sizes: tuple[float, float] = (1e-6, 50)  # (smallest, largest) step size
    maximize: bool = False

    def check(self) -> list[Finding]:
        """Returns (field, value, what is allowed) for each out-of-range hyperparameter."""
        etas_valid = _pair_valid(self.etas, lambda minus, plus: 0 < minus < 1 < plus)
        # torch does not check step_sizes; a smallest above the largest would pin every step
        # size to the largest, and a negative one would step uphill
        sizes_valid = _pair_valid(self.step_sizes, lambda low, high: 0 <= low <= high)
        return _problems(
            ("lr", self.lr, self.lr > 0, "a number > 0"),
            (
                "etas",
                list(self.etas),
                etas_valid,
                "two numbers [etaminus, etaplus] with 0 < etaminus < 1 < etaplus",
            ),
            (
                "step_sizes",
                list(self.step_sizes),
                sizes_valid,
                "two numbers [smallest, largest] with 0 <= smallest <= largest",
            ),
        )

    def _buffers(self, param: Array, xp) -> dict[str, Array]:
        return {"prev": xp.zeros_like(param), "step_size": _full_like(param, self.lr, xp)}

    def _step(self, param, grad, step, state, xp):
        etaminus, etaplus = self.etas
        step_size_min, step_size_max = self.step_sizes
        sign = xp.sign(grad * state["prev"])
        # +1 -> etaplus, -1 -> etaminus, 0 -> 1 (NaN stays NaN, as torch's masked writes leave it)
        factor = xp.where(
            sign > 0, etaplus, xp.where(sign < 0, etaminus, xp.where(sign == 0, 1.0, sign))
        )
        step_size = xp.clip(state["step_size"] * factor, step_size_min, step_size_max)
        # where the sign flipped, no step now and none remembered (torch: factor == etaminus)
        grad = xp.where(sign < 0, 0.0, grad)
        param = param - xp.sign(grad) * step_size
        return param, {"prev": grad, "step_size": step_size}


@dataclass(frozen=True)
class ASGD(_ManualRule):
    """torch.optim.ASGD: SGD with a decaying rate eta and weight decay lambd, keeping in `ax` the
    running average of the parameters from step t0 on (the parameters themselves before)."""

    lr: float = 1e-2
    lambd: float = 1e-4
    alpha: float = 0.75
    t0: float = 1e6
    weight_decay: float = 0.0
    maximize: bool = False

    def check(self) -> list[Finding]:
        """Returns (field, value, what is allowed) for each out-of-range hyperparameter."""
        return _problems(
            ("lr", self.lr, self.lr > 0, "a number > 0"),
            # torch does not check lambd; a negative one makes eta's power of a negative
            # number (complex) once lambd * lr * step < -1
            ("lambd", self.lambd, self.lambd >= 0, "a number >= 0"),
            ("weight_decay", self.weight_decay, self.weight_decay >= 0, "a number >= 0"),
        )

    def _buffers(self, param: Array, xp) -> dict[str, Array]:
        # eta is the rate of the coming step; torch sets it from the rate when each step ends,
        # so it is state (it would follow a changing lr a step late, as torch's does)
        return {"eta": _full_like(param, _as_torch_scalar(self.lr), xp), "ax": xp.zeros_like(param)}

    def _step(self, param, grad, step, state, xp):
        if self.weight_decay != 0:
            grad = grad + self.weight_decay * param
        eta = state["eta"]
        # torch computes 1 - lambd * eta from eta's value, a Python float; eta here is an array
        # (a job axis gives each job its own), so this is in the parameter's dtype: the same in
        # float64, now and then an ulp apart in float32
        param = param * (1 - self.lambd * eta)
        param = param + (-eta) * grad
        mu = self._mu(step)
        # until t0, the average is the parameters themselves: a copy (`* 1`), so that the state
        # never shares an array with the parameters
        ax = state["ax"] + (param - state["ax"]) * mu if mu != 1 else param * 1
        t = float(step)
        eta = _as_torch_scalar(self.lr / (1 + self.lambd * self.lr * t) ** self.alpha)
        return param, {"eta": _full_like(param, eta, xp), "ax": ax}

    def _mu(self, step: int) -> float:
        # The averaging weight of `step`: torch starts it at 1 and, as step t ends, stores
        # 1 / max(1, t - t0) for step t + 1. It depends on the step only, so it is not state.
        if step == 1:
            return 1.0
        return _as_torch_scalar(1 / max(1, float(step - 1) - self.t0))


@dataclass(frozen=True)
class LBFGS:
    """torch.optim.LBFGS settings. It has no manual rule: each of its steps re-evaluates the loss
    through a closure, so only the optim loop can run it."""

    lr: float = 1.0
    max_iter: int = 20
    history_size: int = 100
    line_search_fn: str | None = None

    manual: ClassVar[bool] = False

    def check(self) -> list[Finding]:
        """Returns (field, value, what is allowed) for each out-of-range hyperparameter."""
        return _problems(
            ("lr", self.lr, self.lr > 0, "a number > 0"),
            ("max_iter", self.max_iter, self.max_iter >= 1, "an integer >= 1"),
            ("history_size", self.history_size, self.history_size >= 1, "an integer >= 1"),
            (
                "line_search_fn",
                self.line_search_fn,
                self.line_search_fn in (None, "strong_wolfe"),
                "null or strong_wolfe",
            ),
        )

    def init_state(self, params: Mapping[str, Array], xp) -> dict:
        """Always raises: LBFGS runs only in the optim loop."""
        raise self._no_manual_rule()

    def update(
        self, params: Mapping[str, Array], grads: Mapping[str, Array], state: dict, xp
    ) -> tuple[dict[str, Array], dict]:
        """Always raises: LBFGS runs only in the optim loop."""
        raise self._no_manual_rule()

    def _no_manual_rule(self) -> NotImplementedError:
        return NotImplementedError(
            "LBFGS has no manual update rule (each step re-evaluates the loss through a "
            "closure); it needs the optim loop (loop=optim)"
        )

    def torch_optimizer(self, parameters: Iterable) -> torch.optim.Optimizer:
        """Builds the equivalent torch.optim.LBFGS."""
        import torch

        return torch.optim.LBFGS(
            parameters,
            lr=self.lr,
            max_iter=self.max_iter,
            history_size=self.history_size,
            line_search_fn=self.line_search_fn,
        )


# --- one rule for K jobs -------------------------------------------------------------------
def for_jobs(rule: Any, lrs: np.ndarray, shapes: Mapping[str, tuple[int, ...]]) -> Any:
    """`rule` for parameters with a leading job axis, job j at rate lrs[j].

    When every job has the same rate (a single run is K = 1), that is the rule itself at that
    rate as a Python float: exactly the arithmetic of a run alone, and no per-operation cost.
    """
    if bool(np.all(lrs == lrs[0])):
        return dataclasses.replace(rule, lr=float(lrs[0]))
    return PerJobRule(rule, lrs, shapes)


class ScheduledRule:
    """`rule` for K jobs whose rates change between steps (a learning-rate schedule's): `at`
    moves it to new rates, and `init_state` and `update` are those of `for_jobs` at them.

    One job's rate is a Python float, as in a run without a schedule, so its arithmetic is that
    run's: its rule is a copy that only this object holds, and `at` sets the copy's `lr` in place
    (a new frozen dataclass every step would cost a fifth of a numpy step). K jobs' rates are a
    (K,) array, and `at` asks `for_jobs` for their rule.
    """

    def __init__(self, rule: Any, shapes: Mapping[str, tuple[int, ...]]) -> None:
        self.rule, self.shapes = rule, shapes
        self.current: Any = None

    def at(self, lrs: float | np.ndarray) -> None:
        """Steps from now on run at `lrs`: a float (one job) or float64 (K,)."""
        if isinstance(lrs, float):
            if self.current is None:
                self.current = dataclasses.replace(self.rule, lr=lrs)
            else:  # this copy is ours alone: nothing else holds it
                object.__setattr__(self.current, "lr", lrs)
        else:
            self.current = for_jobs(self.rule, lrs, self.shapes)

    def init_state(self, params: Mapping[str, Array], xp) -> dict:
        return self.current.init_state(params, xp)

    def update(
        self, params: Mapping[str, Array], grads: Mapping[str, Array], state: dict, xp
    ) -> tuple[dict[str, Array], dict]:
        return self.current.update(params, grads, state, xp)


class Rates:
    """K learning rates standing in for a rule's one `lr` float, shape (K, 1, ...).

    Arithmetic with Python numbers stays in float64, as the rule's float arithmetic would; meeting
    an array, the rates take the array's dtype first, as a Python float does (NumPy's weak
    scalars, torch's wrapped numbers). Each job's update is then the one its own run computes.
    """

    __array_ufunc__ = None  # NumPy hands `array * rates` to __rmul__

    def __init__(self, values: np.ndarray) -> None:
        self.values = values  # float64
        self._cast: dict[Any, Any] = {}

    def _like(self, other: Any) -> Any:
        if isinstance(other, np.ndarray | np.generic):
            key = other.dtype
            if key not in self._cast:
                self._cast[key] = self.values.astype(other.dtype)
            return self._cast[key]
        key = (other.dtype, other.device)
        if key not in self._cast:
            import torch

            self._cast[key] = torch.as_tensor(self.values, dtype=other.dtype, device=other.device)
        return self._cast[key]

    def _apply(self, other: Any, op: Any) -> Any:
        if isinstance(other, int | float):
            return Rates(op(self.values, other))
        if isinstance(other, Rates):  # a number computed from the rate, met again (ASGD's eta)
            return Rates(op(self.values, other.values))
        return op(self._like(other), other)

    def _apply_reflected(self, other: Any, op: Any) -> Any:
        if isinstance(other, int | float):
            return Rates(op(other, self.values))
        return op(other, self._like(other))

    def __neg__(self) -> Rates:
        return Rates(-self.values)

    def __pow__(self, exponent: float) -> Rates:
        # Python's own power, rate by rate: NumPy's vectorized one may round differently, and a
        # job must compute what its run alone computes
        powers = [value**exponent for value in self.values.ravel().tolist()]
        return Rates(np.array(powers, dtype=np.float64).reshape(self.values.shape))

    def __mul__(self, other):
        return self._apply(other, lambda a, b: a * b)

    def __rmul__(self, other):
        return self._apply_reflected(other, lambda a, b: a * b)

    def __truediv__(self, other):
        return self._apply(other, lambda a, b: a / b)

    def __rtruediv__(self, other):
        return self._apply_reflected(other, lambda a, b: a / b)

    def __add__(self, other):
        return self._apply(other, lambda a, b: a + b)

    def __radd__(self, other):
        return self._apply_reflected(other, lambda a, b: a + b)

    def __sub__(self, other):
        return self._apply(other, lambda a, b: a - b)

    def __rsub__(self, other):
        return self._apply_reflected(other, lambda a, b: a - b)


class PerJobRule:
    """An update rule applied to parameters with a leading job axis, one rate per job."""

    def __init__(self, rule: Any, lrs: np.ndarray, shapes: dict[str, tuple[int, ...]]) -> None:
        k = len(lrs)
        self.rules = {
            name: dataclasses.replace(rule, lr=Rates(lrs.reshape(k, *[1] * len(shape))))
            for name, shape in shapes.items()
        }

    def init_state(self, params: dict, xp: Any) -> dict:
        return {n: r.init_state({n: params[n]}, xp)[n] for n, r in self.rules.items()}

    def update(self, params: dict, grads: dict, state: dict, xp: Any) -> tuple[dict, dict]:
        new_params, new_state = {}, {}
        for name, rule in self.rules.items():
            p, s = rule.update({name: params[name]}, {name: grads[name]}, {name: state[name]}, xp)
            new_params[name], new_state[name] = p[name], s[name]
        return new_params, new_state
