"""The `runner` command: a thin Hydra app around run(cfg), and one clear line for bad input."""

from __future__ import annotations

import logging
import os
import shlex
import string
import sys
from pathlib import Path
from typing import NoReturn

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

from runner import schema
from runner.errors import ConfigError, describe_error
from runner.exiting import exit_now
from runner.jobs import SWEPT_KEYS_ENV, exit_code, final_line, report_failed_job, sweeper_value
from runner.overrides import check_command_line, swept_keys
from runner.run import Finished, check_new_run_dir, holds_run, run
from runner.signals import Interrupted

schema.register()

_FULL_ERROR = False  # HYDRA_FULL_ERROR=1 as the user set it: tracebacks wanted
# The key and directory (absolute) of the last job started: an interrupted run names them.
_STARTED: list[tuple[str, Path]] = []


@hydra.main(version_base="1.3", config_path="pkg://runner.conf", config_name="config")
def _task(cfg: DictConfig) -> float | None:
    hydra_cfg = HydraConfig.get()
    out_dir = Path(hydra_cfg.runtime.output_dir)
    if hydra_cfg.mode == RunMode.MULTIRUN:
        _STARTED[:] = [("hydra.sweep.dir", Path(os.path.abspath(str(hydra_cfg.sweep.dir))))]
    else:
        _STARTED[:] = [("hydra.run.dir", out_dir)]
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
        in_sweep = hydra_cfg.mode == RunMode.MULTIRUN
        code = report_failed_job(err, out_dir, in_sweep=in_sweep)
        if not in_sweep and code == 2 and not (out_dir / "summary.json").exists():
            remove_new_run_dir(out_dir)  # bad input leaves no run directory behind
        return None
    try:
        finished = isinstance(summary, Finished)
        print(final_line(summary, out_dir, cfg.log.max_elements, finished), flush=True)
    except BrokenPipeError:  # `runner ... | head`: the reader left; the outputs are on disk
        _drop_stdout()
    return sweeper_value(summary)


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


def check_run_dir(parsed: list, multirun: bool) -> None:
    """Refuses a run or sweep directory named on the command line that already holds a run,
    unless train.resume=true continues it: starting over there would delete the run. Checked
    before Hydra writes `.hydra/` and its log there; the default directories are new for every
    process. An empty hydra.run.dir is refused too: the run would write into the current
    directory."""
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    given = [o for o in parsed if o.key_or_group == key and not o.is_sweep_override()]
    if not given:
        return
    value = given[-1].value()
    if value is None or not str(value).strip():
        raise ConfigError(
            key,
            value,
            "a directory (an empty one would put the run's files into the current directory)",
        )
    if "${" not in str(value) and not _holds_runs(Path(str(value)), multirun):
        return
    # Interpolated, or a run is there: what Hydra would make of the command line decides.
    cfg = _compose([o.input_line for o in parsed if not o.is_sweep_override()])
    directory = str(OmegaConf.select(cfg, key))
    if cfg.train.resume is True:
        return
    if not multirun:
        check_new_run_dir(Path(directory))
    elif _holds_runs(Path(directory), multirun):
        raise ConfigError(
            key,
            directory,
            "a directory that holds no runs yet (add train.resume=true to continue its jobs, "
            "or choose another directory)",
        )


def _holds_runs(directory: Path, multirun: bool) -> bool:
    if holds_run(directory):
        return True
    return multirun and directory.is_dir() and any(holds_run(p) for p in directory.iterdir())


def _compose(overrides: list[str]) -> DictConfig:
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="runner.conf", version_base="1.3"):
        return compose(config_name="config", overrides=overrides, return_hydra_config=True)


def interrupted_line(args: list[str]) -> str:
    """What an interrupted command says: where its steps are and the command that resumes it
    (the same arguments, with that directory and train.resume=true)."""
    from runner.callbacks import sweep_under_way

    sweep_dir = sweep_under_way()  # the vectorized launcher runs its jobs without _task
    if _STARTED:
        key, directory = _STARTED[-1]
    elif sweep_dir is not None:
        key, directory = "hydra.sweep.dir", Path(os.path.abspath(sweep_dir))
    else:
        return "runner: interrupted; every logged step is on disk"
    kept = [a for a in args if a.lstrip("+~").split("=", 1)[0] not in (key, "train.resume")]
    command = shlex.join(["runner", *kept, f"{key}={directory}", "train.resume=true"])
    return (
        f"runner: interrupted; every logged step is on disk in {directory}; resume with: {command}"
    )


