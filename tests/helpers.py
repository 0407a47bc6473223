"""Test helpers: compose the real config, run it in tmp dirs, run the CLI as a user would."""

from __future__ import annotations

import contextlib
import copy
import functools
import io
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_module
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra._internal.hydra import Hydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from runner import schema
from runner.run import run

schema.register()

REPO = Path(__file__).resolve().parents[1]


def compose_config(*overrides: str) -> DictConfig:
    """The config `runner OVERRIDES...` would run, composed from the shipped conf/.

    Hydra composes the config groups' choices (`loop=numpy`, `experiment=...`) once per test
    process; the plain `key=value` overrides are then applied to a copy of that by Hydra's own
    code for it, as Hydra applies them after the defaults. A composition costs 0.1 s and the
    suite asks for over a thousand (tests/test_config.py checks the two ways agree)."""
    groups, values = _split(overrides)
    if values is None:
        return compose_config_by_hydra(*overrides)
    cfg = copy.deepcopy(_composed(groups))
    ConfigLoaderImpl._apply_overrides_to_config(values, cfg)
    return cfg


def compose_config_by_hydra(*overrides: str) -> DictConfig:
    """compose_config without the shortcut: one whole composition by Hydra."""
    return copy.deepcopy(_composed(tuple(overrides)))


