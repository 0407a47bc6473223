"""The command line, parsed once with Hydra's own parsers and checked before Hydra composes it.

What is refused here never reaches a config, a job or a directory: keys that choose what gets
built or run (`_target_` and its kind), inline data too long to parse in reasonable time, and
sweeps too large to list. Every refusal is a ConfigError naming the override as typed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from runner.errors import AsTyped, ConfigError, did_you_mean

if TYPE_CHECKING:
    from hydra.core.override_parser.types import Override

# The keys through which hydra.utils.instantiate picks and calls a function: the config groups
# set them (choose `loss=huber`), never the command line.
RESERVED = frozenset({"_target_", "_args_", "_partial_", "_recursive_", "_convert_"})
# Resolvers that turn text into config nodes; a value resolved through them could carry the
# reserved keys without naming them on the command line (e.g. from an environment variable).
STRUCTURING_RESOLVERS = re.compile(r"oc\.(create|decode)\b")
# Hydra's override parser takes seconds per thousand list values (and parses each override
# three times); more inline data than this belongs in a CSV file.
MAX_INLINE_VALUES = 1000
INLINE_KEYS = ("data.x", "data.y")
# Hydra's basic sweeper lists every job before the first runs: a sweep beyond this is refused
# before it is expanded, since listing it alone can take minutes and gigabytes.
MAX_JOBS = 10_000


def parse(overrides: Sequence[str]) -> list[Override]:
    """`KEY=VALUE` arguments as Hydra's OverridesParser reads them (OverrideParseException if
    one does not parse)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_overrides(list(overrides))


# The config groups a user picks an option of, and their options as shipped in conf/<group>/.
GROUPS = ("model", "data", "loss", "optimizer", "scheduler", "loop", "device", "experiment")


def group_options(group: str) -> list[str]:
    """The options of a config group, as shipped in conf/<group>/."""
    from importlib.resources import files

    return sorted(
        p.name[: -len(".yaml")]
        for p in (files("runner.conf") / group).iterdir()
        if p.name.endswith(".yaml")
    )


def check_group_choices(overrides: list) -> None:
    """Refuses `group=value` overrides whose value is no option of the group (Hydra's own errors
    for, say, `data=0` do not say which group or what is allowed), naming the nearest option.
    `overrides` are the command line's, as text or parsed (`parse`). Sweeps are left to Hydra."""
    if any(isinstance(o, str) for o in overrides):
        overrides = parse(overrides)
    for override in overrides:
        group = override.key_or_group
        if group not in GROUPS or override.is_sweep_override() or override.is_delete():
            continue
        value = override.value()
        options = group_options(group)
        if not (isinstance(value, str) and value in options) and not (
            group == "experiment" and value is None
        ):
            near = did_you_mean(value, options) if isinstance(value, str) else ""
            raise ConfigError(group, value, f"one of {', '.join(options)}{near}")


def check_command_line(argv: Sequence[str]) -> tuple[list[Override], bool]:
    """The overrides of `runner ARGS...` (argv less the program name) and whether it is a
    multirun, once every check below passed; ConfigError for the first that does not."""
    from hydra._internal.utils import get_args_parser

    args = get_args_parser().parse_args(list(argv))
    check_inline_sizes(args.overrides)
    overrides = parse(args.overrides)
    for override in overrides:
        check_override(override)
    check_group_choices(overrides)
    if args.multirun:
        check_job_count(overrides)
    else:
        check_no_sweep(overrides)
    return overrides, args.multirun


def check_no_sweep(overrides: Sequence[Override]) -> None:
    """Refuses a sweep without -m, saying how to write a list or a string instead (the value
    `a,b` is all three to Hydra)."""
    for override in overrides:
        if override.is_sweep_override():
            key, _, value = (override.input_line or "").partition("=")
            allowed = "-m (--multirun) to sweep over it"
            if getattr(override.value(), "simple_form", False):
                allowed = f"a list [{value}], a quoted string '{value}', or {allowed}"
            raise ConfigError(key, AsTyped(value), allowed)


def check_inline_sizes(overrides: Sequence[str]) -> None:
    """Refuses inline data of more than MAX_INLINE_VALUES values, counted in the text: parsing
    it would take long before anything is said."""
    for text in overrides:
        key, _, value = text.partition("=")
        count = len(re.findall(r"[^\s,\[\]()]+", value))
        if key.lstrip("+~") in INLINE_KEYS and count > MAX_INLINE_VALUES:
            raise ConfigError(
                key,
                AsTyped(value[:24] + "..."),
                f"at most {MAX_INLINE_VALUES} values inline (this has {count}); put them in a "
                "CSV file: data=csv data.path=FILE data.target=COLUMN",
            )


def check_override(override: Override) -> None:
    """Refuses an override that names a reserved key, or whose value holds one or builds config
    nodes from text; and one without a key."""
    key, _, value = (override.input_line or "").partition("=")
    if not override.key_or_group:
        raise ConfigError(key, AsTyped(value), "KEY=VALUE, with a key before the =")
    contents = list(_contents(override.value()))
    named = re.split(r"[./@]", override.key_or_group) + [k for kind, k in contents if kind == "key"]
    reserved = RESERVED.intersection(named)
    if reserved:
        raise ConfigError(
            key,
            AsTyped(value),
            f"no {sorted(reserved)[0]} from the command line: what a group builds comes with the "
            "option chosen (e.g. loss=huber)",
        )
    if any(kind == "text" and STRUCTURING_RESOLVERS.search(s) for kind, s in contents):
        raise ConfigError(key, AsTyped(value), "no oc.create or oc.decode interpolation")


def check_job_count(overrides: Sequence[Override]) -> None:
    """Refuses a sweep of more than MAX_JOBS jobs, counted without listing them."""
    sizes = {o.input_line: _sweep_size(o) for o in overrides if o.is_sweep_override()}
    if sizes and math.prod(sizes.values()) > MAX_JOBS:
        key, _, value = max(sizes, key=sizes.get).partition("=")
        raise ConfigError(
            key,
            AsTyped(value),
            f"a sweep of at most {MAX_JOBS} jobs; this command line makes "
            f"{math.prod(sizes.values())}",
        )


def swept_keys(overrides: Sequence[Override]) -> list[str]:
    """The keys a multirun command line sweeps (`optimizer.lr=0.1,0.01`, `loop=glob(*)`, ...)."""
    swept = [o for o in overrides if o.is_sweep_override() and not o.is_hydra_override()]
    return [o.key_or_group for o in swept]


def _sweep_size(override: Override) -> int:
    from hydra.core.override_parser.types import ChoiceSweep, Glob, RangeSweep

    sweep = override.value()
    if isinstance(sweep, ChoiceSweep):
        return len(sweep.list)
    if isinstance(sweep, RangeSweep):
        span = sweep.range()
        if isinstance(span, range):
            return len(span)
        return max(0, math.ceil((span.stop - span.start) / span.step))
    if isinstance(sweep, Glob) and override.key_or_group in GROUPS:
        return len(group_options(override.key_or_group))
    return 1  # an interval: a sweeper such as Optuna draws from it, n_trials times


def _contents(value: Any) -> Iterator[tuple[str, str]]:
    """("key", k) for every key of every mapping in a parsed value and ("text", s) for every
    string in it, sweeps' choices included."""
    if isinstance(value, str):
        yield "text", value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield "key", str(key)
            yield from _contents(item)
    elif isinstance(value, list):
        for item in value:
            yield from _contents(item)
    elif hasattr(value, "list"):  # ChoiceSweep
        yield from _contents(value.list)
