"""The three training loops and what they share.

A loop is built from a `Problem` (plain arrays and small specs, no config) and yields one
`StepRecord` per optimizer update. Loops do no I/O, no logging and no host syncs of their own:
the runner decides when records move to the host and where they go. Import a loop from its own
module (`runner.loops.numpy_loop`, ...): this package imports no torch.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import numpy as np

from runner.data import BatchSchedule

Array = Any  # numpy.ndarray or torch.Tensor


class StepRecord(NamedTuple):
    """One optimizer update. Values stay in the loop's own arrays (on its device).

    loss: at the parameters before this update (0-d); params: after it; grads: the ones it used.
    A NamedTuple: one is made every step, and it is the cheapest immutable record Python has.
    """

    step: int
    loss: Array
    lr: float
    params: Mapping[str, Array]
    grads: Mapping[str, Array]


@dataclass(frozen=True)
class Problem:
    """Everything a loop needs, built once by the runner and shared by all loops."""

    x: np.ndarray  # (N, F) in `dtype`
    y: np.ndarray  # (N,) in `dtype`
    init: Mapping[str, np.ndarray]  # initial parameters in `dtype`, drawn once
    model: Any  # runner.models.ScalarModel | LinearModel
    loss: Any  # runner.losses.MSE | L1 | Huber
    optimizer: Any  # a rule from runner.optim_rules
    batches: BatchSchedule
    dtype: str  # "float32" | "float64"
    device: str  # resolved: "cpu", "cuda", "mps"


class Loop(Protocol):
    name: str
    backend: str  # "numpy" | "torch": the kind of arrays in its records and state

    def __init__(self, problem: Problem) -> None: ...

    def steps(self, first: int, last: int) -> Iterator[StepRecord]:
        """Yields the records of steps first..last (1-based, inclusive)."""
        ...

    @staticmethod
    def to_host(records: list[StepRecord]) -> np.ndarray:
        """Packs records into rows [loss, lr, params..., grads...] as a (K, D) float64 array."""
        ...

    def state(self) -> dict:
        """{"params": ..., "optimizer": ...} after the last step, for a checkpoint."""
        ...

    def load_state(self, state: dict) -> None:
        """Continues from a state() taken earlier (same problem)."""
        ...


def pack_rows(records: list[StepRecord], xp: Any, to_numpy: Any) -> np.ndarray:
    """Host rows [loss, lr, params..., grads...] of records holding `xp` arrays (see
    Loop.to_host): one stack per parameter across the records, one transfer for them all."""
    k = len(records)
    names = list(records[0].params)
    blocks = [xp.stack([r.loss for r in records]).reshape(k, 1)]
    blocks += [xp.stack([r.params[n] for r in records]).reshape(k, -1) for n in names]
    blocks += [xp.stack([r.grads[n] for r in records]).reshape(k, -1) for n in names]
    values = to_numpy(xp.concatenate(blocks, axis=1))  # (K, 1 + 2P), in the loop's dtype
    rows = np.empty((k, values.shape[1] + 1))
    rows[:, 0] = values[:, 0]
    rows[:, 1] = [r.lr for r in records]
    rows[:, 2:] = values[:, 1:]
    return rows


def pack_numpy(records: list[StepRecord]) -> np.ndarray:
    """Host rows of records whose values are NumPy arrays."""
    return pack_rows(records, np, np.asarray)
