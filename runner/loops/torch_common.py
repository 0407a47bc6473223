"""What the two torch loops share: moving the problem onto the device, packing records to host."""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import torch

from runner.loops import Problem, StepRecord, pack_rows


class TorchData:
    """The problem's arrays as tensors of the run's dtype on the run's device.

    Targets are (N,) or (N, O), or with `column_targets` (N, 1) for (N,): the shape of an
    nn.Module's output, which the loss then takes as it comes (no per-step reshaping of the
    predictions). Class ids (integer targets) stay (N,) int64, as CrossEntropyLoss takes them.
    """

    def __init__(self, problem: Problem, column_targets: bool = False) -> None:
        self.device = torch.device(problem.device)
        self.dtype = getattr(torch, problem.dtype)
        self.x = torch.as_tensor(problem.x, dtype=self.dtype, device=self.device)  # (N, F)
        self.y = self._targets(problem.y, column_targets)
        self.val_x = self.val_y = None  # the held-out rows, when there are any
        if problem.val_x is not None:
            self.val_x = torch.as_tensor(problem.val_x, dtype=self.dtype, device=self.device)
            self.val_y = self._targets(problem.val_y, column_targets)
        self.batches = problem.batches

    def _targets(self, y: np.ndarray, column_targets: bool) -> torch.Tensor:
        if y.dtype.kind in "iu":  # class ids
            return torch.as_tensor(y, dtype=torch.int64, device=self.device)  # (N,)
        out = torch.as_tensor(y, dtype=self.dtype, device=self.device)  # (N,) or (N, O)
        return out[:, None] if column_targets and out.ndim == 1 else out

    def tensor(self, value: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(value, dtype=self.dtype, device=self.device).clone()

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self.batches.indices(step)
        if idx is None:
            return self.x, self.y
        idx_t = torch.from_numpy(idx).to(self.device)
        return self.x[idx_t], self.y[idx_t]


def pack_torch(records: list[StepRecord]) -> np.ndarray:
    """Host rows of records holding device tensors: stacked on the device and copied in one
    transfer, so on a GPU this is the only synchronisation, once per chunk of records."""
    return pack_rows(records, torch, lambda t: t.detach().to("cpu").numpy())


def step_or_overflow(optimizer: torch.optim.Optimizer, params: Iterable[torch.Tensor]) -> bool:
    """`optimizer.step()`; False when the step's scalars overflow the run's dtype.

    torch.optim refuses such a step (a float32 run at lr 1e38: "value cannot be converted to type
    float without overflow") where the manual rules compute it and reach inf. Both are the same
    divergence, so here the parameters become NaN (no number of the dtype is the update) and the
    run reports `diverged at step N` as the other loops do.
    """
    try:
        optimizer.step()
    except RuntimeError as err:
        if "overflow" not in str(err):
            raise
        with torch.no_grad():
            for p in params:
                p.fill_(math.nan)
        return False
    return True
