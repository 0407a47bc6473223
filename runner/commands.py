"""What the runner's side commands (`runner-lr-find`, `runner-check`) share: the config of their
OVERRIDES, composed and refused exactly as `runner OVERRIDES...` composes and refuses it, and the
one line they print for an error."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NoReturn

from omegaconf import DictConfig, open_dict, read_write

from runner.errors import describe_error
from runner.exiting import exit_now


@dataclass(frozen=True)
class Composed:
    """The task config `runner` would run, and the Hydra settings it would run it with."""

    cfg: DictConfig  # without the `hydra` node, as the task function receives it
    run_dir: str  # hydra.run.dir, resolved (outputs/DATE/TIME_TOKEN unless the overrides say)
    choices: dict[str, str]  # config group -> option picked (model -> scalar, ...)


def compose(overrides: Sequence[str]) -> Composed:
    """The config of `runner OVERRIDES...`, after the checks `runner` makes before Hydra composes
    (reserved keys, group options, no sweep) and the validation a run makes before it trains.
    Raises ConfigError, or Hydra's and OmegaConf's own errors, for bad input."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from omegaconf import OmegaConf

    from runner import schema
    from runner.overrides import check_command_line

    schema.register()
    check_command_line(list(overrides))
    with initialize_config_module(config_module="runner.conf", version_base="1.3"):
        cfg = hydra_compose(
            config_name="config", overrides=list(overrides), return_hydra_config=True
        )
    run_dir = str(OmegaConf.select(cfg, "hydra.run.dir"))
    choices = {k: str(v) for k, v in cfg.hydra.runtime.choices.items() if v is not None}
    with read_write(cfg), open_dict(cfg):
        del cfg["hydra"]
    schema.validate(cfg, cfg.loop.name)
    return Composed(cfg, run_dir, choices)


def run_command(prog: str, body: Callable[[], int]) -> int:
    """`body()`'s exit code; an error it raises becomes one line on stderr, `PROG: error: ...`,
    and exit 2 for bad input (1 otherwise), unless HYDRA_FULL_ERROR=1 asks for the traceback.
    Ctrl-C is exit 130."""
    try:
        return body()
    except KeyboardInterrupt as err:
        print(f"{prog}: interrupted", file=sys.stderr)
        return getattr(err, "exit_code", 130)
    except Exception as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        message, code = describe_error(err)
        print(f"{prog}: error: {message}", file=sys.stderr)
        return code


def end_process(code: int) -> NoReturn:
    """Ends the process with `code` as `runner` ends it: without the interpreter's teardown,
    which after torch takes about a second for nothing (runner.exiting.exit_now)."""
    exit_now(code)


def overrides_help() -> str:
    """The part of `runner --help` that both commands repeat: what OVERRIDES are, with the
    options each config group ships."""
    import textwrap

    from runner.overrides import group_options

    groups = "; ".join(
        f"{g}: {' | '.join(group_options(g))}"
        for g in ("model", "data", "loss", "optimizer", "loop")
    )
    return textwrap.fill(
        "OVERRIDES are those of `runner` (see `runner --help`): GROUP=OPTION and KEY=VALUE, "
        "composed from the same config and refused the same way (one line, exit 2). "
        f"Config groups: {groups}.",
        width=90,
    )
