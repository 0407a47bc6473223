"""Losses with mean reduction: the NumPy value and its analytic gradient side by side, and the
torch.nn loss the torch loops use instead. `pred` and `y` are (N,); `pred` may also be (K, N),
K models at once (runner.vectorized), giving K losses."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class MSE:
    """mean((pred - y)^2)."""

    def value_and_grad(self, pred: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        r = pred - y
        return np.mean(r * r, axis=-1), (2.0 / r.shape[-1]) * r

    def torch_loss(self):
        from torch import nn

        return nn.MSELoss()


@dataclass(frozen=True)
class L1:
    """mean(|pred - y|); the gradient at pred == y is 0, as torch's sign() gives."""

    def value_and_grad(self, pred: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        r = pred - y
        return np.mean(np.abs(r), axis=-1), np.sign(r) / r.shape[-1]

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
        return np.mean(per_sample, axis=-1), np.clip(r, -self.delta, self.delta) / r.shape[-1]

    def torch_loss(self):
        from torch import nn

        return nn.HuberLoss(delta=self.delta)
