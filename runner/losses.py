"""Losses with mean reduction: the NumPy value and its analytic gradient side by side, and the
torch.nn loss the torch loops use instead. `pred` and `y` are (N,), or (N, O) for O outputs;
`pred` may also carry a leading job axis, (K, N) or (K, N, O), K jobs side by side
(runner.loops), giving K losses. The mean is over every element of a job's predictions, as
torch's reduction="mean" takes it. `cross_entropy` takes logits (N, C) and class ids y (N,).

Means are written as a sum over the last axis divided by its length: the same pairwise sum and
the same division np.mean does, bit for bit, without its Python-level wrapper (which costs more
than the rest of a small step)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


def _mean(per_element: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The mean over each job's elements: the last axis for targets (N,), the last two for
    (N, O)."""
    if y.ndim == 1:
        return np.add.reduce(per_element, axis=-1) / per_element.shape[-1]
    flat = per_element.reshape(*per_element.shape[:-2], -1)
    return np.add.reduce(flat, axis=-1) / flat.shape[-1]


def _count(pred: np.ndarray, y: np.ndarray) -> int:
    """How many elements each job's mean divides by."""
    return pred.shape[-1] if y.ndim == 1 else pred.shape[-1] * pred.shape[-2]


class Regression:
    """What the regression losses share: float targets of the predictions' shape."""

    class_targets = False  # targets are class ids (integers), not values
    classifies = False  # runs with this loss log `accuracy`


