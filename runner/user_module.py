"""model=module: the user's own torch.nn.Module, trained by the autograd and optim loops.

`model.target` is the dotted path of an nn.Module subclass (`tinynet.TinyMLP` for a file
tinynet.py in the working directory), `model.kwargs` what its constructor takes. The path is
imported and checked here, never through Hydra's `_target_`: only a class that subclasses
nn.Module is ever called. The working directory comes first on sys.path while it is imported,
as `python -m runner` and `python script.py` have it, so the console script `runner` finds the
same files.

The module keeps its own initialisation, drawn with torch.manual_seed(model.seed) (train.seed by
default) and read out as NumPy arrays, so every loop starts from those values and a user's own
`torch.manual_seed(seed); Net(**kwargs)` builds the same ones. Parameters carry the names of the
module's `named_parameters()`. Predictions are (N,) for a module of one output ((N, 1) or (N,)),
(N, O) for more. There is no hand-derived gradient (`backward` refuses): the numpy loop cannot
train a module, and runner-check compares autograd with finite differences only.

The module should compute its output from its parameters and inputs alone: buffers it updates
in its forward (BatchNorm's running statistics) and random layers (Dropout) are outside what the
loops keep in step and what a checkpoint holds.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from runner.errors import ConfigError

Array = Any  # numpy.ndarray or torch.Tensor

ALLOWED = "the dotted path of a torch.nn.Module subclass (e.g. tinynet.TinyMLP for tinynet.py)"


def module_class(target: str) -> type:
    """The nn.Module subclass `target` names, imported (working directory first) but not
    called; ConfigError naming model.target for anything else."""
    from torch import nn

    module_name, _, attribute = str(target).rpartition(".")
    if not module_name or not attribute:
        raise ConfigError("model.target", target, ALLOWED)
    try:
        with _cwd_on_path():
            found: Any = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(
            "model.target", target, f"{ALLOWED}; cannot import {module_name}: {_first_line(err)}"
        ) from None
    except Exception as err:  # the user's file raised while it was imported
        raise ConfigError(
            "model.target",
            target,
            f"{ALLOWED}; importing {module_name} raised {type(err).__name__}: {_first_line(err)}",
        ) from None
    found = getattr(found, attribute, None)
    if found is None:
        raise ConfigError("model.target", target, f"{ALLOWED}; {module_name} has no {attribute}")
    if not (isinstance(found, type) and issubclass(found, nn.Module)):
        what = type(found).__name__ if not isinstance(found, type) else f"class {found.__name__}"
        raise ConfigError("model.target", target, f"{ALLOWED}; it is a {what}")
    return found


@contextlib.contextmanager
def _cwd_on_path():
    cwd = os.getcwd()
    added = cwd not in sys.path and "" not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        yield
    finally:
        if added:
            with contextlib.suppress(ValueError):
                sys.path.remove(cwd)


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


class UserModule:
    """The model interface of runner.models for a user's nn.Module (see the module docstring)."""

    # The numpy loop needs a hand-derived gradient; a user's module has none (schema.validate).
    hand_gradient: ClassVar[bool] = False
    # Sweeps train it job by job: torch.func.vmap, which would batch the jobs, does not take
    # every module (the vectorized launcher).
    vectorizes: ClassVar[bool] = False

    def __init__(self, target: str, kwargs: Mapping[str, Any] | None = None, seed: int = 0):
        from omegaconf import OmegaConf

        self.target, self.seed = str(target), int(seed)
        if OmegaConf.is_config(kwargs):
            kwargs = OmegaConf.to_container(kwargs, resolve=True)
        self.kwargs = dict(kwargs or {})
        self.cls = module_class(self.target)  # checked before anything calls it
        self._templates: dict[tuple, Any] = {}  # (dtype, device) -> module, for the forward

    def build(self) -> Any:
        """A new module from `model.kwargs`, initialised from torch.manual_seed(model.seed),
        leaving torch's global random state as it was."""
        import torch

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            try:
                module = self.cls(**self.kwargs)
            except Exception as err:
                raise ConfigError(
                    "model.kwargs",
                    self.kwargs,
                    f"keyword arguments {self.target} takes ({type(err).__name__}: "
                    f"{_first_line(err)})",
                ) from None
        if not isinstance(module, torch.nn.Module) or not list(module.parameters()):
            raise ConfigError("model.target", self.target, f"{ALLOWED} with at least one parameter")
        return module

    def init_params(self, n_features: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """The module's own initial values (float32, as torch draws them by default), after one
        trial forward on zeros of shape (2, n_features) confirms that the module takes the
        data. `rng` is unused: the values come from torch.manual_seed(model.seed)."""
        import torch

        module = self.build()
        try:
            with torch.no_grad():
                out = module(torch.zeros(2, n_features))
        except Exception as err:
            raise ConfigError(
                "model.target",
                self.target,
                f"a module whose forward takes inputs of shape (N, {n_features}), the data's "
                f"features; it raised {type(err).__name__}: {_first_line(err)}",
            ) from None
        if not isinstance(out, torch.Tensor) or out.ndim not in (1, 2) or out.shape[0] != 2:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ConfigError(
                "model.target",
                self.target,
                f"a module whose forward returns (N,) or (N, outputs) for inputs (N, F); "
                f"it returned {shape} for N=2",
            )
        return {name: p.detach().cpu().numpy().copy() for name, p in module.named_parameters()}

    @staticmethod
    def inputs(x: Array) -> Array:
        """The batch as it is, (N, F)."""
        return x

    def forward(self, params: Mapping[str, Array], x: Array, xp: Any) -> Array:
        """The module's forward at `params` (torch.func.functional_call, so gradients reach
        the caller's tensors): (N,) for one output, (N, O) for more. K jobs side by side
        (params with a leading axis K): torch.func.vmap over them, (K, N) or (K, N, O). NumPy
        arrays in (runner-check's finite differences): NumPy out, without a graph."""
        import torch

        if xp is np:
            with torch.no_grad():
                tensors = {k: torch.from_numpy(np.asarray(v)) for k, v in params.items()}
                return self.forward(tensors, torch.from_numpy(np.asarray(x)), torch).numpy()
        from torch.func import functional_call, vmap

        first = next(iter(params.values()))
        template = self._template(first.dtype, first.device)
        jobs = first.ndim > template.get_parameter(next(iter(params))).ndim
        call = lambda p, inputs: functional_call(template, p, (inputs,))  # noqa: E731
        out = vmap(call, in_dims=(0, None))(dict(params), x) if jobs else call(dict(params), x)
        return out[..., 0] if out.ndim == 2 + jobs and out.shape[-1] == 1 else out

    def _template(self, dtype: Any, device: Any) -> Any:
        key = (dtype, device)
        if key not in self._templates:
            self._templates[key] = self.build().to(device=device, dtype=dtype)
        return self._templates[key]

    def backward(self, params: Mapping[str, Array], inputs: Array, dpred: Array) -> dict:
        raise ConfigError(
            "loop",
            "numpy",
            "autograd or optim with model=module (a user's module has no hand-written gradient)",
        )

    def module(self, params: Mapping[str, Array]) -> Any:
        """A new module holding a copy of `params` (torch tensors of the run's dtype/device).
        Its output is (N, 1) for one output, as nn.Linear(F, 1) gives the optim loop: a module
        that returns (N,) gets a forward hook adding the column."""
        import torch

        first = next(iter(params.values()))
        module = self.build().to(device=first.device, dtype=first.dtype)
        with torch.no_grad():
            for name, p in module.named_parameters():
                p.copy_(params[name])
        module.register_forward_hook(_as_column)
        return module

    @staticmethod
    def n_features(params: Mapping[str, np.ndarray]) -> int | None:
        """The inputs' width as the first 2-D parameter has it (an nn.Linear's in_features),
        or None when no parameter is 2-D (runner-predict)."""
        return next((int(v.shape[1]) for v in params.values() if np.ndim(v) == 2), None)


def _as_column(module: Any, args: tuple, out: Any) -> Any:
    # One value per row, (N,) from inputs (N, F): (N, 1), the optim loop's target shape
    return out[..., None] if out.ndim == args[0].ndim - 1 else out