def _pair_sweeper_with_launcher(argv: list[str]) -> None:
    """`hydra/launcher=vectorized` comes with `hydra/sweeper=runner` (the basic sweeper without
    its duplicate per-job check), unless the command line picks a sweeper or a search preset."""
    args = argv[1:]
    if "hydra/launcher=vectorized" not in args:
        return
    if any(a.startswith(("hydra/sweeper=", "hparams_search=")) for a in args):
        return
    # Kept on purpose: without it Hydra's sweeper composes every job again,
    # about 0.1 s each (6 s of a 64-rate sweep), and Hydra offers no config hook to pair them.
    argv.append("hydra/sweeper=runner")


def _print_help(argv: list[str]) -> bool:
    """`runner [OVERRIDES] --help`: prints the app's help as Hydra would, and says whether it did.

    Hydra fills every placeholder its help template may use, whatever the template uses; the
    group listing alone builds a config repository (a deep copy of every schema) per option:
    2 s of CPU for each --help. The runner's template lists the groups itself and uses only
    $CONFIG, so the config is composed once and put in. A template that asks for more (set with
    hydra.help.template=...) and Hydra's other flags go to Hydra as before."""
    from hydra._internal.utils import get_args_parser

    args = get_args_parser().parse_args(argv)
    if not args.help or args.hydra_help or args.config_path or args.config_dir:
        return False
    if args.config_name not in (None, "config"):
        return False
    cfg = _compose(args.overrides)
    template = string.Template(cfg.hydra.help.template)
    if set(template.get_identifiers()) - {"CONFIG"}:
        return False
    with open_dict(cfg):
        del cfg["hydra"]
    print(template.substitute(CONFIG=OmegaConf.to_yaml(cfg, resolve=args.resolve)), flush=True)
    return True


def _register_plugins() -> None:
    # Hydra's plugin scan (pkgutil) cannot see packages that an editable install serves through
    # its import finder, so the project's own plugins are registered by hand as well.
    from hydra.core.plugins import Plugins

    from hydra_plugins.runner_launchers.vectorized_launcher import RunnerSweeper, VectorizedLauncher

    Plugins.instance().register(VectorizedLauncher)
    Plugins.instance().register(RunnerSweeper)


def main() -> NoReturn:
    """Console entry point (`runner`, `python -m runner`): runs `cli()` and ends the process."""
    exit_now(cli())


def cli() -> int:
    """The command on sys.argv; returns its exit code. Errors become one line on stderr unless
    HYDRA_FULL_ERROR=1, which lets them raise with their traceback."""
    global _FULL_ERROR
    _FULL_ERROR = os.environ.get("HYDRA_FULL_ERROR") == "1"
    typed = sys.argv[1:]  # before runner adds its own (a sweeper for the vectorized launcher)
    if "--version" in typed:  # Hydra would print its own version
        from importlib.metadata import version

        print(f"runner {version('runner')}")
        return 0
    # Let Hydra's exceptions reach us instead of its multi-line report; we print one line.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    _pair_sweeper_with_launcher(sys.argv)
    _register_plugins()
    try:
        # Parsed once here for every check and the swept keys; Hydra parses on its own.
        overrides, multirun = check_command_line(sys.argv[1:])
        if multirun:
            os.environ[SWEPT_KEYS_ENV] = ",".join(swept_keys(overrides))
        if _print_help(sys.argv[1:]):
            return 0
        check_run_dir(overrides, multirun)
        _task()
    except BrokenPipeError:  # `runner --help | head -1`: the reader left before the end
        _drop_stdout()
        return 141  # as a shell reports a process that SIGPIPE ended
    except KeyboardInterrupt as err:
        print(interrupted_line(typed), file=sys.stderr)
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
    return exit_code()


def _drop_stdout() -> None:
    """Points stdout at /dev/null, so that the flush at exit does not fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
