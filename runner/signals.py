"""Ctrl-C and SIGTERM as requests: the run stops between two steps, never inside the bookkeeping
of one, so every finished step is logged exactly once before the run reports `interrupted`."""

from __future__ import annotations

import signal
import threading


class Interrupted(KeyboardInterrupt):
    """Raised by run() after it stopped on a signal and put everything on disk."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    def __reduce__(self):
        # A job in a worker process (joblib's) hands it to the launcher pickled: by its number,
        # which __init__ takes, not by the name in args.
        return type(self), (self.signum,)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM


class StopSignals:
    """While active, SIGINT/SIGTERM set `signum` instead of raising; a second one raises at once
    (for the user who really means it). Only the main thread can handle signals, so elsewhere
    this does nothing."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict = {}

    def _handle(self, signum: int, frame) -> None:
        if self.signum is not None:
            raise Interrupted(signum)
        self.signum = signum

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
