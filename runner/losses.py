"""Losses with mean reduction: the NumPy value and its analytic gradient side by side, and the
torch.nn loss the torch loops use instead. `pred` and `y` are (N,); `pred` may also be (K, N),
K jobs side by side (runner.loops), giving K losses.

Means are written as a sum over the last axis divided by its length: the same pairwise sum and
the same division np.mean does, bit for bit, without its Python-level wrapper (which costs more
than the rest of a small step)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class MSE:
    """mean((pred - y)^2)."""

    def value_and_grad(self, pred: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        r = pred - y
        n = r.shape[-1]
        return np.add.reduce(r * r, axis=-1) / n, (2.0 / n) * r

    def torch_loss(self):
        from torch import nn

        return nn.MSELoss()


@dataclass(frozen=True)
class L1:
    """mean(|pred - y|); the gradient at pred == y is 0, as torch's sign() gives."""

    def value_and_grad(self, pred: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        r = pred - y
        n = r.shape[-1]
        return np.add.reduce(np.abs(r), axis=-1) / n, np.sign(r) / n

    def torch_loss(self):
        from torch import nn

        return nn.L1Loss()


@dataclass(frozen=True)
class Huber:
    """mean of 0.5 r^2 where |r| < delta, else delta * (|r| - 0.5 delta); r = pred - y."""

    delta: float = 1.0

    def value_and_grad(self, pred: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        r = pred - y
        a = np.abs(r)
        quadratic = a < self.delta
        per_sample = np.where(quadratic, 0.5 * r * r, self.delta * (a - 0.5 * self.delta))
        n = r.shape[-1]
        return np.add.reduce(per_sample, axis=-1) / n, np.clip(r, -self.delta, self.delta) / n

    def torch_loss(self):
        from torch import nn

        return nn.HuberLoss(delta=self.delta)
