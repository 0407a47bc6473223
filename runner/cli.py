"""The `runner` command: a thin Hydra app around run(cfg), and one clear line for bad input."""

from __future__ import annotations

import atexit
import contextlib
import math
import os
import sys
import threading
from pathlib import Path
from typing import NoReturn

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from runner import schema
from runner.errors import describe_error
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
        report_failed_job(err)
        return None
    print(final_line(summary, out_dir), flush=True)
    return sweeper_value(summary)


def report_failed_job(err: BaseException) -> None:
    """One line on stderr for a job that raised; the command then exits non-zero."""
    message, code = describe_error(err)
    print(f"runner: error: {message}", file=sys.stderr, flush=True)
    note_failed_job(code)


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


def swept_keys(args: list[str]) -> list[str] | None:
    """The keys a multirun command line sweeps (`optimizer.lr=0.1,0.01`, `loop=glob(*)`, ...);
    None when it is not a multirun or cannot be parsed (Hydra then reports the problem)."""
    if not any(a in ("-m", "--multirun") for a in args):
        return None
    from hydra.core.override_parser.overrides_parser import OverridesParser

    overrides = [a for a in args if not a.startswith("-")]
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception:
        return None
    return [o.key_or_group for o in parsed if o.is_sweep_override() and not o.is_hydra_override()]


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
    swept = swept_keys(sys.argv[1:])
    if swept is not None:
        os.environ[schema.SWEPT_KEYS_ENV] = ",".join(swept)
    _register_plugins()
    try:
        schema.check_group_choices([a for a in sys.argv[1:] if not a.startswith("-")])
        _task()
    except KeyboardInterrupt as err:
        print("runner: interrupted; every logged step is on disk", file=sys.stderr)
        from runner.callbacks import report_interrupted_sweep

        report_interrupted_sweep()  # Hydra reports no sweep that a signal ended
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
