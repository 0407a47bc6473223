"""The `runner` command: a thin Hydra app around run(cfg), and one clear line for bad input."""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import math
import os
import sys
import threading
from pathlib import Path
from typing import NoReturn

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from runner import schema
from runner.errors import describe_error
from runner.overrides import check_command_line, swept_keys
from runner.run import run
from runner.signals import Interrupted

schema.register()

# Exit codes of the jobs this process ran that failed; main() exits with the first one.
_FAILED_JOBS: list[int] = []
_FULL_ERROR = False  # HYDRA_FULL_ERROR=1 as the user set it: tracebacks wanted


@hydra.main(version_base="1.3", config_path="pkg://runner.conf", config_name="config")
def _task(cfg: DictConfig) -> float | None:
    hydra_cfg = HydraConfig.get()
    out_dir = Path(hydra_cfg.runtime.output_dir)
    try:
        summary = run(
            cfg,
            out_dir,
            overrides=list(hydra_cfg.overrides.task),
            choices=dict(hydra_cfg.runtime.choices),
        )
    except Exception as err:
        # Handled here rather than by Hydra, which would add a report of its own; in a sweep
        # the other jobs go on.
        if _FULL_ERROR:
            raise
        report_failed_job(err, out_dir, multirun=hydra_cfg.mode == RunMode.MULTIRUN)
        return None
    try:
        print(final_line(summary, out_dir), flush=True)
    except BrokenPipeError:  # `runner ... | head`: the reader left; the outputs are on disk
        _drop_stdout()
    return sweeper_value(summary)


def report_failed_job(err: BaseException, out_dir: Path, *, multirun: bool) -> None:
    """One line on stderr for a job that raised; the command then exits non-zero. A sweep's job
    leaves its exit code in failed.json for the sweep (its launcher may have run it in another
    process); a single run stopped by bad input before training leaves no directory behind."""
    message, code = describe_error(err)
    print(f"runner: error: {message}", file=sys.stderr, flush=True)
    note_failed_job(code)
    if multirun:
        with contextlib.suppress(OSError):
            text = json.dumps({"exit_code": code, "error": message})
            (out_dir / FAILED_JOB_FILE).write_text(text + "\n")
    elif code == 2 and not (out_dir / "summary.json").exists():
        remove_new_run_dir(out_dir)


# What a failed sweep job leaves in its directory: {"exit_code": 2, "error": "..."}.
FAILED_JOB_FILE = "failed.json"


def remove_new_run_dir(out_dir: Path) -> None:
    """Removes what Hydra wrote into `out_dir` (.hydra/ and the job's log) and the directory,
    with its parents, if this run created them (runner.callbacks.NewRunDirectory saw them
    absent). Anything else in there is left alone, and the directory with it."""
    from runner.callbacks import NewRunDirectory

    created = NewRunDirectory.created
    out_dir = out_dir.resolve()
    if created is None or not (out_dir == created or created in out_dir.parents):
        return
    root = logging.getLogger()
    for handler in list(root.handlers):
        name = getattr(handler, "baseFilename", None)
        if name is not None and Path(name).parent == out_dir:
            root.removeHandler(handler)
            handler.close()
            Path(name).unlink(missing_ok=True)
    hydra_dir = out_dir / ".hydra"
    for name in ("config.yaml", "hydra.yaml", "overrides.yaml"):
        (hydra_dir / name).unlink(missing_ok=True)
    for directory in (hydra_dir, out_dir, *out_dir.parents):
        try:
            directory.rmdir()  # only ever an empty directory
        except OSError:
            return
        if directory == created:
            return


def note_failed_job(code: int) -> None:
    """The command exits with the first code noted (a sweep's other jobs still run)."""
    _FAILED_JOBS.append(code)


def sweeper_value(summary: dict) -> float:
    """What a job returns for a sweeper (e.g. Optuna) to minimise: its final loss, and inf for a
    diverged run (a NaN would abort Optuna's study)."""
    loss = summary["final_loss"]
    return math.inf if loss is None or math.isnan(loss) else loss


def final_line(summary: dict, out_dir: Path) -> str:
    """The run's last word: status, loss, parameters, speed and where the outputs are."""
    status = summary["status"]
    if status == "diverged":
        status = f"diverged at step {summary['diverged_at_step']}"
    params = " ".join(f"{k}={_short(v)}" for k, v in summary["params"].items())
    loss = summary["final_loss"]
    return (
        f"{status}: {summary['steps_completed']} steps, final loss "
        f"{'nan' if loss is None else f'{loss:.6g}'}, {params}, "
        f"{summary['steps_per_s']:.0f} steps/s -> {out_dir}"
    )


def _short(value) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_short(v) for v in value) + "]"
    return "nan" if value is None else f"{value:.6g}"


def _pair_sweeper_with_launcher(argv: list[str]) -> None:
    """`hydra/launcher=vectorized` comes with `hydra/sweeper=runner` (the basic sweeper without
    its duplicate per-job check), unless the command line picks a sweeper or a search preset."""
    args = argv[1:]
    if "hydra/launcher=vectorized" not in args:
        return
    if any(a.startswith(("hydra/sweeper=", "hparams_search=")) for a in args):
        return
    argv.append("hydra/sweeper=runner")


def _register_plugins() -> None:
    # Hydra's plugin scan (pkgutil) cannot see packages that an editable install serves through
    # its import finder, so the project's own plugins are registered by hand as well.
    from hydra.core.plugins import Plugins

    from hydra_plugins.runner_launchers.vectorized_launcher import RunnerSweeper, VectorizedLauncher

    Plugins.instance().register(VectorizedLauncher)
    Plugins.instance().register(RunnerSweeper)


def main() -> NoReturn:
    """Console entry point (`runner`, `python -m runner`): runs `cli()` and ends the process."""
    _exit_now(cli())


def cli() -> int:
    """The command on sys.argv; returns its exit code. Errors become one line on stderr unless
    HYDRA_FULL_ERROR=1, which lets them raise with their traceback."""
    global _FULL_ERROR
    _FULL_ERROR = os.environ.get("HYDRA_FULL_ERROR") == "1"
    # Let Hydra's exceptions reach us instead of its multi-line report; we print one line.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    _pair_sweeper_with_launcher(sys.argv)
    _register_plugins()
    try:
        # Parsed once here for every check and the swept keys; Hydra parses on its own.
        overrides, multirun = check_command_line(sys.argv[1:])
        if multirun:
            os.environ[schema.SWEPT_KEYS_ENV] = ",".join(swept_keys(overrides))
        _task()
    except BrokenPipeError:  # `runner --help | head -1`: the reader left before the end
        _drop_stdout()
        return 141  # as a shell reports a process that SIGPIPE ended
    except KeyboardInterrupt as err:
        print("runner: interrupted; every logged step is on disk", file=sys.stderr)
        return err.exit_code if isinstance(err, Interrupted) else 130
    except SystemExit as err:  # Hydra's own exits
        if err.code is None or isinstance(err.code, int):
            return err.code or 0
        print(err.code, file=sys.stderr)
        return 1
    except Exception as err:
        if _FULL_ERROR:
            raise
        message, code = describe_error(err)
        print(f"runner: error: {message}", file=sys.stderr)
        return code
    return _FAILED_JOBS[0] if _FAILED_JOBS else 0


def _drop_stdout() -> None:
    """Points stdout at /dev/null, so that the flush at exit does not fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def _exit_now(code: int) -> NoReturn:
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
