"""The one exception type for bad config or input: it names the key, the value, what is allowed."""

from __future__ import annotations

import dataclasses
import difflib
import enum
import os
import types
import typing


class ConfigError(ValueError):
    """A config value or input that cannot be used; `str()` is the one line the user sees."""

    def __init__(self, key: str, value: object, allowed: str) -> None:
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"{key}={show(value)}: expected {allowed}")


class UnknownKeyError(ConfigError):
    """A key that the schema of its node does not have (`owner`, a dataclass), `+` or not."""

    def __init__(self, key: str, value: object, owner: type | None) -> None:
        self.key, self.value, self.allowed = key, value, known_keys(owner, key)
        ValueError.__init__(self, f"{key}={show(value)}: unknown key; {self.allowed}")


class AsTyped:
    """A value shown as the command line has it (no quotes added), e.g. `range(0,10)`."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __str__(self) -> str:
        return self.text


def show(value: object) -> str:
    """Renders a config value the way a user would type it on the command line."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return repr(value) if (not value or any(c in value for c in " ,=[]'\"")) else value
    return str(value)


def on_path(err: OSError, path: str | os.PathLike) -> OSError:
    """`err` as an error of `path`: os.write and friends do not say which file failed, and a
    temporary file's name means nothing to the user."""
    if err.errno is None:
        return err
    return OSError(err.errno, err.strerror, os.fspath(path))


def describe_error(err: BaseException) -> tuple[str, int]:
    """One line for the user and the exit code: 2 for bad config or input, 1 otherwise.

    Hydra and OmegaConf report composition errors over many lines; this keeps what names the
    key, the value and what is allowed.
    """
    from hydra.errors import (
        ConfigCompositionException,
        MissingConfigException,
        OverrideParseException,
        SearchPathException,
    )
    from omegaconf.errors import (
        ConfigAttributeError,
        ConfigKeyError,
        MissingMandatoryValue,
        OmegaConfBaseException,
        ValidationError,
    )

    chain = _causes(err)
    config_error = next((e for e in chain if isinstance(e, ConfigError)), None)
    if config_error is not None:
        return str(config_error), 2
    if isinstance(err, MissingConfigException):
        group, _, name = _quoted(str(err)).rpartition("/")
        options = ", ".join(err.options or ())
        return f"{group}={name}: expected one of {options}" if options else _first_line(err), 2
    if isinstance(err, OverrideParseException):
        return f"cannot parse the command line: {_first_line(err)}", 2
    if isinstance(err, SearchPathException):  # --config-dir DIR that is not a directory
        return f"--config-dir={_quoted(str(err))}: expected an existing directory", 2
    cause = next((e for e in chain if isinstance(e, OmegaConfBaseException)), None)
    if cause is not None:
        key = getattr(cause, "full_key", None) or "config"
        override = _override_of(err, key)
        if isinstance(cause, MissingMandatoryValue):
            return f"{key}=???: expected a value (this option needs it set)", 2
        owner = getattr(cause, "object_type", None)
        if isinstance(cause, ConfigKeyError | ConfigAttributeError):
            return f"{override}: unknown key; {known_keys(owner, key)}", 2
        expected = _expected_type(owner, key) if isinstance(cause, ValidationError) else None
        if expected is not None:  # a value of the wrong type: say which type the key takes
            return f"{override}: expected {expected}", 2
        return f"{override}: {_first_line(cause.msg or cause)}", 2
    if isinstance(err, ConfigCompositionException):
        return _first_line(err), 2
    failed_file = next((e for e in _explicit_causes(err) if _names_a_file(e)), None)
    if isinstance(failed_file, OSError):  # a full disk, a read-only directory
        return f"{failed_file.filename}: {failed_file.strerror or _first_line(failed_file)}", 1
    return f"{type(err).__name__}: {_first_line(err)}", 1


def _causes(err: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = err
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def _explicit_causes(err: BaseException) -> list[BaseException]:
    # `raise ... from`: e.g. logging's "Unable to configure handler" over the OSError that says
    # which file it could not open (a __context__ may be unrelated).
    chain: list[BaseException] = []
    current: BaseException | None = err
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__
    return chain


def _names_a_file(err: BaseException) -> bool:
    return isinstance(err, OSError) and err.filename is not None


def _first_line(value: object) -> str:
    lines = [line.strip() for line in str(value).splitlines() if line.strip()]
    return lines[0] if lines else type(value).__name__


def _quoted(text: str) -> str:
    start = text.find("'", max(text.find("Could not"), 0))
    return text[start + 1 : text.find("'", start + 1)]


def _override_of(err: BaseException, key: str) -> str:
    # "Error merging override optimizer.lr=abc" names the override as typed; keep it.
    for e in _causes(err):
        marker = "override "
        text = _first_line(e)
        if marker in text and text.split(marker, 1)[1].startswith(key):
            return text.split(marker, 1)[1].strip("'. ")
    import sys

    typed = [a for a in sys.argv[1:] if a.lstrip("+~").split("=", 1)[0] == key]
    return typed[0] if typed else key


def known_keys(owner: type | None, key: str) -> str:
    """What the node holding `key` has (`optimizer has: lr, ...`), with the nearest name."""
    group, _, name = key.rpartition(".")
    group = group or "the config"
    if owner is None or not dataclasses.is_dataclass(owner):
        return f"{group} takes no new keys"
    names = [f.name for f in dataclasses.fields(owner) if not f.name.startswith("_")]
    if not names:
        return f"{group} takes no keys"
    return f"{group} has: {', '.join(names)}{did_you_mean(name, names)}"


def did_you_mean(word: str, choices: typing.Iterable[str]) -> str:
    """`; did you mean adam?` for a near miss of one of `choices`, else nothing."""
    close = difflib.get_close_matches(str(word), list(choices), n=1)
    return f"; did you mean {close[0]}?" if close else ""


def _expected_type(owner: type | None, key: str) -> str | None:
    """`a number`, `an integer`, ... for the field `key` of the schema `owner`, if it says."""
    if owner is None or not dataclasses.is_dataclass(owner):
        return None
    try:
        hint = typing.get_type_hints(owner).get(key.rpartition(".")[2])
    except (NameError, TypeError):
        return None
    return describe_type(hint)


def describe_type(hint: object) -> str | None:
    """What a value of type `hint` looks like on the command line, or None for `Any`."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        inner = describe_type(next(a for a in args if a is not type(None)))
        return f"{inner}, or null" if inner else None
    if typing.get_origin(hint) is list:
        inner = describe_type(args[0]) if args else None
        return f"a list of {_plural(inner)}" if inner else "a list"
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return f"one of {', '.join(m.name for m in hint)}"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
        hint  # type: ignore[call-overload]
    )


def _plural(description: str) -> str:
    return {"a number": "numbers", "an integer": "integers", "a string": "strings"}.get(
        description, description
    )
