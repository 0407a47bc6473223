"""The one exception type for bad config or input: it names the key, the value, what is allowed."""

from __future__ import annotations

import os


class ConfigError(ValueError):
    """A config value or input that cannot be used; `str()` is the one line the user sees."""

    def __init__(self, key: str, value: object, allowed: str) -> None:
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"{key}={show(value)}: expected {allowed}")


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
    )
    from omegaconf.errors import (
        ConfigAttributeError,
        ConfigKeyError,
        MissingMandatoryValue,
        OmegaConfBaseException,
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
    cause = next((e for e in chain if isinstance(e, OmegaConfBaseException)), None)
    if cause is not None:
        key = getattr(cause, "full_key", None) or "config"
        override = _override_of(err, key)
        if isinstance(cause, MissingMandatoryValue):
            return f"{key}=???: expected a value (this option needs it set)", 2
        if isinstance(cause, ConfigKeyError | ConfigAttributeError):
            return f"{override}: unknown key; {_known_keys(cause, key)}", 2
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
    start = text.find("'", text.find("Could not"))
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


def _known_keys(cause: BaseException, key: str) -> str:
    import dataclasses

    owner = getattr(cause, "object_type", None)
    group = key.rpartition(".")[0] or "the config"
    if owner is not None and dataclasses.is_dataclass(owner):
        names = [f.name for f in dataclasses.fields(owner) if not f.name.startswith("_")]
        return f"{group} has: {', '.join(names)}" if names else f"{group} takes no keys"
    return "to add a new key, prefix it with +"
