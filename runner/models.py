"""The two models, each with its forward and its hand-derived gradient side by side.

`forward` is written once for NumPy arrays and torch tensors alike (pass the module as `xp`); the
autograd loop differentiates it with torch, the NumPy loop uses `backward`, and the optim loop
gets the equivalent `nn.Module` from `module`. Shapes: x is (N, F), predictions are (N,).

`forward` and `backward` read `inputs(x)`, what the model takes from a batch, prepared once per
batch rather than once per step: with the full batch that is once per run, and a step of these
tiny models costs about as much as a single slicing operation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from runner.errors import ConfigError

Array = Any  # numpy.ndarray or torch.Tensor


@dataclass(frozen=True)
class ScalarModel:
    """y = w * x, one parameter `weight` of shape []."""

    init: float | None = 0.0

    def init_params(self, n_features: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        if n_features != 1:
            raise ConfigError(
                "model",
                "scalar",
                f"data with one feature (y = w*x); the data has {n_features}: use model=linear",
            )
        if self.init is None:
            # nn.Linear(1, 1)'s default: uniform in +-1/sqrt(fan_in) = +-1.
            return {"weight": rng.uniform(-1.0, 1.0, size=())}
        return {"weight": np.array(float(self.init))}

    @staticmethod
    def inputs(x: Array) -> Array:
        """The one feature column, (N,)."""
        return x[:, 0]

    @staticmethod
    def forward(params: Mapping[str, Array], inputs: Array, xp: Any) -> Array:
        w = params["weight"]  # () or, for K jobs side by side (runner.loops), (K,)
        return (w[..., None] if w.ndim else w) * inputs  # (N,) or (K, N)

    @staticmethod
    def backward(params: Mapping[str, Array], inputs: np.ndarray, dpred: np.ndarray) -> dict:
        """Gradients of the loss given dL/dpred (N,) or (K, N): dL/dw = sum_i dpred_i * x_i."""
        return {"weight": np.dot(dpred, inputs)}

    def module(self, params: Mapping[str, Array]):
        """An nn.Module holding a copy of `params` (torch tensors of the run's dtype/device)."""
        from runner.torch_models import ScalarModule

        return ScalarModule(params["weight"])


@dataclass(frozen=True)
class LinearModel:
    """nn.Linear(n_features, 1): `weight` [1, n_features] and, with bias, `bias` [1]."""

    init: float | None = None
    bias: bool = True

    def init_params(self, n_features: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        shapes = {"weight": (1, n_features)} | ({"bias": (1,)} if self.bias else {})
        if self.init is not None:
            return {name: np.full(shape, float(self.init)) for name, shape in shapes.items()}
        # nn.Linear.reset_parameters: kaiming_uniform_(a=sqrt(5)) on the weight gives the bound
        # 1/sqrt(fan_in), and the bias uses the same bound. Drawn with NumPy from train.seed so
        # the numpy loop never needs torch; all three loops then start from these values.
        bound = 1.0 / math.sqrt(n_features)
        return {name: rng.uniform(-bound, bound, size=shape) for name, shape in shapes.items()}

    @staticmethod
    def inputs(x: Array) -> Array:
        """The batch as it is, (N, F)."""
        return x

    def forward(self, params: Mapping[str, Array], x: Array, xp: Any) -> Array:
        # One model: weight (1, F), bias (1,). K jobs side by side (runner.loops): a leading
        # axis, weight (K, 1, F) and bias (K, 1), giving predictions (K, N).
        w = params["weight"][..., 0, :]  # (F,) or (K, F)
        pred = x @ w if w.ndim == 1 else w @ x.T  # (N,) or (K, N)
        if not self.bias:
            return pred
        b = params["bias"]
        return pred + (b[0] if b.ndim == 1 else b)

    def backward(self, params: Mapping[str, Array], x: np.ndarray, dpred: np.ndarray) -> dict:
        """dL/dW = dpred^T x as (1, F); dL/db = sum(dpred) as (1,); each with a leading K axis
        when dpred is (K, N)."""
        grads = {"weight": (dpred @ x)[..., None, :]}
        if self.bias:
            grads["bias"] = np.sum(dpred, axis=-1, keepdims=True)
        return grads

    def module(self, params: Mapping[str, Array]):
        from runner.torch_models import linear_module

        return linear_module(params["weight"], params.get("bias"))
