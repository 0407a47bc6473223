"""summary.json, replaced atomically so a reader never sees half a file."""

from __future__ import annotations

import errno
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from runner.errors import on_path

# The temporary file each write starts with; a kill can leave one behind (runner.run removes it).
TEMP_PREFIX, TEMP_SUFFIX = ".summary.", ".tmp"


def write_summary(path: Path, summary: dict[str, Any]) -> None:
    """Writes `summary` as JSON via a temporary file and a rename; NaN/inf become null."""
    data = (json.dumps(_finite(summary), indent=2) + "\n").encode()
    try:
        _replace(path, data)
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT) or not _fits(path, data):
            raise on_path(err, path) from err
        # A full disk has no room for a second file, but the blocks of the summary already there
        # hold the new one: written over it, as a last resort, so the run still says how it ended.
        try:
            with open(path, "r+b") as f:
                f.write(data)
                f.truncate()
        except OSError:
            raise on_path(err, path) from err


def _replace(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=TEMP_PREFIX, suffix=TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            os.fchmod(f.fileno(), 0o644)  # mkstemp makes it private; outputs are for reading
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _fits(path: Path, data: bytes) -> bool:
    try:
        return len(data) <= os.stat(path).st_blocks * 512  # st_blocks counts 512-byte units
    except OSError:
        return False


def _finite(value: Any) -> Any:
    # JSON has no NaN or Infinity; a diverged run's losses are reported as null.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value