@functools.lru_cache(maxsize=256)
def _composed(overrides: tuple[str, ...]) -> DictConfig:
    with initialize_config_module(config_module="runner.conf", version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


@functools.lru_cache(maxsize=4096)  # Hydra's parser takes a millisecond; the parts are not changed
def _split(overrides: tuple[str, ...]) -> tuple[tuple[str, ...], list | None]:
    """The overrides Hydra composes (group choices, `hydra` keys) and the parsed plain value
    overrides; None for the values when a group is added or deleted: Hydra then does it all.
    The group choices come in one spelling per composition (_same_composition)."""
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    groups, values = [], []
    for line, override in zip(overrides, parsed, strict=True):
        key = override.key_or_group
        if key.split("/")[0] in _GROUPS or key.split(".")[0] == "hydra":
            if override.is_add() or override.is_delete() or override.is_force_add():
                return tuple(overrides), None
            # a choice with a package (`model@head=...`) never counts as the default one
            named = key if override.package is None else f"{key}@{override.package}"
            groups.append((named, override.value(), line))
        else:
            values.append(override)
    return _same_composition(groups), values


def _same_composition(groups: list[tuple[str, object, str]]) -> tuple[str, ...]:
    """The group choices in one spelling per composition: sorted, and without the choices
    config.yaml makes anyway. Kept as given when a preset may pick other groups (then a default
    choice named on the command line overrides it) or when a key is given twice."""
    keys = [key for key, _, _ in groups]
    if len(set(keys)) < len(keys) or _PRESET_GROUPS & set(keys):
        return tuple(line for _, _, line in groups)
    kept = [(k, line) for k, v, line in groups if _DEFAULT_CHOICES.get(k, object()) != v]
    return tuple(line for _, line in sorted(kept))


_GROUPS = {p.name for p in (REPO / "conf").iterdir() if p.is_dir()} | {"hydra"}
_PRESET_GROUPS = {"experiment", "hparams_search"}
_DEFAULT_CHOICES = {
    key: value
    for entry in OmegaConf.load(REPO / "conf" / "config.yaml").defaults
    if isinstance(entry, DictConfig)
    for key, value in entry.items()
    if value is not None
}


def train(out_dir: Path, *overrides: str) -> tuple[dict, pd.DataFrame | None]:
    """Runs run(cfg) in `out_dir` (progress bar and landscape.png off: the picture costs about
    0.1 s a run, and tests/test_pictures.py turns it on); returns its summary and metrics.csv."""
    defaults = ("log.progress=false", "log.landscape=false")
    summary = run(compose_config(*defaults, *overrides), out_dir, overrides)
    csv = out_dir / "metrics.csv"
    return summary, (pd.read_csv(csv) if csv.exists() else None)


def run_cli(*args: str, cwd: Path, timeout: float = 180, **env: str) -> subprocess.CompletedProcess:
    """`python -m runner ARGS...` in a subprocess, as a user would run it."""
    environ = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"} | env
    return subprocess.run(
        [sys.executable, "-m", "runner", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=environ,
    )


def cli_in_process(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`runner ARGS...` as the console script runs it, but in this process: its exit code and
    what it printed, as run_cli returns them. For commands whose process is not what a test is
    about (signals, kills, the process's own exit code and terminals keep run_cli). Usable in a
    module-scoped fixture: it needs no function-scoped fixture."""
    from runner import callbacks, cli, jobs

    stdout, stderr = io.StringIO(), io.StringIO()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(cwd)
        patch.setattr(sys, "argv", ["runner", *args])
        patch.setenv("HYDRA_FULL_ERROR", "0")  # cli() sets it
        patch.delenv(jobs.SWEPT_KEYS_ENV, raising=False)  # cli() sets it for a sweep
        patch.setattr(jobs, "_FAILED", [])  # the exit codes this process noted
        patch.setattr(cli, "_STARTED", [])
        patch.setattr(callbacks, "_SWEEP_UNDER_WAY", [])
        if not any("hydra.mode" in a or a.startswith(_CONFIG_FLAGS) for a in args):
            patch.setattr(Hydra, "get_mode", _no_mode)
        real = ConfigLoaderImpl.load_sweep_config
        patch.setattr(ConfigLoaderImpl, "load_sweep_config", composed_once(real))
        try:
            with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
                code = cli.cli()
        finally:
            # Hydra set up logging for the command (a job's log file, the console): as it was
            for handler in root.handlers[:]:
                if handler not in handlers:
                    root.removeHandler(handler)
                    handler.close()
            root.handlers[:] = handlers
            root.setLevel(level)
    return subprocess.CompletedProcess(
        ["runner", *args], code, stdout.getvalue(), stderr.getvalue()
    )


# Hydra composes the whole config once per command only to read hydra.mode (Hydra.get_mode),
# which is None unless a config or the command line sets it. No shipped config does
# (tests/test_config.py checks), so in this process a command that names neither hydra.mode
# nor a config of its own skips that composition: 0.1 s of every command.
_CONFIG_FLAGS = ("--config", "-c")  # --config-dir, --config-name, --config-path, -cd, -cn, -cp


def _no_mode(self, config_name, overrides):
    return None


def composed_once(load_sweep_config):
    """ConfigLoaderImpl.load_sweep_config for one command, composing each job once. Hydra's
    sweepers compose every job to check it before any runs, and the basic launcher composes it
    again, from the same config and overrides, to run it: 0.15 s each time. Every call gets a
    copy of the one composition (tests/test_config.py checks that Hydra's two are equal)."""
    done = {}

    def load(self, master_config, sweep_overrides):
        key = (id(master_config), tuple(sweep_overrides))
        if key not in done:
            done[key] = load_sweep_config(self, master_config, sweep_overrides)
        return copy.deepcopy(done[key])

    return load


def wait_for(check, timeout: float, what: str, every: float = 0.05):
    """Polls `check()` until it returns something truthy, for at most `timeout` seconds; an
    OSError counts as not yet (a file or a server that is still to come)."""
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
            last = value
        except OSError as err:
            last = err
        time.sleep(every)
    raise AssertionError(f"no {what} after {timeout} s (last: {last!r})")


def run_on_a_terminal(argv: list[str], cwd: Path, timeout: float = 120) -> tuple[int, str]:
    """Runs `argv` with a terminal (a pty of 24 x 100) as stdin, stdout and stderr; returns its
    exit code and everything it drew there."""
    import fcntl
    import pty
    import struct
    import termios

    leader, follower = pty.openpty()
    # a new pty is 0x0; a real terminal has a size, and tqdm draws nothing in zero columns
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    proc = subprocess.Popen(argv, cwd=cwd, stdin=follower, stdout=follower, stderr=follower)
    os.close(follower)
    output = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the terminal closed: the process is done
            break
        if not chunk:
            break
        output += chunk
    os.close(leader)
    return proc.wait(timeout=timeout), output.decode(errors="replace")
