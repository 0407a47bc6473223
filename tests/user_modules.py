"""Modules a user might write, for tests/test_user_module.py (imported by model.target)."""

from __future__ import annotations

from typing import ClassVar

from torch import nn


class TinyMLP(nn.Module):
    """Two layers with tanh between them: x (N, F) -> (N, 1)."""

    def __init__(self, n_features: int = 1, hidden: int = 3) -> None:
        super().__init__()
        self.hidden = nn.Linear(n_features, hidden)
        self.out = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.out(self.hidden(x).tanh())


class FlatOutput(TinyMLP):
    """TinyMLP returning (N,) rather than (N, 1)."""

    def forward(self, x):
        return super().forward(x)[:, 0]


class TwoOutputs(nn.Module):
    """nn.Linear(F, 2): predictions (N, 2)."""

    def __init__(self, n_features: int = 1) -> None:
        super().__init__()
        self.linear = nn.Linear(n_features, 2)

    def forward(self, x):
        return self.linear(x)


class NoParameters(nn.Module):
    def forward(self, x):
        return x


class NotAModule:
    """A class, but no nn.Module: refused before it is called."""

    calls: ClassVar[list] = []

    def __init__(self, **kwargs) -> None:
        NotAModule.calls.append(kwargs)


def a_function(x):
    return x