@dataclass(frozen=True)
class MSE(Regression):
    """mean((pred - y)^2)."""

    name = "mse"  # the option of the `loss` group

    def value_and_grad(self, pred: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        r = pred - y
        if y.ndim == 1:
            n = r.shape[-1]
            return np.add.reduce(r * r, axis=-1) / n, (2.0 / n) * r
        return _mean(r * r, y), (2.0 / _count(r, y)) * r

    def torch_loss(self):
        from torch import nn

        return nn.MSELoss()


@dataclass(frozen=True)
class L1(Regression):
    """mean(|pred - y|); the gradient at pred == y is 0, as torch's sign() gives."""

    name = "l1"  # the option of the `loss` group

    def value_and_grad(self, pred: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        r = pred - y
        if y.ndim == 1:
            n = r.shape[-1]
            return np.add.reduce(np.abs(r), axis=-1) / n, np.sign(r) / n
        return _mean(np.abs(r), y), np.sign(r) / _count(r, y)

    def torch_loss(self):
        from torch import nn

        return nn.L1Loss()


@dataclass(frozen=True)
class Huber(Regression):
    """mean of 0.5 r^2 where |r| < delta, else delta * (|r| - 0.5 delta); r = pred - y."""

    name = "huber"  # the option of the `loss` group

    delta: float = 1.0

    def value_and_grad(self, pred: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        r = pred - y
        a = np.abs(r)
        quadratic = a < self.delta
        per_sample = np.where(quadratic, 0.5 * r * r, self.delta * (a - 0.5 * self.delta))
        if y.ndim == 1:
            n = r.shape[-1]
            return np.add.reduce(per_sample, axis=-1) / n, np.clip(r, -self.delta, self.delta) / n
        return _mean(per_sample, y), np.clip(r, -self.delta, self.delta) / _count(r, y)

    def torch_loss(self):
        from torch import nn

        return nn.HuberLoss(delta=self.delta)


@dataclass(frozen=True)
class BCEWithLogits:
    """Binary cross-entropy on logits z against targets y in [0, 1]: the mean of
    max(z, 0) - z y + log(1 + exp(-|z|)), which never overflows (torch's BCEWithLogitsLoss);
    its gradient (sigmoid(z) - y) / n. Accuracy: (z > 0) == y."""

    name = "bce_logits"  # the option of the `loss` group

    class_targets = False
    classifies = True

    def value_and_grad(self, pred: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        e = np.exp(-np.abs(pred))  # in (0, 1]: exp never overflows here
        per_element = np.maximum(pred, 0) - pred * y + np.log1p(e)
        # sigmoid(z) from e = exp(-|z|): 1 / (1 + e) for z >= 0, e / (1 + e) below
        sigmoid = np.where(pred >= 0, 1.0, e) / (1.0 + e)
        return _mean(per_element, y), (sigmoid - y) / _count(pred, y)

    @staticmethod
    def accuracy(pred: Any, y: Any, xp: Any) -> Any:
        """The fraction of elements whose sign (> 0: class 1) matches y, per job."""
        hits = (pred > 0) == (y > 0.5)
        return _fraction(hits, 1 if y.ndim == 1 else 2, xp, pred.dtype)

    def torch_loss(self):
        from torch import nn

        return nn.BCEWithLogitsLoss()


@dataclass(frozen=True)
class CrossEntropy:
    """Softmax cross-entropy of logits (N, C) against class ids y (N,): the mean over samples of
    logsumexp(z) - z_y, through the log-softmax (torch's CrossEntropyLoss); its gradient
    (softmax(z) - onehot(y)) / N. Accuracy: argmax(z) == y."""

    name = "cross_entropy"  # the option of the `loss` group

    class_targets = True
    classifies = True

    def value_and_grad(self, pred: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        shifted = pred - np.max(pred, axis=-1, keepdims=True)
        exp = np.exp(shifted)
        total = np.sum(exp, axis=-1, keepdims=True)
        log_softmax = shifted - np.log(total)  # (..., N, C)
        index = np.broadcast_to(y[:, None], (*pred.shape[:-1], 1))
        picked = np.take_along_axis(log_softmax, index, axis=-1)[..., 0]  # (..., N)
        n = pred.shape[-2]
        onehot = np.arange(pred.shape[-1]) == y[:, None]  # (N, C)
        return -np.add.reduce(picked, axis=-1) / n, (exp / total - onehot) / n

    @staticmethod
    def accuracy(pred: Any, y: Any, xp: Any) -> Any:
        """The fraction of samples whose largest logit is their class, per job."""
        return _fraction(pred.argmax(-1) == y, 1, xp, pred.dtype)

    def torch_loss(self):
        from torch import nn

        return nn.CrossEntropyLoss()


def check_targets(loss: Any, y: np.ndarray, outputs: int | None, n_classes: int | None) -> None:
    """Refuses targets `y` (N,) or (N, O) that `loss` cannot take from a model of `outputs`
    outputs (None: a model that does not say), naming what would fit. Class ids are whole
    numbers >= 0; `n_classes` is their count when the data says it (else max + 1)."""
    from runner.errors import ConfigError

    if loss.class_targets:
        if y.ndim != 1:
            raise ConfigError(
                "loss", loss.name, f"one class id per row; the targets have {y.shape[1]} columns"
            )
        bad = np.flatnonzero((y != np.floor(y)) | (y < 0))
        if bad.size:
            row = int(bad[0])
            raise ConfigError(
                "loss",
                loss.name,
                f"class ids 0, 1, 2, ... as targets; row {row + 1} holds {y[row]:g} "
                "(numbers to fit: loss=mse)",
            )
        classes = n_classes or int(y.max(initial=0)) + 1
        if outputs is not None and outputs != classes:
            raise ConfigError(
                "model.out_features",
                outputs,
                f"{classes}, one logit per class (loss={loss.name}; the targets are class ids "
                f"0..{classes - 1})",
            )
        return
    columns = 1 if y.ndim == 1 else y.shape[1]
    if outputs is not None and outputs != columns:
        if y.ndim == 1:
            hint = (
                "; class ids: loss=cross_entropy"
                if n_classes
                else f"; {outputs} outputs need targets of {outputs} values per row"
            )
        else:
            hint = ""
        raise ConfigError(
            "model.out_features",
            outputs,
            f"{columns}, the targets' values per row (loss={loss.name}){hint}",
        )
    if loss.name == "bce_logits":
        bad = np.argwhere((y < 0) | (y > 1))
        if bad.size:
            row = int(bad[0][0])
            raise ConfigError(
                "loss",
                loss.name,
                f"targets in [0, 1]; row {row + 1} holds {y[tuple(bad[0])]:g}",
            )


def _fraction(hits: Any, axes: int, xp: Any, dtype: Any) -> Any:
    """The mean of boolean `hits` over their last `axes` axes, in the predictions' dtype."""
    if xp is np:
        return np.mean(hits, axis=tuple(range(-axes, 0))).astype(dtype)
    return hits.to(dtype).mean(dim=tuple(range(-axes, 0)))


def torch_job_losses(loss_fn: Any, pred: Any, y: Any) -> Any:
    """(K,) losses of K jobs' predictions `pred` (K, N, ...) against the targets all jobs share,
    `loss_fn` a torch.nn loss with reduction="none": each job's mean over its elements."""
    k = pred.shape[0]
    if y.dtype.is_floating_point:
        per_element = loss_fn(pred, y.expand_as(pred))
    else:  # class ids: torch takes the classes on axis 1, (K, C, N) against (K, N)
        per_element = loss_fn(pred.movedim(-1, 1), y.expand(k, *y.shape))
    return per_element.mean(dim=tuple(range(1, per_element.ndim)))
