"""The nn.Modules of the optim loop (kept apart so that runner.models never imports torch)."""

from __future__ import annotations

import torch
from torch import nn


class ScalarModule(nn.Module):
    """y = w * x for x of shape (N, 1); returns (N, 1), as nn.Linear(1, 1, bias=False) would."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * x


def linear_module(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    """nn.Linear with the given initial weight [O, F] (and bias [O]) copied in."""
    module = nn.Linear(
        weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device,
        dtype=weight.dtype,
    )  # fmt: skip
    with torch.no_grad():
        module.weight.copy_(weight)
        if bias is not None:
            module.bias.copy_(bias)
    return module


def mlp_module(params: dict, prefixes: list[str], activation) -> nn.Sequential:
    """nn.Sequential(Linear, activation(), Linear, ...) with the given initial parameters copied
    in, one Linear per prefix ("0.", "2.", ...): its names are the parameters' names."""
    layers: list[nn.Module] = []
    for prefix in prefixes:
        if layers:
            layers.append(activation())
        layers.append(linear_module(params[f"{prefix}weight"], params.get(f"{prefix}bias")))
    return nn.Sequential(*layers)
