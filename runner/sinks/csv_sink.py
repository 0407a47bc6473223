"""metrics.csv: one row per logged step, columns as runner.metrics.Layout names them."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np

from runner.errors import ConfigError, on_path


class CsvSink:
    """Appends rows to `path`, in whole lines only: a killed run never leaves a torn row.

    Lines wait in memory until `flush()` (the runner calls it on a timer, and on close) and then
    reach the file in one os.write, so logging costs no syscall per step. A resumed run passes
    `keep`, the length of the earlier file that holds the rows up to its checkpoint (see
    `logged_rows_end`): the file is cut there in place and the run appends, so no row that was
    logged before the checkpoint is ever off the disk, not even while the run starts.
    """

    def __init__(
        self,
        path: Path,
        columns: list[str],
        dtype: str,
        keep: int | None = None,
    ) -> None:
        self.path = path
        # Values print as the shortest decimal that reads back to the same number in the run's
        # dtype: float32 runs show 21.675, not 21.674999237060547.
        self._scalar = np.dtype(dtype).type
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | (os.O_TRUNC if keep is None else 0)
        try:
            self._fd = os.open(path, flags, 0o644)
            if keep is not None:
                os.ftruncate(self._fd, keep)
        except OSError as err:
            raise on_path(err, path) from err
        self._size = keep or 0  # bytes on disk, all of them whole lines
        self._failed = False
        self._pending = [] if keep else [_header(columns)]
        self.flush()

    def write(self, steps: np.ndarray, table: np.ndarray, rows: np.ndarray) -> None:
        # NumPy formats the whole table at once (its shortest round-trip repr, in C).
        text = table.astype(self._scalar).astype(str).tolist()
        join = ",".join
        self._pending.extend(
            f"{step},{join(values)}\n" for step, values in zip(steps.tolist(), text, strict=True)
        )

    def flush(self) -> None:
        if self._failed:
            self._pending.clear()
        if not self._pending:
            return
        data = memoryview("".join(self._pending).encode())
        self._pending.clear()
        written = 0
        try:
            while written < len(data):  # a regular file takes it all at once; loop for the odd
                written += os.write(self._fd, data[written:])  # short write
        except OSError as err:
            # A full disk stops a write anywhere: cut back to the last whole row, so the file
            # reads back and a resume continues it, and write no more (later rows would leave a
            # gap).
            self._failed = True
            whole = bytes(data[:written]).rfind(b"\n") + 1
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._size + whole)
            raise on_path(err, self.path) from err
        self._size += written

    def close(self, summary: dict | None = None) -> None:
        if self._fd is not None:
            try:
                self.flush()
            finally:
                os.close(self._fd)
                self._fd = None


def _header(columns: list[str]) -> str:
    return ",".join(["step", *columns]) + "\n"


def logged_rows_end(path: Path, columns: list[str], step: int, rows: int) -> int:
    """Where the rows a resumed run keeps end in the earlier `path`, in bytes: after the `rows`
    rows logged up to `step`, its checkpoint's. What follows (rows logged past the checkpoint,
    a torn last line) is logged again. Refuses a file that lacks any of those rows: a resumed
    run never continues past a gap."""
    header = _header(columns).encode()
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        data = b""
    except OSError as err:
        raise on_path(err, path) from err

    def refuse(problem: str) -> ConfigError:
        return ConfigError(
            "train.resume",
            True,
            f"{path} to hold the {rows} rows logged up to step {step}, the checkpoint's; "
            f"{problem} (start a new run directory instead)",
        )

    if header.startswith(data):  # missing, or killed while its header was written
        if rows:
            raise refuse("it holds none")
        return 0
    if not data.startswith(header):
        raise ConfigError(
            "train.resume",
            True,
            f"{path} with the columns this run logs (its header differs: was log.* changed?)",
        )
    end, last, width = len(header), 0, header.count(b",")
    for number in range(2, rows + 2):  # line numbers, after the header
        stop = data.find(b"\n", end) + 1
        line = data[end:stop]
        if not stop:
            raise refuse(f"it holds {number - 2}")
        if line.count(b",") != width:
            raise refuse(f"line {number} is not a whole row")
        first = line.partition(b",")[0]
        try:
            at = int(first)
        except ValueError:
            raise refuse(f"line {number} has step {first.decode(errors='replace')!r}") from None
        if at > step:
            raise refuse(f"it holds {number - 2}")
        if at <= last:
            raise refuse(f"line {number} has step {at} after step {last}")
        end, last = stop, at
    return end
