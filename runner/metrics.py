"""Metric names and how host rows turn into them; the one place that knows the column layout.

A host row is [loss, lr, params..., grads..., extras...] with every parameter flattened in C
order, in the model's parameter order (see Loop.to_host), and then one value per extra that a
feature logs (runner.loops.Problem.extras). `Layout` turns rows into the metric table that the
CSV and TensorBoard sinks share, so both carry the same keys with the same values. Extras are
the last columns, after `grad_norm`, each named as it is: a feature that adds one never moves
an existing column, and with none the columns are those of a run without such features.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np


def flat(params: Mapping[str, np.ndarray]) -> np.ndarray:
    """Every element of `params` in one float64 vector: parameter by parameter, each flattened in
    C order, as the `param/...` columns list them."""
    return np.concatenate([np.ravel(np.asarray(v, np.float64)) for v in params.values()])


@dataclass(frozen=True)
class Layout:
    shapes: Mapping[str, tuple[int, ...]]  # parameter name -> shape, in the model's order
    max_elements: int = 16
    extras: tuple[str, ...] = ()  # names of the per-job values after the gradients in a row
    columns: list[str] = field(init=False)  # metric keys, in CSV order (after `step`)
    _direct: np.ndarray = field(init=False, repr=False)  # row index of each direct column
    _direct_cols: np.ndarray = field(init=False, repr=False)  # ... and its column
    _norms: list[tuple[int, int, int]] = field(init=False, repr=False)  # (column, start, stop)

    def __post_init__(self) -> None:
        columns, direct, norms = ["loss", "lr"], [0, 1], []
        grads_at = 2 + self.n_values
        for kind, base in (("param", 2), ("grad", grads_at)):
            for name, (start, stop) in self.slices.items():
                size = stop - start
                if size > self.max_elements:
                    norms.append((len(columns), base + start, base + stop))
                    columns.append(f"{kind}_norm/{name}")
                elif size == 1:
                    direct.append(base + start)
                    columns.append(f"{kind}/{name}")
                else:
                    direct.extend(range(base + start, base + stop))
                    columns.extend(f"{kind}/{name}/{i}" for i in range(size))
        norms.append((len(columns), grads_at, grads_at + self.n_values))
        columns.append("grad_norm")
        extras_at = grads_at + self.n_values
        direct.extend(range(extras_at, extras_at + len(self.extras)))
        columns.extend(self.extras)
        object.__setattr__(self, "columns", columns)
        object.__setattr__(self, "_direct", np.array(direct))
        object.__setattr__(self, "_norms", norms)
        norm_cols = {col for col, _, _ in norms}
        direct_cols = [i for i in range(len(columns)) if i not in norm_cols]
        object.__setattr__(self, "_direct_cols", np.array(direct_cols))

    @property
    def slices(self) -> dict[str, tuple[int, int]]:
        """Each parameter's [start, stop) within the flattened parameters (or gradients)."""
        out, start = {}, 0
        for name, shape in self.shapes.items():
            size = math.prod(shape)
            out[name] = (start, start + size)
            start += size
        return out

    @property
    def n_values(self) -> int:
        return sum(math.prod(s) for s in self.shapes.values())

    def table(self, rows: np.ndarray) -> np.ndarray:
        """(K, D) host rows -> (K, len(columns)) metric values."""
        out = np.empty((rows.shape[0], len(self.columns)))
        out[:, self._direct_cols] = rows[:, self._direct]
        for col, start, stop in self._norms:
            out[:, col] = np.linalg.norm(rows[:, start:stop], axis=1)
        return out

    def row_index(self, name: str) -> int:
        """Where the value `name` (`loss`, `lr` or an extra) sits in a host row."""
        if name in ("loss", "lr"):
            return 0 if name == "loss" else 1
        return 2 + 2 * self.n_values + self.extras.index(name)

    def block(self, rows: np.ndarray, kind: str, name: str) -> np.ndarray:
        """(K, size) flattened values of parameter `name` (kind="param") or its gradient
        (kind="grad") in each of the (K, D) host rows."""
        start, stop = self.slices[name]
        base = 2 if kind == "param" else 2 + self.n_values
        return rows[:, base + start : base + stop]

    def tensors(self, row: np.ndarray, kind: str) -> dict[str, np.ndarray]:
        """The parameters (kind="param") or gradients (kind="grad") of one row, shaped."""
        return {
            name: self.block(row[None, :], kind, name).reshape(shape)
            for name, shape in self.shapes.items()
        }
