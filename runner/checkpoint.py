"""checkpoint/: what a run needs to continue exactly where it stopped, written atomically.

One file per run, replaced with a rename: `state.npz` for the numpy loop (so it never needs
torch) or `state.pt` for the torch loops (read back with `weights_only=True`). Each holds the
loop's state tree (parameters and optimizer state, the manual loops' own included), the step,
the tracker's running values and the settings that must not change on resume. There is no RNG
stream to restore: the data and initial weights come from train.seed before training, and the
batch of every step is a pure function of (seed, step) (runner.data.BatchSchedule).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runner.errors import ConfigError

FORMAT = 1
FILES = {"numpy": "state.npz", "torch": "state.pt"}


@dataclass(frozen=True)
class Checkpoint:
    step: int
    state: dict[str, Any]  # the loop's state tree
    meta: dict[str, Any]  # JSON-able: step, fingerprint, tracker values, format


def save(directory: Path, backend: str, state: dict[str, Any], meta: dict[str, Any]) -> None:
    """Writes the checkpoint of `backend` ("numpy" or "torch") into `directory`, atomically."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / FILES[backend]
    meta = {**meta, "format": FORMAT}
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".state.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            if backend == "numpy":
                np.savez(f, __meta__=np.array(json.dumps(meta)), **_flatten(state))
            else:
                import torch

                torch.save({"meta": json.dumps(meta), "state": state}, f)
            f.flush()
            os.fchmod(f.fileno(), 0o644)  # mkstemp makes it private, unlike the other outputs
            os.fsync(f.fileno())  # the rename below must never expose a file still in flight
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load(directory: Path, backend: str, device: str = "cpu") -> Checkpoint | None:
    """The checkpoint in `directory`, or None when there is none."""
    target = directory / FILES[backend]
    if not target.is_file():
        others = [b for b, name in FILES.items() if b != backend and (directory / name).is_file()]
        if others:  # told apart without reading it: the numpy loop must not need torch
            raise ConfigError(
                "train.resume",
                True,
                f"the loop of the run being resumed (its checkpoint is from a {others[0]} loop, "
                f"this loop is {backend}; start a new run directory instead)",
            )
        return None
    if backend == "numpy":
        with np.load(target, allow_pickle=False) as z:
            meta = json.loads(str(z["__meta__"]))
            state = _unflatten({k: z[k] for k in z.files if k != "__meta__"})
    else:
        import torch

        saved = torch.load(target, map_location=device, weights_only=True)
        meta, state = json.loads(saved["meta"]), saved["state"]
    return Checkpoint(int(meta["step"]), state, meta)


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
    # npz holds flat named arrays: nested keys are joined with "/", Python ints become 0-d int
    # arrays and come back as ints.
    flat: dict[str, np.ndarray] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}/"))
        else:
            flat[name] = np.asarray(value)
    return flat


def _unflatten(flat: dict[str, np.ndarray]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for name, value in flat.items():
        *parents, leaf = name.split("/")
        node = tree
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = int(value) if value.dtype.kind in "iu" and value.ndim == 0 else value
    return tree
