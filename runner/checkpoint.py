"""checkpoint/: what a run needs to continue exactly where it stopped, written atomically.

One file per run, replaced with a rename: `state.npz` for the numpy loop (so it never needs
torch) or `state.pt` for the torch loops (read back with `weights_only=True`). Each holds the
loop's state tree (parameters and optimizer state, the manual loops' own included, and under a
learning-rate schedule the scheduler's), the step, the tracker's running values and the settings
that must not change on resume. There is no RNG stream to restore: the data and initial weights
come from train.seed before training, and the batch of every step is a pure function of
(seed, step) (runner.data.BatchSchedule). A file that cannot be read, or that another format
wrote, is refused with one line that names it.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runner.errors import ConfigError, on_path

# 2: the settings hold a digest of the data, the tracker the number of rows logged.
FORMAT = 2
FILES = {"numpy": "state.npz", "torch": "state.pt"}
# The checkpoint before the last one, kept beside it: the jobs of a sweep trained side by side
# each write their own file, and a kill between two of those writes leaves them one
# checkpoint apart; the jobs ahead then resume from this one, and all continue side by side.
PREVIOUS = {"numpy": "state.prev.npz", "torch": "state.prev.pt"}
# The temporary file each save starts with; a kill can leave one behind (runner.run removes it).
TEMP_PREFIX, TEMP_SUFFIX = ".state.", ".tmp"


@dataclass(frozen=True)
class Checkpoint:
    step: int
    state: dict[str, Any]  # the loop's state tree
    meta: dict[str, Any]  # JSON-able: step, fingerprint, tracker values, format
    path: Path  # the file it was read from


def save(directory: Path, backend: str, state: dict[str, Any], meta: dict[str, Any]) -> None:
    """Writes the checkpoint of `backend` ("numpy" or "torch") into `directory`, atomically."""
    target = directory / FILES[backend]
    try:
        _save(directory, target, backend, state, {**meta, "format": FORMAT})
    except OSError as err:  # a full disk: say which file
        raise on_path(err, target) from err


def _save(
    directory: Path, target: Path, backend: str, state: dict[str, Any], meta: dict[str, Any]
) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=TEMP_PREFIX, suffix=TEMP_SUFFIX)
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
        if target.exists():
            os.replace(target, directory / PREVIOUS[backend])
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load(
    directory: Path, backend: str, device: str = "cpu", previous: bool = False
) -> Checkpoint | None:
    """The checkpoint in `directory` (with `previous`, the one before it), or None when there
    is none. A kill between a save's two renames leaves only the previous one: it is taken."""
    current, older = directory / FILES[backend], directory / PREVIOUS[backend]
    if previous and not older.is_file():
        return None
    target = older if previous or (older.is_file() and not current.is_file()) else current
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
    try:
        meta, state = _read(target, backend, device)
    except Exception as err:
        if isinstance(err, OSError) and err.errno is not None:  # unreadable, not damaged
            raise on_path(err, target) from err
        what = "empty" if target.stat().st_size == 0 else "truncated or no checkpoint"
        raise ConfigError(
            "train.resume",
            True,
            f"a readable checkpoint; {target} is {what} (start a new run directory instead)",
        ) from err
    _check_meta(meta, target)
    return Checkpoint(int(meta["step"]), state, meta, target)


def _read(target: Path, backend: str, device: str) -> tuple[Any, dict[str, Any]]:
    if backend == "numpy":
        with np.load(target, allow_pickle=False) as z:
            meta = json.loads(str(z["__meta__"]))
            state = _unflatten({k: z[k] for k in z.files if k != "__meta__"})
        return meta, state
    import torch

    saved = torch.load(target, map_location=device, weights_only=True)
    return json.loads(saved["meta"]), saved["state"]


def _check_meta(meta: Any, target: Path) -> None:
    """Refuses a checkpoint of another format, or one that lacks what a resume reads."""
    if not isinstance(meta, dict):
        problem = "holds no settings"
    elif meta.get("format") != FORMAT:
        problem = f"is of format {meta.get('format')}, from another version of runner"
    else:
        missing = [k for k in ("step", "tracker", "fingerprint") if k not in meta]
        problem = f"lacks {', '.join(missing)}" if missing else ""
        if not missing and not isinstance(meta["step"], int):
            problem = f"has step {meta['step']!r}"
    if problem:
        raise ConfigError(
            "train.resume",
            True,
            f"a checkpoint of format {FORMAT} with its step, tracker and settings; {target} "
            f"{problem} (start a new run directory instead)",
        )


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
