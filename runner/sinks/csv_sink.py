"""metrics.csv: one row per logged step, columns as runner.metrics.Layout names them."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


class CsvSink:
    """Appends rows to `path`, in whole lines only: a killed run never leaves a torn row.

    Lines wait in memory until `flush()` (the runner calls it on a timer, and on close) and then
    reach the file in one os.write, so logging costs no syscall per step.
    """

    def __init__(
        self,
        path: Path,
        columns: list[str],
        dtype: str,
        resume_at: int | None = None,
    ) -> None:
        self.path = path
        # Values print as the shortest decimal that reads back to the same number in the run's
        # dtype: float32 runs show 21.675, not 21.674999237060547.
        self._scalar = np.dtype(dtype).type
        header = ",".join(["step", *columns]) + "\n"
        kept = _rows_up_to(path, resume_at, header) if resume_at is not None else header
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self._pending = [kept]
        self.flush()

    def write(self, steps: np.ndarray, table: np.ndarray, rows: np.ndarray) -> None:
        # NumPy formats the whole table at once (its shortest round-trip repr, in C).
        text = table.astype(self._scalar).astype(str).tolist()
        join = ",".join
        self._pending.extend(
            f"{step},{join(values)}\n" for step, values in zip(steps.tolist(), text, strict=True)
        )

    def flush(self) -> None:
        if self._pending:
            data = "".join(self._pending).encode()
            self._pending.clear()
            while data:  # a regular file takes it all at once; loop for the odd short write
                data = data[os.write(self._fd, data) :]

    def close(self, summary: dict | None = None) -> None:
        if self._fd is not None:
            self.flush()
            os.close(self._fd)
            self._fd = None


def _rows_up_to(path: Path, step: int, header: str) -> str:
    """The header and the rows of steps <= `step` of an earlier metrics.csv: a resumed run
    appends from its checkpoint, and rows logged after it are logged again, exactly once."""
    from runner.errors import ConfigError

    if not path.is_file():
        return header
    lines = path.read_text().splitlines(keepends=True)
    if not lines or lines[0] != header:
        raise ConfigError(
            "train.resume",
            True,
            f"{path} with the columns this run logs (its header differs: was log.* changed?)",
        )
    width = header.count(",")
    kept = [
        line
        for line in lines[1:]
        if line.endswith("\n") and line.count(",") == width and int(line.split(",", 1)[0]) <= step
    ]
    return header + "".join(kept)
