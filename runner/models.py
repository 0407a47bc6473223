"""The models, each with its forward and its hand-derived gradient side by side.

`forward` is written once for NumPy arrays and torch tensors alike (pass the module as `xp`); the
autograd loop differentiates it with torch, the NumPy loop uses `backward`, and the optim loop
gets the equivalent `nn.Module` from `module`. Shapes: x is (N, F); predictions are (N,) for a
model with one output and (N, O) for O > 1 outputs; K jobs side by side add a leading axis.
`out_features` is the O a model predicts (the runner checks targets and losses against it).

`forward` and `backward` read `inputs(x)`, what the model takes from a batch, prepared once per
batch rather than once per step: with the full batch that is once per run, and a step of these
tiny models costs about as much as a single slicing operation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from runner.errors import ConfigError

Array = Any  # numpy.ndarray or torch.Tensor


@dataclass(frozen=True)
class ScalarModel:
    """y = w * x, one parameter `weight` of shape []."""

    init: float | None = 0.0
    out_features = 1

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
    """nn.Linear(n_features, out_features): `weight` [out, n_features] and, with bias, `bias`
    [out]."""

    init: float | None = None
    bias: bool = True
    out_features: int = 1

    _dense: Dense = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.out_features < 1:
            raise ConfigError("model.out_features", self.out_features, "an integer >= 1")
        object.__setattr__(self, "_dense", Dense("weight", "bias" if self.bias else None))

    def init_params(self, n_features: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        return dense_init(n_features, self.out_features, self.bias, self.init, rng, "")

    @staticmethod
    def inputs(x: Array) -> Array:
        """The batch as it is, (N, F)."""
        return x

    def forward(self, params: Mapping[str, Array], x: Array, xp: Any) -> Array:
        if self.out_features > 1:
            return self._dense.forward(params, x)  # (N, O) or (K, N, O)
        # One model: weight (1, F), bias (1,). K jobs side by side (runner.loops): a leading
        # axis, weight (K, 1, F) and bias (K, 1), giving predictions (K, N).
        w = params["weight"][..., 0, :]  # (F,) or (K, F)
        pred = x @ w if w.ndim == 1 else w @ x.T  # (N,) or (K, N)
        if not self.bias:
            return pred
        b = params["bias"]
        return pred + (b[0] if b.ndim == 1 else b)

    def backward(self, params: Mapping[str, Array], x: np.ndarray, dpred: np.ndarray) -> dict:
        """dL/dW = dpred^T x as (O, F); dL/db = the sum of dpred over the samples, (O,); each
        with a leading K axis when dpred has one."""
        if self.out_features > 1:
            grads: dict[str, np.ndarray] = {}
            self._dense.backward(params, x, dpred, grads, need_input=False)
            return grads
        grads = {"weight": (dpred @ x)[..., None, :]}
        if self.bias:
            grads["bias"] = np.sum(dpred, axis=-1, keepdims=True)
        return grads

    def module(self, params: Mapping[str, Array]):
        from runner.torch_models import linear_module

        return linear_module(params["weight"], params.get("bias"))


# --- layers of the MLP: each forward next to its backward -------------------------------------
def dense_init(
    fan_in: int, fan_out: int, bias: bool, init: float | None, rng: np.random.Generator, prefix: str
) -> dict[str, np.ndarray]:
    """One nn.Linear(fan_in, fan_out)'s parameters, named `<prefix>weight` [out, in] and
    `<prefix>bias` [out]: every element `init`, or (init None) nn.Linear's default drawn from
    `rng`, weight first."""
    shapes = {f"{prefix}weight": (fan_out, fan_in)} | (
        {f"{prefix}bias": (fan_out,)} if bias else {}
    )
    if init is not None:
        return {name: np.full(shape, float(init)) for name, shape in shapes.items()}
    # nn.Linear.reset_parameters: kaiming_uniform_(a=sqrt(5)) on the weight gives the bound
    # 1/sqrt(fan_in), and the bias uses the same bound. Drawn with NumPy from train.seed so
    # the numpy loop never needs torch; all three loops then start from these values.
    bound = 1.0 / math.sqrt(fan_in)
    return {name: rng.uniform(-bound, bound, size=shape) for name, shape in shapes.items()}


@dataclass(frozen=True)
class Dense:
    """One nn.Linear layer: the names of its parameters, its forward and its gradients."""

    weight: str  # the weight's name, [out, in]
    bias: str | None  # the bias's name, [out]; None without one

    def forward(self, params: Mapping[str, Array], h: Array) -> Array:
        """h @ W^T + b: h (N, I) or (K, N, I), W (O, I) or (K, O, I), b (O,) or (K, O) ->
        (N, O) or (K, N, O)."""
        out = h @ params[self.weight].swapaxes(-1, -2)
        return out if self.bias is None else out + params[self.bias][..., None, :]

    def backward(
        self, params: Mapping[str, np.ndarray], h: np.ndarray, dout: np.ndarray, grads: dict,
        need_input: bool = True,
    ) -> np.ndarray | None:  # fmt: skip
        """Given dL/dout (N, O) or (K, N, O), puts dW = dout^T h and db = the sum of dout over
        the samples into `grads`; returns dL/dh = dout W (when `need_input`)."""
        grads[self.weight] = dout.swapaxes(-1, -2) @ h
        if self.bias is not None:
            grads[self.bias] = np.add.reduce(dout, axis=-2)
        return dout @ params[self.weight] if need_input else None


@dataclass(frozen=True)
class Tanh:
    """tanh; its derivative 1 - tanh^2 (seed notebook 003) from the output alone."""

    @staticmethod
    def forward(h: Array, xp: Any) -> Array:
        return xp.tanh(h)

    @staticmethod
    def backward(out: np.ndarray, dout: np.ndarray) -> np.ndarray:
        return dout * (1.0 - out * out)

    @staticmethod
    def module():
        from torch import nn

        return nn.Tanh()


@dataclass(frozen=True)
class ReLU:
    """max(h, 0); its derivative 1 where h > 0, else 0 (torch's choice at 0)."""

    @staticmethod
    def forward(h: Array, xp: Any) -> Array:
        return h * (h > 0)

    @staticmethod
    def backward(out: np.ndarray, dout: np.ndarray) -> np.ndarray:
        return dout * (out > 0)

    @staticmethod
    def module():
        from torch import nn

        return nn.ReLU()


@dataclass(frozen=True)
class Sigmoid:
    """1 / (1 + exp(-h)); its derivative s (1 - s) from the output s alone."""

    @staticmethod
    def forward(h: Array, xp: Any) -> Array:
        return 1.0 / (1.0 + xp.exp(-h))

    @staticmethod
    def backward(out: np.ndarray, dout: np.ndarray) -> np.ndarray:
        return dout * (out * (1.0 - out))

    @staticmethod
    def module():
        from torch import nn

        return nn.Sigmoid()


ACTIVATIONS = {"tanh": Tanh(), "relu": ReLU(), "sigmoid": Sigmoid()}


@dataclass(frozen=True)
class MLPModel:
    """nn.Sequential(Linear, activation, Linear, ..., Linear): Linear layers of widths `hidden`
    and then `out_features`, the activation between them. Parameters are named as that
    nn.Sequential names them: `0.weight`, `0.bias`, `2.weight`, ... (a layer's index counts the
    activations too).

    The NumPy backward goes back through the layers one by one, each layer's gradient beside
    its forward (Dense: dense_forward / dense_backward; the activations' forward / backward).
    It reuses the activations of the forward just taken at the same parameters and inputs (the
    NumPy loop's order: forward, loss, backward), else takes the forward again.
    """

    hidden: tuple[int, ...] = (16,)
    activation: str = "tanh"
    out_features: int = 1
    bias: bool = True
    init: float | None = None
    # the last NumPy forward: [params, inputs, each layer's input]
    _tape: list = field(default_factory=list, repr=False, compare=False)
    _layers: tuple[Dense, ...] = field(init=False, repr=False, compare=False)
    _act: Any = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden", tuple(self.hidden))
        if not self.hidden or any(int(w) < 1 for w in self.hidden):
            raise ConfigError("model.hidden", list(self.hidden), "a list of widths >= 1, e.g. [16]")
        if self.activation not in ACTIVATIONS:
            raise ConfigError("model.activation", self.activation, " | ".join(ACTIVATIONS))
        if self.out_features < 1:
            raise ConfigError("model.out_features", self.out_features, "an integer >= 1")
        layers = tuple(
            Dense(f"{prefix}weight", f"{prefix}bias" if self.bias else None)
            for prefix in self.layer_names
        )
        object.__setattr__(self, "_layers", layers)
        object.__setattr__(self, "_act", ACTIVATIONS[self.activation])

    @property
    def layer_names(self) -> list[str]:
        """Each Linear layer's prefix, as nn.Sequential numbers it: "0.", "2.", ..."""
        return [f"{2 * i}." for i in range(len(self.hidden) + 1)]

    def init_params(self, n_features: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        widths = [n_features, *self.hidden, self.out_features]
        params: dict[str, np.ndarray] = {}
        for prefix, fan_in, fan_out in zip(self.layer_names, widths, widths[1:], strict=False):
            params |= dense_init(fan_in, fan_out, self.bias, self.init, rng, prefix)
        return params

    @staticmethod
    def inputs(x: Array) -> Array:
        """The batch as it is, (N, F)."""
        return x

    def forward(self, params: Mapping[str, Array], x: Array, xp: Any) -> Array:
        *hidden, last = self._layers
        act = self._act
        h, seen = x, [x]  # each layer's input
        for layer in hidden:
            h = act.forward(layer.forward(params, h), xp)
            seen.append(h)
        out = last.forward(params, h)
        if xp is np:
            self._tape[:] = (params, x, seen)
        return out[..., 0] if self.out_features == 1 else out  # (N,) | (N, O), K jobs: (K, ...)

    def backward(self, params: Mapping[str, Array], x: np.ndarray, dpred: np.ndarray) -> dict:
        """Back through the layers, last first: each Dense layer's weight and bias gradients
        and the gradient of its input, then back through the activation that made that input."""
        tape = self._tape
        if not tape or tape[0] is not params or tape[1] is not x:
            self.forward(params, x, np)
        seen = self._tape[2]
        act, layers = self._act, self._layers
        grads: dict[str, np.ndarray] = {}
        d = dpred[..., None] if self.out_features == 1 else dpred
        for i in range(len(layers) - 1, 0, -1):
            d = act.backward(seen[i], layers[i].backward(params, seen[i], d, grads))
        layers[0].backward(params, x, d, grads, need_input=False)
        return {name: grads[name] for name in params}  # in the parameters' order

    def module(self, params: Mapping[str, Array]):
        from runner.torch_models import mlp_module

        return mlp_module(params, self.layer_names, ACTIVATIONS[self.activation].module)
