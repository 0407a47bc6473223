"""How the runner's commands end their process, shared by `runner` and the tools beside it."""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import threading
from typing import NoReturn


def exit_now(code: int) -> NoReturn:
    """Ends the process as `sys.exit(code)` would, less the interpreter's teardown.

    Everything the program wrote is closed by now (run() closes its sinks and writes the
    summary before returning). What remains at exit is freeing every module and object, which
    after torch (and torch.optim's torch._dynamo) takes about a second of the user's time for
    nothing. The interpreter's own first steps still happen, in its order: threading's exit
    callbacks (worker pools shut down there) and the wait for non-daemon threads, then the
    atexit handlers (logging's flush among them); then the standard streams are flushed and the
    process ends.
    """
    shutdown = getattr(threading, "_shutdown", None)
    if shutdown is None:  # not CPython's threading: exit the usual way
        sys.exit(code)
    shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)
