"""Gradient clipping as torch.nn.utils computes it (`train.clip_grad_norm`,
`train.clip_grad_value`), written once for NumPy arrays and torch tensors.

`clip` is the manual loops' version: like the update rules in runner.optim_rules it touches
arrays only through `xp` (the numpy or the torch module) and arithmetic, so the numpy loop runs
it on ndarrays and the autograd loop on tensors. `clip_torch` is the optim loop's: torch's own
functions on the parameters' `.grad`, in place, as a user writes it before `optimizer.step()`.

torch 2.13's clip_grad_norm_ (torch/nn/utils/clip_grad.py), in the gradients' dtype:
    total = 2-norm of stack([2-norm of each gradient])
    coef = clamp(max_norm / (total + 1e-6), max=1.0);  grad = grad * coef
It multiplies even when coef is 1 (no branch, which on a GPU would be a host sync), so a
gradient below the threshold comes out unchanged, and a zero gradient stays zero. The manual
norm sums plain squares in the run's dtype, not widened, as torch does; torch's CPU kernel
forms them with fused multiply-adds across vector lanes, which NumPy cannot express, so the
two norms may differ in the last bit or two (tests/test_clipping.py holds them to torch).
clip_grad_value_ clamps each element to [-clip_value, clip_value].

With K jobs side by side (a leading job axis, runner.loops) each job's norm is over its own
parameters only. Both return the total norm before clipping, per job: the value
clip_grad_norm_ returns, logged as `grad_norm_before_clip`.

This module must never import torch at module level: the numpy loop runs without it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

Array = Any  # a numpy.ndarray or a torch.Tensor; `xp` is the numpy or torch module


def total_norm(grads: Mapping[str, Array], xp: Any, jobs_axis: bool) -> Array:
    """The 2-norm of all gradients as one vector, as torch's get_total_norm computes it: each
    gradient's norm first, then the norm of those. () or, with `jobs_axis`, (K,)."""
    norms = []
    for g in grads.values():
        squares = g * g
        flat = squares.reshape(squares.shape[0], -1) if jobs_axis else squares.reshape(-1)
        norms.append(xp.sqrt(flat.sum(-1)))
    stacked = xp.stack(norms, -1)  # (P,) or (K, P)
    return xp.sqrt((stacked * stacked).sum(-1))


def _per_job(value: Array, like: Array) -> Array:
    """(K,) values shaped to broadcast against a (K, *shape) gradient."""
    return value.reshape((-1,) + (1,) * (like.ndim - 1))


@dataclass(frozen=True)
class ClipNorm:
    """torch.nn.utils.clip_grad_norm_(parameters, max_norm): the 2-norm of all gradients
    together scaled down to at most `max_norm`."""

    max_norm: float

    def clip(
        self, grads: Mapping[str, Array], xp: Any, jobs_axis: bool
    ) -> tuple[dict[str, Array], Array]:
        """Pure: (clipped gradients, total norm before clipping); never mutates `grads`."""
        norm = total_norm(grads, xp, jobs_axis)
        # Python floats meet the norm as weak scalars: every value stays in the run's dtype.
        coef = (self.max_norm / (norm + 1e-6)).clip(max=1.0)
        if jobs_axis:
            return {n: g * _per_job(coef, g) for n, g in grads.items()}, norm
        return {n: g * coef for n, g in grads.items()}, norm

    def clip_torch(self, parameters: Iterable[Any]) -> Any:
        """Clips the parameters' .grad in place with torch's own function; returns the norm."""
        import torch

        return torch.nn.utils.clip_grad_norm_(parameters, self.max_norm)


@dataclass(frozen=True)
class ClipValue:
    """torch.nn.utils.clip_grad_value_(parameters, clip_value): every gradient element clamped
    to [-clip_value, clip_value]."""

    clip_value: float

    def clip(
        self, grads: Mapping[str, Array], xp: Any, jobs_axis: bool
    ) -> tuple[dict[str, Array], Array]:
        """Pure: (clipped gradients, total norm before clipping); never mutates `grads`."""
        norm = total_norm(grads, xp, jobs_axis)
        v = self.clip_value
        return {n: g.clip(-v, v) for n, g in grads.items()}, norm

    def clip_torch(self, parameters: Iterable[Any]) -> Any:
        """Clips the parameters' .grad in place with torch's own function; returns the norm
        before clipping (torch.nn.utils.get_total_norm)."""
        import torch

        norm = torch.nn.utils.get_total_norm([p.grad for p in parameters])
        torch.nn.utils.clip_grad_value_(parameters, self.clip_value)
        return norm


def grad_clip(clip_grad_norm: float | None, clip_grad_value: float | None) -> Any:
    """The clipping train.clip_grad_norm / train.clip_grad_value ask for, or None (off).
    runner.schema.validate refuses both at once."""
    if clip_grad_norm is not None:
        return ClipNorm(float(clip_grad_norm))
    if clip_grad_value is not None:
        return ClipValue(float(clip_grad_value))
    return None
